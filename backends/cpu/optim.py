"""CPU optimizer updates, elementwise over a parameter in chunks, as ``torch.optim``'s
single-tensor implementations compute them (same operation order).

- ``sgd_update``: d = g + wd*p; with momentum, buf = d on the first step, else
  buf = momentum*buf + (1 - dampening)*d; d = d + momentum*buf (Nesterov) or buf; p -= lr*d.
- ``adam_update``: g += wd*p (Adam) or p *= 1 - lr*wd (AdamW); m = lerp(m, g, 1 - beta1);
  v = beta2*v + (1 - beta2)*g*g; p -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps).

Buffers: sgd_update(param, grad, momentum_buffer, hyper); adam_update(param, grad, exp_avg,
exp_avg_sq, hyper); hyper as ``graph/ops/optim.py`` lists it. Attrs: [].
"""

from __future__ import annotations

import math

from numba import prange

from backends.cpu.elementwise import CHUNK
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@kernel(buffers=4)
def sgd_update(p, g, buf, hyper, a):
    lr, momentum, dampening, decay, nesterov, first = (
        hyper[0],
        hyper[1],
        hyper[2],
        hyper[3],
        hyper[4],
        hyper[5],
    )
    for c in prange((p.shape[0] + CHUNK - 1) // CHUNK):
        ps, gs, bs = (
            p[c * CHUNK : (c + 1) * CHUNK],
            g[c * CHUNK : (c + 1) * CHUNK],
            buf[c * CHUNK : (c + 1) * CHUNK],
        )
        for i in range(ps.shape[0]):
            d = gs[i] + decay * ps[i] if decay != 0 else gs[i]
            if momentum != 0:
                bs[i] = d if first != 0 else momentum * bs[i] + (1 - dampening) * d
                d = d + momentum * bs[i] if nesterov != 0 else bs[i]
            ps[i] -= lr * d
    return 0


@kernel(buffers=5)
def adam_update(p, g, m, v, hyper, a):
    lr, beta1, beta2, eps, decay = hyper[0], hyper[1], hyper[2], hyper[3], hyper[4]
    decoupled, bc1, bc2_sqrt = hyper[5], hyper[6], hyper[7]
    step_size = lr / bc1
    for c in prange((p.shape[0] + CHUNK - 1) // CHUNK):
        lo, hi = c * CHUNK, (c + 1) * CHUNK
        ps, gs, ms, vs = p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi]
        for i in range(ps.shape[0]):
            grad = gs[i]
            if decay != 0:
                if decoupled != 0:
                    ps[i] *= 1 - lr * decay
                else:
                    grad = grad + decay * ps[i]
            ms[i] += (1 - beta1) * (grad - ms[i])
            vs[i] = beta2 * vs[i] + (1 - beta2) * grad * grad
            ps[i] -= step_size * ms[i] / (math.sqrt(vs[i]) / bc2_sqrt + eps)
    return 0


@lowers("sgd_update", "adam_update")
def _lower_update(node: Node, io: NodeIO):
    kernel_ = sgd_update if node.op == "sgd_update" else adam_update
    buffers = [io.input(i) for i in range(len(node.inputs))]
    return [kernel_.step(node.name, io.dtype, io.parallel(buffers[0][1]), buffers, [])]
