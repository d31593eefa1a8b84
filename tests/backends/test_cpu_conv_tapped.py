"""The tapped register-tile conv (``backends/cpu/conv_tapped.py``: convs from few input
channels, the pointwise tile run over taps of phase planes) against
``torch.nn.functional.conv2d``, its fused epilogue against torch twins, a training step
against the GEMM path, and the rule that chooses it.

Kernel cases run on fresh random weights and inputs in the tested dtype with NaN-poisoned
buffers and assert that the tapped kernel ran. They cover strides 1, 2 and 4 (one, four and
sixteen phase planes), odd and even kernels with asymmetric and zero padding, dilation, both
tiles (rows of 7 vectors take the 6x4 tile, rows of 9 the 8x3), output channels off a tile,
rows ending inside a vector, more images than a pass takes, and channels cut in parts.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.nn as nn
from backends.cpu import conv, conv_tapped
from tests.helpers import (
    DTYPES,
    OP_TOLERANCE,
    TILE_ACTIVATIONS,
    ConvBlock,
    Net,
    TorchConvBlock,
    assert_training_matches,
    random_eval_state,
    record_steps,
    rel_error,
    torch_run,
    torch_twin,
)

# (C_in, C_out, input HxW, kernel, conv kwargs, batch, bias)
CASES = {
    "resnet_stem": (3, 64, (64, 70), 7, dict(stride=2, padding=3), 1, False),
    "mobilenet_stem": (3, 32, (112, 100), 3, dict(stride=2, padding=1), 2, False),
    "stride_1_channels_off_a_tile": (3, 13, (33, 75), 3, dict(padding=1), 1, True),
    "alexnet_stride_4_no_padding": (3, 20, (67, 227), 11, dict(stride=4), 1, True),
    "two_channels_5x5_five_images": (2, 16, (30, 68), 5, dict(padding=2), 5, True),
    "asymmetric_kernel_and_padding": (2, 24, (40, 72), (3, 5), dict(padding=(0, 2)), 3, True),
    "dilation_2": (4, 8, (21, 80), 3, dict(padding=2, dilation=2), 1, False),
    "stride_2x1": (3, 16, (20, 66), 3, dict(stride=(2, 1), padding=1), 2, True),
}


@pytest.fixture
def forced(monkeypatch):
    """Every conv from few channels the tile can take takes it (float64 rows are 8 lanes:
    the width rule is dropped so both dtypes run the same cases)."""
    monkeypatch.setattr(conv_tapped, "MIN_ROW_VECTORS", 0)
    return record_steps(monkeypatch, [conv_tapped.conv2d_tapped])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_tapped_matches_torch(case, dtype, rng, forced):
    cin, cout, hw, k, kwargs, batch, bias = CASES[case]
    exe = engine.compile(
        Net(nn.Conv2d(cin, cout, k, bias=bias, **kwargs)), (cin, *hw), batch=batch, dtype=dtype
    )
    state = {k: rng.standard_normal(np.shape(v)).astype(dtype) for k, v in exe.state_dict().items()}
    exe.load_state_dict(state)
    exe.poison_buffers()
    x = rng.standard_normal((batch, cin, *hw)).astype(dtype)
    expected = TF.conv2d(
        torch.from_numpy(x),
        torch.from_numpy(state["layer.weight"]),
        torch.from_numpy(state["layer.bias"]) if bias else None,
        **kwargs,
    )
    assert rel_error(exe.run(x), expected.numpy()) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in forced] == ["conv2d_tapped"]


@pytest.mark.parametrize("activation", list(TILE_ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_epilogue_matches_torch(activation, residual, dtype, rng, forced, monkeypatch):
    """Bias, folded BatchNorm, residual and the tile's activations in registers (8 channels
    each side, so that the residual fits: more inputs than MAX_CHANNELS, allowed here);
    LeakyReLU is left to the GEMM."""
    monkeypatch.setattr(conv_tapped, "MAX_CHANNELS", 8)
    ours, theirs, tapped = TILE_ACTIVATIONS[activation]
    hw = (29, 37)
    model = ConvBlock(8, 3, residual, ours())
    exe = engine.compile(model, (8, *hw), batch=2, dtype=dtype)
    state = random_eval_state(exe, rng, dtype)
    exe.load_state_dict(state)
    exe.poison_buffers()
    twin = torch_twin(model, TorchConvBlock(8, 3, residual, theirs()), dtype)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = (2 * rng.standard_normal((2, 8, *hw))).astype(dtype)  # some past ReLU6's 6
    assert [node.op for node in exe.graph.nodes] == ["batch_norm_fold", "conv2d_fused"]
    assert rel_error(exe.run(x), torch_run(twin, x)) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in forced] == (["conv2d_tapped"] if tapped else [])


def test_training_forward_and_gradients_match_the_gemm_path(rng, forced, monkeypatch):
    """A training plan's forward runs on the tapped tile; its loss and gradients equal the
    GEMM path's within float64 rounding."""
    model = Net(nn.Conv2d(3, 16, 5, stride=2, padding=2))
    x = rng.standard_normal((3, 3, 30, 34))
    target = rng.standard_normal((3, 16, 15, 17))

    def gemm_only():
        monkeypatch.setattr(conv_tapped, "is_tapped", lambda *_: False)

    assert_training_matches(model, x, target, forced, "conv2d_tapped", gemm_only)


@pytest.mark.parametrize(
    "cin,cout,kernel,stride,side,batch,activation,expected",
    [
        (3, 64, 7, 2, 224, 1, nn.ReLU, True),  # ResNet's stem
        (3, 64, 7, 2, 224, 32, nn.ReLU, True),
        (3, 32, 3, 2, 224, 1, nn.ReLU6, True),  # MobileNet v2's
        (3, 96, 11, 4, 227, 1, nn.ReLU, True),  # AlexNet's
        (3, 64, 3, 1, 32, 64, nn.ReLU, False),  # CIFAR's 32x32: rows of two vectors
        (3, 64, 3, 1, 48, 8, nn.ReLU, False),  # rows of three
        (8, 64, 3, 1, 64, 1, nn.ReLU, False),  # more than MAX_CHANNELS input channels
        (3, 64, 7, 2, 224, 1, lambda: nn.LeakyReLU(0.1), False),  # not an epilogue of KINDS
    ],
)
def test_rule(cin, cout, kernel, stride, side, batch, activation, expected, monkeypatch):
    used = record_steps(monkeypatch, [conv_tapped.conv2d_tapped, conv.conv2d_gemm])
    conv_layer = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False)
    model = nn.Sequential(conv_layer, nn.BatchNorm2d(cout), activation())
    engine.compile(model, (cin, side, side), batch=batch)
    assert [kernel for kernel, _ in used] == (["conv2d_tapped"] if expected else ["conv2d_gemm"])


@pytest.mark.parametrize("batch,images,parts", [(1, 1, 1), (5, 2, 1)])
def test_passes_and_parts(batch, images, parts, monkeypatch):
    """Images are taken ``threads`` at a time (two here) and the scratch holds one pass's
    phase planes; ResNet's stem has rows enough for every thread, so no channel parts."""
    monkeypatch.setattr(conv_tapped.numba.config, "NUMBA_NUM_THREADS", 2)
    exe = engine.compile(Net(nn.Conv2d(3, 64, 7, 2, 3)), (3, 224, 224), batch=batch)
    node = next(node for node in exe.graph.nodes if node.op == "conv2d")
    attrs = conv_tapped.attrs(node)
    assert attrs[17] == images
    assert -(-64 // attrs[18]) == parts
    assert conv_tapped.scratch_numel(node) == images * 3 * 4 * 115 * 115
