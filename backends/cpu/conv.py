"""CPU convolution and linear kernels.

Layout: NCHW activations, OIHW weights, flat buffers (see ``kernels.py``).

- ``conv2d_gemm``: the output pixels of each (image, group) are cut into blocks of ``block``
  pixels; each block is one task on Numba's threads: im2col of just that block into the task's
  thread slot of the scratch buffer (rows ``(ci, ki, kj)``, ``block`` columns, sized to stay
  in the L2 cache), then one single-threaded GEMM ``W_g [OC/g, C/g*KH*KW] @ cols`` written
  straight into the block's columns of the output (leading dimension OH*OW), then the bias.
  A pointwise conv (1x1, stride 1, no padding) skips im2col: the image is the column matrix.
- ``conv2d_direct``: direct loops, parallel over (image, output channel) planes; each tap
  (input channel, ki, kj) is a branch-free, vectorisable run over the outputs whose input lies
  inside the image. Chosen for depthwise convs and for convs too small in output channels or
  taps for a GEMM to pay off.
- ``linear``: ``y = x @ W.T + b``, one GEMM per block of output features.

Buffers: conv2d_gemm(x, w, b, y, cols), conv2d_direct(x, w, b, y), linear(x, w, b, y);
``b`` is empty when the layer has no bias.
Attrs: [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups, pointwise, block];
linear [N, in_features, out_features, block].
"""

from __future__ import annotations

import numba
from numba import get_thread_id, njit, prange

from backends.cpu.blas import gemm
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import axpy, valid_range
from graph.ir import Node

# im2col blocks aim at this many bytes, so a block stays in L2 while the GEMM reads it.
BLOCK_BYTES = 256 * 1024
# Below this many output channels per group, a GEMM's M dimension is too thin for BLAS.
DIRECT_MAX_CHANNELS = 8
# Below this many MACs per image, im2col and a BLAS call cost more than direct loops.
DIRECT_MAX_MACS = 1 << 20


@njit(cache=True)
def _im2col_block(
    x, src, h, wd, ow, kh, kw, sh, sw, pt, pl, dh, dw, rows, start, width, cols, slot
):
    """cols[slot + r*width + j] = the input under tap r for output pixel start + j (0 if the
    tap falls in the padding)."""
    for r in range(rows):
        ci, kk = r // (kh * kw), r % (kh * kw)
        ki, kj = kk // kw, kk % kw
        x_lo, x_hi = valid_range(ow, wd, sw, pl, kj * dw)
        p = start
        while p < start + width:
            oy, ox0 = p // ow, p % ow
            ox1 = min(ow, ox0 + start + width - p)
            out = slot + r * width + p - start - ox0  # cols index of output column ox
            iy = oy * sh - pt + ki * dh
            lo, hi = max(ox0, x_lo), min(ox1, x_hi)
            if iy < 0 or iy >= h or lo >= hi:
                cols[out + ox0 : out + ox1] = 0
            else:
                cols[out + ox0 : out + lo] = 0
                base = src + (ci * h + iy) * wd - pl + kj * dw
                if sw == 1:
                    cols[out + lo : out + hi] = x[base + lo : base + hi]
                else:
                    cols[out + lo : out + hi] = x[base + lo * sw : base + (hi - 1) * sw + 1 : sw]
                cols[out + hi : out + ox1] = 0
            p += ox1 - ox0


@kernel(buffers=5)
def conv2d_gemm(x, w, b, y, cols, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, pointwise, block = a[:18]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    rows, blocks = cg * kh * kw, (ohw + block - 1) // block
    status = 0
    for task in prange(n * groups * blocks):
        i, g = task // (groups * blocks), (task // blocks) % groups
        start = (task % blocks) * block
        width = min(block, ohw - start)
        src, dst = (i * c + g * cg) * hw, (i * oc + g * ocg) * ohw + start
        if pointwise:
            code = gemm(
                0,
                0,
                ocg,
                width,
                rows,
                w,
                g * ocg * rows,
                rows,
                x,
                src + start,
                hw,
                0.0,
                y,
                dst,
                ohw,
            )
        else:
            slot = get_thread_id() * rows * block
            _im2col_block(
                x, src, h, wd, ow, kh, kw, sh, sw, pt, pl, dh, dw, rows, start, width, cols, slot
            )
            code = gemm(
                0, 0, ocg, width, rows, w, g * ocg * rows, rows, cols, slot, width, 0.0, y, dst, ohw
            )
        if code != 0:
            status = code
        if b.shape[0]:
            for o in range(ocg):
                y[dst + o * ohw : dst + o * ohw + width] += b[g * ocg + o]
    return status


@kernel(buffers=4)
def conv2d_direct(x, w, b, y, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups = a[:16]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    for p in prange(n * oc):
        i, o = p // oc, p % oc
        out = y[p * ohw : (p + 1) * ohw]
        out[:] = b[o] if b.shape[0] else 0
        for ci in range(cg):
            plane = (i * c + (o // ocg) * cg + ci) * hw
            for ki in range(kh):
                y_lo, y_hi = valid_range(oh, h, sh, pt, ki * dh)
                for kj in range(kw):
                    x_lo, x_hi = valid_range(ow, wd, sw, pl, kj * dw)
                    weight = w[((o * cg + ci) * kh + ki) * kw + kj]
                    for oy in range(y_lo, y_hi):
                        base = plane + (oy * sh - pt + ki * dh) * wd - pl + kj * dw
                        dst = out[oy * ow + x_lo : oy * ow + x_hi]
                        if sw == 1:
                            axpy(dst, x[base + x_lo : base + x_hi], weight)
                        else:
                            axpy(dst, x[base + x_lo * sw : base + (x_hi - 1) * sw + 1 : sw], weight)
    return 0


@kernel(buffers=4)
def linear(x, w, b, y, a):
    n, in_features, out_features, block = a[0], a[1], a[2], a[3]
    status = 0
    for task in prange((out_features + block - 1) // block):
        start = task * block
        width = min(block, out_features - start)
        code = gemm(
            0,
            1,
            n,
            width,
            in_features,
            x,
            0,
            in_features,
            w,
            start * in_features,
            in_features,
            0.0,
            y,
            start,
            out_features,
        )
        if code != 0:
            status = code
        if b.shape[0]:
            for i in range(n):
                y[i * out_features + start : i * out_features + start + width] += b[
                    start : start + width
                ]
    return status


def _is_direct(node: Node) -> bool:
    """Depthwise convs, and convs whose GEMM would be too thin (few output channels per group
    or few taps) or too small to repay im2col and a BLAS call, run as direct loops."""
    oc, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    thin = oc // node.attrs["groups"] < DIRECT_MAX_CHANNELS or cg * kh * kw < 16
    return cg == 1 or thin or oc * cg * kh * kw * oh * ow < DIRECT_MAX_MACS


def _is_pointwise(node: Node) -> bool:
    kh, kw = node.inputs[1].shape[2:]
    return (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1) and not any(node.attrs["padding"])


def _rows_and_block(node: Node) -> tuple[int, int]:
    """im2col rows, and the pixel block: the L2 budget's worth of columns, a multiple of 16."""
    _, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    rows = cg * kh * kw
    columns = BLOCK_BYTES // (rows * node.outputs[0].type.itemsize)
    return rows, min(oh * ow, max(64, columns // 16 * 16))


def _conv2d_scratch(node: Node) -> int:
    """One im2col block per Numba thread (none for direct and pointwise convs)."""
    if _is_direct(node) or _is_pointwise(node):
        return 0
    rows, block = _rows_and_block(node)
    return numba.config.NUMBA_NUM_THREADS * rows * block * node.outputs[0].type.itemsize


@lowers("conv2d", scratch=_conv2d_scratch)
def _lower_conv2d(node: Node, io: NodeIO):
    x, w = node.inputs[0], node.inputs[1]
    (n, c, h, wd), (oc, cg, kh, kw) = x.shape, w.shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _), (dh, dw) = (
        node.attrs["stride"],
        node.attrs["padding"],
        node.attrs["dilation"],
    )
    rows, block = _rows_and_block(node)
    attrs = [
        n,
        c,
        h,
        wd,
        oc,
        oh,
        ow,
        kh,
        kw,
        sh,
        sw,
        pt,
        pl,
        dh,
        dw,
        node.attrs["groups"],
        int(_is_pointwise(node)),
        block,
    ]
    bias = io.input(2) if len(node.inputs) == 3 else io.empty()
    work = io.output()[1] * cg * kh * kw
    if _is_direct(node):
        buffers = [io.input(0), io.input(1), bias, io.output()]
        return [conv2d_direct.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]
    cols = io.scratch(numba.config.NUMBA_NUM_THREADS * rows * block)
    buffers = [io.input(0), io.input(1), bias, io.output(), cols]
    return [conv2d_gemm.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]


@lowers("linear")
def _lower_linear(node: Node, io: NodeIO):
    (n, in_features), out_features = node.inputs[0].shape, node.inputs[1].shape[0]
    bias = io.input(2) if len(node.inputs) == 3 else io.empty()
    buffers = [io.input(0), io.input(1), bias, io.output()]
    threads = numba.config.NUMBA_NUM_THREADS
    block = max(16, -(-out_features // threads))
    work = n * in_features * out_features
    return [
        linear.step(
            node.name, io.dtype, io.parallel(work), buffers, [n, in_features, out_features, block]
        )
    ]
