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
- The Numba version is checked first. The pool launch (``numba.np.ufunc.parallel``), the
  BLAS intrinsics (``blas.py``: ``numba.core.cgutils``) and ``convforge warmup``'s cache
  lock (``engine/warmup.py``: ``numba.core.caching.IndexDataCacheFile``) use Numba's private
  APIs, which change between minor releases without notice; they were tested on the minor
  releases in ``NUMBA_MIN``..``NUMBA_BELOW``. ``setup.py`` pins the same range
  (``tests/test_packaging.py`` keeps the two equal). The backend imports this module before
  ``blas.py`` (``backends/cpu/__init__.py`` -> ``capsule`` -> ``kernels``; a test checks the
  order), so a version outside the range fails here, in one line, before any private API is
  touched.
"""

from __future__ import annotations

import re

import numba

NUMBA_MIN, NUMBA_BELOW = (0, 68), (0, 69)  # minor releases tested: >= MIN, < BELOW
NUMBA_REQUIREMENT = "numba>={}.{},<{}.{}".format(*NUMBA_MIN, *NUMBA_BELOW)


def check_numba_version(version: str) -> None:
    """Raise ImportError, in one line, unless ``version`` is in the tested range."""
    match = re.match(r"(\d+)\.(\d+)", version)
    if match is None or not NUMBA_MIN <= tuple(map(int, match.groups())) < NUMBA_BELOW:
        raise ImportError(
            f"ConvForge's CPU backend supports {NUMBA_REQUIREMENT} (it uses Numba-private "
            f"threading and caching hooks), but numba {version} is installed; "
            f"fix: pip install '{NUMBA_REQUIREMENT}'"
        )


check_numba_version(numba.__version__)

from numba.np.ufunc import parallel as _parallel  # noqa: E402  (private: after the check)

numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]

_launched = False


def ensure_thread_pool() -> None:
    """Launch Numba's thread pool once per process (idempotent, cheap after the first call)."""
    global _launched
    if not _launched:
        _parallel._launch_threads()
        _launched = True
