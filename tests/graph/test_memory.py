"""The memory planner: random lifetimes (hypothesis) never overlap and never beat the lower
bound; the lower bound and naive sizes by hand; the verifier catches overlaps it is shown;
every zoo model's plans verify and stay near the bound. Imports nothing from backends/."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import zoo
from graph.autodiff import autodiff
from graph.memory import (
    ALIGN,
    Buffer,
    MemoryPlan,
    lower_bound,
    plan_graph_memory,
    plan_memory,
    verify_plan,
)
from graph.trace import trace


@st.composite
def lifetimes(draw) -> list[Buffer]:
    steps = draw(st.integers(1, 30))
    count = draw(st.integers(1, 40))
    buffers = []
    for k in range(count):
        first = draw(st.integers(0, steps - 1))
        last = draw(st.integers(first, steps - 1))
        size = draw(st.integers(1, 5000))
        buffers.append(Buffer(f"b{k}", size, first, last))
    return buffers


@settings(max_examples=300, deadline=None)
@given(lifetimes())
def test_random_plans_verify_and_respect_the_lower_bound(buffers):
    plan = plan_memory(buffers)
    verify_plan(plan)
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes
    assert all(offset % ALIGN == 0 for offset in plan.offsets.values())


def test_lower_bound_and_reuse_by_hand():
    # a chain: each buffer dies when the next is made, so two slots suffice
    chain = [Buffer("a", 100, 0, 1), Buffer("b", 200, 1, 2), Buffer("c", 100, 2, 3)]
    # aligned sizes 128, 256, 128; a and b are live at step 1, b and c at step 2
    assert lower_bound(chain) == 128 + 256
    plan = plan_memory(chain)
    verify_plan(plan)
    assert plan.naive_bytes == 128 + 256 + 128
    assert plan.arena_bytes == 384
    assert plan.offsets["a"] == plan.offsets["c"]  # c reuses a's slot


def test_verifier_reports_an_overlap():
    buffers = (Buffer("a", 64, 0, 2), Buffer("b", 64, 1, 3))
    bad = MemoryPlan({"a": 0, "b": 0}, 128, 128, 128, buffers)
    with pytest.raises(AssertionError, match="overlap at step 1: a and b"):
        verify_plan(bad)


def test_naive_switch_turns_the_planner_off(monkeypatch):
    buffers = [Buffer("a", 100, 0, 0), Buffer("b", 100, 1, 1)]
    assert plan_memory(buffers).arena_bytes == 128
    monkeypatch.setenv("CONVFORGE_NAIVE_PLAN", "1")
    assert plan_memory(buffers).arena_bytes == 256


# Without the backend's scratch sizes: the activation plans of each zoo model, inference and
# training, at a small input.
SMALL = {"inception_v3": (3, 75, 75), "spp_net": (3, 80, 80)}


@pytest.mark.parametrize("name", zoo.names())
@pytest.mark.slow
def test_zoo_plans_verify_and_stay_near_the_lower_bound(name):
    """The whole pipeline (memory-aware order, in-place, offsets), verified inside."""
    spec = zoo.spec(name)
    shape = SMALL.get(name, spec.input_shape if spec.input_shape[1] < 224 else (3, 64, 64))
    forward = trace(zoo.get(name, num_classes=10), shape, batch=4)
    loss = "margin" if name == "capsnet" else "cross_entropy"
    for graph in (autodiff(forward, loss), forward):
        plan = plan_graph_memory(graph, {})
        assert plan.arena_bytes <= 1.02 * plan.lower_bound_bytes, name
        assert (
            plan.lower_bound_bytes <= plan.reordered_bound_bytes <= plan.program_order_bound_bytes
        )
        assert plan.arena_bytes < plan.naive_bytes or len(plan.buffers) < 2


def test_inplace_is_used_where_it_shrinks_the_arena_only():
    """At inference GoogLeNet's ReLUs and BatchNorms overwrite their inputs and the arena
    shrinks; in ResNet training the peak is the saved activations, so the slower aliased
    kernels are not worth it and the plan keeps one buffer per value."""
    googlenet = trace(zoo.get("googlenet", num_classes=10), (3, 64, 64), batch=4)
    with_inplace = plan_graph_memory(googlenet, {})
    assert with_inplace.aliases
    assert with_inplace.arena_bytes < plan_graph_memory(googlenet, {}, inplace=False).arena_bytes
    resnet = autodiff(trace(zoo.get("resnet18_cifar"), (3, 32, 32), batch=4))
    plan = plan_graph_memory(resnet, {})
    assert not plan.aliases
    assert plan.arena_bytes == plan_graph_memory(resnet, {}, inplace=False).arena_bytes
