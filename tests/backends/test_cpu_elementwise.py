"""CPU elementwise kernels (``backends/cpu/elementwise.py``) against ``torch.nn.functional``.

Every activation, add, mul and dropout (the identity at inference), in float32 and float64, on
fresh random inputs with NaN-poisoned buffers. Each op runs on a small tensor (the serial kernel)
and on one above ``PARALLEL_MIN_WORK`` elements (the parallel kernel).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import graph.functional as F
import graph.nn as nn
from backends.cpu.lowering import PARALLEL_MIN_WORK
from tests.helpers import DTYPES, OP_TOLERANCE, Lambda, check, rel_error, run_poisoned

# (N, C, H, W): 210 elements (serial kernel), 36864 (parallel kernel)
SHAPES = [(2, 3, 5, 7), (2, 8, 48, 48)]
assert np.prod(SHAPES[1]) >= PARALLEL_MIN_WORK


UNARY = {
    "relu": (nn.ReLU(), TF.relu),
    "leaky_relu": (nn.LeakyReLU(), TF.leaky_relu),
    "leaky_relu_0.2": (nn.LeakyReLU(0.2), lambda x: TF.leaky_relu(x, 0.2)),
    "leaky_relu_functional_1.5": (
        Lambda(lambda x: F.leaky_relu(x, 1.5)),
        lambda x: TF.leaky_relu(x, 1.5),
    ),
    "sigmoid": (nn.Sigmoid(), torch.sigmoid),
    "tanh": (nn.Tanh(), torch.tanh),
    "gelu": (nn.GELU(), TF.gelu),
    "gelu_tanh": (nn.GELU("tanh"), lambda x: TF.gelu(x, approximate="tanh")),
    "gelu_functional_tanh": (
        Lambda(lambda x: F.gelu(x, approximate="tanh")),
        lambda x: TF.gelu(x, approximate="tanh"),
    ),
    "dropout": (nn.Dropout(0.5), lambda x: TF.dropout(x, 0.5, training=False)),
    "dropout_functional": (Lambda(lambda x: F.dropout(x, 0.3)), lambda x: x),
}


@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "parallel"])
@pytest.mark.parametrize("op", list(UNARY))
@pytest.mark.parametrize("dtype", DTYPES)
def test_unary(op, shape, dtype, rng):
    model, oracle = UNARY[op]
    check(model, oracle, shape, dtype, rng)


def test_unary_large_inputs_saturate_like_torch(rng):
    """Inputs of magnitude ~30 drive sigmoid/tanh/gelu into saturation (exp overflow paths)."""
    for model, oracle in (UNARY["sigmoid"], UNARY["tanh"], UNARY["gelu"], UNARY["gelu_tanh"]):
        x = 30.0 * rng.standard_normal((2, 3, 5, 7))
        out = run_poisoned(model, x, "float64")
        ref = oracle(torch.from_numpy(x)).numpy()
        assert rel_error(out, ref) < OP_TOLERANCE["float64"]


BINARY = {
    "add": (F.add, torch.add),
    "mul": (F.mul, torch.mul),
    "operator_add": (lambda a, b: a + b, torch.add),
    "operator_mul": (lambda a, b: a * b, torch.mul),
}


@pytest.mark.parametrize("shape", SHAPES, ids=["serial", "parallel"])
@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary(op, shape, dtype, rng):
    """Both operands differ (x and tanh(x)) so a swapped or repeated operand shows."""
    fn, oracle = BINARY[op]
    check(Lambda(lambda x: fn(x, F.tanh(x))), lambda x: oracle(x, torch.tanh(x)), shape, dtype, rng)


@pytest.mark.parametrize("op", list(BINARY))
@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_same_operand_twice(op, dtype, rng):
    fn, oracle = BINARY[op]
    check(Lambda(lambda x: fn(x, x)), lambda x: oracle(x, x), SHAPES[0], dtype, rng)


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_chain_reuses_operands(dtype, rng):
    """(x + relu(x)) * x + sigmoid(x): fan-out of one value into several binary nodes."""

    def fn(x):
        return F.add(F.mul(F.add(x, F.relu(x)), x), F.sigmoid(x))

    def oracle(x):
        return (x + torch.relu(x)) * x + torch.sigmoid(x)

    check(Lambda(fn), oracle, (3, 4, 6, 5), dtype, rng)
