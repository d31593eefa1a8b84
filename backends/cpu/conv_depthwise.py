"""CPU depthwise convolution: groups == in_channels == out_channels, weights [C, 1, KH, KW].

MobileNet-style depthwise convs are many small planes (960 channels of 7x7 at batch 1), so the
cost is per plane, not per multiply-add. ``conv2d_direct`` pays it in two parallel passes: one
splits every input plane into phase planes in a scratch of the whole batch, the next taps each
plane from there, then runs the epilogue through a function call. Here one parallel loop over
the (image, channel) planes does it all while the plane is in L1 of the thread that owns it:

1. copy the input plane into its stride's phase planes (``phases.py``'s layout; at stride 1
   the zero-bordered plane) in the thread's slot of the scratch, writing only the input
   positions: the borders are zeroed on the thread's first plane and stay zero;
2. for each block of output rows of the wide grid (``phases.block_rows``), every tap in one
   vectorised pass (any 9-tap kernel unrolled: one store per output, no zeroing), or three
   taps a pass for other kernel sizes;
3. copy the block's rows out and run ``finish_channel`` on them, inlined.

Numba's ``prange`` hands each thread one contiguous run of planes, so a thread's tasks are a
block of channels with no scheduling per plane. Measured on MobileNet v2's depthwise layers
with their folded BatchNorm and ReLU6 (float32, batch 1, two shared cores, us per layer, best
of three runs, against ``conv2d_direct``): 960 channels of 7x7 66 vs 213, 384 of 14x14 55 vs
133, 192 of 28x28 60 vs 143, 32 of 112x112 119 vs 175; stride 2: 576 of 7x7 85 vs 223, 96 of
56x56 166 vs 243. Batch 32 of 32 channels of 112x112: 5.3 vs 9.4 ms.

On small planes a plane's loops are too short to vectorise (a 7x7 plane's wide grid is 63
elements: three vectors and a scalar remainder per tap), and what is left is per plane.
``conv2d_depthwise_lanes`` turns the layout around for them: a task takes one vector's worth
of channels (16 float32, 8 float64) of one image, turns each block of that many pixels of their
planes into per-pixel vectors of channels (``simd.transpose``: 16 loads and 64 shuffles, no
gather) in a zero-bordered [HP, WP, lanes] block, adds each output pixel's taps as whole
vectors (the 3x3 weights and tap offsets held in registers, two pixels' chains side by side),
and turns the sums back into the planes' rows, where the epilogue runs on them as vectors
(none, ReLU or hardtanh; others through ``finish_channel`` on the stored planes)
(``LANES_MAX_INPUT_PIXELS`` has the measurements). Taps add in the same order as
``_nine_taps``, so both kernels give the same bits.

Larger planes with output rows of at most 16 elements run ``conv2d_depthwise_rows``: no copy
at all. Each output row is one or two SIMD vectors (``simd.py``), eight rows at a time; each
tap adds its weight times one windowed load of the input row under it (``simd.load_lanes``:
lanes outside the plane masked off; at stride 2 a load of twice the lanes and a shuffle), in
the same tap order as the other two kernels, so all three give the same bits
(``ROWS_MAX_OUTPUT_WIDTH`` has the measurements).

Buffers (all kernels): (x, w, bias, affine, residual, consts, y, scratch), absent epilogue
parts empty.
Attrs: [N, C, H, W, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, HQ, WQ, block rows, kind];
the lanes kernel [N, C, H, W, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, HP, WP, kind]; the rows
kernel the first 14, then the kind (no scratch).
Scratch: one slot per thread: [phase planes | slack | accumulator block]; the lanes kernel's
[padded block | weight vectors | stage: one lanes x lanes block between transposes, also taking
the last weights transpose's overflow].
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from backends.cpu import phases, simd
from backends.cpu.elementwise import COPY, HARDTANH, RELU
from backends.cpu.epilogue import finish_channel, finish_vector
from backends.cpu.kernels import kernel
from backends.cpu.simd import VECTOR_BYTES
from backends.cpu.windows import axpy, axpy3
from graph.ir import Node

# Fewest MACs (batch included) for the parallel variant: a depthwise conv does a few MACs per
# element it copies, so it repays the thread pool at a quarter of conv.PARALLEL_MIN_MACS
# (float32, us, serial vs parallel, two busy cores: 160 channels of 7x7 21.5 vs 20.8, 576 of
# 7x7 stride 2 151 vs 124; 64 of 8x8 6.7 vs 12.2).
PARALLEL_MIN_MACS = 1 << 16

# Largest input plane (H x W) for conv2d_depthwise_lanes. Measured on MobileNet v2's depthwise
# layers with their folded BatchNorm and ReLU6 (float32, batch 1, us, lanes vs rows vs planes;
# one thread, then two): 960 channels of 7x7 42 vs 100 vs 130, 31 vs 54 vs 105; 576 of 14x14
# stride 2 40 vs 103 vs 115, 33 vs 53 vs 99; 384 of 14x14 57 vs 85 vs 108, 40 vs 45 vs 69; 576
# of 14x14 85 vs 128 vs 150, 56 vs 67 vs 103; 192 of 28x28 stride 2 56 vs 71 vs 85, 41 vs 46 vs
# 62; 192 of 28x28 117 vs 141 vs 118, 73 vs 79 vs 80. From 56x56 the planes kernel is as fast
# or faster (144 of 56x56 stride 2 160 vs 156, 104 vs 110; 144 of 56x56 338 vs 328, 199 vs 189;
# 32 of 112x112 367 vs 307, 217 vs 171). MobileNet v2 at batch 1 as a network, two threads,
# interleaved: lanes up to 7x7 planes 4.88 ms, to 14x14 4.80, to 28x28 4.76, to 56x56 4.79.
# (With scalar copies in and out of a 64-channel block instead of ``simd.transpose``, this
# kernel ran 960 channels of 7x7 in 88 us on two threads and lost from 14x14 on.)
LANES_MAX_INPUT_PIXELS = 28 * 28
# ... and kernels of this many taps or more take it on any plane: each pixel's work repays the
# transposes (ConvNeXt's 7x7, us, two threads, lanes vs planes: 96 channels of 56x56 355 vs
# 510, 32 of 112x112 509 vs 617; 5x5: 96 of 56x56 218 vs 279, 144 of 56x56 stride 2 157 vs 198).
LANES_ANY_PLANE_MIN_TAPS = 10

# Widest output row (elements, either dtype) for conv2d_depthwise_rows, on planes above
# LANES_MAX_INPUT_PIXELS: one float32 vector, two float64. Measured (batch 1, folded BatchNorm
# and ReLU6, two threads, us, rows vs planes): float32 384 channels of 14x14 45 vs 66, 576 of
# 14x14 67 vs 96, 576 of 14x14 stride 2 51 vs 91, 192 of 28x28 stride 2 34 vs 54, 24 of 28x28
# stride 2 7.6 vs 56 (lanes); float64 576 of 14x14 stride 2 56 vs 86, 192 of 28x28 stride 2
# 67 vs 66. Wider rows lose: 192 of 28x28 77 vs 73, 144 of 56x56 stride 2 93 vs 80, 32 of
# 112x112 158 vs 147. (Eight rows at a time and stride-2 rows as a load and a shuffle, not a
# gather, made the kernel 1.1-1.6x faster than with four rows and gathers.)
ROWS_MAX_OUTPUT_WIDTH = 16

# ``finish_channel`` itself (the same function, so the same arithmetic), inlined: as a call it
# cost a fifth of a 960-channel 7x7 layer (163 -> 130 us, one thread). Its constants are
# never an empty buffer (``epilogue_buffers``): inlined, their reads are hoisted.
_finish_channel = njit(inline="always", cache=True)(finish_channel.py_func)


@kernel(buffers=8)
def conv2d_depthwise(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, rows, kind = a[:18]
    hw, ohw, taps = h * wd, oh * ow, kh * kw
    plane, slack = sh * sw * hq * wq, (kw - 1) * dw // sw
    slot = plane + slack + rows * wq
    shifts = phases.taps(kh, kw, dh, dw, sh, sw, hq, wq)
    fresh = np.ones(scratch.shape[0] // slot, np.bool_)
    for p in prange(n * c):
        o, tid = p % c, get_thread_id()
        at = tid * slot
        if fresh[tid]:  # zero the thread's phase planes once: place writes only the input
            scratch[at : at + plane + slack] = 0
            fresh[tid] = False
        phases.place(x, p * hw, h, wd, scratch, at, pt, pl, sh, sw, hq, wq)
        acc = scratch[at + plane + slack : at + slot]
        for oy0 in range(0, oh, rows):
            count = min(rows, oh - oy0)
            block = acc[: count * wq]
            if taps == 9:
                _nine_taps(block, scratch, at + oy0 * wq, shifts, w, o * 9)
            else:
                _taps(block, scratch, at + oy0 * wq, shifts, w, o * taps, taps)
            out = p * ohw + oy0 * ow
            run = y[out : out + count * ow]
            phases.unwiden(run, block, count, ow, wq)
            _finish_channel(run, o, b, affine, res[out : out + count * ow], kind, consts)
    return 0


@kernel(buffers=8)
def conv2d_depthwise_lanes(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, hp, wp, kind = a[:17]
    hw, ohw, taps, lanes = h * wd, oh * ow, kh * kw, simd.lanes(x)
    blocks, padded = (c + lanes - 1) // lanes, hp * wp * lanes
    slot = padded + (taps + lanes) * lanes
    # no division per pixel: serial, they had cost a fifth of a 14x14 layer on two threads
    places = np.empty(hw, np.int64)  # input pixel p's vector in the block, -1: never read
    for iy in range(h):
        for ix in range(wd):
            row, column = iy + pt, ix + pl
            inside = row < hp and column < wp
            places[iy * wd + ix] = (row * wp + column) * lanes if inside else -1
    windows = np.empty(ohw, np.int64)  # output pixel p's window's first input in the block
    for oy in range(oh):
        for ox in range(ow):
            windows[oy * ow + ox] = (oy * sh * wp + ox * sw) * lanes
    shifts = np.zeros(max(taps, 9), np.int64)  # tap t's input from the window's first
    for t in range(taps):
        shifts[t] = ((t // kw) * dh * wp + (t % kw) * dw) * lanes
    nine = (shifts[0], shifts[1], shifts[2], shifts[3], shifts[4])
    nine = (*nine, shifts[5], shifts[6], shifts[7], shifts[8])
    in_registers = kind == COPY or kind == RELU or kind == HARDTANH
    fresh = np.ones(scratch.shape[0] // slot, np.bool_)
    for task in prange(n * blocks):
        i, first, tid = task // blocks, task % blocks * lanes, get_thread_id()
        count, at = min(lanes, c - first), tid * slot
        if fresh[tid]:  # zero the padded block once: only the input positions are written
            scratch[at : at + padded] = 0
            fresh[tid] = False
        wat, stage = at + padded, at + padded + taps * lanes
        src, out = (i * c + first) * hw, (i * c + first) * ohw
        for k in range(0, taps, lanes):  # weights [taps, lanes]; channels past c get 0
            simd.transpose(
                w, first * taps + k, taps, count, min(lanes, taps - k), scratch, wat + k * lanes
            )
        for p0 in range(0, hw, lanes):  # planes -> [HP, WP, lanes], lanes pixels at a time
            pixels = min(lanes, hw - p0)
            simd.transpose(x, src + p0, hw, count, pixels, scratch, stage)
            for j in range(pixels):
                if places[p0 + j] >= 0:
                    pixel = simd.load(scratch, stage + j * lanes, lanes)
                    simd.store(scratch, at + places[p0 + j], pixel, lanes)
        weights = _nine_weights(scratch, wat, taps)  # in registers: 3x3 kernels' loop reads
        for p0 in range(0, ohw, lanes):  # lanes output pixels' sums, back to planes
            pixels = min(lanes, ohw - p0)
            for j in range(0, pixels, 2):  # two pixels at a time: two chains of adds
                window, other = at + windows[p0 + j], at + windows[min(p0 + j + 1, ohw - 1)]
                if taps == 9:
                    v = _nine_lane_taps(scratch, window, weights, nine)
                    u = _nine_lane_taps(scratch, other, weights, nine)
                else:
                    v, u = _lane_taps(scratch, window, other, wat, shifts, taps)
                simd.store(scratch, stage + j * lanes, v, lanes)
                simd.store(scratch, stage + (j + 1) * lanes, u, lanes)
            simd.transpose(scratch, stage, lanes, pixels, lanes, scratch, stage)
            for k in range(count):
                at_out = out + k * ohw + p0
                v = simd.load(scratch, stage + k * lanes, lanes)
                if in_registers:
                    v = finish_vector(v, first + k, b, affine, res, at_out, pixels, kind, consts)
                simd.store(y, at_out, v, pixels)
        if not in_registers:
            for k in range(count):
                run, at_out = y[out + k * ohw : out + (k + 1) * ohw], out + k * ohw
                _finish_channel(run, first + k, b, affine, res[at_out : at_out + ohw], kind, consts)
    return 0


@njit(inline="always", cache=True)
def _nine_weights(scratch, wat, taps):
    """The first nine taps' weight vectors (zeros past ``taps``, not read; the first two lie
    in the slot's weights or stage whatever ``taps``)."""
    lanes = simd.lanes(scratch)
    w0, w1 = simd.load(scratch, wat, lanes), simd.load(scratch, wat + lanes, lanes)
    w2 = simd.load(scratch, wat + 2 * lanes, lanes if taps > 2 else 0)
    w3 = simd.load(scratch, wat + 3 * lanes, lanes if taps > 3 else 0)
    w4 = simd.load(scratch, wat + 4 * lanes, lanes if taps > 4 else 0)
    w5 = simd.load(scratch, wat + 5 * lanes, lanes if taps > 5 else 0)
    w6 = simd.load(scratch, wat + 6 * lanes, lanes if taps > 6 else 0)
    w7 = simd.load(scratch, wat + 7 * lanes, lanes if taps > 7 else 0)
    w8 = simd.load(scratch, wat + 8 * lanes, lanes if taps > 8 else 0)
    return w0, w1, w2, w3, w4, w5, w6, w7, w8


@njit(inline="always", cache=True)
def _nine_lane_taps(scratch, window, weights, shifts):
    """A 3x3 window's sum, lanes channels at once, in ``_nine_taps``'s order and roundings,
    with the weights and the taps' shifts in registers."""
    lanes = simd.lanes(scratch)
    w0, w1, w2, w3, w4, w5, w6, w7, w8 = weights
    s0, s1, s2, s3, s4, s5, s6, s7, s8 = shifts
    v = w0 * simd.load(scratch, window + s0, lanes) + w1 * simd.load(scratch, window + s1, lanes)
    v = v + w2 * simd.load(scratch, window + s2, lanes)
    v = v + w3 * simd.load(scratch, window + s3, lanes)
    v = v + w4 * simd.load(scratch, window + s4, lanes)
    v = v + w5 * simd.load(scratch, window + s5, lanes)
    v = v + w6 * simd.load(scratch, window + s6, lanes)
    v = v + w7 * simd.load(scratch, window + s7, lanes)
    return v + w8 * simd.load(scratch, window + s8, lanes)


@njit(inline="always", cache=True)
def _lane_taps(scratch, window, other, wat, shifts, taps):
    """Any other window's sums at two pixels (``window``, ``other``): the taps in order, the
    first stored, the rest added, each tap's weight vector read once for both."""
    lanes = simd.lanes(scratch)
    weight = simd.load(scratch, wat, lanes)
    v = weight * simd.load(scratch, window, lanes)
    u = weight * simd.load(scratch, other, lanes)
    for t in range(1, taps):
        weight = simd.load(scratch, wat + t * lanes, lanes)
        v = v + weight * simd.load(scratch, window + shifts[t], lanes)
        u = u + weight * simd.load(scratch, other + shifts[t], lanes)
    return v, u


@kernel(buffers=8)
def conv2d_depthwise_rows(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, kind = a[:15]
    hw, ohw, taps, lanes = h * wd, oh * ow, kh * kw, simd.lanes(x)
    vectors = (ow + lanes - 1) // lanes
    # each (row vector, kernel column) reads the same window of every input row: its first
    # column and its lanes inside the plane, computed once (divisions cost more than the taps)
    columns, windows = np.empty(vectors * kw, np.int64), np.empty(vectors * kw, np.int64)
    for v in range(vectors):
        for j in range(kw):
            column = v * lanes * sw + j * dw - pl
            start = (-column + sw - 1) // sw if column < 0 else 0
            stop = min(lanes, ow - v * lanes, (wd - column + sw - 1) // sw)
            columns[v * kw + j], windows[v * kw + j] = column, simd.window_bits(start, stop)
    geometry = (h, wd, oh, ow, kh, kw, sh, dh, pt, vectors)
    for p in prange(n * c):
        o, src, out = p % c, p * hw, p * ohw
        _plane_rows(x, w, y, src, out, o * taps, geometry, columns, windows, sw)
        _finish_channel(y[out : out + ohw], o, b, affine, res[out : out + ohw], kind, consts)
    return 0


@njit(inline="always", cache=True)
def _plane_rows(x, w, y, src, out, first, geometry, columns, windows, sw):
    """One plane of conv2d_depthwise_rows: eight output rows at once (eight independent
    chains of adds: four left the adder waiting on its own results), each tap one windowed
    load per row, taps added in order."""
    h, wd, oh, ow, kh, kw, sh, dh, pt, vectors = geometry
    lanes, step = simd.lanes(x), sh * wd
    for oy in range(0, oh, 8):
        for v in range(vectors):
            a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = simd.load(x, src, 0)  # zeros: + 0 is exact
            for i in range(kh):
                row = oy * sh + i * dh - pt  # rows outside the plane (padding): no lane
                r0, r1 = _row_bits(row, h), _row_bits(row + sh, h)
                r2, r3 = _row_bits(row + 2 * sh, h), _row_bits(row + 3 * sh, h)
                r4, r5 = _row_bits(row + 4 * sh, h), _row_bits(row + 5 * sh, h)
                r6, r7 = _row_bits(row + 6 * sh, h), _row_bits(row + 7 * sh, h)
                for j in range(kw):
                    k, weight = v * kw + j, w[first + i * kw + j]
                    at, bits = src + row * wd + columns[k], windows[k]
                    a0 = a0 + simd.load_lanes(x, at, sw, bits & r0) * weight
                    a1 = a1 + simd.load_lanes(x, at + step, sw, bits & r1) * weight
                    a2 = a2 + simd.load_lanes(x, at + 2 * step, sw, bits & r2) * weight
                    a3 = a3 + simd.load_lanes(x, at + 3 * step, sw, bits & r3) * weight
                    a4 = a4 + simd.load_lanes(x, at + 4 * step, sw, bits & r4) * weight
                    a5 = a5 + simd.load_lanes(x, at + 5 * step, sw, bits & r5) * weight
                    a6 = a6 + simd.load_lanes(x, at + 6 * step, sw, bits & r6) * weight
                    a7 = a7 + simd.load_lanes(x, at + 7 * step, sw, bits & r7) * weight
            count, at = min(lanes, ow - v * lanes), out + oy * ow + v * lanes
            for r, value in enumerate((a0, a1, a2, a3, a4, a5, a6, a7)):
                simd.store(y, at + r * ow, value, count if oy + r < oh else 0)


@njit(inline="always", cache=True)
def _row_bits(row, h):
    """All lanes (-1) for a row inside the plane, none (0) for a padding row."""
    return -1 if row >= 0 and row < h else 0


@njit(inline="always", cache=True)
def _nine_taps(block, src, at, shifts, w, first):
    """block[j] = sum of the nine taps t of w[first + t] * src[at + shifts[t] + j], added in
    tap order: one pass, each output stored once. Unsigned indices: no wraparound branch."""
    w0, w1, w2 = w[first], w[first + 1], w[first + 2]
    w3, w4, w5 = w[first + 3], w[first + 4], w[first + 5]
    w6, w7, w8 = w[first + 6], w[first + 7], w[first + 8]
    s0, s1, s2 = at + shifts[0], at + shifts[1], at + shifts[2]
    s3, s4, s5 = at + shifts[3], at + shifts[4], at + shifts[5]
    s6, s7, s8 = at + shifts[6], at + shifts[7], at + shifts[8]
    for j in range(block.shape[0]):
        v = w0 * src[np.uint64(s0 + j)] + w1 * src[np.uint64(s1 + j)]
        v += w2 * src[np.uint64(s2 + j)]
        v += w3 * src[np.uint64(s3 + j)]
        v += w4 * src[np.uint64(s4 + j)]
        v += w5 * src[np.uint64(s5 + j)]
        v += w6 * src[np.uint64(s6 + j)]
        v += w7 * src[np.uint64(s7 + j)]
        block[j] = v + w8 * src[np.uint64(s8 + j)]


@njit(inline="always", cache=True)
def _taps(block, src, at, shifts, w, first, taps):
    """Any other kernel size: block = the sum of its taps, three taps a pass, then one."""
    block[:] = 0
    for t in range(0, taps - 2, 3):
        s0, s1, s2 = at + shifts[t], at + shifts[t + 1], at + shifts[t + 2]
        axpy3(block, src, s0, s1, s2, w[first + t], w[first + t + 1], w[first + t + 2])
    for t in range(taps - taps % 3, taps):
        start = at + shifts[t]
        axpy(block, src[start : start + block.shape[0]], w[first + t])


def is_depthwise(node: Node) -> bool:
    """A conv with one input and one output channel per group: groups == C == OC."""
    c, (oc, cg) = node.inputs[0].shape[1], node.inputs[1].shape[:2]
    return cg == 1 and oc == c == node.attrs["groups"]


def is_parallel(node: Node) -> bool:
    """Whether the layer runs the parallel variant (see PARALLEL_MIN_MACS)."""
    kh, kw = node.inputs[1].shape[2:]
    return node.outputs[0].type.numel * kh * kw >= PARALLEL_MIN_MACS


def scratch_numel(node: Node) -> int:
    """One slot per thread: phase planes, the taps' slack and an accumulator block."""
    (sh, sw), kw, dw = node.attrs["stride"], node.inputs[1].shape[3], node.attrs["dilation"][1]
    hq, wq, rows = phases.conv_geometry(node)
    slot = sh * sw * hq * wq + (kw - 1) * dw // sw + rows * wq
    return numba.config.NUMBA_NUM_THREADS * slot


def attrs(node: Node) -> list[int]:
    """conv2d_depthwise's attrs, without the activation kind."""
    (n, c, h, wd), (_, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    dh, dw = node.attrs["dilation"]
    return [n, c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, *phases.conv_geometry(node)]


def lanes_attrs(node: Node) -> list[int]:
    """conv2d_depthwise_lanes's attrs, without the activation kind: the padded block's HP x WP
    is what the taps read, (O - 1) * S + (K - 1) * D + 1 each side."""
    (n, c, h, wd), (_, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    dh, dw = node.attrs["dilation"]
    hp, wp = (oh - 1) * sh + (kh - 1) * dh + 1, (ow - 1) * sw + (kw - 1) * dw + 1
    return [n, c, h, wd, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, hp, wp]


def lanes_scratch_numel(node: Node) -> int:
    """One slot per thread: the padded [HP, WP, lanes] block, the taps' weight vectors and
    the sums of lanes output pixels on their way back to the planes."""
    kh, kw = node.inputs[1].shape[2:]
    hp, wp = lanes_attrs(node)[14:16]
    lanes = VECTOR_BYTES // node.outputs[0].type.itemsize
    return numba.config.NUMBA_NUM_THREADS * lanes * (hp * wp + kh * kw + lanes)


def is_rows(node: Node) -> bool:
    """Whether a depthwise conv runs conv2d_depthwise_rows (see ROWS_MAX_OUTPUT_WIDTH)."""
    return not is_lanes(node) and node.outputs[0].shape[3] <= ROWS_MAX_OUTPUT_WIDTH


def is_lanes(node: Node) -> bool:
    """Whether a depthwise conv runs conv2d_depthwise_lanes: input planes up to
    LANES_MAX_INPUT_PIXELS, or kernels of LANES_ANY_PLANE_MIN_TAPS taps or more on any plane."""
    kh, kw = node.inputs[1].shape[2:]
    pixels = node.inputs[0].shape[2] * node.inputs[0].shape[3]
    return pixels <= LANES_MAX_INPUT_PIXELS or kh * kw >= LANES_ANY_PLANE_MIN_TAPS
