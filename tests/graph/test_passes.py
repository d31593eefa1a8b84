"""The memory passes on random graphs (hypothesis) and by hand, without a backend.

Random DAGs of elementwise ops (sizes, fan-out, lifetimes and in-place candidates drawn by
hypothesis) are scheduled, given in-place aliases and planned; then an arena simulator runs
them in NumPy with every value a view at its planned offset (aliased values share bytes) and
must give the outputs of a plain evaluation where every value has its own array.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph.ir import Graph, TensorType
from graph.memory import (
    lower_bound,
    persistent_values,
    plan_memory,
    transient_buffers,
    verify_plan,
)
from graph.ops import get_op
from graph.passes.inplace import inplace_aliases, verify_inplace
from graph.passes.schedule import memory_aware_order, schedule_for_memory

NUMPY_OPS = {
    "relu": lambda a, out: np.maximum(a, 0, out=out),
    "sigmoid": lambda a, out: np.divide(1.0, 1.0 + np.exp(-a), out=out),
    "neg": lambda a, out: np.negative(a, out=out),
    "add": lambda a, b, out: np.add(a, b, out=out),
    "mul": lambda a, b, out: np.multiply(a, b, out=out),
}


@st.composite
def random_graphs(draw) -> Graph:
    """A DAG over one input: each node applies a unary or binary elementwise op to earlier
    values (drawn, so fan-out and lifetimes vary); values differ in size by their shape."""
    graph = Graph()
    sizes = [(2, 3, 4, 4), (2, 6, 2, 4)]  # same bytes: reshape-free, but two shapes
    values = [graph.add_value("input", TensorType(sizes[0], "float64"), "input")]
    for k in range(draw(st.integers(1, 14))):
        op = draw(st.sampled_from(sorted(NUMPY_OPS)))
        arity = get_op(op).arity
        inputs = [values[draw(st.integers(0, len(values) - 1))] for _ in range(arity)]
        values.append(graph.add_node(op, inputs, [inputs[0].type], {}, f"n{k}").outputs[0])
    unused = [v for v in values[1:] if not v.users]
    extra = draw(st.lists(st.sampled_from(values[1:]), max_size=2))
    graph.outputs = list(dict.fromkeys(unused + extra)) or values[-1:]
    graph.verify()
    return graph


def evaluate(graph: Graph, x: np.ndarray, place=None) -> list[np.ndarray]:
    """Run ``graph`` in node order; ``place(value)`` gives an output's array (a fresh one by
    default, or a view into a simulated arena)."""
    arrays = {"input": x}
    for node in graph.nodes:
        out = node.outputs[0]
        target = place(out) if place else np.empty(out.shape)
        NUMPY_OPS[node.op](*(arrays[v.name] for v in node.inputs), out=target)
        arrays[out.name] = target
    return [arrays[v.name].copy() for v in graph.outputs]


def check_order(graph: Graph) -> None:
    seen = {v.name for v in graph.inputs}
    for node in graph.nodes:
        assert all(v.name in seen for v in node.inputs), f"{node.name} runs before an input"
        seen.update(v.name for v in node.outputs)


@settings(max_examples=200, deadline=None)
@given(random_graphs(), st.booleans())
def test_scheduled_inplace_arena_runs_like_separate_buffers(graph, reorder):
    x = np.random.default_rng(0).standard_normal(graph.inputs[0].shape)
    expected = evaluate(graph, x)
    peak = lambda g: lower_bound(transient_buffers(g, {}))  # noqa: E731
    if reorder:
        names = [node.name for node in graph.nodes]
        order, before, after = schedule_for_memory(graph, peak)
        assert after <= before and [node.name for node in graph.nodes] == names  # untouched
        graph.nodes = order
        check_order(graph)
    persistent = persistent_values(graph)
    aliases = inplace_aliases(graph, persistent)
    verify_inplace(graph, aliases, persistent)
    plan = plan_memory(transient_buffers(graph, {}, aliases))
    verify_plan(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes
    assert plan.lower_bound_bytes <= lower_bound(transient_buffers(graph, {}))  # never worse
    arena = np.full(plan.arena_bytes // 8 + 1, np.nan)

    def place(value):
        if value.name in persistent:
            return np.full(value.shape, np.nan)
        root = value.name
        while root in aliases:
            root = aliases[root]
        start = plan.offsets[root] // 8
        return arena[start : start + value.type.numel].reshape(value.shape)

    for actual, wanted in zip(evaluate(graph, x, place), expected, strict=True):
        np.testing.assert_array_equal(actual, wanted)


def chain_graph() -> Graph:
    """input -> a = relu(input) -> b = sigmoid(a) -> c = add(b, a) -> out = neg(c)."""
    graph = Graph()
    t = TensorType((4, 8), "float64")
    x = graph.add_value("input", t, "input")
    a = graph.add_node("relu", [x], [t], {}, "a").outputs[0]
    b = graph.add_node("sigmoid", [a], [t], {}, "b").outputs[0]
    c = graph.add_node("add", [b, a], [t], {}, "c").outputs[0]
    graph.outputs = graph.add_node("neg", [c], [t], {}, "out").outputs
    return graph


def test_inplace_by_hand_skips_inputs_outputs_and_values_read_later():
    graph = chain_graph()
    persistent = persistent_values(graph)
    aliases = inplace_aliases(graph, persistent)
    # a: input is persistent; b: a is read again by c; c: over b (its last reader; a also
    # dies there but b comes first); out: a graph output lives outside the arena
    assert aliases == {"c": "b"}


def test_verify_inplace_rejects_a_value_read_later():
    graph = chain_graph()
    persistent = persistent_values(graph)
    with pytest.raises(AssertionError, match="still read later by"):
        verify_inplace(graph, {"b": "a"}, persistent)
    with pytest.raises(AssertionError, match="does not declare"):
        verify_inplace(graph, {"c": "input"}, persistent)


def test_schedule_runs_a_branch_to_its_end_before_opening_another():
    """Two branches from one input, written branch-first by the tracer but interleaved here:
    x -> a1 (big), x -> b1 (big), a1 -> a2 (small), b1 -> b2 (small). Program order keeps both
    big values live; the greedy order finishes a branch first."""
    graph = Graph()
    big, small = TensorType((2, 8, 16, 16), "float64"), TensorType((2, 8, 1, 1), "float64")
    x = graph.add_value("input", big, "input")
    a1 = graph.add_node("relu", [x], [big], {}, "a1").outputs[0]
    b1 = graph.add_node("sigmoid", [x], [big], {}, "b1").outputs[0]
    a2 = graph.add_node("global_avg_pool2d", [a1], [small], {}, "a2").outputs[0]
    b2 = graph.add_node("global_avg_pool2d", [b1], [small], {}, "b2").outputs[0]
    graph.outputs = graph.add_node("add", [a2, b2], [small], {}, "out").outputs
    peak = lambda g: lower_bound(transient_buffers(g, {}))  # noqa: E731
    order, before, after = schedule_for_memory(graph, peak)
    assert [n.name for n in order] == ["a1", "a2", "b1", "b2", "out"]
    assert after < before
    assert memory_aware_order(graph) == order
