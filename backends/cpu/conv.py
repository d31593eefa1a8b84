"""CPU convolution and linear kernels.

Layout: NCHW activations, OIHW weights, flat buffers (see ``kernels.py``). Every GEMM is a
single-threaded BLAS call inside a parallel task (``blas.py``), with explicit leading
dimensions so it reads and writes sub-matrices in place. The lowering picks one of:

- ``conv2d_winograd`` (``winograd.py``): 3x3, stride 1, undilated, ungrouped, at least
  ``winograd.MIN_CHANNELS`` channels each side and ``winograd.MIN_TILES`` tiles (twice that
  for one image; most of a ResNet or a VGG): 2.25x fewer multiplies than the GEMM forms below.
- ``conv2d_small`` (``conv_small.py``): stride-1 convs too small to split (under
  SMALL_MAX_MACS), with 2+ output channels per group, that neither Winograd nor the pointwise
  GEMM takes: one serial pass, no parallel region and no BLAS call, on the wide grid below with
  4 output channels x 3 taps per vectorised loop (8->8 3x3 on 8x8: 1.8 us against 7.3).
- ``conv2d_tapped`` (``conv_tapped.py``; after conv2d_small's and conv2d_direct's rules): a
  network's first conv, from at most 4 input channels with output rows of more than three
  vectors: the pointwise register tile below run over the taps of the image's phase planes,
  no im2col (ResNet's 3->64 7x7 stride 2 stem: 1226 us against 1450).
- ``conv2d_pointwise`` (``conv_pointwise.py``; after conv2d_small's and conv2d_direct's rules):
  unpadded stride-1 1x1 convs with an epilogue it applies in registers (none, ReLU, hardtanh)
  that widen 32 input channels or fewer four times or more, or have maps of 8x8 or smaller, or
  several small images with small weights, or (one image) widen on maps of up to 14x14 with
  small weights: register tiles straight from NCHW to NCHW, no packing, each output written
  once, a plane's last pixels past its whole vectors as dot products.
- ``conv2d_shifted`` (stride 1, not pointwise, maps of SHIFTED_MIN_PIXELS pixels or more,
  SHIFTED_MIN_CHANNELS input channels per group or more): no im2col. The image is copied
  once into a zero-bordered buffer of row length Wp = W + PL + PR; on the "wide" output grid
  OH x Wp, tap (ki, kj) reads the padded image shifted by
  ``ki*DH*Wp + kj*DW`` elements, so the conv is a sum of KH*KW GEMMs
  ``W[:, :, ki, kj] [OC/g, C/g] @ shifted image [C/g, band of wide pixels]`` whose B operand
  is a strided view of the padded image (leading dimension: the padded plane).
  Columns ox >= OW of the wide grid are garbage and dropped when the band is copied out (with
  the bias). Each task is one band of output rows of one group.
- ``conv2d_gemm`` (strided, or small feature maps): the output pixels of each (image, group)
  are cut into blocks; each block is one task: im2col of just that block into the task's
  thread slot of the scratch (rows ``(ci, ki, kj)``, sized to stay in L2), then
  ``W_g [OC/g, C/g*KH*KW] @ cols`` straight into the block's columns of the output, then the
  bias. A pointwise conv (1x1, stride 1, no padding) skips im2col: the image is the column
  matrix. Maps smaller than MIN_GEMM_COLUMNS pixels put several whole images side by side in
  one task's columns (staging the output), so the GEMM is wide enough to pay for packing,
  except narrowing 1x1s with large weights, where staging costs more (``forward_images``).
  Where the tasks would not split evenly over the threads and a balanced pixel split would
  make narrow GEMMs (batch 1 on small maps), the output channels are cut in parts instead
  (``gemm_split``), every part reading one im2col of its block.
- ``conv2d_depthwise`` (``conv_depthwise.py``): depthwise convs (groups == C == OC), each
  plane copied, tapped and finished in one task while it is in L1 (MobileNet v2's depthwise
  layers at batch 1 on two threads: 2-3x faster than ``conv2d_direct`` below); input planes up
  to 28x28, and kernels of ten taps or more on any plane, take ``conv2d_depthwise_lanes``
  (a vector of channels side by side, turned in and out of the planes in registers), larger
  planes with output rows of up to 16 elements ``conv2d_depthwise_rows``.
- ``conv2d_direct``: direct loops, parallel over (image, output channel) planes, for channel
  multipliers (one input channel a group) and convs too thin or too small for a GEMM to pay
  off. Each input plane is split once
  into its stride's phase planes (``phases.py``; at stride 1 the zero-bordered plane), on
  which three taps at a time are one vectorised pass over a block of the wide output grid that
  stays in L1. Against one tap a pass over the whole plane (stride 1) or strided gathers per
  output row (stride 2), on MobileNet v2's depthwise convs (one thread): 32ch 112x112 0.43 ->
  0.27 ms, 96ch 112x112 stride 2 1.33 -> 0.42, 576ch 14x14 stride 2 0.33 -> 0.20; 960ch 7x7
  0.19 -> 0.21 (per-plane overhead of the phase split).
- ``linear``: ``y = x @ W.T + b``, one GEMM per block of output features (one GEMV per sample
  and block up to GEMV_MAX_ROWS samples).

Every kernel ends with the epilogue (``epilogue.py``): bias, a folded BatchNorm, a residual
add and an activation, applied to each run of output while it is in cache (``conv2d_fused``,
``linear_fused``; a plain layer has at most its bias).

Buffers: every conv kernel's (x, w, bias, affine, residual, consts, y, scratch), linear(x, w,
bias, affine, residual, consts, y): absent epilogue parts are empty.
Attrs: [N, C, H, W, OC, OH, OW, KH, KW] then shifted [PT, PB, PL, PR, DH, DW, groups, band],
gemm [SH, SW, PT, PL, DH, DW, groups, pointwise, block, images, threads, part rows], direct
[SH, SW, PT, PL, DH, DW, groups, HQ, WQ, block rows], small [PT, PB, PL, PR, DH, DW, groups,
band]; linear [N, in_features, out_features, block]; each then the epilogue's activation kind
(depthwise, tapped and pointwise: their own attrs, ``conv_depthwise.py``, ``conv_tapped.py``,
``conv_pointwise.py``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from backends.base import WEIGHTS_GENERATION
from backends.cpu import (
    conv_blocked,
    conv_depthwise,
    conv_pointwise,
    conv_small,
    conv_tapped,
    phases,
    winograd,
)
from backends.cpu.blas import matmul, matvec
from backends.cpu.epilogue import epilogue_buffers, finish_channel, finish_features
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from backends.cpu.windows import axpy, axpy3, valid_range
from graph.ir import Node

# im2col blocks aim at this many bytes, so a block stays in L2 (2 MB a core here) while the
# GEMM reads it. Against 256 KB, interleaved in one process (profile sums, ms): ResNet-50 at
# batch 32 1000 -> 979 (its 256 -> 512 1x1 stride 2 on 28x28 38.8 -> 32.3, 512 -> 128 1x1s
# 36.3 -> 33.7), at batch 1 37.9 -> 37.6 (wider blocks for its 1x1s on 56x56 and 28x28); ResNet-18
# CIFAR at batch 64 and MobileNet v2 even; training steps (bench/train.py) even. 4 MB was no
# faster and grew ResNet-50's arena at batch 1 from 8.6 to 10.1 MB.
BLOCK_BYTES = 2 << 20
# Wide pixels (output rows x padded width) per shifted-GEMM task.
SHIFTED_PIXELS = 256
# Fewest GEMM columns per call: below this, BLAS spends its time packing the weights.
MIN_GEMM_COLUMNS = 256
# Up to this many samples a linear layer runs one GEMV per sample: OpenBLAS's GEMM against the
# transposed weights packs all of them first (ResNet-50's [1000, 2048] classifier: 1.3 ms at 2
# to 4 rows, about 0.11 ms per row as GEMVs).
GEMV_MAX_ROWS = 8
# Fewest output pixels for the shifted GEMM. Smaller maps take im2col: a band of the wide grid
# is too narrow for the shifted GEMMs, and im2col's one GEMM can be cut by output channels
# (``gemm_split``; 512 -> 512 3x3 on 7x7 at batch 1: 5.6 ms shifted, 1.9 ms im2col).
SHIFTED_MIN_PIXELS = MIN_GEMM_COLUMNS
# Fewest input channels per group for the shifted GEMM: each tap's GEMM has K = C/g, and with
# fewer its KH*KW passes over the output cost more than im2col's one GEMM of K = C/g*KH*KW
# (kernel times, 2 threads, shifted against im2col: a CIFAR ResNet's 3->64 3x3 stem at batch
# 64, 8.7 against 2.6 ms; 8->32 3x3 on 32x32 at batch 64, 5.8 against 3.5; 12->32, 1.55
# against 1.32; 16->32 5x5, 4.2 against 4.6; 64->64 5x5 on 56x56 at batch 1, 3.3 against 7.7).
SHIFTED_MIN_CHANNELS = 16
# The forward GEMM of a narrowing 1x1 conv (C > OC) with weights of at least
# SINGLE_IMAGE_MIN_WEIGHT_BYTES, on maps of at least SINGLE_IMAGE_MIN_COLUMNS pixels, takes one
# image a call instead of staging several (``forward_images``): staging copies the wide input
# in and the output out, and costs more than BLAS packing the weights for each image.
# ResNet-50 at batch 32, interleaved in one process, staged against one image a call, ms, two
# runs: 1024 -> 256 on 14x14 80.6 / 80.2 against 66.2 / 64.1 (five layers), 1024 -> 512
# 27.3 / 26.9 against 26.1 / 24.9. Widening layers stay staged (256 -> 1024: 93 against 95).
SINGLE_IMAGE_MIN_WEIGHT_BYTES = 512 << 10
SINGLE_IMAGE_MIN_COLUMNS = 128
# Fewest output channels in one part when a GEMM is cut by output channels (``gemm_split``).
MIN_PART_ROWS = 32
# Below this many output channels per group, a GEMM's M dimension is too thin for BLAS.
DIRECT_MAX_CHANNELS = 8
# Below this many MACs per image, im2col and a BLAS call cost more than direct loops.
DIRECT_MAX_MACS = 1 << 16
# Below this many MACs a conv runs serially: two parallel phases cost about 4 us to start,
# more than a LeNet-sized layer gains from the second core.
PARALLEL_MIN_MACS = 1 << 18
# Below this many MACs (batch included) a stride-1 conv runs in conv2d_small (conv_small.py),
# serially, where the others would run serially too. Measured against the kernel it replaces
# (float32, batch 1 unless said, us through the executor): direct 8->8 3x3 on 8x8 1.8 vs 7.3
# (batch 4: 7.0 vs 28.9), LeNet-5's 1->6 5x5 on 28x28 6.5 vs 10.6; shifted LeNet-5's 6->16 5x5
# on 14x14 12.0 vs 21.7, 3->16 3x3 on 16x16 4.0 vs 19.0, 32->32 3x1 on 8x8 14.3 vs 22.1; gemm
# 16->16 5x5 on 5x5 14.6 vs 19.0. Above it the others split over the cores: not compared.
SMALL_MAX_MACS = PARALLEL_MIN_MACS
# Fewest output channels per group for conv2d_small: it computes 4 channels a pass, so with
# one it does 4x the MACs (1->1 5x5 on 28x28: 2.9 us against direct's 2.2; depthwise 3x3
# would gain 10-30%, e.g. 32 channels on 8x8 5.3 us against 7.4, but stays on direct).
SMALL_MIN_CHANNELS = 2


@njit(cache=True)
def im2col_images(x, first, count, c, group_start, geometry, rows, start, width, cols, slot):
    """im2col of ``count`` images side by side: for image m (``first + m``, channels from
    ``group_start``), cols[slot + r*count*width + m*width + j] = the input under tap r for
    output pixel start + j (0 where the tap falls in the padding), for j < width.
    ``geometry`` = (H, W, OW, KH, KW, SH, SW, PT, PL, DH, DW)."""
    h, wd, ow, kh, kw, sh, sw, pt, pl, dh, dw = geometry
    ld, oh = count * width, (start + width + ow - 1) // ow
    whole = start == 0 and width == oh * ow  # the block is whole images: copy planes
    for m in range(count):
        image = ((first + m) * c + group_start) * h * wd
        for r in range(rows):
            ci, kk = r // (kh * kw), r % (kh * kw)
            ki, kj = kk // kw, kk % kw
            plane, at = image + ci * h * wd, slot + r * ld + m * width
            if whole:
                _im2col_plane(x, plane, h, wd, oh, ow, sh, sw, pt, pl, ki * dh, kj * dw, cols, at)
            else:
                _im2col_row(
                    x,
                    plane,
                    h,
                    wd,
                    ow,
                    sh,
                    sw,
                    pt,
                    pl,
                    ki * dh,
                    kj * dw,
                    start,
                    cols[at : at + width],
                )


@njit(inline="always", cache=True)
def _im2col_plane(x, plane, h, wd, oh, ow, sh, sw, pt, pl, dy, dx, cols, at):
    """One tap's whole output plane, cols[at + oy*OW + ox]: small feature maps have rows too
    short to amortise ``_im2col_row``'s per-row divisions. Indices are cast to unsigned (they
    are never negative), which drops Numba's wraparound branch: 6x faster on LeNet's 10x10."""
    y_lo, y_hi = valid_range(oh, h, sh, pt, dy)
    x_lo, x_hi = valid_range(ow, wd, sw, pl, dx)
    for oy in range(oh):
        row = at + oy * ow
        if oy < y_lo or oy >= y_hi or x_lo >= x_hi:
            cols[row : row + ow] = 0
            continue
        if x_lo > 0:
            cols[row : row + x_lo] = 0
        if x_hi < ow:
            cols[row + x_hi : row + ow] = 0
        start = plane + (oy * sh - pt + dy) * wd - pl + dx + x_lo * sw
        _copy_run(x, start, sw, cols, row + x_lo, x_hi - x_lo)


@njit(inline="always", cache=True)
def _copy_run(src, start, stride, dst, at, count):
    """dst[at + j] = src[start + j*stride] for j < count (non-negative indices, unsigned)."""
    if stride == 1:
        for j in range(count):
            dst[np.uint64(at + j)] = src[np.uint64(start + j)]
    else:
        for j in range(count):
            dst[np.uint64(at + j)] = src[np.uint64(start + j * stride)]


@njit(inline="always", cache=True)
def _im2col_row(x, plane, h, wd, ow, sh, sw, pt, pl, dy, dx, start, row):
    """One tap's row of the column matrix, output row by output row."""
    x_lo, x_hi = valid_range(ow, wd, sw, pl, dx)
    width, p = row.shape[0], start
    while p < start + width:
        oy, ox0 = p // ow, p % ow
        ox1 = min(ow, ox0 + start + width - p)
        out = p - start - ox0  # row index of output column ox
        iy = oy * sh - pt + dy
        lo, hi = max(ox0, x_lo), min(ox1, x_hi)
        if iy < 0 or iy >= h or lo >= hi:
            row[out + ox0 : out + ox1] = 0
        else:
            row[out + ox0 : out + lo] = 0
            _copy_run(x, plane + iy * wd - pl + dx + lo * sw, sw, row, out + lo, hi - lo)
            row[out + hi : out + ox1] = 0
        p += ox1 - ox0


@kernel(buffers=8)
def conv2d_gemm(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, pointwise, block = a[:18]
    images, threads, part_rows, kind = a[18], a[19], a[20], a[21]
    cg, ocg, hw, ohw = c // groups, oc // groups, h * wd, oh * ow
    rows, blocks, sets = cg * kh * kw, (ohw + block - 1) // block, (n + images - 1) // images
    parts = (ocg + part_rows - 1) // part_rows
    span = images * block  # GEMM columns of one task
    geometry = (h, wd, ow, kh, kw, sh, sw, pt, pl, dh, dw)
    # scratch: [one im2col block per thread | one staged output block per thread], or with
    # the output channels in parts, [one im2col block per (image, group, block)]
    cols, staged = scratch[: threads * rows * span], scratch[threads * rows * span :]
    shared_cols = parts > 1 and not pointwise
    if shared_cols:  # every part of a block multiplies the same columns: im2col them once,
        # each block's input channels split over the threads (batch 1 has one or two blocks)
        for task in prange(sets * groups * blocks * threads):
            share, task_cols = task % threads, task // threads
            first, g = task_cols // (groups * blocks), (task_cols // blocks) % groups
            start = (task_cols % blocks) * block
            width = min(block, ohw - start)
            c0, c1 = share * cg // threads, (share + 1) * cg // threads
            at, share_rows = task_cols * rows * block + c0 * kh * kw * width, (c1 - c0) * kh * kw
            im2col_images(
                x, first, 1, c, g * cg + c0, geometry, share_rows, start, width, scratch, at
            )
    for task in prange(sets * groups * blocks * parts):
        part, task_cols = task % parts, task // parts
        first, g = task_cols // (groups * blocks) * images, (task_cols // blocks) % groups
        start, first_row = (task_cols % blocks) * block, part * part_rows
        count, width = min(images, n - first), min(block, ohw - start)
        m = min(part_rows, ocg - first_row)
        weights, tid = (w, (g * ocg + first_row) * rows, rows), get_thread_id()
        dst = (first * oc + g * ocg + first_row) * ohw + start
        if pointwise and images == 1:
            src = (first * c + g * cg) * hw + start
            matmul(m, width, rows, weights, (x, src, hw), (y, dst, ohw))
        elif shared_cols:
            columns = (scratch, task_cols * rows * block, width)
            matmul(m, width, rows, weights, columns, (y, dst, ohw))
        else:
            slot = tid * rows * span
            im2col_images(x, first, count, c, g * cg, geometry, rows, start, width, cols, slot)
            if images == 1:
                matmul(m, width, rows, weights, (cols, slot, width), (y, dst, ohw))
            else:
                _gemm_staged(
                    ocg, count * width, rows, weights, cols, slot, staged, tid * ocg * span
                )
                for i in range(count):
                    for o in range(ocg):
                        at = ((first + i) * oc + g * ocg + o) * ohw + start
                        _unstage(
                            staged, tid * ocg * span, ocg, count * width, o, i * width, y, at, width
                        )
        for i in range(count):
            for o in range(first_row, first_row + m):
                at = ((first + i) * oc + g * ocg + o) * ohw + start
                finish_channel(
                    y[at : at + width], g * ocg + o, b, affine, res[at : at + width], kind, consts
                )
    return 0


@njit(inline="always", cache=True)
def _gemm_staged(ocg, columns, rows, weights, cols, slot, staged, out):
    """Several images' outputs, staged: [OC/g, columns], or its transpose [columns, OC/g] when
    OC/g is the smaller side: OpenBLAS's Haswell kernels run a row-major [M, N] product about
    twice as fast with the smaller dimension as N (LeNet features.3: [16, 300, 150])."""
    if ocg < columns:
        matmul(columns, ocg, rows, (cols, slot, columns), weights, (staged, out, ocg), 0.0, 1, 1)
    else:
        matmul(ocg, columns, rows, weights, (cols, slot, columns), (staged, out, columns))


@njit(inline="always", cache=True)
def _unstage(staged, out, ocg, columns, o, column, y, at, width):
    """y[at + j] = staged output channel o, column ``column + j``, in either staged layout."""
    if ocg < columns:
        for j in range(width):
            y[np.uint64(at + j)] = staged[np.uint64(out + (column + j) * ocg + o)]
    else:
        row = out + o * columns + column
        y[at : at + width] = staged[row : row + width]


@kernel(buffers=8)
def conv2d_shifted(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, pt, pb, pl, pr, dh, dw, groups, band, kind = a[:18]
    cg, ocg, taps = c // groups, oc // groups, kh * kw
    wp, hp = wd + pl + pr, h + pt + pb
    plane, wide = hp * wp, band * wp
    # scratch: [per-tap weights: groups x taps x OC/g x C/g | padded image + slack | wide slots]
    tapped, padded = scratch[: oc * cg * taps], scratch[oc * cg * taps :]
    slack = (kw - 1) * dw  # the last band's garbage columns read this far past the image
    padded[c * plane : c * plane + slack] = 0
    slots = padded[c * plane + slack :]
    for o in prange(oc):
        for ci in range(cg):
            for t in range(taps):
                tapped[((o // ocg * taps + t) * ocg + o % ocg) * cg + ci] = w[
                    (o * cg + ci) * taps + t
                ]
    bands = (oh + band - 1) // band
    for i in range(n):
        for ci in prange(c):
            pad_plane(
                x[(i * c + ci) * h * wd : (i * c + ci + 1) * h * wd],
                padded,
                ci * plane,
                h,
                wd,
                pt,
                pl,
                wp,
                plane,
            )
        for task in prange(groups * bands):
            g, oy0 = task // bands, (task % bands) * band
            width = min(band, oh - oy0) * wp
            slot = get_thread_id() * ocg * wide
            for t in range(taps):
                shift = (oy0 + t // kw * dh) * wp + t % kw * dw
                tap_weights = (tapped, (g * taps + t) * ocg * cg, cg)
                image = (padded, g * cg * plane + shift, plane)
                matmul(
                    ocg, width, cg, tap_weights, image, (slots, slot, width), 0.0 if t == 0 else 1.0
                )
            for o in range(ocg):
                channel = g * ocg + o
                for r in range(width // wp):
                    out = ((i * oc + channel) * oh + oy0 + r) * ow
                    _unwiden(y[out : out + ow], slots[slot + o * width + r * wp :])
                    out_row = y[out : out + ow]
                    finish_channel(out_row, channel, b, affine, res[out : out + ow], kind, consts)
    return 0


@njit(inline="always", cache=True)
def _unwiden(dst, wide_row):
    """dst = the first len(dst) columns of a row of the wide grid (the rest are garbage)."""
    for k in range(dst.shape[0]):
        dst[k] = wide_row[k]


@njit(inline="always", cache=True)
def pad_plane(src, padded, start, h, wd, pt, pl, wp, plane):
    """Copy one H x W plane into a zero-bordered plane of row length wp at ``start``."""
    padded[start : start + plane] = 0
    for iy in range(h):
        row = start + (iy + pt) * wp + pl
        padded[row : row + wd] = src[iy * wd : (iy + 1) * wd]


@kernel(buffers=8)
def conv2d_direct(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups, hq, wq, rows, kind = a[:20]
    cg, ocg, hw, ohw, taps = c // groups, oc // groups, h * wd, oh * ow, kh * kw
    plane = sh * sw * hq * wq
    # scratch: [phase planes of every input plane | slack | one accumulator block per thread]
    for q in prange(n * c):
        phases.split(x[q * hw : (q + 1) * hw], h, wd, scratch, q * plane, pt, pl, sh, sw, hq, wq, 0)
    slack = (kw - 1) * dw // sw
    scratch[n * c * plane : n * c * plane + slack] = 0
    slots = scratch[n * c * plane + slack :]
    shifts = phases.taps(kh, kw, dh, dw, sh, sw, hq, wq)
    for p in prange(n * oc):
        i, o = p // oc, p % oc
        acc = slots[get_thread_id() * rows * wq : (get_thread_id() + 1) * rows * wq]
        for oy0 in range(0, oh, rows):
            count = min(rows, oh - oy0)
            block = acc[: count * wq]
            block[:] = 0
            for ci in range(cg):
                src, at = (i * c + o // ocg * cg + ci) * plane + oy0 * wq, (o * cg + ci) * taps
                for t in range(0, taps - 2, 3):  # three taps a pass, then one
                    s0, s1, s2 = src + shifts[t], src + shifts[t + 1], src + shifts[t + 2]
                    axpy3(block, scratch, s0, s1, s2, w[at + t], w[at + t + 1], w[at + t + 2])
                for t in range(taps - taps % 3, taps):
                    start = src + shifts[t]
                    axpy(block, scratch[start : start + count * wq], w[at + t])
            phases.unwiden(
                y[p * ohw + oy0 * ow : p * ohw + (oy0 + count) * ow], block, count, ow, wq
            )
        out_plane = y[p * ohw : (p + 1) * ohw]
        finish_channel(out_plane, o, b, affine, res[p * ohw : (p + 1) * ohw], kind, consts)
    return 0


@kernel(buffers=7)
def linear(x, w, b, affine, res, consts, y, a):
    n, in_features, out_features, block, kind = a[0], a[1], a[2], a[3], a[4]
    for task in prange((out_features + block - 1) // block):
        start = task * block
        width = min(block, out_features - start)
        weights = (w, start * in_features, in_features)
        if n <= GEMV_MAX_ROWS:
            for i in range(n):
                sample, out = (x, i * in_features), (y, i * out_features + start)
                matvec(width, in_features, weights, sample, out)
        else:
            out = (y, start, out_features)
            matmul(n, width, in_features, (x, 0, in_features), weights, out, trans_b=1)
        for i in range(n):
            at = i * out_features + start
            row, residual = y[at : at + width], res[at : at + width]
            finish_features(row, start, b, affine, residual, kind, consts)
    return 0


def _is_direct(node: Node) -> bool:
    """Convs with one input channel a group (a depthwise conv with a channel multiplier), and
    convs whose GEMM would be too thin (few output channels per group or few taps) or too small
    to repay im2col and a BLAS call, run as direct loops (plain depthwise convs are taken by
    conv2d_depthwise first)."""
    oc, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    thin = oc // node.attrs["groups"] < DIRECT_MAX_CHANNELS or cg * kh * kw < 16
    return cg == 1 or thin or oc * cg * kh * kw * oh * ow < DIRECT_MAX_MACS


def _is_small(node: Node) -> bool:
    """Stride-1 convs too small to split, with 2+ output channels per group, run serially in
    conv2d_small, except the pointwise convs the GEMM takes (16->16 1x1 on 16x16: 5.2 us
    against 2.5; 64->64 1x1 on 4x4: 15.4 against 3.1) and Winograd's (its rule and tests
    stand where it has MIN_TILES tiles; 16->16 3x3 on 8x8 at batch 1 has too few, and takes
    5.6 us here against Winograd's 9.0), unless direct loops would have run them."""
    oc, cg, kh, kw = node.inputs[1].shape
    macs = node.outputs[0].type.numel * cg * kh * kw
    return (
        node.attrs["stride"] == (1, 1)
        and macs < SMALL_MAX_MACS
        and oc // node.attrs["groups"] >= SMALL_MIN_CHANNELS
        and (_is_direct(node) or not (is_pointwise(node) or winograd.is_winograd(node)))
    )


def is_pointwise(node: Node) -> bool:
    kh, kw = node.inputs[1].shape[2:]
    return (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1) and not any(node.attrs["padding"])


def rows_and_block(node: Node) -> tuple[int, int]:
    """im2col rows, and the pixel block: whole images when several images share a GEMM, else
    about the L2 budget's worth of columns (never fewer than MIN_GEMM_COLUMNS), a multiple of
    16, with the image cut into a multiple of the thread count of equal blocks (so the
    threads finish together)."""
    _, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    rows, ohw, threads = cg * kh * kw, oh * ow, numba.config.NUMBA_NUM_THREADS
    if images_per_task(node) > 1:
        return rows, ohw
    blocks = _pixel_blocks(node)
    blocks = -(-blocks // threads) * threads if blocks > 1 or node.inputs[0].shape[0] == 1 else 1
    return rows, min(ohw, _round_up(-(-ohw // blocks), 16))


def _pixel_blocks(node: Node) -> int:
    """The fewest blocks of an image's output pixels whose im2col columns stay within
    BLOCK_BYTES, none narrower than MIN_GEMM_COLUMNS."""
    _, cg, kh, kw = node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    itemsize = node.outputs[0].type.itemsize
    return -(-oh * ow // max(MIN_GEMM_COLUMNS, BLOCK_BYTES // (cg * kh * kw * itemsize)))


def gemm_split(node: Node) -> tuple[int, int]:
    """The forward GEMM's pixel block and output channels per task. Cutting one image's pixels
    into a multiple of the thread count of blocks (``rows_and_block``) makes narrow GEMMs on
    small maps (1024 <- 256 1x1 on 14x14 at batch 1: blocks of 112 and 84 columns, 790 us on
    two threads); where the tasks do not split evenly over the threads and such blocks would be
    narrower than MIN_GEMM_COLUMNS, the output channels are cut in parts instead (two halves of
    512 rows: 510 us), each part's GEMM reading the block's im2col columns, made once."""
    n, oc, oh, ow = node.outputs[0].shape
    groups, threads = node.attrs["groups"], numba.config.NUMBA_NUM_THREADS
    ocg, ohw = oc // groups, oh * ow
    _, block = rows_and_block(node)
    if images_per_task(node) > 1:
        return block, ocg
    blocks = _pixel_blocks(node)
    tasks, balanced = n * groups * blocks, -(-blocks // threads) * threads
    parts = threads // math.gcd(tasks, threads)
    part_rows = _round_up(-(-ocg // parts), 16)
    if parts == 1 or ohw // balanced >= MIN_GEMM_COLUMNS or part_rows < MIN_PART_ROWS:
        return block, ocg
    return min(ohw, _round_up(-(-ohw // blocks), 16)), part_rows


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def images_per_task(node: Node) -> int:
    """Small feature maps (layer4 of a CIFAR ResNet: 4x4) are batched: one GEMM covers enough
    images for MIN_GEMM_COLUMNS columns, so BLAS packs the weights once for all of them."""
    (n, _, oh, ow) = node.outputs[0].shape
    return 1 if oh * ow >= MIN_GEMM_COLUMNS else min(n, -(-MIN_GEMM_COLUMNS // (oh * ow)))


def forward_images(node: Node) -> int:
    """``images_per_task`` for the forward GEMM, but one image a call for an ungrouped
    narrowing 1x1 conv with large weights (see SINGLE_IMAGE_MIN_WEIGHT_BYTES). Its block and
    split stay the same: both are the whole map either way."""
    c, oc = node.inputs[0].shape[1], node.inputs[1].shape[0]
    _, _, oh, ow = node.outputs[0].shape
    large = node.inputs[1].type.nbytes >= SINGLE_IMAGE_MIN_WEIGHT_BYTES
    narrowing = is_pointwise(node) and node.attrs["groups"] == 1 and c > oc
    if narrowing and large and oh * ow >= SINGLE_IMAGE_MIN_COLUMNS:
        return 1
    return images_per_task(node)


def _is_shifted(node: Node) -> bool:
    """Stride-1 convs on maps of at least SHIFTED_MIN_PIXELS pixels, with at least
    SHIFTED_MIN_CHANNELS input channels per group."""
    _, _, oh, ow = node.outputs[0].shape
    stride_1 = node.attrs["stride"] == (1, 1)
    deep = node.inputs[1].shape[1] >= SHIFTED_MIN_CHANNELS
    return stride_1 and deep and not is_pointwise(node) and oh * ow >= SHIFTED_MIN_PIXELS


def _band(node: Node) -> int:
    """Output rows per shifted-GEMM task: about SHIFTED_PIXELS wide pixels, in a multiple of
    the thread count of equal bands."""
    (_, _, oh, _), (_, _, pl, pr) = node.outputs[0].shape, node.attrs["padding"]
    wp, threads = node.inputs[0].shape[3] + pl + pr, numba.config.NUMBA_NUM_THREADS
    bands = -(-oh // max(1, SHIFTED_PIXELS // wp))
    bands = -(-bands // threads) * threads
    return max(1, -(-oh // bands))


def _conv2d_scratch_numel(node: Node) -> int:
    """Scratch elements: per-tap weights, the padded image and one wide band per thread for the
    shifted GEMM; one im2col block per thread for im2col; none for direct and pointwise."""
    (_, c, h, wd), (oc, cg, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    threads = numba.config.NUMBA_NUM_THREADS
    pt, pb, pl, pr = node.attrs["padding"]
    wp, dw = wd + pl + pr, node.attrs["dilation"][1]
    if conv_depthwise.is_depthwise(node):
        if conv_depthwise.is_rows(node):
            return 0
        if conv_depthwise.is_lanes(node):
            return conv_depthwise.lanes_scratch_numel(node)
        return conv_depthwise.scratch_numel(node)
    if _is_small(node):
        return conv_small.scratch_numel(node)
    if _is_direct(node):
        (sh, sw), n = node.attrs["stride"], node.inputs[0].shape[0]
        hq, wq, rows = phases.conv_geometry(node)
        return n * c * sh * sw * hq * wq + (kw - 1) * dw // sw + threads * rows * wq
    if winograd.is_winograd(node):
        return winograd.scratch_numel(node)
    images = forward_images(node)
    if is_pointwise(node) and images == 1:
        return 0
    if _is_shifted(node):
        band_numel = oc // node.attrs["groups"] * _band(node) * wp
        return oc * cg * kh * kw + c * (h + pt + pb) * wp + (kw - 1) * dw + threads * band_numel
    rows, (block, part_rows) = cg * kh * kw, gemm_split(node)
    if part_rows < oc // node.attrs["groups"]:  # im2col columns of every (image, group, block)
        blocks = -(-node.outputs[0].shape[2] * node.outputs[0].shape[3] // block)
        return node.inputs[0].shape[0] * node.attrs["groups"] * blocks * rows * block
    staged = oc // node.attrs["groups"] * block * images if images > 1 else 0
    return threads * (rows * block * images + staged)


def _conv2d_scratch(node: Node) -> int:
    numel = _conv2d_scratch_numel(node)
    if conv_blocked.is_blocked(node):  # the plan may be frozen (the memory plan cannot tell)
        numel = max(numel, conv_blocked.scratch_numel(node))
    if is_pointwise(node):  # the tile's rule also depends on the epilogue's activation
        numel = max(numel, conv_pointwise.scratch_numel(node))
    if conv_tapped.is_tapped_shape(node):  # so does the tapped tile's
        numel = max(numel, conv_tapped.scratch_numel(node))
    return numel * node.outputs[0].type.itemsize


@lowers("conv2d", "conv2d_fused", scratch=_conv2d_scratch)
def _lower_conv2d(node: Node, io: NodeIO):
    (n, c, h, wd), (oc, cg, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, pb, pl, pr) = node.attrs["stride"], node.attrs["padding"]
    (dh, dw), groups = node.attrs["dilation"], node.attrs["groups"]
    parallel = io.output()[1] * cg * kh * kw >= PARALLEL_MIN_MACS
    epilogue, kind = epilogue_buffers(node, io)
    scratch = io.scratch(_conv2d_scratch_numel(node))
    buffers = [io.input(0), io.input(1), *epilogue, io.output(), scratch]
    shape = [n, c, h, wd, oc, oh, ow, kh, kw]
    if conv_depthwise.is_depthwise(node):
        parallel = conv_depthwise.is_parallel(node)
        if conv_depthwise.is_rows(node):
            attrs, kernel = conv_depthwise.attrs(node)[:14], conv_depthwise.conv2d_depthwise_rows
        elif conv_depthwise.is_lanes(node):
            attrs, kernel = conv_depthwise.lanes_attrs(node), conv_depthwise.conv2d_depthwise_lanes
        else:
            attrs, kernel = conv_depthwise.attrs(node), conv_depthwise.conv2d_depthwise
        attrs += [kind]
        return [kernel.step(node.name, io.dtype, parallel, buffers, attrs)]
    generation = io.stored(WEIGHTS_GENERATION, 8 // node.outputs[0].type.itemsize)
    if generation is not None and conv_blocked.is_blocked(node):
        packed = io.const(conv_blocked.unpacked_header(node))
        buffers = [*buffers[:-1], io.scratch(conv_blocked.scratch_numel(node)), packed, generation]
        attrs = conv_blocked.attrs(node) + [kind]
        return [conv_blocked.conv2d_blocked.step(node.name, io.dtype, True, buffers, attrs)]
    if _is_small(node):
        attrs = conv_small.attrs(node) + [kind]
        return [conv_small.conv2d_small.step(node.name, io.dtype, False, buffers, attrs)]
    if _is_direct(node):
        attrs = shape + [sh, sw, pt, pl, dh, dw, groups, *phases.conv_geometry(node), kind]
        return [conv2d_direct.step(node.name, io.dtype, parallel, buffers, attrs)]
    if conv_tapped.is_tapped(node, kind):
        attrs = conv_tapped.attrs(node) + [kind]
        buffers[-1] = io.scratch(conv_tapped.scratch_numel(node))
        return [conv_tapped.conv2d_tapped.step(node.name, io.dtype, parallel, buffers, attrs)]
    if conv_pointwise.is_pointwise_tiled(node, kind, forward_images(node) > 1):
        attrs = conv_pointwise.attrs(node) + [kind]
        buffers[-1] = io.scratch(conv_pointwise.scratch_numel(node))
        kernel = conv_pointwise.conv2d_pointwise
        return [kernel.step(node.name, io.dtype, parallel, buffers, attrs)]
    if winograd.is_winograd(node):
        attrs = winograd.attrs(node) + [kind]
        return [winograd.conv2d_winograd.step(node.name, io.dtype, parallel, buffers, attrs)]
    if _is_shifted(node):
        attrs = shape + [pt, pb, pl, pr, dh, dw, groups, _band(node), kind]
        return [conv2d_shifted.step(node.name, io.dtype, parallel, buffers, attrs)]
    block, part_rows = gemm_split(node)
    attrs = shape + [sh, sw, pt, pl, dh, dw, groups, int(is_pointwise(node)), block]
    attrs += [forward_images(node), numba.config.NUMBA_NUM_THREADS, part_rows, kind]
    return [conv2d_gemm.step(node.name, io.dtype, parallel, buffers, attrs)]


@lowers("linear", "linear_fused")
def _lower_linear(node: Node, io: NodeIO):
    (n, in_features), out_features = node.inputs[0].shape, node.inputs[1].shape[0]
    epilogue, kind = epilogue_buffers(node, io)
    buffers = [io.input(0), io.input(1), *epilogue, io.output()]
    threads = numba.config.NUMBA_NUM_THREADS
    block = max(16, -(-out_features // threads))
    work = n * in_features * out_features
    return [
        linear.step(
            node.name,
            io.dtype,
            io.parallel(work),
            buffers,
            [n, in_features, out_features, block, kind],
        )
    ]
