"""Memory plans: where each feature map and scratch buffer lives in one arena.

The contract every backend uses: a plan maps buffer names to byte offsets inside one arena of
``arena_bytes``; offsets are 64-byte aligned. Buffers here are the transient ones (activations
that are not graph outputs, and kernel scratch such as im2col columns); graph inputs, outputs,
parameters and state live in persistent storage outside the arena.

``plan_memory`` is the planner (Pisarchyk & Lee 2020, "greedy by size", as TFLite, TVM and
tinygrad plan their arenas):

1. lifetimes: each buffer is live from the step that writes it to the last step that reads it
   (``transient_buffers``); a node's outputs and scratch are live together with its inputs, so
   no kernel ever writes over something it reads;
2. offsets: buffers in decreasing size, each into the smallest gap (best fit) between the
   already placed buffers whose lifetimes overlap its own, else after the highest of them;
3. numbers: ``naive_bytes`` (one slot per buffer), ``arena_bytes`` and ``lower_bound_bytes``,
   the largest sum of live bytes at any step of this schedule: no plan can do better.

``verify_plan`` checks, with its own sweep and sharing no code with the planner, that no two
buffers live at the same step overlap. ``CONVFORGE_NAIVE_PLAN=1`` switches the planner off
(one slot per buffer), to bisect a wrong answer.
"""

from __future__ import annotations

import os
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
    lower_bound_bytes: int = 0
    buffers: tuple[Buffer, ...] = ()


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


def lower_bound(buffers: list[Buffer]) -> int:
    """The largest sum of (aligned) live bytes at any step: a floor for every plan."""
    if not buffers:
        return 0
    steps = max(b.last_use for b in buffers) + 1
    live = [0] * (steps + 1)
    for b in buffers:  # difference array: +size at first use, -size after last use
        live[b.first_use] += align(b.nbytes)
        live[b.last_use + 1] -= align(b.nbytes)
    peak, running = 0, 0
    for delta in live:
        running += delta
        peak = max(peak, running)
    return peak


def plan_memory(buffers: list[Buffer]) -> MemoryPlan:
    """Greedy-by-size offsets with best-fit gaps; see the module docstring. Three orders are
    tried (size; size times lifetime, Pisarchyk & Lee's "greedy by breadth" flavour; and
    first use, which packs chains of short-lived buffers) and the smallest arena is kept."""
    naive = plan_naive(buffers)
    bound = lower_bound(buffers)
    if os.environ.get("CONVFORGE_NAIVE_PLAN") == "1" or not buffers:
        return MemoryPlan(
            naive.offsets, naive.arena_bytes, naive.naive_bytes, bound, tuple(buffers)
        )
    orders = (
        lambda b: (-align(b.nbytes), b.first_use, b.name),
        lambda b: (-align(b.nbytes) * (b.last_use - b.first_use + 1), b.first_use, b.name),
        lambda b: (b.first_use, -align(b.nbytes), b.name),
    )
    best = None
    for key in orders:
        offsets, arena = _place(sorted(buffers, key=key))
        if best is None or arena < best[1]:
            best = (offsets, arena)
        if arena == bound:
            break
    return MemoryPlan(best[0], best[1], naive.naive_bytes, bound, tuple(buffers))


def _place(order: list[Buffer]) -> tuple[dict[str, int], int]:
    """Offsets for buffers taken in ``order``: each in the smallest gap between the placed
    buffers whose lifetimes overlap its own, else above the highest of them."""
    placed: list[tuple[int, int, Buffer]] = []  # (offset, end, buffer)
    offsets: dict[str, int] = {}
    for buffer in order:
        size = align(buffer.nbytes)
        busy = sorted(
            (start, end)
            for start, end, other in placed
            if other.first_use <= buffer.last_use and buffer.first_use <= other.last_use
        )
        best, best_gap, cursor = None, None, 0
        for start, end in busy:  # gaps between the overlapping buffers, lowest first
            gap = start - cursor
            if gap >= size and (best_gap is None or gap < best_gap):
                best, best_gap = cursor, gap
            cursor = max(cursor, end)
        offset = best if best is not None else cursor
        offsets[buffer.name] = offset
        placed.append((offset, offset + size, buffer))
    return offsets, max(end for _, end, _ in placed)


def verify_plan(plan: MemoryPlan) -> None:
    """Raise if two buffers live at the same step share a byte (an independent sweep over
    steps, not the planner's own logic)."""
    by_step: dict[int, list[Buffer]] = {}
    for b in plan.buffers:
        for step in range(b.first_use, b.last_use + 1):
            by_step.setdefault(step, []).append(b)
    for step, live in sorted(by_step.items()):
        spans = sorted(
            (plan.offsets[b.name], plan.offsets[b.name] + b.nbytes, b.name) for b in live
        )
        for (_, end, name), (start, _, other) in zip(spans, spans[1:], strict=False):
            if start < end:
                raise AssertionError(f"overlap at step {step}: {name} and {other}")
        for start, end, name in spans:
            if start % ALIGN or end > plan.arena_bytes:
                raise AssertionError(
                    f"{name} at [{start}, {end}) is misaligned or outside "
                    f"the {plan.arena_bytes}-byte arena"
                )
