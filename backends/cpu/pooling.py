"""CPU pooling kernels over NCHW planes, parallel over (image, channel) planes.

- ``window_pool``: max or average over sliding windows, tap by tap (each kernel tap is a
  branch-free run over the outputs that read inside the input, as in ``conv2d_direct``), with
  PyTorch's rules: max propagates NaN and ignores padding; average divides by the window
  clipped to the padded input (``count_include_pad``) or to the input alone, where the padded
  window end is ``min(start + K, size + pad)``; both counts factor into rows x columns.
- ``adaptive_pool``: max or average over PyTorch's adaptive windows
  ``[floor(i*H/OH), ceil((i+1)*H/OH))``; ``global_avg_pool2d`` is the 1x1 case.
Adaptive sums accumulate in float64.

Buffers: (x, y). Attrs: window_pool [planes, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW,
is_max, count_include_pad]; adaptive_pool [planes, H, W, OH, OW, is_max].
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import max_into, valid_range
from graph.ir import Node


@njit(inline="always", cache=True)
def _window_count(o, stride, pad, kernel, size, count_pad):
    """Elements PyTorch divides by along one axis for output o of an average pool."""
    start = o * stride - pad
    end = min(start + kernel, size + pad)
    return end - start if count_pad else min(end, size) - max(start, 0)


@njit(inline="always", cache=True)
def _pool_row(dst, row, is_max):
    """Fold one tap's row of inputs into the outputs: running max, or running sum."""
    if is_max:
        max_into(dst, row)
    else:
        for j in range(dst.shape[0]):
            dst[j] += row[j]


@kernel(buffers=2)
def window_pool(x, y, a):
    planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad = a[:15]
    for p in prange(planes):
        src = p * h * w
        out = y[p * oh * ow : (p + 1) * oh * ow]
        out[:] = -np.inf if is_max else 0
        for ki in range(kh):
            y_lo, y_hi = valid_range(oh, h, sh, ph, ki * dh)
            for kj in range(kw):
                x_lo, x_hi = valid_range(ow, w, sw, pw, kj * dw)
                for oy in range(y_lo, y_hi):
                    base = src + (oy * sh - ph + ki * dh) * w - pw + kj * dw
                    dst = out[oy * ow + x_lo : oy * ow + x_hi]
                    if sw == 1:
                        _pool_row(dst, x[base + x_lo : base + x_hi], is_max)
                    else:
                        _pool_row(
                            dst, x[base + x_lo * sw : base + (x_hi - 1) * sw + 1 : sw], is_max
                        )
        if not is_max:
            for oy in range(oh):
                rows = _window_count(oy, sh, ph, kh, h, count_pad)
                for ox in range(ow):
                    out[oy * ow + ox] /= rows * _window_count(ox, sw, pw, kw, w, count_pad)
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
    return [
        window_pool.step(
            node.name, io.dtype, io.parallel(work), [io.input(0), io.output()], ints + flags
        )
    ]


@lowers("adaptive_max_pool2d", "adaptive_avg_pool2d", "global_avg_pool2d")
def _lower_adaptive_pool(node: Node, io: NodeIO):
    ints = _planes(node) + [int(node.op == "adaptive_max_pool2d")]
    work = io.input(0)[1]
    return [
        adaptive_pool.step(node.name, io.dtype, io.parallel(work), [io.input(0), io.output()], ints)
    ]
