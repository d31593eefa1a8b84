"""GPU lowerings of the ops that move data (``kernels/shape.cu``; the CPU's are
``backends/cpu/shape.py``, with the same int arguments): concat and slice as block copies,
transpose, channel_shuffle and pad. flatten and reshape are the elementwise copy
(``backends/gpu/elementwise.py``), or nothing when written in place.
"""

from __future__ import annotations

import math

from backends.gpu.elementwise import plane_grid
from backends.gpu.lowering import BLOCK, GpuNodeIO, Launch, lowers
from graph.ir import Node


def _copy_launch(io: GpuNodeIO, src: int, ints: list[int]) -> Launch:
    """One copy_block launch from input ``src`` to the output; ints as copy_block's."""
    grid = plane_grid(ints[0], ints[1])
    return io.launch("shape", "copy_block", grid, BLOCK, io.input(src), io.output(), *ints)


@lowers("concat")
def _lower_concat(node: Node, io: GpuNodeIO) -> list[Launch]:
    out_shape, dim = node.outputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(out_shape[:dim]), math.prod(out_shape[dim + 1 :])
    launches, offset = [], 0
    for i, value in enumerate(node.inputs):
        length = value.shape[dim] * after
        launches.append(
            _copy_launch(io, i, [outer, length, length, 0, out_shape[dim] * after, offset])
        )
        offset += length
    return launches


@lowers("slice")
def _lower_slice(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape, dim = node.inputs[0].shape, node.attrs["dim"]
    outer, after = math.prod(shape[:dim]), math.prod(shape[dim + 1 :])
    length, start = node.attrs["length"] * after, node.attrs["start"] * after
    return [_copy_launch(io, 0, [outer, length, shape[dim] * after, start, length, 0])]


@lowers("transpose")
def _lower_transpose(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape, a, b = node.inputs[0].shape, node.attrs["dim0"], node.attrs["dim1"]
    sizes = [
        math.prod(shape[:a]),
        shape[a],
        math.prod(shape[a + 1 : b]),
        shape[b],
        math.prod(shape[b + 1 :]),
    ]
    args = (io.input(0), io.output(), *sizes)
    return [io.elementwise("shape", "transpose", node.outputs[0].type.numel, *args)]


@lowers("channel_shuffle")
def _lower_channel_shuffle(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, c, h, w = node.inputs[0].shape
    groups = node.attrs["groups"]
    args = (io.input(0), io.output(), n, groups, c // groups, h * w)
    return [io.launch("shape", "channel_shuffle", plane_grid(n * c, h * w), BLOCK, *args)]


@lowers("pad")
def _lower_pad(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, c, h, w = node.inputs[0].shape
    _, _, oh, ow = node.outputs[0].shape
    left, _, top, _ = node.attrs["pads"]
    reflect = int(node.attrs["mode"] == "reflect")
    args = (io.input(0), io.output(), n * c, h, w, oh, ow, top, left, reflect)
    value = float(node.attrs["value"])
    return [io.elementwise("shape", "pad", node.outputs[0].type.numel, *args, value)]
