"""The memory passes never change a result: in-place and the memory-aware order give the same
outputs and gradients, bit for bit, as one buffer per value in program order; recompute gives
the same losses, gradients, weights and BatchNorm statistics as keeping every activation."""

from __future__ import annotations

import numpy as np
import pytest

import engine
import graph.memory
import zoo
from backends.cpu.kernels import Kernel
from engine.compiler import memory_plans
from engine.optim import SGD
from tests.zoo.test_all_models import _input

# Residual adds, Inception branches and concat, depthwise + ReLU6, channel LayerNorm + GELU +
# layer scale, channel shuffle and slices, dropout.
MODELS = ["resnet18_cifar", "googlenet", "mobilenet_v2", "convnext_tiny", "shufflenet_v2_x0_5"]
MODELS += ["vgg11"]


def _compile(name: str, **options) -> engine.Executable:
    model = zoo.get(name, num_classes=10)
    optimizer = SGD(lr=1e-3, momentum=0.9, weight_decay=5e-4)
    exe = engine.compile(model, _input(name), batch=2, train=True, optimizer=optimizer, **options)
    exe.poison_buffers()
    return exe


def _batch(name: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.standard_normal((2, *_input(name))).astype(np.float32), np.array([3, 8])


def _assert_same_training(a: engine.Executable, b: engine.Executable, x, y, steps: int = 2):
    b.load_state_dict(a.state_dict())
    for _ in range(steps):
        assert a.train_step(x, y) == b.train_step(x, y)
        for key in a.grads:
            np.testing.assert_array_equal(a.grads[key], b.grads[key], err_msg=key)
    for key in a.params:  # weights and BatchNorm running statistics
        np.testing.assert_array_equal(a.params[key], b.params[key], err_msg=key)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.slow
def test_inplace_and_reorder_change_no_output_or_gradient(name, monkeypatch):
    x, y = _batch(name)
    plain = _compile(name, inplace=False, reorder=False)
    # every candidate alias is used, even where it would not shrink the arena
    monkeypatch.setattr(graph.memory, "worth_aliasing", lambda aliased, plain: True)
    aliased = []
    shim = Kernel.shim
    monkeypatch.setattr(
        Kernel,
        "shim",
        lambda self, dtype, parallel, sources=None: (
            aliased.append((self, sources)) or shim(self, dtype, parallel, sources)
        ),
    )
    passes = _compile(name)
    for kernel, sources in aliased:  # each in-place step is a declared one (warmup has it)
        plain_sources = tuple(range(kernel.buffers))
        assert sources in (None, plain_sources, *kernel.aliased_variants()), kernel.name
    assert passes._inference.memory.aliases and not plain._inference.memory.aliases
    passes.load_state_dict(plain.state_dict())
    np.testing.assert_array_equal(plain.run(x), passes.run(x))
    _assert_same_training(plain, passes, x, y)


def test_planned_arena_matches_one_buffer_per_value(monkeypatch):
    name = "resnet18_cifar"
    x, y = _batch(name)
    planned = _compile(name)
    monkeypatch.setenv("CONVFORGE_NAIVE_PLAN", "1")
    naive = _compile(name)
    report = naive.memory_report()
    assert report["arena_bytes"] == report["naive_bytes"] > planned.memory_report()["arena_bytes"]
    planned.load_state_dict(naive.state_dict())
    np.testing.assert_array_equal(naive.run(x), planned.run(x))
    _assert_same_training(naive, planned, x, y)


@pytest.mark.parametrize(
    "name, policy",
    [
        ("resnet18_cifar", "sqrt"),
        ("resnet18_cifar", ["layer1", "layer3.0"]),
        ("mobilenet_v2", "sqrt"),
        ("vgg11", "sqrt"),  # dropout: the recomputed mask must be the same draw
        ("googlenet", ["inception3a", "inception4b"]),
    ],
)
@pytest.mark.slow
def test_recompute_gives_identical_training(name, policy):
    x, y = _batch(name)
    kept = _compile(name)
    recomputed = _compile(name, recompute=policy)
    graph = recomputed.training_graph
    assert any(node.name.endswith(".recompute") for node in graph.nodes[graph.backward_start :])
    _assert_same_training(kept, recomputed, x, y, steps=3)
    report = recomputed.memory_report()
    assert report["recompute"] == policy
    assert report["arena_bytes"] < report["without_recompute_arena_bytes"]


def test_recompute_sqrt_halves_resnet_activation_memory():
    """At batch 32 (planned, not allocated): the saved activations dominate the arena."""
    plan = memory_plans(zoo.get("resnet18_cifar"), (3, 32, 32), 32, train=True, recompute="sqrt")
    training = plan["training"]
    assert training.recompute == "sqrt"
    assert training.without_recompute.arena_bytes >= 2 * training.arena_bytes


def test_recompute_errors_name_the_problem():
    model = zoo.get("resnet18_cifar")
    with pytest.raises(ValueError, match="recompute applies to training"):
        engine.compile(model, (3, 32, 32), recompute="sqrt")
    with pytest.raises(ValueError, match="no layer named 'layer9'.*'layer1'"):
        engine.compile(model, (3, 32, 32), train=True, recompute=["layer9"])
    with pytest.raises(ValueError, match='"sqrt" or a list of layer names'):
        engine.compile(model, (3, 32, 32), train=True, recompute="half")


def test_cli_memory_prints_the_report(capsys):
    import json

    from engine.cli import main

    assert (
        main(["memory", "lenet5", "--batch", "8", "--train", "--recompute", "sqrt", "--json"]) == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["plan"] == "training" and report["recompute"] == "sqrt"
    for key in ("naive_bytes", "arena_bytes", "lower_bound_bytes", "param_bytes", "grad_bytes"):
        assert report[key] > 0, key
    assert report["without_recompute_arena_bytes"] >= report["arena_bytes"]
    assert report["peak_layers"] and report["arena_bytes"] >= report["lower_bound_bytes"]
    assert main(["memory", "resnet18_cifar", "--batch", "4"]) == 0
    table = capsys.readouterr().out
    assert "arena / lower bound" in table and "live at peak" in table
    assert main(["memory", "lenet5", "--recompute", "sqrt"]) == 2
    assert "--recompute applies to the training plan" in capsys.readouterr().err
    assert main(["memory", "lenet5", "--train", "--recompute", "features,nope"]) == 2
    assert "no layer named 'nope'" in capsys.readouterr().err
