"""How the CPU backend turns one graph node into executor steps.

Each kernel module registers, per op name, a lowering ``(node, io) -> list[Step]`` and
optionally a scratch rule ``node -> bytes``. ``NodeIO`` hands a lowering the (address, numel) of
the node's inputs, outputs and scratch, small persistent constant buffers (float attributes
such as a leaky slope or an eps), and the serial/parallel choice for a given amount of work.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backends.base import LoweringTable
from graph.ir import Node

TABLE = LoweringTable("CPU")
LOWERINGS, SCRATCH, lowers = TABLE.lowerings, TABLE.scratch, TABLE.lowers

# Below this many inner-loop iterations a kernel runs serially: waking Numba's thread pool
# costs a few microseconds, more than the work itself.
PARALLEL_MIN_WORK = 1 << 15


class NodeIO:
    """Addresses of one node's buffers, as the executable laid them out."""

    def __init__(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[np.ndarray],
    ) -> None:
        self.node = node
        self.dtype = (node.outputs or node.inputs)[0].type.dtype
        self._address = address
        self._scratch_address = scratch_address
        self._consts = consts

    def input(self, i: int) -> tuple[int, int]:
        value = self.node.inputs[i]
        return self._address(value.name), value.type.numel

    def output(self, i: int = 0) -> tuple[int, int]:
        value = self.node.outputs[i]
        return self._address(value.name), value.type.numel

    def stored(self, name: str, numel: int) -> tuple[int, int] | None:
        """The persistent buffer ``name`` (a storage key such as ``WEIGHTS_GENERATION``) seen
        as ``numel`` elements, or None where the plan has no such buffer."""
        try:
            return self._address(name), numel
        except KeyError:
            return None

    def scratch(self, numel: int) -> tuple[int, int]:
        return self._scratch_address, numel

    def const(self, values: list[float]) -> tuple[int, int]:
        """A persistent buffer holding ``values`` in the node's dtype (kept alive by the caller;
        an array of that dtype is kept as it is, not copied)."""
        array = np.ascontiguousarray(values, dtype=self.dtype)
        self._consts.append(array)
        return array.ctypes.data, array.size

    @staticmethod
    def empty() -> tuple[int, int]:
        """An absent optional buffer (a conv without bias): null pointer, no elements."""
        return 0, 0

    @staticmethod
    def parallel(work: int) -> bool:
        return work >= PARALLEL_MIN_WORK
