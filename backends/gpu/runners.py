"""Runners of a plan's launches (the ``backends.base.Runner`` protocol).

- ``GraphRunner`` (CUDA): the launches of a step range are captured once into a CUDA graph on
  the device's stream and replayed, one graph launch per call however deep the network
  (DESIGN.md); inference runs the whole plan, training a prefix (up to the loss or the update),
  so each range gets its own graph, captured on first use.
- ``LaunchLoop`` (emulation): each launch is a Python call into the emulated kernel.

The forward kernels of this backend report no error codes, so a run returns (-1, 0); a failed
launch raises.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from backends.gpu.lowering import Launch


class LaunchLoop:
    """Calls each launch in turn."""

    def __init__(self, launches: Sequence[Callable[[], None]], synchronize: Callable[[], None]):
        self._launches = list(launches)
        self._synchronize = synchronize
        self.count = len(self._launches)

    def run(self, repeat: int = 1, start: int = 0, stop: int = -1) -> tuple[int, int]:
        stop = self.count if stop < 0 or stop > self.count else stop
        for _ in range(repeat):
            for launch in self._launches[start:stop]:
                launch()
        self._synchronize()
        return (-1, 0)

    def profile(self, repeat: int = 1) -> tuple[list[float], int, int]:
        times = [0.0] * self.count
        for _ in range(repeat):
            for i, launch in enumerate(self._launches):
                begin = time.perf_counter()
                launch()
                self._synchronize()
                times[i] += time.perf_counter() - begin
        return times, -1, 0


class GraphRunner:
    """Replays CUDA graphs of the launches on ``stream`` (``cupy.cuda.Stream``)."""

    def __init__(self, cupy, stream, functions: Sequence, launches: Sequence[Launch]) -> None:
        self._cupy = cupy
        self._stream = stream
        self._functions = list(functions)
        self._launches = list(launches)
        self._graphs: dict[tuple[int, int], object] = {}
        self.count = len(self._launches)

    def _launch(self, i: int) -> None:
        launch = self._launches[i]
        self._functions[i](launch.grid, launch.block, launch.args, shared_mem=launch.shared_bytes)

    def _graph(self, start: int, stop: int):
        if (start, stop) not in self._graphs:
            with self._stream:
                self._stream.begin_capture()
                for i in range(start, stop):
                    self._launch(i)
                self._graphs[start, stop] = self._stream.end_capture()
        return self._graphs[start, stop]

    def run(self, repeat: int = 1, start: int = 0, stop: int = -1) -> tuple[int, int]:
        stop = self.count if stop < 0 or stop > self.count else stop
        if start < stop:
            graph = self._graph(start, stop)
            for _ in range(repeat):
                graph.launch(self._stream)
        self._stream.synchronize()
        return (-1, 0)

    def profile(self, repeat: int = 1) -> tuple[list[float], int, int]:
        """Plain launches between CUDA events (a graph has no per-node timing)."""
        events = [self._cupy.cuda.Event() for _ in range(self.count + 1)]
        times = [0.0] * self.count
        with self._stream:
            for _ in range(repeat):
                events[0].record(self._stream)
                for i in range(self.count):
                    self._launch(i)
                    events[i + 1].record(self._stream)
                events[-1].synchronize()
                for i in range(self.count):
                    elapsed = self._cupy.cuda.get_elapsed_time(events[i], events[i + 1])
                    times[i] += elapsed / 1e3
        return times, -1, 0
