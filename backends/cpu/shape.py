"""CPU kernels that move data: concat and slice (one block copy per input), channel_shuffle,
pad and pad's gradient.

- ``copy_block``: ``outer`` runs of ``length`` elements, run o read at
  ``o * src_stride + src_offset`` and written at ``o * dst_stride + dst_offset``. Concat along
  any axis writes each input as a column range of the output viewed as [outer, inner] (inner =
  that axis and all after it); slice (concat's gradient) reads such a column range back.
- ``channel_shuffle``: y[n, j*g + i] = x[n, i*(C/g) + j], planes of H*W copied whole.
- ``pad``: each output pixel reads the reflected input index, or the constant outside.
- ``pad_grad``: the crop of the output gradient; reflect mode also adds each mirrored position
  onto the input position it copied, visiting the output positions in row-major order as
  torch's ``reflection_pad2d_backward`` does, so the sums round the same way.

Buffers: copy_block(src, dst); channel_shuffle(x, y); pad(x, y, consts=[value]); pad_grad(gy,
gx).
Attrs: copy_block [outer, length, src_stride, src_offset, dst_stride, dst_offset];
channel_shuffle [N, groups, C/g, HW]; pad and pad_grad [planes, H, W, OH, OW, top, left,
reflect].
"""

from __future__ import annotations

import math

from numba import njit, prange

from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@njit(inline="always", cache=True)
def _reflect(i, size):
    """The input index that reflect padding copies to position i (at most size - 1 outside)."""
    return -i if i < 0 else (2 * (size - 1) - i if i >= size else i)


@kernel(buffers=2)
def copy_block(src, dst, a):
    outer, length, src_stride, src_offset, dst_stride, dst_offset = a[:6]
    for o in prange(outer):
        start, end = o * src_stride + src_offset, o * dst_stride + dst_offset
        dst[end : end + length] = src[start : start + length]
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
            iy = _reflect(oy - top, h) if reflect else oy - top
            for ox in range(ow):
                ix = _reflect(ox - left, w) if reflect else ox - left
                inside = 0 <= iy < h and 0 <= ix < w
                y[(p * oh + oy) * ow + ox] = x[(p * h + iy) * w + ix] if inside else fill
    return 0


@kernel(buffers=2)
def pad_grad(gy, gx, a):
    planes, h, w, oh, ow, top, left, reflect = a[:8]
    first, last = (0, oh) if reflect else (top, top + h)
    for p in prange(planes):
        plane = gx[p * h * w : (p + 1) * h * w]
        plane[:] = 0
        for oy in range(first, last):
            iy = _reflect(oy - top, h)
            src, dst = gy[(p * oh + oy) * ow : (p * oh + oy + 1) * ow], plane[iy * w : (iy + 1) * w]
            if reflect:
                for ox in range(left):
                    dst[left - ox] += src[ox]
            inner = src[left : left + w]
            for ix in range(w):
                dst[ix] += inner[ix]
            if reflect:
                for ox in range(left + w, ow):
                    dst[2 * (w - 1) + left - ox] += src[ox]
    return 0


def _copy_step(io: NodeIO, name: str, src: int, ints: list[int]):
    """One copy_block step from input ``src`` to the output; ints as copy_block's attrs."""
    work = ints[0] * ints[1]
    return copy_block.step(name, io.dtype, io.parallel(work), [io.input(src), io.output()], ints)


@lowers("concat")
def _lower_concat(node: Node, io: NodeIO):
    out_shape, dim = node.outputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(out_shape[:dim]), math.prod(out_shape[dim + 1 :])
    steps, offset = [], 0
    for i, value in enumerate(node.inputs):
        length = value.shape[dim] * after
        ints = [outer, length, length, 0, out_shape[dim] * after, offset]
        steps.append(_copy_step(io, f"{node.name}[{i}]", i, ints))
        offset += length
    return steps


@lowers("slice")
def _lower_slice(node: Node, io: NodeIO):
    shape, dim = node.inputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    length = node.attrs["length"] * after
    ints = [outer, length, shape[dim] * after, node.attrs["start"] * after, length, 0]
    return [_copy_step(io, node.name, 0, ints)]


@kernel(buffers=2)
def fill(dst, consts, a):
    """dst[:] = consts[0] (the zeros a slice's gradient is placed into)."""
    for c in prange((dst.shape[0] + 4095) // 4096):
        dst[c * 4096 : (c + 1) * 4096] = consts[0]
    return 0


@lowers("slice_grad")
def _lower_slice_grad(node: Node, io: NodeIO):
    """Zeros, then the gradient copied into [start, start + length) along dim."""
    shape, dim = node.outputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    length = node.inputs[0].shape[dim] * after
    zero = fill.step(
        f"{node.name}.fill",
        io.dtype,
        io.parallel(io.output()[1]),
        [io.output(), io.const([0.0])],
        [],
    )
    ints = [outer, length, length, 0, shape[dim] * after, node.attrs["start"] * after]
    return [zero, _copy_step(io, node.name, 0, ints)]


@kernel(buffers=2)
def transpose(x, y, a):
    """x viewed as [outer, A, mid, B, inner] -> y [outer, B, mid, A, inner]."""
    outer, size_a, mid, size_b, inner = a[0], a[1], a[2], a[3], a[4]
    for task in prange(outer * size_b):
        o, q = task // size_b, task % size_b
        for p in range(size_a):
            for m in range(mid):
                src = (((o * size_a + p) * mid + m) * size_b + q) * inner
                dst = (((o * size_b + q) * mid + m) * size_a + p) * inner
                y[dst : dst + inner] = x[src : src + inner]
    return 0


@lowers("transpose")
def _lower_transpose(node: Node, io: NodeIO):
    shape, a, b = node.inputs[0].shape, node.attrs["dim0"], node.attrs["dim1"]
    ints = [
        math.prod(shape[:a]),
        shape[a],
        math.prod(shape[a + 1 : b]),
        shape[b],
        math.prod(shape[b + 1 :]),
    ]
    return [
        transpose.step(
            node.name, io.dtype, io.parallel(io.output()[1]), [io.input(0), io.output()], ints
        )
    ]


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


def _pad_attrs(node: Node, small: tuple[int, ...], big: tuple[int, ...]) -> list[int]:
    """The int block of pad and pad_grad: ``small`` is the unpadded shape, ``big`` the padded."""
    n, c, h, w = small
    left, _, top, _ = node.attrs["pads"]
    return [n * c, h, w, big[2], big[3], top, left, int(node.attrs["mode"] == "reflect")]


@lowers("pad")
def _lower_pad(node: Node, io: NodeIO):
    ints = _pad_attrs(node, node.inputs[0].shape, node.outputs[0].shape)
    return [
        pad.step(
            node.name,
            io.dtype,
            io.parallel(io.output()[1]),
            [io.input(0), io.output(), io.const([node.attrs["value"]])],
            ints,
        )
    ]


@lowers("pad_grad")
def _lower_pad_grad(node: Node, io: NodeIO):
    ints = _pad_attrs(node, node.outputs[0].shape, node.inputs[0].shape)
    return [
        pad_grad.step(
            node.name, io.dtype, io.parallel(io.input(0)[1]), [io.input(0), io.output()], ints
        )
    ]
