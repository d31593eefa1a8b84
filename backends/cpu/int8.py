"""int8 CPU kernels of ``conv2d_int8`` and ``linear_int8`` (``graph/ops/quantized.py``).

Algorithm, per layer:

1. Weights, on the plan's first run only (PyTorch's ``convert`` also packs them once):
   per-channel symmetric scales, int8 weights ``wq [OC + 7, KP]`` in the columns' tap order
   (KH, KW, C/g in groups of 4 lanes, zero lanes past C/g; seven zero rows so a tile of 8
   channels never reads past the end) and each row's sum, kept in a persistent block of the
   plan. ``engine.quantize``'s executable rebuilds its plan when its weights are loaded.
2. Input, every run, in the same parallel region: quantised once, +128 to unsigned
   (``vpdpbusd`` multiplies u8 by s8), into a zero-bordered buffer ``[N, groups, C/g/4, HP,
   WP, 4]``: each uint32 holds 4 channels of one pixel.
3. Columns, per task (a block of pixels of one group; the pixels of several images run
   together, so 4x4 maps of a CIFAR ResNet's last stage fill whole tiles): im2col copies
   uint32 words, runs of OW words at stride 1, into VNNI's layout ``cols [KP/4, block, 4]``.
4. Tiles of 8 output channels x 32 pixels: ``dot_tile`` keeps 16 zmm accumulators of 16
   int32 and for each 4 taps loads 2 x 64 bytes of columns, broadcasts 4 bytes of each
   channel's weights and issues 16 ``vpdpbusd`` (tiles of 4 channels: ResNet-18 CIFAR at
   batch 32 in 69.3 ms, against 67.1). The shift is undone exactly with the row sums:
   ``sum (xq + 128) wq = acc - 128 * sum wq`` (|acc| < 2^31 while K < 66000). Then
   ``y = float32(acc) * float32(input_scale * sw[o])``: in registers (``dot_tile_scaled``)
   for whole tiles whose rows are contiguous in y (OH*OW a multiple of 32), else through an
   int32 tile. Rescaling through memory cost as much as a third of the GEMM (64->64 3x3).
5. The fused epilogue (``epilogue.py``: bias, folded BatchNorm, residual add, activation) on
   each output run.

``linear_int8`` is the same kernel with ``x [N, in]`` read as N images of 1x1 pixels with
``in`` channels, i.e. a pointwise conv with OH = OW = 1.

Plain int8 loops do not use VNNI in Numba (``int32(a) * int32(b)`` is typed int64, DESIGN.md
known traps), hence the LLVM intrinsic in ``dot_tile``; ``tests/compress/test_int8.py`` checks
that ``vpdpbusd`` is in the assembly.

Buffers (``_BUFFERS``): x, w, bias, affine, residual, consts, y (float32; absent epilogue parts
empty), scale (float32 [1]: input_scale); persistent: ready (int32 [1]), factor (float32
[OC]), shift (int32 [OC]), wq (int8); scratch: padded (u8), cols (u8, one block per thread),
acc (int32 [threads, 4, 32]).
Attrs: [N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PB, PL, PR, DH, DW, groups, KP, block,
kind].
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import carray, cfunc, get_thread_id, njit, prange  # noqa: F401  (carray: the shim)
from numba.core import cgutils, types
from numba.core.extending import intrinsic

from backends.cpu import numba_setup
from backends.cpu.epilogue import epilogue_buffers, finish_channel
from backends.cpu.kernels import STEP_SIGNATURE, Step
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node

TILE_CHANNELS, TILE_PIXELS = 8, 32  # one dot_tile: 8 channels x 2 zmm of 16 pixels
# Columns of one task aim at this many bytes: they stay in the 1 MiB L2 while every weight
# tile of the group streams past them.
BLOCK_BYTES = 768 * 1024
_ALIGN = 64


def _argument(context, builder, signature, args, index):
    """Argument ``index`` of an intrinsic: an array's data pointer, or an int as intp."""
    kind = signature.args[index]
    if isinstance(kind, types.Array):
        return context.make_array(kind)(context, builder, args[index]).data
    return context.cast(builder, args[index], kind, types.intp)


def _splat(builder, value, vector):
    one = builder.insert_element(ir.Constant(vector, None), value, ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), vector.count), [0] * vector.count)
    return builder.shuffle_vector(one, one, mask)


def _tile_sums(context, builder, signature, args) -> list:
    """The VNNI loop of one 8 x 32 tile (arguments cols, cols_at, block, wq, w_at, kp come
    first): the 2 * TILE_CHANNELS <16 x i32> sums, channel-major, 16 pixels each."""
    cols, cols_at, block, wq, w_at, kp = (
        _argument(context, builder, signature, args, i) for i in range(6)
    )
    i32, intp = ir.IntType(32), cgutils.intp_t
    vec = ir.VectorType(i32, 16)
    vnni = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.x86.avx512.vpdpbusd.512"
    )
    sums = [
        cgutils.alloca_once_value(builder, ir.Constant(vec, None)) for _ in range(2 * TILE_CHANNELS)
    ]
    for s in sums:
        builder.store(ir.Constant(vec, [0] * 16), s)
    step = builder.mul(block, ir.Constant(intp, 4))  # bytes per 4 taps of the block
    with cgutils.for_range(builder, builder.udiv(kp, ir.Constant(intp, 4))) as loop:
        at = builder.add(cols_at, builder.mul(loop.index, step))
        pixels = []
        for half in range(2):
            ptr = builder.gep(cols, [builder.add(at, ir.Constant(intp, 64 * half))])
            pixels.append(builder.load(builder.bitcast(ptr, vec.as_pointer()), align=1))
        tap = builder.mul(loop.index, ir.Constant(intp, 4))
        for m in range(TILE_CHANNELS):
            row = builder.add(w_at, builder.mul(kp, ir.Constant(intp, m)))
            ptr = builder.gep(wq, [builder.add(row, tap)])
            word = builder.load(builder.bitcast(ptr, i32.as_pointer()), align=1)
            weights = _splat(builder, word, vec)
            for half in range(2):
                s = sums[m * 2 + half]
                builder.store(builder.call(vnni, [builder.load(s), pixels[half], weights]), s)
    return [builder.load(s) for s in sums]


def _store(builder, pointer, at, value) -> None:
    ptr = builder.gep(pointer, [at])
    builder.store(value, builder.bitcast(ptr, value.type.as_pointer()), align=4)


@intrinsic
def dot_tile(typingctx, cols, cols_at, block, wq, w_at, kp, acc, acc_at):
    """acc[acc_at + m*32 + t] = sum over k of cols (pixel t of the tile at ``cols_at``, layout
    [KP/4, block, 4] u8) times wq[w_at + m*KP + k] (s8), for m < 8, t < 32: exact int32."""
    sig = types.void(cols, cols_at, block, wq, w_at, kp, acc, acc_at)

    def codegen(context, builder, signature, args):
        sums = _tile_sums(context, builder, signature, args)
        acc_, acc_at_ = (_argument(context, builder, signature, args, i) for i in (6, 7))
        for i, value in enumerate(sums):  # i = m*2 + half
            _store(builder, acc_, builder.add(acc_at_, ir.Constant(cgutils.intp_t, 16 * i)), value)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def dot_tile_scaled(typingctx, cols, cols_at, block, wq, w_at, kp, y, y_at, ld, shift, factor, o):
    """``dot_tile`` rescaled in registers: y[y_at + m*ld + t] = float32(sum - shift[o + m]) *
    factor[o + m], for m < 8, t < 32 (a whole tile whose output rows are contiguous)."""
    sig = types.void(cols, cols_at, block, wq, w_at, kp, y, y_at, ld, shift, factor, o)

    def codegen(context, builder, signature, args):
        sums = _tile_sums(context, builder, signature, args)
        y_, y_at_, ld_, shift_, factor_, o_ = (
            _argument(context, builder, signature, args, i) for i in range(6, 12)
        )
        intp, f32 = cgutils.intp_t, ir.FloatType()
        for m in range(TILE_CHANNELS):
            channel = builder.add(o_, ir.Constant(intp, m))
            offset = builder.load(builder.gep(shift_, [channel]))
            scale = _splat(
                builder, builder.load(builder.gep(factor_, [channel])), ir.VectorType(f32, 16)
            )
            row = builder.add(y_at_, builder.mul(ld_, ir.Constant(intp, m)))
            for half in range(2):
                total = builder.sub(sums[m * 2 + half], _splat(builder, offset, sums[0].type))
                value = builder.fmul(builder.sitofp(total, scale.type), scale)
                _store(builder, y_, builder.add(row, ir.Constant(intp, 16 * half)), value)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always", cache=True)
def quantize_weight_row(w, o, cg, taps, kp, wq, input_scale, factor, shift):
    """Output channel o's symmetric int8 weights: sw = max|w[o]| / 127 (1 for an all-zero
    row), wq = round(w / sw) (half to even), computed in float64, stored in the columns' tap
    order (tap, channel group of 4, lane) with zero lanes past C/g; and its rescale:
    factor = float32(input_scale * float32(sw)), shift = 128 * sum(wq)."""
    quads = kp // (4 * taps)
    row = w[o * cg * taps : (o + 1) * cg * taps]
    peak = 0.0
    for i in range(cg * taps):
        peak = max(peak, abs(np.float64(row[i])))
    scale = peak / 127.0 if peak > 0.0 else 1.0
    wq[o * kp : (o + 1) * kp] = 0
    total = 0
    for ci in range(cg):
        for t in range(taps):
            q = min(127.0, max(-127.0, np.rint(np.float64(row[ci * taps + t]) / scale)))
            wq[o * kp + (t * quads + ci // 4) * 4 + ci % 4] = np.int8(q)
            total += np.int32(q)
    factor[o] = np.float32(input_scale * np.float64(np.float32(scale)))
    shift[o] = 128 * total


@njit(inline="always", cache=True)
def quantize_input_plane(x, plane, geometry, inverse, padded):
    """x -> clamp(round(x * inverse), -127, 127) + 128 as u8, inverse = 1 / input_scale in
    float64 (``graph/ops/quantized.py``), for plane (image, group, quad) of the zero-bordered
    (128) buffer [N, groups, C/g/4, HP, WP, 4]: each uint32 of it holds 4 channels of one
    pixel, so ``pack_columns`` copies words. A quad of 4 channels is one interleaved,
    vectorised pass (3.8x faster than lane by lane: 2M values in 0.32 ms on two threads);
    a kernel one row tall (a strided 1x1 downsample) never reads the rows between its strides,
    so they are skipped. ``geometry`` = (N, C, H, W, groups, PT, PL, HP, WP, KH, SH)."""
    n, c, h, wd, groups, pt, pl, hp, wp, kh, sh = geometry
    cg, hw = c // groups, h * wd
    quads = (cg + 3) // 4
    image, g, quad = plane // (groups * quads), plane // quads % groups, plane % quads
    base = plane * hp * wp * 4
    padded[base : base + hp * wp * 4] = 128
    lanes = min(4, cg - quad * 4)
    src = (image * c + g * cg + quad * 4) * hw
    row_step = sh if kh == 1 else 1
    for iy in range(-pt % row_step, h, row_step):
        at, row = base + ((iy + pt) * wp + pl) * 4, src + iy * wd
        if lanes == 4:
            for ix in range(wd):
                for lane in range(4):
                    value = x[np.uint64(row + lane * hw + ix)]
                    padded[np.uint64(at + ix * 4 + lane)] = _quantized(value, inverse)
        else:
            for lane in range(lanes):
                for ix in range(wd):
                    value = x[np.uint64(row + lane * hw + ix)]
                    padded[np.uint64(at + ix * 4 + lane)] = _quantized(value, inverse)


@njit(inline="always", cache=True)
def _quantized(value, inverse):
    """One input value as the shifted u8 of ``quantize_input_plane``."""
    return np.uint8(min(127.0, max(-127.0, np.rint(np.float64(value) * inverse))) + 128.0)


@njit(cache=True)
def pack_columns(words, geometry, group, first, width, cols, at, block):
    """im2col of global pixels first..first+width (image-major) of one group, from the
    quantised words of ``quantize_input_plane`` into cols[at:] [KP/4, block] (uint32 views):
    one word (4 channels of one tap) per pixel and row, runs of OW words.
    ``geometry`` = (groups, quads, HP, WP, OH, OW, KH, KW, SH, SW, DH, DW)."""
    groups, quads, hp, wp, oh, ow, kh, kw, sh, sw, dh, dw = geometry
    ohw = oh * ow
    for r in range(kh * kw * quads):
        ki, kj, quad = r // (kw * quads), r // quads % kw, r % quads
        dst = at + r * block - first
        p = first
        while p < first + width:
            image, pixel = p // ohw, p % ohw
            oy, ox0 = pixel // ow, pixel % ow
            run = min(ow - ox0, first + width - p)
            plane = ((image * groups + group) * quads + quad) * hp * wp
            src = plane + (oy * sh + ki * dh) * wp + ox0 * sw + kj * dw
            for j in range(run):  # unsigned indices: no wraparound branch, vectorised
                cols[np.uint64(dst + p + j)] = words[np.uint64(src + j * sw)]
            p += run


@njit(parallel=True, cache=True)
def conv2d_int8(
    x, w, b, affine, res, consts, y, scale, ready, factor, shift, wq, padded, cols, acc, a
):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pb, pl, pr, dh, dw = a[:17]
    groups, kp, block, kind = a[17], a[18], a[19], a[20]
    cg, ocg, ohw = c // groups, oc // groups, oh * ow
    hp, wp, quads = h + pt + pb, wd + pl + pr, (cg + 3) // 4
    input_scale = np.float64(scale[0])
    planes, inverse = n * groups * quads, 1.0 / input_scale
    weights = 0 if ready[0] else oc  # the int8 weights are made on the plan's first run
    for task in prange(weights + planes):  # one parallel region for weights and input
        if task < weights:
            quantize_weight_row(w, task, cg, kh * kw, kp, wq, input_scale, factor, shift)
        else:
            geometry = (n, c, h, wd, groups, pt, pl, hp, wp, kh, sh)
            quantize_input_plane(x, task - weights, geometry, inverse, padded)
    if weights:
        wq[oc * kp :] = 0
        ready[0] = 1
    words, columns = padded.view(np.uint32), cols.view(np.uint32)
    geometry = (groups, quads, hp, wp, oh, ow, kh, kw, sh, sw, dh, dw)
    blocks = (n * ohw + block - 1) // block
    for task in prange(groups * blocks):
        g, first = task // blocks, task % blocks * block
        width, tid = min(block, n * ohw - first), get_thread_id()
        slot, tile = tid * kp * block, tid * TILE_CHANNELS * TILE_PIXELS
        pack_columns(words, geometry, g, first, width, columns, slot // 4, block)
        for o0 in range(g * ocg, (g + 1) * ocg, TILE_CHANNELS):
            channels = min(TILE_CHANNELS, (g + 1) * ocg - o0)
            for p0 in range(0, width, TILE_PIXELS):
                pixels = min(TILE_PIXELS, width - p0)
                image, pixel = (first + p0) // ohw, (first + p0) % ohw
                if channels == TILE_CHANNELS and pixels == TILE_PIXELS and ohw % TILE_PIXELS == 0:
                    at = (image * oc + o0) * ohw + pixel  # whole tile, rows within one image
                    dot_tile_scaled(
                        cols, slot + p0 * 4, block, wq, o0 * kp, kp, y, at, ohw, shift, factor, o0
                    )
                    continue
                dot_tile(cols, slot + p0 * 4, block, wq, o0 * kp, kp, acc, tile)
                for m in range(channels):
                    o, image, pixel, t = o0 + m, (first + p0) // ohw, (first + p0) % ohw, 0
                    while t < pixels:  # runs within one image
                        run, at = min(pixels - t, ohw - pixel), (image * oc + o) * ohw + pixel
                        src = tile + m * TILE_PIXELS + t
                        for j in range(run):
                            y[at + j] = np.float32(acc[src + j] - shift[o]) * factor[o]
                        image, pixel, t = image + 1, 0, t + run
        p = first
        while p < first + width:  # the epilogue, per run of one image's output channel
            image, pixel = p // ohw, p % ohw
            run = min(ohw - pixel, first + width - p)
            for o in range(g * ocg, (g + 1) * ocg):
                at = (image * oc + o) * ohw + pixel
                finish_channel(y[at : at + run], o, b, affine, res[at : at + run], kind, consts)
            p += run
    return 0


_BUFFERS = (
    ("x", "float32"),
    ("w", "float32"),
    ("b", "float32"),
    ("affine", "float32"),
    ("res", "float32"),
    ("consts", "float32"),
    ("y", "float32"),
    ("scale", "float32"),
    ("ready", "int32"),
    ("factor", "float32"),
    ("shift", "int32"),
    ("wq", "int8"),
    ("padded", "uint8"),
    ("cols", "uint8"),
    ("acc", "int32"),
)


def _shim_source() -> str:
    """The cfunc shim (DESIGN.md: serial cfunc over a parallel njit kernel) with one typed view
    per buffer; the int block is [length, numel of each buffer..., attrs...]."""
    views = ", ".join(
        f"carray(ptrs[{i}], (ints[{i + 1}],), np.{dtype})" for i, (_, dtype) in enumerate(_BUFFERS)
    )
    return (
        "def _conv2d_int8_step(ptrs, ints):\n"
        "    block = carray(ints, (ints[0],))\n"
        f"    return conv2d_int8({views}, block[{len(_BUFFERS) + 1}:])\n"
    )


exec(compile(_shim_source(), __file__, "exec"), globals())
_shim = None


def step_function() -> int:
    """Address of the compiled step (compiled or loaded from Numba's cache on first use)."""
    global _shim
    if _shim is None:
        numba_setup.ensure_thread_pool()
        _shim = cfunc(STEP_SIGNATURE, cache=True)(globals()["_conv2d_int8_step"])
    return _shim.address


# **** Lowering ****


def _geometry(node: Node) -> tuple[list[int], int, int]:
    """conv2d_int8's shape attrs (a linear as a pointwise conv: N images of 1x1 pixels), KP
    and the pixel block."""
    if node.op == "linear_int8":
        (n, c), oc = node.inputs[0].shape, node.inputs[1].shape[0]
        shape = [n, c, 1, 1, oc, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1]
    else:
        (n, c, h, wd), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
        _, _, oh, ow = node.outputs[0].shape
        (sh, sw), (dh, dw) = node.attrs["stride"], node.attrs["dilation"]
        shape = [n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, *node.attrs["padding"], dh, dw]
        shape.append(node.attrs["groups"])
    n, c, oh, ow, kh, kw, groups = *shape[:2], *shape[5:9], shape[17]
    kp = kh * kw * -(-(c // groups) // 4) * 4
    # the fewest blocks within BLOCK_BYTES, a multiple of the thread count (per group), of
    # equal whole tiles, so the threads finish together
    threads, tiles = numba.config.NUMBA_NUM_THREADS, -(-(n * oh * ow) // TILE_PIXELS)
    most = max(1, BLOCK_BYTES // (kp * TILE_PIXELS))  # tiles per block
    blocks = -(-tiles // most)
    blocks = -(-blocks // threads) * threads if groups == 1 else blocks
    return shape, kp, -(-tiles // blocks) * TILE_PIXELS


def _aligned(numels: list[int], itemsizes: list[int]) -> list[tuple[int, int]]:
    return [(-(-n * s // _ALIGN) * _ALIGN, n) for n, s in zip(numels, itemsizes, strict=True)]


def _weight_regions(node: Node) -> list[tuple[int, int]]:
    """(bytes, numel) of the persistent regions ready, factor, shift, wq."""
    shape, kp, _ = _geometry(node)
    oc = shape[4]
    return _aligned([1, oc, oc, (oc + TILE_CHANNELS - 1) * kp], [4, 4, 4, 1])


def _regions(node: Node) -> list[tuple[int, int]]:
    """(bytes, numel) of the scratch regions padded, cols, acc."""
    shape, kp, block = _geometry(node)
    n, c, h, wd, threads = *shape[:4], numba.config.NUMBA_NUM_THREADS
    pt, pb, pl, pr, groups = *shape[11:15], shape[17]
    padded = n * groups * -(-(c // groups) // 4) * (h + pt + pb) * (wd + pl + pr) * 4
    tiles = threads * TILE_CHANNELS * TILE_PIXELS
    return _aligned([padded, threads * kp * block, tiles], [1, 1, 4])


def _scratch(node: Node) -> int:
    return sum(nbytes for nbytes, _ in _regions(node))


@lowers("conv2d_int8", "linear_int8", scratch=_scratch)
def _lower_int8(node: Node, io: NodeIO) -> list[Step]:
    if io.dtype != "float32":
        raise TypeError(f"{node.name}: {node.op} runs on float32 plans, but got {io.dtype}")
    shape, kp, block = _geometry(node)
    epilogue, kind = epilogue_buffers(node, io)
    buffers = [
        io.input(0),
        io.input(1),
        *epilogue,
        io.output(),
        io.const([node.attrs["input_scale"]]),
    ]
    # The int8 weights persist with the plan (a const block, zero: not ready yet); columns
    # and accumulators live in the scratch.
    persistent = _weight_regions(node)
    store = io.const(np.zeros((sum(nbytes for nbytes, _ in persistent) + _ALIGN) // 4))[0]
    for regions, at in (
        (persistent, -(-store // _ALIGN) * _ALIGN),
        (_regions(node), io.scratch(0)[0]),
    ):
        for nbytes, numel in regions:
            buffers.append((at, numel))
            at += nbytes
    attrs = [*shape, kp, block, kind]
    ints = (1 + len(buffers) + len(attrs), *(n for _, n in buffers), *attrs)
    return [Step(step_function(), tuple(a for a, _ in buffers), ints, node.name)]
