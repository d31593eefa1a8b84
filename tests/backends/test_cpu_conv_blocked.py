"""The channel-blocked direct conv of frozen plans (``backends/cpu/conv_blocked.py``) against
``torch.nn.functional.conv2d``, the rule that chooses it, and what ``freeze=True`` promises:
read-only ``params``, ``load_state_dict`` repacking (clones included), no training, and a
saved frozen executable loading frozen.

Every kernel case asserts that ``conv2d_blocked`` ran, on fresh random weights and inputs in
the tested dtype with NaN-poisoned buffers, and covers: 3x3 at stride 1 and 2, dilation,
asymmetric padding, rectangular kernels, 1x1 at stride 1 and 2 (packed at the output's pixels,
with and without padding), channel counts off the 16- and 8-lane blocks on both sides (input
blocks and output tiles partly zero), several images, maps with fewer pixels than a tile and a
last tile that repeats its last pixel. The fused epilogue (folded BatchNorm, residual, ReLU)
is checked on a block against its torch twin. Inference only: the kernel has no gradient.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.functional as F
import graph.nn as nn
import zoo
from backends.cpu import conv_blocked
from tests.helpers import (
    DTYPES,
    NET_TOLERANCE,
    OP_TOLERANCE,
    Net,
    record_steps,
    rel_error,
    torch_run,
    torch_twin,
)

# (C_in, C_out, kernel, input HxW, Conv2d kwargs and the batch (default 1))
BLOCKED_CASES = {
    "resnet50_14x14_3x3": (256, 256, 3, (14, 14), dict(padding=1)),
    "7x7_3x3_channels_off_blocks": (72, 100, 3, (7, 7), dict(padding=1)),
    "stride2_3x3": (96, 64, 3, (9, 9), dict(stride=2, padding=1, batch=2)),
    "dilation2": (64, 80, 3, (8, 8), dict(padding=2, dilation=2)),
    "asymmetric_padding_rect": (64, 64, (2, 3), (6, 7), dict(padding=(1, 0))),
    "pointwise_7x7": (128, 200, 1, (7, 7), {}),
    "pointwise_stride2": (64, 96, 1, (14, 14), dict(stride=2, bias=False)),
    "pointwise_stride2_padded": (80, 64, 1, (9, 9), dict(stride=2, padding=1)),
    "fewer_pixels_than_a_tile": (64, 64, 3, (3, 3), dict(padding=1, batch=1)),
    "two_images_4x4": (64, 160, 3, (4, 4), dict(padding=1, batch=2)),
}


def _random_state(model: nn.Module, rng, dtype: str) -> dict[str, np.ndarray]:
    state = {}
    for key, value in model.state_dict().items():
        value = np.asarray(value)
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.3, 3.0, value.shape).astype(dtype)
        elif np.issubdtype(value.dtype, np.floating):
            state[key] = rng.standard_normal(value.shape).astype(dtype)
        else:
            state[key] = value
    return state


def _frozen(model, shape, batch, dtype, rng) -> engine.Executable:
    """``model`` compiled frozen with fresh random weights (loaded, as a frozen plan takes
    them), every buffer NaN-poisoned."""
    exe = engine.compile(model, shape, batch=batch, dtype=dtype, freeze=True)
    exe.load_state_dict(_random_state(model, rng, dtype))
    exe.poison_buffers()
    return exe


@pytest.mark.parametrize("case", list(BLOCKED_CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_blocked_matches_torch(case, dtype, rng, monkeypatch):
    cin, cout, kernel, hw, kwargs = BLOCKED_CASES[case]
    batch = kwargs.pop("batch", 1)
    monkeypatch.setattr(conv_blocked, "is_blocked", lambda node: True)  # every case on it
    used = record_steps(monkeypatch, [conv_blocked.conv2d_blocked])
    conv = nn.Conv2d(cin, cout, kernel, **kwargs)
    exe = _frozen(Net(conv), (cin, *hw), batch, dtype, rng)
    x = rng.standard_normal((batch, cin, *hw)).astype(dtype)
    p = {k: torch.from_numpy(np.array(v)) for k, v in exe.params.items()}
    expected = TF.conv2d(
        torch.from_numpy(x),
        p["layer.weight"],
        p.get("layer.bias"),
        stride=kwargs.get("stride", 1),
        padding=kwargs.get("padding", 0),
        dilation=kwargs.get("dilation", 1),
    )
    for _ in range(2):  # the second run uses the weights packed by the first
        assert rel_error(exe.run(x), expected.numpy()) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in used] == ["conv2d_blocked"]


class Bottleneck(nn.Module):
    """conv -> eval BatchNorm -> (+ x) -> ReLU: one conv2d_fused node after the passes."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(F.add(self.bn(self.conv(x)), x))


class TorchBottleneck(torch.nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(channels)
        self.act = torch.nn.ReLU()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)) + x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_epilogue_matches_torch(dtype, rng, monkeypatch):
    used = record_steps(monkeypatch, [conv_blocked.conv2d_blocked])
    model = Bottleneck(80)
    exe = _frozen(model, (80, 7, 7), 1, dtype, rng)
    model.load_state_dict(
        {k: np.asarray(v, np.float32) for k, v in exe.state_dict().items()}
    )  # the twin gets the executable's weights
    twin = torch_twin(model, TorchBottleneck(80), dtype)
    twin.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exe.params.items()})
    x = rng.standard_normal((1, 80, 7, 7)).astype(dtype)
    assert [node.op for node in exe.graph.nodes] == ["batch_norm_fold", "conv2d_fused"]
    assert rel_error(exe.run(x), torch_run(twin, x)) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in used] == ["conv2d_blocked"]


def test_frozen_resnet_equals_unfrozen(rng, monkeypatch):
    """A zoo ResNet whose deep layers (256 and 512 channels on 8x8 and 4x4 maps) take the
    blocked kernel gives the unfrozen plan's outputs within float32 rounding."""
    model = zoo.get("resnet18_cifar")
    x = rng.standard_normal((1, 3, 32, 32)).astype(np.float32)
    expected = engine.compile(model, (3, 32, 32)).run(x)
    used = record_steps(monkeypatch, [conv_blocked.conv2d_blocked])
    exe = engine.compile(model, (3, 32, 32), freeze=True)
    exe.poison_buffers()
    assert rel_error(exe.run(x), expected) < NET_TOLERANCE["float32"]
    assert len(used) >= 8


# **** freeze=True: what it promises ****


def test_frozen_params_are_read_only_and_load_state_dict_repacks(rng):
    conv = nn.Conv2d(64, 64, 3, padding=1)
    exe = _frozen(Net(conv), (64, 7, 7), 1, "float64", rng)
    x = rng.standard_normal((1, 64, 7, 7))
    first = exe.run(x)
    with pytest.raises(ValueError, match="read-only"):
        exe.params["layer.weight"][...] = 0.0
    clone = exe.clone()
    state = exe.state_dict()
    state["layer.weight"], state["layer.bias"] = -state["layer.weight"], -state["layer.bias"]
    exe.load_state_dict(state)
    np.testing.assert_allclose(exe.run(x), -first, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(clone.run(x), -first, rtol=1e-12, atol=1e-12)


def test_freeze_is_for_inference():
    with pytest.raises(ValueError, match="freeze=True"):
        engine.compile(Net(nn.Conv2d(3, 4, 3)), (3, 8, 8), train=True, freeze=True)


def test_saved_frozen_executable_loads_frozen(rng, tmp_path):
    conv = nn.Conv2d(64, 64, 3, padding=1)
    exe = _frozen(Net(conv), (64, 7, 7), 1, "float32", rng)
    x = rng.standard_normal((1, 64, 7, 7)).astype(np.float32)
    engine.save(exe, tmp_path / "frozen.cf")
    loaded = engine.load(tmp_path / "frozen.cf")
    assert loaded.options.freeze
    np.testing.assert_array_equal(loaded.run(x), exe.run(x))
    assert not loaded.params["layer.weight"].flags.writeable


@pytest.mark.parametrize(
    "cin,cout,kernel,hw,kwargs,expected",
    [
        (256, 256, 3, (14, 14), dict(padding=1), True),  # ResNet-50 at batch 1
        (512, 512, 3, (7, 7), dict(padding=1), True),
        (256, 256, 3, (14, 14), dict(padding=1, stride=2), True),
        (128, 128, 3, (28, 28), dict(padding=1), False),  # 784 pixels: Winograd
        (512, 2048, 1, (7, 7), {}, True),  # 1x1 at 7x7
        (1024, 2048, 1, (14, 14), dict(stride=2), True),
        (256, 1024, 1, (14, 14), {}, False),  # 1x1 at 14x14: one GEMM
        (2048, 512, 1, (7, 7), {}, False),  # a narrowing 1x1
        (960, 320, 1, (7, 7), {}, False),  # MobileNet v2's: too few weights
        (32, 256, 3, (7, 7), dict(padding=1), False),  # too few input channels
        (256, 256, 3, (14, 14), dict(padding=1, groups=2), False),  # grouped
    ],
)
def test_lowering_takes_conv2d_blocked_for_deep_small_maps(
    cin, cout, kernel, hw, kwargs, expected, monkeypatch
):
    used = record_steps(monkeypatch, [conv_blocked.conv2d_blocked])
    model = Net(nn.Conv2d(cin, cout, kernel, **kwargs))
    engine.compile(model, (cin, *hw), freeze=True)
    assert bool(used) == expected
    used.clear()
    engine.compile(model, (cin, *hw))  # never without freeze
    assert not used
