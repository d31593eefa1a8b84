"""How the GPU backend turns one graph node into kernel launches.

Each op family's module (``backends/gpu/<family>.py``, beside ``kernels/<family>.cu``, mirroring
``backends/cpu/<family>.py``) registers, per op name, a lowering ``(node, io) -> list[Launch]``
and optionally a scratch rule ``node -> bytes``. A ``Launch`` is everything a device needs to
run one kernel: the kernel file, the exported name (``relu_f32``: ``CF_EXPORT`` in
``kernels/common.cuh`` makes one per dtype), grid, block, dynamic shared memory and the
arguments, typed as the kernel's C parameters:

- a buffer is its device address as ``np.uint64`` (``GpuNodeIO.input``/``output``/``scratch``);
- a size or integer attribute is ``np.int64`` (``long long``);
- a real attribute is ``np.float64`` (``double``).

The same launches run on an NVIDIA GPU (CuPy, captured into one CUDA graph) and on the CPU
emulation of the kernels (``backends/gpu/emulator.py``), so the lowering code is exercised in
every CI run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from backends.base import LoweringTable
from graph.ir import Node

# Threads per block of the one-thread-per-element kernels (a multiple of the 32-lane warp).
BLOCK = 256
# Blocks of a grid-stride launch: enough to fill an H200's 132 SMs several times over; the
# kernels loop over whatever the grid does not cover (CF_FOR_EACH).
MAX_BLOCKS = 132 * 32

SUFFIX = {"float32": "f32", "float64": "f64"}


@dataclass(frozen=True)
class Launch:
    """One kernel launch of a node: ``module`` is the kernel file's stem (``"conv"`` for
    ``kernels/conv.cu``), ``kernel`` the exported name with its dtype suffix."""

    module: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int
    args: tuple
    name: str


TABLE = LoweringTable("GPU")
LOWERINGS, SCRATCH, lowers = TABLE.lowerings, TABLE.scratch, TABLE.lowers


def blocks_for(count: int, per_block: int = BLOCK) -> int:
    """Blocks to give ``count`` items one thread each, capped at ``MAX_BLOCKS`` (the kernels
    stride over the rest)."""
    return max(1, min(MAX_BLOCKS, -(-count // per_block)))


class GpuNodeIO:
    """Device addresses of one node's buffers, as the executable laid them out, and the
    ``Launch`` constructors its lowering uses."""

    def __init__(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        const: Callable[[Sequence[float], str], int],
    ) -> None:
        self.node = node
        self.dtype = (node.outputs or node.inputs)[0].type.dtype
        self._address = address
        self._scratch_address = scratch_address
        self._const = const

    def input(self, i: int) -> np.uint64:
        return np.uint64(self._address(self.node.inputs[i].name))

    def output(self, i: int = 0) -> np.uint64:
        return np.uint64(self._address(self.node.outputs[i].name))

    def scratch(self) -> np.uint64:
        return np.uint64(self._scratch_address)

    def const(self, values: Sequence[float]) -> np.uint64:
        """A persistent device buffer holding ``values`` in the node's dtype."""
        return np.uint64(self._const(values, self.dtype))

    @staticmethod
    def null() -> np.uint64:
        """An absent optional buffer (a conv without bias)."""
        return np.uint64(0)

    def launch(
        self,
        module: str,
        kernel: str,
        grid: int | tuple[int, ...],
        block: int | tuple[int, ...],
        *args: object,
        shared_bytes: int = 0,
    ) -> Launch:
        """A launch of ``kernel`` (without its dtype suffix) from ``kernels/<module>.cu``.
        ``args`` are NumPy scalars typed as the kernel's parameters (module docstring); plain
        Python ints become ``np.int64`` and floats ``np.float64``."""
        typed = tuple(_typed(a) for a in args)
        return Launch(
            module,
            f"{kernel}_{SUFFIX[self.dtype]}",
            _dim3(grid),
            _dim3(block),
            shared_bytes,
            typed,
            self.node.name,
        )

    def elementwise(self, module: str, kernel: str, count: int, *args: object) -> Launch:
        """A grid-stride launch with one thread per item of ``count`` (``CF_FOR_EACH``)."""
        return self.launch(module, kernel, blocks_for(count), BLOCK, *args)


def _typed(value: object) -> np.generic:
    if isinstance(value, np.generic):
        return value
    if isinstance(value, bool | int):
        return np.int64(value)
    if isinstance(value, float):
        return np.float64(value)
    raise TypeError(f"launch argument must be a NumPy scalar, int or float, but got {value!r}")


def _dim3(value: int | tuple[int, ...]) -> tuple[int, int, int]:
    dims = (value,) if isinstance(value, int) else tuple(value)
    return (*dims, *(1,) * (3 - len(dims)))
