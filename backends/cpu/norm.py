"""CPU normalisation kernels: batch_norm (inference), layer_norm2d and softmax.

- ``batch_norm``: PyTorch's CPU inference transform, ``alpha = weight / sqrt(var + eps)``,
  ``beta = bias - mean * alpha``, ``y = x * alpha + beta`` per channel plane.
- ``layer_norm2d``: each pixel of NCHW normalised over C (biased variance, two passes, float64
  sums), then the per-channel affine; parallel over (image, row) blocks.
- ``softmax``: the input viewed as [outer, D, inner]; each of the outer*inner lines has its
  maximum subtracted before ``exp``.

Buffers: batch_norm(x, mean, var, weight, bias, y, consts=[eps]) with weight/bias empty when
affine=False; layer_norm2d(x, weight, bias, y, consts=[eps]); softmax(x, y).
Attrs: batch_norm [N, C, inner]; layer_norm2d [N, C, H, W]; softmax [outer, D, inner].
"""

from __future__ import annotations

import math

from numba import prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@kernel(buffers=7)
def batch_norm(x, mean, var, weight, bias, y, consts, a):
    n, c, inner = a[0], a[1], a[2]
    eps, affine = consts[0], weight.shape[0] > 0
    for p in prange(n * c):
        ch = p % c
        alpha = 1.0 / math.sqrt(var[ch] + eps)
        beta = -mean[ch] * alpha
        if affine:
            alpha = alpha * weight[ch]
            beta = bias[ch] - mean[ch] * alpha
        src, dst = x[p * inner : (p + 1) * inner], y[p * inner : (p + 1) * inner]
        for j in range(inner):
            dst[j] = src[j] * alpha + beta
    return 0


@kernel(buffers=5)
def layer_norm2d(x, weight, bias, y, consts, a):
    n, c, h, w = a[0], a[1], a[2], a[3]
    eps, affine, hw = consts[0], weight.shape[0] > 0, h * w
    for block in prange(n * h):
        i, row = block // h, block % h
        for col in range(w):
            pixel = i * c * hw + row * w + col
            total = 0.0
            for ch in range(c):
                total += x[pixel + ch * hw]
            mu = total / c
            spread = 0.0
            for ch in range(c):
                d = x[pixel + ch * hw] - mu
                spread += d * d
            inv = 1.0 / math.sqrt(spread / c + eps)
            for ch in range(c):
                v = (x[pixel + ch * hw] - mu) * inv
                y[pixel + ch * hw] = v * weight[ch] + bias[ch] if affine else v
    return 0


@kernel(buffers=2)
def softmax(x, y, a):
    outer, d, inner = a[0], a[1], a[2]
    for line in prange(outer * inner):
        start = (line // inner) * d * inner + line % inner
        top = x[start]
        for k in range(1, d):
            top = max(top, x[start + k * inner])
        total = 0.0
        for k in range(d):
            e = math.exp(x[start + k * inner] - top)
            y[start + k * inner] = e
            total += e
        for k in range(d):
            y[start + k * inner] /= total
    return 0


def _affine(node: Node, io: NodeIO, first: int) -> list[tuple[int, int]]:
    if len(node.inputs) > first:
        return [io.input(first), io.input(first + 1)]
    return [io.empty(), io.empty()]


@lowers("batch_norm")
def _lower_batch_norm(node: Node, io: NodeIO):
    shape = node.inputs[0].shape
    inner = shape[2] * shape[3] if len(shape) == 4 else 1
    buffers = [
        io.input(0),
        io.input(1),
        io.input(2),
        *_affine(node, io, 3),
        io.output(),
        io.const([node.attrs["eps"]]),
    ]
    return [
        batch_norm.step(
            node.name, io.dtype, io.parallel(io.output()[1]), buffers, [shape[0], shape[1], inner]
        )
    ]


@lowers("layer_norm2d")
def _lower_layer_norm2d(node: Node, io: NodeIO):
    buffers = [io.input(0), *_affine(node, io, 1), io.output(), io.const([node.attrs["eps"]])]
    return [
        layer_norm2d.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            buffers,
            list(node.inputs[0].shape),
        )
    ]


@lowers("softmax")
def _lower_softmax(node: Node, io: NodeIO):
    shape, dim = node.inputs[0].shape, node.attrs["dim"]
    outer, inner = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    return [
        softmax.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            [io.input(0), io.output()],
            [outer, shape[dim], inner],
        )
    ]
