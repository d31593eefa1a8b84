"""Ops the zoo needs beyond the foundation: hardtanh/ReLU6 (MobileNet v2), sub and neg (highway
gates), channel_scale (ConvNeXt's layer scale), split/chunk (ShuffleNet v2's channel split).
Forward against torch and gradients through the shared checker, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from tests.gradcheck import away_from, check_gradients
from tests.helpers import DTYPES, Lambda, Net, check

SHAPE = (2, 4, 5, 6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "layer,oracle",
    [
        (nn.ReLU6(), TF.relu6),
        (nn.Hardtanh(), TF.hardtanh),
        (nn.Hardtanh(-0.5, 2.0), lambda x: TF.hardtanh(x, -0.5, 2.0)),
    ],
    ids=["relu6", "hardtanh", "hardtanh_custom"],
)
def test_hardtanh_forward_and_gradient(layer, oracle, dtype, rng):
    check(layer, oracle, SHAPE, dtype, rng)
    x = away_from(3.0 * rng.standard_normal(SHAPE), [-1.0, -0.5, 0.0, 1.0, 2.0, 6.0])
    check_gradients(layer, lambda tx, p: oracle(tx), SHAPE, dtype, rng, x=x)


class Gate(nn.Module):
    """A highway-style gate: y = h * t + x - x * t, written with sub and neg."""

    def __init__(self) -> None:
        super().__init__()
        self.h = nn.Conv2d(4, 4, 3, padding=1)
        self.t = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        t = F.sigmoid(self.t(x))
        return -(x * t - F.relu(self.h(x)) * t) + x


def _torch_gate(tx, p):
    t = torch.sigmoid(TF.conv2d(tx, p["t.weight"], p["t.bias"]))
    h = torch.relu(TF.conv2d(tx, p["h.weight"], p["h.bias"], padding=1))
    return -(tx * t - h * t) + tx


@pytest.mark.parametrize("dtype", DTYPES)
def test_sub_and_neg_in_a_gate(dtype, rng):
    check_gradients(Gate(), _torch_gate, SHAPE, dtype, rng)


class LayerScale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gamma = nn.Parameter(np.full(4, 1e-1, np.float32))

    def forward(self, x):
        return F.channel_scale(x, self.gamma)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [SHAPE, (2, 4)], ids=["nchw", "nc"])
def test_channel_scale_forward_and_gradient(shape, dtype, rng):
    model = LayerScale() if len(shape) == 4 else Net(LayerScale(), flatten=True)
    key = "gamma" if len(shape) == 4 else "layer.gamma"
    view = (1, -1, 1, 1) if len(shape) == 4 else (1, -1)
    x_shape = shape if len(shape) == 4 else (2, 4, 1, 1)
    check_gradients(
        model,
        lambda tx, p: (tx if len(shape) == 4 else tx.flatten(1)) * p[key].view(view),
        x_shape,
        dtype,
        rng,
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_and_chunk_forward_and_gradient(dtype, rng):
    def ours(x):
        a, b = F.chunk(x, 2, dim=1)
        c, d, e = F.split(x, [1, 2, 3], dim=3)
        return F.cat([F.tanh(b), a], 1) + F.cat([e, d, c], 3)

    def reference(tx, p=None):
        a, b = torch.chunk(tx, 2, dim=1)
        c, d, e = torch.split(tx, [1, 2, 3], dim=3)
        return torch.cat([torch.tanh(b), a], 1) + torch.cat([e, d, c], 3)

    check(Lambda(ours), reference, SHAPE, dtype, rng)
    check_gradients(Lambda(ours), reference, SHAPE, dtype, rng)


def test_split_rejects_bad_sections():
    from graph.trace import trace

    with pytest.raises(ValueError, match="sum to 6"):
        trace(Lambda(lambda x: F.split(x, [1, 2], dim=3)[0]), SHAPE[1:], batch=2)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scale_forward_and_gradient(dtype, rng):
    """LeNet-1998's squashing function, A tanh(S a), built from scale and tanh."""

    def reference(tx, p=None):
        return 1.7159 * torch.tanh(tx * (2.0 / 3.0))

    model = Lambda(lambda x: F.scale(F.tanh(F.scale(x, 2.0 / 3.0)), 1.7159))
    check(model, reference, SHAPE, dtype, rng)
    check_gradients(model, reference, SHAPE, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stochastic_depth_drops_whole_samples_in_training_only(dtype, rng):
    """torchvision's StochasticDepth(p, "row"): each sample kept (scaled by 1/(1-p)) or zeroed
    as a whole; about a fraction p dropped; the identity at inference."""
    import engine

    p, batch = 0.5, 256
    model = Net(nn.Sequential(nn.Conv2d(3, 3, 1), nn.StochasticDepth(p)))
    exe = engine.compile(model, (3, 4, 4), batch=batch, dtype=dtype, train=True, loss="mse")
    x = rng.standard_normal((batch, 3, 4, 4)).astype(dtype)
    exe.eval()
    reference = exe.run(x)
    exe.train()
    out = exe.run(x)
    ratio = out.reshape(batch, -1) / reference.reshape(batch, -1)
    per_sample = ratio[:, :1]
    np.testing.assert_allclose(ratio, np.broadcast_to(per_sample, ratio.shape), rtol=1e-5)
    assert set(np.round(per_sample.ravel(), 4)) <= {0.0, 2.0}
    assert abs(np.mean(per_sample == 0) - p) < 6 * np.sqrt(p * (1 - p) / batch)
    assert not np.array_equal(exe.run(x), out)  # a new draw at the next training forward


@pytest.mark.parametrize("dtype", DTYPES)
def test_stochastic_depth_with_p_zero_is_the_identity_in_gradients(dtype, rng):
    check_gradients(
        Lambda(lambda x: F.stochastic_depth(F.tanh(x), 0.0)),
        lambda tx, p: torch.tanh(tx),
        SHAPE,
        dtype,
        rng,
    )
