"""Would an NHWC (or NCHW16c) internal layout make ConvForge's conv-heavy models faster?

Issue 13 item 3 asks for an NHWC or blocked layout, converted only at the graph's edges, where it
wins. This measures, per layer of ResNet-50 and MobileNet v2 at 224x224, float32, 2 threads
everywhere, medians of interleaved blocks (``common.interleaved_medians``) of the executor or
kernel call alone (inputs, outputs and scratch preallocated):

- "CF": ConvForge as it is: a one-layer ``graph.nn`` model compiled as today (NCHW; the
  "kernel" column is ``conv.py``'s choice: Winograd, shifted GEMM, im2col GEMM, pointwise GEMM
  or direct loops), timed as ``exe._execute()``: the executor only, no input copy;
- "NHWC": a prototype written here in Numba, the way the engine would run it (``prange``
  tasks, each calling the same single-threaded BLAS (``blas.BLAS``) through ``blas.matmul``; no
  NumPy BLAS, no BLAS threads): a 1x1 stride-1 conv is one GEMM [N*H*W, C] @ [C, OC] cut into
  row blocks (column blocks for small maps); any other conv is an NHWC im2col (KH runs of KW*C
  contiguous inputs per output pixel) of a block of pixels into a per-thread slot, then GEMM
  [pixels, KH*KW*C] @ [KH*KW*C, OC]; a depthwise 3x3 conv and a 3x3 max-pool loop over output
  rows, the nine taps summed in registers, vectorised over channels;
- "wino": for 3x3 stride-1 convs, NHWC Winograd F(2x2, 3x3) with ``winograd.py``'s algebra,
  schedules and per-call weight transform, but every transform vectorised over channels;
- "16c": the depthwise and max-pool loops on NCHW16c ([N, C/16, H, W, 16]: one AVX-512 vector
  of channels per pixel);
- torch: ``torch.nn.functional`` in NCHW and in channels_last ("CL": input and weight NHWC).

Every output is checked against torch NCHW (max |diff| / max |torch| < 1e-4) before timing; the
run stops at the first mismatch. "CF/x" above 1: x is faster than ConvForge. The "edge" rows
time the layout change at a graph's edges, NCHW -> NHWC of the input and NHWC -> NCHW of the
last feature map, as a Numba ``prange`` transpose ("NHWC") and as torch's ``contiguous``
("torch CL"); their "CF" column is a parallel copy of the same bytes, the floor.

A busy machine: a parallel region whose second thread waits for a core costs a scheduler tick
(4 ms here), which no median undoes. Each case first waits (``--wait`` s at most) for other
processes to go under IDLE_LOAD of the CPUs, and is timed again (RETRIES times at most) if they
took more than RETRY_LOAD meanwhile; "load" is their share during the case's last try: distrust
rows above a few percent.

Sets (``--set``): ``layers`` (default): representative layers at batch 1, and the main ones at
batch 32 unless ``--quick``, then the edges; ``resnet50`` or ``mobilenet_v2``: every distinct conv
and max-pool of that zoo model at ``--batch``, with its count in the model ("(xN)"), and a total
row: the count-weighted sum (convs and pools only: no BatchNorm, activations, adds or head),
NHWC taking its faster kernel per layer plus the input's conversion.

Run: ``python bench/layout.py`` (and with ``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE``),
about 3 minutes on 2 cores when idle, ``--quick`` about 1;
``python bench/layout.py --set resnet50 --batch 32`` for a whole model.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

os.environ["NUMBA_NUM_THREADS"] = "2"  # ConvForge's and the prototypes' threads

import numpy as np
import torch
import torch.nn.functional as F
from numba import get_thread_id, njit, prange

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import environment_line, interleaved_medians, print_table  # noqa: E402

import engine  # noqa: E402  (imports the CPU backend: threading layer, 1-thread SciPy BLAS)
import graph.nn as nn  # noqa: E402
import zoo  # noqa: E402
from backends.cpu import conv as cf_conv  # noqa: E402
from backends.cpu import winograd  # noqa: E402
from backends.cpu.blas import matmul  # noqa: E402
from graph.trace import trace  # noqa: E402

THREADS = int(os.environ["NUMBA_NUM_THREADS"])
TOLERANCE = 1e-4
ROUNDS, CASE_SECONDS, QUICK_SECONDS, MAX_BLOCK = 7, 4.0, 1.5, 100
IDLE_LOAD = 0.1  # other processes' share of the CPUs below which a case starts (--wait)
RETRY_LOAD, RETRIES = 0.2, 3  # a case timed while others took more is timed again
# NHWC im2col: pixels per task, so a block of rows stays near IM2COL_BYTES but the GEMM keeps
# at least MIN_GEMM_ROWS rows (OpenBLAS packs all of B for every call: fewer rows, more packing).
IM2COL_BYTES = 512 * 1024
MIN_GEMM_ROWS = 256
BLOCK = 16  # NCHW16c lanes: one AVX-512 vector of float32
HEADER = ["layer", "N", "kernel", "CF ms", "NHWC ms", "wino ms", "16c ms", "torch NCHW",
          "torch CL", "CF/NHWC", "CF/wino", "CF/16c", "NCHW/CL", "load"]  # fmt: skip


@dataclass(frozen=True)
class Layer:
    """One conv (groups == channels: depthwise) or 3x3 max-pool ("pool") at batch ``n``."""

    name: str
    kind: str  # "conv" or "pool"
    c: int
    oc: int
    h: int
    w: int
    k: int
    stride: int
    pad: int
    groups: int = 1
    n: int = 1
    count: int = 1  # how often the model has it (model sets)

    @property
    def oh(self) -> int:
        return (self.h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def ow(self) -> int:
        return (self.w + 2 * self.pad - self.k) // self.stride + 1

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups == self.c == self.oc and self.groups > 1

    @property
    def label(self) -> str:
        stride = f"/{self.stride}" if self.stride > 1 else ""
        if self.kind == "pool":
            return f"{self.name} maxpool {self.k}x{self.k}{stride} {self.c}ch {self.h}x{self.w}"
        if self.depthwise:
            return f"{self.name} dw {self.k}x{self.k}{stride} {self.c}ch {self.h}x{self.w}"
        shape = f"{self.c}->{self.oc} {self.h}x{self.w}"
        return f"{self.name} {self.k}x{self.k}{stride} {shape}"


def _conv(name, c, oc, h, k, stride=1, groups=1):
    return Layer(name, "conv", c, oc, h, h, k, stride, k // 2, groups)


LAYERS = [
    _conv("r50 stem", 3, 64, 224, 7, 2),
    Layer("r50", "pool", 64, 64, 112, 112, 3, 2, 1),
    _conv("r50 l1", 64, 256, 56, 1),
    _conv("r50 l1", 256, 64, 56, 1),
    _conv("r50 l1", 64, 64, 56, 3),
    _conv("r50 l2", 128, 128, 56, 3, 2),
    _conv("r50 l3", 256, 256, 14, 3),
    _conv("r50 l3", 512, 1024, 28, 1, 2),
    _conv("r50 l4", 2048, 512, 7, 1),
    _conv("r50 l4", 512, 512, 7, 3),
    _conv("mb2 stem", 3, 32, 224, 3, 2),
    _conv("mb2", 32, 32, 112, 3, groups=32),
    _conv("mb2", 96, 96, 112, 3, 2, groups=96),
    _conv("mb2", 144, 144, 56, 3, groups=144),
    _conv("mb2", 384, 384, 14, 3, groups=384),
    _conv("mb2", 24, 144, 56, 1),
    _conv("mb2", 144, 24, 56, 1),
    _conv("mb2", 64, 384, 14, 1),
    _conv("mb2", 320, 1280, 7, 1),
]
# batch 32: the layers of each kind that carry most of the time
LAYERS_B32 = [0, 1, 2, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16]


# **** NHWC and NCHW16c prototypes ****


@njit(parallel=True, error_model="numpy")
def gemm_nhwc(x, w, y, m, k, n, row_block, col_block):
    """y[m, n] = x[m, k] @ w[k, n] (flat, row-major): one single-threaded GEMM per (row block,
    column block) task. A 1x1 stride-1 conv in NHWC: x is [N*H*W, C], w [C, OC]."""
    cols = (n + col_block - 1) // col_block
    tasks = (m + row_block - 1) // row_block * cols
    for t in prange(tasks):
        r0, c0 = t // cols * row_block, t % cols * col_block
        rows, width = min(row_block, m - r0), min(col_block, n - c0)
        matmul(rows, width, k, (x, r0 * k, k), (w, c0, n), (y, r0 * n + c0, n))


@njit(inline="always")
def _copy(dst, src):
    for j in range(dst.shape[0]):
        dst[j] = src[j]


@njit(inline="always")
def _im2col_pixel(x, p, geometry, cols, row):
    """cols[row : row + KH*KW*C] = the inputs under output pixel p (image-major), NHWC: for
    each kernel row, KW*C contiguous inputs, or C-runs (and zeros) at the border."""
    n, h, wd, c, oh, ow, kh, kw, sh, sw, pt, pl = geometry
    b, q = p // (oh * ow), p % (oh * ow)
    iy0, ix0 = q // ow * sh - pt, q % ow * sw - pl
    run = kw * c
    for ki in range(kh):
        iy, dst = iy0 + ki, row + ki * run
        if iy < 0 or iy >= h:
            cols[dst : dst + run] = 0
            continue
        src = ((b * h + iy) * wd + ix0) * c
        if ix0 >= 0 and ix0 + kw <= wd:
            _copy(cols[dst : dst + run], x[src : src + run])
            continue
        for kj in range(kw):
            at = dst + kj * c
            if 0 <= ix0 + kj < wd:
                _copy(cols[at : at + c], x[src + kj * c : src + (kj + 1) * c])
            else:
                cols[at : at + c] = 0


@njit(parallel=True, error_model="numpy")
def conv_nhwc_blocks(x, w, y, scratch, geometry, oc, block):
    """KxK (or strided) conv, NHWC, one task per block of output pixels: im2col of the block
    into the thread's slot of ``scratch``, then y[block, OC] = cols @ w[KH*KW*C, OC]."""
    n, h, wd, c, oh, ow, kh, kw = geometry[:8]
    kdim, pixels = kh * kw * c, n * oh * ow
    for t in prange((pixels + block - 1) // block):
        p0 = t * block
        count, slot = min(block, pixels - p0), get_thread_id() * block * kdim
        for j in range(count):
            _im2col_pixel(x, p0 + j, geometry, scratch, slot + j * kdim)
        matmul(count, oc, kdim, (scratch, slot, kdim), (w, 0, oc), (y, p0 * oc, oc))


@njit(parallel=True, error_model="numpy")
def conv_nhwc_wide(x, w, y, scratch, geometry, oc, col_block):
    """KxK conv, NHWC, for few output pixels (small maps): im2col of all of them, then one GEMM
    task per block of output channels."""
    n, h, wd, c, oh, ow, kh, kw = geometry[:8]
    kdim, pixels = kh * kw * c, n * oh * ow
    for p in prange(pixels):
        _im2col_pixel(x, p, geometry, scratch, p * kdim)
    for t in prange((oc + col_block - 1) // col_block):
        c0 = t * col_block
        width = min(col_block, oc - c0)
        matmul(pixels, width, kdim, (scratch, 0, kdim), (w, c0, oc), (y, c0, oc))


@njit(parallel=True, error_model="numpy")
def winograd_nhwc(x, w, y, scratch, chunk, private):
    """3x3 stride-1 padding-1 conv, NHWC, Winograd F(2x2, 3x3) (``backends/cpu/winograd.py``'s
    algebra and schedules, U recomputed every call as there, each transform vectorised over
    channels): x [N, H, W, C], w [C, 9, OC], y [N, OH, OW, OC]. Scratch: U [16, C*OC + SKEW]
    (``winograd.SKEW``: 16 stores a multiple of 4 KiB apart would share one L1 set),
    then V [chunk, 16, C], M [chunk, 16, OC] and a 4x4 border patch [16, C], one set per thread
    (private) or V and M shared and a patch per thread. Per chunk of tiles: input transforms,
    the 16 GEMMs M_p [tiles, OC] = V_p [tiles, C] @ U_p [C, OC], output transforms; private:
    one task per chunk, in its thread's L2, shared: each step parallel (tasks: tiles, p)."""
    n, h, wd, c = x.shape
    oc, th, tw = w.shape[2], (h + 1) // 2, (wd + 1) // 2
    tiles, u_numel, vm = n * th * tw, 16 * (c * oc + winograd.SKEW), chunk * 16 * (c + oc)
    u = scratch[:u_numel].reshape(16, c * oc + winograd.SKEW)
    for ci in prange(c):
        _weight_tile(w[ci], u, ci * oc)
    chunks = (tiles + chunk - 1) // chunk
    if private:
        for k in prange(chunks):
            at, t0 = u_numel + get_thread_id() * (vm + 16 * c), k * chunk
            count, patch = min(chunk, tiles - t0), scratch[at + vm : at + vm + 16 * c]
            for t in range(count):
                _input_at(x, t0 + t, th, tw, patch, scratch, at + t * 16 * c)
            for p in range(16):
                _tile_gemm(scratch, at, chunk, count, c, oc, p)
            for t in range(count):
                _output_at(scratch, at + chunk * 16 * c + t * 16 * oc, y, t0 + t, th, tw)
        return
    for t0 in range(0, tiles, chunk):
        count = min(chunk, tiles - t0)
        for t in prange(count):
            patch = scratch[u_numel + vm + get_thread_id() * 16 * c :][: 16 * c]
            _input_at(x, t0 + t, th, tw, patch, scratch, u_numel + t * 16 * c)
        for p in prange(16):
            _tile_gemm(scratch, u_numel, chunk, count, c, oc, p)
        for t in prange(count):
            _output_at(scratch, u_numel + chunk * 16 * c + t * 16 * oc, y, t0 + t, th, tw)


@njit(inline="always")
def _tile_gemm(scratch, at, chunk, count, c, oc, p):
    """M_p [count, OC] = V_p [count, C] @ U_p [C, OC], V and M of the chunk at ``at``."""
    v, m = (scratch, at + p * c, 16 * c), (scratch, at + chunk * 16 * c + p * oc, 16 * oc)
    matmul(count, oc, c, v, (scratch, p * (c * oc + winograd.SKEW), oc), m)


@njit(inline="always")
def _input_at(x, tile, th, tw, patch, scratch, at):
    """V of tile number ``tile`` into scratch[at : at + 16*C]: straight from x inside the map,
    through the zero-filled ``patch`` where the 4x4 input window crosses the border."""
    h, wd, c = x.shape[1], x.shape[2], x.shape[3]
    b, q = tile // (th * tw), tile % (th * tw)
    iy, ix, v = q // tw * 2 - 1, q % tw * 2 - 1, scratch[at : at + 16 * c].reshape(16, c)
    if iy >= 0 and iy + 4 <= h and ix >= 0 and ix + 4 <= wd:
        r0, r1 = x[b, iy, ix : ix + 4], x[b, iy + 1, ix : ix + 4]
        _input_tile(r0, r1, x[b, iy + 2, ix : ix + 4], x[b, iy + 3, ix : ix + 4], v)
        return
    d = patch.reshape(4, 4, c)
    d[:] = 0
    for i in range(max(0, -iy), min(4, h - iy)):
        for j in range(max(0, -ix), min(4, wd - ix)):
            d[i, j] = x[b, iy + i, ix + j]
    _input_tile(d[0], d[1], d[2], d[3], v)


@njit(inline="always")
def _output_at(scratch, at, y, tile, th, tw):
    q, oc = tile % (th * tw), y.shape[3]
    m = scratch[at : at + 16 * oc].reshape(16, oc)
    _output_tile(m, y, tile // (th * tw), q // tw * 2, q % tw * 2)


@njit(inline="always")
def _weight_tile(g, u, at):
    """u[4r + j, at : at + OC] = (G g G^T)[r, j] of one input channel's 3x3 kernels g [9, OC]
    (tap-major), over all output channels at once, in one pass."""
    for o in range(g.shape[1]):
        g0, g1, g2, g3, g4, g5 = g[0, o], g[1, o], g[2, o], g[3, o], g[4, o], g[5, o]
        g6, g7, g8 = g[6, o], g[7, o], g[8, o]
        # G g, row by row; then each row times G^T
        u[0, at + o], u[1, at + o], u[2, at + o], u[3, at + o] = _times_gt(g0, g1, g2)
        u[4, at + o], u[5, at + o], u[6, at + o], u[7, at + o] = _times_gt(
            0.5 * (g0 + g3 + g6), 0.5 * (g1 + g4 + g7), 0.5 * (g2 + g5 + g8)
        )
        u[8, at + o], u[9, at + o], u[10, at + o], u[11, at + o] = _times_gt(
            0.5 * (g0 - g3 + g6), 0.5 * (g1 - g4 + g7), 0.5 * (g2 - g5 + g8)
        )
        u[12, at + o], u[13, at + o], u[14, at + o], u[15, at + o] = _times_gt(g6, g7, g8)


@njit(inline="always")
def _times_gt(x0, x1, x2):
    """A row (x0, x1, x2) times G^T, G = [1 0 0; h h h; h -h h; 0 0 1], h = 1/2."""
    return x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2


@njit(inline="always")
def _input_tile(r0, r1, r2, r3, v):
    """v[4i + j] = (B^T d B)[i, j] of the 4x4 patch d (rows r0..r3, each [4, C])."""
    for j in range(4):  # B^T d, column j
        e0, e1, e2, e3 = v[j], v[4 + j], v[8 + j], v[12 + j]
        s0, s1, s2, s3 = r0[j], r1[j], r2[j], r3[j]
        for ci in range(s0.shape[0]):
            d1, d2 = s1[ci], s2[ci]
            e0[ci], e1[ci], e2[ci], e3[ci] = s0[ci] - d2, d1 + d2, d2 - d1, d1 - s3[ci]
    for i in range(4):  # then B along row i, in place
        f0, f1, f2, f3 = v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]
        for ci in range(f0.shape[0]):
            d0, d1, d2, d3 = f0[ci], f1[ci], f2[ci], f3[ci]
            f0[ci], f1[ci], f2[ci], f3[ci] = d0 - d2, d1 + d2, d2 - d1, d1 - d3


@njit(inline="always")
def _output_tile(m, y, b, oy, ox):
    """y[b, oy + i, ox + j] = (A^T M A)[i, j] of one tile (M_p = m[p]), where inside the map."""
    oh, ow, oc = y.shape[1], y.shape[2], y.shape[3]
    if oy + 1 < oh and ox + 1 < ow:
        y00, y01, y10, y11 = y[b, oy, ox], y[b, oy, ox + 1], y[b, oy + 1, ox], y[b, oy + 1, ox + 1]
        for o in range(oc):
            y00[o], y01[o], y10[o], y11[o] = _output_values(m, o)
        return
    for o in range(oc):
        v00, v01, v10, v11 = _output_values(m, o)
        y[b, oy, ox, o] = v00
        if ox + 1 < ow:
            y[b, oy, ox + 1, o] = v01
        if oy + 1 < oh:
            y[b, oy + 1, ox, o] = v10
            if ox + 1 < ow:
                y[b, oy + 1, ox + 1, o] = v11


@njit(inline="always")
def _output_values(m, o):
    """A^T M A at output channel o: the tile's four outputs."""
    s0, s1 = m[0, o] + m[4, o] + m[8, o], m[1, o] + m[5, o] + m[9, o]  # A^T M, row 0
    s2, s3 = m[2, o] + m[6, o] + m[10, o], m[3, o] + m[7, o] + m[11, o]
    d0, d1 = m[4, o] - m[8, o] - m[12, o], m[5, o] - m[9, o] - m[13, o]  # row 1
    d2, d3 = m[6, o] - m[10, o] - m[14, o], m[7, o] - m[11, o] - m[15, o]
    return s0 + s1 + s2, s1 - s2 - s3, d0 + d1 + d2, d1 - d2 - d3


@njit(parallel=True, error_model="numpy")
def depthwise3x3(x, w, y, stride):
    """Depthwise 3x3, padding 1, on [G, H, W, L] images (NHWC: G = N, L = C; NCHW16c:
    G = N*C/16, L = 16), weights [S, 9, W*L] (image g uses set g % S; each tap's L weights
    repeated W times). One task per output row. Inside the map each output sums its nine taps
    in registers, vectorised over L; at stride 1 the row's interior is one loop over
    (pixel, lane), at stride 2 one loop per pixel. Border pixels skip the taps in the padding."""
    images, h, wd, lanes = x.shape
    oh, ow, sets = y.shape[1], y.shape[2], w.shape[0]
    for t in prange(images * oh):
        g, oy = t // oh, t % oh
        wk, iy, out = w[g % sets], oy * stride - 1, y[g, oy]
        lo, hi = 1, min(ow, (wd - 2) // stride + 1)  # outputs whose window is inside the row
        if iy < 0 or iy + 2 >= h or lo >= hi:
            lo = hi = 0
        elif stride == 1:
            n, flat = (hi - lo) * lanes, out.reshape(ow * lanes)[lo * lanes : hi * lanes]
            r0, r1 = x[g, iy].reshape(wd * lanes), x[g, iy + 1].reshape(wd * lanes)
            r2 = x[g, iy + 2].reshape(wd * lanes)
            a0, a1, a2 = r0[:n], r0[lanes : lanes + n], r0[2 * lanes : 2 * lanes + n]
            b0, b1, b2 = r1[:n], r1[lanes : lanes + n], r1[2 * lanes : 2 * lanes + n]
            c0, c1, c2 = r2[:n], r2[lanes : lanes + n], r2[2 * lanes : 2 * lanes + n]
            w0, w1, w2 = wk[0, :n], wk[1, :n], wk[2, :n]
            w3, w4, w5 = wk[3, :n], wk[4, :n], wk[5, :n]
            w6, w7, w8 = wk[6, :n], wk[7, :n], wk[8, :n]
            for j in range(n):
                flat[j] = (
                    a0[j] * w0[j] + a1[j] * w1[j] + a2[j] * w2[j]
                    + b0[j] * w3[j] + b1[j] * w4[j] + b2[j] * w5[j]
                    + c0[j] * w6[j] + c1[j] * w7[j] + c2[j] * w8[j]
                )  # fmt: skip
        else:
            r0, r1, r2 = x[g, iy], x[g, iy + 1], x[g, iy + 2]
            w0, w1, w2 = wk[0, :lanes], wk[1, :lanes], wk[2, :lanes]
            w3, w4, w5 = wk[3, :lanes], wk[4, :lanes], wk[5, :lanes]
            w6, w7, w8 = wk[6, :lanes], wk[7, :lanes], wk[8, :lanes]
            for ox in range(lo, hi):
                ix, px = ox * stride - 1, out[ox]
                a0, a1, a2 = r0[ix], r0[ix + 1], r0[ix + 2]
                b0, b1, b2 = r1[ix], r1[ix + 1], r1[ix + 2]
                c0, c1, c2 = r2[ix], r2[ix + 1], r2[ix + 2]
                for j in range(lanes):
                    px[j] = (
                        a0[j] * w0[j] + a1[j] * w1[j] + a2[j] * w2[j]
                        + b0[j] * w3[j] + b1[j] * w4[j] + b2[j] * w5[j]
                        + c0[j] * w6[j] + c1[j] * w7[j] + c2[j] * w8[j]
                    )  # fmt: skip
        for ox in range(ow):
            if lo <= ox < hi:
                continue
            ix, px = ox * stride - 1, out[ox]
            px[:] = 0
            for ki in range(3):
                for kj in range(3):
                    if 0 <= iy + ki < h and 0 <= ix + kj < wd:
                        src, tap = x[g, iy + ki, ix + kj], wk[ki * 3 + kj, :lanes]
                        for j in range(lanes):
                            px[j] += src[j] * tap[j]


@njit(inline="always")
def _max(a, b):
    """max(a, b), NaN winning (torch's max-pool)."""
    return a if a > b or a != a else b


@njit(parallel=True, error_model="numpy")
def maxpool3x3(x, y, stride):
    """3x3 max-pool, padding 1, on [G, H, W, L] images (as ``depthwise3x3``)."""
    images, h, wd, lanes = x.shape
    oh, ow = y.shape[1], y.shape[2]
    for t in prange(images * oh):
        g, oy = t // oh, t % oh
        iy = oy * stride - 1
        for ox in range(ow):
            out, ix = y[g, oy, ox], ox * stride - 1
            if iy >= 0 and iy + 2 < h and ix >= 0 and ix + 2 < wd:
                r0, r1, r2 = x[g, iy], x[g, iy + 1], x[g, iy + 2]
                a0, a1, a2 = r0[ix], r0[ix + 1], r0[ix + 2]
                b0, b1, b2 = r1[ix], r1[ix + 1], r1[ix + 2]
                c0, c1, c2 = r2[ix], r2[ix + 1], r2[ix + 2]
                for j in range(lanes):
                    top = _max(_max(a0[j], a1[j]), a2[j])
                    mid = _max(_max(b0[j], b1[j]), b2[j])
                    out[j] = _max(_max(top, mid), _max(_max(c0[j], c1[j]), c2[j]))
                continue
            out[:] = -np.inf
            for ki in range(3):
                for kj in range(3):
                    if 0 <= iy + ki < h and 0 <= ix + kj < wd:
                        src = x[g, iy + ki, ix + kj]
                        for j in range(lanes):
                            out[j] = _max(out[j], src[j])


@njit(parallel=True, error_model="numpy")
def nchw_to_nhwc(x, y):
    """y[n, h, w, c] = x[n, c, h, w], one task per (image, row)."""
    n, c, h, wd = x.shape
    for t in prange(n * h):
        b, i = t // h, t % h
        for ci in range(c):
            src = x[b, ci, i]
            for j in range(wd):
                y[b, i, j, ci] = src[j]


@njit(parallel=True, error_model="numpy")
def nhwc_to_nchw(x, y):
    """y[n, c, h, w] = x[n, h, w, c], one task per (image, channel block of 16)."""
    n, h, wd, c = x.shape
    blocks = (c + BLOCK - 1) // BLOCK
    for t in prange(n * blocks):
        b, c0 = t // blocks, t % blocks * BLOCK
        for i in range(h):
            for j in range(wd):
                src = x[b, i, j]
                for ci in range(c0, min(c, c0 + BLOCK)):
                    y[b, ci, i, j] = src[ci]


@njit(parallel=True, error_model="numpy")
def copy_flat(x, y):
    """y = x, in THREADS contiguous parts."""
    size = x.shape[0]
    part = (size + THREADS - 1) // THREADS
    for t in prange(THREADS):
        lo, hi = t * part, min(size, (t + 1) * part)
        y[lo:hi] = x[lo:hi]


# **** Running each layer four ways ****


def _nhwc_conv(layer: Layer, x: np.ndarray, weight: np.ndarray) -> tuple[Callable, Callable]:
    """(run, output) of the NHWC prototype of a conv layer: run() writes the NHWC output."""
    n, c, oc, k = layer.n, layer.c, layer.oc, layer.k
    oh, ow = layer.oh, layer.ow
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = np.empty((n, oh, ow, oc), np.float32)
    if layer.depthwise:
        w = np.tile(weight.reshape(c, 9).T, (1, layer.w)).reshape(1, 9, layer.w * c)
        return (lambda: depthwise3x3(xh, w, y, layer.stride)), (lambda: y)
    w = np.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(-1)  # [KH, KW, C, OC]
    flat_x, flat_y, pixels = xh.reshape(-1), y.reshape(-1), n * oh * ow
    if k == 1 and layer.stride == 1:
        if pixels >= THREADS * MIN_GEMM_ROWS:
            rows, cols = -(-pixels // THREADS), oc
        else:  # small maps: split the output channels
            rows, cols = pixels, -(-oc // THREADS)
        return (lambda: gemm_nhwc(flat_x, w, flat_y, pixels, c, oc, rows, cols)), (lambda: y)
    kdim = k * k * c
    geometry = np.array(
        [n, layer.h, layer.w, c, oh, ow, k, k, layer.stride, layer.stride, layer.pad, layer.pad]
    )
    if pixels >= THREADS * MIN_GEMM_ROWS:
        block = min(-(-pixels // THREADS), max(MIN_GEMM_ROWS, IM2COL_BYTES // (4 * kdim)))
        scratch = np.empty(THREADS * block * kdim, np.float32)
        run = lambda: conv_nhwc_blocks(flat_x, w, flat_y, scratch, geometry, oc, block)  # noqa: E731
    else:
        scratch, cols = np.empty(pixels * kdim, np.float32), -(-oc // THREADS)
        run = lambda: conv_nhwc_wide(flat_x, w, flat_y, scratch, geometry, oc, cols)  # noqa: E731
    return run, (lambda: y)


def _nhwc_winograd(layer: Layer, x: np.ndarray, weight: np.ndarray) -> tuple[Callable, Callable]:
    """(run, output) of the NHWC Winograd prototype of a 3x3 stride-1 conv, on
    ``winograd._schedule``'s rule for F(2x2, 3x3) tiles: private chunks of PRIVATE_CHUNK_BYTES
    of V and M where that gives GEMMs of PRIVATE_MIN_TILES rows and two chunks per thread,
    else shared chunks of CHUNK_BYTES."""
    n, c, oc = layer.n, layer.c, layer.oc
    tiles = n * ((layer.h + 1) // 2) * ((layer.w + 1) // 2)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    w = np.ascontiguousarray(weight.reshape(oc, c, 9).transpose(1, 2, 0))  # [C, 9, OC]
    y = np.empty((n, layer.oh, layer.ow, oc), np.float32)
    chunk = winograd.PRIVATE_CHUNK_BYTES[2] // (64 * (c + oc))
    private = chunk >= winograd.PRIVATE_MIN_TILES[2] and -(-tiles // chunk) >= 2 * THREADS
    if not private:
        chunk = min(tiles, winograd.CHUNK_BYTES // (64 * (c + oc)))
    sets = THREADS if private else 1
    u_numel = 16 * (c * oc + winograd.SKEW)
    scratch = np.empty(u_numel + sets * chunk * 16 * (c + oc) + THREADS * 16 * c, np.float32)
    return (lambda: winograd_nhwc(xh, w, y, scratch, chunk, private)), (lambda: y)


def _blocked(x: np.ndarray) -> np.ndarray:
    """NCHW -> NCHW16c, as [N * C/16, H, W, 16]."""
    n, c, h, w = x.shape
    blocked = x.reshape(n, c // BLOCK, BLOCK, h, w).transpose(0, 1, 3, 4, 2)
    return np.ascontiguousarray(blocked).reshape(n * c // BLOCK, h, w, BLOCK)


def _unblocked(y: np.ndarray, n: int) -> np.ndarray:
    g, h, w, _ = y.shape
    return y.reshape(n, g // n, h, w, BLOCK).transpose(0, 1, 4, 2, 3).reshape(n, -1, h, w)


def _kernel_name(exe: engine.Executable) -> str:
    """Which of conv.py's kernels ConvForge picked for the one node of ``exe``."""
    node = exe.graph.nodes[0]
    if node.op == "max_pool2d":
        return "pool"
    if cf_conv._is_direct(node):
        return "direct"
    if winograd.is_winograd(node):
        return "winograd"
    if cf_conv._is_shifted(node):
        return "shifted"
    return "pointwise" if cf_conv.is_pointwise(node) else "im2col"


def _check(what: str, got: np.ndarray, want: np.ndarray) -> None:
    err = float(np.abs(got - want).max() / np.abs(want).max())
    if not err < TOLERANCE:
        raise SystemExit(f"{what} differs from its reference by {err:.1e} (max |diff| / max)")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.2f}x"


def _jiffies() -> tuple[int, int, int] | None:
    """(all CPUs' jiffies, their busy jiffies, this process's) from /proc; None off Linux."""
    try:
        with open("/proc/stat") as stat, open("/proc/self/stat") as own:
            fields = [int(f) for f in stat.readline().split()[1:]]
            mine = own.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return sum(fields), sum(fields) - fields[3] - fields[4], int(mine[11]) + int(mine[12])


def _others_load(start, end) -> float:
    """Share of all CPUs that other processes used between two ``_jiffies`` samples."""
    if start is None or end is None or end[0] == start[0]:
        return 0.0
    return max(0.0, (end[1] - start[1]) - (end[2] - start[2])) / (end[0] - start[0])


def _wait_for_idle(limit: float) -> None:
    """Wait (at most ``limit`` seconds) for half a second in which other processes use under
    IDLE_LOAD of the CPUs: on a shared machine, a parallel region whose threads wait for a
    core costs a scheduler tick (4 ms here), which no median can undo."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        start = _jiffies()
        time.sleep(0.5)
        if _others_load(start, _jiffies()) < IDLE_LOAD:
            return


def _time(funcs: dict[str, Callable], seconds: float, wait: float) -> dict[str, float]:
    """Interleaved medians, in blocks sized from one warm call each to spend ``seconds``,
    after waiting up to ``wait`` s for an idle machine, and again (RETRIES times at most) while
    other processes took over RETRY_LOAD of the CPUs meanwhile; "load": the last try's share."""
    for _ in range(RETRIES + 1):
        _wait_for_idle(wait)
        start, first = _jiffies(), []
        for func in funcs.values():
            func()
            begin = time.perf_counter()
            func()
            first.append(time.perf_counter() - begin)
        block = max(1, min(MAX_BLOCK, round(seconds / (ROUNDS * sum(first)))))
        times = interleaved_medians(list(funcs.values()), ROUNDS, block, max(1, block // 4))
        load = _others_load(start, _jiffies())
        if load <= RETRY_LOAD:
            break
    return {**dict(zip(funcs, times, strict=True)), "load": load}


def measure(layer: Layer, seconds: float, wait: float) -> tuple[dict[str, float], str]:
    """Medians of ConvForge, the NHWC (and NCHW16c) prototypes and torch on one layer, each
    output checked against torch NCHW first; and ConvForge's kernel."""
    case, rng = f"{layer.label} batch {layer.n}", np.random.default_rng(0)
    x = rng.standard_normal((layer.n, layer.c, layer.h, layer.w)).astype(np.float32)
    tx, pool = torch.from_numpy(x), layer.kind == "pool"
    tx_cl = tx.contiguous(memory_format=torch.channels_last)
    if pool:
        model = nn.MaxPool2d(layer.k, layer.stride, layer.pad)
        torch_op = lambda t, _w: F.max_pool2d(t, layer.k, layer.stride, layer.pad)  # noqa: E731
        weight = tw = tw_cl = None
    else:
        model = nn.Conv2d(
            layer.c, layer.oc, layer.k, layer.stride, layer.pad, groups=layer.groups, bias=False
        )
        weight = model.state_dict()["weight"]
        tw = torch.from_numpy(weight)
        tw_cl = tw.contiguous(memory_format=torch.channels_last)
        torch_op = lambda t, w: F.conv2d(t, w, None, layer.stride, layer.pad, 1, layer.groups)  # noqa: E731
    exe = engine.compile(model, (layer.c, layer.h, layer.w), batch=layer.n)
    funcs: dict[str, Callable] = {"CF": exe._execute}
    with torch.inference_mode():
        want = torch_op(tx, tw).numpy()
        _check(f"{case}: ConvForge", exe.run(x), want)
        if pool:
            xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            yh = np.empty((layer.n, layer.oh, layer.ow, layer.c), np.float32)
            run, out = (lambda: maxpool3x3(xh, yh, layer.stride)), (lambda: yh)
        else:
            run, out = _nhwc_conv(layer, x, weight)
        run()
        _check(f"{case}: NHWC", out().transpose(0, 3, 1, 2), want)
        funcs["NHWC"] = run
        if layer.k == 3 and layer.stride == 1 and layer.groups == 1 and not pool:
            run, out = _nhwc_winograd(layer, x, weight)
            run()
            _check(f"{case}: NHWC Winograd", out().transpose(0, 3, 1, 2), want)
            funcs["wino"] = run
        if (pool or layer.depthwise) and layer.c % BLOCK == 0:
            xb = _blocked(x)
            yb = np.empty((xb.shape[0], layer.oh, layer.ow, BLOCK), np.float32)
            if pool:
                funcs["16c"] = lambda: maxpool3x3(xb, yb, layer.stride)
            else:
                wb = np.tile(weight.reshape(layer.c // BLOCK, BLOCK, 9).transpose(0, 2, 1),
                             (1, 1, layer.w))  # fmt: skip
                funcs["16c"] = lambda: depthwise3x3(xb, wb, yb, layer.stride)
            funcs["16c"]()
            _check(f"{case}: NCHW16c", _unblocked(yb, layer.n), want)
        _check(f"{case}: torch channels_last", torch_op(tx_cl, tw_cl).numpy(), want)
        funcs["torch NCHW"] = lambda: torch_op(tx, tw)
        funcs["torch CL"] = lambda: torch_op(tx_cl, tw_cl)
        return _time(funcs, seconds, wait), _kernel_name(exe)


def layer_row(layer: Layer, seconds: float, wait: float) -> tuple[list[str], dict[str, float]]:
    times, kernel = measure(layer, seconds, wait)
    get = times.get
    row = [
        layer.label + (f" (x{layer.count})" if layer.count > 1 else ""),
        str(layer.n),
        kernel,
        *(_ms(get(key)) for key in ("CF", "NHWC", "wino", "16c", "torch NCHW", "torch CL")),
        _ratio(get("CF"), get("NHWC")),
        _ratio(get("CF"), get("wino")),
        _ratio(get("CF"), get("16c")),
        _ratio(get("torch NCHW"), get("torch CL")),
        f"{times['load']:.0%}",
    ]
    return row, times


def _edge_row(
    label: str, batch: int, x: np.ndarray, to_nhwc: bool, seconds: float, wait: float
) -> tuple[list[str], dict[str, float]]:
    """One layout change of ``x`` (NCHW, or NHWC when not ``to_nhwc``): a plain parallel copy
    of its bytes, the Numba transpose and torch's."""
    y = np.empty(x.transpose(0, 2, 3, 1).shape if to_nhwc else x.transpose(0, 3, 1, 2).shape,
                 np.float32)  # fmt: skip
    flat, copied = x.reshape(-1), np.empty(x.size, np.float32)
    if to_nhwc:
        t = torch.from_numpy(x)
        funcs = {"NHWC": lambda: nchw_to_nhwc(x, y),
                 "torch CL": lambda: t.contiguous(memory_format=torch.channels_last)}  # fmt: skip
    else:
        t = torch.from_numpy(x).permute(0, 3, 1, 2)  # an NCHW view of a channels_last tensor
        funcs = {"NHWC": lambda: nhwc_to_nchw(x, y), "torch CL": lambda: t.contiguous()}
    funcs["NHWC"]()
    _check(label, y, x.transpose(0, 2, 3, 1) if to_nhwc else x.transpose(0, 3, 1, 2))
    times = _time({"copy": lambda: copy_flat(flat, copied), **funcs}, seconds, wait)
    row = [label, str(batch), "copy", _ms(times["copy"]), _ms(times["NHWC"]), "-", "-", "-",
           _ms(times["torch CL"]), "-", "-", "-", "-", f"{times['load']:.0%}"]  # fmt: skip
    return row, times


def edge_rows(batch: int, seconds: float, wait: float) -> list[tuple[list[str], dict]]:
    """Layout changes at a graph's edges: the input NCHW -> NHWC, the last map NHWC -> NCHW
    (a classifier needs none there: after global pooling both layouts are [N, C])."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 224, 224)).astype(np.float32)
    last = rng.standard_normal((batch, 7, 7, 2048)).astype(np.float32)
    return [
        _edge_row("edge input 3x224x224 NCHW->NHWC", batch, x, True, seconds, wait),
        _edge_row("edge output 2048x7x7 NHWC->NCHW", batch, last, False, seconds, wait),
    ]


def model_layers(name: str, batch: int) -> list[Layer]:
    """Every distinct conv and max-pool of zoo model ``name`` at 224x224, with its count."""
    graph = trace(zoo.get(name), (3, 224, 224), batch)
    counts: Counter[Layer] = Counter()
    for node in graph.nodes:
        if node.op not in ("conv2d", "max_pool2d"):
            continue
        (_, c, h, w), attrs = node.inputs[0].shape, node.attrs
        if node.op == "conv2d":
            oc, _, k, _ = node.inputs[1].shape
            pad, groups = attrs["padding"][0], attrs["groups"]
            counts[Layer(name, "conv", c, oc, h, w, k, attrs["stride"][0], pad, groups, batch)] += 1
        else:
            k, s, p = attrs["kernel"][0], attrs["stride"][0], attrs["padding"][0]
            counts[Layer(name, "pool", c, c, h, w, k, s, p, 1, batch)] += 1
    return [replace(layer, count=n) for layer, n in counts.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--set", default="layers", choices=["layers", "resnet50", "mobilenet_v2"])
    parser.add_argument("--batch", type=int, default=1, help="batch of a model set")
    parser.add_argument("--quick", action="store_true", help="batch 1 only, shorter timings")
    parser.add_argument(
        "--wait", type=float, default=30.0, help="seconds to wait per case for an idle machine"
    )
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    torch.set_grad_enabled(False)
    seconds = QUICK_SECONDS if args.quick else CASE_SECONDS
    rows: list[list[str]] = []
    copy_flat(np.zeros(THREADS, np.float32), np.zeros(THREADS, np.float32))  # start the pool
    print(environment_line())
    if args.set == "layers":
        cases = [replace(layer, n=1) for layer in LAYERS]
        if not args.quick:
            cases += [replace(LAYERS[i], n=32) for i in LAYERS_B32]
        for layer in cases:
            rows.append(layer_row(layer, seconds, args.wait)[0])
        for batch in (1,) if args.quick else (1, 32):
            rows += [row for row, _ in edge_rows(batch, seconds / 2, args.wait)]
    else:
        totals: dict[str, float] = Counter()
        for layer in model_layers(args.set, args.batch):
            row, times = layer_row(layer, seconds, args.wait)
            rows.append(row)
            times["NHWC"] = min(times["NHWC"], times.get("wino", np.inf))  # NHWC's best kernel
            for key in ("CF", "NHWC", "torch NCHW", "torch CL"):
                totals[key] += layer.count * times[key]
            totals["load"] = max(totals["load"], times["load"])
        row, times = edge_rows(args.batch, seconds / 2, args.wait)[0]  # the input's, for NHWC
        rows.append(row)
        totals["NHWC"] += times["NHWC"]
        get = totals.get
        rows.append(
            [f"{args.set} convs and pools (NHWC: + input edge), total", str(args.batch), "",
             *(_ms(get(k)) for k in ("CF", "NHWC")), "-", "-",
             *(_ms(get(k)) for k in ("torch NCHW", "torch CL")),
             _ratio(get("CF"), get("NHWC")), "-", "-", _ratio(get("torch NCHW"), get("torch CL")),
             f"max {get('load'):.0%}"]
        )  # fmt: skip
    print_table(HEADER, rows)


if __name__ == "__main__":
    main()
