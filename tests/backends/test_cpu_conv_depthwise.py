"""The depthwise conv kernels (``backends/cpu/conv_depthwise.py``: per plane, with channels
in lanes, and by rows of SIMD vectors) against ``torch.nn.functional.conv2d(groups=C)``, and
the lowering's rules for choosing them. Every case runs on the three kernels (the
``depthwise_kernel`` fixture), which give the same bits where they add the taps in the same
order.

Cases cover strides 1, 2 and 3 (the contiguous, deinterleaved and general phase copies),
3x3 (the unrolled nine-tap pass) and other kernel sizes (three taps a pass), rectangular
kernels, dilation, symmetric, pair, asymmetric and wider-than-kernel padding, batch 1 and 3,
maps of one and of several accumulator blocks, and layers big enough for the parallel variant.
Weights and inputs are fresh random data in the tested dtype, outputs NaN-poisoned. The fused
epilogue (folded eval BatchNorm, ReLU6, residual add) is checked bit for bit against the same
model compiled without the passes, and against torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.functional as F
import graph.nn as nn
from backends.cpu import conv_depthwise
from graph.passes import inference
from tests.helpers import DTYPES, OP_TOLERANCE, Net, record_steps, rel_error

# (channels, kernel, input HxW, Conv2d kwargs and the batch (default 2))
CASES = {
    "s1_3x3": (5, 3, (7, 9), dict(padding=1)),
    "s1_3x3_batch1_bias": (3, 3, (8, 8), dict(batch=1, padding=1, bias=True)),
    "s2_3x3_batch3": (4, 3, (9, 8), dict(batch=3, stride=2, padding=1)),
    "s2_odd_left_pad": (2, 3, (9, 11), dict(stride=2, padding=(0, 3))),
    "s1_5x5": (3, 5, (9, 11), dict(padding=2)),
    "s2_5x5": (3, 5, (12, 13), dict(stride=2, padding=2)),
    "s1_dilation2": (3, 3, (11, 10), dict(padding=2, dilation=2)),
    "s2_dilation2_batch3": (3, 3, (13, 12), dict(batch=3, stride=2, padding=1, dilation=2)),
    "s3_rect_3x5": (2, (3, 5), (13, 14), dict(stride=(3, 2), padding=(2, 1))),
    "s1_2x1_stride_1x3": (3, (2, 1), (7, 10), dict(stride=(1, 3))),
    "even_same_asymmetric": (4, 4, (7, 9), dict(padding="same")),
    "valid": (3, 3, (6, 7), {}),
    "padding_wider_than_kernel": (3, 3, (4, 5), dict(padding=(4, 3))),
    "several_blocks": (2, 3, (70, 150), dict(batch=1, padding=1)),
    "several_blocks_s2": (2, 3, (71, 141), dict(stride=2, padding=1)),
    "parallel_s1": (32, 3, (32, 32), dict(batch=1, padding=1)),
    "parallel_s2_batch3": (24, 3, (41, 40), dict(batch=3, stride=2, padding=1)),
    "lanes_and_a_partial_block": (70, 3, (7, 7), dict(batch=3, padding=1, bias=True)),
}

KERNELS = {
    "planes": conv_depthwise.conv2d_depthwise,
    "lanes": conv_depthwise.conv2d_depthwise_lanes,
    "rows": conv_depthwise.conv2d_depthwise_rows,
}


def force_kernel(monkeypatch, name: str) -> None:
    """Make the lowering pick kernel ``name`` of KERNELS, whatever the plane size."""
    monkeypatch.setattr(conv_depthwise, "is_rows", lambda node: name == "rows")
    monkeypatch.setattr(conv_depthwise, "is_lanes", lambda node: name == "lanes")


@pytest.fixture(params=list(KERNELS))
def depthwise_kernel(request, monkeypatch):
    """Which depthwise kernel the lowering picks, whatever the plane size: its name."""
    force_kernel(monkeypatch, request.param)
    return KERNELS[request.param].name


def record_depthwise(monkeypatch):
    return record_steps(monkeypatch, list(KERNELS.values()))


def run_depthwise(rng, dtype, channels, kernel, input_hw, batch=2, bias=False, **kwargs):
    """``nn.Conv2d(C, C, kernel, groups=C, **kwargs)`` on fresh random data and weights,
    NaN-poisoned: the input, our output and the parameters as torch tensors."""
    x = rng.standard_normal((batch, channels, *input_hw)).astype(dtype)
    model = Net(nn.Conv2d(channels, channels, kernel, groups=channels, bias=bias, **kwargs))
    exe = engine.compile(model, x.shape[1:], batch=batch, dtype=dtype)
    params = {}
    for name, array in exe.params.items():
        array[...] = rng.standard_normal(array.shape)
        params[name] = torch.from_numpy(array.copy())
    exe.poison_buffers()
    return torch.from_numpy(x), exe.run(x), params


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_matches_torch(case, dtype, depthwise_kernel, rng, monkeypatch):
    used = record_depthwise(monkeypatch)
    channels, kernel, input_hw, kwargs = CASES[case]
    x, out, p = run_depthwise(rng, dtype, channels, kernel, input_hw, **kwargs)
    kwargs.pop("batch", None)
    kwargs.pop("bias", None)
    ref = TF.conv2d(x, p["layer.weight"], p.get("layer.bias"), groups=channels, **kwargs)
    err = rel_error(out, ref.numpy())
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"
    assert [name for name, _ in used] == [depthwise_kernel]


@pytest.mark.parametrize("pads", [(0, 2, 3, 1), (2, 0, 0, 1)])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES)
def test_depthwise_asymmetric_padding(pads, stride, dtype, depthwise_kernel, rng, monkeypatch):
    """(top, bottom, left, right) all different, which no Conv2d argument spells: the
    graph's padding resolution is patched; torch pads explicitly."""
    monkeypatch.setattr(F, "conv_padding", lambda *args: pads)
    used = record_depthwise(monkeypatch)
    x, out, p = run_depthwise(rng, dtype, 3, 3, (9, 10), batch=3, stride=stride, padding=1)
    top, bottom, left, right = pads
    padded = TF.pad(x, (left, right, top, bottom))
    ref = TF.conv2d(padded, p["layer.weight"], stride=stride, groups=3).numpy()
    err = rel_error(out, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"
    assert [name for name, _ in used] == [depthwise_kernel]


@pytest.mark.parametrize(
    "kernel,side,stride,expected",
    [
        (3, 56, 1, "planes"),
        (3, 56, 4, "rows"),  # 14-wide output rows
        ((3, 4), 56, 1, "lanes"),  # 12 taps
        (5, 56, 2, "lanes"),
        (7, 112, 1, "lanes"),
        (7, 56, 4, "lanes"),
    ],
)
def test_big_kernels_take_the_lanes_kernel_on_any_plane(
    kernel, side, stride, expected, monkeypatch
):
    used = record_depthwise(monkeypatch)
    model = Net(nn.Conv2d(16, 16, kernel, stride=stride, padding=1, groups=16))
    engine.compile(model, (16, side, side), batch=1)
    assert [name for name, _ in used] == [KERNELS[expected].name]


# **** the fused epilogue: folded BatchNorm, ReLU6, residual add ****


class DepthwiseBlock(nn.Module):
    """depthwise conv -> eval BatchNorm -> (+ x) -> ReLU6: one conv2d_fused node after the
    passes (MobileNet v2's depthwise layer; the residual only where the stride is 1)."""

    def __init__(self, channels: int, stride: int, residual: bool, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU6()
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(F.add(y, x) if self.residual else y)


def run_plan(model, x, dtype, optimize=True):
    """``model`` compiled for ``x``, run on it NaN-poisoned: (output, the plan's ops)."""
    exe = engine.compile(model, x.shape[1:], batch=x.shape[0], dtype=dtype, optimize=optimize)
    exe.poison_buffers()
    return exe.run(x), [node.op for node in exe.graph.nodes]


def fused_and_unfused(model, x, dtype, monkeypatch):
    """The output of the optimised plan (ending in one conv2d_fused node), of the same plan
    with ``fuse_epilogues`` off, and the op that plan ends with."""
    fused, ops = run_plan(model, x, dtype)
    assert ops[-1] == "conv2d_fused"
    with monkeypatch.context() as patch:
        patch.setattr(inference, "fuse_epilogues", lambda graph: graph)
        unfused, unfused_ops = run_plan(model, x, dtype)
    return fused, unfused, unfused_ops[-1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "channels,side,stride,residual,bias,batch",
    [
        (8, 7, 1, False, False, 1),
        (8, 7, 1, True, True, 3),
        (6, 13, 2, False, True, 3),
        (48, 28, 1, True, False, 1),  # parallel
        (40, 30, 2, False, False, 1),  # parallel
    ],
)
def test_fused_epilogue_matches_unfused(
    channels, side, stride, residual, bias, batch, dtype, depthwise_kernel, rng, monkeypatch
):
    """The optimised plan (one conv2d_fused node on conv2d_depthwise) equals, bit for bit,
    the plan with the BatchNorm folded but the add and ReLU6 left to their own kernels (the
    epilogue's arithmetic is theirs), and within the op tolerance the plan without passes
    (its batch_norm kernel has its own arithmetic) and torch."""
    used = record_depthwise(monkeypatch)
    model = DepthwiseBlock(channels, stride, residual, bias)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.3, 3.0, value.shape)
        else:
            state[key] = 2.0 * rng.standard_normal(value.shape)
    model.load_state_dict({k: np.asarray(v, dtype) for k, v in state.items()})
    x = rng.standard_normal((batch, channels, side, side)).astype(dtype)
    fused, folded, folded_last = fused_and_unfused(model, x, dtype, monkeypatch)
    assert folded_last == "hardtanh"
    np.testing.assert_array_equal(fused, folded)
    unoptimized = run_plan(model, x, dtype, optimize=False)[0]
    assert rel_error(fused, unoptimized) < OP_TOLERANCE[dtype]
    assert [name for name, _ in used] == [depthwise_kernel] * 3
    t = {k: torch.from_numpy(np.asarray(v, dtype)) for k, v in model.state_dict().items()}
    ref = TF.conv2d(
        torch.from_numpy(x), t["conv.weight"], t.get("conv.bias"), stride, 1, groups=channels
    )
    ref = TF.batch_norm(
        ref, t["bn.running_mean"], t["bn.running_var"], t["bn.weight"], t["bn.bias"]
    )
    ref = TF.relu6(ref + torch.from_numpy(x) if residual else ref).numpy()
    err = rel_error(fused, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


class DepthwiseActivation(nn.Module):
    """depthwise conv with bias -> (eval BatchNorm) -> activation: one conv2d_fused node."""

    def __init__(self, channels: int, activation: nn.Module, batch_norm: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels)
        self.bn = nn.BatchNorm2d(channels) if batch_norm else None
        self.act = activation

    def forward(self, x):
        y = self.conv(x)
        return self.act(self.bn(y) if self.bn is not None else y)


ACTIVATIONS = {
    "relu": (nn.ReLU, TF.relu),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda t: TF.leaky_relu(t, 0.2)),
    "gelu": (nn.GELU, TF.gelu),
    "sigmoid": (nn.Sigmoid, torch.sigmoid),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_epilogue_matches_unfused(
    activation, batch_norm, dtype, depthwise_kernel, rng, monkeypatch
):
    """The lanes kernel runs none, ReLU and hardtanh on its vectors and the rest through
    ``finish_channel`` on the stored planes: either way the fused plan equals the plan with
    the activation left to its own kernel, bit for bit, and torch within the op tolerance."""
    used = record_depthwise(monkeypatch)
    make, reference = ACTIVATIONS[activation]
    model = DepthwiseActivation(20, make(), batch_norm)
    state = {}
    for key, value in model.state_dict().items():
        low_high = (0.3, 3.0) if key.endswith("running_var") else (-2.0, 2.0)
        state[key] = np.asarray(rng.uniform(*low_high, value.shape), dtype)
    model.load_state_dict(state)
    x = rng.standard_normal((2, 20, 7, 9)).astype(dtype)
    fused, unfused, unfused_last = fused_and_unfused(model, x, dtype, monkeypatch)
    assert unfused_last == activation  # the table's keys are the ops' names
    np.testing.assert_array_equal(fused, unfused)
    assert [name for name, _ in used] == [depthwise_kernel] * 2
    t = {k: torch.from_numpy(np.asarray(v, dtype)) for k, v in model.state_dict().items()}
    ref = TF.conv2d(torch.from_numpy(x), t["conv.weight"], t["conv.bias"], padding=1, groups=20)
    if batch_norm:
        ref = TF.batch_norm(
            ref, t["bn.running_mean"], t["bn.running_var"], t["bn.weight"], t["bn.bias"]
        )
    err = rel_error(fused, reference(ref).numpy())
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


# **** the lowering's choice ****


@pytest.mark.parametrize(
    "cin,cout,groups,expected",
    [
        (8, 8, 8, True),  # depthwise
        (8, 16, 8, False),  # a channel multiplier: conv2d_direct
        (8, 8, 4, False),  # grouped, 2 channels a group
        (8, 8, 1, False),  # dense
    ],
)
def test_lowering_takes_conv2d_depthwise_only_for_depthwise(
    cin, cout, groups, expected, monkeypatch
):
    used = record_depthwise(monkeypatch)
    model = Net(nn.Conv2d(cin, cout, 3, padding=1, groups=groups))
    engine.compile(model, (cin, 9, 9), batch=1)
    assert bool(used) == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels,side,stride", [(70, 7, 1), (20, 8, 2), (130, 5, 1)])
def test_kernels_agree_bit_for_bit(channels, side, stride, dtype, rng, monkeypatch):
    """The three kernels add a 3x3 window's taps in the same order, so they give the same
    bits."""
    x = rng.standard_normal((2, channels, side, side)).astype(dtype)
    model = DepthwiseBlock(channels, stride, residual=stride == 1, bias=True)
    outs = []
    for name in KERNELS:
        force_kernel(monkeypatch, name)
        exe = engine.compile(model, x.shape[1:], batch=2, dtype=dtype)
        exe.poison_buffers()
        outs.append(exe.run(x))
    assert not np.isnan(outs[0]).any()
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize(
    "side,stride,dtype,expected",
    [
        (7, 1, "float32", "lanes"),
        (8, 2, "float32", "lanes"),
        (14, 1, "float32", "lanes"),  # MobileNet v2's 14x14 layers
        (28, 2, "float32", "lanes"),  # 28x28 -> 14x14
        (28, 1, "float32", "lanes"),  # 784 pixels
        (29, 1, "float32", "planes"),  # 841 pixels, 29-wide rows
        (31, 2, "float32", "rows"),  # 961 pixels, 16-wide output rows
        (33, 2, "float32", "planes"),  # 17-wide output rows
        (56, 2, "float32", "planes"),
        (28, 1, "float64", "lanes"),
        (31, 2, "float64", "rows"),  # a 16-wide row is two float64 vectors
    ],
)
def test_lowering_picks_the_depthwise_kernel_by_plane_size(
    side, stride, dtype, expected, monkeypatch
):
    used = record_depthwise(monkeypatch)
    model = Net(nn.Conv2d(16, 16, 3, stride=stride, padding=1, groups=16))
    engine.compile(model, (16, side, side), batch=1, dtype=dtype)
    assert [name for name, _ in used] == [KERNELS[expected].name]
