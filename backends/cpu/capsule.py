"""CPU kernels of the capsule ops (see ``graph/ops/capsule.py`` for the maths).

Vectors are lines [outer, D, inner] as softmax views its axis; capsule tensors are row-major
[N, I, J, D] (predictions), [N, I, Din] (inputs), [I, J, Dout, Din] (weights). Sums accumulate
in float64; every kernel is parallel over a leading axis whose tasks write disjoint outputs.

Buffers: squash(s, v, consts=[eps]); squash_grad(gy, s, gx, consts=[eps]);
capsule_predict(u, w, u_hat); capsule_predict_grad_input(g, w, gu);
capsule_predict_grad_weight(u, g, gw); capsule_routing(u_hat, v, c, s, b, consts=[eps]) with b
a scratch of routing logits; capsule_routing_grad(gs, c, g_u_hat);
capsule_length(v, lengths, consts=[eps]); capsule_length_grad(g, v, lengths, gv).
Attrs: squash* [outer, D, inner]; capsule ops [N, I, J, Dout, Din] (routing also iterations).
"""

from __future__ import annotations

import math

from numba import njit, prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@njit(inline="always", cache=True)
def _squash_factor(norm2, eps):
    """h(|s|^2) with v = h s."""
    return norm2 / ((1.0 + norm2) * math.sqrt(norm2 + eps))


@kernel(buffers=3)
def squash(s, v, consts, a):
    outer, d, inner, eps = a[0], a[1], a[2], consts[0]
    for line in prange(outer * inner):
        start = (line // inner) * d * inner + line % inner
        norm2 = 0.0
        for k in range(d):
            norm2 += s[start + k * inner] ** 2
        factor = _squash_factor(norm2, eps)
        for k in range(d):
            v[start + k * inner] = s[start + k * inner] * factor
    return 0


@kernel(buffers=4)
def squash_grad(gy, s, gx, consts, a):
    """gx = h gy + 2 h'(|s|^2) (s . gy) s, h' = (r - n2 (1 + n2) / (2 r)) / ((1 + n2)^2 r^2)
    with n2 = |s|^2 and r = sqrt(n2 + eps)."""
    outer, d, inner, eps = a[0], a[1], a[2], consts[0]
    for line in prange(outer * inner):
        start = (line // inner) * d * inner + line % inner
        norm2, dot = 0.0, 0.0
        for k in range(d):
            norm2 += s[start + k * inner] ** 2
            dot += s[start + k * inner] * gy[start + k * inner]
        r = math.sqrt(norm2 + eps)
        slope = (r - norm2 * (1.0 + norm2) / (2.0 * r)) / ((1.0 + norm2) ** 2 * r * r)
        factor = _squash_factor(norm2, eps)
        for k in range(d):
            at = start + k * inner
            gx[at] = factor * gy[at] + 2.0 * slope * dot * s[at]
    return 0


@kernel(buffers=3)
def capsule_predict(u, w, u_hat, a):
    n, caps_in, caps_out, d_out, d_in = a[0], a[1], a[2], a[3], a[4]
    for task in prange(n * caps_in):
        i = task % caps_in
        src = u[task * d_in : (task + 1) * d_in]
        for j in range(caps_out):
            for o in range(d_out):
                row = w[((i * caps_out + j) * d_out + o) * d_in :]
                total = 0.0
                for k in range(d_in):
                    total += row[k] * src[k]
                u_hat[(task * caps_out + j) * d_out + o] = total
    return 0


@kernel(buffers=3)
def capsule_predict_grad_input(g, w, gu, a):
    n, caps_in, caps_out, d_out, d_in = a[0], a[1], a[2], a[3], a[4]
    for task in prange(n * caps_in):
        i = task % caps_in
        for k in range(d_in):
            total = 0.0
            for j in range(caps_out):
                for o in range(d_out):
                    total += (
                        g[(task * caps_out + j) * d_out + o]
                        * w[((i * caps_out + j) * d_out + o) * d_in + k]
                    )
            gu[task * d_in + k] = total
    return 0


@kernel(buffers=3)
def capsule_predict_grad_weight(u, g, gw, a):
    n, caps_in, caps_out, d_out, d_in = a[0], a[1], a[2], a[3], a[4]
    for i in prange(caps_in):
        for j in range(caps_out):
            for o in range(d_out):
                for k in range(d_in):
                    total = 0.0
                    for m in range(n):
                        task = m * caps_in + i
                        total += g[(task * caps_out + j) * d_out + o] * u[task * d_in + k]
                    gw[((i * caps_out + j) * d_out + o) * d_in + k] = total
    return 0


@kernel(buffers=6)
def capsule_routing(u_hat, v, c, s, logits, consts, a):
    n, caps_in, caps_out, d = a[0], a[1], a[2], a[3]
    iterations, eps = a[5], consts[0]
    for m in prange(n):
        b = logits[m * caps_in * caps_out : (m + 1) * caps_in * caps_out]
        b[:] = 0.0
        for r in range(iterations):
            for i in range(caps_in):  # c = softmax over output capsules of b
                row = b[i * caps_out : (i + 1) * caps_out]
                top = row.max()
                total = 0.0
                for j in range(caps_out):
                    total += math.exp(row[j] - top)
                for j in range(caps_out):
                    c[(m * caps_in + i) * caps_out + j] = math.exp(row[j] - top) / total
            for j in range(caps_out):  # s_j = sum_i c_ij u_hat_ij, v_j = squash(s_j)
                norm2 = 0.0
                for e in range(d):
                    total = 0.0
                    for i in range(caps_in):
                        total += (
                            c[(m * caps_in + i) * caps_out + j]
                            * u_hat[((m * caps_in + i) * caps_out + j) * d + e]
                        )
                    s[(m * caps_out + j) * d + e] = total
                    norm2 += total * total
                factor = _squash_factor(norm2, eps)
                for e in range(d):
                    v[(m * caps_out + j) * d + e] = s[(m * caps_out + j) * d + e] * factor
            if r + 1 < iterations:  # agreement: b_ij += u_hat_ij . v_j
                for i in range(caps_in):
                    for j in range(caps_out):
                        total = 0.0
                        for e in range(d):
                            total += (
                                u_hat[((m * caps_in + i) * caps_out + j) * d + e]
                                * v[(m * caps_out + j) * d + e]
                            )
                        b[i * caps_out + j] += total
    return 0


@kernel(buffers=3)
def capsule_routing_grad(gs, c, g_u_hat, a):
    n, caps_in, caps_out, d = a[0], a[1], a[2], a[3]
    for task in prange(n * caps_in):
        m = task // caps_in
        for j in range(caps_out):
            weight = c[task * caps_out + j]
            for e in range(d):
                g_u_hat[(task * caps_out + j) * d + e] = weight * gs[(m * caps_out + j) * d + e]
    return 0


@kernel(buffers=3)
def capsule_length(v, lengths, consts, a):
    rows, d, eps = a[0] * a[2], a[3], consts[0]
    for r in prange(rows):
        total = 0.0
        for e in range(d):
            total += v[r * d + e] ** 2
        lengths[r] = math.sqrt(total + eps)
    return 0


@kernel(buffers=4)
def capsule_length_grad(g, v, lengths, gv, a):
    rows, d = a[0] * a[2], a[3]
    for r in prange(rows):
        scale = g[r] / lengths[r]
        for e in range(d):
            gv[r * d + e] = v[r * d + e] * scale
    return 0


def _lines(node: Node, shape) -> list[int]:
    dim = node.attrs.get("dim", len(shape) - 1)
    return [math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])]


def _capsule_dims(u_hat_shape, d_in: int = 0) -> list[int]:
    n, caps_in, caps_out, d_out = u_hat_shape
    return [n, caps_in, caps_out, d_out, d_in]


def _step(kernel_, node: Node, io: NodeIO, buffers, ints, work: int):
    return [kernel_.step(node.name, io.dtype, io.parallel(work), buffers, ints)]


@lowers("squash")
def _lower_squash(node: Node, io: NodeIO):
    buffers = [io.input(0), io.output(), io.const([node.attrs.get("eps", 1e-8)])]
    return _step(squash, node, io, buffers, _lines(node, node.inputs[0].shape), io.output()[1])


@lowers("squash_grad")
def _lower_squash_grad(node: Node, io: NodeIO):
    buffers = [io.input(0), io.input(1), io.output(), io.const([node.attrs.get("eps", 1e-8)])]
    ints = _lines(node, node.inputs[1].shape)
    return _step(squash_grad, node, io, buffers, ints, io.output()[1])


@lowers("capsule_predict")
def _lower_capsule_predict(node: Node, io: NodeIO):
    ints = _capsule_dims(node.outputs[0].shape, node.inputs[0].shape[2])
    buffers = [io.input(0), io.input(1), io.output()]
    return _step(capsule_predict, node, io, buffers, ints, io.output()[1] * ints[4])


@lowers("capsule_predict_grad_input")
def _lower_capsule_predict_grad_input(node: Node, io: NodeIO):
    ints = _capsule_dims(node.inputs[0].shape, node.outputs[0].shape[2])
    buffers = [io.input(0), io.input(1), io.output()]
    return _step(capsule_predict_grad_input, node, io, buffers, ints, io.input(0)[1] * ints[4])


@lowers("capsule_predict_grad_weight")
def _lower_capsule_predict_grad_weight(node: Node, io: NodeIO):
    ints = _capsule_dims(node.inputs[1].shape, node.inputs[0].shape[2])
    buffers = [io.input(0), io.input(1), io.output()]
    return _step(capsule_predict_grad_weight, node, io, buffers, ints, io.input(1)[1] * ints[4])


def _routing_scratch(node: Node) -> int:
    n, caps_in, caps_out, _ = node.inputs[0].shape
    return n * caps_in * caps_out * node.inputs[0].type.itemsize


@lowers("capsule_routing", scratch=_routing_scratch)
def _lower_capsule_routing(node: Node, io: NodeIO):
    n, caps_in, caps_out, d = node.inputs[0].shape
    ints = [n, caps_in, caps_out, d, 0, node.attrs.get("iterations", 3)]
    buffers = [
        io.input(0),
        io.output(0),
        io.output(1),
        io.output(2),
        io.scratch(n * caps_in * caps_out),
        io.const([node.attrs.get("eps", 1e-8)]),
    ]
    return _step(capsule_routing, node, io, buffers, ints, io.input(0)[1] * ints[5])


@lowers("capsule_routing_grad")
def _lower_capsule_routing_grad(node: Node, io: NodeIO):
    ints = _capsule_dims(node.outputs[0].shape)
    buffers = [io.input(0), io.input(1), io.output()]
    return _step(capsule_routing_grad, node, io, buffers, ints, io.output()[1])


@lowers("capsule_length")
def _lower_capsule_length(node: Node, io: NodeIO):
    n, caps, d = node.inputs[0].shape
    buffers = [io.input(0), io.output(), io.const([node.attrs.get("eps", 1e-8)])]
    return _step(capsule_length, node, io, buffers, [n, 0, caps, d], io.input(0)[1])


@lowers("capsule_length_grad")
def _lower_capsule_length_grad(node: Node, io: NodeIO):
    n, caps, d = node.inputs[1].shape
    buffers = [io.input(0), io.input(1), io.input(2), io.output()]
    return _step(capsule_length_grad, node, io, buffers, [n, 0, caps, d], io.input(1)[1])
