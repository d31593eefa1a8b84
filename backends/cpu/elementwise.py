"""Elementwise CPU kernels: activations, add, mul, and the plain copy that dropout (inference),
flatten and reshape lower to.

Layout: every buffer is flat; shapes do not matter to these kernels. Work is cut into chunks
of ``CHUNK`` elements; ``unary`` selects its function by ``kind`` once per chunk, outside the
loop, so each loop body stays one vectorisable line.
Buffers: unary(x, y, consts) with consts = [negative_slope]; binary(a, b, y).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node

RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, COPY = range(7)
ADD, MUL = range(2)
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Elements per parallel task; each task loops over slice views (see windows.py on why).
CHUNK = 4096


@njit(inline="always", cache=True)
def _unary_chunk(x, y, kind, slope):
    if kind == RELU:
        for i in range(x.shape[0]):
            y[i] = 0 if x[i] <= 0 else x[i]  # keeps NaN, as torch.relu
    elif kind == LEAKY_RELU:
        for i in range(x.shape[0]):
            y[i] = x[i] * slope if x[i] <= 0 else x[i]
    elif kind == SIGMOID:
        for i in range(x.shape[0]):
            y[i] = 1.0 / (1.0 + np.exp(-x[i]))
    elif kind == TANH:
        for i in range(x.shape[0]):
            y[i] = np.tanh(x[i])
    elif kind == GELU:
        for i in range(x.shape[0]):
            y[i] = 0.5 * x[i] * (1.0 + math.erf(x[i] * _SQRT_HALF))
    elif kind == GELU_TANH:
        for i in range(x.shape[0]):
            v = x[i]
            y[i] = 0.5 * v * (1.0 + np.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    else:
        y[:] = x


@kernel(buffers=3)
def unary(x, y, consts, a):
    """a = [kind]; consts = [negative_slope] for leaky_relu, else unused."""
    kind, slope = a[0], consts[0]
    for c in prange((x.shape[0] + CHUNK - 1) // CHUNK):
        _unary_chunk(x[c * CHUNK : (c + 1) * CHUNK], y[c * CHUNK : (c + 1) * CHUNK], kind, slope)
    return 0


@kernel(buffers=3)
def binary(p, q, y, a):
    """a = [kind]: y = p + q or y = p * q, same shapes."""
    kind = a[0]
    for c in prange((y.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        pc, qc, yc = p[lo:hi], q[lo:hi], y[lo:hi]
        if kind == ADD:
            for i in range(yc.shape[0]):
                yc[i] = pc[i] + qc[i]
        else:
            for i in range(yc.shape[0]):
                yc[i] = pc[i] * qc[i]
    return 0


@njit(inline="always", cache=True)
def _activation_grad_chunk(gy, saved, gx, kind, slope):
    """gx = gy * f'(.), from the output y (relu, sigmoid, tanh) or the input x (leaky_relu,
    gelu), with PyTorch's formulas (relu's derivative is 0 at 0)."""
    if kind == RELU:
        for i in range(gy.shape[0]):
            gx[i] = gy[i] if saved[i] > 0 else 0
    elif kind == LEAKY_RELU:
        for i in range(gy.shape[0]):
            gx[i] = gy[i] if saved[i] > 0 else gy[i] * slope
    elif kind == SIGMOID:
        for i in range(gy.shape[0]):
            gx[i] = gy[i] * (1.0 - saved[i]) * saved[i]
    elif kind == TANH:
        for i in range(gy.shape[0]):
            gx[i] = gy[i] * (1.0 - saved[i] * saved[i])
    elif kind == GELU:
        for i in range(gy.shape[0]):
            v = saved[i]
            cdf = 0.5 * (1.0 + math.erf(v * _SQRT_HALF))
            gx[i] = gy[i] * (cdf + v * np.exp(-0.5 * v * v) * _INV_SQRT_2PI)
    else:
        for i in range(gy.shape[0]):
            v = saved[i]
            inner = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
            t = np.tanh(inner)
            slope_inner = 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * v * v)
            gx[i] = gy[i] * (0.5 * (1.0 + t) + slope_inner)


@kernel(buffers=4)
def activation_grad(gy, saved, gx, consts, a):
    """a = [kind]; consts = [negative_slope]."""
    kind, slope = a[0], consts[0]
    for c in prange((gy.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        _activation_grad_chunk(gy[lo:hi], saved[lo:hi], gx[lo:hi], kind, slope)
    return 0


_UNARY_KINDS = {"relu": RELU, "leaky_relu": LEAKY_RELU, "sigmoid": SIGMOID, "tanh": TANH}


def _unary_kind(node: Node) -> int:
    if node.op == "gelu":
        return GELU if node.attrs["approximate"] == "none" else GELU_TANH
    return _UNARY_KINDS.get(node.op, COPY)


@lowers("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "dropout", "flatten", "reshape")
def _lower_unary(node: Node, io: NodeIO):
    x, y = io.input(0), io.output()
    consts = io.const([node.attrs.get("negative_slope", 0.0)])
    return [unary.step(node.name, io.dtype, io.parallel(y[1]), [x, y, consts], [_unary_kind(node)])]


@lowers("add", "mul")
def _lower_binary(node: Node, io: NodeIO):
    y = io.output()
    kind = ADD if node.op == "add" else MUL
    return [
        binary.step(node.name, io.dtype, io.parallel(y[1]), [io.input(0), io.input(1), y], [kind])
    ]


@lowers("activation_grad")
def _lower_activation_grad(node: Node, io: NodeIO):
    kind = node.attrs["kind"]
    exact = node.attrs.get("approximate", "none") == "none"
    code = (GELU if exact else GELU_TANH) if kind == "gelu" else _UNARY_KINDS[kind]
    consts = io.const([node.attrs.get("negative_slope", 0.01)])
    buffers = [io.input(0), io.input(1), io.output(), consts]
    return [activation_grad.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, [code])]
