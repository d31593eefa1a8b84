"""BLAS GEMM with leading dimensions, callable from Numba kernels.

``np.dot`` inside njit needs contiguous operands, so a kernel could not multiply into a block
of columns of a larger matrix. ``gemm`` calls the same BLAS that ``np.dot`` uses (SciPy's
OpenBLAS, through Numba's ``numba_xxgemm`` helper, so cached kernels stay cacheable) with
explicit offsets and leading dimensions, row-major::

    C[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * C      (op = transpose when the flag is set)

where A, B and C are flat arrays with element offsets and row strides lda, ldb, ldc.

Threads: convolutions run one GEMM per (image, pixel block) task on Numba's threads, so BLAS
itself is pinned to one thread here (``single_threaded_blas``): two thread pools on two cores
spin against each other (DESIGN.md, known traps).
"""

from __future__ import annotations

from pathlib import Path

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.core.extending import intrinsic
from numba.np.linalg import ensure_blas, get_blas_kind, make_constant_slot

from backends.errors import BLAS_FAILED

_char = ir.IntType(8)
_void_p = _char.as_pointer()


def _argument_casts(context, builder, signature):
    """An intrinsic's ``intp(value, index)`` (argument ``index`` as intp) and
    ``pointer(array, index, offset, offset_index)`` (void* to the array's element ``offset``)."""
    arg_types = signature.args

    def intp(value, index):
        return context.cast(builder, value, arg_types[index], types.intp)

    def pointer(value, index, offset, offset_index):
        array = context.make_array(arg_types[index])(context, builder, value)
        return builder.bitcast(builder.gep(array.data, [intp(offset, offset_index)]), _void_p)

    return intp, pointer


@intrinsic
def gemm(
    typingctx, trans_a, trans_b, m, n, k, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc
):
    """Row-major GEMM on flat arrays; returns BLAS's status (0 = ok)."""
    ensure_blas()
    sig = types.int32(
        trans_a, trans_b, m, n, k, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc
    )
    dtype = c.dtype

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, a_, ao, lda_, b_, bo, ldb_, beta_, c_, co, ldc_ = args
        intp, pointer = _argument_casts(context, builder, signature)

        def trans_char(flag, index):
            is_set = builder.icmp_signed(
                "!=", intp(flag, index), ir.Constant(intp(flag, index).type, 0)
            )
            return builder.select(
                is_set, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n"))
            )

        fnty = ir.FunctionType(
            ir.IntType(32),
            [
                _char,
                _char,
                _char,
                cgutils.intp_t,
                cgutils.intp_t,
                cgutils.intp_t,
                _void_p,
                _void_p,
                cgutils.intp_t,
                _void_p,
                cgutils.intp_t,
                _void_p,
                _void_p,
                cgutils.intp_t,
            ],
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemm")
        alpha = make_constant_slot(context, builder, dtype, 1.0)
        beta_slot = cgutils.alloca_once(builder, context.get_value_type(dtype))
        builder.store(context.cast(builder, beta_, signature.args[11], dtype), beta_slot)
        # Column-major BLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
        return builder.call(
            fn,
            (
                ir.Constant(_char, ord(get_blas_kind(dtype))),
                trans_char(tb, 1),
                trans_char(ta, 0),
                intp(n_, 3),
                intp(m_, 2),
                intp(k_, 4),
                builder.bitcast(alpha, _void_p),
                pointer(b_, 8, bo, 9),
                intp(ldb_, 10),
                pointer(a_, 5, ao, 6),
                intp(lda_, 7),
                builder.bitcast(beta_slot, _void_p),
                pointer(c_, 12, co, 13),
                intp(ldc_, 14),
            ),
        )

    return sig, codegen


@intrinsic
def gemv(typingctx, rows, cols, a, a_offset, lda, x, x_offset, y, y_offset):
    """Row-major ``y[:rows] = A[rows, cols] @ x[:cols]`` on flat arrays (A's row stride lda);
    returns BLAS's status (0 = ok). One sample of a linear layer: OpenBLAS's GEMM packs the
    whole transposed weight matrix whatever the batch (1.3 ms for ResNet-50's [1000, 2048]
    classifier at 1-4 rows), its GEMV streams it once (0.11 ms)."""
    ensure_blas()
    sig = types.int32(rows, cols, a, a_offset, lda, x, x_offset, y, y_offset)
    dtype = y.dtype

    def codegen(context, builder, signature, args):
        rows_, cols_, a_, ao, lda_, x_, xo, y_, yo = args
        intp, pointer = _argument_casts(context, builder, signature)

        fnty = ir.FunctionType(
            ir.IntType(32),
            [_char, _char, cgutils.intp_t, cgutils.intp_t, _void_p, _void_p, cgutils.intp_t]
            + [_void_p] * 3,
        )
        fn = cgutils.get_or_insert_function(builder.module, fnty, "numba_xxgemv")
        alpha = make_constant_slot(context, builder, dtype, 1.0)
        beta = make_constant_slot(context, builder, dtype, 0.0)
        # Column-major BLAS sees the row-major A as its transpose [cols, rows]: y = (A^T)^T x.
        return builder.call(
            fn,
            (
                ir.Constant(_char, ord(get_blas_kind(dtype))),
                ir.Constant(_char, ord("t")),
                intp(cols_, 1),
                intp(rows_, 0),
                builder.bitcast(alpha, _void_p),
                pointer(a_, 2, ao, 3),
                intp(lda_, 4),
                pointer(x_, 5, xo, 6),
                builder.bitcast(beta, _void_p),
                pointer(y_, 7, yo, 8),
            ),
        )

    return sig, codegen


def single_threaded_blas() -> None:
    """Pin SciPy's OpenBLAS (the one Numba calls) to one thread; NumPy's BLAS is untouched."""
    import scipy.linalg.cython_blas  # noqa: F401  (loads the library to be limited)
    from threadpoolctl import ThreadpoolController

    for pool in ThreadpoolController().lib_controllers:
        # SciPy's wheel keeps its OpenBLAS in scipy.libs/; NumPy's lives in numpy.libs/.
        if pool.internal_api == "openblas" and Path(pool.filepath).parent.name == "scipy.libs":
            pool.set_num_threads(1)


@njit(inline="always", cache=True)
def matmul(m, n, k, a, b, c, beta=0.0, trans_a=0, trans_b=0):
    """``C = op(A) @ op(B) + beta*C`` with each operand given as (flat array, offset, row
    stride) of its stored (untransposed) layout; returns 0 or ``BLAS_FAILED``, which the
    kernels pass on as their status."""
    blas_status = gemm(
        trans_a, trans_b, m, n, k, a[0], a[1], a[2], b[0], b[1], b[2], beta, c[0], c[1], c[2]
    )
    return BLAS_FAILED if blas_status != 0 else 0


@njit(inline="always", cache=True)
def matvec(rows, cols, a, x, y):
    """``y = A @ x`` with each operand given as (flat array, offset[, row stride]); returns 0
    or ``BLAS_FAILED``."""
    blas_status = gemv(rows, cols, a[0], a[1], a[2], x[0], x[1], y[0], y[1])
    return BLAS_FAILED if blas_status != 0 else 0
