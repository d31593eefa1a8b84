"""Numba's threading, chosen once, before any parallel kernel is compiled or loaded.

- Threading layer: ``workqueue``. Numba's OpenMP workers spin after a parallel region and fight
  OpenBLAS's threads for the cores, which made an im2col (parallel Numba) + GEMM (OpenBLAS)
  convolution 7x slower here (DESIGN.md, known traps). The workqueue layer sleeps instead.
  Set ``NUMBA_THREADING_LAYER`` to override it.
- The thread pool is launched before the first cached cfunc loads: a cached cfunc whose callee
  is parallel otherwise aborts the process (``LLVM ERROR: Symbol not found: allocate_sched``).
"""

from __future__ import annotations

import os

import numba
from numba.np.ufunc import parallel as _parallel

if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

_launched = False


def ensure_thread_pool() -> None:
    """Launch Numba's thread pool once per process (idempotent, cheap after the first call)."""
    global _launched
    if not _launched:
        _parallel._launch_threads()
        _launched = True
