"""Gradients of the normalisation ops on the CPU: batch_norm in training mode, layer_norm2d,
softmax and local_response_norm, through ``tests.gradcheck.check_gradients`` (torch autograd
in float32 and float64, central differences in float64).

batch_norm runs as torch's train-mode ``F.batch_norm`` (batch statistics) on rank-4 input
(BatchNorm2d) and rank-2 input (BatchNorm1d after Flatten), with and without affine; its
running statistics after ``forward_backward`` must equal torch's after the same train-mode
forwards, as ``exe.params`` shows them and as the inference plan then uses them. layer_norm2d's
oracle is ``F.layer_norm`` over C of the channels-last view. Each op also runs once above
``PARALLEL_MIN_WORK``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.functional as F
import graph.nn as nn
from tests.backends.test_cpu_norm import LRN_CASES, Reshaped, lrn_model
from tests.gradcheck import check_gradients, randomize_params
from tests.helpers import DTYPES, OP_TOLERANCE, Net, rel_error

# **** batch_norm (training mode) ****

# name: input shape; "1d" cases flatten it and run BatchNorm1d over the C*H*W features. (A
# batch of two feature vectors is left out: each normalises to +-1, so the input gradient is
# zero up to rounding, which no relative test can compare.)
BATCH_NORMS = {
    "2d": (4, 3, 5, 6),
    "2d_batch1": (1, 2, 3, 4),
    "2d_parallel": (4, 8, 24, 24),
    "1d": (5, 3, 2, 2),
    "1d_batch3": (3, 6, 1, 1),
}


def batch_norm_net(case: str, affine: bool, eps: float) -> tuple[nn.Module, bool]:
    """The layer under test (named ``layer``) and whether it flattens its input first."""
    shape = BATCH_NORMS[case]
    if case.startswith("1d"):
        features = shape[1] * shape[2] * shape[3]
        return Net(nn.BatchNorm1d(features, eps, affine=affine), flatten=True), True
    return Net(nn.BatchNorm2d(shape[1], eps, affine=affine)), False


def batch_norm_oracle(flatten: bool, eps: float):
    def oracle(x, params):
        x = x.flatten(1) if flatten else x
        return TF.batch_norm(
            x,
            params["layer.running_mean"],
            params["layer.running_var"],
            params.get("layer.weight"),
            params.get("layer.bias"),
            training=True,
            eps=eps,
        )

    return oracle


@pytest.mark.parametrize("case", list(BATCH_NORMS))
@pytest.mark.parametrize("affine,eps", [(True, 1e-5), (False, 1e-5), (True, 0.3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_train_grad(case, affine, eps, dtype, rng):
    model, flatten = batch_norm_net(case, affine, eps)
    check_gradients(model, batch_norm_oracle(flatten, eps), BATCH_NORMS[case], dtype, rng)


@pytest.mark.parametrize("case", ["2d", "1d"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_running_stats_follow_torch(case, affine, dtype, rng):
    """Two forward_backward calls update running_mean (momentum 0.1, biased batch mean) and
    running_var (unbiased batch variance) in ``exe.params`` as two train-mode torch forwards do;
    num_batches_tracked counts them, and the inference plan normalises with the new values."""
    model, flatten = batch_norm_net(case, affine, 1e-5)
    shape = BATCH_NORMS[case]
    exe = engine.compile(model, shape[1:], shape[0], dtype=dtype, train=True, loss="mse")
    randomize_params(exe, rng)
    params = {k: torch.tensor(v) for k, v in exe.params.items()}
    mean, var = params["layer.running_mean"], params["layer.running_var"]
    for _ in range(2):
        x = (3.0 * rng.standard_normal(shape) + 1.5).astype(dtype)
        exe.forward_backward(x, rng.standard_normal(exe.graph.outputs[0].shape).astype(dtype))
        tx = torch.from_numpy(x).flatten(1) if flatten else torch.from_numpy(x)
        weight, bias = params.get("layer.weight"), params.get("layer.bias")
        TF.batch_norm(tx, mean, var, weight, bias, training=True, momentum=0.1, eps=1e-5)
    tol = OP_TOLERANCE[dtype]
    assert rel_error(exe.params["layer.running_mean"], mean.numpy()) < tol
    assert rel_error(exe.params["layer.running_var"], var.numpy()) < tol
    assert exe.state_dict()["layer.num_batches_tracked"] == 2
    out = exe.eval().run(x)
    ref = TF.batch_norm(tx, mean, var, weight, bias, training=False, eps=1e-5)
    assert rel_error(out, ref.numpy()) < tol


def test_batch_norm_train_needs_two_values_per_channel(rng):
    """As torch ("Expected more than 1 value per channel when training"), a batch of one
    feature vector fails at compile time, with the layer's name, instead of dividing by zero."""
    model = Net(nn.BatchNorm1d(4), flatten=True)
    with pytest.raises(ValueError, match="layer: batch_norm in training mode needs more than 1"):
        engine.compile(model, (4, 1, 1), batch=1, dtype="float64", train=True, loss="mse")


# **** layer_norm2d ****

AFFINE_KEYS = ("layer.weight", "layer.bias")


@pytest.mark.parametrize(
    "shape", [(2, 4, 3, 5), (3, 3, 2, 3), (2, 16, 24, 24)], ids=["serial", "c3", "parallel"]
)
@pytest.mark.parametrize("affine,eps", [(True, 1e-6), (False, 1e-6), (True, 0.1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm2d_grad(shape, affine, eps, dtype, rng):
    """The input gets a per-pixel offset so the mean subtraction matters. (With one or two
    channels the input gradient is zero up to rounding, which no relative test can compare.)

    The oracle runs in float64 and rounds its output: torch's own float32 layer-norm backward
    drifts up to 5e-5 from float64 with 3 or 4 channels (measured over 200 seeds), while this
    kernel, summing in float64, stays within 2e-6."""
    c = shape[1]
    x = rng.standard_normal(shape) + 3.0 * rng.standard_normal((shape[0], 1, *shape[2:]))

    def oracle(t, params):
        weight, bias = (params[k].double() if k in params else None for k in AFFINE_KEYS)
        out = TF.layer_norm(t.double().permute(0, 2, 3, 1), (c,), weight, bias, eps)
        return out.permute(0, 3, 1, 2).to(t.dtype)

    layer = nn.LayerNorm2d(c, eps, elementwise_affine=affine)
    check_gradients(Net(layer), oracle, shape, dtype, rng, x=x)


# **** softmax ****


class FlatSoftmax(nn.Module):
    """Flatten to [N, C*H*W], then softmax over dim 1 (the classifier-head case)."""

    def forward(self, x):
        return F.softmax(F.flatten(x, 1), dim=1)


# name: (model, oracle, input shape)
SOFTMAXES = {
    "2d_dim1": (FlatSoftmax(), lambda x: TF.softmax(x.flatten(1), dim=1), (3, 4, 2, 3)),
    "4d_dim1": (nn.Softmax(1), lambda x: TF.softmax(x, 1), (2, 5, 3, 4)),
    "4d_dim_last": (nn.Softmax(-1), lambda x: TF.softmax(x, -1), (2, 3, 4, 5)),
    "4d_dim0": (nn.Softmax(0), lambda x: TF.softmax(x, 0), (3, 2, 4, 5)),
    "4d_dim1_parallel": (nn.Softmax(1), lambda x: TF.softmax(x, 1), (2, 16, 32, 32)),
}


@pytest.mark.parametrize("case", list(SOFTMAXES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_grad(case, dtype, rng):
    model, oracle, shape = SOFTMAXES[case]
    x = 3.0 * rng.standard_normal(shape)
    check_gradients(model, lambda t, p: oracle(t), shape, dtype, rng, x=x)


# **** local_response_norm ****


@pytest.mark.parametrize("case", ["alexnet", "even_size", "wider_than_channels", "rank5"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_local_response_norm_grad(case, dtype, rng):
    """Large alpha on inputs scaled by 2, so the window's term of the gradient is not small
    beside the direct one; odd and even windows, one wider than the channels, rank 5."""
    size, _, beta, k, shape = LRN_CASES[case]
    model, nchw = lrn_model(case)
    alpha = 2.0

    def oracle(t, params):
        y = TF.local_response_norm(t.reshape(shape), size, alpha, beta, k)
        return y.reshape(nchw)

    layer = model.layer if isinstance(model, Reshaped) else model
    layer.alpha = alpha
    check_gradients(model, oracle, nchw, dtype, rng, x=2.0 * rng.standard_normal(nchw))


def test_local_response_norm_grad_parallel(rng):
    size, alpha, beta, k, shape = LRN_CASES["parallel"]
    model, _ = lrn_model("parallel")
    oracle = lambda t, params: TF.local_response_norm(t, size, alpha, beta, k)  # noqa: E731
    check_gradients(model, oracle, shape, "float32", rng, x=3.0 * rng.standard_normal(shape))
