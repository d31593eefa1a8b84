"""The CPU emulator of the GPU kernels (``backends/gpu/emulator.py`` and
``backends/gpu/emulation/cuda_emulation.h``), run on the small kernels of ``kernels/`` beside
this file and checked against NumPy. Outputs are poisoned (NaN, -1) before each launch, so an
element a kernel fails to write shows."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from backends.gpu import emulator
from backends.gpu.emulator import EmulatedModule, load_module

KERNELS = Path(__file__).parent / "kernels"
SUFFIX = {np.float32: "f32", np.float64: "f64"}
RTOL = {np.float32: 1e-5, np.float64: 1e-12}
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])


def module(name: str) -> EmulatedModule:
    return load_module(KERNELS / f"{name}.cu")


def address(array: np.ndarray) -> np.uint64:
    return np.uint64(array.ctypes.data)


@dtypes
def test_grid_stride_loop_covers_a_size_not_a_multiple_of_the_grid(dtype):
    n, rng = 1000, np.random.default_rng(0)
    x = rng.standard_normal(n).astype(dtype)
    y = np.full(n + 8, np.nan, dtype)  # 8 past the end must stay untouched
    args = (address(x), address(y), np.float64(1.5), np.float32(0.25), np.int32(-3), np.int64(n))
    module("elementwise").launch(f"axpb_{SUFFIX[dtype]}", (3, 1, 1), (128, 1, 1), 0, args)
    expected = dtype(1.5) * x + dtype(0.25) * np.arange(n, dtype=dtype) + dtype(-3)
    np.testing.assert_allclose(y[:n], expected, rtol=RTOL[dtype])
    assert np.isnan(y[n:]).all()


@dtypes
@pytest.mark.parametrize("kernel", ["block_sum", "block_sum_dynamic"])
@pytest.mark.parametrize("block", [64, 256, 1024])
def test_block_reduction_with_shared_memory_and_warp_shuffles(dtype, kernel, block):
    grid, n = 5, 3 * 1024 + 17
    x = np.random.default_rng(1).standard_normal(n).astype(dtype)
    partial = np.full(grid, np.nan, dtype)
    shared_bytes = block * np.dtype(dtype).itemsize if kernel == "block_sum_dynamic" else 0
    module("reduce").launch(
        f"{kernel}_{SUFFIX[dtype]}",
        (grid, 1, 1),
        (block, 1, 1),
        shared_bytes,
        (address(x), address(partial), np.int64(n)),
    )
    owner = np.arange(n) // block % grid  # block b sums x[b*block + t + k*block*grid]
    expected = np.array([x[owner == b].astype(np.float64).sum() for b in range(grid)])
    np.testing.assert_allclose(partial, expected, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)


@dtypes
def test_dynamic_shared_memory_is_poisoned_before_each_block(dtype):
    y = np.zeros(3 * 64, dtype)
    module("reduce").launch(
        f"read_fresh_shared_{SUFFIX[dtype]}",
        (3, 1, 1),
        (64, 1, 1),
        64 * np.dtype(dtype).itemsize,
        (address(y),),
    )
    assert np.isnan(y).all()


@pytest.mark.parametrize("block", [64, 256])
def test_ucontext_fallback(block, tmp_path, monkeypatch):
    """Hosts other than x86-64 switch fibers with ucontext; CF_EMULATION_UCONTEXT forces it."""
    monkeypatch.setenv("CONVFORGE_CACHE", str(tmp_path))
    monkeypatch.setattr(emulator, "FLAGS", (*emulator.FLAGS, "-DCF_EMULATION_UCONTEXT"))
    x = np.arange(1000, dtype=np.float64)
    partial = np.full(2, np.nan)
    reduce = EmulatedModule(KERNELS / "reduce.cu")
    args = (address(x), address(partial), np.int64(x.size))
    reduce.launch("block_sum_f64", (2, 1, 1), (block, 1, 1), 0, args)
    owner = np.arange(x.size) // block % 2
    np.testing.assert_array_equal(partial, [x[owner == 0].sum(), x[owner == 1].sum()])


@dtypes
@pytest.mark.parametrize(
    "grid, block",
    [
        ((1, 1, 1), (1, 1, 1)),
        ((5, 1, 1), (33, 1, 1)),
        ((3, 2, 1), (8, 4, 1)),
        ((2, 3, 2), (4, 2, 3)),
    ],
)
def test_thread_and_block_indices_of_2d_and_3d_launches(dtype, grid, block):
    threads = int(np.prod(grid) * np.prod(block))
    ids = np.full((threads, 12), -1, np.int64)
    rank = np.full(threads, np.nan, dtype)
    order = np.full(int(np.prod(grid)), -1, np.int64)
    clock = np.zeros(1, np.uint64)
    module("indexing").launch(
        f"thread_ids_{SUFFIX[dtype]}",
        grid,
        block,
        0,
        (address(ids), address(rank), address(order), address(clock)),
    )
    # The rank is C order over (block z, y, x, thread z, y, x).
    (gx, gy, gz), (bx, by, bz) = grid, block
    bz_, by_, bx_, tz, ty, tx = np.indices((gz, gy, gx, bz, by, bx)).reshape(6, -1)
    dims = np.broadcast_to([bx, by, bz, gx, gy, gz], (threads, 6))
    expected = np.column_stack([tx, ty, tz, bx_, by_, bz_, dims])
    np.testing.assert_array_equal(ids, expected)
    np.testing.assert_array_equal(rank, np.arange(threads, dtype=dtype))
    np.testing.assert_array_equal(order, np.arange(order.size))  # blocks x fastest, then y, z


@dtypes
def test_atomics(dtype):
    n, bins, rng = 5000, 7, np.random.default_rng(2)
    keys = rng.integers(0, 2**20, n, dtype=np.int32)
    values = rng.standard_normal(n).astype(dtype)
    counts = np.zeros(bins, np.int32)
    total = np.zeros(1, dtype)
    seen = np.zeros(1, np.uint64)
    extremes = np.array([np.iinfo(np.int32).min, np.iinfo(np.int32).max], np.int32)
    args = (keys, values, counts, total, seen, extremes)
    module("atomics").launch(
        f"histogram_{SUFFIX[dtype]}",
        (4, 1, 1),
        (128, 1, 1),
        0,
        (*(address(a) for a in args), np.int32(bins), np.int64(n)),
    )
    np.testing.assert_array_equal(counts, np.bincount(keys % bins, minlength=bins))
    np.testing.assert_allclose(total[0], values.astype(np.float64).sum(), rtol=RTOL[dtype] * 100)
    assert seen[0] == n
    np.testing.assert_array_equal(extremes, [keys.max(), keys.min()])


def _warp_expectation(block: int, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """What warp.cu's threads write, by CUDA's rules. A lane of the block's partial last warp
    that reads a lane past the block gets the emulator's poison (NaN, all bits set)."""
    reals = np.full((block, 7), np.nan, dtype)
    ints = np.full((block, 6), -1, np.int64)
    v = [dtype(u) + dtype(0.5) for u in range(block)]
    for t in range(block):
        lane, first = t % 32, t - t % 32
        lanes = min(32, block - first)  # live lanes of this warp

        def read(source: int, own: int = t, lanes: int = lanes, first: int = first) -> int | None:
            """The thread read from warp lane ``source`` (None: outside the group)."""
            return own if source < 0 else first + source if source < lanes else None

        start16, start8 = lane & ~15, lane & ~7
        sources = [
            read(3),
            read(lane - 2 if lane - 2 >= start8 else -1),
            read(lane + 5 if lane + 5 < start16 + 16 else -1),
            read(lane ^ 9 if lane ^ 9 < start8 + 8 else -1),
            None if lanes < 32 else -1,  # the butterfly reads lane ^ 16
            read(lane + 16 if lane + 16 < 32 else -1),
            read(lane ^ 1 if lane < 16 else lane ^ 2),
        ]
        for k, source in enumerate(sources):
            if source is not None and k != 4:
                reals[t, k] = v[source]
        if lanes == 32:
            reals[t, 4] = sum(v[first : first + 32])
        ints[t, 0] = sum(1 << u for u in range(lanes) if u % 3 == 0)
        ints[t, 1] = int(first <= 5 < first + lanes)
        ints[t, 2] = int(lanes < 32)
        source = read((lane + 1) % 32)
        ints[t, 3] = -1 if source is None else source
        source = read(lane + 1 if lane + 1 < 32 else -1)
        ints[t, 4] = 2**32 - 1 if source is None else source
        source = read(lane ^ 16)
        ints[t, 5] = -1 if source is None else source
    return reals, ints


@dtypes
@pytest.mark.parametrize("block", [64, 48], ids=["full_warps", "partial_warp"])
def test_warp_shuffles_ballots_and_votes(dtype, block):
    reals = np.full((block, 7), np.inf, dtype)
    ints = np.full((block, 6), -7, np.int64)
    module("warp").launch(
        f"warp_ops_{SUFFIX[dtype]}", (2, 1, 1), (block, 1, 1), 0, (address(reals), address(ints))
    )
    expected_reals, expected_ints = _warp_expectation(block, dtype)
    np.testing.assert_allclose(reals, expected_reals, rtol=RTOL[dtype])
    np.testing.assert_array_equal(ints, expected_ints)


@dtypes
def test_returned_threads_do_not_hold_up_later_barriers(dtype):
    grid, active = 3, 100
    y = np.full(grid * active, np.nan, dtype)
    module("barriers").launch(
        f"early_exit_{SUFFIX[dtype]}", (grid, 1, 1), (256, 1, 1), 0, (address(y), np.int64(active))
    )
    np.testing.assert_array_equal(y, np.tile(np.arange(active - 1, -1, -1), grid))


@pytest.mark.parametrize(
    "kernel, args, message",
    [
        (
            "divergent_barrier_f32",
            (np.int64(64),),
            r"divergent_barrier_f32 \(barriers.cu\): deadlock in block \(0, 0, 0\): threads 0-63 "
            r"wait at __syncthreads\(\) \(barriers.cu:\d+\); threads 64-127 wait at "
            r"__syncthreads\(\) \(barriers.cu:\d+\); 0 threads returned",
        ),
        (
            "warp_block_mismatch_f64",
            (),
            r"threads 0-15 wait at __shfl_down_sync with mask 0xffffffff \(barriers.cu:\d+\); "
            r"threads 16-127 wait at __syncthreads\(\)",
        ),
    ],
    ids=["divergent_barrier", "warp_block_mismatch"],
)
def test_deadlock_raises_and_names_who_waits_where(kernel, args, message):
    y = np.zeros(128, np.float64)
    barriers = module("barriers")
    with pytest.raises(RuntimeError, match=message):
        barriers.launch(kernel, (2, 1, 1), (128, 1, 1), 0, (address(y), *args))
    # The module is usable after a deadlock.
    barriers.launch("early_exit_f64", (1, 1, 1), (128, 1, 1), 0, (address(y), np.int64(4)))
    np.testing.assert_array_equal(y[:4], [3, 2, 1, 0])


def test_launches_from_several_threads_at_once():
    """Launches of one library take turns (a mutex); each thread gets its own error."""
    x = np.arange(4096, dtype=np.float64)
    owner = np.arange(x.size) // 256 % 4
    sums = np.array([x[owner == b].sum() for b in range(4)])
    reversed_ = np.arange(99, -1, -1, dtype=np.float64)

    def run(job: int) -> bool:
        y = np.full(128, np.nan)
        if job % 4 == 0:  # a deadlock, while other threads launch kernels of the same library
            with pytest.raises(RuntimeError, match="deadlock"):
                module("barriers").launch(
                    "divergent_barrier_f64", (1, 1, 1), (128, 1, 1), 0, (address(y), np.int64(9))
                )
            return True
        if job % 4 == 1:
            args = (address(y), np.int64(100))
            module("barriers").launch("early_exit_f64", (1, 1, 1), (128, 1, 1), 0, args)
            return np.array_equal(y[:100], reversed_)
        kernel, shared_bytes = (
            ("block_sum_f64", 0) if job % 4 == 2 else ("block_sum_dynamic_f64", 2048)
        )
        args = (address(x), address(y), np.int64(x.size))
        module("reduce").launch(kernel, (4, 1, 1), (256, 1, 1), shared_bytes, args)
        return np.array_equal(y[:4], sums)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(run, range(32)))


def test_a_mask_without_the_calling_lane_raises():
    y = np.zeros(32, np.float32)
    barriers = module("barriers")
    with pytest.raises(RuntimeError, match=r"mask 0x00000001 does not name the calling lane 1"):
        barriers.launch("mask_without_caller_f32", (1, 1, 1), (32, 1, 1), 0, (address(y),))


@pytest.mark.parametrize(
    "grid, block, shared_bytes, message",
    [
        ((1, 1, 1), (2048, 1, 1), 0, r"block \(2048, 1, 1\) has 2048 threads"),
        ((1, 1, 1), (32, 32, 2), 0, r"block \(32, 32, 2\) has 2048 threads"),
        ((1, 1, 1), (1, 1, 65), 0, r"block \(1, 1, 65\)"),
        ((0, 1, 1), (32, 1, 1), 0, r"grid \(0, 1, 1\)"),
        ((1, 1, 1), (32, 1, 1), 300_000, "300000 bytes of dynamic shared memory"),
    ],
)
def test_invalid_launch_shapes_raise(grid, block, shared_bytes, message):
    y = np.zeros(4)
    with pytest.raises(RuntimeError, match=f"axpb_f64 .*invalid launch: {message}"):
        module("elementwise").launch(
            "axpb_f64",
            grid,
            block,
            shared_bytes,
            (address(y), address(y), np.float64(0), np.float32(0), np.int32(0), np.int64(0)),
        )


def test_launch_arguments_are_checked():
    elementwise = module("elementwise")
    with pytest.raises(ValueError, match="exports no kernel 'axpb'"):
        elementwise.launch("axpb", (1, 1, 1), (1, 1, 1), 0, ())
    with pytest.raises(ValueError, match=r"block must be 3 integers"):
        elementwise.launch("axpb_f32", (1, 1, 1), (-1, 1, 1), 0, ())
    with pytest.raises(TypeError, match="argument 2 must be a NumPy scalar.*int 3"):
        elementwise.launch("axpb_f32", (1, 1, 1), (1, 1, 1), 0, (np.uint64(0), np.uint64(0), 3))


def test_compile_error_raises_with_the_compiler_message(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVFORGE_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "broken.cu"
    broken.write_text('#include "common.cuh"\nint f() { return undeclared_name; }\n')
    with pytest.raises(RuntimeError, match=r"(?s)could not compile .*broken.cu.*undeclared_name"):
        EmulatedModule(broken)
    assert list((tmp_path / "cache").iterdir()) == []  # no library, no temporary file


def test_cache_key_covers_included_headers(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVFORGE_CACHE", str(tmp_path / "cache"))
    source, header = tmp_path / "scale.cu", tmp_path / "factor.h"
    source.write_text(
        '#include "common.cuh"\n#include "factor.h"\n'
        "template <typename T> __device__ void scale(T* y, long long n) {\n"
        "    CF_FOR_EACH(i, n) { y[i] *= T(FACTOR); }\n}\n"
        "CF_EXPORT(scale, (T* y, long long n), (y, n))\n"
    )
    y = np.ones(10)
    for factor in (2, 2, 3):
        header.write_text(f"#define FACTOR {factor}\n")
        built = EmulatedModule(source)
        built.launch("scale_f64", (1, 1, 1), (4, 1, 1), 0, (address(y), np.int64(y.size)))
    np.testing.assert_array_equal(y, np.full(10, 12.0))
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".so", ".so"]


@pytest.mark.parametrize("source", sorted(KERNELS.glob("*.cu")), ids=lambda p: p.name)
def test_kernel_compiles_for_sm_90_without_warnings(source, tmp_path):
    if shutil.which("nvcc") is None:
        pytest.skip("nvcc is not on PATH (CUDA toolkit not installed)")
    command = ["nvcc", "-cubin", "-arch=sm_90", "-o", str(tmp_path / "kernel.cubin"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr
