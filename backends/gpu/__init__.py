"""The GPU backend: CUDA C kernels (``kernels/*.cu``) launched through CuPy, one CUDA graph per
plan; or the same kernels compiled for the CPU by the emulator, to check them without a GPU.

Lowerings live beside their kernels (``backends/gpu/<family>.py`` for ``kernels/<family>.cu``,
as ``backends/cpu/<family>.py``) and return ``Launch`` records; a device (``device.py``) holds
the memory and runs them. ``backend="gpu"`` needs CuPy and a usable NVIDIA GPU and says in one
line which is missing; ``backend="gpu-emulated"`` needs a C++ compiler only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Sequence

import numpy as np

from backends.base import Backend, Buffer, Runner
from backends.gpu.device import Device
from backends.gpu.lowering import LOWERINGS, TABLE, GpuNodeIO, Launch
from graph.ir import Node

# Modules that register lowerings: every module here but the machinery.
_MACHINERY = {"device", "emulator", "lowering", "runners"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_module.name}")


class GpuBackend(Backend):
    """Lowers nodes to kernel launches; ``device`` holds the buffers and runs the launches."""

    table = TABLE

    def __init__(self, device: Device) -> None:
        self.device = device
        self.name = device.backend_name

    def allocate(self, nbytes: int) -> Buffer:
        return self.device.allocate(nbytes)

    def from_host(self, array: np.ndarray) -> Buffer:
        return self.device.from_host(np.ascontiguousarray(array))

    def to_host(self, buffer: Buffer) -> np.ndarray:
        return self.device.to_host(buffer)

    def copy_in(self, buffer: Buffer, array: np.ndarray) -> None:
        host = np.ascontiguousarray(np.broadcast_to(array, buffer.shape), dtype=buffer.dtype)
        self.device.copy_in(buffer, host)

    def fill_bytes(self, buffer: Buffer, byte: int) -> None:
        self.device.fill_bytes(buffer, byte)

    def address(self, buffer: Buffer) -> int:
        return self.device.address(buffer)

    def lower(
        self,
        node: Node,
        address: Callable[[str], int],
        scratch_address: int,
        consts: list[Buffer],
    ) -> list[Launch]:
        def const(values: Sequence[float], dtype: str) -> int:
            buffer = self.from_host(np.asarray(values, dtype=dtype))
            consts.append(buffer)
            return self.address(buffer)

        return LOWERINGS[node.op](node, GpuNodeIO(node, address, scratch_address, const))

    def runner(self, steps: Sequence[Launch]) -> Runner:
        return self.device.runner(list(steps))
