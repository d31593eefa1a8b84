"""The CPU backend: Numba kernels behind serial cfunc shims, run by the Cython executor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backends.base import Backend, host_arena
from backends.cpu import (  # noqa: F401  (registration)
    capsule,
    conv,
    conv_backward,
    elementwise,
    int8,
    loss,
    mask,
    norm,
    optim,
    pooling,
    shape,
    sync_norm,
)
from backends.cpu._runtime import Runner
from backends.cpu.blas import single_threaded_blas
from backends.cpu.kernels import Step
from backends.cpu.lowering import LOWERINGS, TABLE, NodeIO
from graph.ir import Node

single_threaded_blas()


class CpuBackend(Backend):
    name = "cpu"

    table = TABLE

    def allocate(self, nbytes: int) -> np.ndarray:
        return host_arena(nbytes)

    def from_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, order="C", copy=True)

    def to_host(self, buffer: np.ndarray) -> np.ndarray:
        return buffer

    def copy_in(self, buffer: np.ndarray, array: np.ndarray) -> None:
        np.copyto(buffer, array, casting="unsafe")

    def fill_bytes(self, buffer: np.ndarray, byte: int) -> None:
        buffer.view(np.uint8).fill(byte)

    def address(self, buffer: np.ndarray) -> int:
        return buffer.ctypes.data

    def lower(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[np.ndarray],
    ) -> list[Step]:
        return LOWERINGS[node.op](node, NodeIO(node, address, scratch_address, consts))

    def runner(self, steps: Sequence[Step]) -> Runner:
        return Runner(**self.pack(steps))

    def pack(self, steps: Sequence[Step]) -> dict[str, np.ndarray]:
        """The steps as the flat arrays of the Cython ``Runner``."""
        pointer_counts = [len(s.pointers) for s in steps]
        int_counts = [len(s.ints) for s in steps]
        return {
            "functions": np.array([s.function for s in steps], np.uintp),
            "pointers": np.array([p for s in steps for p in s.pointers] or [0], np.uintp),
            "ints": np.array([i for s in steps for i in s.ints] or [0], np.int64),
            "pointer_start": np.cumsum([0] + pointer_counts[:-1], dtype=np.int64),
            "int_start": np.cumsum([0] + int_counts[:-1], dtype=np.int64),
        }
