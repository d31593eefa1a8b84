"""CPU convolution and linear kernels.

Layout: NCHW activations, OIHW weights, flat buffers (see ``kernels.py``).

- ``conv2d_gemm``: per image and group, im2col into the planned scratch buffer (rows
  ``(ci, ki, kj)``, columns output pixels), then one BLAS GEMM ``W_g [OC/g, C/g*KH*KW] @ cols``
  straight into the output, then the bias. A pointwise conv (1x1, stride 1, no padding) skips
  im2col: the image itself is the column matrix. The im2col loops are parallel over rows; the
  GEMM uses OpenBLAS's threads (SciPy's BLAS, which ``np.dot`` calls inside njit).
- ``conv2d_depthwise``: direct, for convs with one input channel per group (depthwise, with any
  channel multiplier), parallel over (image, output channel) planes; each tap is a branch-free
  run over the outputs whose input lies inside the image.
- ``linear``: ``y = x @ W.T + b`` as one GEMM.

Buffers: conv2d_gemm(x, w, b, y, cols), conv2d_depthwise(x, w, b, y), linear(x, w, b, y);
``b`` is empty when the layer has no bias.
Attrs: [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups, pointwise].
"""

from __future__ import annotations

import numpy as np
from numba import prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import valid_range
from graph.ir import Node


@kernel(buffers=5)
def conv2d_gemm(x, w, b, y, cols, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, pointwise = a[:17]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    rows = cg * kh * kw
    for i in range(n):
        for g in range(groups):
            src = (i * c + g * cg) * hw
            if pointwise:
                matrix = x[src : src + rows * ohw].reshape((rows, ohw))
            else:
                matrix = cols[: rows * ohw].reshape((rows, ohw))
                for r in prange(rows):
                    ci, kk = r // (kh * kw), r % (kh * kw)
                    ki, kj = kk // kw, kk % kw
                    plane = src + ci * hw
                    y_lo, y_hi = valid_range(oh, h, sh, pt, ki * dh)
                    x_lo, x_hi = valid_range(ow, wd, sw, pl, kj * dw)
                    row = matrix[r]
                    row[: y_lo * ow] = 0
                    row[y_hi * ow :] = 0
                    for oy in range(y_lo, y_hi):
                        base = plane + (oy * sh - pt + ki * dh) * wd - pl + kj * dw
                        out = oy * ow
                        row[out : out + x_lo] = 0
                        row[out + x_hi : out + ow] = 0
                        for ox in range(x_lo, x_hi):
                            row[out + ox] = x[base + ox * sw]
            dst = (i * oc + g * ocg) * ohw
            weights = w[g * ocg * rows : (g + 1) * ocg * rows].reshape((ocg, rows))
            np.dot(weights, matrix, y[dst : dst + ocg * ohw].reshape((ocg, ohw)))
        if b.shape[0]:
            for o in prange(oc):
                start = (i * oc + o) * ohw
                y[start : start + ohw] += b[o]
    return 0


@kernel(buffers=4)
def conv2d_depthwise(x, w, b, y, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw = a[:15]
    multiplier, hw, ohw = oc // c, h * wd, oh * ow
    for p in prange(n * oc):
        i, o = p // oc, p % oc
        plane = (i * c + o // multiplier) * hw
        out = y[p * ohw : (p + 1) * ohw]
        out[:] = b[o] if b.shape[0] else 0
        for ki in range(kh):
            y_lo, y_hi = valid_range(oh, h, sh, pt, ki * dh)
            for kj in range(kw):
                x_lo, x_hi = valid_range(ow, wd, sw, pl, kj * dw)
                weight = w[(o * kh + ki) * kw + kj]
                for oy in range(y_lo, y_hi):
                    base = plane + (oy * sh - pt + ki * dh) * wd - pl + kj * dw
                    for ox in range(x_lo, x_hi):
                        out[oy * ow + ox] += weight * x[base + ox * sw]
    return 0


@kernel(buffers=4)
def linear(x, w, b, y, a):
    n, in_features, out_features = a[0], a[1], a[2]
    out = y.reshape((n, out_features))
    np.dot(x.reshape((n, in_features)), w.reshape((out_features, in_features)).T, out)
    if b.shape[0]:
        for i in prange(n):
            out[i] += b
    return 0


def _is_depthwise(node: Node) -> bool:
    return node.inputs[1].shape[1] == 1 and node.attrs["groups"] > 1


def _is_pointwise(node: Node) -> bool:
    kh, kw = node.inputs[1].shape[2:]
    return (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1) and not any(
        node.attrs["padding"]
    )


def _conv2d_scratch(node: Node) -> int:
    if _is_depthwise(node) or _is_pointwise(node):
        return 0
    _, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    return cg * kh * kw * oh * ow * node.outputs[0].type.itemsize


@lowers("conv2d", scratch=_conv2d_scratch)
def _lower_conv2d(node: Node, io: NodeIO):
    x, w = node.inputs[0], node.inputs[1]
    (n, c, h, wd), (oc, cg, kh, kw) = x.shape, w.shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _), (dh, dw) = (
        node.attrs["stride"], node.attrs["padding"], node.attrs["dilation"],
    )
    attrs = [n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, node.attrs["groups"],
             int(_is_pointwise(node))]
    bias = io.input(2) if len(node.inputs) == 3 else io.empty()
    work = io.output()[1] * cg * kh * kw
    if _is_depthwise(node):
        buffers = [io.input(0), io.input(1), bias, io.output()]
        return [conv2d_depthwise.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]
    cols = io.scratch(cg * kh * kw * oh * ow)
    buffers = [io.input(0), io.input(1), bias, io.output(), cols]
    return [conv2d_gemm.step(node.name, io.dtype, io.parallel(work), buffers, attrs)]


@lowers("linear")
def _lower_linear(node: Node, io: NodeIO):
    (n, in_features), out_features = node.inputs[0].shape, node.inputs[1].shape[0]
    bias = io.input(2) if len(node.inputs) == 3 else io.empty()
    buffers = [io.input(0), io.input(1), bias, io.output()]
    return [linear.step(node.name, io.dtype, False, buffers, [n, in_features, out_features])]
