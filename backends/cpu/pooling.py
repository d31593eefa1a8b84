"""CPU pooling kernels over NCHW planes, parallel over (image, channel) planes.

- ``window_pool``: max or average over sliding windows, with PyTorch's rules: max propagates
  NaN and ignores padding; average divides by the window clipped to the padded input
  (``count_include_pad``) or to the input alone, where the padded window end is
  ``min(start + K, size + pad)``.
- ``adaptive_pool``: max or average over PyTorch's adaptive windows
  ``[floor(i*H/OH), ceil((i+1)*H/OH))``; ``global_avg_pool2d`` is the 1x1 case.
Sums accumulate in float64.

Buffers: (x, y). Attrs: window_pool [planes, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
is_max, count_include_pad]; adaptive_pool [planes, H, W, OH, OW, is_max].
"""

from __future__ import annotations

import numpy as np
from numba import prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@kernel(buffers=2)
def window_pool(x, y, a):
    planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad = a[:15]
    for p in prange(planes):
        src, dst = p * h * w, p * oh * ow
        for oy in range(oh):
            y0 = oy * sh - ph
            for ox in range(ow):
                x0 = ox * sw - pw
                if is_max:
                    best = -np.inf
                    for ki in range(kh):
                        iy = y0 + ki * dh
                        if 0 <= iy < h:
                            for kj in range(kw):
                                ix = x0 + kj * dw
                                if 0 <= ix < w:
                                    v = x[src + iy * w + ix]
                                    if v > best or v != v:
                                        best = v
                    y[dst + oy * ow + ox] = best
                else:
                    y_end, x_end = min(y0 + kh, h + ph), min(x0 + kw, w + pw)
                    padded_count = (y_end - y0) * (x_end - x0)
                    ys, ye, xs, xe = max(y0, 0), min(y_end, h), max(x0, 0), min(x_end, w)
                    total = 0.0
                    for iy in range(ys, ye):
                        for ix in range(xs, xe):
                            total += x[src + iy * w + ix]
                    count = padded_count if count_pad else (ye - ys) * (xe - xs)
                    y[dst + oy * ow + ox] = total / count
    return 0


@kernel(buffers=2)
def adaptive_pool(x, y, a):
    planes, h, w, oh, ow, is_max = a[:6]
    for p in prange(planes):
        src, dst = p * h * w, p * oh * ow
        for oy in range(oh):
            ys, ye = (oy * h) // oh, -((-(oy + 1) * h) // oh)
            for ox in range(ow):
                xs, xe = (ox * w) // ow, -((-(ox + 1) * w) // ow)
                best, total = -np.inf, 0.0
                for iy in range(ys, ye):
                    for ix in range(xs, xe):
                        v = x[src + iy * w + ix]
                        total += v
                        if v > best or v != v:
                            best = v
                y[dst + oy * ow + ox] = best if is_max else total / ((ye - ys) * (xe - xs))
    return 0


def _planes(node: Node) -> list[int]:
    n, c, h, w = node.inputs[0].shape
    _, _, oh, ow = node.outputs[0].shape
    return [n * c, h, w, oh, ow]


@lowers("max_pool2d", "avg_pool2d")
def _lower_window_pool(node: Node, io: NodeIO):
    attrs = node.attrs
    dilation = attrs.get("dilation", (1, 1))
    flags = [int(node.op == "max_pool2d"), int(attrs.get("count_include_pad", False))]
    ints = _planes(node) + [*attrs["kernel"], *attrs["stride"], *attrs["padding"], *dilation]
    work = io.output()[1] * attrs["kernel"][0] * attrs["kernel"][1]
    return [window_pool.step(node.name, io.dtype, io.parallel(work), [io.input(0), io.output()],
                             ints + flags)]


@lowers("adaptive_max_pool2d", "adaptive_avg_pool2d", "global_avg_pool2d")
def _lower_adaptive_pool(node: Node, io: NodeIO):
    ints = _planes(node) + [int(node.op == "adaptive_max_pool2d")]
    work = io.input(0)[1]
    return [adaptive_pool.step(node.name, io.dtype, io.parallel(work), [io.input(0), io.output()],
                               ints)]
