"""The pointwise register-tile conv (``backends/cpu/conv_pointwise.py``) against
``torch.nn.functional.conv2d``, its fused epilogue against torch twins, and the rule that
chooses it.

Every kernel case forces the tile onto each plain 1x1 conv, asserts that it ran, and runs on
fresh random weights and inputs in the tested dtype with NaN-poisoned buffers. The cases cover
both tiles (8 channels x 3 vectors, 6 x 4), channel counts off a tile (the last tile's rows
past the last channel computed and not stored), maps whose pixels end inside a vector and
inside a tile, several images and strips, channels cut into parts, both orders of a task's
tiles (pixel-major, channel-major), and the epilogue's parts: bias, folded BatchNorm,
residual, ReLU, hardtanh (ReLU6), and an activation the tile leaves to the GEMM (LeakyReLU).
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import engine
import graph.nn as nn
from backends.cpu import conv, conv_pointwise
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

# (C_in, C_out, input HxW, batch, bias); 99 and 121 pixels take the 6x4 tile, the others 8x3
# (all big enough to pass conv2d_direct's and conv2d_small's rules, which come first). Every
# map but 28x28 ends inside a vector (of 16 float32 or 8 float64 lanes): its last pixels are
# the remainder's dot products; a 3x4 map is all tile in float32 (smaller than a vector).
CASES = {
    "mobilenet_expansion": (16, 96, (14, 14), 1, False),
    "channels_off_the_6x4_tile": (19, 45, (11, 9), 1, True),
    "pixels_end_in_a_vector": (24, 44, (13, 11), 2, True),
    "several_images_and_strips": (32, 64, (28, 28), 3, False),
    "narrowing_6x4_tile": (48, 20, (11, 11), 2, True),
    "remainder_in_channel_parts": (64, 203, (15, 15), 2, True),
    "map_under_a_vector": (96, 160, (3, 4), 2, True),
    "channel_major": (16, 96, (56, 56), 1, True),  # outputs of 1 MB or more
    "channel_major_images_and_strips": (24, 45, (45, 45), 3, True),
}


@pytest.fixture
def forced(monkeypatch):
    """Every plain 1x1 conv with an epilogue the tile applies takes it; the list collects the
    steps it made."""
    monkeypatch.setattr(conv_pointwise, "MAX_CHANNELS", 1 << 30)
    monkeypatch.setattr(conv_pointwise, "MIN_WIDENING", 0)
    return record_steps(monkeypatch, [conv_pointwise.conv2d_pointwise])


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_pointwise_matches_torch(case, dtype, rng, forced):
    cin, cout, hw, batch, bias = CASES[case]
    exe = engine.compile(
        Net(nn.Conv2d(cin, cout, 1, bias=bias)), (cin, *hw), batch=batch, dtype=dtype
    )
    state = {k: rng.standard_normal(np.shape(v)).astype(dtype) for k, v in exe.state_dict().items()}
    exe.load_state_dict(state)
    exe.poison_buffers()
    x = rng.standard_normal((batch, cin, *hw)).astype(dtype)
    weight = torch.from_numpy(state["layer.weight"])
    expected = TF.conv2d(
        torch.from_numpy(x), weight, torch.from_numpy(state["layer.bias"]) if bias else None
    )
    assert rel_error(exe.run(x), expected.numpy()) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in forced] == ["conv2d_pointwise"]


@pytest.mark.parametrize("activation", list(TILE_ACTIVATIONS))
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_epilogue_matches_torch(activation, residual, dtype, rng, forced):
    ours, theirs, tiled = TILE_ACTIVATIONS[activation]
    channels, hw = 24, (13, 11)
    model = ConvBlock(channels, 1, residual, ours())
    exe = engine.compile(model, (channels, *hw), dtype=dtype)
    state = random_eval_state(exe, rng, dtype)
    exe.load_state_dict(state)
    exe.poison_buffers()
    twin = torch_twin(model, TorchConvBlock(channels, 1, residual, theirs()), dtype)
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    x = (2 * rng.standard_normal((1, channels, *hw))).astype(dtype)  # some past ReLU6's 6
    assert [node.op for node in exe.graph.nodes] == ["batch_norm_fold", "conv2d_fused"]
    assert rel_error(exe.run(x), torch_run(twin, x)) < OP_TOLERANCE[dtype]
    assert [kernel for kernel, _ in forced] == (["conv2d_pointwise"] if tiled else [])


def test_training_forward_and_gradients_match_the_gemm_path(rng, forced, monkeypatch):
    """A training plan's forward runs on the tile; its loss and gradients equal the GEMM
    path's within float64 rounding."""
    model = Net(nn.Conv2d(16, 64, 1))
    x = rng.standard_normal((2, 16, 9, 9))
    target = rng.standard_normal((2, 64, 9, 9))

    def gemm_only():
        monkeypatch.setattr(conv_pointwise, "is_pointwise_tiled", lambda *_: False)

    assert_training_matches(model, x, target, forced, "conv2d_pointwise", gemm_only)


@pytest.mark.parametrize(
    "cin,cout,hw,batch,activation,expected",
    [
        (16, 96, (112, 112), 1, nn.ReLU6, True),  # MobileNet v2's expansions
        (24, 144, (56, 56), 1, nn.ReLU6, True),
        (32, 192, (28, 28), 1, nn.ReLU6, True),
        (320, 1280, (7, 7), 1, nn.ReLU6, True),  # maps one tile covers, any batch
        (2048, 512, (7, 7), 32, nn.ReLU, True),
        (64, 384, (14, 14), 4, nn.ReLU6, True),  # staged images, small weights
        (256, 1024, (14, 14), 32, nn.ReLU, False),  # staged images, 1 MB of weights
        (64, 384, (14, 14), 1, nn.ReLU6, True),  # one image, small weights, widening
        (384, 64, (14, 14), 1, nn.Identity, False),  # ... narrowing: the GEMM
        (256, 1024, (14, 14), 1, nn.ReLU, False),  # ... 1 MB of weights: the GEMM
        (32, 16, (112, 112), 1, nn.Identity, False),  # narrowing
        (64, 256, (56, 56), 1, nn.ReLU, True),  # ResNet-50's: outputs of 1 MB or more
        (64, 256, (56, 56), 32, nn.ReLU, True),
        (128, 512, (28, 28), 32, nn.ReLU, True),
        (256, 64, (56, 56), 32, nn.ReLU, False),  # ... narrowing
        (512, 128, (28, 28), 32, nn.ReLU, False),
        (16, 32, (56, 56), 1, nn.ReLU, False),  # widening only twice, 0.4 MB of output
        (16, 96, (112, 112), 1, lambda: nn.LeakyReLU(0.1), False),  # not an epilogue of KINDS
    ],
)
def test_rule(cin, cout, hw, batch, activation, expected, monkeypatch):
    used = record_steps(monkeypatch, [conv_pointwise.conv2d_pointwise, conv.conv2d_gemm])
    model = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), activation())
    engine.compile(model, (cin, *hw), batch=batch)
    assert [kernel for kernel, _ in used] == (["conv2d_pointwise"] if expected else ["conv2d_gemm"])


@pytest.mark.parametrize(
    "hw,dtype,tiled,tile",
    [
        ((7, 7), "float32", 48, 0),
        ((14, 14), "float32", 192, 0),
        ((8, 8), "float32", 64, 1),
        ((7, 9), "float64", 56, 1),
        ((3, 4), "float32", 12, 0),
        ((3, 4), "float64", 8, 0),
    ],
)
def test_tiles_cover_whole_vectors_padding_least(hw, dtype, tiled, tile):
    """The tiles take a plane's whole vectors (all of a map smaller than one), the tile that
    pads them least: 7x7's 3 vectors one 8x3 (not a 6x4 with a vector idle), 8x8's 4 one 6x4,
    14x14's 12 four 8x3 (a tie with three 6x4 goes to the first)."""
    exe = engine.compile(Net(nn.Conv2d(64, 64, 1)), (64, *hw), dtype=dtype)
    node = next(node for node in exe.graph.nodes if node.op == "conv2d")
    assert conv_pointwise.attrs(node)[4] == tiled
    assert conv_pointwise.attrs(node)[7] == tile


def test_one_image_of_few_pixels_is_cut_by_channels(monkeypatch):
    """Batch 1 on 7x7 is one strip: the channels are cut into one part per thread, each a
    whole number of tiles."""
    monkeypatch.setattr(numba.config, "NUMBA_NUM_THREADS", 2)  # the rule only
    exe = engine.compile(Net(nn.Conv2d(320, 1280, 1)), (320, 7, 7))
    node = next(node for node in exe.graph.nodes if node.op == "conv2d")
    n, c, oc, pixels, tiled, strip, part, tile, channel_major = conv_pointwise.attrs(node)
    rows = conv_pointwise.TILES[tile][0]
    assert (strip, part % rows, -(-oc // part)) == (48, 0, 2)


@pytest.mark.parametrize(
    "cin,cout,hw,dtype,expected",
    [
        (16, 96, (56, 56), "float32", 1),  # 1.2 MB of output
        (32, 192, (28, 28), "float32", 0),  # 0.6 MB
        (32, 192, (28, 28), "float64", 1),  # 1.2 MB
    ],
)
def test_large_outputs_run_channel_major_with_long_strips(cin, cout, hw, dtype, expected):
    """Outputs of CHANNEL_MAJOR_MIN_OUTPUT_BYTES or more go channel-major, and may take
    strips longer than MAX_STRIP_TILES (a whole 56x56 plane is one strip at batch 1)."""
    exe = engine.compile(Net(nn.Conv2d(cin, cout, 1)), (cin, *hw), dtype=dtype)
    node = next(node for node in exe.graph.nodes if node.op == "conv2d")
    attrs = conv_pointwise.attrs(node)
    assert attrs[8] == expected
    width = conv_pointwise.TILES[attrs[7]][1] * conv_pointwise.lanes_of(dtype)
    longest = conv_pointwise.MAX_STRIP_TILES * width
    assert attrs[5] > longest if expected else attrs[5] <= longest


@pytest.mark.parametrize("dtype", DTYPES)
def test_channel_major_order_gives_the_same_bits(dtype, rng, forced, monkeypatch):
    """The order of a task's tiles changes nothing but the order: each output is the same
    accumulation and epilogue, so both orders give the same bits (residual and ReLU6 in the
    epilogue, three images, channels off the tiles)."""
    model = ConvBlock(40, 1, True, nn.ReLU6())
    outputs = []
    for least in (1 << 40, 0):  # pixel-major, then channel-major
        monkeypatch.setattr(conv_pointwise, "CHANNEL_MAJOR_MIN_OUTPUT_BYTES", least)
        exe = engine.compile(model, (40, 29, 31), batch=3, dtype=dtype)
        node = next(node for node in exe.graph.nodes if node.op == "conv2d_fused")
        assert conv_pointwise.attrs(node)[8] == (least == 0)
        if not outputs:
            state = random_eval_state(exe, rng, dtype)
            x = (2 * rng.standard_normal((3, 40, 29, 31))).astype(dtype)
        exe.load_state_dict(state)
        exe.poison_buffers()
        outputs.append(exe.run(x).copy())
    assert np.array_equal(outputs[0], outputs[1])
    assert [kernel for kernel, _ in forced] == ["conv2d_pointwise"] * 2


def test_split_shares_the_remainder_among_the_threads():
    """14x14 at batch 1 (four 8x3 tiles of pixels, 72 of channels): the remainder's dot
    products, in the last strip, made two strips a thread each unequal; the split cuts the
    channels instead, so each thread computes half of the remainder."""
    tail = conv_pointwise.REMAINDER_COST * 4 / 48
    assert conv_pointwise._split(1, 4, 72, 2) == (2, 72)
    assert conv_pointwise._split(1, 4, 72, 2, tail) == (4, 36)


@pytest.mark.parametrize(
    "n,tiles,channel_tiles",
    [(1, 5, 72), (4, 5, 48), (1, 17, 24), (1, 66, 18), (32, 1, 64), (3, 2, 7)],
)
def test_split_finishes_the_threads_together(n, tiles, channel_tiles):
    """Under Numba's static schedule (each of the two threads one contiguous half of the
    tasks), the threads' tiles differ by at most a tenth: ten tasks of a 14x14 image (five
    one-tile strips, two parts) had left one thread five full tasks and the other three and
    two slivers. Strips and parts stay whole numbers of tiles and cover everything."""
    strip, part = conv_pointwise._split(n, tiles, channel_tiles, threads=2)
    sizes = [
        min(strip, tiles - s) * min(part, channel_tiles - q)
        for _ in range(n)
        for s in range(0, tiles, strip)
        for q in range(0, channel_tiles, part)
    ]
    half = len(sizes) // 2
    loads = sum(sizes[:half]), sum(sizes[half:])
    assert sum(loads) == n * tiles * channel_tiles
    assert max(loads) <= 1.1 * min(loads) or len(sizes) == 1
