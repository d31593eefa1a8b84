"""Which GPU backends the tests here run on.

``gpu-emulated`` (the CUDA C kernels compiled for the CPU) runs everywhere. ``gpu`` needs CuPy
and an NVIDIA GPU: tests marked ``gpu`` skip without one, with the one-line reason
``backends.get_backend("gpu")`` gives (no CuPy, or no usable device). ``gpu_backend`` is the
fixture for tests that hold on both.
"""

from __future__ import annotations

import functools

import pytest

import backends


@functools.cache
def gpu_unavailable() -> str | None:
    """Why ``backend="gpu"`` cannot run here (the compile error's one line), or None."""
    try:
        backends.get_backend("gpu")
    except RuntimeError as error:
        return str(error)
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is not None and (reason := gpu_unavailable()):
        pytest.skip(reason)


@pytest.fixture(params=["gpu-emulated", pytest.param("gpu", marks=pytest.mark.gpu)])
def gpu_backend(request: pytest.FixtureRequest) -> str:
    """Each GPU backend name: the emulation always, the device where there is one."""
    return request.param
