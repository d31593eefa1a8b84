"""Benchmark helpers: median timing, the machine's BLAS and threading facts, table printing.

Benchmarks print tables side by side with PyTorch from one run; they are never tests.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable


def median_time(
    func: Callable[[], object], repeat: int = 15, warmup: int = 3, min_seconds: float = 0.0
) -> float:
    """Median wall time of ``func()`` in seconds, after ``warmup`` untimed calls. With
    ``min_seconds``, each sample loops ``func`` until that long has passed (for µs timings)."""
    for _ in range(warmup):
        func()
    samples = []
    for _ in range(repeat):
        calls, start = 0, time.perf_counter()
        while True:
            func()
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= min_seconds:
                break
        samples.append(elapsed / calls)
    samples.sort()
    return samples[len(samples) // 2]


def interleaved_medians(
    funcs: list[Callable[[], object]], rounds: int = 5, block: int = 10, warmup: int = 3
) -> list[float]:
    """Median wall time of each ``func()`` in seconds, timed in alternating blocks of
    ``block`` consecutive calls (after ``warmup`` calls at the start of each block), so that
    drifting load on a shared machine hits every contender alike, while each runs warm: one
    engine's spinning thread pool never sits between two calls of the other."""
    samples: list[list[float]] = [[] for _ in funcs]
    for _ in range(rounds):
        for func, times in zip(funcs, samples, strict=True):
            for _ in range(warmup):
                func()
            for _ in range(block):
                start = time.perf_counter()
                func()
                times.append(time.perf_counter() - start)
    return [sorted(times)[len(times) // 2] for times in samples]


def environment_line() -> str:
    """What changes the numbers: the kernels' BLAS, NumPy's BLAS core type, threads, Numba's
    threading layer, FTZ."""
    import numba
    import torch

    from backends.cpu import blas

    coretype = os.environ.get("OPENBLAS_CORETYPE", "unset (native AVX-512 kernels)")
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = "not started"
    return (
        f"cpu={platform.processor() or platform.machine()} cores={os.cpu_count()} "
        f"kernels_blas={blas.BLAS} OPENBLAS_CORETYPE={coretype} numba={numba.__version__} "
        f"threading_layer={layer} torch={torch.__version__} "
        f"torch_threads={torch.get_num_threads()} flush-to-zero=off"
    )


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=False))
    )
    print(line(header))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))
