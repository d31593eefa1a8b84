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

When two buffers of a step are the same memory (an in-place node, graph/passes/inplace.py),
the step gets an aliased variant: one view for both, the kernel inlined into a wrapper.

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

    def __init__(
        self,
        func: Callable,
        buffers: int,
        inplace: tuple[tuple[int, int], ...],
        parallel_inplace: bool,
    ) -> None:
        self.func = func
        self.buffers = buffers
        self.inplace = inplace
        self.parallel_inplace = parallel_inplace
        self._shims: dict[tuple[str, bool], object] = {}

    @property
    def name(self) -> str:
        return self.func.__name__

    def shim(self, dtype: str, parallel: bool, sources: tuple[int, ...] | None = None):
        """The compiled cfunc for one variant (compiled or loaded from cache on first use).

        ``sources`` names, per buffer, the buffer it is the same memory as (an in-place node's
        output and input): that variant passes one view for both, through a wrapper that
        inlines the kernel, so LLVM sees one array. Given two pointers that may alias, LLVM
        guards its vector loops with an overlap check, and equal pointers fail it: an in-place
        ReLU gradient ran 35x slower on the generic variant. ``step`` runs aliased steps
        serially unless the kernel says ``parallel_inplace``: a parallel variant hands each
        slice to its task function as a separate array, so the check fails there whatever the
        wrapper does. For the chunked elementwise kernels that is 30x slower, and one
        vectorised core nearly keeps up with two on that memory-bound work; BatchNorm's
        per-plane loops lose less (its gradient: 17 ms aliased parallel, 27 ms serial)."""
        sources = sources or tuple(range(self.buffers))
        key = (dtype, parallel, sources)
        if key not in self._shims:
            numba_setup.ensure_thread_pool()
            module_globals = self.func.__globals__
            variant = self._compile_variant(module_globals, parallel, sources)
            shim_name = f"_step_{variant}_{dtype}"
            views = ", ".join(
                f"carray(ptrs[{i}], (ints[{i + 1}],), np.{DTYPE_NAMES[dtype]})"
                for i in range(self.buffers)
                if sources[i] == i
            )
            source = (
                f"def {shim_name}(ptrs, ints):\n"
                f"    block = carray(ints, (ints[0],))\n"
                f"    return {variant}({views}, block[{self.buffers + 1}:])\n"
            )
            module_globals.setdefault("carray", carray)
            module_globals.setdefault("np", np)
            self._exec(source, module_globals)
            with warnings.catch_warnings():
                # the parallel variant of a kernel without prange (a loss, a tiny reduction)
                # is legitimate: it runs serially, which is all Numba's warning says
                warnings.simplefilter("ignore", NumbaPerformanceWarning)
                self._shims[key] = cfunc(STEP_SIGNATURE, cache=True)(module_globals[shim_name])
        return self._shims[key]

    def aliased_variants(self) -> list[tuple[int, ...]]:
        """The ``sources`` of the in-place steps this kernel's lowerings make (one per
        declared output -> input pair), for ``convforge warmup``."""
        return [self._sources([pair]) for pair in self.inplace]

    def _sources(self, pairs: Sequence[tuple[int, int]]) -> tuple[int, ...]:
        """``sources`` with each (output, input) of ``pairs`` on one memory."""
        sources = list(range(self.buffers))
        for output, source in pairs:
            sources[output] = source
        return tuple(sources)

    def _compile_variant(self, module_globals: dict, parallel: bool, sources: tuple[int, ...]):
        """Name of the jitted (serial or parallel) kernel taking one array per distinct buffer
        of ``sources``, defined in the kernel module's globals."""
        mode = "parallel" if parallel else "serial"
        aliased = sources != tuple(range(self.buffers))
        variant = f"{self.name}_{mode}" + ("_as_" + "_".join(map(str, sources)) if aliased else "")
        if variant in module_globals:
            return variant
        jit = njit(parallel=parallel, cache=True, error_model="numpy")
        if not aliased:
            module_globals[variant] = jit(_renamed(self.func, variant))
            return variant
        inline = f"{self.name}_inline"
        module_globals.setdefault(inline, njit(inline="always")(_renamed(self.func, inline)))
        params = [f"b{i}" for i in range(self.buffers) if sources[i] == i]
        args = [f"b{sources[i]}" for i in range(self.buffers)]
        self._exec(
            f"def {variant}({', '.join(params)}, a):\n    return {inline}({', '.join(args)}, a)\n",
            module_globals,
        )
        module_globals[variant] = jit(module_globals[variant])
        return variant

    def _exec(self, source: str, module_globals: dict) -> None:
        """Define generated code under the kernel module's file name, so Numba caches it
        beside the kernel and invalidates it when that file changes."""
        exec(compile(source, self.func.__code__.co_filename, "exec"), module_globals)

    def step(
        self,
        name: str,
        dtype: str,
        parallel: bool,
        buffers: Sequence[tuple[int, int]],
        attrs: Sequence[int],
    ) -> Step:
        """A step running this kernel on ``buffers`` ((address, numel) pairs) with ``attrs``.

        Only the declared in-place pairs get an aliased variant, the ones ``convforge warmup``
        compiles. Two inputs that are one memory (a conv whose residual is its own input)
        keep the generic variant: reading one array through two pointers costs nothing, and
        a variant per such coincidence would compile for 20 s on first use."""
        if len(buffers) != self.buffers:
            raise AssertionError(f"{self.name} takes {self.buffers} buffers, got {len(buffers)}")
        ints = (1 + len(buffers) + len(attrs), *(n for _, n in buffers), *map(int, attrs))
        sources = self._sources(
            [
                (out, src)
                for out, src in self.inplace
                if buffers[out][0] and buffers[out] == buffers[src]
            ]
        )  # the declared pairs on one memory: written in place
        if sources != tuple(range(self.buffers)) and not self.parallel_inplace:
            parallel = False  # see ``shim``: the aliased parallel variant is not vectorised
        function = self.shim(dtype, parallel, sources).address
        return Step(function, tuple(a for a, _ in buffers), ints, name)


KERNELS: list[Kernel] = []


def kernel(
    buffers: int, inplace: tuple[tuple[int, int], ...] = (), parallel_inplace: bool = False
) -> Callable[[Callable], Kernel]:
    """Declare a kernel over ``buffers`` flat arrays (see the module docstring); ``inplace``
    lists (output buffer, input buffer) pairs that may be one memory: the ops' ``inplace``
    declarations as this kernel's lowering lays out its buffers. ``parallel_inplace``: its
    in-place steps may run in parallel (see ``Kernel.shim``)."""

    def wrap(func: Callable) -> Kernel:
        KERNELS.append(Kernel(func, buffers, inplace, parallel_inplace))
        return KERNELS[-1]

    return wrap
