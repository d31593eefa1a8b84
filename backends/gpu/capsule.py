"""GPU lowerings of the capsule ops (``kernels/capsule.cu``; the CPU's are
``backends/cpu/capsule.py``, with the same int arguments): squash, capsule_predict,
capsule_routing and capsule_length.

Routing runs one (32, ``_ROUTING_ROWS``) block per sample: its iterations depend on each other,
and within one the block shares out the sum over input capsules (kernels/capsule.cu). The
routing logits live in the node's scratch.
"""

from __future__ import annotations

import math

from backends.gpu.lowering import MAX_BLOCKS, GpuNodeIO, Launch, lowers
from graph.ir import Node

# Rows of routing's (32, rows) block: 256 threads.
_ROUTING_ROWS = 8


def _lines(node: Node, shape: tuple[int, ...]) -> list[int]:
    """[outer, D, inner] around the squashed axis."""
    dim = node.attrs.get("dim", len(shape) - 1)
    return [math.prod(shape[:dim]), shape[dim], math.prod(shape[dim + 1 :])]


@lowers("squash")
def _lower_squash(node: Node, io: GpuNodeIO) -> list[Launch]:
    outer, d, inner = _lines(node, node.inputs[0].shape)
    args = (io.input(0), io.output(), outer, d, inner, node.attrs.get("eps", 1e-8))
    return [io.elementwise("capsule", "squash", outer * inner, *args)]


@lowers("capsule_predict")
def _lower_capsule_predict(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, caps_in, caps_out, d_out = node.outputs[0].shape
    d_in = node.inputs[0].shape[2]
    args = (io.input(0), io.input(1), io.output(), n, caps_in, caps_out, d_out, d_in)
    return [io.elementwise("capsule", "capsule_predict", node.outputs[0].type.numel, *args)]


def _routing_scratch(node: Node) -> int:
    """The routing logits b [N, I, J]."""
    n, caps_in, caps_out, _ = node.inputs[0].shape
    return n * caps_in * caps_out * node.inputs[0].type.itemsize


@lowers("capsule_routing", scratch=_routing_scratch)
def _lower_capsule_routing(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, caps_in, caps_out, d = node.inputs[0].shape
    buffers = (io.input(0), io.output(0), io.output(1), io.output(2), io.scratch())
    sizes = (n, caps_in, caps_out, d, node.attrs.get("iterations", 3))
    args = (*buffers, *sizes, node.attrs.get("eps", 1e-8))
    grid, block = min(n, MAX_BLOCKS), (32, _ROUTING_ROWS)
    return [io.launch("capsule", "capsule_routing", grid, block, *args)]


@lowers("capsule_length")
def _lower_capsule_length(node: Node, io: GpuNodeIO) -> list[Launch]:
    n, caps, d = node.inputs[0].shape
    args = (io.input(0), io.output(), n * caps, d, node.attrs.get("eps", 1e-8))
    return [io.elementwise("capsule", "capsule_length", n * caps, *args)]
