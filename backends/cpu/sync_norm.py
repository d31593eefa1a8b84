"""CPU kernels of synchronised BatchNorm (graph/ops/sync_norm.py) and of ``allreduce_mean``.

Each process computes per-channel MEANS over its own batch; ``allreduce_mean`` (a copy here;
``engine.distributed`` averages its output across processes between plan segments) makes them
global. The numerics are ``batch_norm_train``'s and ``batch_norm_grad``'s (backends/cpu/norm.py):
two passes, float64 sums through its ``_lane_sums``, the same per-channel affine.

- ``batch_moments``: per channel over [N, C, inner], ``mean(x)`` (x alone), ``mean((x -
  centre)^2)`` (with a centre: the variance about the global mean), or, for
  ``batch_norm_grad_moments`` (with gy and invstd), ``[mean(gy); mean(gy * (x - centre)) *
  invstd]``. Parallel over channels.
- ``sync_batch_norm``: two steps. ``backends.cpu.norm.batch_norm`` (the inference transform,
  ``alpha = weight / sqrt(var + eps)``, ``beta = bias - mean * alpha``, the arithmetic of
  ``batch_norm_train``) normalises x with the global mean and variance; then
  ``sync_batch_norm_update`` writes ``invstd = 1 / sqrt(var + eps)`` and updates the running
  statistics as torch does, with the unbiased variance ``var * M / (M - 1)``, M the global
  count of values per channel (``processes * N * inner``).
- ``sync_batch_norm_grad``: ``gx = invstd * weight * (gy - s0 - (x - mean) * invstd * s1)``
  with ``[s0; s1]`` the global moments, and the local parameter gradients ``grad_bias = count
  * local[0]``, ``grad_weight = count * local[1]``. gx may be gy's memory (each element is read
  before it is written).
- ``allreduce_mean``: the elementwise copy (backends/cpu/elementwise.py's ``unary``, COPY).

Buffers: batch_moments(x, centre, gy, invstd, out) with centre, gy and invstd empty when
absent; sync_batch_norm_update(mean, var, running_mean, running_var, invstd, consts=[eps,
momentum]); sync_batch_norm_grad(gy, x, mean, invstd, moments, local, weight, gx, grad_weight,
grad_bias) with weight empty without affine.
Attrs: batch_moments, sync_batch_norm_grad [N, C, inner]; sync_batch_norm_update [C, M].
"""

from __future__ import annotations

import math

from numba import prange

from backends.cpu.elementwise import COPY, activation_consts, unary
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.norm import _affine, _channel_layout, _lane_sums, _plane, batch_norm
from graph.ir import Node


@kernel(buffers=5)
def batch_moments(x, centre, gy, invstd, out, a):
    n, c, inner = a[0], a[1], a[2]
    count, centred, gradient = n * inner, centre.shape[0] > 0, gy.shape[0] > 0
    for ch in prange(c):
        mu = centre[ch] if centred else 0.0
        total, spread = 0.0, 0.0
        for i in range(n):
            src = _plane(x, i, ch, c, inner)
            if gradient:
                sums = _lane_sums(_plane(gy, i, ch, c, inner), src, 0.0, mu)
            else:
                sums = _lane_sums(src, src, mu, mu)
            total += sums[0]
            spread += sums[1]
        if gradient:
            out[ch], out[c + ch] = total / count, spread * invstd[ch] / count
        else:
            out[ch] = spread / count if centred else total / count
    return 0


@kernel(buffers=6)
def sync_batch_norm_update(mean, var, running_mean, running_var, invstd, consts, a):
    c, count = a[0], a[1]
    eps, momentum = consts[0], consts[1]
    for ch in range(c):
        invstd[ch] = 1.0 / math.sqrt(var[ch] + eps)
        unbiased = var[ch] * count / (count - 1)
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean[ch]
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * unbiased
    return 0


@kernel(buffers=10, inplace=((7, 0),), parallel_inplace=True)
def sync_batch_norm_grad(
    gy, x, mean, invstd, moments, local, weight, gx, grad_weight, grad_bias, a
):
    n, c, inner = a[0], a[1], a[2]
    affine, count = weight.shape[0] > 0, n * inner
    for ch in prange(c):
        mu, inv = mean[ch], invstd[ch]
        grad_bias[ch], grad_weight[ch] = count * local[ch], count * local[c + ch]
        scale = inv * weight[ch] if affine else inv
        mean_gy, mean_gy_xhat = moments[ch], moments[c + ch] * inv
        for i in range(n):
            g, src = _plane(gy, i, ch, c, inner), _plane(x, i, ch, c, inner)
            dst = _plane(gx, i, ch, c, inner)
            for j in range(inner):
                dst[j] = scale * (g[j] - mean_gy - (src[j] - mu) * mean_gy_xhat)
    return 0


@lowers("batch_moments", "batch_norm_grad_moments")
def _lower_batch_moments(node: Node, io: NodeIO):
    if node.op == "batch_moments":
        x, rest = 0, [io.input(1) if len(node.inputs) > 1 else io.empty(), io.empty(), io.empty()]
    else:  # gy, x, mean, invstd
        x, rest = 1, [io.input(2), io.input(0), io.input(3)]
    buffers = [io.input(x), *rest, io.output()]
    work = 2 * node.inputs[x].type.numel
    return [
        batch_moments.step(
            node.name, io.dtype, io.parallel(work), buffers, _channel_layout(node.inputs[x].shape)
        )
    ]


@lowers("sync_batch_norm")
def _lower_sync_batch_norm(node: Node, io: NodeIO):
    shape, attrs = node.inputs[0].shape, node.attrs
    eps = io.const([attrs["eps"]])
    normalise = [io.input(0), io.input(3), io.input(4), *_affine(node, io, 5), io.output(0), eps]
    update = [*(io.input(k) for k in (3, 4, 1, 2)), io.output(1)]
    count = attrs["processes"] * math.prod(shape) // shape[1]
    return [
        batch_norm.step(
            node.name, io.dtype, io.parallel(io.output()[1]), normalise, _channel_layout(shape)
        ),
        sync_batch_norm_update.step(
            node.name,
            io.dtype,
            False,
            [*update, io.const([attrs["eps"], attrs["momentum"]])],
            [shape[1], count],
        ),
    ]


@lowers("sync_batch_norm_grad")
def _lower_sync_batch_norm_grad(node: Node, io: NodeIO):
    buffers = [
        *(io.input(k) for k in range(6)),
        *_affine(node, io, 6, count=1),
        io.output(0),
        io.output(1),
        io.output(2),
    ]
    return [
        sync_batch_norm_grad.step(
            node.name,
            io.dtype,
            io.parallel(3 * io.output()[1]),
            buffers,
            _channel_layout(node.inputs[0].shape),
        )
    ]


@lowers("allreduce_mean")
def _lower_allreduce_mean(node: Node, io: NodeIO):
    buffers = [io.input(0), io.output(), activation_consts(node.attrs, io)]
    return [unary.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, [COPY])]
