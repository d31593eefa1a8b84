"""GPU conv2d, linear and matmul (``backends/gpu/kernels/conv.cu``, ``linear.cu``) against the
CPU backend, through the CPU emulation of the kernels (``backend="gpu-emulated"``).

Both executables get the same fresh random weights in the tested dtype and poisoned buffers,
so an output element no kernel writes fails as NaN. Every case also names the kernel the
lowering must pick, so each path (tiled implicit GEMM at both tile shapes, pointwise,
depthwise) is known to run. Sizes are small (the emulator runs a block's threads in turn) but
cross the tile edges: channel and pixel counts that are not multiples of the tile, K-depths
that are not multiples of the 16-deep slice, and images that straddle a pixel tile.
"""

from __future__ import annotations

import numpy as np
import pytest

import engine
import graph.functional as F
import graph.nn as nn
from backends.gpu.lowering import GpuNodeIO
from tests.helpers import DTYPES, OP_TOLERANCE, Net, rel_error


@pytest.fixture
def launched(monkeypatch) -> list[str]:
    """The kernel names (without dtype suffix) that GPU lowerings launch during the test."""
    names: list[str] = []
    launch = GpuNodeIO.launch

    def spy(self, module, kernel, *args, **kwargs):
        names.append(kernel)
        return launch(self, module, kernel, *args, **kwargs)

    monkeypatch.setattr(GpuNodeIO, "launch", spy)
    return names


def check_parity(model: nn.Module, shape, batch: int, dtype: str, rng) -> None:
    """``model`` on the emulated GPU against the CPU backend, same weights, poisoned buffers."""
    cpu = engine.compile(model, shape, batch, backend="cpu", dtype=dtype)
    gpu = engine.compile(model, shape, batch, backend="gpu-emulated", dtype=dtype)
    state = {name: rng.standard_normal(array.shape) for name, array in cpu.state_dict().items()}
    cpu.load_state_dict(state)
    gpu.load_state_dict(state)
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    cpu.poison_buffers()
    gpu.poison_buffers()
    err = rel_error(gpu.run(x), cpu.run(x))
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


# **** conv2d ****

# name: (C_in, C_out, kernel, input HxW, Conv2d kwargs (and batch, default 2), the kernel)
CONV_CASES = {
    "stride2": (3, 6, 3, (7, 9), dict(stride=2, padding=1), "conv2d_gemm_16x256"),
    "stride_2x1": (4, 6, 3, (8, 7), dict(stride=(2, 1)), "conv2d_gemm_16x256"),
    "padding2": (4, 6, 3, (6, 7), dict(padding=2), "conv2d_gemm_16x256"),
    "same_even_asymmetric": (4, 6, 4, (6, 7), dict(padding="same"), "conv2d_gemm_16x256"),
    "same_2x4_asymmetric": (3, 5, (2, 4), (5, 6), dict(padding="same"), "conv2d_gemm_16x256"),
    "dilation2": (4, 6, 3, (9, 9), dict(padding=2, dilation=2), "conv2d_gemm_16x256"),
    "groups2": (4, 6, 3, (7, 9), dict(padding=1, groups=2), "conv2d_gemm_16x256"),
    "groups3_s2_d2": (
        6,
        9,
        3,
        (11, 10),
        dict(batch=3, stride=2, padding=2, dilation=2, groups=3),
        "conv2d_gemm_16x256",
    ),
    "depthwise": (5, 5, 3, (7, 9), dict(padding=1, groups=5), "conv2d_depthwise_3x3"),
    "depthwise_stride2": (
        4,
        4,
        3,
        (9, 8),
        dict(batch=3, stride=2, padding=1, groups=4),
        "conv2d_depthwise_3x3",
    ),
    "depthwise_multiplier2_5x5": (3, 6, 5, (9, 8), dict(padding=2, groups=3), "conv2d_depthwise"),
    "depthwise_rect_dilated": (
        4,
        8,
        (3, 5),
        (9, 11),
        dict(stride=(1, 2), padding=2, dilation=2, groups=4, bias=False),
        "conv2d_depthwise",
    ),
    "single_channel_input": (1, 6, 5, (12, 12), dict(), "conv2d_depthwise"),
    "pointwise": (8, 12, 1, (5, 7), dict(), "conv2d_pointwise_16x256"),
    "pointwise_groups2_no_bias": (8, 12, 1, (5, 7), dict(groups=2, bias=False), "conv2d_pointwise"),
    "pointwise_70_channels": (20, 70, 1, (5, 5), dict(), "conv2d_pointwise_64x64"),
    "pointwise_stride2": (8, 12, 1, (6, 7), dict(stride=2), "conv2d_gemm_16x256"),
    "rect_1x3": (4, 6, (1, 3), (6, 7), dict(padding=(0, 1)), "conv2d_gemm_16x256"),
    "rect_3x1": (4, 6, (3, 1), (6, 7), dict(padding=(1, 0)), "conv2d_gemm_16x256"),
    "no_bias": (4, 6, 3, (6, 7), dict(padding=1, bias=False), "conv2d_gemm_16x256"),
    "70_channels": (20, 70, 3, (6, 5), dict(padding=1), "conv2d_gemm_64x64"),
    "groups2_33_channels_each": (34, 66, 3, (5, 6), dict(padding=1, groups=2), "conv2d_gemm_64x64"),
    "batch3": (3, 6, 3, (7, 9), dict(batch=3, padding=1), "conv2d_gemm_16x256"),
    "images_straddle_tiles": (4, 6, 3, (15, 13), dict(padding=1), "conv2d_gemm_16x256"),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_matches_cpu(case, dtype, rng, launched):
    cin, cout, kernel, input_hw, kwargs, expected = CONV_CASES[case]
    kwargs = dict(kwargs)
    batch = kwargs.pop("batch", 2)
    check_parity(nn.Conv2d(cin, cout, kernel, **kwargs), (cin, *input_hw), batch, dtype, rng)
    assert any(name.startswith(expected) for name in launched), launched


# **** linear and matmul ****

# name: (batch, in_features, out_features, bias, the kernel)
LINEAR_CASES = {
    "bias": (2, 20, 10, True, "gemm_16x256"),
    "no_bias": (2, 20, 10, False, "gemm_16x256"),
    "300_outputs": (3, 37, 300, True, "gemm_16x256"),
    "batch17_70_outputs": (17, 129, 70, True, "gemm_64x64"),
    "batch70_no_bias": (70, 33, 65, False, "gemm_64x64"),
}


@pytest.mark.parametrize("case", LINEAR_CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_matches_cpu(case, dtype, rng, launched):
    batch, in_features, out_features, bias, expected = LINEAR_CASES[case]
    model = Net(nn.Linear(in_features, out_features, bias), flatten=True)
    check_parity(model, (in_features, 1, 1), batch, dtype, rng)
    assert expected in launched, launched


class MatMul(nn.Module):
    """``op(flatten(x)) @ op(weight)``: the matmul node autodiff emits for linear layers."""

    def __init__(self, weight_shape: tuple[int, int], trans_a: bool, trans_b: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(np.ones(weight_shape))
        self.trans_a, self.trans_b = trans_a, trans_b

    def forward(self, x):
        x = F.flatten(x, 1)
        return F._emit("matmul", [x, self.weight], trans_a=self.trans_a, trans_b=self.trans_b)


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_matches_cpu(trans_a, trans_b, dtype, rng, launched):
    m, k, n = 19, 21, 70  # op(x) [19, 21] @ op(weight) [21, 70]: M > 16, the 64 x 64 tile
    shape, batch = (m, 1, 1) if trans_a else (k, 1, 1), k if trans_a else m
    model = MatMul((n, k) if trans_b else (k, n), trans_a, trans_b)
    check_parity(model, shape, batch, dtype, rng)
    assert "gemm_64x64" in launched, launched
