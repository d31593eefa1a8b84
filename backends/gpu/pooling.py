"""GPU lowerings of pooling (``kernels/pooling.cu``; the CPU's are ``backends/cpu/pooling.py``).

max_pool2d and avg_pool2d run ``window_pool``, one thread per output, with the CPU's int
arguments (ceil_mode needs nothing more: the shape rule sized the output, and the kernel clips
the last window as PyTorch does). Adaptive pooling runs ``adaptive_pool``, one thread per
output, except to 1x1 (global_avg_pool2d, adaptive pooling to (1, 1)): there one window is the
whole plane, and ``global_pool`` gives each plane a block and a tree reduction.
"""

from __future__ import annotations

from backends.gpu.lowering import MAX_BLOCKS, GpuNodeIO, Launch, lowers
from graph.ir import Node

# Most threads of global_pool's per-plane block reduction.
_PLANE_THREADS = 256


def _planes(node: Node) -> list[int]:
    n, c, h, w = node.inputs[0].shape
    _, _, oh, ow = node.outputs[0].shape
    return [n * c, h, w, oh, ow]


@lowers("max_pool2d", "avg_pool2d")
def _lower_window_pool(node: Node, io: GpuNodeIO) -> list[Launch]:
    attrs = node.attrs
    dilation = attrs.get("dilation", (1, 1))
    flags = [int(node.op == "max_pool2d"), int(attrs.get("count_include_pad", False))]
    ints = _planes(node) + [*attrs["kernel"], *attrs["stride"], *attrs["padding"], *dilation]
    args = (io.input(0), io.output(), *ints, *flags)
    return [io.elementwise("pooling", "window_pool", node.outputs[0].type.numel, *args)]


@lowers("adaptive_max_pool2d", "adaptive_avg_pool2d", "global_avg_pool2d")
def _lower_adaptive_pool(node: Node, io: GpuNodeIO) -> list[Launch]:
    planes, h, w, oh, ow = _planes(node)
    is_max = int(node.op == "adaptive_max_pool2d")
    if (oh, ow) == (1, 1):
        threads = min(_PLANE_THREADS, 32 * -(-(h * w) // 32))
        args = (io.input(0), io.output(), planes, h * w, is_max)
        return [io.launch("pooling", "global_pool", min(planes, MAX_BLOCKS), threads, *args)]
    args = (io.input(0), io.output(), planes, h, w, oh, ow, is_max)
    return [io.elementwise("pooling", "adaptive_pool", node.outputs[0].type.numel, *args)]
