"""CPU pooling kernels over NCHW planes, parallel over (image, channel) planes.

- ``window_pool``: max or average over sliding windows, tap by tap: each input plane is split
  into its stride's phase planes (``phases.py``) in a per-thread slot of the scratch, filled
  with -inf (max) or 0 (average) where the window reads padding, so that every tap is one
  vectorised run over a block of the wide output grid (ResNet's 3x3/2 stem pool: 8x faster
  than strided reads per output row). A thread fills its phase planes once and then only
  places the input elements of each plane (``phases.place``): the fill stays where it is, and
  writing it per row cost as much as the copy. PyTorch's rules: max propagates NaN and ignores
  padding; average divides by the window clipped to the padded input (``count_include_pad``)
  or to the input alone, where the padded window end is ``min(start + K, size + pad)``; both
  counts factor into rows x columns.
- ``adaptive_pool``: max or average over PyTorch's adaptive windows
  ``[floor(i*H/OH), ceil((i+1)*H/OH))``; ``global_avg_pool2d`` is the 1x1 case. Average
  sums accumulate in float64 over contiguous runs (a whole plane for the global pool) in a
  reassociated order that vectorises: torch sums in float32 in its own order, so these match
  it within tolerance, not bit for bit (neither did the in-order sum).
- The gradients scatter each output's gradient back over its window, output by output in
  row-major order as PyTorch's CPU kernels do, into a zeroed input plane: average pooling spreads
  it evenly (divided by the forward pass's count), max pooling sends it to the element the
  forward pass picked (found again from the saved input, not stored as indices).

Buffers: window_pool (x, y, scratch); window_pool_grad and adaptive_pool_grad (gy, x, gx), x
empty for average pooling; adaptive_pool (x, y); global_avg_pool_grad (gy, gx). Attrs:
window_pool* [planes, H, W, OH, OW, KH, KW, SH, SW, PH, PW, DH, DW, is_max, count_include_pad]
(window_pool then HQ, WQ, block rows); adaptive_pool* [planes, H, W, OH, OW, is_max];
global_avg_pool_grad [planes, H*W].
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from backends.cpu import phases
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import max_into
from graph.ir import Node


@njit(inline="always", cache=True)
def _window_count(o, stride, pad, kernel, size, count_pad):
    """Elements PyTorch divides by along one axis for output o of an average pool."""
    start = o * stride - pad
    end = min(start + kernel, size + pad)
    return end - start if count_pad else min(end, size) - max(start, 0)


@njit(inline="always", cache=True)
def _adaptive_window(o, size, out_size):
    """PyTorch's adaptive window [floor(o*size/out), ceil((o+1)*size/out)) along one axis."""
    return (o * size) // out_size, -((-(o + 1) * size) // out_size)


@njit(inline="always", cache=True)
def _pool_row(dst, row, is_max):
    """Fold one tap's row of inputs into the outputs: running max, or running sum."""
    if is_max:
        max_into(dst, row)
    else:
        for j in range(dst.shape[0]):
            dst[j] += row[j]


@kernel(buffers=3)
def window_pool(x, y, scratch, a):
    planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad, hq, wq, rows = a[:18]
    plane, slack = sh * sw * hq * wq, (kw - 1) * dw // sw
    fill = -np.inf if is_max else 0.0
    shifts = phases.taps(kh, kw, dh, dw, sh, sw, hq, wq)
    slot = plane + slack + rows * wq
    fresh = np.ones(scratch.shape[0] // slot, np.bool_)
    for p in prange(planes):
        # this thread's slot: [phase planes | slack | accumulator block]
        thread = get_thread_id()
        at = thread * slot
        if fresh[thread]:  # fill the thread's phase planes once: place writes only the input
            scratch[at : at + plane + slack] = fill
            fresh[thread] = False
        phases.place(x, p * h * w, h, w, scratch, at, ph, pw, sh, sw, hq, wq)
        acc = scratch[at + plane + slack : at + plane + slack + rows * wq]
        out = y[p * oh * ow : (p + 1) * oh * ow]
        for oy0 in range(0, oh, rows):
            count = min(rows, oh - oy0)
            block = acc[: count * wq]
            block[:] = fill
            for t in range(kh * kw):
                start = at + oy0 * wq + shifts[t]
                _pool_row(block, scratch[start : start + count * wq], is_max)
            phases.unwiden(out[oy0 * ow : (oy0 + count) * ow], block, count, ow, wq)
        if not is_max:
            for oy in range(oh):
                rows_counted = _window_count(oy, sh, ph, kh, h, count_pad)
                for ox in range(ow):
                    out[oy * ow + ox] /= rows_counted * _window_count(ox, sw, pw, kw, w, count_pad)
    return 0


@njit(fastmath={"reassoc"}, cache=True)
def _run_sum(run):
    """float64 sum of a contiguous run. Reassociation lets LLVM split it over vector lanes:
    the in-order sum is one dependent add per element (4x slower on ResNet's 2048 x 7 x 7
    global pool). Not inlined into the kernel, where the flag would be lost; NaN and infinity
    still propagate (no ``nnan``/``ninf``)."""
    total = 0.0
    for j in range(run.shape[0]):
        total += run[j]
    return total


@njit(inline="always", cache=True)
def _adaptive_windows(size, out_size):
    """``_adaptive_window`` of every output along one axis, computed once per call (its
    floor divisions cost more than a 7x7 plane's sum when repeated per plane)."""
    bounds = np.empty(2 * out_size, np.int64)
    for o in range(out_size):
        bounds[2 * o], bounds[2 * o + 1] = _adaptive_window(o, size, out_size)
    return bounds


@kernel(buffers=2)
def adaptive_pool(x, y, a):
    planes, h, w, oh, ow, is_max = a[:6]
    rows, cols = _adaptive_windows(h, oh), _adaptive_windows(w, ow)
    for p in prange(planes):
        image, out = x[p * h * w : (p + 1) * h * w], y[p * oh * ow : (p + 1) * oh * ow]
        for oy in range(oh):
            ys, ye = rows[2 * oy], rows[2 * oy + 1]
            for ox in range(ow):
                xs, xe = cols[2 * ox], cols[2 * ox + 1]
                if not is_max:
                    total = 0.0
                    if xs == 0 and xe == w:  # whole rows: one run (the global pool)
                        total = _run_sum(image[ys * w : ye * w])
                    else:
                        for iy in range(ys, ye):
                            total += _run_sum(image[iy * w + xs : iy * w + xe])
                    out[oy * ow + ox] = total / ((ye - ys) * (xe - xs))
                    continue
                best = -np.inf
                for iy in range(ys, ye):
                    for ix in range(xs, xe):
                        v = image[iy * w + ix]
                        if v > best or v != v:
                            best = v
                out[oy * ow + ox] = best
    return 0


@kernel(buffers=3)
def window_pool_grad(gy, x, gx, a):
    """Max: each output's gradient goes to the first maximum of its window in (ki, kj) scan
    order, NaN winning, as PyTorch's kernel picks it. The picks of a plane are found first and
    scattered after: a ``+=`` at a data-dependent address right after the scan that computes
    it stalls the loads of the next window (measured 6x slower on LeNet's 2x2 pools).
    Average: each output's gradient is spread evenly over its window, divided by the forward
    pass's count."""
    planes, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, is_max, count_pad = a[:15]
    for p in prange(planes):
        src, dst = p * h * w, p * oh * ow
        plane, image, grads = gx[src : src + h * w], x[src : src + h * w], gy[dst : dst + oh * ow]
        plane[:] = 0
        if is_max:
            picks = np.empty(oh * ow, np.int64)
            for oy in range(oh):
                y0 = oy * sh - ph
                ki_lo, ki_hi = _taps_inside(y0, dh, kh, h)
                for ox in range(ow):
                    x0 = ox * sw - pw
                    kj_lo, kj_hi = _taps_inside(x0, dw, kw, w)
                    picks[oy * ow + ox] = _first_max(
                        image, y0, x0, w, dh, dw, ki_lo, ki_hi, kj_lo, kj_hi
                    )
            for j in range(oh * ow):
                plane[np.uint64(picks[j])] += grads[j]
            continue
        for oy in range(oh):
            y0 = oy * sh - ph
            for ox in range(ow):
                x0, g = ox * sw - pw, grads[oy * ow + ox]
                count = _window_count(oy, sh, ph, kh, h, count_pad) * _window_count(
                    ox, sw, pw, kw, w, count_pad
                )
                for iy in range(max(y0, 0), min(y0 + kh, h)):
                    for ix in range(max(x0, 0), min(x0 + kw, w)):
                        plane[iy * w + ix] += g / count
    return 0


@njit(inline="always", cache=True)
def _first_max(image, y0, x0, w, dh, dw, ki_lo, ki_hi, kj_lo, kj_hi):
    """Plane index of the first maximum of a window in (ki, kj) scan order, the first NaN
    winning, as PyTorch's kernel picks it. The scan only notes that it saw a NaN and a second
    scan finds it, so the hot loop carries no extra exit branch. Indices are unsigned (they
    are never negative), which drops Numba's wraparound branches."""
    at = (y0 + ki_lo * dh) * w + x0 + kj_lo * dw
    best, nan = image[np.uint64(at)], False
    for ki in range(ki_lo, ki_hi):
        row = (y0 + ki * dh) * w + x0
        for kj in range(kj_lo, kj_hi):
            v = image[np.uint64(row + kj * dw)]
            if v > best:
                best, at = v, row + kj * dw
            nan |= v != v
    if nan and best == best:
        for ki in range(ki_lo, ki_hi):
            row = (y0 + ki * dh) * w + x0
            for kj in range(kj_lo, kj_hi):
                if image[np.uint64(row + kj * dw)] != image[np.uint64(row + kj * dw)]:
                    return row + kj * dw
    return at


@njit(inline="always", cache=True)
def _taps_inside(start, dilation, kernel, size):
    """[lo, hi) of the taps k with 0 <= start + k*dilation < size (without a division when
    undilated: it runs per output, and Numba's floor division costs tens of cycles)."""
    if dilation == 1:
        return max(0, -start), max(max(0, -start), min(kernel, size - start))
    lo = 0 if start >= 0 else (-start + dilation - 1) // dilation
    hi = min(kernel, (size - 1 - start) // dilation + 1)
    return lo, max(lo, hi)


@kernel(buffers=3)
def adaptive_pool_grad(gy, x, gx, a):
    """Max: the first maximum of each window in row-major order, a NaN replacing it (the
    forward pass's choice, and PyTorch's); average: an even share per window element."""
    planes, h, w, oh, ow, is_max = a[:6]
    for p in prange(planes):
        src, dst = p * h * w, p * oh * ow
        plane = gx[src : src + h * w]
        plane[:] = 0
        for oy in range(oh):
            ys, ye = _adaptive_window(oy, h, oh)
            for ox in range(ow):
                xs, xe = _adaptive_window(ox, w, ow)
                g = gy[dst + oy * ow + ox]
                if is_max:
                    best, at = -np.inf, ys * w + xs
                    for iy in range(ys, ye):
                        for ix in range(xs, xe):
                            v = x[src + iy * w + ix]
                            if v > best or v != v:
                                best, at = v, iy * w + ix
                    plane[at] += g
                else:
                    share = g / ((ye - ys) * (xe - xs))
                    for iy in range(ys, ye):
                        row = plane[iy * w + xs : iy * w + xe]
                        for j in range(row.shape[0]):
                            row[j] += share
    return 0


@kernel(buffers=2)
def global_avg_pool_grad(gy, gx, a):
    planes, hw = a[0], a[1]
    for p in prange(planes):
        gx[p * hw : (p + 1) * hw] = gy[p] / hw
    return 0


def _planes(node: Node) -> list[int]:
    n, c, h, w = node.inputs[0].shape
    _, _, oh, ow = node.outputs[0].shape
    return [n * c, h, w, oh, ow]


def _window_geometry(node: Node) -> tuple[int, int, int]:
    """window_pool's phase-plane sides (HQ, WQ) and accumulator block rows."""
    (_, _, h, w), out, attrs = node.inputs[0].shape, node.outputs[0].shape[2:], node.attrs
    dilation = attrs.get("dilation", (1, 1))
    hq, wq, _ = phases.geometry(
        h, w, out, attrs["kernel"], attrs["stride"], attrs["padding"], dilation
    )
    return hq, wq, phases.block_rows(out[0], wq, node.outputs[0].type.itemsize)


def _window_scratch(node: Node) -> int:
    """One slot per thread: the phase planes of one input plane, slack, an accumulator block."""
    (sh, sw), (_, kw) = node.attrs["stride"], node.attrs["kernel"]
    hq, wq, rows = _window_geometry(node)
    slack = (kw - 1) * node.attrs.get("dilation", (1, 1))[1] // sw
    slot = sh * sw * hq * wq + slack + rows * wq
    return numba.config.NUMBA_NUM_THREADS * slot * node.outputs[0].type.itemsize


@lowers("max_pool2d", "avg_pool2d", scratch=_window_scratch)
def _lower_window_pool(node: Node, io: NodeIO):
    attrs = node.attrs
    dilation = attrs.get("dilation", (1, 1))
    flags = [int(node.op == "max_pool2d"), int(attrs.get("count_include_pad", False))]
    ints = _planes(node) + [*attrs["kernel"], *attrs["stride"], *attrs["padding"], *dilation]
    work = io.output()[1] * attrs["kernel"][0] * attrs["kernel"][1]
    scratch = io.scratch(_window_scratch(node) // node.outputs[0].type.itemsize)
    return [
        window_pool.step(
            node.name,
            io.dtype,
            io.parallel(work),
            [io.input(0), io.output(), scratch],
            ints + flags + list(_window_geometry(node)),
        )
    ]


@lowers("adaptive_max_pool2d", "adaptive_avg_pool2d", "global_avg_pool2d")
def _lower_adaptive_pool(node: Node, io: NodeIO):
    ints = _planes(node) + [int(node.op == "adaptive_max_pool2d")]
    work = io.input(0)[1]
    return [
        adaptive_pool.step(node.name, io.dtype, io.parallel(work), [io.input(0), io.output()], ints)
    ]


@lowers("max_pool2d_grad", "avg_pool2d_grad")
def _lower_window_pool_grad(node: Node, io: NodeIO):
    attrs, gx = node.attrs, node.outputs[0]
    n, c, h, w = gx.shape
    _, _, oh, ow = node.inputs[0].shape
    dilation = attrs.get("dilation", (1, 1))
    flags = [int(node.op == "max_pool2d_grad"), int(attrs.get("count_include_pad", False))]
    ints = [n * c, h, w, oh, ow, *attrs["kernel"], *attrs["stride"], *attrs["padding"], *dilation]
    saved = io.input(1) if node.op == "max_pool2d_grad" else io.empty()
    work = node.inputs[0].type.numel * attrs["kernel"][0] * attrs["kernel"][1]
    return [
        window_pool_grad.step(
            node.name, io.dtype, io.parallel(work), [io.input(0), saved, io.output()], ints + flags
        )
    ]


@lowers("adaptive_pool2d_grad")
def _lower_adaptive_pool_grad(node: Node, io: NodeIO):
    is_max = node.attrs["is_max"]
    n, c, h, w = node.outputs[0].shape
    ints = [n * c, h, w, *node.attrs["output_size"], int(is_max)]
    buffers = [io.input(0), io.input(1) if is_max else io.empty(), io.output()]
    work = io.output()[1]
    return [adaptive_pool_grad.step(node.name, io.dtype, io.parallel(work), buffers, ints)]


@lowers("global_avg_pool2d_grad")
def _lower_global_avg_pool_grad(node: Node, io: NodeIO):
    n, c, h, w = node.outputs[0].shape
    return [
        global_avg_pool_grad.step(
            node.name,
            io.dtype,
            io.parallel(n * c * h * w),
            [io.input(0), io.output()],
            [n * c, h * w],
        )
    ]
