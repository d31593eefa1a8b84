"""Gradients of conv2d and linear on the CPU (input, weight and bias), through
``tests.gradcheck.check_gradients``: torch autograd in float32 and float64, central differences
in float64.

The conv grid crosses the kernel paths of ``backends/cpu/conv_backward.py``: stride 1 and 2
(also per axis), symmetric, pair, ``"same"`` (asymmetric for even kernels) and reflect padding,
dilation, groups from 2 to depthwise (with a channel multiplier), rectangular and 1x1 kernels,
with and without bias, and one layer large enough for the parallel kernels; and Winograd
cases (16+ channels) under every chunking of ``WINOGRAD_CHUNKS``. The oracle is
``torch.nn.Conv2d`` built with the same arguments and called on our weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.nn as nn
from backends.cpu import conv as cpu_conv
from backends.cpu import winograd
from tests.gradcheck import check_gradients
from tests.helpers import (
    DTYPES,
    WINOGRAD_CHUNKS,
    Net,
    force_winograd_chunks,
    record_steps,
    rel_error,
)

# name: (Conv2d keyword arguments, input shape)
CONVS = {
    "3x3": (dict(in_channels=3, out_channels=4, kernel_size=3), (2, 3, 6, 7)),
    "3x3_pad1": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 6, 7)),
    "stride2_pad1": (
        dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1),
        (2, 3, 7, 8),
    ),
    "stride2x1": (dict(in_channels=2, out_channels=3, kernel_size=3, stride=(2, 1)), (2, 2, 7, 6)),
    "stride3_k2": (dict(in_channels=2, out_channels=3, kernel_size=2, stride=3), (1, 2, 8, 9)),
    "pad_pair_5x3": (
        dict(in_channels=2, out_channels=3, kernel_size=(5, 3), padding=(2, 1)),
        (2, 2, 6, 5),
    ),
    "same_even": (dict(in_channels=3, out_channels=2, kernel_size=4, padding="same"), (2, 3, 6, 5)),
    "same_2x3_dilated": (
        dict(in_channels=2, out_channels=3, kernel_size=(2, 3), padding="same", dilation=(1, 2)),
        (2, 2, 5, 7),
    ),
    "dilation2": (
        dict(in_channels=3, out_channels=4, kernel_size=3, padding=2, dilation=2),
        (2, 3, 7, 6),
    ),
    "dilation_stride": (
        dict(in_channels=2, out_channels=2, kernel_size=3, stride=2, dilation=(2, 1)),
        (2, 2, 9, 8),
    ),
    "groups2": (
        dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, groups=2),
        (2, 4, 5, 6),
    ),
    "groups2_flipped": (  # 8 channels a group: the input gradient runs on the flipped kernel
        dict(in_channels=16, out_channels=12, kernel_size=(3, 2), padding=1, groups=2),
        (2, 16, 5, 4),
    ),
    "depthwise": (
        dict(in_channels=4, out_channels=4, kernel_size=3, padding=1, groups=4),
        (2, 4, 6, 5),
    ),
    "depthwise_multiplier_stride2": (
        dict(in_channels=3, out_channels=6, kernel_size=3, stride=2, padding=1, groups=3),
        (2, 3, 7, 7),
    ),
    "1x1": (dict(in_channels=5, out_channels=3, kernel_size=1), (2, 5, 4, 6)),
    "1x1_stride2": (dict(in_channels=4, out_channels=3, kernel_size=1, stride=2), (2, 4, 5, 6)),
    "1x3": (dict(in_channels=3, out_channels=2, kernel_size=(1, 3), padding=(0, 1)), (2, 3, 4, 6)),
    "3x1": (dict(in_channels=3, out_channels=2, kernel_size=(3, 1), padding=(1, 0)), (2, 3, 6, 4)),
    "no_bias": (dict(in_channels=3, out_channels=4, kernel_size=3, bias=False), (2, 3, 5, 6)),
    "reflect_padding": (
        dict(in_channels=2, out_channels=3, kernel_size=3, padding=1, padding_mode="reflect"),
        (2, 2, 5, 6),
    ),
    "parallel": (dict(in_channels=8, out_channels=8, kernel_size=3, padding=1), (2, 8, 24, 24)),
    "parallel_stride2": (
        dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1),
        (2, 8, 24, 24),
    ),
    "parallel_thin_5x5": (
        dict(in_channels=1, out_channels=6, kernel_size=5, padding=2),
        (2, 1, 28, 28),
    ),
}


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("case", list(CONVS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_grad(case, dtype, rng):
    check_conv_grad(*CONVS[case], dtype, rng)


def check_conv_grad(kwargs: dict, shape: tuple[int, ...], dtype: str, rng) -> None:
    """Gradients of ``nn.Conv2d(**kwargs)`` on a ``shape`` input against torch's Conv2d."""
    reference = torch.nn.Conv2d(**kwargs).to(getattr(torch, dtype))

    def oracle(x, params):
        weights = {"weight": params["layer.weight"]}
        if "layer.bias" in params:
            weights["bias"] = params["layer.bias"]
        return torch.func.functional_call(reference, weights, (x,))

    check_gradients(Net(nn.Conv2d(**kwargs)), oracle, shape, dtype, rng)


# Winograd F(2x2, 3x3): the forward pass, the weight gradient and the stride-1 input gradient
# (a forward conv of the flipped kernel) all take it when both sides have 16+ channels.
WINOGRAD_CONVS = {
    "pad1": (dict(in_channels=16, out_channels=16, kernel_size=3, padding=1), (2, 16, 5, 6)),
    "valid_odd": (dict(in_channels=16, out_channels=17, kernel_size=3), (3, 16, 7, 6)),
    "pad_pair_no_bias": (
        dict(in_channels=16, out_channels=16, kernel_size=3, padding=(2, 0), bias=False),
        (2, 16, 4, 5),
    ),
}


@pytest.mark.parametrize("chunks", WINOGRAD_CHUNKS, ids=str)
@pytest.mark.parametrize("case", list(WINOGRAD_CONVS))
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_grad_winograd(case, dtype, tile, chunks, rng, monkeypatch):
    """``tile``: the forward's and the input gradient's tiles (the weight gradient's are 2x2)."""
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_MACS", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)  # however few tiles
    monkeypatch.setattr(winograd, "LARGE_TILE_MIN_PIXELS", 0 if tile == 4 else 1 << 62)
    force_winograd_chunks(monkeypatch, chunks)
    kernels = [winograd.conv2d_winograd, winograd.conv2d_grad_weight_winograd]
    used = record_steps(monkeypatch, kernels)
    check_conv_grad(*WINOGRAD_CONVS[case], dtype, rng)
    steps = {name: kernel for kernel, name in used}  # the training plan's lowering
    assert steps["layer.conv2d"] == "conv2d_winograd"  # the input gradient
    assert steps["layer.conv2d_grad_weight"] == "conv2d_grad_weight_winograd"
    assert steps["layer"] == "conv2d_winograd"


def test_private_weight_gradient_is_deterministic(rng, monkeypatch):
    """The private schedule sums each thread slot's chunks in a fixed order whoever runs the
    slot: two runs give the same bits (batch 5 in single images: 2 chunks per slot and one
    more), and the sum is the shared schedule's within float32 rounding."""
    monkeypatch.setattr(cpu_conv, "DIRECT_MAX_MACS", 0)
    monkeypatch.setattr(winograd, "MIN_TILES", 1)
    grads, model = {}, Net(nn.Conv2d(16, 16, 3, padding=1))
    x = rng.standard_normal((5, 16, 9, 8)).astype(np.float32)
    target = rng.standard_normal((5, 16, 9, 8)).astype(np.float32)
    for chunks in [(1, None, 1), (1, None, 0)]:
        force_winograd_chunks(monkeypatch, chunks)
        exe = engine.compile(model, (16, 9, 8), batch=5, train=True, loss="mse")
        conv = next(node for node in exe._training.graph.nodes if node.name == "layer")
        assert (winograd.attrs(conv, weight_gradient=True)[11] > 0) == chunks[2]
        runs = []
        for _ in range(2):
            exe.forward_backward(x, target)
            runs.append(exe.grads["layer.weight"].copy())
        np.testing.assert_array_equal(runs[0], runs[1])
        grads[chunks] = runs[0]
    private, shared = grads.values()
    assert rel_error(private, shared) < 1e-6


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_grad(bias, dtype, rng):
    """Linear after Flatten, so the input gradient also runs through reshape."""
    shape = (3, 3, 2, 2)

    def oracle(x, params):
        return TF.linear(x.flatten(1), params["layer.weight"], params.get("layer.bias"))

    check_gradients(Net(nn.Linear(12, 5, bias=bias), flatten=True), oracle, shape, dtype, rng)
