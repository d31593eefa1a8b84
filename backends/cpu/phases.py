"""Polyphase planes: every tap of a strided, padded, dilated window becomes a contiguous run.

A sliding window with stride (SH, SW) reads input row ``oy*SH - PT + ki*DH`` for output row
``oy``: for SH > 1 consecutive outputs skip rows, and for SW > 1 columns, so a tap's inputs are a
strided gather (scalar loads: measured 3-6x slower than contiguous runs on MobileNet's
depthwise convs and ResNet's stem max pool). Splitting the padded plane into SH x SW phase
planes, phase (r, s) holding padded rows ``r, r+SH, ...`` and columns ``s, s+SW, ...``, turns
tap (ki, kj) into the window of phase ((ki*DH) % SH, (kj*DW) % SW) shifted by
((ki*DH) // SH, (kj*DW) // SW): the same contiguous "wide grid" that stride 1 uses (OH rows of
WQ columns, the last WQ - OW of each row garbage, dropped when rows are copied out). Stride 1 is
the one-phase case: the zero-bordered plane itself.

Each phase plane is HQ x WQ, large enough for every tap of every output (ceil mode included);
positions outside the input hold ``fill`` (0 for sums, -inf for max). A tap's wide window reads
up to ``slack`` elements past its phase plane: callers leave that many filled elements after
the last plane.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from graph.ir import Node

# Bytes of one wide-grid accumulator block: output rows are taken this many bytes at a time so
# that the accumulator stays in L1 while every tap passes over it (a whole 112x114 float32
# plane is 51 KB: 1.5-2x slower taps from L2).
BLOCK_BYTES = 16 << 10


def geometry(
    h: int,
    w: int,
    out: tuple[int, int],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int]:
    """(HQ, WQ, slack) of the phase planes of an H x W plane with (top, left) ``padding``."""
    (oh, ow), (kh, kw), (sh, sw), (pt, pl), (dh, dw) = out, kernel, stride, padding, dilation
    hq = max(-(-(h + pt) // sh), oh + (kh - 1) * dh // sh)
    wq = max(-(-(w + pl) // sw), ow + (kw - 1) * dw // sw)
    return hq, wq, (kw - 1) * dw // sw


def conv_geometry(node: Node) -> tuple[int, int, int]:
    """(HQ, WQ, accumulator block rows) of a conv node's phase planes, for the two conv kernels
    that tap them (``conv2d_direct`` and ``conv2d_depthwise``)."""
    (_, _, h, wd), (_, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    (pt, _, pl, _), out = node.attrs["padding"], node.outputs[0].shape[2:]
    hq, wq, _ = geometry(
        h, wd, out, (kh, kw), node.attrs["stride"], (pt, pl), node.attrs["dilation"]
    )
    return hq, wq, block_rows(out[0], wq, node.outputs[0].type.itemsize)


def block_rows(oh: int, wq: int, itemsize: int) -> int:
    """Output rows per accumulator block (see BLOCK_BYTES)."""
    return max(1, min(oh, BLOCK_BYTES // (wq * itemsize)))


@njit(inline="always", cache=True)
def split(src, h, w, dst, at, pt, pl, sh, sw, hq, wq, fill):
    """Write the phase planes of one H x W plane ``src`` into ``dst[at : at + SH*SW*HQ*WQ]``,
    each element once, row by row of the padded plane. Indices are unsigned (no wraparound
    branch, so the copies vectorise)."""
    for r in range(sh):
        for ry in range(hq):
            iy, rows = ry * sh + r - pt, at + r * sw * hq * wq + ry * wq
            if iy < 0 or iy >= h:
                for s in range(sw):
                    _fill(dst, rows + s * hq * wq, 0, wq, fill)
            elif sw == 2:
                _deinterleave(src[iy * w : (iy + 1) * w], dst, rows, hq * wq, pl, wq, fill)
            else:
                for s in range(sw):
                    lo = max(0, (pl - s + sw - 1) // sw)  # columns [lo, hi) hold input columns
                    hi = max(lo, min(wq, (w - 1 + pl - s) // sw + 1))
                    row, first = rows + s * hq * wq, iy * w + s - pl
                    _fill(dst, row, 0, lo, fill)
                    for cx in range(lo, hi):
                        dst[np.uint64(row + cx)] = src[np.uint64(first + cx * sw)]
                    _fill(dst, row, hi, wq, fill)


@njit(inline="always", cache=True)
def place(src, plane, h, wd, dst, at, pt, pl, sh, sw, hq, wq):
    """``split`` of the H x W plane at ``src[plane:]`` into phase planes at ``at`` that already
    hold the fill where a ``split`` of this geometry puts it, writing only the elements that
    hold input: the fill sits at the same places for every plane, so a kernel fills a thread's
    phase planes once and places every plane (writing the fill row by row cost as much as the
    copy on ResNet's 112x112 stem pool). Rows are indexed, not sliced: on small planes a slice per
    row costs more than the taps of a depthwise conv (one thread, us: 960 channels of 7x7 138
    vs 187, 384 of 14x14 99 vs 131, 144 of 28x28 stride 2 152 vs 176)."""
    phase = hq * wq
    for r in range(sh):
        ry_lo, ry_hi = max(0, (pt - r + sh - 1) // sh), min(hq, (h - 1 + pt - r) // sh + 1)
        for ry in range(ry_lo, ry_hi):
            line, row = plane + (ry * sh + r - pt) * wd, at + r * sw * phase + ry * wq
            if sw == 1:
                for ix in range(wd):
                    dst[np.uint64(row + pl + ix)] = src[np.uint64(line + ix)]
            elif sw == 2:  # input columns 2m and 2m+1 land in phases pl % 2 and the other
                even = row + pl % 2 * phase + pl // 2
                odd = row + (1 - pl % 2) * phase + (pl + 1) // 2
                for m in range(wd // 2):
                    dst[np.uint64(even + m)] = src[np.uint64(line + 2 * m)]
                    dst[np.uint64(odd + m)] = src[np.uint64(line + 2 * m + 1)]
                if wd % 2:
                    dst[np.uint64(even + wd // 2)] = src[np.uint64(line + wd - 1)]
            else:
                for ix in range(wd):
                    cx, s = (ix + pl) // sw, (ix + pl) % sw
                    dst[np.uint64(row + s * phase + cx)] = src[np.uint64(line + ix)]


@njit(inline="always", cache=True)
def _fill(dst, row, lo, hi, fill):
    for cx in range(lo, hi):
        dst[np.uint64(row + cx)] = fill


@njit(inline="always", cache=True)
def _deinterleave(line, dst, row, phase, pl, wq, fill):
    """Stride 2: input columns 2m and 2m+1 of one row go to phases ``pl % 2`` and the other
    at m + ``pl // 2`` and m + ``(pl + 1) // 2``, both in one loop, which LLVM vectorises as
    an interleaved load (a column at a time: scalar, 2.5x slower on MobileNet's strided
    depthwise convs)."""
    w = line.shape[0]
    even = row + pl % 2 * phase + pl // 2  # where input column 0 lands
    odd = row + (1 - pl % 2) * phase + (pl + 1) // 2  # where input column 1 lands
    _fill(dst, row + pl % 2 * phase, 0, pl // 2, fill)
    _fill(dst, row + (1 - pl % 2) * phase, 0, (pl + 1) // 2, fill)
    evens, odds = dst[even : even + w // 2], dst[odd : odd + w // 2]
    for m in range(w // 2):
        evens[m] = line[2 * m]
        odds[m] = line[2 * m + 1]
    if w % 2:
        dst[np.uint64(even + w // 2)] = line[w - 1]
    _fill(dst, row + pl % 2 * phase, pl // 2 + (w + 1) // 2, wq, fill)
    _fill(dst, row + (1 - pl % 2) * phase, (pl + 1) // 2 + w // 2, wq, fill)


@njit(inline="always", cache=True)
def tap(ki, kj, dh, dw, sh, sw, hq, wq):
    """Offset, within a plane's phase planes, of tap (ki, kj)'s wide window for output row 0."""
    r, s = ki * dh, kj * dw
    return ((r % sh * sw + s % sw) * hq + r // sh) * wq + s // sw


@njit(inline="always", cache=True)
def taps(kh, kw, dh, dw, sh, sw, hq, wq):
    """``tap`` of every tap in (ki, kj) order, computed once per call: its integer divisions
    cost more than a 7x7 plane's multiply-adds when repeated per plane."""
    shifts = np.empty(kh * kw, np.int64)
    for t in range(kh * kw):
        shifts[t] = tap(t // kw, t % kw, dh, dw, sh, sw, hq, wq)
    return shifts


@njit(inline="always", cache=True)
def unwiden(dst, wide, rows, ow, wq):
    """Copy ``rows`` output rows of width OW out of a wide grid of row length WQ."""
    for r in range(rows):
        out, row = dst[r * ow : (r + 1) * ow], wide[r * wq : r * wq + ow]
        for k in range(ow):  # over views: no wraparound branch, so it vectorises
            out[k] = row[k]
