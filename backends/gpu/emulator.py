"""Run the GPU kernels on the CPU: each ``kernels/*.cu`` file compiled as C++ with
``emulation/cuda_emulation.h`` (blocks in turn, a block's threads as fibers, barriers and warp
operations emulated; what it cannot show is listed at the top of that header).

With ``CONVFORGE_EMULATION`` defined, ``CF_EXPORT`` (``kernels/common.cuh``) turns each kernel
``name_f32(params)`` into ``extern "C" void name_f32(const cf_launch* launch, params)``, so a
launch is one ctypes call with the launch shape first. Libraries are cached in
``$CONVFORGE_CACHE`` (default ``~/.cache/convforge/emulated``) under a hash of the source, every
header it includes, the compiler and its flags; each is written under a temporary name and
renamed into place, so concurrent test processes may build the same file.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import subprocess
import tempfile
from pathlib import Path

import numpy as np

KERNELS = Path(__file__).resolve().parent / "kernels"
COMPILER = "g++"
FLAGS = (
    "-std=c++17",
    "-O2",
    "-fPIC",
    "-shared",
    "-fno-strict-aliasing",
    "-fno-gnu-unique",  # else the kernels' __shared__ statics are one per process, not library
    "-DCONVFORGE_EMULATION",
    f"-I{KERNELS}",
)

# How each launch argument type reaches the kernel's C parameter.
_C_TYPES: dict[np.dtype, type] = {
    np.dtype(np.uint64): ctypes.c_void_p,  # a device (here: host) address
    np.dtype(np.int64): ctypes.c_longlong,
    np.dtype(np.int32): ctypes.c_int,
    np.dtype(np.float64): ctypes.c_double,
    np.dtype(np.float32): ctypes.c_float,
}

_INCLUDE = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.MULTILINE)


class _Dim3(ctypes.Structure):
    _fields_ = [("x", ctypes.c_uint), ("y", ctypes.c_uint), ("z", ctypes.c_uint)]


class _Launch(ctypes.Structure):
    """``struct cf_launch`` of ``cuda_emulation.h``."""

    _fields_ = [("grid", _Dim3), ("block", _Dim3), ("shared_bytes", ctypes.c_ulonglong)]


class EmulatedModule:
    """One kernel file compiled for the CPU; the emulated counterpart of a ``cupy.RawModule``.

    Pointer arguments are host addresses (``np.uint64(array.ctypes.data)``): the caller keeps
    the arrays alive for the call. A launch runs to completion on the calling thread; launches
    of one module from several threads take turns, each thread seeing its own errors.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path).resolve()
        self.library_path = _build(self.path)
        self._library = ctypes.CDLL(str(self.library_path))
        self._last_error = self._library.cf_last_error
        self._last_error.argtypes = []
        self._last_error.restype = ctypes.c_char_p
        self._kernels: dict[str, ctypes._CFuncPtr] = {}

    def launch(
        self,
        kernel: str,
        grid: tuple[int, int, int],
        block: tuple[int, int, int],
        shared_bytes: int,
        args: tuple,
    ) -> None:
        """Run ``kernel`` (the exported name, e.g. ``relu_f32``) over ``grid`` blocks of
        ``block`` threads with ``shared_bytes`` of dynamic shared memory. Each of ``args`` is a
        NumPy scalar typed as its C parameter: ``np.uint64`` a pointer, ``np.int64`` long long,
        ``np.int32`` int, ``np.float64`` double, ``np.float32`` float. The count is not checked
        (the library does not record signatures).

        Raises:
            RuntimeError: the emulator refused the launch shape or the kernel failed
                (a deadlock, a misused warp operation); the message names the kernel.
        """
        function = self._kernel(kernel)
        shape = _Launch(
            _Dim3(*_dim3(kernel, "grid", grid)),
            _Dim3(*_dim3(kernel, "block", block)),
            _shared_bytes(kernel, shared_bytes),
        )
        c_args = [_c_arg(kernel, i, arg) for i, arg in enumerate(args)]
        function(ctypes.byref(shape), *c_args)
        error = self._last_error()
        if error is not None:
            raise RuntimeError(f"{kernel} ({self.path.name}): {error.decode()}")

    def _kernel(self, kernel: str) -> ctypes._CFuncPtr:
        if kernel not in self._kernels:
            try:
                function = getattr(self._library, kernel)
            except AttributeError:
                raise ValueError(
                    f"{self.path.name} exports no kernel {kernel!r} (CF_EXPORT(name, ...) "
                    "exports name_f32 and name_f64)"
                ) from None
            function.restype = None
            self._kernels[kernel] = function
        return self._kernels[kernel]


@functools.cache
def _load(path: Path) -> EmulatedModule:
    return EmulatedModule(path)


def load_module(path: str | os.PathLike) -> EmulatedModule:
    """The ``EmulatedModule`` of a kernel file, built (or found in the cache) once per process."""
    return _load(Path(path).resolve())


# **** Building ****


def _cache_dir() -> Path:
    default = Path.home() / ".cache" / "convforge" / "emulated"
    return Path(os.environ.get("CONVFORGE_CACHE", default))


def _build(source: Path) -> Path:
    """The cached shared library of ``source``, compiled first if missing."""
    text = source.read_text()
    digest = hashlib.sha256("\0".join((_compiler_version(), *FLAGS)).encode())
    for header in _headers(source, text):
        digest.update(header.read_bytes())
    digest.update(text.encode())
    cache = _cache_dir()
    library = cache / f"{source.stem}-{digest.hexdigest()[:20]}.so"
    if library.exists():
        return library
    cache.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=cache, prefix=f".{source.stem}-", suffix=".so")
    os.close(fd)
    try:
        command = [COMPILER, *FLAGS, "-x", "c++", str(source), "-o", temporary]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(
                f"{COMPILER} could not compile {source} for the CPU emulator "
                f"(exit {done.returncode}):\n{done.stderr}"
            )
        os.replace(temporary, library)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return library


def _headers(source: Path, text: str) -> list[Path]:
    """Every quoted ``#include`` reachable from ``source``, in first-seen order (conditionals
    ignored: hashing a header that is not compiled only costs a rebuild)."""
    found: list[Path] = []
    pending = [(source.parent, text)]
    while pending:
        folder, body = pending.pop()
        for name in _INCLUDE.findall(body):
            for base in (folder, KERNELS):
                header = (base / name).resolve()
                if header.is_file():
                    if header not in found:
                        found.append(header)
                        pending.append((header.parent, header.read_text()))
                    break
    return found


@functools.cache
def _compiler_version() -> str:
    try:
        done = subprocess.run([COMPILER, "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        raise RuntimeError(
            f"the CPU emulator of the GPU kernels needs {COMPILER}, which is not on PATH"
        ) from None
    return done.stdout


# **** Launch arguments ****


def _dim3(kernel: str, what: str, dims: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(dims) != 3 or not all(isinstance(d, int | np.integer) and 0 <= d < 2**32 for d in dims):
        raise ValueError(f"{kernel}: {what} must be 3 integers in [0, 2^32), but got {dims!r}")
    return tuple(int(d) for d in dims)


def _shared_bytes(kernel: str, shared_bytes: int) -> int:
    if not isinstance(shared_bytes, int | np.integer) or not 0 <= shared_bytes < 2**64:
        raise ValueError(
            f"{kernel}: shared_bytes must be a non-negative integer, but got {shared_bytes!r}"
        )
    return int(shared_bytes)


def _c_arg(kernel: str, index: int, arg: object) -> object:
    c_type = _C_TYPES.get(arg.dtype) if isinstance(arg, np.generic) else None
    if c_type is None:
        raise TypeError(
            f"{kernel}: argument {index} must be a NumPy scalar of "
            f"{', '.join(str(t) for t in _C_TYPES)}, but got {type(arg).__name__} {arg!r}"
        )
    return c_type(arg.item())
