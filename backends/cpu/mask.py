"""CPU ``apply_mask`` (``graph/ops/mask.py``): zero ``x`` where ``mask`` is zero, in chunks.

Buffers: x (written in place), mask (0 or 1, x's dtype). Attrs: [].
"""

from __future__ import annotations

from numba import prange

from backends.cpu.elementwise import CHUNK
from backends.cpu.kernels import kernel
from backends.cpu.lowering import NodeIO, lowers
from graph.ir import Node


@kernel(buffers=2)
def apply_mask(x, mask, a):
    for c in prange((x.shape[0] + CHUNK - 1) // CHUNK):
        xs, ms = x[c * CHUNK : (c + 1) * CHUNK], mask[c * CHUNK : (c + 1) * CHUNK]
        for i in range(xs.shape[0]):
            if ms[i] == 0:
                xs[i] = 0
    return 0


@lowers("apply_mask")
def _lower_apply_mask(node: Node, io: NodeIO):
    x, mask = io.input(0), io.input(1)
    return [apply_mask.step(node.name, io.dtype, io.parallel(x[1]), [x, mask], [])]
