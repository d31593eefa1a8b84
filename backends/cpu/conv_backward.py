"""CPU kernels of the conv2d and linear backward ops: conv2d_grad_input, conv2d_grad_weight,
channel_sum (bias gradients) and matmul (linear's gradients).

Layout as ``conv.py``: NCHW, OIHW, flat buffers, single-threaded GEMMs inside parallel tasks.

- ``conv2d_grad_input``: the transposed conv as GEMM + col2im. A task is one chunk of input
  channels of one (image, group): ``cols = W_g[:, chunk]^T @ gy_g`` ([chunk*KH*KW, OH*OW]),
  then each tap row is added back onto the input positions it was read from (col2im). Tasks
  own disjoint input channels, so the scatter-adds never race.
- ``conv2d_grad_weight`` (strided or pointwise): ``gW_g += gy_g [OC/g, block] @ cols^T
  [block, C/g*KH*KW]`` over (image, group, pixel block) tasks with im2col as in the forward
  pass; each thread sums into its own partial gradient, and the partials are added in thread
  order at the end (the static schedule makes the result deterministic for a thread count).
- ``conv2d_grad_weight_shifted`` (stride 1): no im2col. A task stages its images padded (as
  ``conv2d_shifted``) and its output gradient on the same wide grid (zeros in the padding
  rows and columns), then for each tap ``gW[:, :, tap] += gy_wide [OC/g, Q] @ shifted
  padded^T [Q, C/g]``, Q covering all of the task's images; partials reduce as above.
- ``conv2d_flip_weight``: the 180-degree-rotated, channel-swapped kernel with which a
  stride-1 grad_input runs as an ordinary forward conv (see ``graph/ops/conv.py``).
- ``channel_sum``: per channel, the sum over batch and pixels (float64 accumulator).
- ``matmul``: ``op(A) @ op(B)``, one GEMM per block of output columns.

Buffers: conv2d_grad_input(gy, w, gx, scratch), conv2d_grad_weight(_shifted)(x, gy, gw,
scratch), conv2d_flip_weight(w, flipped), channel_sum(gy, out), matmul(a, b, c).
Attrs: conv [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups] then
grad_input [chunk, images, threads], grad_weight [block, pointwise, images, threads, transposed];
grad_weight_shifted [N, C, H, W, OC, OH, OW, KH, KW, PT, PB, PL, PR, DH, DW, groups, images,
threads]; flip_weight [OC, C/g, KH, KW, groups]; channel_sum [N, C, inner];
matmul [M, N, K, trans_a, trans_b, lda, ldb, block].
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from backends.cpu import winograd
from backends.cpu.blas import matmul as gemm_block
from backends.cpu.conv import (
    BLOCK_BYTES,
    DIRECT_MAX_CHANNELS,
    im2col_images,
    images_per_task,
    is_pointwise,
    pad_plane,
    rows_and_block,
)
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import valid_range
from graph.ir import Node

# Output channels per group up to which the im2col grad_weight GEMM is computed transposed.
TRANSPOSED_MAX_CHANNELS = 16


@njit(inline="always", cache=True)
def _stage_grads(gy, first, count, g, oc, ocg, ohw, start, width, staged, slot):
    """Copy the output gradient of ``count`` images (columns start..start+width of group g)
    side by side into one [OC/g, count*width] matrix, so one GEMM covers all of them."""
    for o in range(ocg):
        for m in range(count):
            at = ((first + m) * oc + g * ocg + o) * ohw + start
            row = slot + (o * count + m) * width
            staged[row : row + width] = gy[at : at + width]


@kernel(buffers=4)
def conv2d_grad_input(gy, w, gx, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups = a[:16]
    chunk, images, threads = a[16], a[17], a[18]
    cg, ocg, ohw, taps = c // groups, oc // groups, oh * ow, kh * kw
    chunks, sets, span = (cg + chunk - 1) // chunk, (n + images - 1) // images, images * ohw
    # scratch: [columns per thread: chunk*taps x span | staged gradients per thread: OC/g x span]
    cols, staged = (
        scratch[: threads * chunk * taps * span],
        scratch[threads * chunk * taps * span :],
    )
    for task in prange(sets * groups * chunks):
        first, g = task // (groups * chunks) * images, (task // chunks) % groups
        start_channel = (task % chunks) * chunk
        count, channels = min(images, n - first), min(chunk, cg - start_channel)
        tid = get_thread_id()
        slot, columns = tid * chunk * taps * span, count * ohw
        weights = (w, g * ocg * cg * taps + start_channel * taps, cg * taps)
        if images == 1:
            grads = (gy, (first * oc + g * ocg) * ohw, ohw)
        else:
            _stage_grads(gy, first, count, g, oc, ocg, ohw, 0, ohw, staged, tid * ocg * span)
            grads = (staged, tid * ocg * span, columns)
        gemm_block(channels * taps, columns, ocg, weights, grads, (cols, slot, columns), trans_a=1)
        for m in range(count):
            for cc in range(channels):
                plane = ((first + m) * c + g * cg + start_channel + cc) * h * wd
                gx[plane : plane + h * wd] = 0
                for t in range(taps):
                    at = slot + (cc * taps + t) * columns + m * ohw
                    _col2im_row(
                        gx,
                        cols[at : at + ohw],
                        plane,
                        h,
                        wd,
                        ow,
                        oh,
                        sh,
                        sw,
                        pt,
                        pl,
                        t // kw * dh,
                        t % kw * dw,
                    )
    return 0


@njit(inline="always", cache=True)
def _col2im_row(gx, row, plane, h, wd, ow, oh, sh, sw, pt, pl, dy, dx):
    """Add one tap's row of columns back onto the input positions the tap read. Flat unsigned
    indices, no slice views: small maps have rows too short to pay for two views per row
    (LeNet's 14x14 grad_input: 333 -> 248 us, native BLAS)."""
    y_lo, y_hi = valid_range(oh, h, sh, pt, dy)
    x_lo, x_hi = valid_range(ow, wd, sw, pl, dx)
    for oy in range(y_lo, y_hi):
        base, src = plane + (oy * sh - pt + dy) * wd - pl + dx, oy * ow
        if sw == 1:
            for j in range(x_lo, x_hi):
                gx[np.uint64(base + j)] += row[np.uint64(src + j)]
        else:
            for j in range(x_lo, x_hi):
                gx[np.uint64(base + j * sw)] += row[np.uint64(src + j)]


@kernel(buffers=4)
def conv2d_grad_weight(x, gy, gw, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups = a[:16]
    block, pointwise, images, threads, transposed = a[16], a[17], a[18], a[19], a[20]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    rows, blocks, size = cg * kh * kw, (ohw + block - 1) // block, oc * cg * kh * kw
    sets, span = (n + images - 1) // images, images * block
    # scratch: [partial gradients per thread | im2col columns per thread | staged gradients]
    partial = scratch[: threads * size]
    cols = scratch[threads * size : threads * (size + rows * span)]
    staged = scratch[threads * (size + rows * span) :]
    partial[:] = 0
    for task in prange(sets * groups * blocks):
        first, g = task // (groups * blocks) * images, (task // blocks) % groups
        start = (task % blocks) * block
        count, width = min(images, n - first), min(block, ohw - start)
        tid, columns = get_thread_id(), count * width
        if pointwise and images == 1:
            patches = (x, (first * c + g * cg) * hw + start, hw)
        else:
            geometry = (h, wd, ow, kh, kw, sh, sw, pt, pl, dh, dw)
            im2col_images(
                x, first, count, c, g * cg, geometry, rows, start, width, cols, tid * rows * span
            )
            patches = (cols, tid * rows * span, columns)
        if images == 1:
            grads = (gy, (first * oc + g * ocg) * ohw + start, ohw)
        else:
            _stage_grads(gy, first, count, g, oc, ocg, ohw, start, width, staged, tid * ocg * span)
            grads = (staged, tid * ocg * span, columns)
        if transposed:  # partial of group g is [rows, OC/g]
            target = (partial, tid * size + g * ocg * rows, ocg)
            gemm_block(rows, ocg, columns, patches, grads, target, beta=1.0, trans_b=1)
        else:
            target = (partial, tid * size + g * ocg * rows, rows)
            gemm_block(ocg, rows, columns, grads, patches, target, beta=1.0, trans_b=1)
    for e in prange(size):  # e indexes gw [OC, C/g, KH, KW]
        at = np.int64(e)
        if transposed:  # element (g, o, r) of gW sits at (g*rows + r)*OC/g + o
            at = (at // (ocg * rows) * rows + at % rows) * ocg + at // rows % ocg
        total = partial[at]
        for t in range(1, threads):
            total += partial[t * size + at]
        gw[e] = total
    return 0


@kernel(buffers=4)
def conv2d_grad_weight_shifted(x, gy, gw, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, pt, pb, pl, pr, dh, dw, groups = a[:16]
    images, threads = a[16], a[17]
    cg, ocg, taps, size = c // groups, oc // groups, kh * kw, oc * (c // groups) * kh * kw
    wp, hp = wd + pl + pr, h + pt + pb
    span, slack = images * hp * wp, (kh - 1) * dh * wp + (kw - 1) * dw
    sets = (n + images - 1) // images
    # scratch per thread: [partial gradient, tap-major | padded images | output gradient, wide]
    per_thread = size + cg * (span + slack) + ocg * span
    for k in range(threads):
        scratch[k * per_thread : k * per_thread + size] = 0
    for task in prange(sets * groups):
        first, g = task // groups * images, task % groups
        count, base = min(images, n - first), get_thread_id() * per_thread
        padded, wide = base + size, base + size + cg * (span + slack)
        scratch[padded : wide + ocg * span] = 0
        for ci in range(cg):
            for m in range(count):
                plane = ((first + m) * c + g * cg + ci) * h * wd
                at = padded + ci * (span + slack) + m * hp * wp
                pad_plane(x[plane : plane + h * wd], scratch, at, h, wd, pt, pl, wp, hp * wp)
        for o in range(ocg):
            for m in range(count):
                src = ((first + m) * oc + g * ocg + o) * oh * ow
                for r in range(oh):
                    at = wide + o * span + m * hp * wp + r * wp
                    scratch[at : at + ow] = gy[src + r * ow : src + (r + 1) * ow]
        for t in range(taps):
            shift = t // kw * dh * wp + t % kw * dw
            target = (scratch, base + (g * taps + t) * ocg * cg, cg)
            gemm_block(
                ocg,
                cg,
                span,
                (scratch, wide, span),
                (scratch, padded + shift, span + slack),
                target,
                beta=1.0,
                trans_b=1,
            )
    for e in prange(size):  # e indexes gw [OC, C/g, KH, KW]; partials are [g, tap, OC/g, C/g]
        o, rest = e // (cg * taps), e % (cg * taps)
        ci, t = rest // taps, rest % taps
        at = ((o // ocg * taps + t) * ocg + o % ocg) * cg + ci
        total = scratch[at]
        for k in range(1, threads):
            total += scratch[k * per_thread + at]
        gw[e] = total
    return 0


@kernel(buffers=2)
def conv2d_flip_weight(w, flipped, a):
    """flipped[g*C/g + ci, o, ki, kj] = w[g*OC/g + o, ci, KH-1-ki, KW-1-kj], written in
    order (each task one row of ``flipped``) and read at a stride: kernels of 9 values
    scattered over the writes made every store a partial cache line."""
    oc, cg, kh, kw, groups = a[0], a[1], a[2], a[3], a[4]
    ocg, taps = oc // groups, kh * kw
    for row in prange(groups * cg):
        g, ci = row // cg, row % cg
        for og in range(ocg):
            src = ((g * ocg + og) * cg + ci) * taps
            dst = (row * ocg + og) * taps
            for t in range(taps):
                flipped[dst + taps - 1 - t] = w[src + t]
    return 0


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
    for task in prange((n + block - 1) // block):
        start = task * block
        width = min(block, n - start)
        right = (q, start * ldb if trans_b else start, ldb)
        gemm_block(m, width, k, (p, 0, lda), right, (out, start, n), 0.0, trans_a, trans_b)
    return 0


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


def _as_forward(node: Node) -> Node:
    """The forward conv node a backward node mirrors (for the shared blocking rules)."""
    if node.op == "conv2d_grad_input":
        gy, w = node.inputs
        return Node("conv2d", [node.outputs[0], w], [gy], node.attrs, node.name)
    x, gy = node.inputs
    return Node("conv2d", [x, node.outputs[0]], [gy], node.attrs, node.name)


def _grad_input_chunk(node: Node) -> int:
    """Input channels per grad_input task: as many as keep the columns near BLOCK_BYTES."""
    gy, w = node.inputs
    span = images_per_task(_as_forward(node)) * gy.shape[2] * gy.shape[3]
    taps = w.shape[2] * w.shape[3]
    return max(1, min(w.shape[1], BLOCK_BYTES // (taps * span * gy.type.itemsize)))


def _grad_input_scratch_numel(node: Node) -> int:
    gy, w = node.inputs
    span = images_per_task(_as_forward(node)) * gy.shape[2] * gy.shape[3]
    per_thread = (_grad_input_chunk(node) * w.shape[2] * w.shape[3] + w.shape[0]) * span
    return numba.config.NUMBA_NUM_THREADS * per_thread


@lowers(
    "conv2d_grad_input",
    scratch=lambda node: _grad_input_scratch_numel(node) * node.outputs[0].type.itemsize,
)
def _lower_conv2d_grad_input(node: Node, io: NodeIO):
    gy, w = node.inputs
    gx, threads = node.outputs[0], numba.config.NUMBA_NUM_THREADS
    attrs = _conv_attrs(node, gx.shape, w.shape, gy.shape)
    attrs += [_grad_input_chunk(node), images_per_task(_as_forward(node)), threads]
    scratch = io.scratch(_grad_input_scratch_numel(node))
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


def _grad_weight_is_shifted(node: Node) -> bool:
    """Stride-1 convs on maps large enough for one image per task; on small maps the padding
    ring of the wide grid would more than double the GEMM work, so im2col wins there. Thin
    convs (fewer than DIRECT_MAX_CHANNELS channels per group on either side) also take im2col:
    a per-tap GEMM of [OC/g, C/g] is a matrix-vector product that costs a BLAS call per tap
    and image (LeNet's 1->6 5x5: 2.4 ms with the shifted GEMMs, about 0.2 ms with im2col)."""
    forward = _as_forward(node)
    oc, cg = node.outputs[0].shape[:2]
    return (
        node.attrs["stride"] == (1, 1)
        and not is_pointwise(forward)
        and images_per_task(forward) == 1
        and min(cg, oc // node.attrs["groups"]) >= DIRECT_MAX_CHANNELS
    )


def _grad_weight_scratch_numel(node: Node) -> int:
    forward, threads = _as_forward(node), numba.config.NUMBA_NUM_THREADS
    if winograd.is_winograd(forward):
        return winograd.scratch_numel(forward, weight_gradient=True)
    images, (oc, cg, kh, kw) = images_per_task(forward), node.outputs[0].shape
    if _grad_weight_is_shifted(node):
        (_, _, h, wd), (pt, pb, pl, pr) = node.inputs[0].shape, node.attrs["padding"]
        wp, (dh, dw) = wd + pl + pr, node.attrs["dilation"]
        span = images * (h + pt + pb) * wp
        padded = cg * (span + (kh - 1) * dh * wp + (kw - 1) * dw)
        return threads * (oc * cg * kh * kw + padded + oc // node.attrs["groups"] * span)
    rows, block = rows_and_block(forward)
    span = images * block
    cols = 0 if is_pointwise(forward) and images == 1 else rows * span
    staged = oc * span if images > 1 else 0
    return threads * (node.outputs[0].type.numel + cols + staged)


def _grad_weight_is_transposed(node: Node) -> bool:
    """Whether the im2col grad_weight GEMM computes gW^T ([C/g*KH*KW, OC/g] per group) rather
    than gW: OpenBLAS's Haswell kernels run a small row-major [M, N] product about twice as
    fast with the smaller dimension as N (LeNet's [6, 25] and [16, 150]). Large products go
    the other way (ResNet's [512, 4608]: 18.3 ms transposed, 9.6 ms not), so only thin ones
    (at most TRANSPOSED_MAX_CHANNELS output channels per group) are transposed."""
    oc, cg, kh, kw = node.outputs[0].shape
    ocg = oc // node.attrs["groups"]
    return ocg <= TRANSPOSED_MAX_CHANNELS and cg * kh * kw > ocg


@lowers(
    "conv2d_grad_weight",
    scratch=lambda node: _grad_weight_scratch_numel(node) * node.outputs[0].type.itemsize,
)
def _lower_conv2d_grad_weight(node: Node, io: NodeIO):
    x, gy = node.inputs
    forward, threads = _as_forward(node), numba.config.NUMBA_NUM_THREADS
    scratch = io.scratch(_grad_weight_scratch_numel(node))
    work = gy.type.numel * node.outputs[0].type.numel // gy.shape[1]
    buffers = [io.input(0), io.input(1), io.output(), scratch]
    if winograd.is_winograd(forward):
        attrs = winograd.attrs(forward, weight_gradient=True)
        kernel = winograd.conv2d_grad_weight_winograd
        return [kernel.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]
    if _grad_weight_is_shifted(node):
        pt, pb, pl, pr = node.attrs["padding"]
        attrs = [
            *x.shape,
            *node.outputs[0].shape[:1],
            *gy.shape[2:],
            *node.outputs[0].shape[2:],
            pt,
            pb,
            pl,
            pr,
            *node.attrs["dilation"],
            node.attrs["groups"],
            images_per_task(forward),
            threads,
        ]
        return [
            conv2d_grad_weight_shifted.step(node.name, io.dtype, io.parallel(work), buffers, attrs)
        ]
    attrs = _conv_attrs(node, x.shape, node.outputs[0].shape, gy.shape)
    attrs += [
        rows_and_block(forward)[1],
        int(is_pointwise(forward)),
        images_per_task(forward),
        threads,
        int(_grad_weight_is_transposed(node)),
    ]
    return [conv2d_grad_weight.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]


@lowers("conv2d_flip_weight")
def _lower_conv2d_flip_weight(node: Node, io: NodeIO):
    ints = [*node.inputs[0].shape, node.attrs["groups"]]
    parallel = io.parallel(node.inputs[0].type.numel)
    return [
        conv2d_flip_weight.step(node.name, io.dtype, parallel, [io.input(0), io.output()], ints)
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
