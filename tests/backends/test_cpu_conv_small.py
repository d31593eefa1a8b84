"""The serial small-conv kernel (``backends/cpu/conv_small.py``) against
``torch.nn.functional.conv2d``, and the lowering's rule for choosing it (``conv._is_small``).

Every case is forced onto ``conv2d_small`` (``SMALL_MAX_MACS`` raised; the test asserts the
kernel ran) and covers what the kernel handles: the 20-layer benchmark's 8->8 3x3 conv, kernel
rows of 1 to 7 taps (the 3-tap loops and the 1-tap remainder), rectangular kernels, dilation,
symmetric, pair, asymmetric ("same" with an even kernel) and wider-than-kernel padding, groups,
output channels not a multiple of the 4-channel block, bias or none, several images and maps
tall enough for several bands of output rows. Weights and inputs are fresh random data in the
tested dtype, outputs NaN-poisoned. The fused epilogue (a folded eval BatchNorm, a residual add,
an activation) is checked on whole models against their torch twins.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.functional as F
import graph.nn as nn
from backends.cpu import conv as cpu_conv
from backends.cpu import conv_small
from tests.helpers import (
    DTYPES,
    OP_TOLERANCE,
    Net,
    record_steps,
    rel_error,
    run_with_random_params,
    torch_run,
    torch_twin,
)

# (C_in, C_out, kernel, input HxW, Conv2d kwargs and the batch (default 2))
SMALL_CASES = {
    "benchmark_8x8": (8, 8, 3, (8, 8), dict(batch=1, padding=1)),
    "benchmark_batch3_no_bias": (8, 8, 3, (8, 8), dict(batch=3, padding=1, bias=False)),
    "valid_odd": (4, 6, 3, (7, 9), {}),
    "pad_pair": (3, 4, 3, (6, 7), dict(padding=(2, 0))),
    "same_even_asymmetric": (3, 5, 4, (7, 6), dict(padding="same")),
    "same_even_dilated": (3, 4, (2, 4), (7, 9), dict(padding="same", dilation=2)),
    "padding_wider_than_kernel": (3, 4, 3, (4, 5), dict(padding=(4, 3))),
    "dilation2": (4, 4, 3, (9, 8), dict(padding=2, dilation=2)),
    "dilation_1x3": (2, 5, 3, (7, 10), dict(padding=(1, 3), dilation=(1, 3))),
    "kernel_1x3": (3, 5, (1, 3), (7, 9), dict(padding=(0, 1))),
    "kernel_3x1": (3, 5, (3, 1), (7, 9), dict(padding=(1, 0))),
    "kernel_2x5": (2, 3, (2, 5), (6, 9), dict(padding=(1, 2))),
    "kernel_4x4": (3, 2, 4, (8, 7), dict(padding=1)),
    "kernel_5x5_lenet": (1, 6, 5, (28, 28), dict(batch=1, padding=2)),
    "kernel_7x7": (2, 3, 7, (9, 10), dict(padding=3)),
    "pointwise_thin": (4, 6, 1, (5, 7), {}),
    "groups2": (4, 6, 3, (7, 9), dict(padding=1, groups=2)),
    "groups3_channels_per_group3": (6, 9, 3, (6, 5), dict(padding=1, groups=3)),
    "groups2_5x5": (4, 10, 5, (8, 8), dict(padding=2, groups=2, bias=False)),
    "channels_5_block_remainder1": (3, 5, 3, (6, 6), dict(padding=1)),
    "channels_16": (16, 16, 3, (4, 4), dict(padding=1)),
    "bands_tall_map": (2, 2, 3, (48, 45), dict(batch=1, padding=1)),
    "bands_5x5_tall_map": (2, 3, 5, (40, 37), dict(batch=2, padding=2)),
}


@pytest.fixture
def small_only(monkeypatch) -> list[tuple[str, str]]:
    """Lift the MAC limit so every case takes conv2d_small; returns the spy's record."""
    monkeypatch.setattr(cpu_conv, "SMALL_MAX_MACS", 1 << 62)
    return record_steps(monkeypatch, [conv_small.conv2d_small])


def check_conv(rng, dtype, cin, cout, kernel, input_hw, batch=2, **kwargs) -> None:
    """``nn.Conv2d(cin, cout, kernel, **kwargs)`` against ``TF.conv2d`` with the same weights
    and arguments, on a random [batch, cin, *input_hw] input."""
    x = rng.standard_normal((batch, cin, *input_hw)).astype(dtype)
    conv = nn.Conv2d(cin, cout, kernel, **kwargs)
    out, p = run_with_random_params(Net(conv), x, dtype, rng)
    ref = TF.conv2d(
        torch.from_numpy(x),
        p["layer.weight"],
        p.get("layer.bias"),
        padding=kwargs.get("padding", 0),
        dilation=kwargs.get("dilation", 1),
        groups=kwargs.get("groups", 1),
    )
    err = rel_error(out, ref.numpy())
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("case", list(SMALL_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_small_matches_torch(case, dtype, rng, small_only):
    cin, cout, kernel, input_hw, kwargs = SMALL_CASES[case]
    check_conv(rng, dtype, cin, cout, kernel, input_hw, **kwargs)
    assert [kernel for kernel, _ in small_only] == ["conv2d_small"]


# **** the fused epilogue: folded BatchNorm, residual add, activation ****


class ConvBlock(nn.Module):
    """conv -> eval BatchNorm -> (+ x) -> ReLU: one conv2d_fused node after the passes."""

    def __init__(self, channels: int, residual: bool, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(F.add(y, x) if self.residual else y)


class TorchConvBlock(torch.nn.Module):
    def __init__(self, channels: int, residual: bool, bias: bool) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.act = torch.nn.ReLU()
        self.residual = residual

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.act(y + x if self.residual else y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("channels,bias", [(8, True), (6, False)])
def test_fused_epilogue_matches_torch(channels, bias, residual, dtype, rng, monkeypatch):
    """The benchmark's conv (8 channels) and one with a partial block (6), with a random eval
    BatchNorm folded in, the ReLU and optionally a residual add fused: one conv2d_fused node,
    run by conv2d_small, equal to torch's conv -> BatchNorm -> (+ x) -> ReLU."""
    used = record_steps(monkeypatch, [conv_small.conv2d_small])
    model = ConvBlock(channels, residual, bias)
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.3, 3.0, value.shape)
        else:
            state[key] = rng.standard_normal(value.shape)
    model.load_state_dict({k: np.asarray(v, np.float32) for k, v in state.items()})
    exe = engine.compile(model, (channels, 8, 8), batch=2, dtype=dtype)
    assert [node.op for node in exe.graph.nodes] == ["batch_norm_fold", "conv2d_fused"]
    exe.poison_buffers()
    x = rng.standard_normal((2, channels, 8, 8)).astype(dtype)
    expected = torch_run(torch_twin(model, TorchConvBlock(channels, residual, bias), dtype), x)
    assert rel_error(exe.run(x), expected) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in used] == ["conv2d_small"]


# **** the lowering's choice ****


def _takes_small(monkeypatch, cin, cout, kernel, hw, batch=1, **kwargs) -> bool:
    used = record_steps(monkeypatch, [conv_small.conv2d_small])
    engine.compile(Net(nn.Conv2d(cin, cout, kernel, **kwargs)), (cin, *hw), batch=batch)
    return bool(used)


@pytest.mark.parametrize(
    "cin,cout,kernel,hw,kwargs,expected",
    [
        (8, 8, 3, (8, 8), dict(padding=1), True),  # the 20-layer benchmark's conv (direct)
        (8, 8, 3, (8, 8), dict(padding=1, batch=4), True),  # 147,456 MACs
        (1, 6, 5, (28, 28), dict(padding=2), True),  # LeNet-5 features.0 (direct)
        (3, 16, 3, (16, 16), dict(padding=1), True),  # shifted GEMM
        (6, 16, 5, (14, 14), {}, True),  # LeNet-5 features.3: 240,000 MACs (shifted)
        (6, 16, 5, (14, 14), dict(batch=2), False),  # 480,000 MACs: split over the cores
        (64, 64, 3, (32, 32), dict(padding=1), False),  # ResNet-18 CIFAR: Winograd
        (16, 16, 3, (8, 8), dict(padding=1), True),  # 16 tiles: too few for Winograd
        (16, 16, 3, (8, 8), dict(padding=1, batch=2), False),  # 32 tiles: Winograd's own rule
        (16, 16, 1, (16, 16), {}, False),  # pointwise GEMM
        (8, 8, 3, (8, 8), dict(padding=1, groups=8), False),  # depthwise: 1 channel a group
        (8, 8, 3, (8, 8), dict(padding=1, stride=2), False),  # strided
    ],
)
def test_lowering_takes_conv2d_small_only_for_small_stride1_convs(
    cin, cout, kernel, hw, kwargs, expected, monkeypatch
):
    assert _takes_small(monkeypatch, cin, cout, kernel, hw, **kwargs) == expected
