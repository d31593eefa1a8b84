"""CPU data-movement ops (``backends/cpu/shape.py``, and flatten/reshape, which lower to the copy
in ``elementwise.py``) against torch: flatten, reshape, concat, channel_shuffle and pad.

float32 and float64, fresh random inputs, NaN-poisoned buffers; comparisons are exact in value
(a data move must not change a bit), checked with ``rel_error`` at the op tolerance as well.
One case per kernel runs above ``PARALLEL_MIN_WORK``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from tests.helpers import DTYPES, OP_TOLERANCE, Lambda, check, rel_error, run_poisoned

SMALL = (2, 6, 5, 7)
LARGE = (2, 12, 48, 48)


# **** flatten and reshape ****

RESHAPES = {
    "Flatten": (nn.Flatten(), lambda x: x.flatten(1)),
    "flatten_start0": (Lambda(lambda x: F.flatten(x)), lambda x: x.flatten()),
    "flatten_2_3": (Lambda(lambda x: F.flatten(x, 2, 3)), lambda x: x.flatten(2, 3)),
    "flatten_1_2": (nn.Flatten(1, 2), lambda x: x.flatten(1, 2)),
    "Tensor.reshape_n_minus1": (
        Lambda(lambda x: x.reshape(x.shape[0], -1)),
        lambda x: x.reshape(x.shape[0], -1),
    ),
    "F.reshape_tuple": (Lambda(lambda x: F.reshape(x, (-1, 35))), lambda x: x.reshape(-1, 35)),
    "Tensor.view_4d": (
        Lambda(lambda x: x.view(x.shape[0], 3, -1, x.shape[3])),
        lambda x: x.reshape(x.shape[0], 3, -1, x.shape[3]),
    ),
    "flatten_then_relu": (
        Lambda(lambda x: F.relu(x.flatten(1))),
        lambda x: torch.relu(x.flatten(1)),
    ),
}


@pytest.mark.parametrize("case", list(RESHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_reshape(case, dtype, rng):
    model, oracle = RESHAPES[case]
    check(model, oracle, SMALL, dtype, rng, exact=True)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_parallel(dtype, rng):
    check(nn.Flatten(), lambda x: x.flatten(1), LARGE, dtype, rng, exact=True)


# **** concat ****


def _nested(x):
    return F.cat([F.tanh(x), F.cat([x, F.relu(x)], 1)], dim=1)


def _taller(x):
    return F.pad(x, (0, 0, 1, 2), value=0.5)


def _wider(x):
    return F.pad(x, (3, 0, 0, 0), value=-0.5)


CONCATS = {
    "channels_2": (
        lambda x: F.cat([x, F.relu(x)], dim=1),
        lambda x: torch.cat([x, torch.relu(x)], 1),
    ),
    "channels_3": (
        lambda x: F.cat([x, F.tanh(x), F.sigmoid(x)], dim=1),
        lambda x: torch.cat([x, torch.tanh(x), torch.sigmoid(x)], 1),
    ),
    "channels_unequal": (_nested, lambda x: torch.cat([torch.tanh(x), x, torch.relu(x)], 1)),
    "channels_negative_dim": (
        lambda x: F.cat([F.sigmoid(x), x], dim=-3),
        lambda x: torch.cat([torch.sigmoid(x), x], -3),
    ),
    "height_unequal": (
        lambda x: F.cat([x, _taller(x)], dim=2),
        lambda x: torch.cat([x, TF.pad(x, (0, 0, 1, 2), value=0.5)], 2),
    ),
    "width_3_unequal": (
        lambda x: F.cat([_wider(x), x, F.tanh(x)], dim=3),
        lambda x: torch.cat([TF.pad(x, (3, 0), value=-0.5), x, torch.tanh(x)], 3),
    ),
    "same_input_twice": (lambda x: F.cat([x, x], dim=1), lambda x: torch.cat([x, x], 1)),
    "single": (lambda x: F.cat([F.relu(x)], dim=1), lambda x: torch.relu(x)),
    "batch": (lambda x: F.cat([x, F.tanh(x)], dim=0), lambda x: torch.cat([x, torch.tanh(x)], 0)),
}


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["serial", "parallel"])
@pytest.mark.parametrize("case", list(CONCATS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_concat(case, shape, dtype, rng):
    fn, oracle = CONCATS[case]
    x = rng.standard_normal(shape).astype(dtype)
    out = run_poisoned(Lambda(fn), x, dtype)
    ref = oracle(torch.from_numpy(x)).numpy()
    # tanh/sigmoid may differ from torch's in the last bit; the copies themselves are exact
    err = rel_error(out, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


# **** channel_shuffle ****


def shuffle_reference(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's definition: view [N, g, C/g, H, W], swap axes 1 and 2."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


@pytest.mark.parametrize("shape", [SMALL, LARGE], ids=["serial", "parallel"])
@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_shuffle(groups, shape, dtype, rng):
    check(
        nn.ChannelShuffle(groups),
        lambda x: shuffle_reference(x, groups),
        shape,
        dtype,
        rng,
        exact=True,
    )


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_shuffle_matches_torch(groups, dtype, rng):
    """Against ``torch.nn.functional.channel_shuffle`` itself, on 8 channels (groups 2 and 4)."""
    model = Lambda(lambda x: F.channel_shuffle(x, groups))
    check(model, lambda x: TF.channel_shuffle(x, groups), (3, 8, 4, 5), dtype, rng, exact=True)


# **** pad ****

PADS = {
    "ZeroPad2d_int": (nn.ZeroPad2d(2), lambda x: TF.pad(x, (2, 2, 2, 2))),
    "ZeroPad2d_asymmetric": (nn.ZeroPad2d((1, 2, 3, 0)), lambda x: TF.pad(x, (1, 2, 3, 0))),
    "ReflectionPad2d_int": (nn.ReflectionPad2d(2), lambda x: TF.pad(x, (2,) * 4, "reflect")),
    "ReflectionPad2d_asymmetric": (
        nn.ReflectionPad2d((1, 3, 0, 2)),
        lambda x: TF.pad(x, (1, 3, 0, 2), "reflect"),
    ),
    "ReflectionPad2d_largest": (  # pads of size-1 on every side of a 5x7 input
        nn.ReflectionPad2d((6, 6, 4, 4)),
        lambda x: TF.pad(x, (6, 6, 4, 4), "reflect"),
    ),
    "pad_constant_value": (
        Lambda(lambda x: F.pad(x, (2, 0, 1, 3), value=1.5)),
        lambda x: TF.pad(x, (2, 0, 1, 3), value=1.5),
    ),
    "pad_constant_width_only": (
        Lambda(lambda x: F.pad(x, (0, 3), value=-2.0)),
        lambda x: TF.pad(x, (0, 3), value=-2.0),
    ),
    "pad_reflect_width_only": (
        Lambda(lambda x: F.pad(x, (3, 1), mode="reflect")),
        lambda x: TF.pad(x, (3, 1, 0, 0), mode="reflect"),  # torch needs 4 sizes on 4-D
    ),
}


@pytest.mark.parametrize("case", list(PADS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pad(case, dtype, rng):
    model, oracle = PADS[case]
    check(model, oracle, SMALL, dtype, rng, exact=True)


@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pad_parallel(mode, dtype, rng):
    pads = (3, 1, 2, 4)
    model = Lambda(lambda x: F.pad(x, pads, mode, 0.25 if mode == "constant" else 0.0))
    oracle = (
        (lambda x: TF.pad(x, pads, value=0.25))
        if mode == "constant"
        else (lambda x: TF.pad(x, pads, mode="reflect"))
    )
    check(model, oracle, LARGE, dtype, rng, exact=True)
