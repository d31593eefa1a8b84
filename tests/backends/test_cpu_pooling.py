"""CPU pooling kernels (``backends/cpu/pooling.py``) against ``torch.nn.functional``.

Max and average pooling over grids of kernel, stride, padding, dilation (max), ceil_mode and
count_include_pad (average) on odd input sizes; global and adaptive pooling to output sizes that
do and do not divide the input (and larger than it). float32 and float64, fresh random inputs,
NaN-poisoned buffers; one case per kernel above ``PARALLEL_MIN_WORK`` runs the parallel kernel.
window_pool splits a thread's first plane into phase planes and places the rest
(``phases.place``): checked against ``phases.split`` directly, and bit for bit against torch
with NaN and tied signed zeros.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from numba import njit

import graph.functional as F
import graph.nn as nn
from backends.cpu import phases
from tests.helpers import DTYPES, OP_TOLERANCE, Lambda, check, rel_error, run_poisoned

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


def _signed_zeros_and_nan(x, rng):
    """``x`` with a third of its elements +0, a third -0 (ties whose sign tells which element a
    max picked) and one in a hundred NaN."""
    x = x.copy()
    x[rng.random(x.shape) < 0.3] = 0.0
    x[rng.random(x.shape) < 0.3] = -0.0
    x[rng.random(x.shape) < 0.01] = np.nan
    return x


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["serial", "parallel"])
@pytest.mark.parametrize("pool", ["max", "avg", "avg_count_pad"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_window_pools_bit_exact_over_placed_planes(pool, shape, dtype, rng):
    """Several planes per thread, all but the first placed into a slot whose fill an earlier
    plane's split wrote: torch's bits, NaN and the sign of tied zeros included."""
    x = _signed_zeros_and_nan(rng.standard_normal(shape).astype(dtype), rng)
    if pool == "max":
        model, ref = nn.MaxPool2d(3, 2, 1), TF.max_pool2d(torch.from_numpy(x), 3, 2, 1)
    else:
        count_pad = pool == "avg_count_pad"
        model = nn.AvgPool2d(3, 2, 1, count_include_pad=count_pad)
        ref = TF.avg_pool2d(torch.from_numpy(x), 3, 2, 1, count_include_pad=count_pad)
    out = run_poisoned(model, x, dtype)
    bits = f"u{out.itemsize}"
    np.testing.assert_array_equal(out.view(bits), ref.numpy().view(bits))


# **** phase planes ****


@njit(cache=True)
def _split(src, h, w, dst, pt, pl, sh, sw, hq, wq, fill):
    phases.split(src, h, w, dst, 0, pt, pl, sh, sw, hq, wq, fill)


@njit(cache=True)
def _place(src, h, w, dst, pt, pl, sh, sw, hq, wq):
    phases.place(src, 0, h, w, dst, 0, pt, pl, sh, sw, hq, wq)


# (H, W, kernel, stride, padding, dilation, ceil_mode): the deinterleave with odd and even
# widths and left pads, one phase, three phases, mixed strides, dilation, ceil mode
PLACE_CASES = [
    (9, 11, (3, 3), (2, 2), (1, 1), (1, 1), False),
    (10, 12, (2, 2), (2, 2), (0, 0), (1, 1), False),
    (9, 11, (3, 3), (2, 2), (0, 0), (1, 1), True),
    (9, 11, (3, 3), (1, 1), (1, 1), (1, 1), False),
    (9, 11, (3, 3), (3, 3), (1, 1), (1, 1), True),
    (9, 11, (3, 2), (1, 2), (1, 0), (1, 2), False),
    (7, 10, (3, 3), (2, 3), (0, 1), (2, 1), True),
]


@pytest.mark.parametrize("h,w,kernel,stride,padding,dilation,ceil_mode", PLACE_CASES, ids=str)
def test_place_over_an_earlier_split_is_a_split(
    h, w, kernel, stride, padding, dilation, ceil_mode, rng
):
    """``place`` writes every input element where ``split`` does, and the fill an earlier
    plane's split left is the fill this plane's split writes."""
    out = TF.max_pool2d(torch.zeros(1, 1, h, w), kernel, stride, padding, dilation, ceil_mode)
    hq, wq, _ = phases.geometry(h, w, out.shape[2:], kernel, stride, padding, dilation)
    (pt, pl), (sh, sw) = padding, stride
    first, second = rng.standard_normal((2, h * w)).astype(np.float32)
    expected = np.full(sh * sw * hq * wq, np.nan, np.float32)
    _split(second, h, w, expected, pt, pl, sh, sw, hq, wq, -np.inf)
    assert not np.isnan(expected).any()
    slot = np.full_like(expected, np.nan)
    _split(first, h, w, slot, pt, pl, sh, sw, hq, wq, -np.inf)
    _place(second, h, w, slot, pt, pl, sh, sw, hq, wq)
    np.testing.assert_array_equal(slot.view(np.uint32), expected.view(np.uint32))


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


@pytest.mark.parametrize("output_size", [1, (2, 3)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_adaptive_avg_pool2d_propagates_nan_and_inf(output_size, dtype, rng):
    """The reassociated (vectorised) sums still carry NaN and infinities through."""
    x = rng.standard_normal((2, 4, 7, 9)).astype(dtype)
    x[0, 1, 3, 4] = np.nan
    x[1, 0, 0, 0] = np.inf
    x[1, 2, 6, 8] = -np.inf
    x[1, 3, 0, 0], x[1, 3, 6, 8] = np.inf, -np.inf
    out = run_poisoned(nn.AdaptiveAvgPool2d(output_size), x, dtype)
    ref = TF.adaptive_avg_pool2d(torch.from_numpy(x), output_size).numpy()
    finite = np.isfinite(ref)
    assert np.isnan(ref).any() and np.isinf(ref).any()
    np.testing.assert_array_equal(out[~finite], ref[~finite])
    assert rel_error(out[finite], ref[finite]) < OP_TOLERANCE[dtype]


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
