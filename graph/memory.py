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
import random
from dataclasses import dataclass, field, replace

from graph.ir import Graph
from graph.passes.inplace import alias_root, inplace_aliases, verify_inplace
from graph.passes.schedule import schedule_for_memory

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
    """Offsets of the buffers in one arena, and the numbers the reports print.

    ``aliases`` maps each value written in place to the value whose buffer it takes over;
    ``offset`` resolves them. Lower bounds before the passes: ``program_order_bound_bytes`` in
    the order the tracer and autodiff emitted, ``reordered_bound_bytes`` in the memory-aware
    order (``graph.passes.schedule``), both before in-place. A plan made with ``recompute``
    (its policy) keeps the plan of the same graph without it in ``without_recompute``."""

    offsets: dict[str, int]
    arena_bytes: int
    naive_bytes: int
    lower_bound_bytes: int = 0
    buffers: tuple[Buffer, ...] = ()
    aliases: dict[str, str] = field(default_factory=dict)
    program_order_bound_bytes: int = 0
    reordered_bound_bytes: int = 0
    recompute: str | tuple[str, ...] | None = None
    without_recompute: MemoryPlan | None = None

    def offset(self, name: str) -> int:
        return self.offsets[alias_root(self.aliases, name)]


def align(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def persistent_values(graph: Graph) -> set[str]:
    """Values stored outside the arena: inputs, parameters, state, constants, graph outputs
    and gradients."""
    produced = {v.name for node in graph.nodes for v in node.outputs}
    outputs = {v.name for v in graph.outputs} | {v.name for v in graph.grads.values()}
    return (set(graph.values) - produced) | outputs


def transient_buffers(
    graph: Graph, scratch_bytes: dict[str, int], aliases: dict[str, str] | None = None
) -> list[Buffer]:
    """Activations (except graph outputs and parameter gradients) and per-node scratch, with
    their lifetimes over the node schedule. ``scratch_bytes`` maps node names to the workspace
    their kernel needs. ``aliases`` (the in-place pass) maps a value to the input it overwrites:
    such a chain is one buffer, named after its first value, live from its first write to its
    last value's last read."""
    aliases = aliases or {}
    outputs = {v.name for v in graph.outputs} | {v.name for v in graph.grads.values()}
    step_of = {node.name: i for i, node in enumerate(graph.nodes)}
    spans: dict[str, list[int]] = {}  # buffer name -> [bytes, first use, last use]
    buffers = []
    for i, node in enumerate(graph.nodes):
        for value in node.outputs:
            if value.name not in outputs:
                last = max((step_of[user.name] for user in value.users), default=i)
                root = alias_root(aliases, value.name)
                span = spans.setdefault(root, [value.type.nbytes, i, last])
                span[2] = max(span[2], last)
        if scratch_bytes.get(node.name):
            buffers.append(Buffer(f"{node.name}#scratch", scratch_bytes[node.name], i, i))
    buffers += [Buffer(name, nbytes, first, last) for name, (nbytes, first, last) in spans.items()]
    return sorted(buffers, key=lambda b: (b.first_use, b.name))


def plan_graph_memory(
    graph: Graph, scratch_bytes: dict[str, int], inplace: bool = True, reorder: bool = True
) -> MemoryPlan:
    """The whole pipeline for one graph, verified: the memory-aware order (``reorder``; it
    sets ``graph.nodes``), the in-place aliases (``inplace``: used when they make the arena
    smaller, as they do at inference, and not where the peak is the training pass's saved
    activations, which no node may overwrite), then offsets. The plan records the bound in
    program order and after reordering, and one buffer per value as its naive size.
    ``CONVFORGE_NAIVE_PLAN=1`` turns all three steps off, to bisect a wrong answer."""
    if os.environ.get("CONVFORGE_NAIVE_PLAN") == "1":
        inplace = reorder = False

    def peak(g: Graph) -> int:
        return lower_bound(transient_buffers(g, scratch_bytes))

    program_order = reordered = peak(graph)
    if reorder:
        graph.nodes, program_order, reordered = schedule_for_memory(graph, peak)
    plan, aliases = plan_memory(transient_buffers(graph, scratch_bytes)), {}
    if inplace:  # kept only where it pays: an in-place kernel step runs slower (kernels.py)
        persistent = persistent_values(graph)
        candidates = inplace_aliases(graph, persistent)
        verify_inplace(graph, candidates, persistent)
        aliased = plan_memory(transient_buffers(graph, scratch_bytes, candidates))
        if worth_aliasing(aliased, plan):
            plan, aliases = aliased, candidates
    plan = replace(
        plan,
        naive_bytes=plan_naive(transient_buffers(graph, scratch_bytes)).naive_bytes,
        aliases=aliases,
        program_order_bound_bytes=program_order,
        reordered_bound_bytes=reordered,
    )
    verify_plan(plan)
    return plan


def worth_aliasing(aliased: MemoryPlan, plain: MemoryPlan) -> bool:
    """Whether the in-place plan is worth its slower kernel steps: when its arena is smaller."""
    return aliased.arena_bytes < plain.arena_bytes


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
    """Greedy-by-size offsets with best-fit gaps; see the module docstring. Orders tried, the
    smallest arena kept, stopping at the bound: size; size times lifetime (Pisarchyk & Lee's
    "greedy by breadth" flavour); first use (packs chains of short-lived buffers); longest
    lifetime (long-lived buffers low, out of the way of the churn above); then, while the arena
    is over 1% above the bound, a few seeded jitters of the size and lifetime orders (sizes or
    lifetimes scaled by 0.7-1.3), which break the ties and near-ties that fragment the arena."""
    naive = plan_naive(buffers)
    bound = lower_bound(buffers)
    if os.environ.get("CONVFORGE_NAIVE_PLAN") == "1" or not buffers:
        return MemoryPlan(
            naive.offsets, naive.arena_bytes, naive.naive_bytes, bound, tuple(buffers)
        )
    best = None
    for i, key in enumerate(_orders(buffers)):
        if i >= _FIXED_ORDERS and best[1] <= 1.01 * bound:
            break
        offsets, arena = _place(sorted(buffers, key=key))
        if best is None or arena < best[1]:
            best = (offsets, arena)
        if arena == bound:
            break
    return MemoryPlan(best[0], best[1], naive.naive_bytes, bound, tuple(buffers))


_FIXED_ORDERS, _JITTERED_ORDERS = 4, 8


def _orders(buffers: list[Buffer]):
    """Sort keys for ``_place``: the fixed orders, then the seeded jitters."""
    size = lambda b: align(b.nbytes)  # noqa: E731
    life = lambda b: b.last_use - b.first_use + 1  # noqa: E731
    yield lambda b: (-size(b), b.first_use, b.name)
    yield lambda b: (-size(b) * life(b), b.first_use, b.name)
    yield lambda b: (b.first_use, -size(b), b.name)
    yield lambda b: (-life(b), -size(b), b.name)
    rng = random.Random(0)
    for k in range(_JITTERED_ORDERS):
        jitter = {b.name: rng.uniform(0.7, 1.3) for b in buffers}
        if k % 2:
            yield lambda b, j=jitter: (-life(b) * j[b.name], -size(b), b.name)
        else:
            yield lambda b, j=jitter: (-size(b) * j[b.name], b.first_use, b.name)


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


def plan_report(plan: MemoryPlan, top: int = 5) -> dict[str, object]:
    """The numbers of a plan, for reports and ``convforge memory``:

    - ``naive_bytes`` (one buffer per value), ``arena_bytes``, ``lower_bound_bytes``;
    - the bound before the passes: ``program_order_bound_bytes`` (as traced) and
      ``reordered_bound_bytes`` (memory-aware order, before in-place), and
      ``inplace_values``, how many values overwrite an input;
    - ``recompute`` (the policy or None) and, with it, ``without_recompute_arena_bytes`` and
      ``without_recompute_lower_bound_bytes``: the same graph planned keeping everything;
    - ``peak_step`` and ``peak_layers``: the ``top`` buffers live there (name, bytes)."""
    live_at: dict[int, int] = {}
    for b in plan.buffers:
        for step in range(b.first_use, b.last_use + 1):
            live_at[step] = live_at.get(step, 0) + b.nbytes
    peak = max(live_at, key=live_at.get) if live_at else 0
    at_peak = sorted(
        (b for b in plan.buffers if b.first_use <= peak <= b.last_use), key=lambda b: -b.nbytes
    )[:top]
    policy = list(plan.recompute) if isinstance(plan.recompute, tuple) else plan.recompute
    report = {
        "naive_bytes": plan.naive_bytes,
        "arena_bytes": plan.arena_bytes,
        "lower_bound_bytes": plan.lower_bound_bytes,
        "program_order_bound_bytes": plan.program_order_bound_bytes,
        "reordered_bound_bytes": plan.reordered_bound_bytes,
        "inplace_values": len(plan.aliases),
        "recompute": policy,
        "peak_step": peak,
        "peak_layers": [{"name": b.name, "bytes": b.nbytes} for b in at_peak],
    }
    if plan.without_recompute is not None:
        report["without_recompute_arena_bytes"] = plan.without_recompute.arena_bytes
        report["without_recompute_lower_bound_bytes"] = plan.without_recompute.lower_bound_bytes
    return report
