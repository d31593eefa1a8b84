"""Widening pointwise convs with few input channels (1x1, stride 1, unpadded, ungrouped) as
register tiles read from NCHW and written to NCHW, each output vector finished in registers and
stored once.

Why: with 32 input channels or fewer an output element costs at most 32 multiply-adds, and a
layer that widens them four times or more (MobileNet v2's expansions: 16 -> 96 on 112x112,
24 -> 144 on 56x56, 32 -> 192 on 28x28) spends its time moving its output, not multiplying.
The GEMM path (``conv.conv2d_gemm``) packs its operands for a BLAS call, writes each block,
then reads it back for the epilogue; here the input block is read in place and each output
vector is written once, after the epilogue. Inside MobileNet v2 at batch 1 (2 threads,
``exe.profile``, us against the GEMM path): 16 -> 96 on 112x112 399 against 417, 24 -> 144 on
56x56 127 against 140, 32 -> 192 on 28x28 50-56 against 74-90; the whole network 1% faster.
Elsewhere BLAS's packed GEMM keeps up with the output and the tile loses (standalone, with
BatchNorm and ReLU): 64 -> 256 on 56x56 at batch 1 515 against 430 us, 64 -> 384 on 14x14 60
against 42, the narrowing 32 -> 16 on 112x112 73 against 60, 64 -> 64 on 56x56 at batch 32
6.8 against 3.3 ms. ResNet-50's 64 -> 256 on 56x56 at batch 32 ran 1.4x faster standalone
(21.6 against 31.2 ms) but not inside the network (27 ms either way, its 103 MB of output and
residual bound by memory), with or without non-temporal stores: not taken.

The register tile (``_tile``, LLVM IR): TILE_ROWS output channels x TILE_VECTORS vectors of
pixels, 24 accumulators of the 32 vector registers. Per input channel: TILE_VECTORS loads of
the input row, TILE_ROWS weights broadcast from the OIHW weights, TILE_ROWS x TILE_VECTORS
fused multiply-adds. The input block (C x 48 pixels in float32: 6 KiB at C = 32) stays in L1
while the tiles of every output channel read it. Accumulation runs over the input channels in
order with FMA, so results differ from the GEMM's by float rounding only. The epilogue then
does ``epilogue.py``'s arithmetic on the vectors (bias, folded BatchNorm, residual,
none/ReLU/hardtanh, each rounded as there); masked loads and stores cover the last pixels, and
the rows past the last channel are computed from its weights and not stored.

Buffers: the conv kernels' (x, w, bias, affine, residual, consts, y, scratch; the scratch is
unused). Attrs: [N, C, OC, pixels, strip, kind]: a task is ``strip`` output pixels of one
image, all its channels.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.extending import intrinsic

from backends.cpu.elementwise import COPY, HARDTANH, RELU
from backends.cpu.kernels import kernel
from backends.cpu.simd import (
    VECTOR_BYTES,
    _element_pointer,
    _fma,
    _lane_mask,
    _masked_load,
    _masked_store,
    _splat,
    _vector_of,
)
from graph.ir import Node

TILE_ROWS = 8
TILE_VECTORS = 3
# The input rows of the tile this many tiles ahead are prefetched: a tile's rows lie a plane
# apart, too many streams for the hardware prefetchers (64 -> 64 on 56x56 at batch 32: 7.6 ->
# 6.8 ms).
PREFETCH_TILES = 2
# Most input channels, and the least widening (OC / C), for the tile (module docstring);
# with more input channels each output element is enough arithmetic for BLAS's packed GEMM to
# win (2 threads, batch 32, ms against the GEMM without its epilogue: 256 -> 64 on 56x56 22
# against 13, 128 -> 512 on 28x28 14 against 12).
MAX_CHANNELS = 32
MIN_WIDENING = 4
# Tasks per thread the strips aim at, and the most tiles in a strip.
TASKS_PER_THREAD = 4
MAX_STRIP_TILES = 8
# The epilogue activations the tile applies; the others take the GEMM path.
KINDS = (COPY, RELU, HARDTANH)


def lanes_of(dtype: str) -> int:
    return VECTOR_BYTES // np.dtype(dtype).itemsize


def is_pointwise_tiled(node: Node, kind: int) -> bool:
    """1x1 convs at stride 1 without padding or groups, with an epilogue of KINDS, widening at
    least MIN_WIDENING times from at most MAX_CHANNELS input channels."""
    c, (oc, _, kh, kw) = node.inputs[0].shape[1], node.inputs[1].shape
    unit = (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1)
    plain = unit and not any(node.attrs["padding"]) and node.attrs["groups"] == 1
    return plain and kind in KINDS and c <= MAX_CHANNELS and oc >= MIN_WIDENING * c


def attrs(node: Node) -> list[int]:
    (n, c, _, _), oc = node.inputs[0].shape, node.inputs[1].shape[0]
    _, _, oh, ow = node.outputs[0].shape
    output = node.outputs[0].type
    pixels, lanes = oh * ow, lanes_of(output.dtype)
    width = TILE_VECTORS * lanes
    tiles = -(-pixels // width)
    wanted = TASKS_PER_THREAD * numba.config.NUMBA_NUM_THREADS
    strip_tiles = min(MAX_STRIP_TILES, tiles, max(1, n * tiles // wanted))
    return [n, c, oc, pixels, strip_tiles * width]


@intrinsic
def _tile(typingctx, y, x, w, bias, affine, residual, consts, geometry):
    """One register tile (module docstring): output channels ``first`` to ``first +
    TILE_ROWS`` of one image, ``count`` pixels (at most TILE_VECTORS vectors) from ``y_at``.

    geometry = (y_at, x_at, c, pixels, first, oc, count, kind): the offsets of the tile's first
    output and input element, the input channels, the pixels of a plane, the first channel
    and the channel count, the tile's pixels and the activation kind."""
    sig = types.none(y, x, w, bias, affine, residual, consts, geometry)

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
            return builder.bitcast(pointer(k, at), vector.as_pointer())

        fields = [builder.extract_value(args[7], k) for k in range(8)]
        fields = [context.cast(builder, f, a[7].dtype, types.intp) for f in fields]
        y_at, x_at, c, pixels, first, oc, count, kind = fields
        masks = [
            _lane_mask(context, builder, types.intp, builder.sub(count, constant(v * lanes)), lanes)
            for v in range(TILE_VECTORS)
        ]
        last = builder.sub(oc, constant(1))
        channels = []  # each row's channel, clamped to the last (rows past it are not stored)
        for r in range(TILE_ROWS):
            channel = builder.add(first, constant(r))
            channels.append(builder.select(builder.icmp_signed("<", channel, oc), channel, last))
        zeros = ir.Constant(vector, [0.0] * lanes)
        slots = [
            [cgutils.alloca_once_value(builder, zeros) for _ in range(TILE_VECTORS)]
            for _ in range(TILE_ROWS)
        ]
        with cgutils.for_range(builder, c) as loop:
            ci = loop.index
            acc = [[builder.load(s) for s in row] for row in slots]
            row_at = builder.add(x_at, builder.mul(ci, pixels))
            inputs = [
                _masked_load(
                    builder,
                    vector_pointer(1, builder.add(row_at, constant(v * lanes))),
                    vector,
                    masks[v],
                )
                for v in range(TILE_VECTORS)
            ]
            for v in range(TILE_VECTORS):
                ahead = builder.add(row_at, constant((PREFETCH_TILES * TILE_VECTORS + v) * lanes))
                _prefetch(builder, pointer(1, ahead))
            for r in range(TILE_ROWS):
                weight = builder.load(pointer(2, builder.add(builder.mul(channels[r], c), ci)))
                weight = _splat(builder, weight, vector)
                for v in range(TILE_VECTORS):
                    acc[r][v] = builder.call(fma, [weight, inputs[v], acc[r][v]])
            for r in range(TILE_ROWS):
                for v in range(TILE_VECTORS):
                    builder.store(acc[r][v], slots[r][v])
        epilogue = _Epilogue(context, builder, a, args, vector, oc, kind)
        for r in range(TILE_ROWS):
            inside = builder.icmp_signed("<", builder.add(first, constant(r)), oc)
            with builder.if_then(inside):
                params = epilogue.parameters(channels[r])
                out_at = builder.add(y_at, builder.mul(constant(r), pixels))
                for v in range(TILE_VECTORS):
                    at = builder.add(out_at, constant(v * lanes))
                    value = epilogue.finish(builder.load(slots[r][v]), params, at, masks[v])
                    _masked_store(builder, value, vector_pointer(0, at), masks[v])
        return context.get_dummy_value()

    return sig, codegen


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
        pointer = builder.bitcast(self._pointer(5, at), self.vector.as_pointer())
        present = builder.and_(mask, _splat_bit(builder, self.has_residual, self.vector.count))
        residual = _masked_load(builder, pointer, self.vector, present)
        value = builder.select(self.has_residual, builder.fadd(value, residual), value)
        zeros = ir.Constant(self.vector, [0.0] * self.vector.count)
        relu = builder.select(builder.fcmp_ordered("<=", value, zeros), zeros, value)
        above = builder.select(builder.fcmp_ordered(">", value, self.high), self.high, value)
        hardtanh = builder.select(builder.fcmp_ordered("<", value, self.low), self.low, above)
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


@kernel(buffers=8)
def conv2d_pointwise(x, w, b, affine, res, consts, y, scratch, a):
    n, c, oc, pixels, strip, kind = a[0], a[1], a[2], a[3], a[4], a[5]
    width = TILE_VECTORS * (VECTOR_BYTES // x.itemsize)
    strips = (pixels + strip - 1) // strip
    for task in prange(n * strips):
        image, start = task // strips, task % strips * strip
        stop = min(pixels, start + strip)
        for p in range(start, stop, width):
            for o in range(0, oc, TILE_ROWS):
                y_at, x_at = (image * oc + o) * pixels + p, image * c * pixels + p
                geometry = (y_at, x_at, c, pixels, o, oc, min(width, stop - p), kind)
                _tile(y, x, w, b, affine, res, consts, geometry)
    return 0
