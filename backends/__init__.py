"""How each op runs on a device. Imports ``graph`` only."""

from __future__ import annotations

from backends.base import Backend

BACKENDS = ("cpu",)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; the GPU backend is not part of this release yet."""
    if name == "cpu":
        from backends.cpu import CpuBackend

        return CpuBackend()
    raise ValueError(f"backend must be one of {BACKENDS}, but got backend={name!r}")
