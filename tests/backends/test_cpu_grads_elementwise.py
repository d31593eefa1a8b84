"""Gradients of the elementwise ops on the CPU: activations, add, mul and dropout.

Each op is checked by ``tests.gradcheck.check_gradients`` against torch autograd (float32 and
float64) and, in float64, against central differences. Inputs to relu and leaky_relu are moved
off their kink at 0. Dropout's mask is random, so its gradient check runs with p=0 (the mask is
all ones); at p=0.5 the input gradient is checked against the mask the same pass drew, and the
mask itself by invariants: values in {0, 1/(1-p)}, the keep rate, independence between layers,
and (driving the lowered kernel directly, as the engine drives it) determinism for one
[seed, step] and fresh masks when the step or the seed changes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from backends.cpu._runtime import Runner

import engine
import graph.functional as F
import graph.nn as nn
from backends.cpu import CpuBackend
from backends.cpu.lowering import LOWERINGS, PARALLEL_MIN_WORK, NodeIO
from graph.ir import Graph, TensorType
from graph.ops import get_op
from tests.gradcheck import away_from, check_gradients
from tests.helpers import DTYPES, OP_TOLERANCE, Lambda, rel_error

SHAPE = (2, 3, 5, 7)
PARALLEL_SHAPE = (2, 8, 48, 48)
assert np.prod(PARALLEL_SHAPE) >= PARALLEL_MIN_WORK


ACTIVATIONS = {
    "relu": (nn.ReLU(), TF.relu),
    "leaky_relu": (nn.LeakyReLU(), TF.leaky_relu),
    "leaky_relu_0.2": (nn.LeakyReLU(0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "sigmoid": (nn.Sigmoid(), torch.sigmoid),
    "tanh": (nn.Tanh(), torch.tanh),
    "gelu": (nn.GELU(), TF.gelu),
    "gelu_tanh": (nn.GELU("tanh"), lambda x: TF.gelu(x, approximate="tanh")),
}


@pytest.mark.parametrize("op", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_grad(op, dtype, rng):
    model, oracle = ACTIVATIONS[op]
    x = away_from(2.0 * rng.standard_normal(SHAPE))
    check_gradients(model, lambda t, p: oracle(t), SHAPE, dtype, rng, x=x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_activation_grad_parallel(dtype, rng):
    model, oracle = ACTIVATIONS["gelu"]
    check_gradients(model, lambda t, p: oracle(t), PARALLEL_SHAPE, dtype, rng)


BINARY = {
    "add_branches": (
        lambda x: F.add(F.tanh(x), F.sigmoid(x)),
        lambda x: torch.tanh(x) + torch.sigmoid(x),
    ),
    "add_fan_out": (lambda x: F.add(x, x), lambda x: x + x),
    "add_residual": (lambda x: F.add(F.tanh(F.add(x, x)), x), lambda x: torch.tanh(x + x) + x),
    "mul_branches": (lambda x: F.mul(F.tanh(x), x), lambda x: torch.tanh(x) * x),
    "mul_square": (lambda x: F.mul(x, x), lambda x: x * x),
}


@pytest.mark.parametrize("case", list(BINARY))
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_grad(case, dtype, rng):
    fn, oracle = BINARY[case]
    check_gradients(Lambda(fn), lambda t, p: oracle(t), SHAPE, dtype, rng)


# **** dropout ****


@pytest.mark.parametrize("shape", [SHAPE, PARALLEL_SHAPE], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_p0_grad(shape, dtype, rng):
    """p=0 keeps every element with scale 1: dropout is the identity, also under differences."""
    check_gradients(nn.Dropout(0.0), lambda t, p: t, shape, dtype, rng)


@pytest.mark.parametrize("shape", [SHAPE, PARALLEL_SHAPE], ids=["serial", "parallel"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_grad_uses_the_drawn_mask(shape, dtype, rng):
    """At p=0.5, MSE's input gradient is ``2 (x m - t) m / numel`` for the mask m of the same
    pass: m is read back from the gradient and must also give the loss."""
    exe = engine.compile(
        nn.Dropout(0.5), shape[1:], shape[0], dtype=dtype, train=True, loss="mse", input_grad=True
    )
    x = away_from(rng.standard_normal(shape), gap=0.1).astype(dtype)
    target = rng.standard_normal(shape).astype(dtype)
    exe.poison_buffers()
    loss = exe.forward_backward(x, target)
    grad = exe.grads["input"].astype(np.float64)
    kept = 2.0 * (2.0 * x - target) * 2.0 / x.size
    mask = np.where(np.abs(grad - kept) < np.abs(grad), 2.0, 0.0)
    assert rel_error(grad, 2.0 * (x * mask - target) * mask / x.size) < OP_TOLERANCE[dtype]
    assert rel_error(np.array([loss]), [np.mean((x * mask - target) ** 2)]) < OP_TOLERANCE[dtype]
    assert abs(mask.mean() / 2.0 - 0.5) < 6 * np.sqrt(0.25 / x.size)


@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_train_mask_values_and_rate(p, dtype, rng):
    """In training mode ``run`` applies a mask of 0 and 1/(1-p): p=0 keeps all, p=1 none."""
    shape = PARALLEL_SHAPE
    exe = engine.compile(nn.Dropout(p), shape[1:], shape[0], dtype=dtype, train=True, loss="mse")
    x = away_from(rng.standard_normal(shape), gap=0.1).astype(dtype)
    exe.poison_buffers()
    out = exe.train().run(x)
    scale = np.array(1.0 / (1.0 - p) if p < 1 else 0.0, dtype)
    kept = out != 0
    np.testing.assert_array_equal(out[kept], x[kept] * scale)
    rate = kept.mean()
    assert abs(rate - (1.0 - p)) < 6 * np.sqrt(p * (1.0 - p) / x.size) + 1e-12, rate


def test_dropout_layers_draw_independent_masks(rng):
    """Two dropout layers in a row keep a quarter of the elements: their masks differ."""
    shape = PARALLEL_SHAPE
    model = Lambda(lambda x: F.dropout(F.dropout(x, 0.5), 0.5))
    exe = engine.compile(model, shape[1:], shape[0], dtype="float64", train=True, loss="mse")
    x = away_from(rng.standard_normal(shape), gap=0.1)
    out = exe.train().run(x)
    assert set(np.unique(np.round(out / x, 12))) <= {0.0, 4.0}
    assert abs((out != 0).mean() - 0.25) < 6 * np.sqrt(0.1875 / x.size)


class LoweredDropout:
    """One ``dropout_train`` node lowered exactly as the compiler lowers it, run by the Cython
    executor; ``rng_state`` is the [seed, step] input (the vector the executable advances).
    Calling it returns the mask and checks y = x * mask."""

    def __init__(self, shape: tuple[int, ...], dtype: str, p: float, name: str = "drop"):
        graph = Graph()
        x_value = graph.add_value("x", TensorType(shape, dtype), "input")
        rng_value = graph.add_value("rng", TensorType((2,), dtype), "const")
        out_types = get_op("dropout_train").infer([x_value.type, rng_value.type], {"p": p})
        node = graph.add_node("dropout_train", [x_value, rng_value], out_types, {"p": p}, name)
        self.x, self.y, self.mask = (np.full(shape, np.nan, dtype) for _ in range(3))
        self.rng_state = np.zeros(2, dtype)
        arrays = dict(
            zip(
                ["x", name, f"{name}:1", "rng"],
                [self.x, self.y, self.mask, self.rng_state],
                strict=True,
            )
        )
        self._consts: list[np.ndarray] = []
        io = NodeIO(node, lambda value: arrays[value].ctypes.data, 0, self._consts)
        steps = LOWERINGS["dropout_train"](node, io)
        self._runner = Runner(**CpuBackend().pack(steps))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        np.copyto(self.x, x)
        assert self._runner.run() == (-1, 0)
        np.testing.assert_array_equal(self.y, self.x * self.mask)
        return self.mask.copy()


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_mask_is_a_function_of_seed_step_and_layer(dtype, rng):
    """Same [seed, step]: the same mask (a step replays exactly); another step, seed or layer:
    a mask that agrees with it on about half of the elements, as independent masks do."""
    drop = LoweredDropout(PARALLEL_SHAPE, dtype, 0.5)
    x = np.ones(PARALLEL_SHAPE, dtype)
    np.testing.assert_array_equal(drop.rng_state, [0.0, 0.0])
    first = drop(x)
    assert set(np.unique(first)) == {0.0, 2.0}
    np.testing.assert_array_equal(drop(x), first)
    band = 6 * np.sqrt(0.25 / x.size)
    for seed, step in [(0, 1), (0, 2), (1, 0), (12345, 7)]:
        drop.rng_state[:] = seed, step
        assert abs(agreement(drop(x), first) - 0.5) < band, (seed, step)
    drop.rng_state[:] = 0, 0
    np.testing.assert_array_equal(drop(x), first)
    other = LoweredDropout(PARALLEL_SHAPE, dtype, 0.5, name="features.drop2")
    assert abs(agreement(other(x), first) - 0.5) < band
    flat = first.ravel()
    assert abs(agreement(flat[1:], flat[:-1]) - 0.5) < band


def test_dropout_mask_is_independent_of_threads_and_dtype():
    """Element i's draw depends on i alone: the serial kernel on a small tensor gives the
    prefix of the parallel kernel's mask, in either dtype."""
    big = LoweredDropout(PARALLEL_SHAPE, "float64", 0.5)(np.ones(PARALLEL_SHAPE))
    small = LoweredDropout(SHAPE, "float32", 0.5)(np.ones(SHAPE, np.float32))
    np.testing.assert_array_equal(small.ravel(), big.ravel()[: small.size])
