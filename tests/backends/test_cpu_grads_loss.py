"""Gradients of the losses on the CPU: cross-entropy (with and without label smoothing) against
``torch.nn.functional.cross_entropy``, and mean squared error against ``F.mse_loss``.

The cross-entropy model is a linear classifier after Flatten: the loss, the input gradient and
both parameter gradients are compared with torch autograd (float32 and float64), and in float64
the loss is also differentiated by central differences along a random direction through the
input and the parameters. The MSE case runs the shared checker, whose loss is MSE.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.nn as nn
from tests.gradcheck import check_directional_derivative, check_gradients, randomize_params
from tests.helpers import DTYPES, OP_TOLERANCE, Net, rel_error


@pytest.mark.parametrize(
    "shape,classes", [((4, 3, 2, 2), 5), ((16, 8, 4, 4), 10)], ids=["small", "parallel"]
)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_grad(shape, classes, label_smoothing, dtype, rng):
    features = int(np.prod(shape[1:]))
    model = Net(nn.Linear(features, classes), flatten=True)
    exe = engine.compile(
        model,
        shape[1:],
        shape[0],
        dtype=dtype,
        train=True,
        loss="cross_entropy",
        label_smoothing=label_smoothing,
        input_grad=True,
    )
    randomize_params(exe, rng)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, classes, shape[0])
    exe.poison_buffers()
    loss = exe.forward_backward(x, y)

    tx = torch.tensor(x, requires_grad=True)
    weight = torch.tensor(exe.params["layer.weight"], requires_grad=True)
    bias = torch.tensor(exe.params["layer.bias"], requires_grad=True)
    logits = TF.linear(tx.flatten(1), weight, bias)
    ref = TF.cross_entropy(logits, torch.from_numpy(y), label_smoothing=label_smoothing)
    ref.backward()
    tol = OP_TOLERANCE[dtype]
    assert rel_error(np.array([loss]), np.array([ref.item()])) < tol
    expected = {"input": tx.grad, "layer.weight": weight.grad, "layer.bias": bias.grad}
    for name, grad in expected.items():
        assert rel_error(exe.grads[name], grad.numpy()) < tol, name
    if dtype == "float64":
        check_directional_derivative(exe, x, y, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mse_grad(dtype, rng):
    """The checker's own loss: MSE of a linear layer's output against a random target."""
    model = Net(nn.Linear(12, 7), flatten=True)

    def oracle(x, params):
        return TF.linear(x.flatten(1), params["layer.weight"], params["layer.bias"])

    check_gradients(model, oracle, (5, 3, 2, 2), dtype, rng)


def _torch_margin(lengths, target, m_plus=0.9, m_minus=0.1, down=0.5):
    onehot = torch.nn.functional.one_hot(target, lengths.shape[1]).to(lengths.dtype)
    present = onehot * torch.clamp(m_plus - lengths, min=0) ** 2
    absent = down * (1 - onehot) * torch.clamp(lengths - m_minus, min=0) ** 2
    return (present + absent).sum(dim=1).mean()


@pytest.mark.parametrize("dtype", DTYPES)
def test_margin_loss_and_gradient_match_torch(dtype, rng):
    """The capsule margin loss on sigmoid "lengths" in (0, 1), against a torch oracle."""
    model = Net(nn.Sequential(nn.Linear(12, 10), nn.Sigmoid()), flatten=True)
    exe = engine.compile(
        model, (3, 2, 2), batch=6, dtype=dtype, train=True, loss="margin", input_grad=True
    )
    x = rng.standard_normal((6, 3, 2, 2)).astype(dtype)
    y = rng.integers(0, 10, 6)
    loss = exe.forward_backward(x, y)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in exe.params.items()}
    tx = torch.tensor(x, requires_grad=True)
    lengths = torch.sigmoid(
        torch.nn.functional.linear(tx.flatten(1), params["layer.0.weight"], params["layer.0.bias"])
    )
    ref = _torch_margin(lengths, torch.from_numpy(y))
    ref.backward()
    tol = OP_TOLERANCE[dtype]
    assert rel_error([loss], [ref.item()]) < tol
    assert rel_error(exe.grads["input"], tx.grad.numpy()) < tol
    assert rel_error(exe.grads["layer.0.weight"], params["layer.0.weight"].grad.numpy()) < tol
