"""Winograd F(2x2, 3x3) and F(4x4, 3x3) kernels for 3x3 stride-1 convolutions: the forward
pass (and with it the stride-1 grad_input, which runs as a forward conv of the flipped kernel)
and the weight gradient (F(2x2, 3x3) only).

Each m x m block of output pixels (a *tile*) of one channel pair is (Lavin & Gray, 2016)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A          (* elementwise, (m+2) x (m+2))

with d the (m+2) x (m+2) input patch under the tile and g the 3x3 kernel. Summed over input
channels, each of the (m+2)^2 positions p of the transformed tile is one GEMM over all tiles::

    M_p [OC, tiles] = U_p [OC, C] @ V_p [C, tiles]      U = G g G^T,  V = B^T d B

m = 2: 16 multiplies per tile and channel pair where the direct sum needs 36 (2.25x fewer);
m = 4: 36 where it needs 144 (4x fewer), on convs with enough pixels (``tile_size``). The
weight gradient runs the same algebra backwards: with Z = A dY A^T per output-gradient tile,
``dU_p [OC, C] = Z_p [OC, tiles] @ V_p^T [tiles, C]`` and ``dg = G^T dU G``. F(2x2, 3x3)'s
coefficients are 0, +-1 and 1/2, so the extra rounding is a few ulps; F(4x4, 3x3)'s (up to
8 and 1/24) leave float32 outputs ~2e-6 from the exact sum in norm, a direct sum ~2e-7
(both tested against torch at 1e-5).

The batch is processed in chunks of whole images or of blocks of tile rows of one image, on
one of two schedules (``_schedule``):

- shared: V and M ((m+2)^2 / m^2 times the input and output bytes) of a chunk stay near
  CHUNK_BYTES, and each chunk is three parallel phases: the input (and, for the weight
  gradient, output-gradient) transform over (image, channel) planes, the P GEMMs (one task
  per p, so each dU_p has one writer: deterministic without partial sums), and the output
  transform;
- private (forward only): where the maps are large and the channels few (ResNet-18 CIFAR's
  32x32 and 16x16 layers), a task is a whole small chunk with its own V and M, which stay in
  the core's L2 instead of crossing memory twice (32x32 at batch 32: 7.2 -> 5.6 ms).

The input rows under a chunk's tiles are first copied into a zero-bordered per-thread block,
so the tile loops need no bounds checks.

Buffers: conv2d_winograd(x, w, b, affine, residual, consts, y, scratch) (the epilogue's, see
``epilogue.py``), conv2d_grad_weight_winograd(x, gy, gw, scratch).
Attrs: [N, C, H, W, OC, OH, OW, PT, PL, images per chunk, tile rows per chunk, private, m,
planes per transform task (``_planes_per_task``)], then the forward's activation kind.
Scratch: [U or dU: P x OC x C | V: P x C x T | M or Z: P x OC x T | padded rows per
thread] (shared) or [U | per thread: V, M, padded rows] (private), P = (m+2)^2,
T = images x tile rows x tiles per row of a chunk (``_strides``, ``_regions``).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id, njit, prange

from backends.cpu import simd
from backends.cpu.blas import matmul
from backends.cpu.epilogue import finish_channel
from backends.cpu.kernels import kernel
from graph.ir import Node

# Bytes of V and M per chunk: large enough for wide GEMMs, small enough for L3 and to keep
# the scratch (planned into the arena) small.
CHUNK_BYTES = 8 << 20
# Fewest channels on either side: below this a GEMM over C (or OC) is too thin to repay the
# transforms (the ResNet stem's 3 input channels stays on the shifted GEMM).
MIN_CHANNELS = 16
# Fewest tiles in the batch: the 16 GEMMs read 16 transformed copies of the weights, which
# few tiles cannot repay (ResNet-50's 512 -> 512 3x3 on 7x7 at batch 1, 16 tiles: 3.1 ms,
# against 1.9 ms as one im2col GEMM cut by output channels; at batch 2 Winograd wins).
MIN_TILES = 32
# ... and a single image twice as many: its im2col GEMM is then as wide as its map, which on a
# 14x14 map (49 tiles) is wide enough to beat the transforms (ResNet-50's five 256 -> 256 at
# batch 1, two plans interleaved in the network: 1090-1134 against 1158-1226 us a layer; at
# batch 2, 98 tiles, Winograd wins by far; its 28x28 layers, 196 tiles, 800 against 1250).
ONE_IMAGE_TILES_FACTOR = 2
# Private schedule (``_schedule``), by tile size: V and M bytes of one chunk (a quarter of
# L2, or all of it), and the fewest GEMM columns worth a chunk of their own. F(4x4, 3x3) has
# 36 GEMMs on a quarter of the tiles: 2 MiB and 16 columns (with scalar transforms, 1 MiB
# against 512 KiB and 32: ResNet-18 CIFAR's 32x32 and 16x16 layers at batch 64, 23.0 -> 20.4
# and 13.6 -> 12.8 ms; with SIMD transforms, whose GEMMs weigh more, 2 MiB against 1 MiB:
# ResNet-18 CIFAR at batch 64 171-173 against 176-182 ms, ResNet-50 at batch 32 1072-1106
# against 1110-1138 ms, interleaved).
PRIVATE_CHUNK_BYTES = {2: 512 << 10, 4: 2 << 20}
PRIVATE_MIN_TILES = {2: 32, 4: 16}
# The weight gradient takes the private schedule too where each thread's own dU (summed over
# its chunks, then the threads' partial sums added in a fixed order) is at most this large.
GRADIENT_PRIVATE_MAX_BYTES = 1 << 20
# Elements added to each position stride of U, V and M (see ``_strides``).
SKEW = 16
# Forward convs with at least this many output pixels in the batch (one channel) take
# F(4x4, 3x3) tiles, the others (and every weight gradient) F(2x2, 3x3): see ``tile_size``.
LARGE_TILE_MIN_PIXELS = 3072


def is_winograd(node: Node) -> bool:
    """3x3, stride 1, undilated, ungrouped convs with at least MIN_CHANNELS channels each side
    and MIN_TILES tiles in the batch (ONE_IMAGE_TILES_FACTOR times that for one image; ``node``
    is a conv2d node, or the forward conv a backward node mirrors)."""
    oc, c, kh, kw = node.inputs[1].shape
    rows, per_row = _tiles(node, 2)
    n = node.inputs[0].shape[0]
    least = MIN_TILES * (ONE_IMAGE_TILES_FACTOR if n == 1 else 1)
    return (
        (kh, kw) == (3, 3)
        and node.attrs["stride"] == (1, 1)
        and node.attrs["dilation"] == (1, 1)
        and node.attrs["groups"] == 1
        and min(oc, c) >= MIN_CHANNELS
        and n * rows * per_row >= least
    )


def tile_size(node: Node, weight_gradient: bool = False) -> int:
    """Output pixels a side of a tile: 4 for forward convs with LARGE_TILE_MIN_PIXELS output
    pixels in the batch, else 2.

    F(4x4, 3x3) needs 36 multiplies per tile and channel pair for 16 outputs (2.25 an
    output, F(2x2, 3x3) 4), but transforms 36 copies of the weights (16) on every run: few
    pixels (ResNet-50's 14x14 layers at batch 1) cannot repay them. Its transforms'
    coefficients (4, 5, 1/6, 1/24, 8) round more: float32 outputs are ~2e-6 from the exact
    sum in norm (a direct sum: ~2e-7; the test tolerance is 1e-5)."""
    n, _, oh, ow = node.outputs[0].shape
    large = n * oh * ow >= LARGE_TILE_MIN_PIXELS
    return 4 if large and not weight_gradient else 2


def _tiles(node: Node, m: int) -> tuple[int, int]:
    """Tile rows and tiles per row (m x m output tiles, the last ones partial)."""
    _, _, oh, ow = node.outputs[0].shape
    return -(-oh // m), -(-ow // m)


def _schedule(node: Node, private: bool, m: int) -> tuple[int, int, int]:
    """(images, tile rows, private) per chunk. Private (where ``private`` allows it: forward
    convs, and weight gradients whose dU is small, ``_private_allowed``): chunks of at most
    PRIVATE_CHUNK_BYTES[m] of V and M, one task each, where that still gives GEMMs of
    PRIVATE_MIN_TILES[m] columns and two chunks per thread (ResNet-18 CIFAR's 32x32 and 16x16
    layers). Otherwise shared: as many whole images as keep V and M near
    CHUNK_BYTES or, where one image is already larger (VGG's 224x224 layers: 102 MiB at 64
    channels), one image's tile rows in blocks of that size."""
    (n, c, _, _), oc = node.inputs[0].shape, node.outputs[0].shape[1]
    th, tw = _tiles(node, m)
    per_row = (m + 2) ** 2 * (c + oc) * tw * node.outputs[0].type.itemsize
    rows = PRIVATE_CHUNK_BYTES[m] // per_row
    images = max(1, min(n, rows // th)) if rows >= th else 1
    rows = min(rows, th)
    chunks = -(-n // images) * -(-th // max(1, rows))
    wide = images * rows * tw >= PRIVATE_MIN_TILES[m]
    if private and rows and wide and chunks >= 2 * _threads():
        return images, rows, 1
    if per_row * th <= CHUNK_BYTES:
        return max(1, min(n, CHUNK_BYTES // (per_row * th))), th, 0
    return 1, max(1, CHUNK_BYTES // per_row), 0


def _private_allowed(node: Node, weight_gradient: bool) -> bool:
    """Forward convs may take the private schedule; a weight gradient where one dU per
    thread stays within GRADIENT_PRIVATE_MAX_BYTES (ResNet-18 CIFAR's 64- and 128-channel
    layers): its chunks' V and Z then stay in the core's L2 instead of crossing memory twice,
    as the forward's do."""
    (_, c, _, _), oc = node.inputs[0].shape, node.outputs[0].shape[1]
    u_bytes = 16 * oc * c * node.outputs[0].type.itemsize  # F(2x2, 3x3): 16 positions
    return not weight_gradient or u_bytes <= GRADIENT_PRIVATE_MAX_BYTES


def _threads() -> int:
    """Numba's thread count: one padded block (private: one V and M) per thread."""
    return numba.config.NUMBA_NUM_THREADS


def scratch_numel(node: Node, weight_gradient: bool = False) -> int:
    """Scratch of the forward kernel (or of the weight gradient's) for the forward conv
    ``node``: U (or dU), then V and M (or Z) with their skewed strides and padded rows per
    thread, or per thread a V, an M and padded rows (``_regions``)."""
    (_, c, _, _), oc = node.inputs[0].shape, node.outputs[0].shape[1]
    size = tile_size(node, weight_gradient)
    (_, tw), positions = _tiles(node, size), (size + 2) ** 2
    images, rows, private = _schedule(node, _private_allowed(node, weight_gradient), size)
    u, v, m = _strides(c, oc, images * rows * tw)
    lanes = simd.VECTOR_BYTES // node.inputs[0].type.itemsize
    padded = _planes_per_task(images, rows, tw, lanes) * _padded_numel(rows, tw, size)
    if private:
        partial_sums = (_threads() - 1) * positions * u if weight_gradient else 0
        return positions * u + _threads() * (positions * (v + m) + padded) + partial_sums
    return positions * (u + v + m) + _threads() * padded


def attrs(node: Node, weight_gradient: bool = False) -> list[int]:
    """The attrs of the forward kernel (or of the weight gradient's), from the forward conv
    ``node`` (x, w -> y)."""
    (n, c, h, wd), (_, oc, oh, ow) = node.inputs[0].shape, node.outputs[0].shape
    pt, _, pl, _ = node.attrs["padding"]
    size = tile_size(node, weight_gradient)
    images, rows, private = _schedule(node, _private_allowed(node, weight_gradient), size)
    lanes = simd.VECTOR_BYTES // node.inputs[0].type.itemsize
    planes = _planes_per_task(images, rows, _tiles(node, size)[1], lanes)
    slots = private * (_threads() if weight_gradient else 1)
    return [n, c, h, wd, oc, oh, ow, pt, pl, images, rows, slots, size, planes]


@njit(inline="always", cache=True)
def _padded_numel(rows, tw, m):
    """A zero-bordered block of input rows under ``rows`` tile rows of ``tw`` m x m tiles."""
    return (m * rows + 2) * (m * tw + 2)


@njit(inline="always", cache=True)
def _planes_per_task(images, rows, tw, lanes):
    """Planes (one channel of consecutive images) one transform task covers: one, or where
    chunks hold whole images of fewer tiles than half a vector's lanes, as many as fill the
    lanes (F(4x4, 3x3) on 8x8 maps: 4 tiles a plane, 4 planes a vector), so that small maps
    do not leave most lanes empty."""
    return max(1, min(images, lanes // (rows * tw))) if images > 1 else 1


@njit(inline="always", cache=True)
def _tile_counts(a):
    """(tile size m, tile rows, tiles per row, transformed positions (m + 2)^2) of attrs a."""
    m = a[12]
    return m, (a[5] + m - 1) // m, (a[6] + m - 1) // m, (m + 2) * (m + 2)


@njit(inline="always", cache=True)
def _pad_rows(src, plane, h, wd, top, pl, wp, rows, work, at):
    """work[at + r*wp + pl + ix] = src[plane + (top + r)*wd + ix] for the ``rows`` rows r
    whose source row lies in [0, H); every other element of the block is zero."""
    work[at : at + rows * wp] = 0
    for r in range(max(0, -top), min(rows, h - top)):
        dst, row = at + r * wp + pl, plane + (top + r) * wd
        work[dst : dst + wd] = src[row : row + wd]


@njit(inline="always", cache=True)
def _weight_transform(g, u, k, stride, m):
    """U = G g G^T of one 3x3 kernel ``g`` for m x m tiles: u[k + p*stride], p = (m+2)r + j.
    In float64 until the store."""
    if m == 2:
        _weight_transform_2(g, u, k, stride)
    else:
        _weight_transform_4(g, u, k, stride)


@njit(inline="always", cache=True)
def _weight_transform_4(g, u, k, stride):
    """F(4x4, 3x3)'s U = G g G^T: G applied down each column of g, then along each row."""
    c0 = _g6(1.0 * g[0], 1.0 * g[3], 1.0 * g[6])
    c1 = _g6(1.0 * g[1], 1.0 * g[4], 1.0 * g[7])
    c2 = _g6(1.0 * g[2], 1.0 * g[5], 1.0 * g[8])
    for r in range(6):
        _store(u, k + 6 * r * stride, stride, _g6(c0[r], c1[r], c2[r]))


@njit(inline="always", cache=True)
def _g6(q0, q1, q2):
    """G q for F(4x4, 3x3) (Lavin & Gray's points 0, +-1, +-2, infinity)."""
    sixth = 1.0 / 6.0  # multiplies, not a division per entry
    even, odd = (q0 + q2) * sixth, q1 * sixth
    outer, inner = (0.25 * q0 + q2) * sixth, 0.5 * odd
    return 0.25 * q0, -(even + odd), odd - even, outer + inner, outer - inner, q2


@njit(inline="always", cache=True)
def _weight_transform_2(g, u, k, stride):
    """F(2x2, 3x3)'s U = G g G^T (the 1/2 is exact, the sums round once)."""
    for r in range(4):
        q0, q1, q2 = _times_g(g, r, 0), _times_g(g, r, 1), _times_g(g, r, 2)
        half = 0.5 * (q0 + q2)
        _store(u, k + 4 * r * stride, stride, (q0, half + 0.5 * q1, half - 0.5 * q1, q2))


@njit(inline="always", cache=True)
def _times_g(g, r, j):
    """(G g)[r, j] for the 3x3 kernel g (row-major), G = [1 0 0; h h h; h -h h; 0 0 1], h = 1/2."""
    top, middle, bottom = 1.0 * g[j], 1.0 * g[3 + j], 1.0 * g[6 + j]
    if r == 0:
        return top
    if r == 1:
        return 0.5 * (top + middle + bottom)
    if r == 2:
        return 0.5 * (top - middle + bottom)
    return bottom


@njit(inline="always", cache=True)
def _weight_gradient_transform(u, k, stride, gw, at):
    """gw[at + 3i + j] = (G^T dU G)[i, j], dU_p at u[k + p*stride] (float64 until the store)."""
    for i in range(3):
        r0, r1 = _gt_times(u, k, stride, i, 0), _gt_times(u, k, stride, i, 1)
        r2, r3 = _gt_times(u, k, stride, i, 2), _gt_times(u, k, stride, i, 3)
        gw[at + 3 * i] = r0 + 0.5 * (r1 + r2)
        gw[at + 3 * i + 1] = 0.5 * (r1 - r2)
        gw[at + 3 * i + 2] = 0.5 * (r1 + r2) + r3


@njit(inline="always", cache=True)
def _gt_times(u, k, stride, i, j):
    """(G^T dU)[i, j], G^T = [1 h h 0; 0 h -h 0; 0 h h 1] with h = 1/2."""
    u0, u1 = 1.0 * u[k + j * stride], 1.0 * u[k + (4 + j) * stride]
    u2, u3 = 1.0 * u[k + (8 + j) * stride], 1.0 * u[k + (12 + j) * stride]
    if i == 0:
        return u0 + 0.5 * (u1 + u2)
    if i == 1:
        return 0.5 * (u1 - u2)
    return 0.5 * (u1 + u2) + u3


@njit(inline="always", cache=True)
def _bt(d):
    """B^T applied to a 4-vector."""
    return d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]


@njit(inline="always", cache=True)
def _bt6(d, real):
    """F(4x4, 3x3)'s B^T applied to a 6-vector, in the array's type ``real`` (a float64
    literal would widen a float32 tile)."""
    d0, d1, d2, d3, d4, d5 = d
    two, four, five = real(2.0), real(4.0), real(5.0)
    even, odd = d4 - d2, two * (d3 - d1)
    return (
        four * d0 - five * d2 + d4,
        (d3 + d4) - four * (d1 + d2),
        (d4 - d3) + four * (d1 - d2),
        even + odd,
        even - odd,
        four * d1 - five * d3 + d5,
    )


@njit(inline="always", cache=True)
def _at6(m, real):
    """F(4x4, 3x3)'s A^T applied to a 6-vector, in type ``real`` (see ``_bt6``)."""
    sum12, diff12, sum34, diff34 = m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]
    return (
        m[0] + sum12 + sum34,
        diff12 + real(2.0) * diff34,
        sum12 + real(4.0) * sum34,
        diff12 + real(8.0) * diff34 + m[5],
    )


@njit(inline="always", cache=True)
def _at(m):
    """A^T applied to a 4-vector."""
    return m[0] + m[1] + m[2], m[1] - m[2] - m[3]


@njit(inline="always", cache=True)
def _a(q0, q1):
    """A applied to a 2-vector."""
    return q0, q0 + q1, q0 - q1, -q1


@njit(inline="always", cache=True)
def _store(out, k, stride, values):
    """out[k + j*stride] = values[j] for each of the tuple ``values``."""
    for j in range(len(values)):
        out[np.uint64(k + j * stride)] = values[j]


@njit(inline="always", cache=True)
def _store_lanes(out, k, stride, values, count):
    """The first ``count`` lanes of each vector values[j] to out[k + j*stride:]."""
    for j in range(len(values)):
        simd.store(out, k + j * stride, values[j], count)


@njit(inline="always", cache=True)
def _lanes4(array, k, stride, count):
    """(lanes array[k + j*stride : +count] for j < 4): one position of ``count`` tiles."""
    return (
        simd.load(array, k, count),
        simd.load(array, k + stride, count),
        simd.load(array, k + 2 * stride, count),
        simd.load(array, k + 3 * stride, count),
    )


@njit(inline="always", cache=True)
def _lanes6(array, k, stride, count):
    """As ``_lanes4``, six positions."""
    last = (simd.load(array, k + 4 * stride, count), simd.load(array, k + 5 * stride, count))
    return _lanes4(array, k, stride, count) + last


@njit(inline="always", cache=True)
def _column4(padded, c, wp, table, count):
    """Column c of four input rows for ``count`` tiles, tile l's at c + table[l]."""
    return (
        simd.load_gather(padded, c, table, count),
        simd.load_gather(padded, c + wp, table, count),
        simd.load_gather(padded, c + 2 * wp, table, count),
        simd.load_gather(padded, c + 3 * wp, table, count),
    )


@njit(inline="always", cache=True)
def _column6(padded, c, wp, table, count):
    """As ``_column4``, six input rows."""
    last = (
        simd.load_gather(padded, c + 4 * wp, table, count),
        simd.load_gather(padded, c + 5 * wp, table, count),
    )
    return _column4(padded, c, wp, table, count) + last


@njit(cache=True)
def _tile_groups(tw, rows, wp, m, planes, block, lanes):
    """How the lanes of a vector cover the tiles of a transform task: (tile rows per group,
    tiles per group and row, each lane's offset in the padded rows from the group's first
    tile). Tile rows are ``tw`` tiles of m columns, m*wp elements apart; with ``planes`` > 1
    a group is that many whole planes of ``rows`` tile rows, ``block`` elements apart. Rows
    shorter than the lanes share a vector (F(4x4) on 14x14: 4 tiles a row, 16 a vector), so
    the lanes are gathered (``simd.load_gather``) rather than read at one stride."""
    table = np.zeros(lanes, np.int32)
    if planes > 1:
        for j in range(planes):
            for ty in range(rows):
                for tx in range(tw):
                    table[(j * rows + ty) * tw + tx] = j * block + m * (ty * wp + tx)
        return rows, tw, table
    group_rows, across = _row_groups(tw, lanes)
    for r in range(group_rows):
        for tx in range(across):
            table[r * across + tx] = m * (r * wp + tx)
    return group_rows, across, table


@njit(inline="always", cache=True)
def _row_groups(tw, lanes):
    """(tile rows per vector, tiles per vector and row) for rows of ``tw`` tiles."""
    return max(1, lanes // tw), min(tw, lanes)


@njit(inline="always", cache=True)
def _group_count(group_rows, across, rows, tw, ty, tx, planes):
    """Tiles in the group at tile (ty, tx) of ``planes`` planes (``_tile_groups``)."""
    if group_rows > 1 or planes > 1:
        return min(group_rows, rows - ty) * tw * planes
    return min(across, tw - tx)


@njit(inline="always", cache=True)
def _row4(columns, i):
    """Element i of each of the four ``columns``: row i of a tile held column by column."""
    return columns[0][i], columns[1][i], columns[2][i], columns[3][i]


@njit(inline="always", cache=True)
def _row6(columns, i):
    """As ``_row4``, six columns."""
    return columns[0][i], columns[1][i], columns[2][i], columns[3][i], columns[4][i], columns[5][i]


@njit(cache=True)
def _input_transform(
    x, plane, plane_step, planes, h, wd, pt, pl, ty0, rows, tw, m, padded, at, v, k, stride, groups
):
    """V = B^T d B for tile rows ty0..ty0+rows of ``planes`` input planes (``plane_step``
    apart), m x m tiles: v[k + tile + p*stride], p = (m+2)i + j, tiles numbered from (ty0, 0)
    of the first plane on. A vector's lanes are consecutive tiles, grouped as ``groups``
    (``_tile_groups``) says."""
    wp = m * tw + 2
    block = (m * rows + 2) * wp
    for j in range(planes):
        _pad_rows(
            x,
            plane + j * plane_step,
            h,
            wd,
            m * ty0 - pt,
            pl,
            wp,
            m * rows + 2,
            padded,
            at + j * block,
        )
    group_rows, across, table = groups
    for ty in range(0, rows, group_rows):
        for tx in range(0, tw, across):
            count = _group_count(group_rows, across, rows, tw, ty, tx, planes)
            c, t = at + m * (ty * wp + tx), k + ty * tw + tx
            if m == 2:
                _input_tiles_2(padded, c, wp, table, v, t, stride, count)
            else:
                _input_tiles_4(padded, c, wp, table, v, t, stride, count)


@njit(inline="always", cache=True)
def _input_tiles_2(padded, c, wp, table, v, t, stride, count):
    """F(2x2, 3x3) tiles t..t+count (one a lane, at c + table[lane]): B^T d column by
    column, then B along each row."""
    d = (
        _bt(_column4(padded, c, wp, table, count)),
        _bt(_column4(padded, c + 1, wp, table, count)),
        _bt(_column4(padded, c + 2, wp, table, count)),
        _bt(_column4(padded, c + 3, wp, table, count)),
    )
    for i in range(4):
        _store_lanes(v, t + 4 * i * stride, stride, _bt(_row4(d, i)), count)


@njit(inline="always", cache=True)
def _input_tiles_4(padded, c, wp, table, v, t, stride, count):
    """F(4x4, 3x3) tiles, as ``_input_tiles_2``."""
    real = padded.dtype.type
    d = (
        _bt6(_column6(padded, c, wp, table, count), real),
        _bt6(_column6(padded, c + 1, wp, table, count), real),
        _bt6(_column6(padded, c + 2, wp, table, count), real),
        _bt6(_column6(padded, c + 3, wp, table, count), real),
        _bt6(_column6(padded, c + 4, wp, table, count), real),
        _bt6(_column6(padded, c + 5, wp, table, count), real),
    )
    for i in range(6):
        _store_lanes(v, t + 6 * i * stride, stride, _bt6(_row6(d, i), real), count)


@njit(cache=True)
def _output_transform(mm, k, stride, y, plane, plane_step, planes, oh, ow, ty0, rows, tw, m, bias):
    """Y = A^T M A + bias for tile rows ty0..ty0+rows of ``planes`` output planes
    (``plane_step`` apart), m x m tiles (M_p at mm[k + tile + p*stride], tiles numbered from
    (ty0, 0) of the first plane on), consecutive tiles in the lanes (rows, and planes, of
    fewer tiles than the lanes share a vector, as in ``_tile_groups``); partial tiles at the
    edges."""
    group_rows, across = _row_groups(tw, simd.lanes(y))
    if planes > 1:
        group_rows = rows
    for ty in range(0, rows, group_rows):
        here = min(group_rows, rows - ty) * planes  # tile rows in the group, all planes
        for tx in range(0, tw, across):
            count = _group_count(group_rows, across, rows, tw, ty, tx, planes)
            t, at = k + ty * tw + tx, plane + m * ((ty0 + ty) * ow + tx)
            # outputs of a row of the group: the rest of the image row, or all of it
            width = min(m * count, ow - m * tx) if here == 1 else ow
            shape = (here, m * tw, width, oh - m * (ty0 + ty), group_rows, plane_step)
            if m == 2:
                _output_tiles_2(mm, t, stride, y, at, ow, count, shape, bias)
            else:
                _output_tiles_4(mm, t, stride, y, at, ow, count, shape, bias)


@njit(inline="always", cache=True)
def _store_output_row(y, at, ow, values, i, shape):
    """Output row i of each tile row of a group, from the interleaved ``values`` (one m-wide
    row of every tile in the lanes): tile row r = (plane j, row ty) of the group has its
    outputs at elements r*span.. of it, its first ``width`` land at at + j*plane_step +
    (ty*m + i)*ow; ``shape`` = (tile rows, span, width, image rows left from the group's
    first output row, tile rows a plane, plane_step)."""
    here, span, width, rows_left, plane_rows, plane_step = shape
    m = len(values)
    for r in range(here):
        j, ty = r // plane_rows, r % plane_rows
        if ty * m + i < rows_left:
            start = r * span
            row = at + j * plane_step + (ty * m + i) * ow
            simd.store_interleaved(y, row - start, values, start, start + width)


@njit(inline="always", cache=True)
def _output_tiles_2(mm, t, stride, y, at, ow, count, shape, bias):
    """F(2x2, 3x3) tiles t..t+count (``_store_output_row`` places them): A^T M column by
    column, then A along each row."""
    s0, d0 = _at(_lanes4(mm, t, 4 * stride, count))
    s1, d1 = _at(_lanes4(mm, t + stride, 4 * stride, count))
    s2, d2 = _at(_lanes4(mm, t + 2 * stride, 4 * stride, count))
    s3, d3 = _at(_lanes4(mm, t + 3 * stride, 4 * stride, count))
    (y00, y01), (y10, y11) = _at((s0, s1, s2, s3)), _at((d0, d1, d2, d3))
    _store_output_row(y, at, ow, (y00 + bias, y01 + bias), 0, shape)
    _store_output_row(y, at, ow, (y10 + bias, y11 + bias), 1, shape)


@njit(inline="always", cache=True)
def _output_tiles_4(mm, t, stride, y, at, ow, count, shape, bias):
    """F(4x4, 3x3) tiles, as ``_output_tiles_2``."""
    real, step = mm.dtype.type, 6 * stride
    c = (
        _at6(_lanes6(mm, t, step, count), real),
        _at6(_lanes6(mm, t + stride, step, count), real),
        _at6(_lanes6(mm, t + 2 * stride, step, count), real),
        _at6(_lanes6(mm, t + 3 * stride, step, count), real),
        _at6(_lanes6(mm, t + 4 * stride, step, count), real),
        _at6(_lanes6(mm, t + 5 * stride, step, count), real),
    )
    for i in range(4):
        row = _at6(_row6(c, i), real)
        outputs = (row[0] + bias, row[1] + bias, row[2] + bias, row[3] + bias)
        _store_output_row(y, at, ow, outputs, i, shape)


@njit(cache=True)
def _gradient_transform(
    gy, plane, plane_step, planes, oh, ow, ty0, rows, tw, padded, at, z, k, stride, groups
):
    """Z = A dY A^T for tile rows ty0..ty0+rows of ``planes`` output-gradient planes
    (``plane_step`` apart; zero past the edges): z[k + tile + p*stride], tiles numbered from
    (ty0, 0) of the first plane on, consecutive tiles in the lanes as ``groups`` says."""
    wp = 2 * tw
    for j in range(planes):
        _pad_rows(
            gy,
            plane + j * plane_step,
            oh,
            ow,
            2 * ty0,
            0,
            wp,
            2 * rows,
            padded,
            at + j * 2 * rows * wp,
        )
    group_rows, across, table = groups
    for ty in range(0, rows, group_rows):
        for tx in range(0, tw, across):
            count = _group_count(group_rows, across, rows, tw, ty, tx, planes)
            c, t = at + 2 * (ty * wp + tx), k + ty * tw + tx
            left = _a(
                simd.load_gather(padded, c, table, count),
                simd.load_gather(padded, c + wp, table, count),
            )
            right = _a(
                simd.load_gather(padded, c + 1, table, count),
                simd.load_gather(padded, c + wp + 1, table, count),
            )
            for i in range(4):
                _store_lanes(z, t + 4 * i * stride, stride, _a(left[i], right[i]), count)


@njit(inline="always", cache=True)
def _strides(c, oc, columns):
    """Position strides of U, V and M for chunks of ``columns`` tiles. Each is padded by SKEW
    elements: a stride of a multiple of 4 KiB would put a tile's 16 loads or stores in one L1
    set (ResNet's 512x512 weight transform: 4.2 ms, then 1.2 ms; a whole conv ran 2x slower)."""
    return oc * c + SKEW, c * columns + SKEW, oc * columns + SKEW


@njit(inline="always", cache=True)
def _regions(a, thread):
    """Scratch offsets (V, M or Z, padded rows) of ``thread``; U (or dU) starts at 0. Shared
    schedule: one V and M after it, used by all threads, then padded rows per thread.
    Private schedule (a[11] set): a V, an M and padded rows per thread."""
    c, oc, images, block_rows, private = a[1], a[4], a[9], a[10], a[11]
    m, _, tw, positions = _tile_counts(a)
    u_stride, v_stride, m_stride = _strides(c, oc, images * block_rows * tw)
    padded = a[13] * _padded_numel(block_rows, tw, m)
    region = positions * (v_stride + m_stride) + padded
    v_at = positions * u_stride + (thread * region if private else 0)
    m_at = v_at + positions * v_stride
    return v_at, m_at, m_at + positions * m_stride + (0 if private else thread * padded)


@njit(inline="always", cache=True)
def _chunk_of(a, index):
    """(first image, images, first tile row, tile rows, GEMM columns) of chunk ``index``:
    chunks run image group by image group, each cut into blocks of a[10] tile rows."""
    n, images, block_rows = a[0], a[9], a[10]
    _, th, tw, _ = _tile_counts(a)
    blocks = (th + block_rows - 1) // block_rows
    first, ty0 = index // blocks * images, index % blocks * block_rows
    count, rows = min(images, n - first), min(block_rows, th - ty0)
    return first, count, ty0, rows, count * rows * tw


@njit(inline="always", cache=True)
def _transform_input(x, scratch, a, index, task, thread, groups):
    """V of the input planes (images planes*g.., channel ci) of task (g, ci) of chunk
    ``index`` (``_planes_per_task``: a[13] planes a task)."""
    n, c, h, wd, oc, oh, ow, pt, pl, images, block_rows = a[:11]
    size, _, tw, _ = _tile_counts(a)
    first, count, ty0, rows, ld = _chunk_of(a, index)
    v_stride = _strides(c, oc, images * block_rows * tw)[1]
    v_at, _, slot = _regions(a, thread)
    m, ci = task // c * a[13], task % c
    column, plane = v_at + ci * ld + m * rows * tw, ((first + m) * c + ci) * h * wd
    _input_transform(
        x,
        plane,
        c * h * wd,
        min(a[13], count - m),
        h,
        wd,
        pt,
        pl,
        ty0,
        rows,
        tw,
        size,
        scratch,
        slot,
        scratch,
        column,
        v_stride,
        groups,
    )


@njit(inline="always", cache=True)
def _output_plane(a, index, task, thread):
    """Where the output planes (images planes*g.., channel o) of task (g, o) of chunk
    ``index`` live: (the first one's offset in y, its first column in M, M's position stride,
    the thread's padded block, first tile row, tile rows, planes: a[13], or fewer at the
    chunk's end)."""
    c, oc, oh, ow, images, block_rows = a[1], a[4], a[5], a[6], a[9], a[10]
    tw = _tile_counts(a)[2]
    first, count, ty0, rows, ld = _chunk_of(a, index)
    m_stride = _strides(c, oc, images * block_rows * tw)[2]
    _, m_at, slot = _regions(a, thread)
    m, o = task // oc * a[13], task % oc
    plane, column = ((first + m) * oc + o) * oh * ow, m_at + o * ld + m * rows * tw
    return plane, column, m_stride, slot, ty0, rows, min(a[13], count - m)


@njit(inline="always", cache=True)
def _transform_output(y, b, affine, res, consts, scratch, a, index, task, thread):
    """Output planes of task (g, o) of chunk ``index``, from M, with the bias, then the rest
    of the epilogue (``epilogue.py``) on the rows it wrote."""
    oh, ow, oc = a[5], a[6], a[4]
    plane, column, m_stride, _, ty0, rows, planes = _output_plane(a, index, task, thread)
    o = task % oc
    bias = b[o] if b.shape[0] else 0.0
    m, _, tw, _ = _tile_counts(a)
    step = oc * oh * ow
    _output_transform(
        scratch, column, m_stride, y, plane, step, planes, oh, ow, ty0, rows, tw, m, bias
    )
    for j in range(planes):
        lo = plane + j * step + m * ty0 * ow
        hi = plane + j * step + min(oh, m * (ty0 + rows)) * ow
        finish_channel(y[lo:hi], o, b[:0], affine, res[lo:hi], a[14], consts)


@njit(inline="always", cache=True)
def _transform_gradient(gy, scratch, a, index, task, thread, groups):
    """Z of the output-gradient planes of task (g, o) of chunk ``index``: where
    ``_output_plane`` puts the forward's M."""
    oc, oh, ow = a[4], a[5], a[6]
    plane, column, z_stride, slot, ty0, rows, planes = _output_plane(a, index, task, thread)
    tw = _tile_counts(a)[2]  # 2x2 tiles: the weight gradient's
    _gradient_transform(
        gy,
        plane,
        oc * oh * ow,
        planes,
        oh,
        ow,
        ty0,
        rows,
        tw,
        scratch,
        slot,
        scratch,
        column,
        z_stride,
        groups,
    )


@njit(inline="always", cache=True)
def _forward_gemm(scratch, a, index, p, thread):
    """M_p [OC, ld] = U_p [OC, C] @ V_p [C, ld] of chunk ``index``."""
    c, oc, tw = a[1], a[4], _tile_counts(a)[2]
    u_stride, v_stride, m_stride = _strides(c, oc, a[9] * a[10] * tw)
    v_at, m_at, _ = _regions(a, thread)
    ld = _chunk_of(a, index)[4]
    matmul(
        oc,
        ld,
        c,
        (scratch, p * u_stride, c),
        (scratch, v_at + p * v_stride, ld),
        (scratch, m_at + p * m_stride, ld),
    )


@njit(inline="always", cache=True)
def _weight_gemm(scratch, a, index, p, beta, slot):
    """dU_p [OC, C] = beta * dU_p + Z_p [OC, ld] @ V_p^T [ld, C] of chunk ``index``, from
    and into private slot ``slot``'s V, Z and dU (slot 0's dU is the final one; shared: 0)."""
    c, oc, tw = a[1], a[4], _tile_counts(a)[2]
    u_stride, v_stride, z_stride = _strides(c, oc, a[9] * a[10] * tw)
    v_at, z_at, _ = _regions(a, slot)
    ld = _chunk_of(a, index)[4]
    matmul(
        oc,
        c,
        ld,
        (scratch, z_at + p * z_stride, ld),
        (scratch, v_at + p * v_stride, ld),
        (scratch, _partial_sum_at(a, slot) + p * u_stride, c),
        beta,
        0,
        1,
    )


@njit(inline="always", cache=True)
def _partial_sum_at(a, slot):
    """Where private slot ``slot`` of the weight gradient (a[11] slots) sums its chunks' dU:
    slot 0 in the final dU at 0, the others after the slots' regions."""
    if slot == 0:
        return 0
    positions = _tile_counts(a)[3]
    return _regions(a, a[11])[0] + (slot - 1) * positions * _strides(a[1], a[4], 0)[0]


@njit(inline="always", cache=True)
def _tasks(count, a):
    """Transform tasks per channel of a chunk of ``count`` images (a[13] planes a task)."""
    return (count + a[13] - 1) // a[13]


@njit(inline="always", cache=True)
def _input_groups(a, lanes):
    """``_tile_groups`` of the input transform's padded rows."""
    m, _, tw, _ = _tile_counts(a)
    wp = m * tw + 2
    return _tile_groups(tw, a[10], wp, m, a[13], (m * a[10] + 2) * wp, lanes)


@njit(inline="always", cache=True)
def _chunks(a):
    """How many chunks (``_chunk_of``) cover the batch."""
    th = _tile_counts(a)[1]
    return (a[0] + a[9] - 1) // a[9] * ((th + a[10] - 1) // a[10])


@kernel(buffers=8)
def conv2d_winograd(x, w, b, affine, res, consts, y, scratch, a):
    c, oc, private = a[1], a[4], a[11]
    m, _, tw, positions = _tile_counts(a)
    u_stride = _strides(c, oc, 0)[0]
    groups = _input_groups(a, simd.lanes(x))
    for q in prange(oc * c):
        _weight_transform(w[q * 9 : q * 9 + 9], scratch, q, u_stride, m)
    if private:
        for index in prange(_chunks(a)):
            thread, count = get_thread_id(), _chunk_of(a, index)[1]
            for task in range(_tasks(count, a) * c):
                _transform_input(x, scratch, a, index, task, thread, groups)
            for p in range(positions):
                _forward_gemm(scratch, a, index, p, thread)
            for task in range(_tasks(count, a) * oc):
                _transform_output(y, b, affine, res, consts, scratch, a, index, task, thread)
        return 0
    for index in range(_chunks(a)):
        count = _chunk_of(a, index)[1]
        for task in prange(_tasks(count, a) * c):
            _transform_input(x, scratch, a, index, task, get_thread_id(), groups)
        for p in prange(positions):
            _forward_gemm(scratch, a, index, p, 0)
        for task in prange(_tasks(count, a) * oc):
            _transform_output(y, b, affine, res, consts, scratch, a, index, task, get_thread_id())
    return 0


@kernel(buffers=4)
def conv2d_grad_weight_winograd(x, gy, gw, scratch, a):
    c, oc, (_, _, tw, positions) = a[1], a[4], _tile_counts(a)
    u_stride = _strides(c, oc, 0)[0]
    groups = _input_groups(a, simd.lanes(x))
    z_groups = _tile_groups(tw, a[10], 2 * tw, 2, a[13], 4 * a[10] * tw, simd.lanes(gy))
    if a[11]:  # private: slot s sums chunks s, s + slots, ... into its own dU
        slots, chunks = a[11], _chunks(a)
        for s in prange(slots):
            for index in range(s, chunks, slots):
                tasks = _tasks(_chunk_of(a, index)[1], a)
                for task in range(tasks * c):
                    _transform_input(x, scratch, a, index, task, s, groups)
                for task in range(tasks * oc):
                    _transform_gradient(gy, scratch, a, index, task, s, z_groups)
                for p in range(positions):
                    _weight_gemm(scratch, a, index, p, 0.0 if index == s else 1.0, s)
        for q in prange(positions * u_stride):
            total = scratch[q]
            for s in range(1, min(slots, chunks)):
                total += scratch[_partial_sum_at(a, s) + q]
            scratch[q] = total
    else:  # shared: each chunk's transforms, then its GEMMs, one task per position p
        for index in range(_chunks(a)):
            tasks = _tasks(_chunk_of(a, index)[1], a)
            for task in prange(tasks * (c + oc)):
                if task < tasks * c:
                    _transform_input(x, scratch, a, index, task, get_thread_id(), groups)
                else:
                    _transform_gradient(
                        gy, scratch, a, index, task - tasks * c, get_thread_id(), z_groups
                    )
            for p in prange(positions):
                _weight_gemm(scratch, a, index, p, 0.0 if index == 0 else 1.0, 0)
    for q in prange(oc * c):
        _weight_gradient_transform(scratch, q, u_stride, gw, q * 9)
    return 0
