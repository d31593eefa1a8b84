"""int8 post-training quantisation: the kernels against an exact integer reference, the
quantisation rules, calibration, a whole quantised model, and VNNI in the kernel's assembly.

The reference quantises with the rules of ``graph/ops/quantized.py`` in NumPy float64,
accumulates in int64 with explicit loops over taps, and rescales in float32 as the kernel
does: with |acc| < 2^24 (small K) every step is exact or one IEEE rounding, so the outputs
must be bit-identical, which pins the int32 accumulators exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import engine
from backends.cpu import int8
from engine.checkpoint import load_checkpoint, save_checkpoint
from graph import nn
from graph.compress.quantize import activation_scale, quantize_graph
from tests.helpers import rel_error
from zoo.resnet import BasicBlock

# **** The reference ****


def _weights_ref(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(int weights, the float32 per-channel scales the kernel keeps)."""
    rows = w.reshape(w.shape[0], -1).astype(np.float64)
    peak = np.abs(rows).max(axis=1)
    scale = np.where(peak > 0, peak / 127.0, 1.0)
    q = np.clip(np.rint(rows / scale[:, None]), -127, 127).astype(np.int64)
    return q.reshape(w.shape), scale.astype(np.float32)


def _input_ref(x: np.ndarray, scale: float) -> np.ndarray:
    inverse = 1.0 / np.float64(np.float32(scale))
    return np.clip(np.rint(x.astype(np.float64) * inverse), -127, 127).astype(np.int64)


def _conv_acc(xq, wq, stride, padding, dilation, groups) -> np.ndarray:
    """Exact int64 conv: the sum over taps of strided input windows times one weight."""
    n, c, h, w = xq.shape
    oc, cg, kh, kw = wq.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    padded = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.int64)
    padded[:, :, ph : ph + h, pw : pw + w] = xq
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    acc = np.zeros((n, oc, oh, ow), np.int64)
    for o in range(oc):
        g = o // (oc // groups)
        for ci in range(cg):
            for i in range(kh):
                for j in range(kw):
                    rows = slice(i * dh, i * dh + sh * (oh - 1) + 1, sh)
                    cols = slice(j * dw, j * dw + sw * (ow - 1) + 1, sw)
                    acc[:, o] += padded[:, g * cg + ci, rows, cols] * wq[o, ci, i, j]
    return acc


def _rescale(acc: np.ndarray, input_scale: float, wscale: np.ndarray) -> np.ndarray:
    """float32(acc) * float32(input_scale * sw[o]), channels on axis 1."""
    factor = (np.float64(np.float32(input_scale)) * wscale.astype(np.float64)).astype(np.float32)
    return acc.astype(np.float32) * factor.reshape([1, -1] + [1] * (acc.ndim - 2))


def _quantized(model, x: np.ndarray, calibration: list[np.ndarray]):
    exe = engine.compile(model, x.shape[1:], batch=x.shape[0])
    q = engine.quantize(exe, calibration)
    q.poison_buffers()
    return q, q.run(x)


def _random_weights(model, rng: np.random.Generator) -> None:
    for name, value in model.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            value[...] = rng.standard_normal(value.shape).astype(np.float32)


# **** The kernels ****

CONVS = [
    # in, out, kernel, stride, padding, dilation, groups, (H, W)
    (3, 8, 3, 1, 1, 1, 1, (9, 9)),
    (8, 12, 3, 1, 1, 1, 1, (8, 8)),  # 64 pixels: tiles rescaled in registers
    (8, 6, (1, 3), (2, 1), (0, 2), 1, 1, (7, 10)),
    (4, 8, (3, 2), 2, 1, (2, 1), 2, (11, 9)),
    (6, 6, 3, 1, 1, 1, 6, (8, 8)),  # depthwise
    (5, 7, 1, 1, 0, 1, 1, (6, 5)),  # pointwise, channels not a multiple of 4
    (12, 9, 3, 1, 0, 1, 3, (5, 5)),  # 3 output channels per group: partial tiles
]


@pytest.mark.parametrize("spec", CONVS, ids=lambda s: "x".join(map(str, s[:3])) + f"g{s[6]}")
def test_conv2d_int8_equals_integer_reference(spec):
    cin, cout, k, s, p, d, g, (h, w) = spec
    rng = np.random.default_rng(cin * 100 + cout)
    model = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g, bias=False)
    _random_weights(model, rng)
    x = rng.standard_normal((3, cin, h, w)).astype(np.float32)
    calibration = [x, 1.5 * rng.standard_normal(x.shape).astype(np.float32)]
    q, y = _quantized(model, x, calibration)
    (node,) = q.graph.nodes
    assert node.op == "conv2d_int8"
    input_scale = activation_scale(calibration)
    assert node.attrs["input_scale"] == input_scale == float(np.float32(input_scale))
    wq, wscale = _weights_ref(model.weight.data)
    padding = node.attrs["padding"][::2]  # (top, left) == (bottom, right) here
    acc = _conv_acc(
        _input_ref(x, input_scale), wq, node.attrs["stride"], padding, node.attrs["dilation"], g
    )
    assert np.abs(acc).max() < 2**24
    np.testing.assert_array_equal(y, _rescale(acc, input_scale, wscale))


def test_linear_int8_with_epilogue_equals_integer_reference():
    rng = np.random.default_rng(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(37, 13), nn.ReLU())
    _random_weights(model, rng)
    x = rng.standard_normal((5, 37, 1, 1)).astype(np.float32)
    q, y = _quantized(model, x, [x])
    assert [n.op for n in q.graph.nodes][-1] == "linear_int8"
    scale = activation_scale([x])
    fc = model[1]
    wq, wscale = _weights_ref(fc.weight.data)
    acc = _input_ref(x[:, :, 0, 0], scale) @ wq.T
    # the epilogue as the float kernels apply it: bias, then the activation
    expected = np.maximum(_rescale(acc, scale, wscale) + fc.bias.data, 0)
    np.testing.assert_array_equal(y, expected)


def test_large_accumulators_stay_exact_int32():
    """K = 2304 taps of large same-sign values: |acc| > 2^24, past float32's exact integers,
    so compare with the int64 reference within one float32 rounding."""
    rng = np.random.default_rng(2)
    model = nn.Conv2d(256, 4, 3, padding=1, bias=False)
    model.weight.data[...] = rng.uniform(0.9, 1.0, model.weight.data.shape)
    x = rng.uniform(0.9, 1.0, (1, 256, 4, 4)).astype(np.float32)
    q, y = _quantized(model, x, [x])
    scale = activation_scale([x])
    wq, wscale = _weights_ref(model.weight.data)
    acc = _conv_acc(_input_ref(x, scale), wq, (1, 1), (1, 1), (1, 1), 1)
    assert np.abs(acc).max() > 2**24
    expected = acc * (np.float64(np.float32(scale)) * wscale.astype(np.float64))[:, None, None]
    assert rel_error(y, expected) < 1e-6


# **** The rules ****


def test_quantisation_rules():
    w = np.array([[0.5, -1.0, 0.25, 0.0], [0.0, 0.0, 0.0, 0.0]], np.float32)
    wq, wscale = _weights_ref(w)
    np.testing.assert_array_equal(wq, [[64, -127, 32, 0], [0, 0, 0, 0]])  # 63.5 -> 64 (even)
    assert wscale[1] == 1.0
    assert activation_scale([np.array([-2.54, 1.0])]) == float(np.float32(2.54 / 127))
    assert activation_scale([np.zeros(3)]) == 1.0
    with pytest.raises(ValueError, match="non-finite"):
        activation_scale([np.array([np.nan])])


def test_calibration_takes_the_max_over_batches_per_layer():
    rng = np.random.default_rng(3)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    batches = [rng.standard_normal((2, 2, 6, 6)).astype(np.float32) * s for s in (1, 3)]
    exe = engine.compile(model, (2, 6, 6), batch=2)
    scales = engine.calibrate(exe, batches)
    hidden = [exe.run(b, capture=["2"])[1]["2"] for b in batches]
    layers = {n.name: n.inputs[0].name for n in exe.graph.nodes if n.op.startswith("linear")}
    assert list(layers.values()) == ["2"]
    (fc,) = layers
    assert scales == {"0": activation_scale(batches), fc: activation_scale(hidden)}


def test_quantize_graph_keeps_the_epilogue_and_leaves_other_layers_float():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1))
    exe = engine.compile(model, (3, 8, 8), batch=1)
    fused = [n for n in exe.graph.nodes if n.op == "conv2d_fused"]
    assert len(fused) == 1
    graph = quantize_graph(exe.graph, {fused[0].name: 0.5})
    node = next(n for n in graph.nodes if n.name == fused[0].name)
    assert node.op == "conv2d_int8" and node.attrs["input_scale"] == 0.5
    assert node.attrs["epilogue"] == fused[0].attrs["epilogue"]
    assert [n.op for n in graph.nodes].count("conv2d") == 1
    with pytest.raises(ValueError, match="not conv2d or linear layers"):
        quantize_graph(exe.graph, {"nope": 1.0})
    with pytest.raises(ValueError, match=f"must be positive, but got {{'{fused[0].name}': 0.0}}"):
        quantize_graph(exe.graph, {fused[0].name: 0.0})


def test_quantize_refuses_what_it_cannot_run():
    model = nn.Conv2d(1, 2, 3)
    exe = engine.compile(model, (1, 5, 5), dtype="float64")
    with pytest.raises(ValueError, match="float32"):
        engine.quantize(exe, [np.ones((1, 1, 5, 5))])
    exe = engine.compile(model, (1, 5, 5))
    gpu = engine.compile(model, (1, 5, 5))
    gpu.options = dataclasses.replace(gpu.options, backend="gpu")
    with pytest.raises(ValueError, match="CPU-only"):
        engine.quantize(gpu, [np.ones((1, 1, 5, 5))])
    with pytest.raises(ValueError, match="at least one calibration batch"):
        engine.quantize(exe, [])
    with pytest.raises(ValueError, match="not conv or linear layers"):
        engine.quantize(exe, [np.ones((1, 1, 5, 5))], skip=["nope"])


# **** A whole model ****


def test_quantized_model_is_close_to_float_and_owns_its_weights():
    """Conv + BN + ReLU, a residual block, pooling and a classifier: int8 within 3% (relative
    L2) of float32. Like PyTorch's ``convert``, the int8 executable keeps its own weights:
    new float weights do not change it, and its own ``load_state_dict`` re-packs them."""
    rng = np.random.default_rng(4)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        BasicBlock(16, 16),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    exe = engine.compile(model, (3, 12, 12), batch=8)
    x = rng.standard_normal((8, 3, 12, 12)).astype(np.float32)
    q = engine.quantize(exe, [x, rng.standard_normal(x.shape).astype(np.float32)])
    ops = {n.op for n in q.graph.nodes}
    assert {"conv2d_int8", "linear_int8"} <= ops
    assert not {"conv2d", "conv2d_fused", "linear", "linear_fused"} & ops
    q.poison_buffers()
    before = q.run(x)
    assert rel_error(before, exe.run(x)) < 3e-2
    state = exe.state_dict()
    state["6.weight"] = -2 * state["6.weight"]
    state["3.conv1.weight"] = state["3.conv1.weight"][::-1].copy()
    exe.load_state_dict(state)
    np.testing.assert_array_equal(q.run(x), before)
    q.load_state_dict(state)
    assert rel_error(q.run(x), exe.run(x)) < 3e-2


def test_int8_model_saves_loads_and_clones_to_the_same_outputs(tmp_path):
    """``engine.save`` stores the float graph, the weights (here loaded after quantising) and
    the scales; ``engine.load`` quantises again: the same int8 executable, bit for bit, in a
    file an older ConvForge refuses (format version 2). A clone runs the same."""
    rng = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )  # fmt: skip
    exe = engine.compile(model, (3, 6, 6), batch=4)
    x = rng.standard_normal((4, 3, 6, 6)).astype(np.float32)
    q = engine.quantize(exe, [x], skip=["4"])
    state = q.state_dict()
    state["0.weight"] = rng.standard_normal(state["0.weight"].shape).astype(np.float32)
    q.load_state_dict(state)
    expected = q.run(x)
    engine.save(q, tmp_path / "int8.cfx")
    loaded = engine.load(tmp_path / "int8.cfx")
    assert isinstance(loaded, type(q)) and loaded.source.scales == q.source.scales
    assert {n.op for n in loaded.graph.nodes} == {n.op for n in q.graph.nodes}
    loaded.poison_buffers()
    np.testing.assert_array_equal(loaded.run(x), expected)
    assert load_checkpoint(tmp_path / "int8.cfx")[1]["saved_model"]["version"] == 2
    twin = q.clone()
    twin.poison_buffers()
    np.testing.assert_array_equal(twin.run(x), expected)


@pytest.mark.parametrize(
    "scales, message",
    [({"nope": 0.1}, "'nope'.* not conv or linear"), ({"0": -1.0}, "not positive and finite"),
     ({"0": "big"}, "map layers to numbers")],
)  # fmt: skip
def test_saved_int8_model_with_bad_scales_is_a_clear_error(scales, message, tmp_path):
    exe = engine.compile(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), (1, 5, 5), batch=1)
    engine.save(engine.quantize(exe, [np.ones((1, 1, 5, 5), np.float32)]), tmp_path / "q.cfx")
    tensors, metadata = load_checkpoint(tmp_path / "q.cfx")
    metadata["saved_model"]["int8"] = scales
    save_checkpoint(tmp_path / "bad.cfx", tensors, metadata)
    with pytest.raises(ValueError, match=f"bad.cfx: invalid saved .*{message}"):
        engine.load(tmp_path / "bad.cfx")


# **** VNNI ****


def test_dot_tile_is_exact_and_uses_vnni():
    from numba import njit

    @njit
    def tile(cols, wq, acc, kp, block):
        int8.dot_tile(cols, 0, block, wq, 0, kp, acc, 0)

    rng = np.random.default_rng(5)
    (channels, pixels), kp = (int8.TILE_CHANNELS, int8.TILE_PIXELS), 68
    cols = rng.integers(0, 256, kp * pixels, dtype=np.uint8)
    wq = rng.integers(-127, 128, channels * kp, dtype=np.int8)
    acc = np.full(channels * pixels, -1, np.int32)
    tile(cols, wq, acc, kp, pixels)
    columns = cols.reshape(kp // 4, pixels, 4).transpose(1, 0, 2).reshape(pixels, kp)
    expected = wq.reshape(channels, kp).astype(np.int64) @ columns.astype(np.int64).T
    np.testing.assert_array_equal(acc.reshape(channels, pixels), expected)
    (asm,) = tile.inspect_asm().values()
    assert "vpdpbusd" in asm


@pytest.mark.slow
def test_conv_kernel_assembly_uses_vnni():
    """The layer kernel itself (recompiled serially and uncached: a cached one has no
    assembly to show, and the parallel one takes much longer to compile)."""
    from numba import njit, types

    arrays = [types.Array(getattr(types, dtype), 1, "C") for _, dtype in int8._BUFFERS]
    signature = (*arrays, types.Array(types.int64, 1, "C"))
    kernel = njit(int8.conv2d_int8.py_func)
    kernel.compile(signature)
    assert "vpdpbusd" in kernel.inspect_asm(signature)
