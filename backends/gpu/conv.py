"""GPU conv2d forward (``kernels/conv.cu``), mirroring ``backends/cpu/conv.py``.

Every conv kernel takes the CPU ``conv2d_gemm``'s buffers and int block: (x, w, bias, y), then
[N, C, H, W, OC, OH, OW, KH, KW, SH, SW, PT, PL, DH, DW, groups]; bias is null without one.
The lowering picks one kernel per shape:

- ``conv2d_depthwise`` (``_3x3`` for 3x3 windows): one input channel per group (depthwise,
  with or without a channel multiplier, and single-channel inputs). Their GEMM would be only
  KH*KW deep, so one thread per output, grid-stride, beats a tile.
- ``conv2d_pointwise_<TM>x<TN>``: 1x1, stride 1, unpadded: the implicit GEMM whose columns
  are the input pixels themselves.
- ``conv2d_gemm_<TM>x<TN>``: everything else, the implicit GEMM with im2col gathered into
  shared memory.

The GEMMs' tile is TM output channels x TN output pixels (all images side by side): 64 x 64,
or 16 x 256 when a group has at most 16 output channels, where a 64-row tile would be mostly
padding. Grid: (pixel tiles, channel tiles, groups), 256 threads (``kernels/conv.cu`` explains
the sizes). No scratch: im2col is never stored.
"""

from __future__ import annotations

from backends.gpu.lowering import GpuNodeIO, Launch, lowers
from graph.ir import Node

# Threads per block of the GEMM kernels; each computes a 4x4 micro tile, so a block's tile
# holds TILE_OUTPUTS outputs (THREADS in kernels/conv.cu).
GEMM_THREADS = 256
TILE_OUTPUTS = GEMM_THREADS * 16
# Groups of at most this many output channels use the 16-row tile (TM in kernels/conv.cu).
NARROW_CHANNELS = 16
# CUDA's limit on gridDim.y and gridDim.z.
MAX_GRID_YZ = 65535


def gemm_tile(rows: int) -> tuple[int, int]:
    """(TM, TN) of a GEMM tile for ``rows`` output rows: 64 x 64, or 16 x 256 when a 64-row
    tile would be mostly past the last row. Shared with ``backends/gpu/linear.py``."""
    tm = 16 if rows <= NARROW_CHANNELS else 64
    return tm, TILE_OUTPUTS // tm


def is_pointwise(node: Node) -> bool:
    kh, kw = node.inputs[1].shape[2:]
    return (kh, kw) == (1, 1) and node.attrs["stride"] == (1, 1) and not any(node.attrs["padding"])


@lowers("conv2d")
def _lower_conv2d(node: Node, io: GpuNodeIO) -> list[Launch]:
    (n, c, h, wd), (oc, cg, kh, kw) = node.inputs[0].shape, node.inputs[1].shape
    _, _, oh, ow = node.outputs[0].shape
    (sh, sw), (pt, _, pl, _) = node.attrs["stride"], node.attrs["padding"]
    (dh, dw), groups = node.attrs["dilation"], node.attrs["groups"]
    bias = io.input(2) if len(node.inputs) == 3 else io.null()
    args = (io.input(0), io.input(1), bias, io.output())
    args += (n, c, h, wd, oc, oh, ow, kh, kw, sh, sw, pt, pl, dh, dw, groups)
    if cg == 1:
        kernel = "conv2d_depthwise_3x3" if (kh, kw) == (3, 3) else "conv2d_depthwise"
        return [io.elementwise("conv", kernel, n * oc * oh * ow, *args)]
    tm, tn = gemm_tile(oc // groups)
    grid = (-(-n * oh * ow // tn), -(-oc // groups // tm), groups)
    if max(grid[1:]) > MAX_GRID_YZ:
        raise ValueError(
            f"{node.name}: conv2d on the GPU takes at most {MAX_GRID_YZ} groups and "
            f"{MAX_GRID_YZ * tm} output channels per group, but got groups={groups}, "
            f"out_channels={oc}"
        )
    path = "pointwise" if is_pointwise(node) else "gemm"
    return [io.launch("conv", f"conv2d_{path}_{tm}x{tn}", grid, GEMM_THREADS, *args)]
