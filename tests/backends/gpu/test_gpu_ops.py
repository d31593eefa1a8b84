"""The GPU kernels of every forward op but conv2d/linear/matmul, against the CPU backend.

Each case compiles one small model twice, ``backend="cpu"`` and ``backend="gpu-emulated"``
(the same CUDA C run on the CPU by ``backends/gpu/emulator.py``), gives both the same random
parameters (BatchNorm variances in [0.1, 4]), poisons every buffer with NaN, runs one fresh
random batch and compares ``||gpu - cpu|| / ||cpu||`` with the op tolerances: 1e-5 (float32),
1e-10 (float64). Each case also names the kernel it must reach, so every kernel and every
launch shape a lowering can pick (rows or columns, windows or whole planes) runs here. Sizes
are small: the emulator runs a block's threads one after another.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import engine
import graph.functional as F
import graph.nn as nn
from backends.gpu import GpuBackend, lowering
from backends.gpu import capsule as gpu_capsule
from backends.gpu import elementwise as gpu_elementwise
from backends.gpu import norm as gpu_norm
from backends.gpu import pooling as gpu_pooling
from tests.helpers import DTYPES, OP_TOLERANCE, Lambda, Net, rel_error

pytestmark = pytest.mark.skipif(
    shutil.which("g++") is None, reason="the GPU emulation needs g++, which is not on PATH"
)

SHAPE = (3, 5, 6)


@pytest.fixture
def kernels(monkeypatch) -> list[str]:
    """The kernels (with dtype suffix) that the GPU lowerings launch while a test compiles."""
    used: list[str] = []
    lower = GpuBackend.lower

    def spy(self, node, *args):
        launches = lower(self, node, *args)
        used.extend(launch.kernel for launch in launches)
        return launches

    monkeypatch.setattr(GpuBackend, "lower", spy)
    return used


def _random_state(exe, rng: np.random.Generator) -> dict[str, np.ndarray]:
    state = {}
    for name, array in exe.state_dict().items():
        if not np.issubdtype(array.dtype, np.floating):
            state[name] = array
        elif name.endswith("running_var"):
            state[name] = rng.uniform(0.1, 4.0, array.shape).astype(array.dtype)
        else:
            state[name] = rng.standard_normal(array.shape).astype(array.dtype)
    return state


def check_parity(model, shape, dtype: str, rng: np.random.Generator, batch: int = 2) -> None:
    """Run ``model`` on both backends with the same parameters and input; compare."""
    cpu = engine.compile(model, shape, batch, backend="cpu", dtype=dtype)
    gpu = engine.compile(model, shape, batch, backend="gpu-emulated", dtype=dtype)
    cpu.load_state_dict(_random_state(cpu, rng))
    gpu.load_state_dict(cpu.state_dict())
    cpu.poison_buffers()
    gpu.poison_buffers()
    x = rng.standard_normal((batch, *shape)).astype(dtype)
    expected, actual = cpu.run(x), gpu.run(x)
    err = rel_error(actual, expected)
    assert err < OP_TOLERANCE[dtype], f"gpu-emulated vs cpu: relative error {err:.3e}"


def run_case(cases, case, dtype, rng, kernels) -> None:
    model, shape, kernel = cases[case]
    check_parity(model, shape, dtype, rng)
    suffix = {"float32": "f32", "float64": "f64"}[dtype]
    assert f"{kernel}_{suffix}" in kernels, f"expected {kernel}, launched {kernels}"


def fn(function) -> Lambda:
    return Lambda(function)


class ChannelScale(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.scale = nn.Parameter(np.ones(shape, np.float32))

    def forward(self, x):
        return F.channel_scale(x, self.scale)


# **** elementwise ****

ELEMENTWISE = {
    "relu": (nn.ReLU(), SHAPE, "unary_relu"),
    "leaky_relu": (nn.LeakyReLU(0.2), SHAPE, "unary_leaky_relu"),
    "sigmoid": (nn.Sigmoid(), SHAPE, "unary_sigmoid"),
    "tanh": (nn.Tanh(), SHAPE, "unary_tanh"),
    "gelu": (nn.GELU(), SHAPE, "unary_gelu"),
    "gelu_tanh": (nn.GELU("tanh"), SHAPE, "unary_gelu_tanh"),
    "hardtanh": (fn(lambda x: F.hardtanh(x, -0.5, 0.75)), SHAPE, "unary_hardtanh"),
    "relu6": (fn(lambda x: F.relu6(F.scale(x, 4.0))), SHAPE, "unary_hardtanh"),
    "neg": (fn(F.neg), SHAPE, "unary_neg"),
    "scale": (fn(lambda x: F.scale(x, -2.5)), SHAPE, "unary_scale"),
    "dropout": (nn.Dropout(0.3), SHAPE, "unary_copy"),
    "stochastic_depth": (nn.StochasticDepth(0.2), SHAPE, "unary_copy"),
    "flatten": (nn.Flatten(), SHAPE, "unary_copy"),
    "reshape": (fn(lambda x: F.reshape(x, (2, 6, -1))), SHAPE, "unary_copy"),
    "reshape_in_place": (
        fn(lambda x: F.relu(F.reshape(F.tanh(x), (2, -1)))),
        SHAPE,
        "unary_relu",
    ),
    "add": (fn(lambda x: F.add(x, F.tanh(x))), SHAPE, "binary_add"),
    "sub": (fn(lambda x: F.sub(F.sigmoid(x), x)), SHAPE, "binary_sub"),
    "mul": (fn(lambda x: F.mul(x, F.tanh(x))), SHAPE, "binary_mul"),
    "add_in_place": (fn(lambda x: F.relu(F.add(F.tanh(x), F.neg(x)))), SHAPE, "binary_add"),
    "channel_scale": (ChannelScale((3,)), SHAPE, "channel_scale"),
    "channel_scale_c11": (ChannelScale((3, 1, 1)), (3, 4, 4), "channel_scale"),
    # channel_sum (bias and layer-scale gradients) has no functional form: emitted directly
    "channel_sum": (fn(lambda x: F._emit("channel_sum", [x])), SHAPE, "channel_sum"),
    "channel_sum_rank2": (
        fn(lambda x: F._emit("channel_sum", [F.flatten(x, 1)])),
        (7, 1, 1),
        "channel_sum",
    ),
    "channel_sum_large_plane": (
        fn(lambda x: F._emit("channel_sum", [x])),
        (2, 17, 19),
        "channel_sum",
    ),
}


@pytest.mark.parametrize("case", list(ELEMENTWISE))
@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise(case, dtype, rng, kernels):
    run_case(ELEMENTWISE, case, dtype, rng, kernels)


def test_copy_in_place_launches_nothing(kernels):
    """A reshape whose output took over its input's buffer moves nothing (as on the CPU)."""
    model = fn(lambda x: F.relu(F.reshape(F.tanh(x), (2, -1))))
    engine.compile(model, SHAPE, 2, backend="gpu-emulated")
    assert kernels == ["unary_tanh_f32", "unary_relu_f32"]


# **** pooling ****

POOL = (3, 9, 11)
POOLING = {
    "max_2x2": (nn.MaxPool2d(2), POOL, "window_pool"),
    "max_3x3_s2_p1": (nn.MaxPool2d(3, 2, 1), POOL, "window_pool"),
    "max_dilated": (fn(lambda x: F.max_pool2d(x, 3, 1, 1, dilation=2)), POOL, "window_pool"),
    "max_asymmetric": (fn(lambda x: F.max_pool2d(x, (1, 3), (2, 1), (0, 1))), POOL, "window_pool"),
    "max_ceil": (nn.MaxPool2d(3, 2, ceil_mode=True), (3, 10, 12), "window_pool"),
    "avg_3x3_s2_p1": (nn.AvgPool2d(3, 2, 1), POOL, "window_pool"),
    "avg_exclude_pad": (
        fn(lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)),
        POOL,
        "window_pool",
    ),
    "avg_ceil": (
        fn(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True)),
        (3, 10, 12),
        "window_pool",
    ),
    "avg_ceil_exclude_pad": (
        fn(lambda x: F.avg_pool2d(x, 2, 3, 1, ceil_mode=True, count_include_pad=False)),
        (3, 10, 12),
        "window_pool",
    ),
    "adaptive_avg_uneven": (nn.AdaptiveAvgPool2d((4, 3)), POOL, "adaptive_pool"),
    "adaptive_avg_larger": (nn.AdaptiveAvgPool2d((5, 7)), (3, 4, 6), "adaptive_pool"),
    "adaptive_max_uneven": (nn.AdaptiveMaxPool2d((4, 3)), POOL, "adaptive_pool"),
    "adaptive_max_1x1": (nn.AdaptiveMaxPool2d(1), POOL, "global_pool"),
    "global_avg": (nn.AdaptiveAvgPool2d(1), POOL, "global_pool"),
    "global_avg_large_plane": (
        fn(lambda x: F.adaptive_avg_pool2d(x, 1)),
        (2, 23, 29),
        "global_pool",
    ),
}


@pytest.mark.parametrize("case", list(POOLING))
@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling(case, dtype, rng, kernels):
    run_case(POOLING, case, dtype, rng, kernels)


# **** normalisation ****


class Between(nn.Module):
    """``layer`` between two activations, so its output may take over its input's buffer."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return F.relu(self.layer(F.tanh(x)))


NORM = {
    "batch_norm2d": (nn.BatchNorm2d(3), SHAPE, "batch_norm"),
    "batch_norm2d_no_affine": (nn.BatchNorm2d(3, affine=False), SHAPE, "batch_norm"),
    "batch_norm1d": (Net(nn.BatchNorm1d(7), flatten=True), (7, 1, 1), "batch_norm"),
    "batch_norm_in_place": (Between(nn.BatchNorm2d(3)), SHAPE, "batch_norm"),
    "layer_norm2d": (nn.LayerNorm2d(3), SHAPE, "layer_norm2d"),
    "layer_norm2d_no_affine": (nn.LayerNorm2d(3, elementwise_affine=False), SHAPE, "layer_norm2d"),
    "layer_norm2d_many_channels": (nn.LayerNorm2d(19), (19, 3, 5), "layer_norm2d"),
    "softmax_last": (nn.Softmax(-1), SHAPE, "softmax_rows"),
    "softmax_classes": (Net(nn.Softmax(1), flatten=True), (10, 1, 1), "softmax_rows"),
    "softmax_long_rows": (nn.Softmax(-1), (1, 3, 300), "softmax_rows"),
    "softmax_channels": (nn.Softmax(1), SHAPE, "softmax_columns"),
    "softmax_batch": (nn.Softmax(0), SHAPE, "softmax_columns"),
    "softmax_rows_of_planes": (nn.Softmax(2), (3, 19, 5), "softmax_columns"),
    "lrn_alexnet": (nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0), (7, 3, 5), "local_response_norm"),
    "lrn_even_wide": (nn.LocalResponseNorm(6, 0.5, 0.6, 1.0), (3, 5, 6), "local_response_norm"),
}


@pytest.mark.parametrize("case", list(NORM))
@pytest.mark.parametrize("dtype", DTYPES)
def test_norm(case, dtype, rng, kernels):
    run_case(NORM, case, dtype, rng, kernels)


# **** data movement ****

SHAPES = {
    "concat_channels": (
        fn(lambda x: F.cat([x, F.tanh(x), F.relu(x)], dim=1)),
        SHAPE,
        "copy_block",
    ),
    "concat_batch": (fn(lambda x: F.cat([x, F.tanh(x)], dim=0)), SHAPE, "copy_block"),
    "concat_height": (
        fn(lambda x: F.cat([x, F.pad(x, (0, 0, 1, 2), value=0.5)], dim=2)),
        SHAPE,
        "copy_block",
    ),
    "concat_width": (fn(lambda x: F.cat([F.tanh(x), x], dim=3)), SHAPE, "copy_block"),
    "slice_channels": (fn(lambda x: F.add(*F.split(x, [2, 2], dim=1))), (4, 5, 6), "copy_block"),
    "slice_width": (fn(lambda x: F.chunk(x, 3, dim=3)[1]), SHAPE, "copy_block"),
    "transpose_0_1": (fn(lambda x: F.transpose(x, 0, 1)), SHAPE, "transpose"),
    "transpose_1_3": (fn(lambda x: F.transpose(x, 1, 3)), SHAPE, "transpose"),
    "transpose_2_3": (fn(lambda x: F.transpose(x, 2, 3)), SHAPE, "transpose"),
    "channel_shuffle": (nn.ChannelShuffle(3), (6, 4, 5), "channel_shuffle"),
    "channel_shuffle_2": (nn.ChannelShuffle(2), (8, 3, 3), "channel_shuffle"),
    "pad_zero": (nn.ZeroPad2d((1, 2, 3, 0)), SHAPE, "pad"),
    "pad_value": (fn(lambda x: F.pad(x, (2, 1, 0, 2), value=-0.75)), SHAPE, "pad"),
    "pad_reflect": (nn.ReflectionPad2d((2, 1, 3, 4)), SHAPE, "pad"),
}


@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_shape(case, dtype, rng, kernels):
    run_case(SHAPES, case, dtype, rng, kernels)


# **** capsules ****


class Predict(nn.Module):
    def __init__(self, caps_in: int, caps_out: int, d_out: int, d_in: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(np.ones((caps_in, caps_out, d_out, d_in), np.float32))

    def forward(self, x):
        return F.capsule_predict(F.reshape(x, (x.shape[0], *x.shape[2:])), self.weight)


class Capsules(nn.Module):
    """[N, C, H, W] -> ``caps_in`` capsules of 4-D (reshape, squash), predictions for
    ``caps_out`` capsules of ``d``-D, routing, lengths."""

    def __init__(self, caps_in: int, caps_out: int, d: int, iterations: int) -> None:
        super().__init__()
        self.caps_in, self.iterations = caps_in, iterations
        self.weight = nn.Parameter(np.ones((caps_in, caps_out, d, 4), np.float32))

    def forward(self, x):
        u = F.squash(F.reshape(x, (x.shape[0], self.caps_in, 4)), dim=2)
        v = F.capsule_routing(F.capsule_predict(u, self.weight), self.iterations)
        return F.capsule_length(v)


CAPSULES = {
    "squash_last": (fn(lambda x: F.squash(x)), SHAPE, "squash"),
    "squash_dim1": (fn(lambda x: F.squash(x, dim=1)), SHAPE, "squash"),
    "squash_dim2": (fn(lambda x: F.squash(x, dim=2)), SHAPE, "squash"),
    "predict": (Predict(5, 2, 3, 6), (1, 5, 6), "capsule_predict"),
    "routing_1": (Capsules(6, 3, 5, 1), (6, 4, 1), "capsule_routing"),
    "routing_3": (Capsules(6, 3, 5, 3), (6, 4, 1), "capsule_routing"),
    # 37 input capsules: more than the block's 8 rows; 5 x 8 = 40 (j, e) pairs: two lane groups
    "routing_wide": (Capsules(37, 5, 8, 3), (37, 4, 1), "capsule_routing"),
    "length": (
        fn(lambda x: F.capsule_length(F.reshape(x, (2, 7, 5)))),
        (1, 7, 5),
        "capsule_length",
    ),
}


@pytest.mark.parametrize("case", list(CAPSULES))
@pytest.mark.parametrize("dtype", DTYPES)
def test_capsule(case, dtype, rng, kernels):
    run_case(CAPSULES, case, dtype, rng, kernels)


# **** grids smaller than the work ****

ALL_CASES = {**ELEMENTWISE, **POOLING, **NORM, **SHAPES, **CAPSULES}


@pytest.mark.parametrize("case", list(ALL_CASES))
def test_one_block_grids(case, rng, kernels, monkeypatch):
    """Every launch capped to one block along x and y: the grid-stride loops over elements,
    planes, rows, line groups and samples must cover the rest (as on a GPU for tensors larger
    than the grid)."""
    for module in (lowering, gpu_elementwise, gpu_pooling, gpu_norm, gpu_capsule):
        monkeypatch.setattr(module, "MAX_BLOCKS", 1)
    run_case(ALL_CASES, case, "float64", rng, kernels)
