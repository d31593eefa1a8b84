"""CPU loss kernels: softmax cross-entropy and mean squared error, and their gradients.

- ``cross_entropy``: per row, ``log_softmax`` via the max-shifted log-sum-exp; the loss is the
  batch mean of ``-sum_c q_c logp_c`` with ``q = (1 - s) onehot + s / C`` (label smoothing s,
  as PyTorch). The softmax probabilities are written out for the backward pass. A target
  outside [0, C) returns ``BAD_TARGET`` (backends/errors.py: the executor names the layer
  and the sample).
- ``cross_entropy_grad``: ``(probs - q) * grad_loss / N``.
- ``mse`` / ``mse_grad``: ``mean((p - t)^2)`` and ``2 (p - t) * grad_loss / numel``.
- ``margin`` / ``margin_grad``: the capsule margin loss on lengths [N, C] and its gradient.
Rows are summed in order in float64, so the loss is deterministic.

Buffers: cross_entropy(logits, target, loss, probs, consts=[s]); cross_entropy_grad(probs,
target, grad_loss, grad, consts=[s]); mse(p, t, loss); mse_grad(p, t, grad_loss, grad).
Attrs: cross_entropy* [N, C]; mse* [].
"""

from __future__ import annotations

import math

from numba import prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.errors import BAD_TARGET
from graph.ir import Node


@kernel(buffers=5)
def cross_entropy(logits, target, loss, probs, consts, a):
    n, c, smoothing = a[0], a[1], consts[0]
    total = 0.0
    for i in range(n):
        label = int(target[i])
        if label < 0 or label >= c or label != target[i]:
            return BAD_TARGET
        row, out = logits[i * c : (i + 1) * c], probs[i * c : (i + 1) * c]
        top = row[0]
        for j in range(1, c):
            top = max(top, row[j])
        norm = 0.0
        for j in range(c):
            norm += math.exp(row[j] - top)
        lse = top + math.log(norm)
        mean_logp = 0.0
        for j in range(c):
            out[j] = math.exp(row[j] - lse)
            mean_logp += (row[j] - lse) / c
        total -= (1.0 - smoothing) * (row[label] - lse) + smoothing * mean_logp
    loss[0] = total / n
    return 0


@kernel(buffers=5)
def cross_entropy_grad(probs, target, grad_loss, grad, consts, a):
    n, c, smoothing = a[0], a[1], consts[0]
    scale = grad_loss[0] / n
    for i in prange(n):
        label = int(target[i])
        for j in range(c):
            q = smoothing / c + (1.0 - smoothing if j == label else 0.0)
            grad[i * c + j] = (probs[i * c + j] - q) * scale
    return 0


@kernel(buffers=3)
def mse(p, t, loss, a):
    total = 0.0
    for i in range(p.shape[0]):
        d = p[i] - t[i]
        total += d * d
    loss[0] = total / p.shape[0]
    return 0


@kernel(buffers=4)
def mse_grad(p, t, grad_loss, grad, a):
    scale = 2.0 * grad_loss[0] / p.shape[0]
    for i in prange(p.shape[0]):
        grad[i] = (p[i] - t[i]) * scale
    return 0


@kernel(buffers=4)
def margin(lengths, target, loss, consts, a):
    n, c = a[0], a[1]
    m_plus, m_minus, down = consts[0], consts[1], consts[2]
    total = 0.0
    for i in range(n):
        label = int(target[i])
        if label < 0 or label >= c or label != target[i]:
            return BAD_TARGET
        for j in range(c):
            v = lengths[i * c + j]
            if j == label:
                total += max(0.0, m_plus - v) ** 2
            else:
                total += down * max(0.0, v - m_minus) ** 2
    loss[0] = total / n
    return 0


@kernel(buffers=5)
def margin_grad(lengths, target, grad_loss, grad, consts, a):
    n, c = a[0], a[1]
    m_plus, m_minus, down = consts[0], consts[1], consts[2]
    scale = grad_loss[0] / n
    for i in prange(n):
        label = int(target[i])
        for j in range(c):
            v = lengths[i * c + j]
            if j == label:
                g = -2.0 * max(0.0, m_plus - v)
            else:
                g = 2.0 * down * max(0.0, v - m_minus)
            grad[i * c + j] = g * scale
    return 0


def _margin_consts(node: Node, io: NodeIO) -> tuple[int, int]:
    attrs = node.attrs
    return io.const(
        [attrs.get("m_plus", 0.9), attrs.get("m_minus", 0.1), attrs.get("down_weight", 0.5)]
    )


@lowers("margin")
def _lower_margin(node: Node, io: NodeIO):
    buffers = [io.input(0), io.input(1), io.output(), _margin_consts(node, io)]
    return [margin.step(node.name, io.dtype, False, buffers, list(node.inputs[0].shape))]


@lowers("margin_grad")
def _lower_margin_grad(node: Node, io: NodeIO):
    buffers = [io.input(0), io.input(1), io.input(2), io.output(), _margin_consts(node, io)]
    return [
        margin_grad.step(
            node.name, io.dtype, io.parallel(io.output()[1]), buffers, list(node.inputs[0].shape)
        )
    ]


@lowers("cross_entropy")
def _lower_cross_entropy(node: Node, io: NodeIO):
    buffers = [
        io.input(0),
        io.input(1),
        io.output(0),
        io.output(1),
        io.const([node.attrs["label_smoothing"]]),
    ]
    return [cross_entropy.step(node.name, io.dtype, False, buffers, list(node.inputs[0].shape))]


@lowers("cross_entropy_grad")
def _lower_cross_entropy_grad(node: Node, io: NodeIO):
    buffers = [
        io.input(0),
        io.input(1),
        io.input(2),
        io.output(),
        io.const([node.attrs["label_smoothing"]]),
    ]
    return [
        cross_entropy_grad.step(
            node.name, io.dtype, io.parallel(io.output()[1]), buffers, list(node.inputs[0].shape)
        )
    ]


@lowers("mse")
def _lower_mse(node: Node, io: NodeIO):
    return [mse.step(node.name, io.dtype, False, [io.input(0), io.input(1), io.output()], [])]


@lowers("mse_grad")
def _lower_mse_grad(node: Node, io: NodeIO):
    buffers = [io.input(0), io.input(1), io.input(2), io.output()]
    return [mse_grad.step(node.name, io.dtype, io.parallel(io.output()[1]), buffers, [])]
