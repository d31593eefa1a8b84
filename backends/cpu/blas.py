"""BLAS GEMM with leading dimensions, callable from Numba kernels.

``np.dot`` inside njit needs contiguous operands, so a kernel could not multiply into a block
of columns of a larger matrix. ``gemm`` calls BLAS's Fortran ``?gemm`` with explicit offsets
and leading dimensions, row-major::

    C[m, n] = op(A)[m, k] @ op(B)[k, n] + beta * C      (op = transpose when the flag is set)

where A, B and C are flat arrays with element offsets and row strides lda, ldb, ldc.

Which BLAS (``BLAS``, chosen once at import, before any kernel loads): Intel oneMKL where its
wheel (``mkl``, installed with ConvForge on x86-64) is present, else SciPy's OpenBLAS (a
runtime dependency). Measured on this 2-core Xeon (AVX-512), one thread, the GEMMs of ResNet
convolutions: MKL 78-91 GMAC/s, near the core's peak, SciPy's OpenBLAS 49-72 (1.15-1.85x
slower), whatever ``OPENBLAS_CORETYPE`` says. ``CONVFORGE_BLAS=openblas`` (or ``mkl``)
overrides the choice. The kernels call the routines by names of our own
(``convforge_sgemm`` ...) that ``_register`` binds to the chosen library's addresses, so
cached kernels stay cacheable and load whichever library this process chose.

Threads: convolutions run one GEMM per (image, pixel block) task on Numba's threads, so BLAS
itself runs on one thread here (MKL's sequential layer, or SciPy's OpenBLAS pinned to one
thread): two thread pools on two cores spin against each other (DESIGN.md, known traps).
"""

from __future__ import annotations

import ctypes
import os
from importlib import metadata
from pathlib import Path

import llvmlite.binding as llvm
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.core.extending import get_cython_function_address, intrinsic

ROUTINES = ("sgemm", "dgemm", "sgemv", "dgemv")
_PREFIX = {types.float32: "s", types.float64: "d"}

_char = ir.IntType(8)
_int = ir.IntType(32)  # Fortran INTEGER of the LP64 interface both libraries are used through
_void_p = _char.as_pointer()

# oneMKL's run-time controls (mkl_service.h): 32-bit integers, no threads of its own
_MKL_INTERFACE_LP64, _MKL_THREADING_SEQUENTIAL = 0, 1


def _mkl_library() -> ctypes.CDLL | None:
    """oneMKL's single dynamic library from the ``mkl`` wheel, set to LP64 and sequential, or
    None when the wheel is not installed."""
    try:
        files = metadata.files("mkl") or []
    except metadata.PackageNotFoundError:
        return None
    path = next((f.locate() for f in files if f.name.startswith("libmkl_rt.so")), None)
    if path is None:
        return None
    library = ctypes.CDLL(str(path))
    library.MKL_Set_Interface_Layer(_MKL_INTERFACE_LP64)
    library.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
    return library


def _choose() -> tuple[str, dict[str, int]]:
    """(library name, routine name -> address) for this process."""
    wanted = os.environ.get("CONVFORGE_BLAS", "auto")
    if wanted not in ("auto", "mkl", "openblas"):
        raise ValueError(f"CONVFORGE_BLAS must be auto, mkl or openblas, got {wanted!r}")
    mkl = _mkl_library() if wanted != "openblas" else None
    if mkl is not None:
        return "mkl", {
            r: ctypes.cast(getattr(mkl, r + "_"), ctypes.c_void_p).value for r in ROUTINES
        }
    if wanted == "mkl":
        raise ImportError("CONVFORGE_BLAS=mkl, but the mkl wheel is not installed; pip install mkl")
    return "openblas", {
        r: get_cython_function_address("scipy.linalg.cython_blas", r) for r in ROUTINES
    }


def _register() -> str:
    """Bind ``convforge_<routine>`` to the chosen library for the JIT; returns its name."""
    name, addresses = _choose()
    for routine, address in addresses.items():
        llvm.add_symbol(f"convforge_{routine}", address)
    return name


BLAS = _register()


def _fortran_call(context, builder, routine, dtype, arguments):
    """Call ``convforge_<s|d><routine>`` with every argument by reference, as Fortran takes
    them: ``("char", c)``, ``("int", intp value, its argument type)``, ``("real", python
    float or value, its type or None)`` or ``("pointer", void*)``."""
    passed = []
    for kind, value, *rest in arguments:
        if kind == "pointer":
            passed.append(value)
            continue
        if kind == "char":
            slot = cgutils.alloca_once_value(builder, ir.Constant(_char, ord(value)))
        elif kind == "int":
            slot = cgutils.alloca_once_value(builder, builder.trunc(value, _int))
        elif rest[0] is None:
            slot = cgutils.alloca_once_value(builder, context.get_constant(dtype, value))
        else:
            slot = cgutils.alloca_once_value(builder, context.cast(builder, value, rest[0], dtype))
        passed.append(builder.bitcast(slot, _void_p))
    fnty = ir.FunctionType(ir.VoidType(), [_void_p] * len(passed))
    name = f"convforge_{_PREFIX[dtype]}{routine}"
    builder.call(cgutils.get_or_insert_function(builder.module, fnty, name), passed)


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
    """Row-major GEMM on flat arrays (trans flags are compile-time literals or ints)."""
    sig = types.none(
        trans_a, trans_b, m, n, k, a, a_offset, lda, b, b_offset, ldb, beta, c, c_offset, ldc
    )
    dtype = c.dtype

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, a_, ao, lda_, b_, bo, ldb_, beta_, c_, co, ldc_ = args
        intp, pointer = _argument_casts(context, builder, signature)

        def trans_slot(flag, index):
            is_set = builder.icmp_signed(
                "!=", intp(flag, index), ir.Constant(intp(flag, index).type, 0)
            )
            value = builder.select(
                is_set, ir.Constant(_char, ord("t")), ir.Constant(_char, ord("n"))
            )
            return ("pointer", builder.bitcast(cgutils.alloca_once_value(builder, value), _void_p))

        # Column-major BLAS sees each row-major matrix transposed: C^T = op(B)^T op(A)^T.
        _fortran_call(
            context,
            builder,
            "gemm",
            dtype,
            [
                trans_slot(tb, 1),
                trans_slot(ta, 0),
                ("int", intp(n_, 3)),
                ("int", intp(m_, 2)),
                ("int", intp(k_, 4)),
                ("real", 1.0, None),
                ("pointer", pointer(b_, 8, bo, 9)),
                ("int", intp(ldb_, 10)),
                ("pointer", pointer(a_, 5, ao, 6)),
                ("int", intp(lda_, 7)),
                ("real", beta_, signature.args[11]),
                ("pointer", pointer(c_, 12, co, 13)),
                ("int", intp(ldc_, 14)),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def gemv(typingctx, rows, cols, a, a_offset, lda, x, x_offset, y, y_offset):
    """Row-major ``y[:rows] = A[rows, cols] @ x[:cols]`` on flat arrays (A's row stride lda).
    One sample of a linear layer: OpenBLAS's GEMM packs the whole transposed weight matrix
    whatever the batch (1.3 ms for ResNet-50's [1000, 2048] classifier at 1-4 rows), its GEMV
    streams it once (0.11 ms)."""
    sig = types.none(rows, cols, a, a_offset, lda, x, x_offset, y, y_offset)
    dtype = y.dtype

    def codegen(context, builder, signature, args):
        rows_, cols_, a_, ao, lda_, x_, xo, y_, yo = args
        intp, pointer = _argument_casts(context, builder, signature)
        # Column-major BLAS sees the row-major A as its transpose [cols, rows]: y = (A^T)^T x.
        _fortran_call(
            context,
            builder,
            "gemv",
            dtype,
            [
                ("char", "t"),
                ("int", intp(cols_, 1)),
                ("int", intp(rows_, 0)),
                ("real", 1.0, None),
                ("pointer", pointer(a_, 2, ao, 3)),
                ("int", intp(lda_, 4)),
                ("pointer", pointer(x_, 5, xo, 6)),
                ("int", ir.Constant(cgutils.intp_t, 1)),
                ("real", 0.0, None),
                ("pointer", pointer(y_, 7, yo, 8)),
                ("int", ir.Constant(cgutils.intp_t, 1)),
            ],
        )
        return context.get_dummy_value()

    return sig, codegen


def single_threaded_blas() -> None:
    """Pin SciPy's OpenBLAS (the one the kernels call when MKL is absent) to one thread;
    NumPy's BLAS is untouched. MKL was set sequential when it loaded."""
    if BLAS != "openblas":
        return
    from threadpoolctl import ThreadpoolController

    for pool in ThreadpoolController().lib_controllers:
        # SciPy's wheel keeps its OpenBLAS in scipy.libs/; NumPy's lives in numpy.libs/.
        if pool.internal_api == "openblas" and Path(pool.filepath).parent.name == "scipy.libs":
            pool.set_num_threads(1)


@njit(inline="always", cache=True)
def matmul(m, n, k, a, b, c, beta=0.0, trans_a=0, trans_b=0):
    """``C = op(A) @ op(B) + beta*C`` with each operand given as (flat array, offset, row
    stride) of its stored (untransposed) layout."""
    gemm(trans_a, trans_b, m, n, k, a[0], a[1], a[2], b[0], b[1], b[2], beta, c[0], c[1], c[2])


@njit(inline="always", cache=True)
def matvec(rows, cols, a, x, y):
    """``y = A @ x`` with each operand given as (flat array, offset[, row stride])."""
    gemv(rows, cols, a[0], a[1], a[2], x[0], x[1], y[0], y[1])
