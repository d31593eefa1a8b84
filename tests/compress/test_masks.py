"""Pruning masks inside the compiled training step: the ``apply_mask`` op, and masked weights,
gradients and optimizer slots that stay exactly zero through training."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import engine
from backends import get_backend
from engine.compress import compile_masked
from engine.optim import SGD, Adam, AdamW
from graph import nn
from graph.compress.masks import add_mask_nodes
from graph.compress.prune import magnitude_masks, prunable
from graph.ir import Graph, TensorType
from graph.ops import get_op
from tests.helpers import DTYPES


def _small_net() -> nn.Module:
    nn.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def _batch(rng, batch=8):
    return rng.standard_normal((batch, 2, 6, 6)).astype(np.float32), rng.integers(0, 5, batch)


@pytest.mark.parametrize("backend", ["cpu", "gpu-emulated"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_apply_mask_zeroes_exactly_the_masked_entries(dtype, backend):
    """The CPU kernel (serial and parallel chunks) and the CUDA kernel in the CPU emulation,
    against torch.where; no other element changes (NaN and -0.0 included)."""
    if backend == "gpu-emulated" and shutil.which("g++") is None:
        pytest.skip("the GPU emulation needs g++, which is not on PATH")
    rng = np.random.default_rng(0)
    n = 10_000 if backend == "cpu" else 700  # the emulator runs threads one by one
    x = rng.standard_normal(n).astype(dtype)
    x[:3] = [np.nan, -0.0, np.inf]
    mask = (rng.random(n) < 0.3).astype(dtype)
    mask[:3] = 1
    graph = Graph()
    xv = graph.add_value("x", TensorType((n,), dtype), "param")
    mv = graph.add_value("m", TensorType((n,), dtype), "param")
    node = graph.add_node("apply_mask", [xv, mv], [], {}, "layer.apply_mask")
    device = get_backend(backend)
    buffers = {"x": device.from_host(x), "m": device.from_host(mask)}
    steps = device.lower(node, lambda name: device.address(buffers[name]), 0, [])
    device.runner(steps).run()
    expected = torch.where(torch.from_numpy(mask) == 0, 0.0, torch.from_numpy(x)).numpy()
    out = device.to_host(buffers["x"])
    np.testing.assert_array_equal(out, expected)
    assert np.signbit(out[1])


def test_apply_mask_refuses_a_mask_of_another_shape():
    rule = r"mask must have the tensor's shape.*\[4, 3\].*\[3, 4\]"
    with pytest.raises(ValueError, match=rule):
        get_op("apply_mask").infer([TensorType((4, 3)), TensorType((3, 4))], {})


@pytest.mark.parametrize(
    "optimizer",
    [
        lambda: SGD(lr=0.1, momentum=0.9, weight_decay=1e-3, nesterov=True),
        lambda: Adam(lr=0.01, weight_decay=1e-3),
        lambda: AdamW(lr=0.01),
    ],
    ids=["sgd-nesterov", "adam", "adamw"],
)
def test_masked_weights_gradients_and_slots_stay_zero(optimizer):
    model = _small_net()
    weights = {n: t.data for n, t, _ in model.named_tensors() if n in prunable(model.state_dict())}
    masks = magnitude_masks(weights, fraction=0.6)
    exe = compile_masked(model, masks, optimizer(), (2, 6, 6), batch=8)
    rng = np.random.default_rng(1)
    before = {n: exe.params[n].copy() for n in masks}
    for _ in range(5):
        assert np.isfinite(exe.train_step(*_batch(rng)))
    slots = exe.optimizer_state
    for name, mask in masks.items():
        assert np.all(exe.params[name][~mask] == 0), name
        assert np.all(exe.grads[name][~mask] == 0), name
        mine = [v for k, v in slots.items() if k.startswith(f"optimizer.{name}.")]
        assert mine and all(np.all(v[~mask] == 0) for v in mine), name
        # the kept weights did train
        assert np.any(exe.params[name][mask] != before[name][mask]), name
        assert np.all(slots[f"optimizer.{name}.{exe.optimizer.state_names[0]}"][mask] != 0)


def test_masked_training_equals_unmasked_training_of_a_zero_gradient_oracle():
    """With momentum SGD, the kept weights follow torch.optim.SGD on the masked model whose
    gradients are masked (the reference of Han et al.'s retraining)."""
    model = _small_net()
    weights = {n: t.data for n, t, _ in model.named_tensors() if n in prunable(model.state_dict())}
    masks = magnitude_masks(weights, fraction=0.5, scope="global")
    exe = compile_masked(model, masks, SGD(lr=0.05, momentum=0.9), (2, 6, 6), batch=8)
    twin = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(144, 5),
    )
    state = {k: torch.from_numpy(np.array(v)) for k, v in exe.state_dict().items()}
    twin.load_state_dict(state)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9)
    named = dict(twin.named_parameters())
    rng = np.random.default_rng(2)
    for _ in range(4):
        x, y = _batch(rng)
        exe.train_step(x, y)
        sgd.zero_grad()
        torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        for name, mask in masks.items():
            named[name].grad *= torch.from_numpy(mask.astype(np.float32))
        sgd.step()
    for name, value in twin.state_dict().items():
        ours = exe.state_dict()[name]
        scale = max(float(np.linalg.norm(value.numpy())), 1.0)
        assert np.linalg.norm(ours - value.numpy()) / scale < 1e-4, name


def test_masks_refuse_a_parameter_without_update():
    model = _small_net()
    exe = engine.compile(model, (2, 6, 6), batch=2, train=True, optimizer=SGD())
    with pytest.raises(
        ValueError, match="cannot mask nope.weight: the training graph has no optimizer update"
    ):
        add_mask_nodes(exe.training_graph.copy(), ["nope.weight"])
