"""Capsule ops and transpose against torch: squash, capsule_predict, routing by agreement (with
the coupling coefficients constant in the backward pass, as the reference implementation),
capsule lengths; forward and gradients in float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graph.functional as F
import graph.nn as nn
from tests.gradcheck import check_gradients
from tests.helpers import DTYPES, Lambda, check


def torch_squash(s, dim=-1, eps=1e-8):
    norm2 = (s * s).sum(dim=dim, keepdim=True)
    return norm2 / (1 + norm2) * s / torch.sqrt(norm2 + eps)


def torch_routing(u_hat, iterations=3):
    """Routing by agreement; the agreement updates see detached predictions, so the coupling
    coefficients carry no gradient (the paper's reference implementation)."""
    b = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype)
    for r in range(iterations):
        c = torch.softmax(b, dim=2)
        s = (c.detach().unsqueeze(-1) * u_hat).sum(dim=1)
        v = torch_squash(s)
        if r + 1 < iterations:
            b = b + (u_hat.detach() * v.detach().unsqueeze(1)).sum(dim=-1)
    return v


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_squash(dim, dtype, rng):
    model = Lambda(lambda x: F.squash(x, dim=dim))
    check(model, lambda x: torch_squash(x, dim), (2, 3, 4, 5), dtype, rng)
    check_gradients(model, lambda tx, p: torch_squash(tx, dim), (2, 3, 4, 5), dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dims", [(0, 1), (1, 3), (2, 3), (0, 3)])
def test_transpose(dims, dtype, rng):
    model = Lambda(lambda x: F.scale(F.transpose(x, *dims), 1.0))
    check(model, lambda x: torch.transpose(x, *dims), (2, 3, 4, 5), dtype, rng, exact=True)
    check_gradients(model, lambda tx, p: torch.transpose(tx, *dims), (2, 3, 4, 5), dtype, rng)


class Capsules(nn.Module):
    """[N, C, H, W] -> 6 input capsules of 4-D (reshape), predictions for 3 output capsules of
    5-D, routing, lengths."""

    def __init__(self, iterations: int) -> None:
        super().__init__()
        self.iterations = iterations
        self.weight = nn.Parameter(0.5 * np.random.default_rng(0).standard_normal((6, 3, 5, 4)))

    def forward(self, x):
        u = F.squash(F.reshape(x, (x.shape[0], 6, 4)), dim=2)
        v = F.capsule_routing(F.capsule_predict(u, self.weight), self.iterations)
        return F.capsule_length(v)


def torch_capsules(tx, p, iterations):
    u = torch_squash(tx.reshape(tx.shape[0], 6, 4))
    u_hat = torch.einsum("ijok,nik->nijo", p["weight"], u)
    v = torch_routing(u_hat, iterations)
    return torch.sqrt((v * v).sum(dim=-1) + 1e-8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("iterations", [1, 3])
def test_capsule_predict_routing_and_length(iterations, dtype, rng):
    """Against torch with the same stop-gradients. Finite differences check one routing
    iteration only: with more, the agreement updates have a true derivative that the routing
    gradient deliberately drops (the coupling coefficients are constants of the backward pass),
    so the exact directional derivative differs by design."""
    check_gradients(
        Capsules(iterations),
        lambda tx, p: torch_capsules(tx, p, iterations),
        (3, 6, 2, 2),
        dtype,
        rng,
        finite_differences=iterations == 1,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_capsnet_margin_loss_training_falls(dtype):
    import engine
    import zoo

    model = zoo.get("capsnet")
    assert model.num_parameters() == 6_804_224
    assert zoo.get("capsnet", reconstruction=True).num_parameters() == 8_215_568
    exe = engine.compile(
        model,
        (1, 28, 28),
        batch=2,
        dtype=dtype,
        train=True,
        loss="margin",
        optimizer=engine.optim.Adam(lr=1e-3),
    )
    x = np.random.default_rng(0).random((2, 1, 28, 28)).astype(dtype)
    losses = [exe.train_step(x, np.array([3, 7])) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
