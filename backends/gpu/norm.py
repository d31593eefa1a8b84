"""GPU lowerings of normalisation (``kernels/norm.cu``; the CPU's are ``backends/cpu/norm.py``):
batch_norm in inference, layer_norm2d, softmax and local_response_norm.

layer_norm2d and softmax along an inner axis reduce over lines strided in memory; their blocks
are (32, ``_LINE_ROWS``): 32 consecutive lines, each read coalesced across the warp, with the
rows sharing out the reduced axis. softmax along the last axis gives each row a block.
"""

from __future__ import annotations

import math

from backends.gpu.elementwise import plane_grid
from backends.gpu.lowering import BLOCK, MAX_BLOCKS, GpuNodeIO, Launch, lowers
from graph.ir import Node

# Rows of a (32, rows) line block: 256 threads, as the other launches.
_LINE_ROWS = 8
# Most threads of softmax_rows' per-row block reduction.
_ROW_THREADS = 256


def _affine(node: Node, io: GpuNodeIO, first: int) -> list:
    """weight and bias from input ``first`` on, or two null pointers without affine."""
    if len(node.inputs) > first:
        return [io.input(first), io.input(first + 1)]
    return [io.null(), io.null()]


def _line_grid(lines: int) -> int:
    return max(1, min(-(-lines // 32), MAX_BLOCKS))


@lowers("batch_norm")
def _lower_batch_norm(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape = node.inputs[0].shape
    n, c, inner = shape[0], shape[1], math.prod(shape[2:])
    args = (io.input(0), io.input(1), io.input(2), *_affine(node, io, 3), io.output())
    grid = plane_grid(n * c, inner)
    return [io.launch("norm", "batch_norm", grid, BLOCK, *args, n, c, inner, node.attrs["eps"])]


@lowers("layer_norm2d")
def _lower_layer_norm2d(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, c, h, w = node.inputs[0].shape
    args = (io.input(0), *_affine(node, io, 1), io.output(), n, c, h, w, node.attrs["eps"])
    grid = _line_grid(n * h * w)
    return [io.launch("norm", "layer_norm2d", grid, (32, _LINE_ROWS), *args)]


@lowers("softmax")
def _lower_softmax(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape, dim = node.inputs[0].shape, node.attrs["dim"]
    outer, d, inner = math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])
    x, y = io.input(0), io.output()
    if inner == 1:
        threads = min(_ROW_THREADS, 32 * -(-d // 32))
        grid = min(outer, MAX_BLOCKS)
        return [io.launch("norm", "softmax_rows", grid, threads, x, y, outer, d)]
    grid = _line_grid(outer * inner)
    return [io.launch("norm", "softmax_columns", grid, (32, _LINE_ROWS), x, y, outer, d, inner)]


@lowers("local_response_norm")
def _lower_local_response_norm(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape, a = node.inputs[0].shape, node.attrs
    n, c, inner = shape[0], shape[1], math.prod(shape[2:])
    args = (n, c, inner, a["size"], a["before"], a["alpha"], a["beta"], a["k"])
    return [
        io.elementwise(
            "norm", "local_response_norm", n * c * inner, io.input(0), io.output(), *args
        )
    ]
