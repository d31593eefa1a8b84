"""CPU kernels of the conv2d and linear backward ops: conv2d_grad_input, conv2d_grad_weight,
channel_sum (bias gradients) and matmul (linear's gradients).

Layout as ``conv.py``: NCHW, OIHW, flat buffers, single-threaded GEMMs inside parallel tasks.

- ``conv2d_grad_input``: the transposed conv as GEMM + col2im. A task is one chunk of input
  channels of one (image, group): ``cols = W_g[:, chunk]^T @ gy_g`` ([chunk*KH*KW, OH*OW]),
  then each tap row is added back onto the input positions it was read from (col2im). Tasks
  own disjoint input channels, so the scatter-adds never race.
- ``conv2d_grad_weight``: ``gW_g += gy_g [OC/g, block] @ cols^T [block, C/g*KH*KW]`` over
  (image, group, pixel block) tasks with im2col as in the forward pass; each thread sums into
  its own partial gradient, and the partials are added in thread order at the end (the static
  schedule makes the result deterministic for a given thread count).
- ``channel_sum``: per channel, the sum over batch and pixels (float64 accumulator).
- ``matmul``: ``op(A) @ op(B)``, one GEMM per block of output columns.

Buffers: conv2d_grad_input(gy, w, gx, cols), conv2d_grad_weight(x, gy, gw, scratch),
channel_sum(gy, out), matmul(a, b, c).
Attrs: conv [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups] then
grad_input [chunk], grad_weight [block, pointwise, threads]; channel_sum [N, C, inner];
matmul [M, N, K, trans_a, trans_b, lda, ldb, block].
"""

from __future__ import annotations

import math

import numba
from numba import get_thread_id, prange

from backends.cpu.blas import matmul as gemm_block
from backends.cpu.conv import BLOCK_BYTES, im2col_block, is_pointwise, rows_and_block
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import axpy, valid_range
from graph.ir import Node


@kernel(buffers=4)
def conv2d_grad_input(gy, w, gx, cols, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, chunk = a[:17]
    cg, ocg, ohw, taps = c // groups, oc // groups, oh * ow, kh * kw
    chunks, status = (cg + chunk - 1) // chunk, 0
    for task in prange(n * groups * chunks):
        i, g = task // (groups * chunks), (task // chunks) % groups
        first = (task % chunks) * chunk
        count = min(chunk, cg - first)
        slot = get_thread_id() * chunk * taps * ohw
        weights = (w, g * ocg * cg * taps + first * taps, cg * taps)
        grads = (gy, (i * oc + g * ocg) * ohw, ohw)
        code = gemm_block(count * taps, ohw, ocg, weights, grads, (cols, slot, ohw), trans_a=1)
        status = code if code != 0 else status
        for cc in range(count):
            plane = (i * c + g * cg + first + cc) * h * wd
            gx[plane : plane + h * wd] = 0
            for t in range(taps):
                ki, kj = t // kw, t % kw
                row = cols[slot + (cc * taps + t) * ohw : slot + (cc * taps + t + 1) * ohw]
                y_lo, y_hi = valid_range(oh, h, sh, pt, ki * dh)
                x_lo, x_hi = valid_range(ow, wd, sw, pl, kj * dw)
                for oy in range(y_lo, y_hi):
                    base = plane + (oy * sh - pt + ki * dh) * wd - pl + kj * dw
                    src = row[oy * ow + x_lo : oy * ow + x_hi]
                    if sw == 1:
                        axpy(gx[base + x_lo : base + x_hi], src, 1.0)
                    else:
                        axpy(gx[base + x_lo * sw : base + (x_hi - 1) * sw + 1 : sw], src, 1.0)
    return status


@kernel(buffers=4)
def conv2d_grad_weight(x, gy, gw, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups = a[:16]
    block, pointwise, threads = a[16], a[17], a[18]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    rows, blocks, size = cg * kh * kw, (ohw + block - 1) // block, oc * cg * kh * kw
    partial, cols = scratch[: threads * size], scratch[threads * size :]
    partial[:] = 0
    status = 0
    for task in prange(n * groups * blocks):
        i, g = task // (groups * blocks), (task // blocks) % groups
        start = (task % blocks) * block
        width = min(block, ohw - start)
        tid, src = get_thread_id(), (i * c + g * cg) * hw
        if pointwise:
            patches = (x, src + start, hw)
        else:
            im2col_block(
                x,
                src,
                h,
                wd,
                ow,
                kh,
                kw,
                sh,
                sw,
                pt,
                pl,
                dh,
                dw,
                rows,
                start,
                width,
                cols,
                tid * rows * block,
            )
            patches = (cols, tid * rows * block, width)
        grads = (gy, (i * oc + g * ocg) * ohw + start, ohw)
        target = (partial, tid * size + g * ocg * rows, rows)
        code = gemm_block(ocg, rows, width, grads, patches, target, beta=1.0, trans_b=1)
        status = code if code != 0 else status
    for e in prange(size):
        total = partial[e]
        for t in range(1, threads):
            total += partial[t * size + e]
        gw[e] = total
    return status


@kernel(buffers=2)
def channel_sum(gy, out, a):
    n, c, inner = a[0], a[1], a[2]
    for ch in prange(c):
        total = 0.0
        for i in range(n):
            plane = gy[(i * c + ch) * inner : (i * c + ch + 1) * inner]
            for j in range(inner):
                total += plane[j]
        out[ch] = total
    return 0


@kernel(buffers=3)
def matmul(p, q, out, a):
    m, n, k, trans_a, trans_b, lda, ldb, block = a[:8]
    status = 0
    for task in prange((n + block - 1) // block):
        start = task * block
        width = min(block, n - start)
        right = (q, start * ldb if trans_b else start, ldb)
        code = gemm_block(m, width, k, (p, 0, lda), right, (out, start, n), 0.0, trans_a, trans_b)
        status = code if code != 0 else status
    return status


def _conv_attrs(node: Node, x_shape, w_shape, y_shape) -> list[int]:
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    return [
        *x_shape,
        w_shape[0],
        *y_shape[2:],
        *w_shape[2:],
        sh,
        sw,
        pt,
        pl,
        *node.attrs["dilation"],
        node.attrs["groups"],
    ]


def _grad_input_chunk(node: Node) -> int:
    """Input channels per grad_input task: as many as keep the columns near BLOCK_BYTES."""
    gy, w = node.inputs
    taps, ohw = w.shape[2] * w.shape[3], gy.shape[2] * gy.shape[3]
    return max(1, min(w.shape[1], BLOCK_BYTES // (taps * ohw * gy.type.itemsize)))


def _grad_input_scratch(node: Node) -> int:
    gy, w = node.inputs
    numel = _grad_input_chunk(node) * w.shape[2] * w.shape[3] * gy.shape[2] * gy.shape[3]
    return numba.config.NUMBA_NUM_THREADS * numel * gy.type.itemsize


@lowers("conv2d_grad_input", scratch=_grad_input_scratch)
def _lower_conv2d_grad_input(node: Node, io: NodeIO):
    gy, w = node.inputs
    gx = node.outputs[0]
    attrs = _conv_attrs(node, gx.shape, w.shape, gy.shape) + [_grad_input_chunk(node)]
    scratch = io.scratch(_grad_input_scratch(node) // gy.type.itemsize)
    work = gy.type.numel * w.shape[1] * w.shape[2] * w.shape[3]
    return [
        conv2d_grad_input.step(
            node.name,
            io.dtype,
            io.parallel(work),
            [io.input(0), io.input(1), io.output(), scratch],
            attrs,
        )
    ]


def _as_forward(node: Node) -> Node:
    """The forward conv node this grad_weight node mirrors (for the shared block rules)."""
    x, gy = node.inputs
    w = node.outputs[0]
    return Node("conv2d", [x, w], [gy], node.attrs, node.name)


def _grad_weight_scratch(node: Node) -> int:
    forward, threads = _as_forward(node), numba.config.NUMBA_NUM_THREADS
    rows, block = rows_and_block(forward)
    cols = 0 if is_pointwise(forward) else threads * rows * block
    return (threads * node.outputs[0].type.numel + cols) * node.outputs[0].type.itemsize


@lowers("conv2d_grad_weight", scratch=_grad_weight_scratch)
def _lower_conv2d_grad_weight(node: Node, io: NodeIO):
    x, gy = node.inputs
    forward, threads = _as_forward(node), numba.config.NUMBA_NUM_THREADS
    attrs = _conv_attrs(node, x.shape, node.outputs[0].shape, gy.shape)
    attrs += [rows_and_block(forward)[1], int(is_pointwise(forward)), threads]
    scratch = io.scratch(_grad_weight_scratch(node) // x.type.itemsize)
    work = gy.type.numel * node.outputs[0].type.numel // gy.shape[1]
    return [
        conv2d_grad_weight.step(
            node.name,
            io.dtype,
            io.parallel(work),
            [io.input(0), io.input(1), io.output(), scratch],
            attrs,
        )
    ]


@lowers("channel_sum")
def _lower_channel_sum(node: Node, io: NodeIO):
    shape = node.inputs[0].shape
    ints = [shape[0], shape[1], math.prod(shape[2:])]
    return [
        channel_sum.step(
            node.name,
            io.dtype,
            io.parallel(node.inputs[0].type.numel),
            [io.input(0), io.output()],
            ints,
        )
    ]


@lowers("matmul")
def _lower_matmul(node: Node, io: NodeIO):
    (m, n), (a, b) = node.outputs[0].shape, node.inputs
    k = a.shape[0] if node.attrs["trans_a"] else a.shape[1]
    block = max(16, -(-n // numba.config.NUMBA_NUM_THREADS))
    ints = [
        m,
        n,
        k,
        int(node.attrs["trans_a"]),
        int(node.attrs["trans_b"]),
        a.shape[1],
        b.shape[1],
        block,
    ]
    return [
        matmul.step(
            node.name,
            io.dtype,
            io.parallel(m * n * k),
            [io.input(0), io.input(1), io.output()],
            ints,
        )
    ]
