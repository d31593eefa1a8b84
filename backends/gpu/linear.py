"""GPU linear and matmul (``kernels/linear.cu``), mirroring the CPU's ``linear``
(``backends/cpu/conv.py``) and ``matmul`` (``backends/cpu/conv_backward.py``).

Both are one strided GEMM, ``y [M, N] = A [M, K] @ B [K, N] (+ bias [N])``, with
``A(m, k) = a[m * a_row + k * a_k]`` and ``B(k, n) = b[k * b_k + n * b_col]``: a transposed
operand is only a change of strides. Arguments: (a, b, bias, y) then
[M, N, K, a_row, a_k, b_k, b_col]. Tiles as the conv GEMMs' (``conv.gemm_tile``): 64 x 64, or
16 x 256 when M <= 16 (a classifier at a small batch); grid (column tiles, row tiles), 256
threads.
"""

from __future__ import annotations

import numpy as np

from backends.gpu.conv import GEMM_THREADS, MAX_GRID_YZ, gemm_tile
from backends.gpu.lowering import GpuNodeIO, Launch, lowers
from graph.ir import Node


def _gemm(
    io: GpuNodeIO,
    operands: tuple[np.uint64, np.uint64, np.uint64],
    m: int,
    n: int,
    k: int,
    strides: tuple[int, int, int, int],
) -> Launch:
    """The GEMM launch for ``operands`` = (a, b, bias) and ``strides`` = (a_row, a_k, b_k,
    b_col)."""
    tm, tn = gemm_tile(m)
    grid = (-(-n // tn), -(-m // tm))
    if grid[1] > MAX_GRID_YZ:
        raise ValueError(
            f"{io.node.name}: {io.node.op} on the GPU takes at most {MAX_GRID_YZ * tm} rows, "
            f"but got {m}"
        )
    return io.launch(
        "linear", f"gemm_{tm}x{tn}", grid, GEMM_THREADS, *operands, io.output(), m, n, k, *strides
    )


@lowers("linear")
def _lower_linear(node: Node, io: GpuNodeIO) -> list[Launch]:
    """y = x W^T + b: A = x [batch, in], B = W^T read from W [out, in]."""
    (batch, in_features), out_features = node.inputs[0].shape, node.inputs[1].shape[0]
    bias = io.input(2) if len(node.inputs) == 3 else io.null()
    operands = (io.input(0), io.input(1), bias)
    return [_gemm(io, operands, batch, out_features, in_features, (in_features, 1, 1, in_features))]


@lowers("matmul")
def _lower_matmul(node: Node, io: GpuNodeIO) -> list[Launch]:
    """op(a) @ op(b), each stored row-major as given (transposed when asked)."""
    (m, n), (a, b) = node.outputs[0].shape, node.inputs
    trans_a, trans_b = node.attrs["trans_a"], node.attrs["trans_b"]
    k = a.shape[0] if trans_a else a.shape[1]
    lda, ldb = a.shape[1], b.shape[1]
    a_strides = (1, lda) if trans_a else (lda, 1)  # (a_row, a_k)
    b_strides = (1, ldb) if trans_b else (ldb, 1)  # (b_k, b_col)
    operands = (io.input(0), io.input(1), io.null())
    return [_gemm(io, operands, m, n, k, a_strides + b_strides)]
