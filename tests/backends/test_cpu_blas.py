"""The kernels' BLAS door (``backends/cpu/blas.py``): which library this process bound, the
row-major GEMM/GEMV intrinsics with offsets, leading dimensions and transposes against NumPy,
and ``CONVFORGE_BLAS`` switching libraries under the same cached kernels.

Each library choice is per process (the routines are bound at import), so the other library
runs in a subprocess; both must give the same forward pass and gradients within float
rounding (different GEMM blockings sum in different orders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from backends.cpu import blas

REPO_ROOT = Path(__file__).resolve().parents[2]


def _has_mkl_wheel() -> bool:
    try:
        return any(f.name.startswith("libmkl_rt.so") for f in metadata.files("mkl") or [])
    except metadata.PackageNotFoundError:
        return False


def test_mkl_is_chosen_where_its_wheel_is_installed():
    wanted = os.environ.get("CONVFORGE_BLAS", "auto")
    expected = {"mkl": "mkl", "openblas": "openblas"}.get(
        wanted, "mkl" if _has_mkl_wheel() else "openblas"
    )
    assert blas.BLAS == expected


@njit
def _gemm(m, n, k, a, a_offset, lda, b, b_offset, ldb, c, c_offset, ldc, beta, ta, tb):
    blas.matmul(m, n, k, (a, a_offset, lda), (b, b_offset, ldb), (c, c_offset, ldc), beta, ta, tb)


@njit
def _gemv(rows, cols, a, a_offset, lda, x, x_offset, y, y_offset):
    blas.matvec(rows, cols, (a, a_offset, lda), (x, x_offset), (y, y_offset))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("beta", [0.0, 1.0, 0.5])
def test_gemm_on_blocks_of_larger_matrices(dtype, trans_a, trans_b, beta):
    """C[2:2+m, 3:3+n] of a wider matrix = op(A) @ op(B) + beta*C, A and B blocks of wider
    matrices, at element offsets; the rest of C is untouched."""
    rng = np.random.default_rng()
    m, n, k = 7, 5, 9
    a_full = rng.standard_normal((k + 3, m + 4) if trans_a else (m + 3, k + 4)).astype(dtype)
    b_full = rng.standard_normal((n + 2, k + 6) if trans_b else (k + 2, n + 6)).astype(dtype)
    c_full = rng.standard_normal((m + 4, n + 5)).astype(dtype)
    a_block = a_full[1 : 1 + (k if trans_a else m), 2 : 2 + (m if trans_a else k)]
    b_block = b_full[1 : 1 + (n if trans_b else k), 3 : 3 + (k if trans_b else n)]
    expected = c_full.copy()
    op_a, op_b = (a_block.T if trans_a else a_block), (b_block.T if trans_b else b_block)
    expected[2 : 2 + m, 3 : 3 + n] = op_a @ op_b + beta * c_full[2 : 2 + m, 3 : 3 + n]
    a_cols, b_cols, c_cols = a_full.shape[1], b_full.shape[1], c_full.shape[1]
    c = c_full.reshape(-1).copy()
    _gemm(
        m,
        n,
        k,
        a_full.reshape(-1),
        a_cols + 2,
        a_cols,
        b_full.reshape(-1),
        b_cols + 3,
        b_cols,
        c,
        2 * c_cols + 3,
        c_cols,
        beta,
        trans_a,
        trans_b,
    )
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(c.reshape(c_full.shape), expected, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemv_on_a_block(dtype):
    """y[4:4+rows] = A[1:1+rows, 2:2+cols] @ x[3:3+cols]; NaN-poisoned y outside is kept."""
    rng = np.random.default_rng()
    rows, cols = 11, 6
    a = rng.standard_normal((rows + 2, cols + 5)).astype(dtype)
    x = rng.standard_normal(cols + 4).astype(dtype)
    y = np.full(rows + 7, np.nan, dtype)
    _gemv(rows, cols, a.reshape(-1), a.shape[1] + 2, a.shape[1], x, 3, y, 4)
    rtol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(
        y[4 : 4 + rows], a[1 : 1 + rows, 2 : 2 + cols] @ x[3 : 3 + cols], rtol=rtol, atol=rtol
    )
    assert np.isnan(y[:4]).all() and np.isnan(y[4 + rows :]).all()


# A training step through every GEMM caller: im2col and pointwise convs, Winograd, the
# shifted 3x3, the classifier (GEMV at 4 rows and below, GEMM above), both conv gradients.
_STEP = """
import json, sys
import numpy as np
import engine
import graph.nn as nn
from backends.cpu import blas

model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
    nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    nn.Conv2d(32, 16, 1), nn.ReLU(),
    nn.Conv2d(16, 24, 5, stride=2, padding=2), nn.ReLU(),
    nn.Flatten(), nn.Linear(24 * 8 * 8, 10),
)
results = {"blas": blas.BLAS}
for batch in (2, 8):
    exe = engine.compile(model, (3, 16, 16), batch=batch, train=True, loss="cross_entropy")
    rng = np.random.default_rng(batch)
    for name, array in exe.params.items():
        array[...] = rng.standard_normal(array.shape) / np.sqrt(array[0].size)
    x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
    target = rng.integers(0, 10, batch)
    results[f"loss{batch}"] = exe.forward_backward(x, target)
    results[f"output{batch}"] = exe.eval().run(x).tolist()
    results.update({f"{k}{batch}": v.tolist() for k, v in exe.grads.items()})
json.dump(results, sys.stdout)
"""


def _step_in_subprocess(choice: str | None) -> dict:
    env = dict(os.environ)
    env.pop("CONVFORGE_BLAS", None)
    if choice is not None:
        env["CONVFORGE_BLAS"] = choice
    result = subprocess.run(
        [sys.executable, "-c", _STEP],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def test_openblas_and_the_default_library_agree_on_a_training_step():
    default, openblas = _step_in_subprocess(None), _step_in_subprocess("openblas")
    assert openblas["blas"] == "openblas"
    assert default["blas"] == ("mkl" if _has_mkl_wheel() else "openblas")
    assert default.keys() == openblas.keys()
    for key in default.keys() - {"blas"}:
        ours, theirs = np.asarray(default[key]), np.asarray(openblas[key])
        assert np.isfinite(ours).all(), key
        scale = np.abs(theirs).max()
        assert np.abs(ours - theirs).max() <= 1e-5 * scale, key


def test_a_bad_choice_fails_at_import_in_one_line():
    env = dict(os.environ, CONVFORGE_BLAS="cublas")
    result = subprocess.run(
        [sys.executable, "-c", "import backends.cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
        env=env,
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last == "ValueError: CONVFORGE_BLAS must be auto, mkl or openblas, got 'cublas'"
