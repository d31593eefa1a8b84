"""CPU normalisation kernels: batch_norm (inference and training), layer_norm2d and softmax,
and their gradients.

- ``batch_norm``: PyTorch's CPU inference transform, ``alpha = weight / sqrt(var + eps)``,
  ``beta = bias - mean * alpha``, ``y = x * alpha + beta`` per channel plane.
  ``batch_norm_fold`` writes the same alpha and beta out, [alpha; beta], for a conv or linear
  epilogue that absorbed the BatchNorm (``graph.ops.fused``).
- ``batch_norm_train``: per channel, the batch mean and biased variance (two passes, float64
  sums) normalise x; ``mean`` and ``invstd = 1 / sqrt(var + eps)`` are written out for the
  backward pass, and the running statistics are updated in place as torch does,
  ``running = (1 - momentum) * running + momentum * batch``, with the unbiased variance
  ``var * M / (M - 1)`` (M = N * H * W values per channel). Fewer than 2 values per channel
  return ``TOO_FEW_VALUES`` (backends/errors.py; torch raises "Expected more than 1 value per
  channel"). The shape rule rejects such a graph at trace time already.
  ``batch_norm_recompute`` (recompute in the backward pass, graph/passes/recompute.py) runs
  the same kernel with the update off and mean/invstd in its scratch: bit for bit the y of
  the forward pass, and the running statistics are updated once per step, as without it.
- ``batch_norm_grad``: with ``xhat = (x - mean) * invstd``, ``grad_bias = sum(gy)``,
  ``grad_weight = sum(gy * xhat)`` and
  ``gx = invstd * weight * (gy - grad_bias / M - xhat * grad_weight / M)`` (weight 1 without
  affine; the two parameter gradients are written either way).
- ``layer_norm2d``: each pixel of NCHW normalised over C (biased variance, two passes, float64
  sums), then the per-channel affine; parallel over (image, row) blocks.
- ``layer_norm2d_grad``: the same rule as batch_norm_grad over the C values of each pixel, with
  ``g = gy * weight`` in place of gy; parallel over (image, row) blocks, which also store each
  pixel's mean and inverse std in the scratch, then over channels for the parameter gradients
  (sums over images and pixels), so no two tasks write one element.
- ``softmax``: the input viewed as [outer, D, inner]; each of the outer*inner lines has its
  maximum subtracted before ``exp``. ``softmax_grad``: ``gx = y * (gy - sum(gy * y))`` per line.
- ``local_response_norm``: per (image, channel) plane, the squares of the window's channels
  are summed into y, then ``y = x * (k + alpha / size * y) ** -beta`` in place; parallel over
  planes. ``local_response_norm_grad``: a first pass over planes writes
  ``gx = gy * s^-beta`` and ``t = gy * x * s^(-beta - 1)`` (into the scratch), a second
  subtracts ``2 * alpha * beta / size * x * sum(t)`` over the channels whose window holds the
  plane's (graph/ops/norm.py derives it); the scale s is recomputed, not saved.

Buffers: batch_norm(x, mean, var, weight, bias, y, consts=[eps]) with weight/bias empty when
affine=False; batch_norm_fold(mean, var, weight, bias, folded, consts=[eps]);
batch_norm_train(x, running_mean, running_var, weight, bias, y, mean, invstd, consts=[eps,
momentum]) (batch_norm_recompute: mean and invstd in the scratch); batch_norm_grad(gy, x, mean,
invstd, weight, gx, grad_weight, grad_bias); layer_norm2d(x, weight, bias, y, consts=[eps]);
layer_norm2d_grad(gy, x, weight, gx, grad_weight, grad_bias, scratch=[mean per pixel, invstd
per pixel], consts=[eps]); softmax(x, y); softmax_grad(gy, y, gx); local_response_norm(x, y,
consts=[alpha, beta, k]); local_response_norm_grad(gy, x, gx, scratch=[t, like x], consts).
Attrs: batch_norm_fold [C]; batch_norm* [N, C, inner] (batch_norm_train: then 1 to update the
running statistics, 0 to leave them); layer_norm2d* [N, C, H, W]; softmax* [outer, D, inner];
local_response_norm* [N, C, inner, size, before].
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from backends.cpu import simd
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.errors import TOO_FEW_VALUES
from graph.ir import Node


@njit(inline="always", cache=True)
def _plane(buffer, i, ch, c, inner):
    """Image i's values of channel ch in a buffer laid out [N, C, inner]."""
    start = (i * c + ch) * inner
    return buffer[start : start + inner]


@njit(cache=True)
def _lane_sums(g, x, shift, mu):
    """(sum(g), sum((g - shift) * (x - mu))) in float64 over equal-length views: 16 values a
    step into two pairs of 8-lane float64 vectors (``simd.py``), whose lanes are added in a
    fixed order at the end (the same bits on every run), then the tail. One running float64
    sum waits on the adder's latency at every element (BatchNorm's statistics ran 2-3x
    slower that way); four scalar partial sums left the loads scalar too.
    ``_lane_sums(x, x, mu, mu)[1]`` is the sum of squared deviations."""
    size = g.shape[0]
    body = size - size % 16
    shifts, mus = simd.broadcast(np.float64(shift)), simd.broadcast(np.float64(mu))
    s0 = s1 = t0 = t1 = simd.broadcast(0.0)
    for j in range(0, body, 16):
        g0, g1 = simd.load_double(g, j, 8), simd.load_double(g, j + 8, 8)
        s0, s1 = s0 + g0, s1 + g1
        t0 = t0 + (g0 - shifts) * (simd.load_double(x, j, 8) - mus)
        t1 = t1 + (g1 - shifts) * (simd.load_double(x, j + 8, 8) - mus)
    sum_g, sum_gx = simd.total(s0 + s1), simd.total(t0 + t1)
    for j in range(body, size):
        sum_g += g[j]
        sum_gx += (g[j] - shift) * (x[j] - mu)
    return sum_g, sum_gx


@njit(inline="always", cache=True)
def _line(buffer, line, d, inner):
    """The D values of one softmax line of a buffer laid out [outer, D, inner] (a strided
    view when inner > 1)."""
    start = (line // inner) * d * inner + line % inner
    return buffer[start : start + (d - 1) * inner + 1 : inner]


@njit(inline="always", cache=True)
def _pixel_stats(x, pixel, c, hw, eps):
    """Mean and inverse std (biased variance) of one pixel's C values, strided by H*W."""
    total = 0.0
    for ch in range(c):
        total += x[pixel + ch * hw]
    mu = total / c
    spread = 0.0
    for ch in range(c):
        d = x[pixel + ch * hw] - mu
        spread += d * d
    return mu, 1.0 / math.sqrt(spread / c + eps)


@njit(inline="always", cache=True)
def _inference_affine(mean, var, weight, bias, ch, eps):
    """(alpha, beta) of channel ``ch``: y = x * alpha + beta, as PyTorch's CPU kernel."""
    alpha = 1.0 / math.sqrt(var[ch] + eps)
    beta = -mean[ch] * alpha
    if weight.shape[0]:
        alpha = alpha * weight[ch]
        beta = bias[ch] - mean[ch] * alpha
    return alpha, beta


@kernel(buffers=7, inplace=((5, 0),), parallel_inplace=True)
def batch_norm(x, mean, var, weight, bias, y, consts, a):
    n, c, inner = a[0], a[1], a[2]
    for p in prange(n * c):
        alpha, beta = _inference_affine(mean, var, weight, bias, p % c, consts[0])
        src, dst = x[p * inner : (p + 1) * inner], y[p * inner : (p + 1) * inner]
        for j in range(inner):
            dst[j] = src[j] * alpha + beta
    return 0


@kernel(buffers=6)
def batch_norm_fold(mean, var, weight, bias, folded, consts, a):
    """folded = [alpha; beta] per channel (``graph.ops.fused``)."""
    c = a[0]
    for ch in range(c):
        folded[ch], folded[c + ch] = _inference_affine(mean, var, weight, bias, ch, consts[0])
    return 0


@kernel(buffers=9)
def batch_norm_train(x, running_mean, running_var, weight, bias, y, mean, invstd, consts, a):
    n, c, inner = a[0], a[1], a[2]
    eps, momentum, affine, count = consts[0], consts[1], weight.shape[0] > 0, n * inner
    update = a[3] == 1
    if count < 2:
        return TOO_FEW_VALUES
    for ch in prange(c):
        total = 0.0
        for i in range(n):
            src = _plane(x, i, ch, c, inner)
            total += _lane_sums(src, src, 0.0, 0.0)[0]
        mu = total / count
        spread = 0.0
        for i in range(n):
            src = _plane(x, i, ch, c, inner)
            spread += _lane_sums(src, src, mu, mu)[1]
        inv = 1.0 / math.sqrt(spread / count + eps)
        mean[ch], invstd[ch] = mu, inv
        if update:
            running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mu
            running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * spread / (count - 1)
        alpha = inv * weight[ch] if affine else inv
        beta = (bias[ch] if affine else 0.0) - mu * alpha
        for i in range(n):
            src, dst = _plane(x, i, ch, c, inner), _plane(y, i, ch, c, inner)
            for j in range(inner):
                dst[j] = src[j] * alpha + beta
    return 0


@kernel(buffers=8, inplace=((5, 0),), parallel_inplace=True)
def batch_norm_grad(gy, x, mean, invstd, weight, gx, grad_weight, grad_bias, a):
    n, c, inner = a[0], a[1], a[2]
    affine, count = weight.shape[0] > 0, n * inner
    for ch in prange(c):
        mu, inv = mean[ch], invstd[ch]
        sum_gy, sum_gy_xhat = 0.0, 0.0
        for i in range(n):
            sums = _lane_sums(_plane(gy, i, ch, c, inner), _plane(x, i, ch, c, inner), 0.0, mu)
            sum_gy += sums[0]
            sum_gy_xhat += sums[1]
        sum_gy_xhat *= inv
        grad_bias[ch], grad_weight[ch] = sum_gy, sum_gy_xhat
        scale = inv * weight[ch] if affine else inv
        mean_gy, mean_gy_xhat = sum_gy / count, sum_gy_xhat * inv / count
        for i in range(n):
            g, src = _plane(gy, i, ch, c, inner), _plane(x, i, ch, c, inner)
            dst = _plane(gx, i, ch, c, inner)
            for j in range(inner):
                dst[j] = scale * (g[j] - mean_gy - (src[j] - mu) * mean_gy_xhat)
    return 0


@kernel(buffers=5)
def layer_norm2d(x, weight, bias, y, consts, a):
    n, c, h, w = a[0], a[1], a[2], a[3]
    eps, affine, hw = consts[0], weight.shape[0] > 0, h * w
    for block in prange(n * h):
        i, row = block // h, block % h
        for col in range(w):
            pixel = i * c * hw + row * w + col
            mu, inv = _pixel_stats(x, pixel, c, hw, eps)
            for ch in range(c):
                v = (x[pixel + ch * hw] - mu) * inv
                y[pixel + ch * hw] = v * weight[ch] + bias[ch] if affine else v
    return 0


@kernel(buffers=8)
def layer_norm2d_grad(gy, x, weight, gx, grad_weight, grad_bias, scratch, consts, a):
    n, c, h, w = a[0], a[1], a[2], a[3]
    eps, affine, hw = consts[0], weight.shape[0] > 0, h * w
    means, invstds = scratch[: n * hw], scratch[n * hw : 2 * n * hw]
    for block in prange(n * h):
        i, row = block // h, block % h
        for col in range(w):
            pixel = i * c * hw + row * w + col
            mu, inv = _pixel_stats(x, pixel, c, hw, eps)
            means[i * hw + row * w + col], invstds[i * hw + row * w + col] = mu, inv
            sum_g, sum_g_xhat = 0.0, 0.0
            for ch in range(c):
                g = gy[pixel + ch * hw] * weight[ch] if affine else gy[pixel + ch * hw]
                sum_g += g
                sum_g_xhat += g * (x[pixel + ch * hw] - mu) * inv
            mean_g, mean_g_xhat = sum_g / c, sum_g_xhat / c
            for ch in range(c):
                g = gy[pixel + ch * hw] * weight[ch] if affine else gy[pixel + ch * hw]
                xhat = (x[pixel + ch * hw] - mu) * inv
                gx[pixel + ch * hw] = inv * (g - mean_g - xhat * mean_g_xhat)
    for ch in prange(c):
        sum_gy, sum_gy_xhat = 0.0, 0.0
        for i in range(n):
            g, src = _plane(gy, i, ch, c, hw), _plane(x, i, ch, c, hw)
            mu, inv = means[i * hw : (i + 1) * hw], invstds[i * hw : (i + 1) * hw]
            for j in range(hw):
                sum_gy += g[j]
                sum_gy_xhat += g[j] * (src[j] - mu[j]) * inv[j]
        grad_bias[ch], grad_weight[ch] = sum_gy, sum_gy_xhat
    return 0


@kernel(buffers=2)
def softmax(x, y, a):
    outer, d, inner = a[0], a[1], a[2]
    for line in prange(outer * inner):
        src, dst = _line(x, line, d, inner), _line(y, line, d, inner)
        top = src[0]
        for k in range(1, d):
            top = max(top, src[k])
        total = 0.0
        for k in range(d):
            e = math.exp(src[k] - top)
            dst[k] = e
            total += e
        for k in range(d):
            dst[k] /= total
    return 0


@kernel(buffers=3)
def softmax_grad(gy, y, gx, a):
    outer, d, inner = a[0], a[1], a[2]
    for line in prange(outer * inner):
        g, out, dst = _line(gy, line, d, inner), _line(y, line, d, inner), _line(gx, line, d, inner)
        dot = 0.0
        for k in range(d):
            dot += g[k] * out[k]
        for k in range(d):
            dst[k] = out[k] * (g[k] - dot)
    return 0


@njit(inline="always", cache=True)
def _window_squares(x, dst, i, first, c, inner, size):
    """dst = the sum of x^2 over image i's channels first .. first + size - 1 (those that
    exist)."""
    dst[:] = 0.0
    for ch in range(max(first, 0), min(first + size, c)):
        src = _plane(x, i, ch, c, inner)
        for j in range(inner):
            dst[j] += src[j] * src[j]


@njit(inline="always", cache=True)
def _inverse_power(s, beta):
    """s ** -beta; for AlexNet's and GoogLeNet's beta = 0.75 as two square roots, which ran
    the forward kernel 3x faster than ``pow`` here."""
    if beta == 0.75:
        root = math.sqrt(s)
        return 1.0 / (root * math.sqrt(root))
    return s**-beta


@kernel(buffers=3)
def local_response_norm(x, y, consts, a):
    n, c, inner, size, before = a[0], a[1], a[2], a[3], a[4]
    coef, beta, k = consts[0] / size, consts[1], consts[2]
    for p in prange(n * c):
        i, ch = p // c, p % c
        src, dst = _plane(x, i, ch, c, inner), _plane(y, i, ch, c, inner)
        _window_squares(x, dst, i, ch - before, c, inner, size)
        for j in range(inner):
            dst[j] = src[j] * _inverse_power(k + coef * dst[j], beta)
    return 0


@kernel(buffers=5)
def local_response_norm_grad(gy, x, gx, scratch, consts, a):
    n, c, inner, size, before = a[0], a[1], a[2], a[3], a[4]
    coef, beta, k = consts[0] / size, consts[1], consts[2]
    for p in prange(n * c):
        i, ch = p // c, p % c
        g, src = _plane(gy, i, ch, c, inner), _plane(x, i, ch, c, inner)
        dst, t = _plane(gx, i, ch, c, inner), _plane(scratch, i, ch, c, inner)
        _window_squares(x, t, i, ch - before, c, inner, size)
        for j in range(inner):
            s = k + coef * t[j]
            dst[j] = g[j] * _inverse_power(s, beta)
            t[j] = dst[j] * src[j] / s
    factor = 2.0 * coef * beta
    for p in prange(n * c):
        i, ch = p // c, p % c
        src, dst = _plane(x, i, ch, c, inner), _plane(gx, i, ch, c, inner)
        for reader in range(max(ch + before - size + 1, 0), min(ch + before + 1, c)):
            t = _plane(scratch, i, reader, c, inner)
            for j in range(inner):
                dst[j] -= factor * src[j] * t[j]
    return 0


def _affine(node: Node, io: NodeIO, first: int, count: int = 2) -> list[tuple[int, int]]:
    """The ``count`` optional per-channel inputs from ``first`` on (weight, bias), or empties."""
    if len(node.inputs) > first:
        return [io.input(first + k) for k in range(count)]
    return [io.empty()] * count


def _channel_layout(shape: tuple[int, ...]) -> list[int]:
    """[N, C, inner] of a rank-2 or rank-4 batch-norm input."""
    return [shape[0], shape[1], math.prod(shape[2:])]


@lowers("batch_norm")
def _lower_batch_norm(node: Node, io: NodeIO):
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
            node.name,
            io.dtype,
            io.parallel(io.output()[1]),
            buffers,
            _channel_layout(node.inputs[0].shape),
        )
    ]


@lowers("batch_norm_fold")
def _lower_batch_norm_fold(node: Node, io: NodeIO):
    stats = [io.input(0), io.input(1), *_affine(node, io, 2)]
    buffers = [*stats, io.output(), io.const([node.attrs["eps"]])]
    return [batch_norm_fold.step(node.name, io.dtype, False, buffers, [node.inputs[0].shape[0]])]


def _batch_norm_train_scratch(node: Node) -> int:
    """batch_norm_recompute keeps the mean and invstd it recomputes in its scratch."""
    x = node.inputs[0].type
    return 2 * x.shape[1] * x.itemsize if node.op == "batch_norm_recompute" else 0


@lowers("batch_norm_train", "batch_norm_recompute", scratch=_batch_norm_train_scratch)
def _lower_batch_norm_train(node: Node, io: NodeIO):
    channels = node.inputs[0].shape[1]
    if node.op == "batch_norm_train":
        stats = [io.output(1), io.output(2)]
    else:
        scratch, _ = io.scratch(2 * channels)
        stats = [(scratch, channels), (scratch + channels * node.inputs[0].type.itemsize, channels)]
    buffers = [
        io.input(0),
        io.input(1),
        io.input(2),
        *_affine(node, io, 3),
        io.output(0),
        *stats,
        io.const([node.attrs["eps"], node.attrs["momentum"]]),
    ]
    update = int(node.op == "batch_norm_train")
    return [
        batch_norm_train.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            buffers,
            [*_channel_layout(node.inputs[0].shape), update],
        )
    ]


@lowers("batch_norm_grad")
def _lower_batch_norm_grad(node: Node, io: NodeIO):
    buffers = [
        *(io.input(k) for k in range(4)),
        *_affine(node, io, 4, count=1),
        io.output(0),
        io.output(1),
        io.output(2),
    ]
    return [
        batch_norm_grad.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            buffers,
            _channel_layout(node.inputs[0].shape),
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


def _layer_norm2d_grad_scratch(node: Node) -> int:
    """A mean and an inverse std per pixel."""
    n, _, h, w = node.inputs[0].shape
    return 2 * n * h * w * node.inputs[0].type.itemsize


@lowers("layer_norm2d_grad", scratch=_layer_norm2d_grad_scratch)
def _lower_layer_norm2d_grad(node: Node, io: NodeIO):
    n, _, h, w = node.inputs[0].shape
    buffers = [
        io.input(0),
        io.input(1),
        *_affine(node, io, 2, count=1),
        io.output(0),
        io.output(1),
        io.output(2),
        io.scratch(2 * n * h * w),
        io.const([node.attrs["eps"]]),
    ]
    return [
        layer_norm2d_grad.step(
            node.name,
            io.dtype,
            io.parallel(5 * io.output()[1]),
            buffers,
            list(node.inputs[0].shape),
        )
    ]


def _softmax_layout(node: Node) -> list[int]:
    """[outer, D, inner] of the (first) input around the softmax axis."""
    shape, dim = node.inputs[0].shape, node.attrs["dim"]
    return [math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])]


@lowers("softmax")
def _lower_softmax(node: Node, io: NodeIO):
    return [
        softmax.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            [io.input(0), io.output()],
            _softmax_layout(node),
        )
    ]


@lowers("softmax_grad")
def _lower_softmax_grad(node: Node, io: NodeIO):
    return [
        softmax_grad.step(
            node.name,
            io.dtype,
            io.parallel(2 * io.output()[1]),
            [io.input(0), io.input(1), io.output()],
            _softmax_layout(node),
        )
    ]


def _lrn_layout(node: Node) -> tuple[list[int], list[float]]:
    """The ints [N, C, inner, size, before] and the consts [alpha, beta, k]."""
    shape, a = node.inputs[-1].shape, node.attrs
    ints = [*_channel_layout(shape), a["size"], a["before"]]
    return ints, [a["alpha"], a["beta"], a["k"]]


@lowers("local_response_norm")
def _lower_local_response_norm(node: Node, io: NodeIO):
    ints, consts = _lrn_layout(node)
    buffers = [io.input(0), io.output(), io.const(consts)]
    work = (node.attrs["size"] + 2) * io.output()[1]
    return [local_response_norm.step(node.name, io.dtype, io.parallel(work), buffers, ints)]


def _lrn_grad_scratch(node: Node) -> int:
    """t = gy * x * s^(-beta - 1), one per input element."""
    return node.inputs[1].type.numel * node.inputs[1].type.itemsize


@lowers("local_response_norm_grad", scratch=_lrn_grad_scratch)
def _lower_local_response_norm_grad(node: Node, io: NodeIO):
    ints, consts = _lrn_layout(node)
    numel = node.inputs[1].type.numel
    buffers = [io.input(0), io.input(1), io.output(), io.scratch(numel), io.const(consts)]
    work = (2 * node.attrs["size"] + 4) * numel
    return [local_response_norm_grad.step(node.name, io.dtype, io.parallel(work), buffers, ints)]
