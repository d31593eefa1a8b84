"""Convs from few input channels (a network's first conv: ResNet's 3 -> 64 7x7 stride 2,
MobileNet v2's 3 -> 32 3x3 stride 2) as the pointwise register tile run over taps.

Why: on the GEMM path such a conv is an im2col of C x KH x KW rows (147 for ResNet's stem:
the image copied 49 times over), a GEMM of K = 147 that writes each output block, and the
epilogue reading it back. The products are short and the output is all there is: ResNet-50's
stem writes 3.2 MB an image for 0.15 MB of input.

Here each (input channel, kernel row, kernel column) tap is one "input channel" of
``conv_pointwise``'s register tile (``conv_pointwise.tapped_tiles``): the image is split once
into its stride's phase planes (``phases.py``; stride 1: the zero-bordered plane), where tap
(ki, kj)'s inputs for a run of output pixels of one row are one contiguous run, at
``phases.tap``'s offset in the tap's channel. A tile (R output channels x V vectors of one
output row) then adds, per tap, V loads times R broadcast weights (OIHW is already [OC, taps]),
finishes the vectors in registers and stores each output once. Taps add in OIHW order with
FMA, so results differ from the GEMM's by float rounding only.

Images are taken ``threads`` at a time: one parallel pass splits their planes into the
scratch, a second runs their output rows (each task: one row of one image, all or a part of
the output channels), so the scratch holds ``threads`` images' phase planes whatever the batch.

Buffers: the conv kernels' (x, w, bias, affine, residual, consts, y, scratch). Attrs: [N, C,
H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, HQ, WQ, images a pass, part, tile, kind].
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from backends.cpu import conv_pointwise, phases, simd
from backends.cpu.kernels import kernel
from graph.ir import Node

# Most input channels: the regime measured (grey, RGB and RGBA images). Deeper convs have
# taps enough for the GEMM and Winograd paths' packed products; the tile was not measured there.
MAX_CHANNELS = 4
# Fewest output channels: below a tile's rows, most of its accumulators are idle.
MIN_OUT_CHANNELS = 8
# Output rows must be wider than this many vectors: narrower rows leave too many of a tile's
# vectors idle, and a 3x3's few taps do not repay the phase split (float32, two threads, us,
# against the GEMM path: 3 -> 64 3x3 on 64x64 118 vs 142, on 48x48 at batch 8 723 vs 557, on
# CIFAR's 32x32 at batch 64 3591 vs 2439; 1 -> 32 3x3 on 28x28 even).
MIN_ROW_VECTORS = 3
# Fewest tasks (output rows x channel parts) a pass, per thread: the channels are cut in parts
# when an image chunk has fewer output rows.
TASKS_PER_THREAD = 4

_tile_8x3, _tile_6x4 = conv_pointwise.tapped_tiles()


def is_tapped(node: Node, kind: int) -> bool:
    """Ungrouped, not 1x1, from at most MAX_CHANNELS input channels to MIN_OUT_CHANNELS or
    more, output rows of more than MIN_ROW_VECTORS vectors, with an epilogue the tile applies
    (measured, float32, two threads, us, against the GEMM path: ResNet's 3 -> 64 7x7 stride 2
    on 224x224 1226 vs 1450, at batch 32 44.4 vs 54.4 ms; MobileNet v2's 3 -> 32 3x3 stride 2
    229 vs 287, at batch 4 with 24 channels 637 vs 905; AlexNet's 3 -> 96 11x11 stride 4 1183
    vs 1301; VGG's 3 -> 64 3x3 on 224x224 1031 vs 1101)."""
    return kind in conv_pointwise.KINDS and is_tapped_shape(node)


def is_tapped_shape(node: Node) -> bool:
    """``is_tapped`` but for the epilogue (the memory plan sizes scratch before it is known)."""
    (_, c, _, _), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    ow, lanes = node.outputs[0].shape[3], conv_pointwise.lanes_of(node.outputs[0].type.dtype)
    few = node.attrs["groups"] == 1 and c <= MAX_CHANNELS
    return few and kh * kw > 1 and oc >= MIN_OUT_CHANNELS and ow > MIN_ROW_VECTORS * lanes


def _geometry(node: Node) -> tuple[int, int, int]:
    """(HQ, WQ, elements of one input channel's phase planes)."""
    hq, wq, _ = phases.conv_geometry(node)
    sh, sw = node.attrs["stride"]
    return hq, wq, sh * sw * hq * wq


def _images_a_pass(node: Node) -> int:
    return min(node.inputs[0].shape[0], numba.config.NUMBA_NUM_THREADS)


def scratch_numel(node: Node) -> int:
    """The phase planes of one pass's images."""
    return _images_a_pass(node) * node.inputs[0].shape[1] * _geometry(node)[2]


def attrs(node: Node) -> list[int]:
    (n, c, h, wd), (oc, _, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    dh, dw = node.attrs["dilation"]
    hq, wq, _ = _geometry(node)
    lanes = conv_pointwise.lanes_of(node.outputs[0].type.dtype)
    tile = conv_pointwise.tile_for(-(-ow // lanes))
    rows = conv_pointwise.TILES[tile][0]
    images, threads = _images_a_pass(node), numba.config.NUMBA_NUM_THREADS
    channel_tiles = -(-oc // rows)
    parts = min(channel_tiles, -(-TASKS_PER_THREAD * threads // (images * oh)))
    part = -(-channel_tiles // parts) * rows
    return [n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq, images, part, tile]


@kernel(buffers=8)
def conv2d_tapped(x, w, b, affine, res, consts, y, scratch, a):
    n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, hq, wq = a[:17]
    images, part, tile, kind = a[17], a[18], a[19], a[20]
    hw, ohw, taps, plane = h * wd, oh * ow, kh * kw, sh * sw * hq * wq
    rows, vectors = conv_pointwise.TILES[tile]
    width = vectors * simd.lanes(x)
    shifts = phases.taps(kh, kw, dh, dw, sh, sw, hq, wq)
    offsets = np.empty(c * taps, np.int64)  # tap k = (ci, ki, kj)'s window in an image's planes
    for k in range(c * taps):
        offsets[k] = k // taps * plane + shifts[k % taps]
    parts = (oc + part - 1) // part
    for first_image in range(0, n, images):
        count = min(images, n - first_image)
        for q in prange(count * c):
            src = (first_image * c + q) * hw
            phases.split(x[src : src + hw], h, wd, scratch, q * plane, pt, pl, sh, sw, hq, wq, 0)
        for task in prange(count * oh * parts):
            i, oy, p = task // (oh * parts), task // parts % oh, task % parts
            image, first = first_image + i, p * part
            x_at = i * c * plane + oy * wq
            for start in range(0, ow, width):
                for o in range(first, min(oc, first + part), rows):
                    y_at, run = (image * oc + o) * ohw + oy * ow + start, min(width, ow - start)
                    geometry = (y_at, x_at + start, c * taps, ohw, o, oc, run, kind)
                    if tile == 0:
                        _tile_8x3(y, scratch, w, b, affine, res, consts, geometry, offsets)
                    else:
                        _tile_6x4(y, scratch, w, b, affine, res, consts, geometry, offsets)
    return 0
