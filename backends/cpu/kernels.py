"""CPU kernels and the one generator of their cfunc shims.

A kernel is a plain Python function over flat 1-D buffers plus an int64 attribute vector,
returning an int32 status (0 = ok)::

    @kernel(buffers=2)
    def relu(x, y, a):            # a = [numel]
        for i in prange(a[0]): ...
        return 0

``Kernel.step(dtype, parallel, buffers, attrs)`` makes one executor step. For each
(dtype, parallel) variant it compiles, once and lazily:

- the kernel itself with ``@njit(cache=True)``, ``parallel=True`` or serial (the serial copy
  gets its own name, so Numba's on-disk cache never hands one variant to the other; small
  layers run serial because waking the thread pool costs microseconds);
- a serial ``@cfunc`` shim with the uniform signature ``int32(void** ptrs, int64* ints)``
  (DESIGN.md) that views each pointer as a flat ``carray`` and calls the kernel.

The shim source is generated and compiled under the kernel module's file name into the kernel
module's globals, so Numba caches it beside the kernel and invalidates it when that file
changes. Int block layout: ``[block length, numel of each buffer..., attrs...]``.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numba import carray, cfunc, njit
from numba import types as nbtypes
from numba.core.errors import NumbaPerformanceWarning

from backends.cpu import numba_setup

STEP_SIGNATURE = nbtypes.int32(nbtypes.CPointer(nbtypes.voidptr), nbtypes.CPointer(nbtypes.int64))
DTYPE_NAMES = {"float32": "float32", "float64": "float64"}


@dataclass(frozen=True)
class Step:
    """One executor step: a cfunc address, its buffer pointers and its int block."""

    function: int
    pointers: tuple[int, ...]
    ints: tuple[int, ...]
    name: str


def _renamed(func: Callable, name: str) -> types.FunctionType:
    code = func.__code__.replace(co_name=name, co_qualname=name)
    return types.FunctionType(code, func.__globals__, name, func.__defaults__, func.__closure__)


class Kernel:
    """A kernel function plus its lazily compiled (dtype, parallel) cfunc variants."""

    def __init__(self, func: Callable, buffers: int) -> None:
        self.func = func
        self.buffers = buffers
        self._shims: dict[tuple[str, bool], object] = {}

    @property
    def name(self) -> str:
        return self.func.__name__

    def shim(self, dtype: str, parallel: bool):
        """The compiled cfunc for one variant (compiled or loaded from cache on first use)."""
        key = (dtype, parallel)
        if key not in self._shims:
            numba_setup.ensure_thread_pool()
            module_globals = self.func.__globals__
            variant = f"{self.name}_{'parallel' if parallel else 'serial'}"
            if variant not in module_globals:
                module_globals[variant] = njit(parallel=parallel, cache=True, error_model="numpy")(
                    _renamed(self.func, variant)
                )
            shim_name = f"_step_{variant}_{dtype}"
            views = ", ".join(
                f"carray(ptrs[{i}], (ints[{i + 1}],), np.{DTYPE_NAMES[dtype]})"
                for i in range(self.buffers)
            )
            source = (
                f"def {shim_name}(ptrs, ints):\n"
                f"    block = carray(ints, (ints[0],))\n"
                f"    return {variant}({views}, block[{self.buffers + 1}:])\n"
            )
            module_globals.setdefault("carray", carray)
            module_globals.setdefault("np", np)
            exec(compile(source, self.func.__code__.co_filename, "exec"), module_globals)
            with warnings.catch_warnings():
                # the parallel variant of a kernel without prange (a loss, a tiny reduction)
                # is legitimate: it runs serially, which is all Numba's warning says
                warnings.simplefilter("ignore", NumbaPerformanceWarning)
                self._shims[key] = cfunc(STEP_SIGNATURE, cache=True)(module_globals[shim_name])
        return self._shims[key]

    def step(
        self,
        name: str,
        dtype: str,
        parallel: bool,
        buffers: Sequence[tuple[int, int]],
        attrs: Sequence[int],
    ) -> Step:
        """A step running this kernel on ``buffers`` ((address, numel) pairs) with ``attrs``."""
        if len(buffers) != self.buffers:
            raise AssertionError(f"{self.name} takes {self.buffers} buffers, got {len(buffers)}")
        ints = (1 + len(buffers) + len(attrs), *(n for _, n in buffers), *map(int, attrs))
        return Step(self.shim(dtype, parallel).address, tuple(a for a, _ in buffers), ints, name)


KERNELS: list[Kernel] = []


def kernel(buffers: int) -> Callable[[Callable], Kernel]:
    """Declare a kernel over ``buffers`` flat arrays (see the module docstring)."""

    def wrap(func: Callable) -> Kernel:
        KERNELS.append(Kernel(func, buffers))
        return KERNELS[-1]

    return wrap
