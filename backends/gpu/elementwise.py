"""GPU lowerings of the elementwise ops (``kernels/elementwise.cu``; the CPU's are
``backends/cpu/elementwise.py``): activations, neg, scale, add/sub/mul, channel_scale, the copy
that inference dropout, flatten and reshape lower to, and channel_sum.

Where the CPU's ``unary``/``binary`` take a kind code, each kind here is its own generated kernel
(``unary_relu``, ``binary_add``, ...), so the GPU runs no branch per element. A copy written in
place (flatten, reshape or dropout whose output took over its input's buffer) lowers to no
launch at all, as on the CPU.
"""

from __future__ import annotations

import math

from backends.gpu.lowering import BLOCK, MAX_BLOCKS, GpuNodeIO, Launch, lowers
from graph.ir import Node

# Ops with a kernel of their own name (``unary_<op>``); the other unary ops are copies.
_ACTIVATIONS = frozenset({"relu", "leaky_relu", "sigmoid", "tanh", "hardtanh", "neg", "scale"})
# Threads of channel_sum's per-channel block reduction.
_SUM_THREADS = 256


def _unary_kind(node: Node) -> str:
    if node.op == "gelu":
        return "gelu" if node.attrs["approximate"] == "none" else "gelu_tanh"
    return node.op if node.op in _ACTIVATIONS else "copy"


def _unary_attrs(node: Node) -> tuple[float, float]:
    """(a, b) of the unary kernels: leaky_relu's slope, scale's factor, hardtanh's bounds."""
    attrs = node.attrs
    if node.op == "hardtanh":
        return float(attrs["min_val"]), float(attrs["max_val"])
    if node.op == "leaky_relu":
        return float(attrs["negative_slope"]), 0.0
    if node.op == "scale":
        return float(attrs["factor"]), 0.0
    return 0.0, 0.0


@lowers(
    "relu",
    "leaky_relu",
    "sigmoid",
    "tanh",
    "gelu",
    "hardtanh",
    "neg",
    "scale",
    "dropout",
    "flatten",
    "reshape",
)
def _lower_unary(node: Node, io: GpuNodeIO) -> list[Launch]:
    x, y, kind = io.input(0), io.output(), _unary_kind(node)
    if kind == "copy" and x == y:
        return []  # flatten, reshape or inference dropout written in place: nothing to move
    n = node.outputs[0].type.numel
    return [io.elementwise("elementwise", f"unary_{kind}", n, x, y, n, *_unary_attrs(node))]


@lowers("add", "sub", "mul")
def _lower_binary(node: Node, io: GpuNodeIO) -> list[Launch]:
    n = node.outputs[0].type.numel
    args = (io.input(0), io.input(1), io.output(), n)
    return [io.elementwise("elementwise", f"binary_{node.op}", n, *args)]


def plane_grid(planes: int, inner: int) -> tuple[int, int]:
    """The 2-D grid of a per-plane kernel (``CF_FOR_EACH_ROW`` in ``kernels/reduce.cuh``):
    blocks over one plane's ``inner`` elements, by blocks over the ``planes``, about
    ``MAX_BLOCKS`` in all (the kernels stride over what the grid does not cover). Shared with
    the per-plane kernels of ``norm`` and ``shape``."""
    rows = min(planes, MAX_BLOCKS)
    return max(1, min(-(-inner // BLOCK), MAX_BLOCKS // rows)), rows


@lowers("channel_scale")
def _lower_channel_scale(node: Node, io: GpuNodeIO) -> list[Launch]:
    shape = node.inputs[0].shape
    n, c, inner = shape[0], shape[1], math.prod(shape[2:])
    args = (io.input(0), io.input(1), io.output(), n, c, inner)
    return [io.launch("elementwise", "channel_scale", plane_grid(n * c, inner), BLOCK, *args)]


@lowers("channel_sum")
def _lower_channel_sum(node: Node, io: GpuNodeIO) -> list[Launch]:
    """One block per channel: a deterministic reduction (no atomics), in double."""
    shape = node.inputs[0].shape
    n, c, inner = shape[0], shape[1], math.prod(shape[2:])
    threads = min(_SUM_THREADS, 32 * -(-(n * inner) // 32))
    args = (io.input(0), io.output(), n, c, inner)
    return [io.launch("elementwise", "channel_sum", min(c, MAX_BLOCKS), threads, *args)]
