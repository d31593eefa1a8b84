"""Gradients of the data-movement ops on the CPU: flatten, reshape, concat (its gradient is
``slice``), channel_shuffle (its own inverse with C/g groups) and pad (zero: a crop; reflect:
a crop plus the mirrored positions folded back), through ``tests.gradcheck.check_gradients``
(torch autograd in float32 and float64, central differences in float64).

Concat joins branches of different widths and ops, so each slice of the output gradient is
distinct; one case concatenates a value with itself (fan-out through slices). Each kernel also
runs once above ``PARALLEL_MIN_WORK``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from tests.gradcheck import check_gradients
from tests.helpers import DTYPES, Lambda

SHAPE = (2, 6, 4, 5)
PARALLEL_SHAPE = (2, 16, 32, 32)


class Branches(nn.Module):
    """Two or three convolutions of different widths, concatenated along ``dim``."""

    def __init__(self, channels: int, widths: tuple[int, ...], dim: int = 1) -> None:
        super().__init__()
        self.dim = dim
        self.convs = nn.ModuleList(
            [nn.Conv2d(channels, w, 3, padding=1, bias=False) for w in widths]
        )

    def forward(self, x):
        return F.cat([F.tanh(conv(x)) for conv in self.convs], dim=self.dim)


def branches_oracle(count: int, dim: int = 1):
    def oracle(x, params):
        convs = [TF.conv2d(x, params[f"convs.{i}.weight"], padding=1) for i in range(count)]
        return torch.cat([torch.tanh(y) for y in convs], dim)

    return oracle


@pytest.mark.parametrize(
    "widths,dim",
    [((2, 3), 1), ((2, 1, 4), 1), ((3, 3), 2), ((2, 2, 2), 3)],
    ids=["two_dim1", "three_dim1", "two_dim2", "three_dim3"],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_concat_grad(widths, dim, dtype, rng):
    model = Branches(SHAPE[1], widths, dim)
    check_gradients(model, branches_oracle(len(widths), dim), SHAPE, dtype, rng)


# name: (model, oracle, input shape)
CASES = {
    "flatten": (
        Lambda(lambda x: F.tanh(F.flatten(x, 1))),
        lambda x: torch.tanh(x.flatten(1)),
        SHAPE,
    ),
    "reshape": (
        Lambda(lambda x: F.sigmoid(F.reshape(x, (2, -1, 5)))),
        lambda x: torch.sigmoid(x.reshape(2, -1, 5)),
        SHAPE,
    ),
    "concat_fan_out": (
        Lambda(lambda x: F.cat([x, F.tanh(x), x], dim=1)),
        lambda x: torch.cat([x, torch.tanh(x), x], 1),
        SHAPE,
    ),
    "concat_parallel": (
        Lambda(lambda x: F.cat([F.tanh(x), x], dim=1)),
        lambda x: torch.cat([torch.tanh(x), x], 1),
        PARALLEL_SHAPE,
    ),
    "channel_shuffle_2": (
        Lambda(lambda x: F.tanh(F.channel_shuffle(x, 2))),
        lambda x: torch.tanh(TF.channel_shuffle(x, 2)),
        SHAPE,
    ),
    "channel_shuffle_3": (
        Lambda(lambda x: F.tanh(F.channel_shuffle(x, 3))),
        lambda x: torch.tanh(TF.channel_shuffle(x, 3)),
        SHAPE,
    ),
    "channel_shuffle_parallel": (
        Lambda(lambda x: F.tanh(F.channel_shuffle(x, 4))),
        lambda x: torch.tanh(TF.channel_shuffle(x, 4)),
        PARALLEL_SHAPE,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_shape_op_grad(case, dtype, rng):
    model, oracle, shape = CASES[case]
    check_gradients(model, lambda x, p: oracle(x), shape, dtype, rng)


# name: (pads (left, right, top, bottom), input shape)
PADS = {
    "symmetric": ((1, 1, 1, 1), SHAPE),
    "asymmetric": ((2, 0, 1, 3), SHAPE),
    "width_only": ((3, 1, 0, 0), SHAPE),
    "widest_reflect": ((4, 4, 3, 3), SHAPE),
    "parallel": ((2, 1, 3, 2), PARALLEL_SHAPE),
}


@pytest.mark.parametrize("case", list(PADS))
@pytest.mark.parametrize("mode", ["constant", "reflect"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_pad_grad(case, mode, dtype, rng):
    """``widest_reflect`` pads each side by H-1 / W-1, the most reflect allows: border rows
    and columns then collect several mirrored gradients each."""
    pads, shape = PADS[case]
    model = Lambda(lambda x: F.tanh(F.pad(x, pads, mode=mode)))
    check_gradients(model, lambda x, p: torch.tanh(TF.pad(x, pads, mode=mode)), shape, dtype, rng)
