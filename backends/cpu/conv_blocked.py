"""Direct convolution on channel-blocked data (NCHW16c) for frozen weights
(``compile(..., freeze=True)``): the deep layers of a network at a small batch.

Why: at batch 1, ResNet-50's 3x3 convs on 14x14 and 7x7 maps and its 1x1 convs on 7x7 hold
more weight than activation bytes. The GEMM paths then spend their time on the weights: BLAS
packs the whole weight matrix each call for 49 or 196 columns, and Winograd transforms it into
16 copies. ONNX Runtime reorders the weights once, when its session is made, into the layout
its direct kernel reads. A frozen plan can do the same: its weights change only through
``load_state_dict``, which bumps the storage's generation counter
(``backends.base.WEIGHTS_GENERATION``), and the kernel repacks when the counter has moved.

Layouts, L = 64 bytes / itemsize lanes (16 float32, 8 float64), channels padded with zeros to
whole blocks:

- weights: [OB][CB][KH][KW][L input channels][L output channels], after a one-vector header
  whose first 8 bytes hold the generation they were packed at;
- input: [N][CB][H + pads][W + pads][L], copied (zero-bordered) into the scratch each call;
- output: plain NCHW, written from the register tile and finished by the shared epilogue
  (``finish_channel``) while the task's planes are in cache.

The register tile (``_tile``, LLVM IR): TILE_BLOCKS blocks of L output channels x
TILE_PIXELS output pixels, TILE_BLOCKS x TILE_PIXELS vector accumulators; per input channel
and tap, TILE_BLOCKS weight vectors are loaded and each pixel's input value is broadcast into
one fused multiply-add per block. Accumulation order: input channel block, kernel row, kernel
column, lane; with FMA, so results differ from the GEMM paths' by float rounding only.

Buffers: conv2d_blocked(x, w, b, affine, residual, consts, y, scratch, packed, generation)
(the epilogue's, ``epilogue.py``). Attrs: [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL,
packed H, packed W, DH, DW, packing steps (H, W)], then the activation kind. Scratch: the
blocked input, then one tile per thread.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import get_thread_id, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from backends.cpu.epilogue import finish_channel
from backends.cpu.kernels import kernel
from backends.cpu.simd import VECTOR_BYTES, _element_pointer, _fma, _splat, _vector_of
from graph.ir import Node

# Output pixels of one tile (a 14x14 map's row, two rows of a 7x7 map) and blocks of output
# channels: 28 accumulators of the 32 vector registers, the rest for weights and broadcasts.
TILE_PIXELS = 14
TILE_BLOCKS = 2
# Most output pixels in the batch (N x OH x OW) for which the blocked kernel is chosen: above
# it the activations outweigh the weights and the GEMM and Winograd paths win (measured on
# ResNet-50's layers at batch 1: 14x14 and 7x7 maps win, 28x28 and 56x56 lose).
MAX_PIXELS = 196
# The same for 1x1 convs (one GEMM on the other paths, strided or not): the GEMM wins at 14x14
# (1024 -> 256: 0.47 ms against 0.65; 512 -> 1024 stride 2: 0.96 against 1.04), the blocked
# kernel at 7x7 (512 -> 2048: 0.47 against 0.58; 1024 -> 2048 stride 2: 1.31 against 1.40).
POINTWISE_MAX_PIXELS = 49
# ... and only widening ones (C <= OC) with this many weights (C x OC): MobileNet v2's 1x1s at
# 7x7 (at most 1280 x 320) ran 5% slower as a network on the blocked kernel, and ResNet-50's
# 512 <- 2048 60-130 us slower each inside the network (``exe.profile(x, repeat=1)``), where
# its 2048 <- 512 and 2048 <- 1024 stride 2 run faster.
POINTWISE_MIN_WEIGHTS = 1 << 20
# Fewest channels each side: below, a block is mostly zero padding.
MIN_CHANNELS = 64


def lanes_of(dtype: str) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def is_blocked(node: Node) -> bool:
    """Ungrouped convs with MIN_CHANNELS channels or more each side on at most MAX_PIXELS
    output pixels, or big widening 1x1s on at most POINTWISE_MAX_PIXELS (the caller checks
    that the plan is frozen)."""
    (_, c, _, _), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    n, _, oh, ow = node.outputs[0].shape
    pixels = n * oh * ow
    deep = node.attrs["groups"] == 1 and min(c, oc) >= MIN_CHANNELS
    if kh == kw == 1:
        big = c <= oc and c * oc >= POINTWISE_MIN_WEIGHTS
        return deep and big and pixels <= POINTWISE_MAX_PIXELS
    return deep and pixels <= MAX_PIXELS


def _blocks(node: Node) -> tuple[int, int, int]:
    """(lanes, input channel blocks, output channel blocks rounded up to whole tiles)."""
    lanes = lanes_of(node.outputs[0].type.dtype)
    c, oc = node.inputs[0].shape[1], node.inputs[1].shape[0]
    tile = lanes * TILE_BLOCKS
    return lanes, -(-c // lanes), -(-oc // tile) * TILE_BLOCKS


def _sampled(node: Node) -> bool:
    """Strided 1x1 convs: the input is packed at the output's pixels only, and the tile runs
    at stride 1 (ResNet's downsampling shortcuts would pack 4x the pixels they read)."""
    return node.inputs[1].shape[2:] == (1, 1) and node.attrs["stride"] != (1, 1)


def _packed_map(node: Node) -> tuple[int, int]:
    """Rows and columns of one packed input plane: the output's (sampled), else the padded
    input's."""
    if _sampled(node):
        return node.outputs[0].shape[2:]
    (_, _, h, wd), (pt, pb, pl, pr) = node.inputs[0].shape, node.attrs["padding"]
    return h + pt + pb, wd + pl + pr


def packed_numel(node: Node) -> int:
    """Header vector + packed weights, in the node's dtype."""
    lanes, cb, ob = _blocks(node)
    kh, kw = node.inputs[1].shape[2:]
    return lanes + ob * cb * kh * kw * lanes * lanes


def scratch_numel(node: Node) -> int:
    lanes, cb, _ = _blocks(node)
    hp, wp = _packed_map(node)
    tile = TILE_BLOCKS * TILE_PIXELS * lanes
    return node.inputs[0].shape[0] * cb * hp * wp * lanes + numba.config.NUMBA_NUM_THREADS * tile


def attrs(node: Node) -> list[int]:
    (n, c, h, wd), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    dh, dw = node.attrs["dilation"]
    # (tile stride, packing step): the packing samples the strided 1x1's input instead
    (sh, sw), steps = ((1, 1), (sh, sw)) if _sampled(node) else ((sh, sw), (1, 1))
    geometry = [n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, *_packed_map(node), dh, dw]
    return geometry + list(steps)


def unpacked_header(node: Node) -> np.ndarray:
    """A packed-weights buffer whose header matches no generation (the first run packs),
    starting on a 64-byte boundary, so that no weight vector load splits a cache line (a
    misaligned buffer made the whole kernel ~30% slower)."""
    dtype = np.dtype(node.outputs[0].type.dtype)
    lanes = lanes_of(dtype.name)
    raw = np.zeros(packed_numel(node) + lanes, dtype)
    skip = (-raw.ctypes.data % VECTOR_BYTES) // dtype.itemsize
    packed = raw[skip : skip + packed_numel(node)]
    packed[:lanes].view(np.int64)[0] = -1
    return packed


@intrinsic
def _tile(typingctx, out, out_at, src, src_at, w, w_at, geometry, pixels_at):
    """One register tile (module docstring) into out[out_at:], [block][pixel][lane].

    geometry = (w_block_stride, src_blocks, src_block_stride, w_cb_stride, kh, kw, row_step,
    col_step, pixels, ow, pixel_row_step, pixel_col_step): the weight stride between output
    blocks, the input channel blocks and their strides in src and w, the kernel size, the
    input offsets of one kernel row and column, the output pixel count and width, and the
    input offsets of one output row and column. Tile pixels past the last repeat the last."""
    sig = types.none(out, out_at, src, src_at, w, w_at, geometry, pixels_at)

    def codegen(context, builder, signature, args):
        a = signature.args
        vector, lanes = _vector_of(context, a[0])
        fma = _fma(builder, vector)
        intp = cgutils.intp_t

        def index(k):
            return context.cast(builder, args[k], a[k], types.intp)

        def constant(value):
            return ir.Constant(intp, value)

        fields = [builder.extract_value(args[6], k) for k in range(12)]
        fields = [context.cast(builder, f, a[6].dtype, types.intp) for f in fields]
        w_block, blocks, src_block, w_cb, kh, kw, row_step, col_step = fields[:8]
        pixels, ow, pixel_row, pixel_col = fields[8:]
        src_at, w_at, first = index(3), index(5), index(7)
        last = builder.sub(pixels, constant(1))
        offsets = []
        for r in range(TILE_PIXELS):
            p = builder.add(first, constant(r))
            p = builder.select(builder.icmp_signed("<", p, last), p, last)
            oy = builder.sdiv(p, ow)
            ox = builder.sub(p, builder.mul(oy, ow))
            at = builder.add(builder.mul(oy, pixel_row), builder.mul(ox, pixel_col))
            offsets.append(builder.add(src_at, at))
        zeros = ir.Constant(vector, [0.0] * lanes)
        slots = [
            [cgutils.alloca_once_value(builder, zeros) for _ in range(TILE_PIXELS)]
            for _ in range(TILE_BLOCKS)
        ]
        with cgutils.for_range(builder, blocks) as block:
            with cgutils.for_range(builder, kh) as ky, cgutils.for_range(builder, kw) as kx:
                i, j = ky.index, kx.index
                src_tap = builder.add(
                    builder.mul(block.index, src_block),
                    builder.add(builder.mul(i, row_step), builder.mul(j, col_step)),
                )
                tap = builder.add(builder.mul(i, kw), j)
                w_tap = builder.add(
                    builder.add(w_at, builder.mul(block.index, w_cb)),
                    builder.mul(tap, constant(lanes * lanes)),
                )
                # the lanes as a loop, not unrolled: unrolled, LLVM hoists all the lanes'
                # weight loads ahead of the multiply-adds and spills them (30% slower)
                with cgutils.for_range(builder, constant(lanes)) as lane_loop:
                    lane = lane_loop.index
                    acc = [[builder.load(s) for s in row] for row in slots]
                    w_lane = builder.add(w_tap, builder.mul(lane, constant(lanes)))
                    weights = []
                    for o in range(TILE_BLOCKS):
                        at = builder.add(w_lane, builder.mul(constant(o), w_block))
                        pointer = _element_pointer(context, builder, a[4], args[4], types.intp, at)
                        weights.append(_load_vector(builder, pointer, vector))
                    for r in range(TILE_PIXELS):
                        at = builder.add(builder.add(src_tap, offsets[r]), lane)
                        pointer = _element_pointer(context, builder, a[2], args[2], types.intp, at)
                        value = _splat(builder, builder.load(pointer), vector)
                        for o in range(TILE_BLOCKS):
                            acc[o][r] = builder.call(fma, [value, weights[o], acc[o][r]])
                    for o in range(TILE_BLOCKS):
                        for r in range(TILE_PIXELS):
                            builder.store(acc[o][r], slots[o][r])
        out_at = index(1)
        for o in range(TILE_BLOCKS):
            for r in range(TILE_PIXELS):
                at = builder.add(out_at, constant((o * TILE_PIXELS + r) * lanes))
                pointer = _element_pointer(context, builder, a[0], args[0], types.intp, at)
                builder.store(
                    builder.load(slots[o][r]),
                    builder.bitcast(pointer, vector.as_pointer()),
                    align=1,
                )
        return context.get_dummy_value()

    return sig, codegen


def _load_vector(builder, pointer, vector):
    return builder.load(builder.bitcast(pointer, vector.as_pointer()), align=1)


@kernel(buffers=10)
def conv2d_blocked(x, w, b, affine, res, consts, y, scratch, packed, generation, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, hp, wp, dh, dw, step_h, step_w = a[:19]
    kind = a[19]
    lanes = VECTOR_BYTES // x.itemsize
    cb, ob = (c + lanes - 1) // lanes, (oc + lanes * TILE_BLOCKS - 1) // (lanes * TILE_BLOCKS)
    ob *= TILE_BLOCKS
    taps, square = kh * kw, lanes * lanes
    w_block = cb * taps * square
    # weights: repack when load_state_dict has moved the generation since the last pack
    header = packed[:lanes].view(np.int64)
    current = generation.view(np.int64)[0]
    weights = packed[lanes:]
    for t in prange(ob * cb if header[0] != current else 0):
        o, k = t // cb, t % cb
        _pack_weights(w, weights, (o * cb + k) * taps * square, o, k, c, oc, taps, lanes)
    header[0] = current
    # input: zero-bordered, channel-blocked
    plane = hp * wp * lanes
    for t in prange(n * cb):
        image, k = t // cb, t % cb
        _pack_input(x, scratch, t * plane, image, k, c, h, wd, pt, pl, hp, wp, step_h, step_w)
    pixels, tile = oh * ow, TILE_BLOCKS * TILE_PIXELS * lanes
    tiles, groups = (pixels + TILE_PIXELS - 1) // TILE_PIXELS, ob // TILE_BLOCKS
    geometry = (w_block, cb, plane, taps * square, kh, kw, dh * wp * lanes, dw * lanes)
    geometry = geometry + (pixels, ow, sh * wp * lanes, sw * lanes)
    for task in prange(n * groups):
        i, g = task // groups, task % groups
        at = n * cb * plane + get_thread_id() * tile
        for t in range(tiles):
            p0 = t * TILE_PIXELS
            _tile(
                scratch,
                at,
                scratch,
                i * cb * plane,
                weights,
                g * TILE_BLOCKS * w_block,
                geometry,
                p0,
            )
            _unpack_tile(scratch, at, y, i, g * TILE_BLOCKS * lanes, oc, pixels, p0, lanes)
        for o in range(g * TILE_BLOCKS * lanes, min(oc, (g + 1) * TILE_BLOCKS * lanes)):
            start = (i * oc + o) * pixels
            run = y[start : start + pixels]
            finish_channel(run, o, b, affine, res[start : start + pixels], kind, consts)
    return 0


@numba.njit(cache=True)
def _pack_weights(w, weights, at, o, k, c, oc, taps, lanes):
    """Block (o, k) of the packed weights: [tap][input lane][output lane], zero past C, OC."""
    for tap in range(taps):
        for li in range(lanes):
            ci = k * lanes + li
            for lo in range(lanes):
                co = o * lanes + lo
                inside = ci < c and co < oc
                value = w[(co * c + ci) * taps + tap] if inside else 0.0
                weights[at + (tap * lanes + li) * lanes + lo] = value


@numba.njit(cache=True)
def _pack_input(x, blocked, at, image, k, c, h, wd, pt, pl, hp, wp, step_h, step_w):
    """Channel block k of one image into blocked[at:], an hp x wp grid of lane vectors:
    grid (r, q) holds input pixel (r * step_h - pt, q * step_w - pl), zero outside."""
    lanes = VECTOR_BYTES // x.itemsize
    blocked[at : at + hp * wp * lanes] = 0.0
    first = (pl + step_w - 1) // step_w  # grid columns inside the input: [first, stop)
    stop = min(wp, (wd - 1 + pl) // step_w + 1)
    for li in range(min(lanes, c - k * lanes)):
        src = (image * c + k * lanes + li) * h * wd
        for r in range(hp):
            row = r * step_h - pt
            if row < 0 or row >= h:
                continue
            dst = at + r * wp * lanes + li
            for q in range(first, stop):
                blocked[dst + q * lanes] = x[src + row * wd + q * step_w - pl]


@numba.njit(cache=True)
def _unpack_tile(tile, at, y, image, first, oc, pixels, p0, lanes):
    """A tile's valid channels and pixels into NCHW y."""
    count = min(TILE_PIXELS, pixels - p0)
    for o in range(TILE_BLOCKS):
        for lane in range(lanes):
            channel = first + o * lanes + lane
            if channel >= oc:
                return
            dst = (image * oc + channel) * pixels + p0
            for r in range(count):
                y[dst + r] = tile[at + (o * TILE_PIXELS + r) * lanes + lane]
