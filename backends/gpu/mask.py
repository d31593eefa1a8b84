"""GPU lowering of ``apply_mask`` (``kernels/mask.cu``; the CPU's is ``backends/cpu/mask.py``):
one grid-stride launch over the masked tensor."""

from __future__ import annotations

from backends.gpu.lowering import GpuNodeIO, Launch, lowers
from graph.ir import Node


@lowers("apply_mask")
def _lower_apply_mask(node: Node, io: GpuNodeIO) -> list[Launch]:
    n = node.inputs[0].type.numel
    return [io.elementwise("mask", "apply_mask", n, io.input(0), io.input(1), n)]
