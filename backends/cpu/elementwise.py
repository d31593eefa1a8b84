"""Elementwise CPU kernels: activations, add, mul, the plain copy that dropout (inference),
flatten and reshape lower to, training-mode dropout, and the activations' gradients.

Layout: every buffer is flat; shapes do not matter to these kernels. Work is cut into chunks
of ``CHUNK`` elements; ``unary`` selects its function by ``kind`` once per chunk, outside the
loop, so each loop body stays one vectorisable line.

``dropout_train`` draws its mask from a counter-based generator, as Random123 and JAX do, with
the splitmix64 finaliser (Steele et al. 2014) as the hash: element i keeps its value when
``mix(key + (i + 1) * GAMMA) >> 11``, a uniform 53-bit integer, is at least
``round(p * 2^53)``; ``key`` hashes the layer's salt (a CRC-32 of its name, so two dropout
layers draw different masks) with the ``[seed, step]`` buffer. The mask is a pure function of
(seed, step, layer, element), whatever the thread count, so a step can be replayed exactly;
whoever owns that buffer advances ``step`` once per training forward pass to draw a fresh mask.
Kept elements are scaled by ``1 / (1 - p)``, dropped ones are 0 (p=1 drops everything, as torch).

Buffers: unary(x, y, consts) with consts = [negative_slope]; binary(a, b, y);
activation_grad(gy, saved, gx, consts=[negative_slope]); dropout_train(x, y, mask,
rng=[seed, step], consts=[1 / (1 - p)]), seed and step non-negative integers (exact in float32
up to 2^24).
Attrs: unary, binary, activation_grad [kind]; dropout_train [round(p * 2^53), salt].
"""

from __future__ import annotations

import math
import zlib

import numpy as np
from numba import njit, prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node

RELU, LEAKY_RELU, SIGMOID, TANH, GELU, GELU_TANH, COPY, HARDTANH, NEG, SCALE = range(10)
ADD, MUL, SUB = range(3)
_SQRT_HALF = 1.0 / math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# Elements per parallel task; each task loops over slice views (see windows.py on why).
CHUNK = 4096
# splitmix64's increment (the golden ratio) and finaliser constants, typed uint64 for Numba.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S11, _S27, _S30, _S31 = np.uint64(11), np.uint64(27), np.uint64(30), np.uint64(31)
_UNIFORM_BITS = 53


@njit(inline="always", cache=True)
def _unary_chunk(x, y, kind, slope, low, high):
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
    elif kind == HARDTANH:
        for i in range(x.shape[0]):
            y[i] = low if x[i] < low else (high if x[i] > high else x[i])
    elif kind == NEG:
        for i in range(x.shape[0]):
            y[i] = -x[i]
    elif kind == SCALE:
        for i in range(x.shape[0]):
            y[i] = x[i] * slope
    else:
        y[:] = x


@kernel(buffers=3, inplace=((1, 0),))
def unary(x, y, consts, a):
    """a = [kind]; consts = [negative_slope or factor, min_val, max_val] (leaky_relu, scale,
    hardtanh)."""
    kind, slope, low, high = a[0], consts[0], consts[1], consts[2]
    for c in prange((x.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        _unary_chunk(x[lo:hi], y[lo:hi], kind, slope, low, high)
    return 0


@kernel(buffers=3, inplace=((2, 0), (2, 1)))
def binary(p, q, y, a):
    """a = [kind]: y = p + q, p - q or p * q, same shapes."""
    kind = a[0]
    for c in prange((y.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        pc, qc, yc = p[lo:hi], q[lo:hi], y[lo:hi]
        if kind == ADD:
            for i in range(yc.shape[0]):
                yc[i] = pc[i] + qc[i]
        elif kind == SUB:
            for i in range(yc.shape[0]):
                yc[i] = pc[i] - qc[i]
        else:
            for i in range(yc.shape[0]):
                yc[i] = pc[i] * qc[i]
    return 0


@kernel(buffers=3, inplace=((2, 0),))
def channel_scale(x, scale, y, a):
    """y[n, c, ...] = x[n, c, ...] * scale[c]; a = [N, C, inner]."""
    n, c, inner = a[0], a[1], a[2]
    for p in prange(n * c):
        src, dst, factor = (
            x[p * inner : (p + 1) * inner],
            y[p * inner : (p + 1) * inner],
            scale[p % c],
        )
        for j in range(inner):
            dst[j] = src[j] * factor
    return 0


@njit(inline="always", cache=True)
def _activation_grad_chunk(gy, saved, gx, kind, slope, low, high):
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
    elif kind == HARDTANH:
        for i in range(gy.shape[0]):
            gx[i] = gy[i] if low < saved[i] < high else 0
    else:
        for i in range(gy.shape[0]):
            v = saved[i]
            inner = _SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)
            t = np.tanh(inner)
            slope_inner = 0.5 * v * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3 * 0.044715 * v * v)
            gx[i] = gy[i] * (0.5 * (1.0 + t) + slope_inner)


@kernel(buffers=4, inplace=((2, 0),))
def activation_grad(gy, saved, gx, consts, a):
    """a = [kind]; consts = [negative_slope, min_val, max_val]."""
    kind, slope, low, high = a[0], consts[0], consts[1], consts[2]
    for c in prange((gy.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        _activation_grad_chunk(gy[lo:hi], saved[lo:hi], gx[lo:hi], kind, slope, low, high)
    return 0


@njit(inline="always", cache=True)
def _mix(z):
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@kernel(buffers=5, inplace=((1, 0),))
def dropout_train(x, y, mask, rng, consts, a):
    """One keep/drop draw per ``block`` consecutive elements: 1 for dropout, a whole sample for
    stochastic depth (drop path)."""
    threshold, salt, keep, block = np.uint64(a[0]), np.uint64(a[1]), consts[0], a[2]
    key = _mix(_mix(_mix(np.uint64(rng[0])) ^ salt) ^ np.uint64(rng[1]))
    for c in prange((x.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        xc, yc, mc = x[lo:hi], y[lo:hi], mask[lo:hi]
        for i in range(xc.shape[0]):
            draw = key + np.uint64((lo + i) // block + 1) * _GAMMA
            m = keep if _mix(draw) >> _S11 >= threshold else 0.0
            mc[i] = m
            yc[i] = xc[i] * m
    return 0


_UNARY_KINDS = {
    "relu": RELU,
    "leaky_relu": LEAKY_RELU,
    "sigmoid": SIGMOID,
    "tanh": TANH,
    "hardtanh": HARDTANH,
    "neg": NEG,
    "scale": SCALE,
}


def activation_consts(attrs: dict, io: NodeIO) -> tuple[int, int]:
    """[slope, min_val, max_val]: leaky_relu's slope (or scale's factor), hardtanh's bounds."""
    slope = attrs.get("factor", attrs.get("negative_slope", 0.01))
    return io.const([slope, attrs.get("min_val", -1.0), attrs.get("max_val", 1.0)])


def unary_kind(op: str, attrs: dict) -> int:
    """The ``_unary_chunk`` kind of an op (COPY for the ops that move data unchanged)."""
    if op == "gelu":
        return GELU if attrs["approximate"] == "none" else GELU_TANH
    return _UNARY_KINDS.get(op, COPY)


@lowers(
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "hardtanh",
    "neg",
    "scale",
    "dropout",
    "flatten",
    "reshape",
)
def _lower_unary(node: Node, io: NodeIO):
    x, y = io.input(0), io.output()
    kind = unary_kind(node.op, node.attrs)
    if kind == COPY and x[0] == y[0]:
        return []  # flatten, reshape or inference dropout written in place: nothing to move
    consts = activation_consts(node.attrs, io)
    return [unary.step(node.name, io.dtype, io.parallel(y[1]), [x, y, consts], [kind])]


@lowers("add", "sub", "mul")
def _lower_binary(node: Node, io: NodeIO):
    y = io.output()
    kind = {"add": ADD, "sub": SUB, "mul": MUL}[node.op]
    return [
        binary.step(node.name, io.dtype, io.parallel(y[1]), [io.input(0), io.input(1), y], [kind])
    ]


@lowers("activation_grad")
def _lower_activation_grad(node: Node, io: NodeIO):
    kind = node.attrs["kind"]
    exact = node.attrs.get("approximate", "none") == "none"
    code = (GELU if exact else GELU_TANH) if kind == "gelu" else _UNARY_KINDS[kind]
    buffers = [io.input(0), io.input(1), io.output(), activation_consts(node.attrs, io)]
    return [activation_grad.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, [code])]


@lowers("dropout_train")
def _lower_dropout_train(node: Node, io: NodeIO):
    """The [seed, step] buffer is the node's second input, which the executable advances."""
    p = node.attrs["p"]
    threshold = round(p * 2**_UNIFORM_BITS)
    keep = 1.0 / (1.0 - p) if p < 1.0 else 0.0
    buffers = [io.input(0), io.output(0), io.output(1), io.input(1), io.const([keep])]
    shape = node.inputs[0].shape
    block = math.prod(shape[1:]) if node.attrs.get("per_sample", False) else 1
    ints = [threshold, zlib.crc32(node.name.encode()), block]
    return [dropout_train.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, ints)]


@lowers("channel_scale")
def _lower_channel_scale(node: Node, io: NodeIO):
    shape = node.inputs[0].shape
    ints = [shape[0], shape[1], math.prod(shape[2:])]
    buffers = [io.input(0), io.input(1), io.output()]
    return [channel_scale.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, ints)]
