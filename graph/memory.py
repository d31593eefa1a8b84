"""Memory plans: where each feature map and scratch buffer lives in one arena.

The contract every backend uses: a plan maps buffer names to byte offsets inside one arena of
``arena_bytes``; offsets are 64-byte aligned. Buffers here are the transient ones (activations
that are not graph outputs, and kernel scratch such as im2col columns); graph inputs, outputs,
parameters and state live in persistent storage outside the arena.

This module's planner is the placeholder the memory-planner issue replaces: one buffer per value,
laid end to end (``naive_bytes`` == ``arena_bytes``). Lifetimes are computed already, since the
real planner and its lower bound need them.
"""

from __future__ import annotations

from dataclasses import dataclass

from graph.ir import Graph

ALIGN = 64


@dataclass(frozen=True)
class Buffer:
    """A transient buffer live from step ``first_use`` to step ``last_use`` (inclusive)."""

    name: str
    nbytes: int
    first_use: int
    last_use: int


@dataclass(frozen=True)
class MemoryPlan:
    offsets: dict[str, int]
    arena_bytes: int
    naive_bytes: int


def align(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def transient_buffers(graph: Graph, scratch_bytes: dict[str, int]) -> list[Buffer]:
    """Activations (except graph outputs and parameter gradients) and per-node scratch, with
    their lifetimes over the node schedule. ``scratch_bytes`` maps node names to the workspace
    their kernel needs."""
    outputs = {v.name for v in graph.outputs} | {v.name for v in graph.grads.values()}
    step_of = {node.name: i for i, node in enumerate(graph.nodes)}
    buffers = []
    for i, node in enumerate(graph.nodes):
        for value in node.outputs:
            if value.name not in outputs:
                last = max((step_of[user.name] for user in value.users), default=i)
                buffers.append(Buffer(value.name, value.type.nbytes, i, last))
        if scratch_bytes.get(node.name):
            buffers.append(Buffer(f"{node.name}#scratch", scratch_bytes[node.name], i, i))
    return buffers


def plan_naive(buffers: list[Buffer]) -> MemoryPlan:
    """One aligned slot per buffer, end to end: correct for any schedule, never reused."""
    offsets, cursor = {}, 0
    for buffer in buffers:
        offsets[buffer.name] = cursor
        cursor += align(buffer.nbytes)
    return MemoryPlan(offsets, cursor, cursor)
