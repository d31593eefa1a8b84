"""The backend contract: the few things the engine needs from a device.

A backend declares the ops it supports (``compile`` fails early, naming missing ops and their
layers, never at run time), says how much scratch each node's kernel needs, allocates the
arena, lowers one node (given its buffers' addresses) into steps, and packs the steps into the
arrays its runner executes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence

import numpy as np

from graph.ir import Graph, Node


class Backend(ABC):
    name: str

    @property
    @abstractmethod
    def supported_ops(self) -> frozenset[str]: ...

    @abstractmethod
    def scratch_bytes(self, node: Node) -> int:
        """Workspace the node's kernel needs for the duration of its step."""

    @abstractmethod
    def allocate(self, nbytes: int) -> np.ndarray:
        """A 64-byte aligned arena of ``nbytes`` bytes."""

    @abstractmethod
    def lower(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[np.ndarray],
    ) -> list:
        """Steps that compute ``node``; ``address`` maps a value name to its buffer address.
        Constant buffers the steps read are appended to ``consts`` (the caller keeps them)."""

    @abstractmethod
    def pack(self, steps: Sequence) -> dict[str, np.ndarray]:
        """The steps as flat arrays for the runner."""

    def check_supported(self, graph: Graph) -> None:
        missing = [node for node in graph.nodes if node.op not in self.supported_ops]
        if missing:
            listing = ", ".join(f"{n.name} ({n.op})" for n in missing)
            raise NotImplementedError(
                f"backend {self.name!r} has no kernel for {sorted({n.op for n in missing})}, "
                f"used by {listing}"
            )
