"""A serial conv kernel for layers too small to split: no parallel region, no BLAS call.

Algorithm (stride 1): the "wide" output grid of ``conv2d_shifted`` (conv.py). Each input plane
is copied once into a zero-bordered plane of row length Wp (``row_pitch``); tap (ki, kj) of
output pixel q = oy*Wp + ox reads that plane at q + ki*DH*Wp + kj*DW, so for one output channel
and one input channel every tap is a multiply-add over a contiguous run of the plane. Columns
ox >= OW of the wide grid (and the run's tail, rounded up to whole 512-bit vectors) are
garbage, dropped when the result is copied out.

Where conv2d_direct does one axpy per (output channel, input channel, tap), this kernel does one
loop per (block of 4 output channels, input channel, 3 taps of a kernel row): each loaded input
vector feeds 4 channels x 3 taps = 12 multiply-adds while 4 accumulator rows are read and
written once. The loop body has fixed shape (the block's 12 weights are scalars, so LLVM keeps
them in registers and vectorises over the wide pixels); a block with fewer than 4 channels
left gives the missing ones zero weights and unused accumulator rows. Kernel rows not a
multiple of 3 taps finish with 1-tap loops. Output rows are cut into bands of ``band`` rows so
the 4 accumulator rows stay in L1 on larger maps.

Measured here (2 cores, Zen 4, numba 0.68; us per conv through the executor), on the
Conv2d(8, 8, 3, padding=1) + ReLU of bench/dispatch.py's 20-layer net, 8x8 at batch 1 (36,864
MACs, the ReLU fused): conv2d_direct 7.3, this kernel 1.8 (float64: 10.2 and 2.6); the whole
net's exe.run 148 -> 39 us (ONNX Runtime 62 us, bench/inference.py --cases tiny). Of the 1.8:
about 1.1 in the 48 vectorised loops, 0.3 in the 8 calls of the epilogue, 0.15 in the padding.
Tried and dropped: blocks of 8 channels x 3 taps, 2 x 9 and 4 x 9 taps (1.1-1.4x slower),
FMA contraction (no gain: Zen 4 issues a 512-bit multiply and a 512-bit add per cycle), a
1-channel loop for depthwise convs in this kernel (it slowed the 8-channel case to 2.1 us).

Buffers: (x, w, bias, affine, residual, consts, y, scratch), as every conv kernel (epilogue.py).
Scratch: [padded planes of one image: C x (H+PT+PB) x Wp | slack | 4 accumulator rows of
band*Wp rounded up to whole vectors], the rows 64-byte aligned (``accumulator_offset``).
Attrs: [N, C, H, W, OC, OH, OW, KH, KW, PT, PB, PL, PR, DH, DW, groups, band, kind].
"""

from __future__ import annotations

import numpy as np
from numba import njit

from backends.cpu.epilogue import finish_channel
from backends.cpu.kernels import kernel
from graph.ir import Node

# Output channels per pass over the input: 4 accumulator rows and 12 weights in registers.
BLOCK = 4
# Bytes of the 4 accumulator rows of a band of output rows: half of Zen 4's 32 KiB L1. On
# LeNet-5's 1->6 5x5 on 28x28 (30-column rows, float32): 17 rows a band 6.9 us, 8 rows 7.3,
# the whole map (28) 6.4.
BAND_BYTES = 16 << 10


@kernel(buffers=8)
def conv2d_small(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, pt, pb, pl, pr, dh, dw, groups, band, kind = a[:18]
    cg, ocg, taps = c // groups, oc // groups, kh * kw
    wp = row_pitch(wd, pl, pr, ow)
    plane = (h + pt + pb) * wp
    lanes = 64 // scratch.itemsize  # one 512-bit vector: loops run whole vectors
    acc = accumulator_offset(c, plane, kw, dw, lanes)
    for i in range(n):
        for k in range(acc):  # the borders, and the slack the garbage columns read
            scratch[np.uint64(k)] = 0
        for ci in range(c):
            for iy in range(h):
                start = ci * plane + (iy + pt) * wp + pl
                _copy(x, ((i * c + ci) * h + iy) * wd, scratch, start, wd)
        for g in range(groups):
            for o in range(0, ocg, BLOCK):
                count = min(BLOCK, ocg - o)
                for oy in range(0, oh, band):
                    rows = min(band, oh - oy)
                    wide = (rows * wp + lanes - 1) // lanes * lanes
                    for k in range(BLOCK * wide):
                        scratch[np.uint64(acc + k)] = 0
                    for ci in range(cg):
                        for ki in range(kh):
                            src = (g * cg + ci) * plane + (oy + ki * dh) * wp
                            at = ((g * ocg + o) * cg + ci) * taps + ki * kw
                            _kernel_row(scratch, acc, wide, src, dw, kw, w, at, cg * taps, count)
                    for k in range(count):
                        channel = g * ocg + o + k
                        out = ((i * oc + channel) * oh + oy) * ow
                        for r in range(rows):
                            _copy(scratch, acc + k * wide + r * wp, y, out + r * ow, ow)
                        end = out + rows * ow
                        finish_channel(y[out:end], channel, b, affine, res[out:end], kind, consts)
    return 0


@njit(inline="always", cache=True)
def row_pitch(wd, pl, pr, ow):
    """Row length of the padded planes and of the wide grid. Image row iy sits at column PL of
    padded row iy + PT; the PR zeros after it and the PL zeros before the next row's data can
    be the same elements, so the pitch needs W + max(PL, PR), not W + PL + PR (8x8 with
    padding 1: 72 wide pixels, not 80), and at least OW, so output rows do not overlap."""
    return max(wd + max(pl, pr), ow)


@njit(inline="always", cache=True)
def accumulator_offset(c, plane, kw, dw, lanes):
    """Start of the accumulator rows in the scratch: after the padded planes and the slack
    that the garbage columns read past the last plane ((KW-1)*DW, plus the wide run rounded
    up to whole vectors), aligned to a vector."""
    return (c * plane + (kw - 1) * dw + 2 * lanes - 2) // lanes * lanes


@njit(inline="always", cache=True)
def _copy(src, at, dst, to, count):
    """dst[to : to + count] = src[at : at + count] (element by element: the runs are too short
    to repay building two slices)."""
    for j in range(count):
        dst[np.uint64(to + j)] = src[np.uint64(at + j)]


@njit(inline="always", cache=True)
def _kernel_row(s, acc, wide, src, dw, kw, w, at, per_channel, count):
    """All taps of one kernel row, for one input channel and a block of ``count`` output
    channels whose weights start at w[at] (``per_channel`` apart): 3 taps a loop, then 1.
    KW = 3 has its own branch: without the loops around it, the 8-channel 3x3 conv ran in
    1.75 us instead of 2.0."""
    if kw == 3:
        _taps3(s, acc, wide, src, dw, w, at, per_channel, count)
        return
    for kj in range(0, kw - 2, 3):
        _taps3(s, acc, wide, src + kj * dw, dw, w, at + kj, per_channel, count)
    for kj in range(kw - kw % 3, kw):
        _taps1(s, acc, wide, src + kj * dw, w, at + kj, per_channel, count)


@njit(inline="always", cache=True)
def _weight(w, at, per_channel, k, count):
    """Weight w[at] of channel k of the block (0 for a channel past the block's end)."""
    return w[np.uint64(at + k * per_channel)] if k < count else w.dtype.type(0)


@njit(inline="always", cache=True)
def _taps3(s, acc, wide, src, d, w, at, per_channel, count):
    """Accumulator row k (s[acc + k*wide ...]) += the block's channel k's 3 taps at w[at..]
    times the runs at s[src], s[src + d] and s[src + 2d]. The 12 weights are scalars (not a
    tuple: Numba's parallel array analysis rejects tuples of them)."""
    a0 = _weight(w, at, per_channel, 0, count)
    a1 = _weight(w, at + 1, per_channel, 0, count)
    a2 = _weight(w, at + 2, per_channel, 0, count)
    b0 = _weight(w, at, per_channel, 1, count)
    b1 = _weight(w, at + 1, per_channel, 1, count)
    b2 = _weight(w, at + 2, per_channel, 1, count)
    c0 = _weight(w, at, per_channel, 2, count)
    c1 = _weight(w, at + 1, per_channel, 2, count)
    c2 = _weight(w, at + 2, per_channel, 2, count)
    e0 = _weight(w, at, per_channel, 3, count)
    e1 = _weight(w, at + 1, per_channel, 3, count)
    e2 = _weight(w, at + 2, per_channel, 3, count)
    for p in range(wide):
        v0 = s[np.uint64(src + p)]
        v1 = s[np.uint64(src + d + p)]
        v2 = s[np.uint64(src + 2 * d + p)]
        s[np.uint64(acc + p)] += a0 * v0 + a1 * v1 + a2 * v2
        s[np.uint64(acc + wide + p)] += b0 * v0 + b1 * v1 + b2 * v2
        s[np.uint64(acc + 2 * wide + p)] += c0 * v0 + c1 * v1 + c2 * v2
        s[np.uint64(acc + 3 * wide + p)] += e0 * v0 + e1 * v1 + e2 * v2


@njit(inline="always", cache=True)
def _taps1(s, acc, wide, src, w, at, per_channel, count):
    """Accumulator row k += the block's channel k's weight at w[at] times the run at s[src]."""
    a = _weight(w, at, per_channel, 0, count)
    b = _weight(w, at, per_channel, 1, count)
    c = _weight(w, at, per_channel, 2, count)
    e = _weight(w, at, per_channel, 3, count)
    for p in range(wide):
        v = s[np.uint64(src + p)]
        s[np.uint64(acc + p)] += a * v
        s[np.uint64(acc + wide + p)] += b * v
        s[np.uint64(acc + 2 * wide + p)] += c * v
        s[np.uint64(acc + 3 * wide + p)] += e * v


# **** Lowering helpers ****


def _band(node: Node) -> int:
    """Output rows per pass: 4 accumulator rows of about BAND_BYTES in all."""
    _, _, oh, ow = node.outputs[0].shape
    _, _, pl, pr = node.attrs["padding"]
    pitch = row_pitch(node.inputs[0].shape[3], pl, pr, ow)
    return max(1, min(oh, BAND_BYTES // (BLOCK * pitch * node.outputs[0].type.itemsize)))


def scratch_numel(node: Node) -> int:
    (_, c, h, wd), (_, _, _, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, _, ow = node.outputs[0].shape
    pt, pb, pl, pr = node.attrs["padding"]
    lanes = 64 // node.outputs[0].type.itemsize
    pitch = row_pitch(wd, pl, pr, ow)
    accumulators = BLOCK * -(-_band(node) * pitch // lanes) * lanes
    return accumulator_offset(c, (h + pt + pb) * pitch, kw, node.attrs["dilation"][1], lanes) + (
        accumulators
    )


def attrs(node: Node) -> list[int]:
    """[N, C, H, W, OC, OH, OW, KH, KW, PT, PB, PL, PR, DH, DW, groups, band] (the kernel's
    attrs less the epilogue's kind)."""
    (n, c, h, wd), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    shape = [n, c, h, wd, oc, oh, ow, kh, kw]
    return shape + [
        *node.attrs["padding"],
        *node.attrs["dilation"],
        node.attrs["groups"],
        _band(node),
    ]
