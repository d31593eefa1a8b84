"""The CPU backend: Numba kernels behind serial cfunc shims, run by the Cython executor."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from backends.base import Backend
from backends.cpu import (  # noqa: F401  (registration)
    capsule,
    conv,
    conv_backward,
    elementwise,
    loss,
    norm,
    optim,
    pooling,
    shape,
)
from backends.cpu.blas import single_threaded_blas
from backends.cpu.kernels import Step
from backends.cpu.lowering import LOWERINGS, SCRATCH, NodeIO
from graph.ir import Node
from graph.memory import ALIGN

single_threaded_blas()


class CpuBackend(Backend):
    name = "cpu"

    @property
    def supported_ops(self) -> frozenset[str]:
        return frozenset(LOWERINGS)

    def scratch_bytes(self, node: Node) -> int:
        rule = SCRATCH.get(node.op)
        return rule(node) if rule else 0

    def allocate(self, nbytes: int) -> np.ndarray:
        raw = np.empty(nbytes + ALIGN, np.uint8)
        start = -raw.ctypes.data % ALIGN
        return raw[start : start + nbytes]

    def lower(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[np.ndarray],
    ) -> list[Step]:
        return LOWERINGS[node.op](node, NodeIO(node, address, scratch_address, consts))

    def pack(self, steps: Sequence[Step]) -> dict[str, np.ndarray]:
        pointer_counts = [len(s.pointers) for s in steps]
        int_counts = [len(s.ints) for s in steps]
        return {
            "functions": np.array([s.function for s in steps], np.uintp),
            "pointers": np.array([p for s in steps for p in s.pointers] or [0], np.uintp),
            "ints": np.array([i for s in steps for i in s.ints] or [0], np.int64),
            "pointer_start": np.cumsum([0] + pointer_counts[:-1], dtype=np.int64),
            "int_start": np.cumsum([0] + int_counts[:-1], dtype=np.int64),
        }
