"""Where GPU launches run: a CUDA device through CuPy, or the CPU emulation of the kernels.

Both hold memory, copy it to and from the host, and build the runner of a plan's launches:

- ``CupyDevice``: buffers are ``cupy.ndarray``s; kernels come from ``cupy.RawModule`` (NVRTC,
  with ``kernels/`` on the include path); a plan's launches are captured once into a CUDA graph
  per step range and replayed (``runners.GraphRunner``). Inputs and outputs go through pinned
  host buffers.
- ``EmulatedDevice``: buffers are host NumPy arrays (whose addresses the emulated kernels
  dereference); kernels come from ``emulator.load_module``; launches run one after another.
  ``to_host`` returns a copy, as from a real device, so code that wrongly relies on live views
  fails here too.

``cupy_device()`` says in one line what is missing when no GPU can be used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from backends.base import Buffer, Runner, host_arena
from backends.gpu.lowering import Launch

KERNELS = Path(__file__).parent / "kernels"


class Device(Protocol):
    backend_name: str

    def allocate(self, nbytes: int) -> Buffer: ...
    def from_host(self, array: np.ndarray) -> Buffer: ...
    def to_host(self, buffer: Buffer) -> np.ndarray: ...
    def copy_in(self, buffer: Buffer, array: np.ndarray) -> None: ...
    def fill_bytes(self, buffer: Buffer, byte: int) -> None: ...
    def address(self, buffer: Buffer) -> int: ...
    def runner(self, launches: list[Launch]) -> Runner: ...


# **** The CPU emulation ****


class EmulatedDevice:
    """Host memory, emulated kernels (``backends/gpu/emulator.py``): slow, exact, no GPU."""

    backend_name = "gpu-emulated"

    def allocate(self, nbytes: int) -> np.ndarray:
        return host_arena(nbytes)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, order="C", copy=True)

    def to_host(self, buffer: np.ndarray) -> np.ndarray:
        return buffer.copy()

    def copy_in(self, buffer: np.ndarray, array: np.ndarray) -> None:
        np.copyto(buffer, array)

    def fill_bytes(self, buffer: np.ndarray, byte: int) -> None:
        buffer.view(np.uint8).fill(byte)

    def address(self, buffer: np.ndarray) -> int:
        return buffer.ctypes.data

    def runner(self, launches: list[Launch]) -> Runner:
        from backends.gpu.emulator import load_module
        from backends.gpu.runners import LaunchLoop

        def bind(launch: Launch):
            module = load_module(KERNELS / f"{launch.module}.cu")
            return lambda: module.launch(
                launch.kernel, launch.grid, launch.block, launch.shared_bytes, launch.args
            )

        return LaunchLoop([bind(launch) for launch in launches], synchronize=lambda: None)


# **** CUDA through CuPy ****


def cupy_device() -> CupyDevice:
    """The CuPy device, or a RuntimeError saying in one line why there is none."""
    try:
        import cupy
    except ImportError:
        raise RuntimeError(
            'backend="gpu" needs CuPy, which is not installed: pip install ".[gpu]" '
            '(CUDA 12; .[gpu-cuda13] for CUDA 13), or use backend="gpu-emulated" to run the '
            "kernels on the CPU"
        ) from None
    if not cupy.is_available():
        raise RuntimeError(
            'backend="gpu" needs a usable NVIDIA GPU, but CuPy finds none (no device or no '
            'driver); use backend="cpu", or backend="gpu-emulated" to check the kernels'
        )
    return CupyDevice(cupy)


class CupyDevice:
    """Device memory and RawModule kernels through CuPy, one CUDA graph per plan."""

    backend_name = "gpu"

    def __init__(self, cupy) -> None:
        self._cupy = cupy
        self._modules: dict[str, object] = {}
        self._pinned: dict[tuple[tuple[int, ...], str], np.ndarray] = {}
        self.stream = cupy.cuda.Stream(non_blocking=True)

    def allocate(self, nbytes: int):
        return self._cupy.empty(max(nbytes, 1), self._cupy.uint8)[:nbytes]

    def from_host(self, array: np.ndarray):
        return self._cupy.asarray(array)

    def to_host(self, buffer) -> np.ndarray:
        staging = self._staging(buffer.shape, buffer.dtype)
        buffer.get(stream=self.stream, out=staging)
        self.stream.synchronize()
        return staging.copy()

    def copy_in(self, buffer, array: np.ndarray) -> None:
        staging = self._staging(buffer.shape, buffer.dtype)
        np.copyto(staging, array)
        buffer.set(staging, stream=self.stream)
        self.stream.synchronize()  # the staging buffer is reused by the next copy

    def fill_bytes(self, buffer, byte: int) -> None:
        with self.stream:
            buffer.view(self._cupy.uint8).fill(byte)
        self.stream.synchronize()

    def address(self, buffer) -> int:
        return buffer.data.ptr

    def runner(self, launches: list[Launch]) -> Runner:
        from backends.gpu.runners import GraphRunner

        functions = [self._function(launch) for launch in launches]
        return GraphRunner(self._cupy, self.stream, functions, launches)

    def _function(self, launch: Launch):
        if launch.module not in self._modules:
            source = (KERNELS / f"{launch.module}.cu").read_text()
            self._modules[launch.module] = self._cupy.RawModule(
                code=source, options=("-std=c++17", f"-I{KERNELS}"), backend="nvrtc"
            )
        return self._modules[launch.module].get_function(launch.kernel)

    def _staging(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """A pinned host array per (shape, dtype), so copies run at full PCIe speed."""
        key = (tuple(shape), np.dtype(dtype).str)
        if key not in self._pinned:
            count = int(np.prod(shape, dtype=np.int64))
            memory = self._cupy.cuda.alloc_pinned_memory(max(count * np.dtype(dtype).itemsize, 1))
            flat = np.frombuffer(memory, np.dtype(dtype), count)
            self._pinned[key] = flat.reshape(shape)
        return self._pinned[key]
