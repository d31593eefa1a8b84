"""Pointwise convs (1x1, stride 1, unpadded, ungrouped) as register tiles read from NCHW and
written to NCHW, each output vector finished in registers and stored once, where that beats
the GEMM path (``conv.conv2d_gemm``): widening layers from few input channels, maps of 8x8 or
smaller, small maps of several images with small weights, and outputs too large for the
caches from at most 128 input channels (the regimes at ``MAX_CHANNELS``, measured there).

Why: the GEMM path packs its operands for a BLAS call, writes each block and reads it back
for the epilogue, and on maps under 256 pixels stages several images side by side (copies in
and out). When an output element is little arithmetic (MobileNet v2's expansions, 32 -> 192
on 28x28: 50-62 us against 74-109) or the product is narrow (49 columns on 7x7, where BLAS
packs all the weights for a few columns), that overhead dominates; the tile reads the input
in place, the weights straight from OIHW, and writes each output once. So does a layer whose
output is too large for the caches (ResNet-50's 64 -> 256 on 56x56 at batch 32: 103 MB of
output and as much residual), once its tiles run channel-major (``is_channel_major``): in
the pixel-major order it ran even with the GEMM inside the network (27 ms either way), with or
without non-temporal stores. Elsewhere BLAS's packed GEMM wins (us, inside ResNet-50 at batch
1 unless said): 256 -> 1024 on 14x14 643-908 against 431-476, 512 -> 128 on 28x28 517-634
against 406-427, the narrowing 32 -> 16 on 112x112 in MobileNet v2 159 against 123.

A register tile (``_tile_codegen``, LLVM IR, one of TILES): R output channels x V vectors of
pixels, 24 accumulators of the 32 vector registers. Per input channel: V loads of the input row,
R weights broadcast from the OIHW weights, R x V fused multiply-adds; the rows of the tile
PREFETCH_TILES ahead are prefetched, and one line of the next tile's weight rows (they come from
memory at batch 1, in runs too short for the hardware prefetchers to pick up: MobileNet v2's 320
-> 1280 on 7x7 in the network, one thread, 632 -> 410 us). Pixel-major, a tile's input block
(C x 48 pixels in float32: 6 KiB at C = 32) stays in cache while the tiles of its output
channels read it; channel-major, the task's strip of input does.
Accumulation runs over the input channels in order with FMA, so results differ from the GEMM's
by float rounding only. The epilogue then does ``epilogue.py``'s arithmetic on the vectors
(bias, folded BatchNorm, residual, none/ReLU/hardtanh, each rounded as there); masked loads and
stores cover a map smaller than a vector, and the rows past the last channel are computed from
its weights and not stored. The tiles cover a plane's whole vectors; the pixels past them
(``tiled_pixels``) are dot products (``_remainder``), which a masked vector would have computed
with most of its lanes idle (7x7: 4 vectors for 49 pixels; 160 -> 960 on one thread 152 -> 123
us).

Buffers: the conv kernels' (x, w, bias, affine, residual, consts, y, scratch; the scratch
holds each thread's remainder columns). Attrs: [N, C, OC, pixels, tiled pixels, strip, part,
tile, channel-major, kind]: a task is ``strip`` output pixels of one image and ``part`` of its
channels (a multiple of the tile's), ``tile`` indexes TILES; it runs its tiles pixel-major
(each strip position's channel groups in turn) or channel-major (each channel group along the
whole strip); the task with a plane's last strip also computes the remainder of its channels.
"""

from __future__ import annotations

import itertools

import numba
import numpy as np
from llvmlite import ir
from numba import get_thread_id, njit, prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from backends.cpu import simd
from backends.cpu.elementwise import COPY, HARDTANH, RELU
from backends.cpu.epilogue import activated
from backends.cpu.kernels import kernel
from backends.cpu.simd import (
    VECTOR_BYTES,
    _clamp,
    _element_pointer,
    _fma,
    _lane_mask,
    _masked_load,
    _masked_store,
    _relu,
    _splat,
    _vector_of,
    _vector_pointer,
)
from graph.ir import Node

# Register tiles (output channels, vectors of pixels), 24 accumulators each; a layer takes the
# one that pads its whole vectors least (14x14's 12: four 8x3 tiles or three 6x4, the first).
TILES = ((8, 3), (6, 4))
# The input rows of the tile this many tiles ahead are prefetched: a tile's rows lie a plane
# apart, too many streams for the hardware prefetchers (64 -> 64 on 56x56 at batch 32: 7.6 ->
# 6.8 ms).
PREFETCH_TILES = 2
# The tile's regimes (``is_pointwise_tiled``; measured inside MobileNet v2 and ResNet-50,
# ``exe.profile``, us against the GEMM path, module docstring):
# - widening at least MIN_WIDENING times from at most MAX_CHANNELS input channels: each output
#   element is little arithmetic, and the GEMM's packing and second pass over the output cost
#   more (with more input channels the GEMM wins: 64 -> 384 on 14x14 at batch 1 85 against 68,
#   128 -> 512 on 28x28 585 against 523);
MAX_CHANNELS = 32
MIN_WIDENING = 4
# - maps of at most SMALL_MAP_PIXELS pixels, which one 6x4 tile covers: BLAS packs the weights
#   for a 49-column product, the tile reads them once an image (batch 1: 320 -> 1280 on 7x7 348
#   against 397, 960 -> 160 102 against 122, 2048 -> 512 524-550 against 610-636; batch 4:
#   2.1-2.5x; batch 32: ResNet-50's 7x7 layers 0.97-1.06x);
SMALL_MAP_PIXELS = 64
# - several images that the GEMM path would stage side by side (``conv.images_per_task``) when
#   the weights take at most STAGED_MAX_WEIGHT_BYTES: the tile needs no staging copy, and
#   small weights stay in cache while it reads them once a tile (MobileNet v2 at batch 4 on
#   14x14: 64 -> 384 184-198 against 358-419, 576 -> 96 439-471 against 489-500; ResNet-50 at
#   batch 32 on 14x14, 1-2 MB of weights: 0.74-0.94x, not taken).
STAGED_MAX_WEIGHT_BYTES = 512 << 10
# - at batch 1, widening layers on maps of at most MEDIUM_MAP_PIXELS pixels with weights of at
#   most STAGED_MAX_WEIGHT_BYTES (MobileNet v2's 14x14 expansions, in the network, one thread
#   / two: 64 -> 384 104-106 / 68-73 us against 114-122 / 72-85, 96 -> 576 216-218 / 127-132
#   against 227-235 / 133-146; whole network on two threads 5.41 -> 5.30 ms). Its narrowing
#   layers ran even or slower (576 -> 96 200-201 / 134-136 against 200-206 / 129-139, 384 ->
#   64 on two threads 0.93-0.97x), and ResNet-50's 14x14 layers, with 1-2 MB of weights, much
#   slower (1024 -> 256 on one thread: 1188 against 913): they stay on the GEMM.
MEDIUM_MAP_PIXELS = 196
# - large outputs (CHANNEL_MAJOR_MIN_OUTPUT_BYTES, run channel-major) of layers that do not
#   narrow, from at most STREAMING_MAX_CHANNELS input channels: little arithmetic per output
#   byte, so the output (and residual) streams bound them, and the tile writes each output
#   once where the GEMM path writes a block and reads it back for the epilogue. ResNet-50,
#   interleaved in one process, GEMM against the tile (strips of 8 tiles): at batch 32, ms,
#   64 -> 256 on 56x56 115 against 75 (four layers), 128 -> 512 on 28x28 70 against 62, 64 ->
#   64 4.8 against 4.4 (profile sum 1108 -> 1040); at batch 1, us, 64 -> 256 2376 against 2066,
#   128 -> 512 2057 against 1981. Narrowing layers ran even (256 -> 64 on 56x56 at batch 32 35
#   against 34, 512 -> 128 on 28x28 38 against 37) and 256 -> 1024 on 14x14 lost (92-103
#   against 100-108): they stay on the GEMM.
STREAMING_MAX_CHANNELS = 128
# What one output of the remainder's dot products (``_remainder``) costs, in outputs of a tile
# (160 -> 960 on 7x7, one thread: 15 us for the 960 outputs of the last pixel, 103 us for the
# tiles' 46080).
REMAINDER_COST = 7
# The most tiles in a strip, and the most channel parts per thread (``_split``).
MAX_STRIP_TILES = 8
MAX_PARTS_PER_THREAD = 4
# What a task costs beyond its tiles, in tiles (reading its part's weights again, setting up).
TASK_TILES = 0.25
# The epilogue activations the tile applies; the others take the GEMM path.
KINDS = (COPY, RELU, HARDTANH)
# Outputs of at least this many bytes go channel-major: a task runs its tiles channel group by
# channel group, each along its strip of pixels, so every output (and residual) row streams
# out in one run. Pixel-major, a tile's rows lie a plane apart and one strip of pixels touches
# every output channel: too many streams for the hardware prefetchers and write combining
# once the output leaves the caches. The pure stream of a 64 -> 256 layer's output and
# residual on 56x56 at batch 32, no arithmetic: 21.4 ms pixel-major, 14.4 channel-major. The
# same plan in both orders, interleaved in one process (us unless said, pixel- against
# channel-major): MobileNet v2 at batch 1, 16 -> 96 on 112x112 (4.8 MB) 395 against 238, 24
# -> 144 on 56x56 (1.8 MB) 240 against 233, but 32 -> 192 on 28x28 (0.6 MB) 179 against 185
# and 64 -> 384 on 14x14 230 against 240: under this size the pixel-major order's reuse of a
# tile's input block across its channel groups wins. ResNet-50 at batch 32, ms: 64 -> 256 on
# 56x56 110 against 75 (four layers), 128 -> 512 on 28x28 74 against 64, 64 -> 64 6.0 against
# 4.5.
CHANNEL_MAJOR_MIN_OUTPUT_BYTES = 1 << 20
# ... and their strips may be this many tiles (a 56x56 plane is 49 6x4 tiles), not
# MAX_STRIP_TILES: longer runs of each row (strips of 64 against 8 tiles, interleaved, ResNet-50
# at batch 32: 64 -> 256 on 56x56 73.7 against 70.0 ms, 128 -> 512 on 28x28 62.3 against 58.7;
# MobileNet v2's 16 -> 96 on 112x112 236 against 222 us).
CHANNEL_MAJOR_MAX_STRIP_TILES = 64


def lanes_of(dtype: str) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def is_pointwise_tiled(node: Node, kind: int, staged: bool) -> bool:
    """1x1 convs at stride 1 without padding or groups, with an epilogue of KINDS, in one of
    the tile's regimes (above); ``staged``: the GEMM path would put several images side by
    side."""
    c, (oc, _, kh, kw) = node.inputs[0].shape[1], node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    unit = (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1)
    plain = unit and not any(node.attrs["padding"]) and node.attrs["groups"] == 1
    widening = c <= MAX_CHANNELS and oc >= MIN_WIDENING * c
    small_weights = c * oc * node.outputs[0].type.itemsize <= STAGED_MAX_WEIGHT_BYTES
    medium_map = oh * ow <= MEDIUM_MAP_PIXELS and c < oc
    streaming = c <= STREAMING_MAX_CHANNELS and oc >= c and is_channel_major(node)
    regime = widening or oh * ow <= SMALL_MAP_PIXELS or (small_weights and (staged or medium_map))
    regime = regime or streaming
    return plain and kind in KINDS and regime


def attrs(node: Node) -> list[int]:
    (n, c, _, _), oc = node.inputs[0].shape, node.inputs[1].shape[0]
    _, _, oh, ow = node.outputs[0].shape
    output = node.outputs[0].type
    pixels, lanes = oh * ow, lanes_of(output.dtype)
    full = tiled_pixels(pixels, lanes)
    vectors = -(-full // lanes)
    tile = tile_for(vectors)
    rows, tile_vectors = TILES[tile]
    width = tile_vectors * lanes
    tiles, channel_tiles = -(-full // width), -(-oc // rows)
    tail = REMAINDER_COST * (pixels - full) / width
    channel_major = is_channel_major(node)
    longest = CHANNEL_MAJOR_MAX_STRIP_TILES if channel_major else MAX_STRIP_TILES
    threads = numba.config.NUMBA_NUM_THREADS
    strip, part = _split(n, tiles, channel_tiles, threads, tail, longest)
    return [n, c, oc, pixels, full, strip * width, part * rows, tile, int(channel_major)]


def is_channel_major(node: Node) -> bool:
    """Whether the tile runs channel-major (see CHANNEL_MAJOR_MIN_OUTPUT_BYTES)."""
    return node.outputs[0].type.nbytes >= CHANNEL_MAJOR_MIN_OUTPUT_BYTES


def tile_for(vectors: int) -> int:
    """The index in TILES of the tile that pads ``vectors`` vectors least (ties: the first)."""
    return min(range(len(TILES)), key=lambda t: -(-vectors // TILES[t][1]) * TILES[t][1])


def tiled_pixels(pixels: int, lanes: int) -> int:
    """The pixels of a plane the register tiles compute: its whole vectors. The rest (fewer
    than a vector: 1 of 7x7's 49 in float32, 4 of 14x14's 196) are dot products
    (``_remainder``), where a tile's masked vector would waste most of its lanes on them (a
    7x7 map took 4 vectors for 3 and a pixel). A map smaller than one vector is all tile."""
    return pixels if pixels < lanes else pixels - pixels % lanes


def scratch_numel(node: Node) -> int:
    """Scratch elements: a slot of remainder columns (``_remainder``) for each thread."""
    lanes = lanes_of(node.outputs[0].type.dtype)
    return numba.config.NUMBA_NUM_THREADS * (lanes - 1) * node.inputs[0].shape[1]


def _split(
    n: int,
    tiles: int,
    channel_tiles: int,
    threads: int,
    tail: float = 0.0,
    longest: int = MAX_STRIP_TILES,
) -> tuple[int, int]:
    """(pixel tiles per strip, channel tiles per part) for which the busiest thread has the least
    work under Numba's static schedule (each thread one contiguous run of the tasks, image
    by image, strip by strip, part by part), counting TASK_TILES per task and, in the last
    strip, ``tail`` tiles per channel tile for the remainder's dot products; ties go to
    fewer tasks. Without the tail, MobileNet v2's 14x14 layers at batch 1 were cut into two
    strips, and the thread with the second did all the remainder (96 -> 576 on two threads
    173-182 us against 216 on one). At batch 1 on 14x14, five strips of one tile made ten
    tasks of which one thread got five full ones and the other three and two slivers;
    balanced (two tasks of the whole image and half the channels), 96 -> 576 took 100 us
    instead of 119, 64 -> 384 46 instead of 54 (the GEMM path: 95 and 48)."""
    best = None
    for strip in range(1, min(longest, tiles) + 1):
        for parts in range(1, min(channel_tiles, MAX_PARTS_PER_THREAD * threads) + 1):
            part = -(-channel_tiles // parts)
            sizes = [
                (min(strip, tiles - s) + tail * (s + strip >= tiles)) * min(part, channel_tiles - q)
                + TASK_TILES
                for s in range(0, tiles, strip)
                for q in range(0, channel_tiles, part)
            ]
            tasks = n * len(sizes)
            prefix = [0.0, *itertools.accumulate(sizes)]

            def done(i, sizes=sizes, prefix=prefix):  # work of tasks [0, i)
                return i // len(sizes) * prefix[-1] + prefix[i % len(sizes)]

            bounds = [tasks * t // threads for t in range(threads + 1)]
            busiest = max(done(b) - done(a) for a, b in itertools.pairwise(bounds))
            key = (busiest, tasks)
            if best is None or key < best[0]:
                best = key, (strip, part)
    return best[1]


def _tile_intrinsic(rows: int, vectors: int, tapped: bool = False):
    """The intrinsic of one register tile of ``rows`` channels x ``vectors`` vectors; a tapped
    tile takes the input rows' offsets as a last argument (``_tile_codegen``)."""
    codegen = _tile_codegen(rows, vectors, tapped)
    if tapped:

        @intrinsic
        def tapped_tile(typingctx, y, x, w, bias, affine, residual, consts, geometry, offsets):
            arguments = (y, x, w, bias, affine, residual, consts, geometry, offsets)
            return types.none(*arguments), codegen

        return tapped_tile

    @intrinsic
    def tile(typingctx, y, x, w, bias, affine, residual, consts, geometry):
        return types.none(y, x, w, bias, affine, residual, consts, geometry), codegen

    return tile


def tapped_tiles() -> tuple:
    """The TILES as tapped tiles (``conv_tapped.py``): input "channel" k's row starts at
    ``x_at + offsets[k]`` instead of ``x_at + k * pixels``."""
    return tuple(_tile_intrinsic(rows, vectors, True) for rows, vectors in TILES)


def _tile_codegen(rows: int, vectors: int, tapped: bool):
    """One register tile (module docstring): output channels ``first`` to ``first + rows`` of
    one image, ``count`` pixels (at most ``vectors`` vectors) from ``y_at``.

    geometry = (y_at, x_at, c, pixels, first, oc, count, kind): the offsets of the tile's first
    output and input element, the input channels, the pixels of a plane, the first channel
    and the channel count, the tile's pixels and the activation kind. ``tapped``: input
    channel k's row is at ``x_at + offsets[k]`` (a ninth argument), not a plane after the last.
    """

    def codegen(context, builder, signature, args):
        a = signature.args
        vector, lanes = _vector_of(context, a[0])
        fma = _fma(builder, vector)
        intp = cgutils.intp_t

        def constant(value):
            return ir.Constant(intp, value)

        def pointer(k, at):
            return _element_pointer(context, builder, a[k], args[k], types.intp, at)

        def vector_pointer(k, at):
            return _vector_pointer(builder, pointer(k, at), vector)

        fields = [builder.extract_value(args[7], k) for k in range(8)]
        fields = [context.cast(builder, f, a[7].dtype, types.intp) for f in fields]
        y_at, x_at, c, pixels, first, oc, count, kind = fields
        masks = [
            _lane_mask(context, builder, types.intp, builder.sub(count, constant(v * lanes)), lanes)
            for v in range(vectors)
        ]
        last = builder.sub(oc, constant(1))
        channels = []  # each row's channel, clamped to the last (rows past it are not stored)
        for r in range(rows):
            channel = builder.add(first, constant(r))
            channels.append(builder.select(builder.icmp_signed("<", channel, oc), channel, last))
        zeros = ir.Constant(vector, [0.0] * lanes)
        slots = [
            [cgutils.alloca_once_value(builder, zeros) for _ in range(vectors)] for _ in range(rows)
        ]
        with cgutils.for_range(builder, c) as loop:
            ci = loop.index
            acc = [[builder.load(s) for s in row] for row in slots]
            if tapped:
                offset = builder.load(pointer(8, ci))
                row_at = builder.add(x_at, context.cast(builder, offset, a[8].dtype, types.intp))
            else:
                row_at = builder.add(x_at, builder.mul(ci, pixels))
            inputs = [
                _masked_load(
                    builder,
                    vector_pointer(1, builder.add(row_at, constant(v * lanes))),
                    vector,
                    masks[v],
                )
                for v in range(vectors)
            ]
            for v in range(vectors):
                ahead = builder.add(row_at, constant((PREFETCH_TILES * vectors + v) * lanes))
                _prefetch(builder, pointer(1, ahead))
            next_rows = builder.mul(builder.add(first, constant(rows)), c)
            _prefetch(builder, pointer(2, builder.add(next_rows, builder.mul(ci, constant(lanes)))))
            for r in range(rows):
                weight = builder.load(pointer(2, builder.add(builder.mul(channels[r], c), ci)))
                weight = _splat(builder, weight, vector)
                for v in range(vectors):
                    acc[r][v] = builder.call(fma, [weight, inputs[v], acc[r][v]])
            for r in range(rows):
                for v in range(vectors):
                    builder.store(acc[r][v], slots[r][v])
        epilogue = _Epilogue(context, builder, a, args, vector, oc, kind)
        for r in range(rows):
            inside = builder.icmp_signed("<", builder.add(first, constant(r)), oc)
            with builder.if_then(inside):
                params = epilogue.parameters(channels[r])
                out_at = builder.add(y_at, builder.mul(constant(r), pixels))
                for v in range(vectors):
                    at = builder.add(out_at, constant(v * lanes))
                    value = epilogue.finish(builder.load(slots[r][v]), params, at, masks[v])
                    _masked_store(builder, value, vector_pointer(0, at), masks[v])
        return context.get_dummy_value()

    return codegen


_tile_8x3, _tile_6x4 = (_tile_intrinsic(rows, vectors) for rows, vectors in TILES)


class _Epilogue:
    """``epilogue.py``'s arithmetic on one output vector, in its order and roundings: + bias,
    * alpha + beta (a folded BatchNorm), + residual, then none, ReLU (``0 if v <= 0 else v``,
    NaN kept) or hardtanh (``low if v < low else high if v > high else v``). Absent parts are
    skipped by selects, so one tile serves every combination."""

    def __init__(self, context, builder, a, args, vector, oc, kind):
        self.context, self.builder, self.vector = context, builder, vector
        self.a, self.args = a, args
        intp = cgutils.intp_t

        def present(k):
            array = context.make_array(a[k])(context, builder, args[k])
            length = builder.extract_value(array.shape, 0)
            return builder.icmp_signed("!=", length, ir.Constant(intp, 0))

        self.has_bias, self.has_affine, self.has_residual = present(3), present(4), present(5)
        self.oc = oc
        self.kind = kind
        # consts always holds [negative_slope, low, high] (``epilogue_buffers``)
        self.low, self.high = (self._const(k) for k in (1, 2))

    def _pointer(self, k, at):
        return _element_pointer(self.context, self.builder, self.a[k], self.args[k], types.intp, at)

    def _const(self, k):
        pointer = self._pointer(6, ir.Constant(cgutils.intp_t, k))
        return _splat(self.builder, self.builder.load(pointer), self.vector)

    def _load_if(self, k, at, condition, default):
        """array k [at] where ``condition`` holds, else ``default`` (no read)."""
        builder = self.builder
        slot = cgutils.alloca_once_value(builder, default)
        with builder.if_then(condition):
            builder.store(builder.load(self._pointer(k, at)), slot)
        return builder.load(slot)

    def parameters(self, channel):
        """(bias, alpha, beta) of ``channel`` as vectors (zero where absent)."""
        builder, zero = self.builder, ir.Constant(self.vector.element, 0.0)
        bias = self._load_if(3, channel, self.has_bias, zero)
        alpha = self._load_if(4, channel, self.has_affine, zero)
        beta = self._load_if(4, builder.add(self.oc, channel), self.has_affine, zero)
        return [_splat(builder, value, self.vector) for value in (bias, alpha, beta)]

    def finish(self, value, parameters, at, mask):
        builder = self.builder
        bias, alpha, beta = parameters
        value = builder.select(self.has_bias, builder.fadd(value, bias), value)
        affine = builder.fadd(builder.fmul(value, alpha), beta)
        value = builder.select(self.has_affine, affine, value)
        pointer = _vector_pointer(builder, self._pointer(5, at), self.vector)
        present = builder.and_(mask, _splat_bit(builder, self.has_residual, self.vector.count))
        residual = _masked_load(builder, pointer, self.vector, present)
        value = builder.select(self.has_residual, builder.fadd(value, residual), value)
        relu, hardtanh = _relu(builder, value), _clamp(builder, value, self.low, self.high)
        value = builder.select(_kind_is(builder, self.kind, RELU), relu, value)
        return builder.select(_kind_is(builder, self.kind, HARDTANH), hardtanh, value)


def _prefetch(builder, pointer):
    """A read prefetch into L1 (never faults, even past an array's end)."""
    i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
    )
    read, near_l1, data = (ir.Constant(i32, k) for k in (0, 3, 1))
    builder.call(function, [builder.bitcast(pointer, i8p), read, near_l1, data])


def _kind_is(builder, kind, which: int):
    return builder.icmp_signed("==", kind, ir.Constant(kind.type, which))


def _splat_bit(builder, bit, count):
    """<count x i1> of one i1."""
    return _splat(builder, bit, ir.VectorType(ir.IntType(1), count))


@njit(cache=True)
def _remainder(x, w, bias, affine, residual, consts, y, scratch, image, a, first, last):
    """Output channels ``first`` to ``last`` of one image at the pixels past the tiles' (fewer
    than a vector), each a dot product of a weight row with an input column: the columns are
    copied once into this thread's scratch, then four channels at a time (four independent
    chains) multiply a vector of input channels and add it to a vector of partial sums, added
    up in lane order at the end. The order differs from the tile's, so these pixels differ
    from it by float rounding only. The epilogue is ``epilogue.py``'s parts on each value, in
    line: as a call taking the arrays, each value paid four reference-count increments and
    decrements (67 us instead of 15 for 960 outputs)."""
    c, oc, pixels, full, kind = a[1], a[2], a[3], a[4], a[9]
    half, low, high = affine.shape[0] // 2, consts[1], consts[2]
    count, lanes = pixels - full, simd.lanes(x)
    columns = get_thread_id() * (lanes - 1) * c
    x_at = image * c * pixels + full
    for j in range(count):
        for ci in range(c):
            scratch[columns + j * c + ci] = x[x_at + ci * pixels + j]
    for o in range(first, last, 4):
        o1, o2, o3 = min(o + 1, last - 1), min(o + 2, last - 1), min(o + 3, last - 1)
        for j in range(count):
            column = columns + j * c
            s0 = s1 = s2 = s3 = simd.load(w, 0, 0)
            for k in range(0, c, lanes):
                values = simd.load(scratch, column + k, c - k)
                s0 = s0 + simd.load(w, o * c + k, c - k) * values
                s1 = s1 + simd.load(w, o1 * c + k, c - k) * values
                s2 = s2 + simd.load(w, o2 * c + k, c - k) * values
                s3 = s3 + simd.load(w, o3 * c + k, c - k) * values
            at = image * oc * pixels + full + j
            for channel, partial in ((o, s0), (o1, s1), (o2, s2), (o3, s3)):
                out, value = at + channel * pixels, simd.total(partial)
                if bias.shape[0]:
                    value = value + bias[channel]
                if half:
                    value = value * affine[channel] + affine[half + channel]
                if residual.shape[0]:
                    value = value + residual[out]
                y[out] = activated(value, kind, low, high)


@kernel(buffers=8)
def conv2d_pointwise(x, w, b, affine, res, consts, y, scratch, a):
    n, c, oc, pixels, full, strip, part, tile = a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]
    channel_major, kind = a[8], a[9]
    rows, vectors = TILES[tile]
    width = vectors * (VECTOR_BYTES // x.itemsize)
    strips, parts = (full + strip - 1) // strip, (oc + part - 1) // part
    for task in prange(n * strips * parts):
        image, s, q = task // (strips * parts), task // parts % strips, task % parts
        start, first = s * strip, q * part
        stop, last = min(full, start + strip), min(oc, first + part)
        tiles, groups = (stop - start + width - 1) // width, (last - first + rows - 1) // rows
        for t in range(tiles * groups):
            if channel_major:
                o, p = first + t // tiles * rows, start + t % tiles * width
            else:
                o, p = first + t % groups * rows, start + t // groups * width
            y_at, x_at = (image * oc + o) * pixels + p, image * c * pixels + p
            geometry = (y_at, x_at, c, pixels, o, oc, min(width, stop - p), kind)
            if tile == 0:
                _tile_8x3(y, x, w, b, affine, res, consts, geometry)
            else:
                _tile_6x4(y, x, w, b, affine, res, consts, geometry)
        if stop == full and full < pixels:
            _remainder(x, w, b, affine, res, consts, y, scratch, image, a, first, last)
    return 0
