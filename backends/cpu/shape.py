"""CPU kernels that move data: concat (one block copy per input), channel_shuffle and pad.

- ``copy_block``: the destination viewed as [outer, dst_inner]; the source [outer, src_inner]
  lands at column ``offset`` (concat along any axis: inner = that axis and all after it).
- ``channel_shuffle``: y[n, j*g + i] = x[n, i*(C/g) + j], planes of H*W copied whole.
- ``pad``: each output pixel reads the reflected input index, or the constant outside.

Buffers: copy_block(src, dst); channel_shuffle(x, y); pad(x, y, consts=[value]).
Attrs: copy_block [outer, src_inner, dst_inner, offset]; channel_shuffle [N, groups, C/g, HW];
pad [planes, H, W, OH, OW, top, left, reflect].
"""

from __future__ import annotations

import math

from numba import prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@kernel(buffers=2)
def copy_block(src, dst, a):
    outer, src_inner, dst_inner, offset = a[0], a[1], a[2], a[3]
    for o in prange(outer):
        start = o * dst_inner + offset
        dst[start : start + src_inner] = src[o * src_inner : (o + 1) * src_inner]
    return 0


@kernel(buffers=2)
def channel_shuffle(x, y, a):
    n, groups, per_group, hw = a[0], a[1], a[2], a[3]
    c = groups * per_group
    for p in prange(n * c):
        i, k = p // c, p % c
        src = (i * c + (k % groups) * per_group + k // groups) * hw
        y[p * hw : (p + 1) * hw] = x[src : src + hw]
    return 0


@kernel(buffers=3)
def pad(x, y, consts, a):
    planes, h, w, oh, ow, top, left, reflect = a[:8]
    fill = consts[0]
    for p in prange(planes):
        for oy in range(oh):
            iy = oy - top
            if reflect:
                iy = -iy if iy < 0 else (2 * (h - 1) - iy if iy >= h else iy)
            for ox in range(ow):
                ix = ox - left
                if reflect:
                    ix = -ix if ix < 0 else (2 * (w - 1) - ix if ix >= w else ix)
                inside = 0 <= iy < h and 0 <= ix < w
                y[(p * oh + oy) * ow + ox] = x[(p * h + iy) * w + ix] if inside else fill
    return 0


@lowers("concat")
def _lower_concat(node: Node, io: NodeIO):
    out_shape, dim = node.outputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(out_shape[:dim]), math.prod(out_shape[dim + 1 :])
    steps, offset = [], 0
    for i, value in enumerate(node.inputs):
        src_inner = value.shape[dim] * after
        ints = [outer, src_inner, out_shape[dim] * after, offset]
        steps.append(
            copy_block.step(
                f"{node.name}[{i}]",
                io.dtype,
                io.parallel(value.type.numel),
                [io.input(i), io.output()],
                ints,
            )
        )
        offset += src_inner
    return steps


@lowers("channel_shuffle")
def _lower_channel_shuffle(node: Node, io: NodeIO):
    n, c, h, w = node.inputs[0].shape
    groups = node.attrs["groups"]
    return [
        channel_shuffle.step(
            node.name,
            io.dtype,
            io.parallel(io.output()[1]),
            [io.input(0), io.output()],
            [n, groups, c // groups, h * w],
        )
    ]


@lowers("pad")
def _lower_pad(node: Node, io: NodeIO):
    n, c, h, w = node.inputs[0].shape
    _, _, oh, ow = node.outputs[0].shape
    left, _, top, _ = node.attrs["pads"]
    ints = [n * c, h, w, oh, ow, top, left, int(node.attrs["mode"] == "reflect")]
    return [
        pad.step(
            node.name,
            io.dtype,
            io.parallel(io.output()[1]),
            [io.input(0), io.output(), io.const([node.attrs["value"]])],
            ints,
        )
    ]
