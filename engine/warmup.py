"""``convforge warmup``: compile every CPU kernel variant into Numba's cache, on every core.

A kernel has up to a dozen variants (float32/float64 x serial/parallel, plus the aliased ones of
in-place steps, ``Kernel.shim``); compiled from scratch they take minutes of one core, cached
they load in milliseconds. ``warmup`` lists the variants in this process and compiles them in a
pool of worker processes, one task per variant, with a progress bar:

- Workers are spawned, not forked: each starts its own Numba, and ``Kernel.shim`` launches its
  thread pool before any cached cfunc loads (DESIGN.md, known traps).
- Numba's cache files are shared through the file system. Each file is written atomically
  (a temporary file, then ``os.replace``), but adding an entry to a function's index is
  load-modify-replace: two processes adding different signatures of one function at once
  (``relu_parallel`` for float32 and for float64; ``conv.im2col_images``, which kernels of two
  modules call) can lose one entry, or pair it with the other's data file. The workers hold one
  lock around each index-and-data load or save (``_locked_cache_files``), so that cannot happen
  between them.
- The most expensive variants go first (parallel before serial, longest kernel source first), so
  the last tasks are short and the cores finish together.
- Numba functions outside the plans' kernels (the ``.cfz`` coders of ``graph/compress`` and the
  augmentation kernels of ``engine/augment.py``, ``HELPERS_VARIANT``) are compiled by running
  their public paths once on tiny inputs: those paths convert every argument to fixed types, so
  the signatures compiled are the ones a real ``convforge compress`` or ``train --augment``
  asks for (from a cold cache they took about 2 s for the coders and 4 s for the augmentation
  kernels, measured with a CI run beside).
"""

from __future__ import annotations

import functools
import inspect
import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from tqdm import tqdm

Variant = tuple[int, str, bool, tuple[int, ...] | None]  # (kernel index, dtype, parallel, sources)
# The int8 conv/linear step (backends/cpu/int8.py: mixed dtypes, so not a ``Kernel``).
INT8_VARIANT: Variant = (-1, "float32", True, None)
# The Numba functions outside the kernels (``compile_helpers``).
HELPERS_VARIANT: Variant = (-2, "float32", True, None)


def variants() -> list[Variant]:
    """Every (kernel, dtype, parallel, sources) variant the CPU lowerings can ask for, most
    expensive first. ``sources`` is None for the plain variant (no buffer written in place)."""
    import backends.cpu  # noqa: F401  (registers the kernels)
    from backends.cpu.kernels import KERNELS

    found: list[Variant] = []
    for index, kernel in enumerate(KERNELS):
        for dtype in ("float32", "float64"):
            for parallel in (True, False):
                found.append((index, dtype, parallel, None))
            for sources in kernel.aliased_variants():  # written in place
                found.append((index, dtype, kernel.parallel_inplace, sources))
                if kernel.parallel_inplace:  # small steps run serially
                    found.append((index, dtype, False, sources))
    size = [len(inspect.getsource(k.func)) for k in KERNELS]
    found = sorted(found, key=lambda v: (not v[2], -size[v[0]]))  # stable: dtypes stay in order
    return [INT8_VARIANT, HELPERS_VARIANT, *found]


def compile_variant(variant: Variant) -> None:
    """Compile (or load from the cache) one variant in this process."""
    from backends.cpu.kernels import KERNELS

    if variant == INT8_VARIANT:
        from backends.cpu import int8

        int8.step_function()
        return
    if variant == HELPERS_VARIANT:
        compile_helpers()
        return
    index, dtype, parallel, sources = variant
    KERNELS[index].shim(dtype, parallel, sources)


def compile_helpers() -> None:
    """Round-trip one tiny pruned, shared layer through a Huffman-coded ``.cfz`` and augment a
    tiny batch with every transform on."""
    import numpy as np

    from engine.augment import Augment
    from graph.compress import cfz
    from graph.compress.kmeans import SharedWeights

    mask = np.array([[True, False], [True, True]])
    layer = SharedWeights((2, 2), mask, np.array([1, 2, 1]), np.array([0.0, 0.5, -0.5, 1.0]), 2)
    cfz.unpack(cfz.pack({"w": layer}, {}, {}, {"w": 2})[0])
    every = Augment(
        crop=1, flip=True, rotate=10.0, scale=(0.9, 1.1), translate=0.1, elastic=(1.0, 2.0),
        jitter=(0.1, 0.1, 0.1),
    )  # fmt: skip
    every(np.zeros((2, 3, 8, 8), np.float32))


def warmup(jobs: int | None = None, progress: bool = True) -> tuple[int, float]:
    """Compile every variant into the cache with ``jobs`` processes (default: one per core).

    Returns:
        (number of variants, seconds taken).
    """
    start = time.perf_counter()
    todo = variants()
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    bar = tqdm(total=len(todo), unit="variant", desc="warmup", disable=not progress)
    with bar:
        if jobs == 1:
            for variant in todo:
                compile_variant(variant)
                bar.update()
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                jobs, context, initializer=_start_worker, initargs=(context.Lock(),)
            ) as pool:
                pending = {pool.submit(compile_variant, v) for v in todo}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            future.result()  # a failed compile stops the warmup with its error
                        bar.update(len(done))
                finally:
                    for future in pending:  # after an error or ^C: start nothing more
                        future.cancel()
    return len(todo), time.perf_counter() - start


def _start_worker(lock) -> None:
    _locked_cache_files(lock)
    import backends.cpu  # noqa: F401  (registers the kernels, in the parent's order)


def _locked_cache_files(lock) -> None:
    """Make this process's Numba cache index-and-data loads and saves hold ``lock``.

    ``IndexDataCacheFile`` is Numba-private (``numba.core.caching``, numba 0.68: the range
    ``backends/cpu/numba_setup.py`` checks)."""
    from numba.core.caching import IndexDataCacheFile

    def locked(method):
        @functools.wraps(method)
        def run(*args, **kwargs):
            with lock:
                return method(*args, **kwargs)

        return run

    IndexDataCacheFile.load = locked(IndexDataCacheFile.load)
    IndexDataCacheFile.save = locked(IndexDataCacheFile.save)
