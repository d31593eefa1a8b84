"""CPU pooling kernels (``backends/cpu/pooling.py``) against ``torch.nn.functional``.

Max and average pooling over grids of kernel, stride, padding, dilation (max), ceil_mode and
count_include_pad (average) on odd input sizes; global and adaptive pooling to output sizes that
do and do not divide the input (and larger than it). float32 and float64, fresh random inputs,
NaN-poisoned buffers; one case per kernel above ``PARALLEL_MIN_WORK`` runs the parallel kernel.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from tests.helpers import DTYPES, Lambda, check, run_poisoned

SMALL = (2, 3, 9, 11)  # odd sizes, so ceil_mode changes the output size
LARGE = (2, 8, 64, 64)  # above PARALLEL_MIN_WORK of output x window work

KERNELS = [2, 3, (2, 3)]
STRIDES = [None, 1, 2]


# **** max_pool2d ****


@pytest.mark.parametrize(
    "kernel,stride,padding,dilation,ceil_mode",
    list(itertools.product(KERNELS, STRIDES, (0, 1), (1, 2), (False, True))),
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d(kernel, stride, padding, dilation, ceil_mode, dtype, rng):
    model = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)

    def oracle(x):
        return TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode=ceil_mode)

    check(model, oracle, SMALL, dtype, rng)


# (kernel, stride, padding, dilation, ceil_mode): pairs for every attribute, a stride larger
# than the kernel (skipped pixels), and a 1-wide kernel
MAX_POOL_CASES = [
    ((3, 2), (1, 2), (1, 0), (1, 2), False),
    ((2, 3), (2, 1), (0, 1), (2, 1), True),
    (2, 3, 0, 1, False),
    (2, 3, 1, 1, True),
    ((1, 3), (1, 2), (0, 1), 1, True),
]


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode", MAX_POOL_CASES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_pairs(kernel, stride, padding, dilation, ceil_mode, dtype, rng):
    model = Lambda(lambda x: F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode))

    def oracle(x):
        return TF.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)

    check(model, oracle, SMALL, dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_parallel(dtype, rng):
    model = Lambda(lambda x: F.max_pool2d(x, 3, 2, 1))
    check(model, lambda x: TF.max_pool2d(x, 3, 2, 1), LARGE, dtype, rng)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (2, (1, 0)), (3, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_window_pools_over_several_accumulator_blocks(stride, padding, dtype, rng):
    """Maps whose wide grid spans several of window_pool's accumulator blocks (odd width: the
    stride-2 deinterleave's last column)."""
    shape = (1, 2, 70, 151)
    for pool, oracle in ((F.max_pool2d, TF.max_pool2d), (F.avg_pool2d, TF.avg_pool2d)):
        model = Lambda(lambda x, pool=pool: pool(x, 3, stride, padding))
        check(model, lambda x, oracle=oracle: oracle(x, 3, stride, padding), shape, dtype, rng)


def test_max_pool2d_all_negative_window_with_padding(rng):
    """Padding must not act as a zero: windows over negative values keep their maximum."""
    model = nn.MaxPool2d(3, 2, 1)
    x = -np.abs(rng.standard_normal((2, 3, 7, 7))) - 1.0
    out = run_poisoned(model, x, "float64")
    assert out.max() < -1.0
    np.testing.assert_array_equal(out, TF.max_pool2d(torch.from_numpy(x), 3, 2, 1).numpy())


# **** avg_pool2d ****


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,count_include_pad",
    list(itertools.product(KERNELS, STRIDES, (0, 1), (False, True), (True, False))),
    ids=str,
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d(kernel, stride, padding, ceil_mode, count_include_pad, dtype, rng):
    model = nn.AvgPool2d(kernel, stride, padding, ceil_mode, count_include_pad)

    def oracle(x):
        return TF.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)

    check(model, oracle, SMALL, dtype, rng)


# (kernel, stride, padding, ceil_mode, count_include_pad)
AVG_POOL_CASES = [
    ((3, 2), (1, 2), (1, 0), False, True),
    ((3, 2), (1, 2), (1, 0), True, False),
    ((2, 3), (2, 1), (0, 1), True, True),
    (2, 3, 0, False, True),
    (3, 4, 1, True, False),
    ((1, 3), (1, 2), (0, 1), True, False),
]


@pytest.mark.parametrize(
    "kernel,stride,padding,ceil_mode,count_include_pad", AVG_POOL_CASES, ids=str
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_pairs(kernel, stride, padding, ceil_mode, count_include_pad, dtype, rng):
    model = Lambda(lambda x: F.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad))

    def oracle(x):
        return TF.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)

    check(model, oracle, SMALL, dtype, rng)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_parallel(count_include_pad, dtype, rng):
    model = Lambda(lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=count_include_pad))

    def oracle(x):
        return TF.avg_pool2d(x, 3, 2, 1, count_include_pad=count_include_pad)

    check(model, oracle, LARGE, dtype, rng)


# **** global and adaptive pooling ****


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["serial", "parallel"])
@pytest.mark.parametrize("output_size", [1, (1, 1)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avg_pool2d(output_size, shape, dtype, rng):
    """AdaptiveAvgPool2d(1) lowers to global_avg_pool2d."""
    check(
        nn.AdaptiveAvgPool2d(output_size), lambda x: x.mean((2, 3), keepdim=True), shape, dtype, rng
    )


# (input H x W, output size)
ADAPTIVE_CASES = [
    ((8, 8), (1, 1)),
    ((8, 8), (2, 2)),
    ((8, 8), (4, 4)),
    ((9, 10), (3, 5)),
    ((7, 10), (3, 4)),
    ((13, 6), (5, 4)),
    ((5, 7), (1, 3)),
    ((4, 6), (5, 7)),  # larger than the input: overlapping one-pixel windows
    ((7, 10), (7, 10)),  # identity windows
]


@pytest.mark.parametrize("input_hw,output_size", ADAPTIVE_CASES, ids=str)
@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_pool2d(pool, input_hw, output_size, dtype, rng):
    layer = nn.AdaptiveAvgPool2d if pool == "avg" else nn.AdaptiveMaxPool2d
    oracle = TF.adaptive_avg_pool2d if pool == "avg" else TF.adaptive_max_pool2d
    check(layer(output_size), lambda x: oracle(x, output_size), (2, 3, *input_hw), dtype, rng)


@pytest.mark.parametrize("pool", ["avg", "max"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_pool2d_functional_none_keeps_axis(pool, dtype, rng):
    """``output_size=(None, 3)`` keeps the height, as torch does; large enough to run parallel."""
    fn = F.adaptive_avg_pool2d if pool == "avg" else F.adaptive_max_pool2d
    oracle = TF.adaptive_avg_pool2d if pool == "avg" else TF.adaptive_max_pool2d
    check(Lambda(lambda x: fn(x, (None, 3))), lambda x: oracle(x, (None, 3)), LARGE, dtype, rng)
