"""CPU normalisation kernels (``backends/cpu/norm.py``) against ``torch.nn.functional``.

batch_norm (inference: BatchNorm2d with and without affine, BatchNorm1d after Flatten),
layer_norm2d (channel LayerNorm of NCHW, with and without affine) and softmax (dim 1 of 2-D and
4-D inputs, and the last axis) and local_response_norm (odd and even windows, windows wider
than the channels, ranks 3 to 5). Statistics and affine parameters are fresh random values in the
tested dtype (variances positive, far from 1, means far from 0), so every term of the transform
shows; inputs are random and buffers NaN-poisoned. Each op also runs once above
``PARALLEL_MIN_WORK``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from tests.helpers import DTYPES, OP_TOLERANCE, Net, rel_error, run_poisoned, run_with_random_params

SHAPES = [(2, 5, 7, 9), (2, 16, 40, 40)]
SHAPE_IDS = ["serial", "parallel"]


def assert_close(out: np.ndarray, ref: torch.Tensor, dtype: str) -> None:
    err = rel_error(out, ref.numpy())
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


# **** batch_norm ****


@pytest.mark.parametrize("shape", SHAPES, ids=SHAPE_IDS)
@pytest.mark.parametrize("affine,eps", [(True, 1e-5), (False, 1e-5), (True, 0.3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm2d(affine, eps, shape, dtype, rng):
    x = rng.standard_normal(shape).astype(dtype)
    out, p = run_with_random_params(
        Net(nn.BatchNorm2d(shape[1], eps, affine=affine)), x, dtype, rng
    )
    ref = TF.batch_norm(
        torch.from_numpy(x),
        p["layer.running_mean"],
        p["layer.running_var"],
        p.get("layer.weight"),
        p.get("layer.bias"),
        training=False,
        eps=eps,
    )
    assert_close(out, ref, dtype)


@pytest.mark.parametrize(
    "shape", [(3, 4, 1, 1), (2, 3, 5, 7), (4, 8, 32, 32)], ids=["channels", "flattened", "parallel"]
)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm1d_after_flatten(affine, shape, dtype, rng):
    features = int(np.prod(shape[1:]))
    x = rng.standard_normal(shape).astype(dtype)
    out, p = run_with_random_params(
        Net(nn.BatchNorm1d(features, affine=affine), True), x, dtype, rng
    )
    ref = TF.batch_norm(
        torch.from_numpy(x).reshape(shape[0], -1),
        p["layer.running_mean"],
        p["layer.running_var"],
        p.get("layer.weight"),
        p.get("layer.bias"),
        training=False,
    )
    assert_close(out, ref, dtype)


# **** layer_norm2d ****


@pytest.mark.parametrize("shape", SHAPES + [(3, 1, 4, 5)], ids=SHAPE_IDS + ["one_channel"])
@pytest.mark.parametrize("affine,eps", [(True, 1e-6), (False, 1e-6), (True, 0.1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm2d(affine, eps, shape, dtype, rng):
    """The oracle: ``F.layer_norm`` over C of the channels-last view. The input gets a per-pixel
    offset so the mean subtraction matters."""
    x = rng.standard_normal(shape) + 3.0 * rng.standard_normal((shape[0], 1, *shape[2:]))
    x = x.astype(dtype)
    layer = nn.LayerNorm2d(shape[1], eps, elementwise_affine=affine)
    out, p = run_with_random_params(Net(layer), x, dtype, rng)
    channels_last = torch.from_numpy(x).permute(0, 2, 3, 1)
    ref = TF.layer_norm(channels_last, (shape[1],), p.get("layer.weight"), p.get("layer.bias"), eps)
    assert_close(out, ref.permute(0, 3, 1, 2).contiguous(), dtype)


# **** softmax ****


class Softmax2d(nn.Module):
    """Flatten to [N, C*H*W], then softmax over dim 1 (the classifier-head case)."""

    def forward(self, x):
        return F.softmax(F.flatten(x, 1), dim=1)


SOFTMAX_CASES = {
    "2d_dim1": (Softmax2d(), lambda x: TF.softmax(x.flatten(1), dim=1), (3, 10, 1, 1)),
    "2d_dim1_wide": (Softmax2d(), lambda x: TF.softmax(x.flatten(1), dim=1), (4, 5, 3, 7)),
    "4d_dim1": (nn.Softmax(1), lambda x: TF.softmax(x, 1), (2, 5, 7, 9)),
    "4d_dim1_parallel": (nn.Softmax(1), lambda x: TF.softmax(x, 1), (2, 16, 40, 40)),
    "4d_dim_last": (nn.Softmax(-1), lambda x: TF.softmax(x, -1), (2, 5, 7, 9)),
    "4d_dim0": (nn.Softmax(0), lambda x: TF.softmax(x, 0), (3, 5, 7, 9)),
}


@pytest.mark.parametrize("case", list(SOFTMAX_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax(case, dtype, rng):
    """Inputs scaled by 20 so the max subtraction is needed in float32."""
    model, oracle, shape = SOFTMAX_CASES[case]
    x = (20.0 * rng.standard_normal(shape)).astype(dtype)
    out = run_poisoned(model, x, dtype)
    assert_close(out, oracle(torch.from_numpy(x)), dtype)


# **** local_response_norm ****

# name: (size, alpha, beta, k, input shape): AlexNet's and GoogLeNet's settings, even sizes
# (torch's window is then one channel longer before than after), a window wider than the
# channels, rank 3 and rank 5 inputs ([N, C, ...] with any trailing axes), one parallel case.
LRN_CASES = {
    "alexnet": (5, 1e-4, 0.75, 2.0, (2, 7, 5, 6)),
    "googlenet": (5, 1e-4, 0.75, 1.0, (2, 9, 4, 3)),
    "even_size": (4, 0.5, 0.6, 1.5, (2, 6, 3, 5)),
    "size_2": (2, 1.0, 1.0, 0.5, (3, 5, 2, 3)),
    "wider_than_channels": (7, 2.0, 0.9, 1.0, (2, 3, 4, 4)),
    "even_wider_than_channels": (6, 2.0, 0.9, 1.0, (2, 3, 4, 4)),
    "size_1": (1, 0.3, 0.5, 1.0, (2, 4, 3, 3)),
    "rank3": (3, 0.5, 0.75, 1.0, (2, 6, 7)),
    "rank5": (3, 0.5, 0.75, 1.0, (2, 5, 2, 3, 4)),
    "parallel": (5, 1e-3, 0.75, 1.0, (2, 32, 40, 40)),
}


class Reshaped(nn.Module):
    """``layer`` on the NCHW input reshaped to ``shape`` (rank 3 or 5), flattened back."""

    def __init__(self, layer: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layer, self.shape = layer, shape

    def forward(self, x):
        return F.reshape(self.layer(F.reshape(x, self.shape)), x.shape)


def lrn_model(case: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The layer under test and the NCHW shape it is compiled for."""
    size, alpha, beta, k, shape = LRN_CASES[case]
    layer = nn.LocalResponseNorm(size, alpha, beta, k)
    if len(shape) == 4:
        return layer, shape
    nchw = (*shape[:2], int(np.prod(shape[2:])), 1)
    return Reshaped(layer, shape), nchw


@pytest.mark.parametrize("case", list(LRN_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_local_response_norm(case, dtype, rng):
    """Inputs scaled by 3 so the normaliser is far from k (alpha matters)."""
    size, alpha, beta, k, shape = LRN_CASES[case]
    model, nchw = lrn_model(case)
    x = (3.0 * rng.standard_normal(shape)).astype(dtype)
    out = run_poisoned(model, x.reshape(nchw), dtype).reshape(shape)
    ref = TF.local_response_norm(torch.from_numpy(x), size, alpha, beta, k)
    assert_close(out, ref, dtype)


def test_local_response_norm_checks_its_arguments():
    with pytest.raises(ValueError, match="LocalResponseNorm size must be positive.*size=0"):
        nn.LocalResponseNorm(0)
    with pytest.raises(ValueError, match=r"layer: local_response_norm k must be positive.*k=0"):
        run_poisoned(Net(nn.LocalResponseNorm(3, k=0.0)), np.ones((1, 2, 3, 3)), "float32")
    with pytest.raises(ValueError, match=r"layer: local_response_norm expects .*rank 3 or more"):
        run_poisoned(Net(nn.LocalResponseNorm(3), flatten=True), np.ones((1, 2, 3, 3)), "float32")
