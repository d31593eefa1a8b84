"""The backend contract: everything the engine needs from a device, and nothing more.

``engine/`` holds no device code. It asks the backend to:

- declare the ops it supports (``compile`` fails early, naming missing ops and their layers,
  never at run time) and the scratch each node's kernel needs;
- hold memory: the arena of a plan (``allocate``) and the persistent buffers outside it
  (``from_host``: the input, outputs, parameters, state, gradients, optimizer slots), give a
  buffer's device ``address`` for the kernels, and move data across (``to_host``,
  ``copy_in``, ``fill_bytes``);
- lower one node, given its buffers' addresses, into steps (CPU: cfunc calls; GPU: kernel
  launches), and build the runner that executes a plan's steps (CPU: the Cython loop; GPU: a
  captured CUDA graph).

A buffer is whatever the backend allocates (a NumPy array on the CPU, a CuPy array on a GPU);
the engine only reads its ``shape``, ``dtype`` and ``nbytes`` and hands it back to the backend.

``to_host`` is the one place the devices differ for a user: on the CPU it returns the buffer
itself, so ``exe.params[name]`` is a live view that writes through; elsewhere it returns a copy,
and writes go through ``copy_in`` (``Executable.load_state_dict``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from graph.ir import Graph, Node
from graph.memory import ALIGN

# Storage key of a frozen plan's weight generation (``compile(..., freeze=True)``): an int64
# counter the executable bumps whenever it loads weights (``load_state_dict``), so a kernel that
# keeps the weights packed in its own layout knows when to repack. Absent when not frozen.
WEIGHTS_GENERATION = "weights.generation"

Buffer = Any  # a backend's array type: numpy.ndarray on the CPU, cupy.ndarray on a GPU
Lowering = Callable[[Node, Any], list]
ScratchRule = Callable[[Node], int]


class LoweringTable:
    """One backend's lowerings ``(node, io) -> steps`` and scratch rules ``node -> bytes``, by
    op name; each op family's module registers its own with ``lowers``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.lowerings: dict[str, Lowering] = {}
        self.scratch: dict[str, ScratchRule] = {}

    def lowers(self, *ops: str, scratch: ScratchRule | None = None):
        """Decorator: register a lowering (and its scratch rule) for one or more op names."""

        def wrap(func: Lowering) -> Lowering:
            for op in ops:
                if op in self.lowerings:
                    raise ValueError(f"op {op!r} has two {self.device} lowerings")
                self.lowerings[op] = func
                if scratch is not None:
                    self.scratch[op] = scratch
            return func

        return wrap


def host_arena(nbytes: int) -> np.ndarray:
    """``nbytes`` of ``ALIGN``-aligned host memory (uint8)."""
    raw = np.empty(nbytes + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes]


class Runner(Protocol):
    """Runs a packed plan; the Cython ``backends.cpu._runtime.Runner`` is the CPU's."""

    count: int

    def run(self, repeat: int = 1, start: int = 0, stop: int = -1) -> tuple[int, int]:
        """Run steps [start, stop) (-1: to the end) ``repeat`` times; returns (failed step,
        error code) or (-1, 0)."""

    def profile(self, repeat: int = 1) -> tuple[Sequence[float], int, int]:
        """Run every step ``repeat`` times, timing each; returns (seconds per step summed over
        the repeats, failed step, error code)."""


class Backend(ABC):
    name: str
    table: LoweringTable

    # **** What it runs ****

    @property
    def supported_ops(self) -> frozenset[str]:
        return frozenset(self.table.lowerings)

    def scratch_bytes(self, node: Node) -> int:
        """Workspace the node's kernel needs for the duration of its step."""
        rule = self.table.scratch.get(node.op)
        return rule(node) if rule else 0

    def check_supported(self, graph: Graph) -> None:
        missing = [node for node in graph.nodes if node.op not in self.supported_ops]
        if missing:
            listing = ", ".join(f"{n.name} ({n.op})" for n in missing)
            raise NotImplementedError(
                f"backend {self.name!r} has no kernel for {sorted({n.op for n in missing})}, "
                f"used by {listing}"
            )

    # **** Memory ****

    @abstractmethod
    def allocate(self, nbytes: int) -> Buffer:
        """A 64-byte aligned uint8 arena of ``nbytes`` bytes (contents undefined)."""

    @abstractmethod
    def from_host(self, array: np.ndarray) -> Buffer:
        """A new persistent buffer holding a copy of ``array`` (C order, same dtype)."""

    @abstractmethod
    def to_host(self, buffer: Buffer) -> np.ndarray:
        """The buffer as a NumPy array: the live buffer itself on the CPU, a copy elsewhere."""

    @abstractmethod
    def copy_in(self, buffer: Buffer, array: np.ndarray) -> None:
        """Overwrite ``buffer`` with ``array`` (same shape; cast to the buffer's dtype)."""

    @abstractmethod
    def fill_bytes(self, buffer: Buffer, byte: int) -> None:
        """Set every byte of ``buffer`` to ``byte`` (0xFF: NaN-poisoning for tests)."""

    @abstractmethod
    def address(self, buffer: Buffer) -> int:
        """The buffer's first byte as the kernels address it."""

    # **** Plans ****

    @abstractmethod
    def lower(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[Buffer],
    ) -> list:
        """Steps that compute ``node``; ``address`` maps a value name (or a storage key such as
        WEIGHTS_GENERATION) to its buffer address, and raises KeyError for a name the plan does
        not hold. Constant buffers the steps read are appended to ``consts`` (the caller keeps
        them)."""

    @abstractmethod
    def runner(self, steps: Sequence) -> Runner:
        """The runner of a plan's steps, in order."""
