"""Packaging: the Numba pin, its import-time check, and what the source distribution holds.

``backends/cpu`` uses Numba-private APIs (``numba_setup.py``'s thread-pool launch, ``blas.py``'s
BLAS intrinsics), so ``setup.py`` pins the minor release they were tested on and ``numba_setup``
refuses any other at import, in one line. The sdist must carry ``backends/cpu/_runtime.pyx``: the
wheel built from it compiles the executor from that source (CI installs that wheel in a fresh
virtual environment and runs ``convforge demo``).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys
import tarfile

import numba
import pytest

from backends.cpu import numba_setup

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _install_requires() -> list[str]:
    """``install_requires`` of setup.py, read without running it."""
    for node in ast.walk(ast.parse((REPO_ROOT / "setup.py").read_text())):
        if isinstance(node, ast.keyword) and node.arg == "install_requires":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no install_requires")


def test_setup_py_pins_the_range_numba_setup_checks():
    pins = [r for r in _install_requires() if r.startswith("numba")]
    assert pins == [numba_setup.NUMBA_REQUIREMENT]


def test_installed_numba_is_in_the_range():
    numba_setup.check_numba_version(numba.__version__)


@pytest.mark.parametrize("version", ["0.68.0", "0.68.1", "0.68.2rc1"])
def test_versions_in_the_range_pass(version):
    numba_setup.check_numba_version(version)


@pytest.mark.parametrize("version", ["0.67.1", "0.69.0", "0.69.0rc1", "1.0.0", "unknown"])
def test_versions_outside_the_range_fail_in_one_line(version):
    with pytest.raises(ImportError) as error:
        numba_setup.check_numba_version(version)
    message = str(error.value)
    assert "\n" not in message
    assert f"numba {version} is installed" in message
    assert f"pip install '{numba_setup.NUMBA_REQUIREMENT}'" in message


def test_importing_the_backend_with_another_numba_fails_with_the_message():
    """A fresh process with a faked ``numba.__version__``: the check runs before ``blas.py``
    (the other user of private APIs) is imported."""
    code = (
        "import sys, numba\n"
        "numba.__version__ = '0.99.0'\n"
        "try:\n"
        "    import backends.cpu\n"
        "finally:\n"
        "    assert 'backends.cpu.blas' not in sys.modules, 'blas.py was imported first'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: ConvForge's CPU backend supports numba>="), last
    assert "numba 0.99.0 is installed" in last


def _sources() -> list[str]:
    """What the sdist must carry: every package's modules, Cython and CUDA sources."""
    found = []
    for top in ("graph", "backends", "engine", "zoo"):
        for path in (REPO_ROOT / top).rglob("*"):
            module = path.suffix == ".py" and (path.parent / "__init__.py").exists()
            if module or path.suffix in (".pyx", ".cu", ".cuh"):
                found.append(path.relative_to(REPO_ROOT).as_posix())
    return found


@pytest.mark.slow
def test_sdist_carries_the_cython_source(tmp_path):
    pytest.importorskip("build", reason="python -m build builds the sdist (pip install build)")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        timeout=600,
    )
    (sdist,) = tmp_path.glob("convforge-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert [name for name in names if name.endswith("_runtime.pyx")]  # the executor's source
    assert not [name for name in names if name.endswith("_runtime.c")]  # cythonize's output
    assert sorted(set(_sources()) - names) == []
