"""backends/cpu/simd.py: each vector operation against NumPy on fresh random data, in float32
(16 lanes) and float64 (8 lanes), with full and partial lane counts; masked loads and stores
never touch memory past the lanes they were given (checked against a guard page)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit

from backends.cpu import simd
from tests.helpers import DTYPES


@njit(cache=True)
def _loads(a, out, i, count, table):
    """out[0:], out[64:] = each load of a at i: contiguous, gathered through table."""
    simd.store(out, 0, simd.load(a, i, count), count)
    simd.store(out, 64, simd.load_gather(a, i, table, count), count)
    return simd.lanes(a)


@njit(cache=True)
def _arithmetic(a, b, out, scale):
    v, w = simd.load(a, 0, 64), simd.load(b, 0, 64)
    simd.store(out, 0, v + w, 64)
    simd.store(out, 64, v - w, 64)
    simd.store(out, 128, v * w, 64)
    simd.store(out, 192, scale * v - w * scale + v * 2, 64)
    simd.store(out, 256, -v, 64)


@njit(cache=True)
def _interleave(a, out, at, count):
    v0, v1 = simd.load(a, 0, 64), simd.load(a, 16, 64)
    v2, v3 = simd.load(a, 32, 64), simd.load(a, 48, 64)
    simd.store_interleaved(out, at, (v0, v1), 0, count)
    simd.store_interleaved(out, at + 100, (v0, v1, v2, v3), 0, count)
    simd.store_interleaved(out, at + 200, (v0, v1, v2, v3), 3, count)


@njit(cache=True)
def _window(a, out, i, step, start, stop):
    simd.store(out, 0, simd.load_lanes(a, i, step, simd.window_bits(start, stop)), 64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [1, 2, 3])
@pytest.mark.parametrize("start,stop", [(0, 64), (1, 7), (0, 3), (2, 2), (5, 64)])
def test_load_lanes_matches_numpy(dtype, step, start, stop, rng):
    """Lanes start <= l < stop of a[i + l * step], zeros elsewhere, at a window whose first
    lanes would fall left of the array (i = -1 with lane 0 masked off, as padding does)."""
    lanes = 64 // np.dtype(dtype).itemsize
    a = rng.standard_normal(100).astype(dtype)
    for i in (-1, 0, 7) if start > 0 else (0, 7):
        out = _poisoned(lanes, dtype)
        _window(a, out, i, step, start, stop)
        expected = np.zeros(lanes, dtype)
        on = np.arange(lanes)[start : min(stop, lanes)]
        expected[on] = a[i + on * step]
        np.testing.assert_array_equal(out, expected)


def _poisoned(n: int, dtype) -> np.ndarray:
    return np.full(n, np.nan, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 3, 8, 16, 40])
def test_loads_match_numpy(dtype, count, rng):
    lanes = 64 // np.dtype(dtype).itemsize
    a = rng.standard_normal(300).astype(dtype)
    table = rng.integers(0, 60, 16).astype(np.int32)
    out = _poisoned(128, dtype)
    i = int(rng.integers(0, 20))
    assert _loads(a, out, i, count, table) == lanes
    n = min(count, lanes)
    expected = {0: a[i : i + n], 64: a[i + table[:n]]}
    for at, values in expected.items():
        np.testing.assert_array_equal(out[at : at + n], values)
        assert np.isnan(out[at + n : at + 64]).all(), "a store wrote past its count"


@pytest.mark.parametrize("dtype", DTYPES)
def test_arithmetic_is_numpy_lane_by_lane(dtype, rng):
    """Same bits as NumPy's element-wise operations (no fused multiply-add), a scalar
    operand cast to the vector's type."""
    lanes = 64 // np.dtype(dtype).itemsize
    a, b = rng.standard_normal(lanes).astype(dtype), rng.standard_normal(lanes).astype(dtype)
    out = _poisoned(320, dtype)
    _arithmetic(a, b, out, 0.75)
    real = np.dtype(dtype).type
    scale = real(0.75)
    expected = [a + b, a - b, a * b, scale * a - b * scale + a * real(2), -a]
    for k, values in enumerate(expected):
        np.testing.assert_array_equal(out[64 * k : 64 * k + lanes], values)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [1, 5, 16, 64])
def test_store_interleaved(dtype, count, rng):
    lanes = 64 // np.dtype(dtype).itemsize
    a = rng.standard_normal(64).astype(dtype)
    out = _poisoned(500, dtype)
    _interleave(a, out, 7, count)
    vectors = [a[16 * j : 16 * j + lanes] for j in range(4)]
    for at, k, start in ((7, 2, 0), (107, 4, 0), (207, 4, 3)):
        n = min(count, k * lanes)
        interleaved = np.stack(vectors[:k], 1).ravel()
        np.testing.assert_array_equal(out[at + start : at + n], interleaved[start:n])
        assert np.isnan(out[at : at + start]).all() and np.isnan(out[at + n : at + 100]).all()


@njit(cache=True)
def _transposed(a, i, stride, rows, columns, out):
    simd.transpose(a, i, stride, rows, columns, out, 3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,columns", [(16, 16), (3, 16), (16, 5), (1, 1), (7, 9), (0, 4)])
def test_transpose_turns_a_block_around(dtype, rows, columns, rng):
    """out[3 + c * lanes + k] = a[i + k * stride + c] inside rows x columns, zero elsewhere in
    the lanes x lanes block, nothing written past it."""
    lanes = 64 // np.dtype(dtype).itemsize
    rows, columns = min(rows, lanes), min(columns, lanes)
    a = rng.standard_normal(600).astype(dtype)
    out = _poisoned(3 + lanes * lanes + 10, dtype)
    _transposed(a, 5, 31, rows, columns, out)
    expected = np.zeros((lanes, lanes), dtype)  # [column][row]
    for k in range(rows):
        expected[:columns, k] = a[5 + k * 31 : 5 + k * 31 + columns]
    np.testing.assert_array_equal(out[3 : 3 + lanes * lanes].reshape(lanes, lanes), expected)
    assert np.isnan(out[:3]).all() and np.isnan(out[3 + lanes * lanes :]).all()


@njit(cache=True)
def _activations(a, out, low, high):
    v = simd.load(a, 0, 64)
    simd.store(out, 0, simd.relu(v), 64)
    simd.store(out, 64, simd.clamp(v, low, high), 64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_and_clamp_are_the_epilogues(dtype, rng):
    """relu and clamp give the scalar epilogue's values, NaN and signed zeros included."""
    lanes = 64 // np.dtype(dtype).itemsize
    a = (3 * rng.standard_normal(64)).astype(dtype)
    a[:4] = [np.nan, -0.0, 0.0, 6.0]
    out = _poisoned(128, dtype)
    _activations(a, out, 0.0, 6.0)
    v = a[:lanes]
    relu = np.array([0 if x <= 0 else x for x in v], dtype)
    clamp = np.array([0.0 if x < 0.0 else (6.0 if x > 6.0 else x) for x in v], dtype)
    np.testing.assert_array_equal(out[:lanes], relu)
    np.testing.assert_array_equal(out[64 : 64 + lanes], clamp)
    assert np.signbit(out[1]) == np.signbit(relu[1]) and np.signbit(out[65]) == np.signbit(clamp[1])


def test_masked_lanes_never_touch_the_next_page():
    """Loads and stores of a partial vector at an array's very end, right before a page that
    may not be read or written: only the counted lanes are touched (else the process dies)."""
    script = textwrap.dedent(
        """
        import ctypes, mmap
        import numpy as np
        from numba import njit
        from backends.cpu import simd

        page = mmap.PAGESIZE
        block = mmap.mmap(-1, 2 * page)
        base = ctypes.addressof(ctypes.c_char.from_buffer(block))
        libc = ctypes.CDLL(None)
        assert libc.mprotect(ctypes.c_void_p(base + page), page, 0) == 0  # PROT_NONE
        a = np.frombuffer(block, np.float32, page // 4)  # ends at the guard page
        a[:] = 1.0

        @njit
        def touch(a, table):
            n = a.shape[0]
            total = simd.load(a, n - 3, 3) + simd.load_gather(a, n - 3, table, 3)
            total = total + simd.load(a, n - 3, 3)
            total = total + simd.load_lanes(a, n - 3, 1, simd.window_bits(0, 3))
            total = total - simd.load_lanes(a, n - 5, 2, simd.window_bits(1, 3))
            simd.store(a, n - 3, total, 3)
            simd.store_interleaved(a, n - 6, (total, total), 0, 6)
            simd.store_interleaved(a, n - 7, (total, total), 2, 6)
            out = np.zeros(256, np.float32)
            simd.transpose(a, n - 16, 7, 3, 2, out, 0)  # its last row ends at the guard page
            return a[n - 1] + out[0] - a[n - 16]

        print(touch(a, np.arange(16, dtype=np.int32)))
        """
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) == 3.0


@njit(cache=True)
def _doubles(a, out, i, count):
    v = simd.load_double(a, i, count) + simd.broadcast(0.5)
    simd.store(out, 0, v, 8)
    return simd.total(v)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count", [3, 8])
def test_load_double_broadcast_and_total(dtype, count, rng):
    """float64 lanes from either dtype, exactly widened; the total adds lanes in order."""
    a = rng.standard_normal(40).astype(dtype)
    out = _poisoned(8, np.float64)
    total = _doubles(a, out, 5, count)
    expected = np.zeros(8)
    expected[:count] = a[5 : 5 + count].astype(np.float64)
    expected += 0.5
    np.testing.assert_array_equal(out, expected)
    ordered = 0.0
    for value in expected:
        ordered += value
    assert total == ordered


@pytest.mark.parametrize("cpu", ["haswell", "generic"])
def test_vectors_are_exact_without_avx512(cpu, tmp_path):
    """64-byte vectors on a CPU without AVX-512 (AVX2, or x86-64's baseline SSE2): LLVM
    splits them and emulates the masked and gathered accesses; the loads, stores and sums
    still give NumPy's values (the tests above, run in a process compiled for ``cpu``)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "NUMBA_CPU_NAME": cpu, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "not avx512 and not page",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=root,
        env=env,
    )
    assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:]
