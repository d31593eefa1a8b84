"""Gradients of the pooling ops on the CPU, through ``tests.gradcheck.check_gradients`` (torch
autograd in float32 and float64, central differences in float64).

max_pool2d over a grid of kernel, stride, padding, dilation and ceil_mode; avg_pool2d with and
without ``count_include_pad`` and with ceil_mode windows that start in or run past the padding;
global average pooling; adaptive average and max pooling to sizes that do not divide the input
(overlapping windows). Max pooling inputs are a random permutation of evenly spaced values, so
no window holds a tie and no finite difference changes which element is the maximum. A few cases
are large enough for the parallel kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.nn as nn
from tests.gradcheck import check_gradients, compile_for_gradients
from tests.helpers import DTYPES


def distinct_values(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A random permutation of evenly spaced values in [-2, 2): no ties, gaps >= 4/numel."""
    numel = int(np.prod(shape))
    return (4.0 * rng.permutation(numel) / numel - 2.0).reshape(shape)


# name: (MaxPool2d keyword arguments, input shape)
MAX_POOLS = {
    "2x2": (dict(kernel_size=2), (2, 3, 6, 8)),
    "2x2_odd_input": (dict(kernel_size=2), (2, 3, 7, 9)),
    "3x3_stride2_pad1": (dict(kernel_size=3, stride=2, padding=1), (2, 3, 7, 8)),
    "3x3_stride1_overlap": (dict(kernel_size=3, stride=1, padding=1), (2, 2, 5, 6)),
    "3x2_stride_2x1": (dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0)), (2, 2, 7, 6)),
    "dilation2": (dict(kernel_size=3, stride=1, dilation=2), (2, 2, 8, 7)),
    "dilation_pad": (dict(kernel_size=3, stride=2, padding=1, dilation=(2, 1)), (2, 2, 9, 8)),
    "ceil_mode": (dict(kernel_size=3, stride=2, ceil_mode=True), (2, 3, 8, 6)),
    "ceil_mode_pad": (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 6, 7)),
    "parallel": (dict(kernel_size=3, stride=2, padding=1), (2, 16, 32, 32)),
}


@pytest.mark.parametrize("case", list(MAX_POOLS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_grad(case, dtype, rng):
    kwargs, shape = MAX_POOLS[case]
    check_gradients(
        nn.MaxPool2d(**kwargs),
        lambda x, p: TF.max_pool2d(x, **kwargs),
        shape,
        dtype,
        rng,
        x=distinct_values(shape, rng),
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_grad_nan_wins(dtype, rng):
    """A NaN anywhere in a window takes that window's gradient (the first NaN in scan order,
    as in torch), also behind a larger finite value and with a second NaN after it."""
    shape, kwargs = (1, 2, 4, 6), dict(kernel_size=3, stride=1, padding=1)
    x = distinct_values(shape, rng)
    x[0, 0, 1, 2] = x[0, 0, 2, 4] = x[0, 1, 3, 5] = np.nan
    x[0, 0, 0, 1] = 10.0
    exe = compile_for_gradients(nn.MaxPool2d(**kwargs), shape, dtype)
    target = rng.standard_normal(exe.graph.outputs[0].shape)
    exe.forward_backward(x.astype(dtype), target.astype(dtype))
    tx = torch.tensor(x, requires_grad=True)
    TF.mse_loss(TF.max_pool2d(tx, **kwargs), torch.from_numpy(target)).backward()
    np.testing.assert_array_equal(np.isnan(exe.grads["input"]), np.isnan(tx.grad.numpy()))


# name: (AvgPool2d keyword arguments, input shape); each runs with count_include_pad on and off
AVG_POOLS = {
    "2x2": (dict(kernel_size=2), (2, 3, 6, 8)),
    "3x3_stride2_pad1": (dict(kernel_size=3, stride=2, padding=1), (2, 3, 7, 8)),
    "3x2_pad_1x0": (dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0)), (2, 2, 5, 7)),
    "ceil_mode": (dict(kernel_size=3, stride=2, ceil_mode=True), (2, 3, 8, 6)),
    "ceil_mode_pad": (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 6, 7)),
    "parallel": (dict(kernel_size=3, stride=2, padding=1), (2, 16, 32, 32)),
}


@pytest.mark.parametrize("case", list(AVG_POOLS))
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_grad(case, count_include_pad, dtype, rng):
    kwargs, shape = AVG_POOLS[case]
    kwargs = dict(kwargs, count_include_pad=count_include_pad)
    check_gradients(
        nn.AvgPool2d(**kwargs), lambda x, p: TF.avg_pool2d(x, **kwargs), shape, dtype, rng
    )


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (2, 16, 32, 32)], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool2d_grad(shape, dtype, rng):
    check_gradients(
        nn.AdaptiveAvgPool2d(1), lambda x, p: TF.adaptive_avg_pool2d(x, 1), shape, dtype, rng
    )


# name: (output size, input shape): sizes that divide, that do not (overlapping windows), that
# exceed the input (repeated elements) and a parallel case
ADAPTIVE = {
    "divides": ((2, 3), (2, 3, 6, 9)),
    "overlapping": ((3, 4), (2, 3, 7, 9)),
    "spp_bins": ((4, 4), (2, 2, 6, 5)),
    "larger_than_input": ((5, 4), (2, 2, 3, 3)),
    "one_by_n": ((1, 3), (2, 2, 5, 7)),
    "parallel": ((5, 7), (2, 16, 32, 32)),
}


@pytest.mark.parametrize("case", list(ADAPTIVE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_avg_pool2d_grad(case, dtype, rng):
    size, shape = ADAPTIVE[case]
    check_gradients(
        nn.AdaptiveAvgPool2d(size),
        lambda x, p: TF.adaptive_avg_pool2d(x, size),
        shape,
        dtype,
        rng,
    )


@pytest.mark.parametrize("case", list(ADAPTIVE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_max_pool2d_grad(case, dtype, rng):
    size, shape = ADAPTIVE[case]
    check_gradients(
        nn.AdaptiveMaxPool2d(size),
        lambda x, p: TF.adaptive_max_pool2d(x, size),
        shape,
        dtype,
        rng,
        x=distinct_values(shape, rng),
    )


@pytest.mark.parametrize(
    "model,oracle",
    [
        (nn.MaxPool2d(3, 2, 1), lambda x, p: TF.max_pool2d(x, 3, 2, 1)),
        (nn.AdaptiveMaxPool2d((3, 4)), lambda x, p: TF.adaptive_max_pool2d(x, (3, 4))),
    ],
    ids=["max_pool2d", "adaptive_max_pool2d"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool_grad_ties_go_to_the_first_maximum(model, oracle, dtype, rng):
    """Windows full of ties (three distinct values): each gradient goes where torch sends it,
    the first maximum in row-major order. Finite differences do not apply at ties."""
    shape = (2, 3, 7, 9)
    x = rng.integers(0, 3, shape).astype(np.float64)
    check_gradients(model, oracle, shape, dtype, rng, x=x, finite_differences=False)
