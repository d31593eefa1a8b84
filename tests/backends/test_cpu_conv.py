"""CPU conv2d and linear kernels (``backends/cpu/conv.py``) against ``torch.nn.functional``.

Weights are drawn fresh in the tested dtype and written into the compiled executable, so float64
runs use float64 weights; the oracle gets the same arrays. The conv grid covers stride, padding
(ints, pairs, asymmetric "same", "valid", reflect), dilation, groups (grouped, depthwise, depthwise
with a channel multiplier), rectangular, pointwise and 5x5 kernels, odd input sizes, and sizes
above ``PARALLEL_MIN_WORK`` so both the serial and the parallel kernels run. Winograd has its own
cases: odd output sizes, valid, pair and reflect padding, one output pixel, several chunks.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.nn as nn
from backends.cpu import conv as cpu_conv
from backends.cpu import winograd
from graph.ir import Node, TensorType, Value
from tests.helpers import (
    DTYPES,
    OP_TOLERANCE,
    WINOGRAD_CHUNKS,
    Net,
    force_winograd_chunks,
    record_steps,
    rel_error,
    run_with_random_params,
)


def check_conv(rng, dtype, cin, cout, kernel, input_hw, batch=2, **kwargs) -> None:
    """``nn.Conv2d(cin, cout, kernel, **kwargs)`` against ``torch.nn.Conv2d`` with the same
    arguments and weights, on a random [batch, cin, *input_hw] input."""
    x = rng.standard_normal((batch, cin, *input_hw)).astype(dtype)
    conv = nn.Conv2d(cin, cout, kernel, **kwargs)
    out, p = run_with_random_params(Net(conv), x, dtype, rng)
    ref_conv = torch.nn.Conv2d(cin, cout, kernel, **kwargs).to(getattr(torch, dtype))
    with torch.no_grad():
        ref_conv.weight.copy_(p["layer.weight"])
        if conv.bias is not None:
            ref_conv.bias.copy_(p["layer.bias"])
        ref = ref_conv(torch.from_numpy(x)).numpy()
    err = rel_error(out, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"


# **** conv2d: stride x padding x dilation on a 3x3 kernel, odd 7x9 input ****

STRIDES = [1, 2, (2, 1)]
PADDINGS = [0, 1, (1, 2), "same", "valid"]
WINDOW_GRID = [
    (stride, padding, dilation)
    for stride in STRIDES
    for padding in PADDINGS
    for dilation in (1, 2)
    if not (padding == "same" and stride != 1)  # torch: padding='same' needs stride 1
]


@pytest.mark.parametrize("stride,padding,dilation", WINDOW_GRID, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_stride_padding_dilation(stride, padding, dilation, dtype, rng):
    check_conv(rng, dtype, 4, 6, 3, (7, 9), stride=stride, padding=padding, dilation=dilation)


# **** conv2d: groups, kernel shapes, bias, reflect padding ****

# (C_in, C_out, kernel, input HxW, Conv2d kwargs and the batch (default 2))
CONV_CASES = {
    "groups2": (4, 6, 3, (7, 9), dict(padding=1, groups=2)),
    "groups3_s2_d2": (6, 9, 3, (11, 10), dict(batch=3, stride=2, padding=2, dilation=2, groups=3)),
    "groups2_pointwise": (4, 8, 1, (5, 7), dict(groups=2)),
    "depthwise": (5, 5, 3, (7, 9), dict(padding=1, groups=5)),
    "depthwise_stride2": (4, 4, 3, (9, 8), dict(batch=3, stride=2, padding=1, groups=4)),
    "depthwise_multiplier2": (3, 6, 3, (7, 9), dict(padding=1, groups=3)),
    "dw_x2_rect": (4, 8, (3, 5), (9, 11), dict(stride=(1, 2), padding=2, dilation=2, groups=4)),
    "depthwise_5x5_same_no_bias": (4, 4, 5, (7, 9), dict(padding="same", groups=4, bias=False)),
    "kernel_1x3": (3, 5, (1, 3), (7, 9), dict(padding=(0, 1))),
    "kernel_3x1": (3, 5, (3, 1), (7, 9), dict(padding=(1, 0))),
    "kernel_1x3_same": (3, 5, (1, 3), (6, 7), dict(padding="same")),
    "pointwise": (6, 4, 1, (7, 9), dict(batch=3)),
    "pointwise_no_bias": (6, 4, 1, (7, 9), dict(bias=False)),
    "pointwise_stride2": (4, 6, 1, (7, 9), dict(stride=2)),
    "pointwise_padding1": (4, 6, 1, (5, 6), dict(padding=1)),
    "kernel_5x5": (3, 4, 5, (9, 11), dict(padding=2)),
    "kernel_5x5_stride2_valid": (3, 4, 5, (9, 11), dict(stride=2)),
    "kernel_whole_input": (3, 4, (7, 9), (7, 9), {}),
    "even_kernel_same": (3, 4, 4, (7, 9), dict(padding="same")),
    "even_kernel_same_dilation2": (3, 4, (2, 4), (7, 9), dict(padding="same", dilation=2)),
    "no_bias": (4, 6, 3, (7, 9), dict(padding=1, bias=False)),
    "reflect": (3, 5, 3, (7, 9), dict(padding=1, padding_mode="reflect")),
    "reflect_asymmetric_pair": (3, 5, 3, (7, 9), dict(padding=(1, 2), padding_mode="reflect")),
    "reflect_same_g2": (4, 4, 3, (6, 7), dict(padding="same", groups=2, padding_mode="reflect")),
    "padding_wider_than_kernel": (3, 4, 3, (4, 5), dict(stride=2, padding=(4, 5))),
    "depthwise_padding_wider_than_kernel": (3, 3, 3, (4, 5), dict(padding=(4, 3), groups=3)),
    "single_channel_batch1": (1, 3, 3, (8, 8), dict(batch=1, padding=1)),
    "parallel_gemm": (8, 16, 3, (24, 24), dict(padding=1)),
    "parallel_pointwise": (16, 16, 1, (24, 24), {}),
    "parallel_depthwise": (16, 16, 3, (32, 32), dict(padding=1, groups=16)),
    "parallel_groups_stride2": (8, 8, 3, (40, 40), dict(stride=2, padding=1, groups=2)),
    "same_blocks_batch3": (16, 32, 3, (20, 23), dict(batch=3, padding=1)),
    "same_5x5_dilated_blocks": (8, 16, 5, (21, 21), dict(padding=4, dilation=2)),
    "wide_rows_256_channels": (256, 8, 3, (6, 5), dict(padding=1)),
    "staged_more_channels_than_columns": (4, 64, 3, (4, 4), dict(batch=3, padding=1)),
    "parallel_staged_lenet_5x5": (6, 16, 5, (14, 14), dict(batch=8)),
    # a narrowing 1x1 with 640 KB of weights: one image a GEMM call (forward_images)
    "narrowing_pointwise_one_image_a_call": (640, 256, 1, (12, 12), dict(batch=3)),
    # direct: maps whose wide grid spans several accumulator blocks (phases.BLOCK_BYTES), odd
    # widths and odd left padding through stride 2's deinterleaved phase planes
    "depthwise_blocks": (2, 2, 3, (70, 150), dict(batch=1, padding=1, groups=2)),
    "depthwise_stride2_odd_blocks": (2, 2, 3, (71, 141), dict(stride=2, padding=1, groups=2)),
    "depthwise_s2_odd_left_pad": (2, 2, 3, (9, 11), dict(stride=2, padding=(0, 3), groups=2)),
    "depthwise_stride3_dilated": (
        2,
        2,
        3,
        (13, 14),
        dict(stride=3, padding=2, dilation=2, groups=2),
    ),
}


@pytest.fixture(params=["gemm", "shifted", "direct"])
def conv_algorithm(request, monkeypatch):
    """Force the lowering's choice, so every case runs through im2col + GEMM, through the
    shifted GEMM where the conv has stride 1 (Winograd is off, it has its own cases below)
    and through the direct loops; conv2d_small (stride 1, small) has its own tests
    (test_cpu_conv_small.py)."""
    gemm = request.param != "direct"
    shifted_min_pixels = 0 if request.param == "shifted" else 1 << 62
    monkeypatch.setattr(cpu_conv, "SHIFTED_MIN_PIXELS", shifted_min_pixels)
    monkeypatch.setattr(cpu_conv, "SHIFTED_MIN_CHANNELS", 0 if request.param == "shifted" else 1)
    monkeypatch.setattr(cpu_conv, "SMALL_MAX_MACS", 0)
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_CHANNELS", 0 if gemm else 1 << 30)
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_MACS", 0 if gemm else 1 << 62)
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1 << 30)
    return request.param


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize("case", list(CONV_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_cases(case, dtype, rng, conv_algorithm):
    cin, cout, kernel, input_hw, kwargs = CONV_CASES[case]
    check_conv(rng, dtype, cin, cout, kernel, input_hw, **kwargs)


# **** conv2d: one GEMM cut by output channels (gemm_split) ****

# (C_in, C_out, kernel, input HxW, Conv2d kwargs and the batch): 48 output channels per group,
# cut in parts of 32 and 16 (a short last part); one image per task (maps of 256+ pixels at
# batch > 1), as the real rule has it
SPLIT_CASES = {
    "pointwise": (48, 48, 1, (9, 9), dict(batch=1)),
    "im2col_stride2": (8, 48, 3, (33, 33), dict(batch=3, stride=2, padding=1)),
    "im2col_stride1": (12, 48, 3, (9, 9), dict(batch=1, padding=1, bias=False)),
    "groups2": (16, 96, 3, (6, 6), dict(batch=1, groups=2, padding=1)),
    # the shared im2col splits a block's input channels over the threads: an odd count, in
    # the parallel variant (over PARALLEL_MIN_MACS); one channel a group is conv2d_direct's
    "im2col_3_channels": (3, 48, 3, (17, 17), dict(batch=1, padding=1)),
    "im2col_5_channels_5x5": (5, 48, 5, (15, 15), dict(batch=1, padding=2)),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_gemm_in_channel_parts(case, dtype, rng, monkeypatch):
    """conv2d_gemm with its output channels cut in parts of 32, whatever the thread count."""
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_MACS", 0)
    monkeypatch.setattr(cpu_conv, "SMALL_MAX_MACS", 0)
    monkeypatch.setattr(cpu_conv, "gemm_split", lambda node: (cpu_conv.rows_and_block(node)[1], 32))
    used = record_steps(monkeypatch, [cpu_conv.conv2d_gemm])
    cin, cout, kernel, input_hw, kwargs = SPLIT_CASES[case]
    check_conv(rng, dtype, cin, cout, kernel, input_hw, **kwargs)
    assert [kernel for kernel, _ in used] == ["conv2d_gemm"]


@pytest.mark.parametrize(
    "n,c,oc,kernel,stride,side,expected",
    [
        (1, 256, 1024, 1, 1, 14, (196, 512)),  # ResNet-50 layer3 1x1 at batch 1: halves
        (1, 256, 256, 3, 2, 14, (196, 128)),  # its 3x3 stride 2: one block of 196 pixels
        (1, 64, 256, 1, 1, 56, (1568, 256)),  # two blocks of 1568 pixels: even
        (3, 256, 1024, 1, 1, 14, (196, 1024)),  # two images a task (staged): not cut
        (1, 16, 32, 3, 1, 14, (112, 32)),  # 16-row halves are too thin: two pixel blocks
    ],
)
def test_gemm_split_rule(n, c, oc, kernel, stride, side, expected, monkeypatch):
    """(pixel block, output channels per part) on two threads: output channels are halved
    where the tasks are odd and balanced pixel blocks would be narrower than
    MIN_GEMM_COLUMNS; ``side`` is the output's."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)  # the rule only; nothing runs
    x = Value("x", TensorType((n, c, side * stride, side * stride)), "input")
    w = Value("w", TensorType((oc, c, kernel, kernel)), "param")
    y = Value("y", TensorType((n, oc, side, side)), "activation")
    attrs = dict(stride=(stride,) * 2, padding=(kernel // 2,) * 4, dilation=(1, 1), groups=1)
    assert cpu_conv.gemm_split(Node("conv2d", [x, w], [y], attrs, "conv")) == expected


@pytest.mark.parametrize(
    "n,c,oc,side,groups,expected",
    [
        (32, 1024, 256, 14, 1, 1),  # ResNet-50 layer3's narrowing 1x1: one image a call
        (32, 1024, 512, 14, 1, 1),
        (32, 256, 1024, 14, 1, 2),  # widening: staged, two images fill 256 columns
        (32, 384, 64, 14, 1, 2),  # narrowing, 96 KB of weights: staged
        (32, 2048, 512, 7, 1, 6),  # 49 pixels: staged
        (32, 1024, 256, 14, 2, 2),  # grouped: staged
        (1, 1024, 256, 14, 1, 1),  # one image either way
    ],
)
def test_forward_images_rule(n, c, oc, side, groups, expected):
    """Images a forward GEMM call takes (``forward_images``): narrowing ungrouped 1x1s with
    at least SINGLE_IMAGE_MIN_WEIGHT_BYTES of weights on maps of at least
    SINGLE_IMAGE_MIN_COLUMNS pixels take one, the rest ``images_per_task``."""
    x = Value("x", TensorType((n, c, side, side)), "input")
    w = Value("w", TensorType((oc, c // groups, 1, 1)), "param")
    y = Value("y", TensorType((n, oc, side, side)), "activation")
    attrs = dict(stride=(1, 1), padding=(0,) * 4, dilation=(1, 1), groups=groups)
    assert cpu_conv.forward_images(Node("conv2d", [x, w], [y], attrs, "conv")) == expected


# **** conv2d: Winograd F(2x2, 3x3) ****

# (C_in, C_out, input HxW, Conv2d kwargs and the batch (default 2)); all 3x3, stride 1
WINOGRAD_CASES = {
    "pad1_odd_output": (16, 20, (7, 9), dict(batch=3, padding=1)),
    "valid": (17, 16, (6, 5), {}),
    "pad_pair": (16, 16, (5, 6), dict(padding=(2, 0))),
    "no_bias": (16, 24, (8, 8), dict(padding=1, bias=False)),
    "one_output_pixel": (16, 16, (3, 3), {}),
    "reflect": (16, 16, (6, 7), dict(padding=1, padding_mode="reflect")),
    "parallel": (32, 32, (20, 20), dict(batch=4, padding=1)),
}


@pytest.mark.parametrize("chunks", WINOGRAD_CHUNKS, ids=str)
@pytest.mark.parametrize("case", list(WINOGRAD_CASES))
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_winograd(case, dtype, tile, chunks, rng, monkeypatch):
    """Every case takes the Winograd kernel (small ones too) with ``tile`` x ``tile`` output
    tiles, under every chunking of WINOGRAD_CHUNKS."""
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_MACS", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)  # however few tiles
    monkeypatch.setattr(winograd, "LARGE_TILE_MIN_PIXELS", 0 if tile == 4 else 1 << 62)
    force_winograd_chunks(monkeypatch, chunks)
    used = record_steps(monkeypatch, [winograd.conv2d_winograd])
    cin, cout, input_hw, kwargs = WINOGRAD_CASES[case]
    check_conv(rng, dtype, cin, cout, 3, input_hw, **kwargs)
    assert [kernel for kernel, _ in used] == ["conv2d_winograd"]


def _conv_node(n: int, c: int, oc: int, side: int) -> Node:
    """A 3x3, padding-1 conv2d node on an [n, c, side, side] float32 input."""

    def value(name, shape, role):
        return Value(name, TensorType(shape), role)

    x, w = value("x", (n, c, side, side), "input"), value("w", (oc, c, 3, 3), "param")
    y = value("y", (n, oc, side, side), "activation")
    attrs = dict(stride=(1, 1), padding=(1, 1, 1, 1), dilation=(1, 1), groups=1)
    return Node("conv2d", [x, w], [y], attrs, "conv")


@pytest.mark.parametrize(
    "n,c,side,weight_gradient,expected",
    [
        (32, 512, 4, False, (32, 2, 0)),  # ResNet-18 CIFAR layer4 (2x2 tiles): all 32 images
        (32, 64, 32, True, (1, 4, 1)),  # layer1's weight gradient: 256 KiB of dU a thread
        (32, 256, 8, True, (16, 4, 0)),  # layer3's: 4 MiB of dU, shared
        (32, 64, 32, False, (1, 8, 1)),  # layer1 forward (4x4 tiles): an image a task
        (32, 128, 16, False, (3, 4, 1)),  # layer2 forward: 3 images, 48 tiles a task
        (64, 256, 8, False, (7, 2, 1)),  # layer3 at batch 64: 7 images, 28 tiles a task
        (2, 64, 224, False, (1, 2, 1)),  # VGG's first block: two of 56 tile rows a task
        (2, 64, 224, True, (1, 9, 0)),  # its weight gradient: 102 MiB an image, 9 of 112 rows
    ],
)
def test_winograd_schedule(n, c, side, weight_gradient, expected, monkeypatch):
    """V and M of a chunk fit CHUNK_BYTES (shared) or PRIVATE_CHUNK_BYTES (private): whole
    images where one fits, else tile rows (for two threads, as in CI)."""
    monkeypatch.setattr(winograd, "_threads", lambda: 2)
    node = _conv_node(n, c, c, side)
    tile = winograd.tile_size(node, weight_gradient)
    allowed = winograd._private_allowed(node, weight_gradient)
    assert winograd._schedule(node, allowed, tile) == expected
    images, rows, private = expected
    budget = winograd.PRIVATE_CHUNK_BYTES[tile] if private else winograd.CHUNK_BYTES
    assert (tile + 2) ** 2 * 2 * c * images * rows * (side // tile) * 4 <= budget


# **** linear ****


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "batch,features",
    [(1, (7, 1, 1)), (3, (5, 1, 1)), (4, (6, 5, 7)), (cpu_conv.GEMV_MAX_ROWS + 1, (6, 5, 7))],
)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear(batch, features, bias, dtype, rng):
    """[N, C, H, W] -> Flatten -> Linear(C*H*W, 11): one GEMV per sample up to
    GEMV_MAX_ROWS samples, a GEMM above."""
    in_features = int(np.prod(features))
    x = rng.standard_normal((batch, *features)).astype(dtype)
    out, p = run_with_random_params(Net(nn.Linear(in_features, 11, bias), True), x, dtype, rng)
    flat = torch.from_numpy(x).reshape(batch, -1)
    ref = TF.linear(flat, p["layer.weight"], p.get("layer.bias")).numpy()
    err = rel_error(out, ref)
    assert err < OP_TOLERANCE[dtype], f"relative error {err:.3e}"
