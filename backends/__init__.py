"""How each op runs on a device. Imports ``graph`` only."""

from __future__ import annotations

from backends.base import Backend

BACKENDS = ("cpu", "gpu", "gpu-emulated")


def get_backend(name: str) -> Backend:
    """The backend called ``name``: ``"cpu"``; ``"gpu"`` (CuPy and an NVIDIA GPU; a
    RuntimeError says in one line which is missing); ``"gpu-emulated"`` (the GPU kernels
    compiled for the CPU: slow, for checking them without a GPU)."""
    if name == "cpu":
        from backends.cpu import CpuBackend

        return CpuBackend()
    if name == "gpu":
        from backends.gpu import GpuBackend
        from backends.gpu.device import cupy_device

        return GpuBackend(cupy_device())
    if name == "gpu-emulated":
        from backends.gpu import GpuBackend
        from backends.gpu.device import EmulatedDevice

        return GpuBackend(EmulatedDevice())
    raise ValueError(f"backend must be one of {BACKENDS}, but got backend={name!r}")
