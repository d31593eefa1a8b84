"""``convforge warmup`` (engine/warmup.py): the variant list and the workers' cache lock.

The pool itself runs in CI (``convforge warmup`` before the tests) and on every developer's
machine; these tests pin what it compiles and that concurrent workers cannot interleave the
load-modify-replace of one Numba cache index.
"""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import numpy as np

import engine
from backends.cpu.kernels import KERNELS
from engine.warmup import HELPERS_VARIANT, INT8_VARIANT, variants
from graph import functional as F
from graph import nn

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_variants_cover_every_kernel_once_parallel_first():
    found = variants()
    assert len(set(found)) == len(found)
    assert INT8_VARIANT in found  # backends/cpu/int8.py's step
    assert HELPERS_VARIANT in found  # compression's coders, augmentation
    for index in range(len(KERNELS)):
        for dtype in ("float32", "float64"):
            for parallel in (False, True):
                assert (index, dtype, parallel, None) in found
    parallel = [v[2] for v in found]
    assert parallel == sorted(parallel, reverse=True)  # the expensive ones are handed out first


class _ConvPlusInput(nn.Module):
    """conv -> BatchNorm -> (+ x) -> ReLU: after the passes one fused conv whose residual
    buffer is its own input buffer."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1, groups=groups)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x):
        return F.relu(F.add(self.bn(self.conv(x)), x))


def test_steps_use_only_the_variants_warmup_compiles():
    """A step whose buffers coincide (here a conv's input and its residual) must not ask for a
    variant outside the list: it would compile for 20 s on a user's first run after
    ``convforge warmup``. Every variant compiled in this process so far is checked."""
    for groups in (1, 8):
        for dtype in ("float32", "float64"):
            exe = engine.compile(_ConvPlusInput(8, groups), (8, 6, 6), batch=2, dtype=dtype)
            exe.run(np.ones((2, 8, 6, 6), dtype))
    listed = {
        (index, dtype, parallel, sources or tuple(range(KERNELS[index].buffers)))
        for index, dtype, parallel, sources in variants()
        if index >= 0
    }
    compiled = {(index, *key) for index, kernel in enumerate(KERNELS) for key in kernel._shims}
    assert compiled and compiled <= listed, sorted(compiled - listed)


def test_helpers_variant_compiles_every_numba_function_outside_the_kernels():
    """In a fresh process: after the helpers variant, every Numba function of ``engine`` and
    ``graph`` (but those always inlined into their callers) has a compiled signature, so a new
    one that warmup does not reach fails here."""
    code = textwrap.dedent(
        """
        import importlib, pkgutil
        import engine, graph
        from numba.core.registry import CPUDispatcher
        from engine.warmup import HELPERS_VARIANT, compile_variant

        compile_variant(HELPERS_VARIANT)
        found, cold = 0, []
        for package in (engine, graph):
            for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                module = importlib.import_module(info.name)
                for name, value in vars(module).items():
                    if not isinstance(value, CPUDispatcher) or value.__module__ != info.name:
                        continue
                    if value.targetoptions.get("inline") == "always":
                        continue
                    found += 1
                    if not value.signatures:
                        cold.append(info.name + "." + name)
        print(found, cold)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr[-2000:]
    found, cold = result.stdout.strip().split(" ", 1)
    assert int(found) >= 8 and cold == "[]", result.stdout


def test_worker_cache_loads_and_saves_hold_the_lock(tmp_path):
    """In a fresh process (the patch is process-wide, as in a worker): every index-and-data
    save and load of Numba's cache runs inside the lock, and still round-trips."""
    code = textwrap.dedent(
        f"""
        from numba.core.caching import IndexDataCacheFile
        from engine.warmup import _locked_cache_files

        class Lock:
            held = entered = 0
            def __enter__(self):
                assert not self.held
                self.held, self.entered = 1, self.entered + 1
            def __exit__(self, *exc):
                self.held = 0

        lock = Lock()
        _locked_cache_files(lock)
        cache = IndexDataCacheFile({str(tmp_path)!r}, "f", source_stamp=(1.0, 2))
        cache.save(("sig", "target"), {{"code": 42}})
        assert cache.load(("sig", "target")) == {{"code": 42}}
        assert lock.entered == 2, lock.entered
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == "ok", result.stderr[-2000:]
