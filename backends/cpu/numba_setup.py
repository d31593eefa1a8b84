"""Numba's threading, chosen once, before any parallel kernel is compiled or loaded.

- Threading layer: OpenMP first (then TBB, then workqueue, if a layer is missing). Measured
  here, starting one parallel region costs about 1.4 us with OpenMP's spinning workers, 45 us
  with ``OMP_WAIT_POLICY=passive`` and 80 us with the workqueue layer: a CNN step is often
  smaller than that. Spinning workers used to fight OpenBLAS's own threads for the two cores
  (an im2col + GEMM conv ran 7x slower, DESIGN.md known traps); here there is no second pool,
  because kernels call a single-threaded BLAS from inside their parallel tasks
  (``blas.single_threaded_blas``). Set ``NUMBA_THREADING_LAYER`` to override the choice.
- The thread pool is launched before the first cached cfunc loads: a cached cfunc whose callee
  is parallel otherwise aborts the process (``LLVM ERROR: Symbol not found: allocate_sched``).
"""

from __future__ import annotations

import numba
from numba.np.ufunc import parallel as _parallel

numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_launched = False


def ensure_thread_pool() -> None:
    """Launch Numba's thread pool once per process (idempotent, cheap after the first call)."""
    global _launched
    if not _launched:
        _parallel._launch_threads()
        _launched = True
