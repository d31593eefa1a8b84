"""The Executable: a compiled model bound to its buffers, run by the Cython executor.

Storage: one arena (planned offsets, ``graph.memory``) for transient activations and scratch;
persistent arrays for the graph input, the output, each parameter and each state buffer.
Steps hold raw addresses into these arrays, so they are never reallocated: loading weights
copies into them in place.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np

from engine._runtime import Runner
from graph.ir import Graph
from graph.memory import MemoryPlan


class Executable:
    """A model compiled for one input shape, batch, dtype and backend.

    Attributes:
        graph: the traced graph (print it for the one-line-per-node listing).
        params: parameter and state arrays by ``state_dict`` key (live views: writing into them
            changes the model).
        plan: the memory plan of the transient buffers.
    """

    def __init__(
        self,
        graph: Graph,
        plan: MemoryPlan,
        runner: Runner,
        step_nodes: list[str],
        storage: dict[str, np.ndarray],
        extra_state: dict[str, np.ndarray],
        keep_alive: list,
    ) -> None:
        self.graph = graph
        self.plan = plan
        self._runner = runner
        self._step_nodes = step_nodes
        self._input = storage[graph.inputs[0].name]
        self._output = storage[graph.outputs[0].name]
        self.params: dict[str, np.ndarray] = {v.name: storage[v.name] for v in graph.params}
        self._extra_state = extra_state
        self._keep_alive = keep_alive

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input.shape

    @property
    def dtype(self) -> np.dtype:
        return self._input.dtype

    def run(self, x: np.ndarray) -> np.ndarray:
        """Forward pass on one batch of the compiled shape and dtype; returns a new array."""
        x = np.asarray(x)
        if x.shape != self._input.shape:
            raise ValueError(
                f"run: expected an input of shape {list(self._input.shape)} (batch, C, H, W as "
                f"compiled), but got {list(x.shape)}"
            )
        if x.dtype != self._input.dtype:
            raise TypeError(
                f"run: expected an input of dtype {self._input.dtype}, but got {x.dtype}; "
                f"convert it with x.astype(np.{self._input.dtype})"
            )
        np.copyto(self._input, x)
        self._execute()
        return self._output.copy()

    def poison_buffers(self) -> None:
        """Fill the arena and the output with NaN bit patterns (a testing aid: an element no
        kernel writes then shows up as NaN instead of a stale value)."""
        self._keep_alive[0].fill(0xFF)
        self._output.fill(np.nan)

    def _execute(self, repeat: int = 1) -> None:
        step, code = self._runner.run(repeat)
        if code:
            raise RuntimeError(
                f"{self._step_nodes[step]}: kernel failed with error code {code} (step {step})"
            )

    def profile(self, x: np.ndarray, repeat: int = 20) -> list[dict[str, object]]:
        """Run ``x`` ``repeat`` times and time every step; one row per node (name, op, output
        shape, mean microseconds, share of the total), slowest first."""
        self.run(x)
        times, step, code = self._runner.profile(repeat)
        if code:
            raise RuntimeError(f"{self._step_nodes[step]}: kernel failed with error code {code}")
        per_node: dict[str, float] = {}
        for name, seconds in zip(self._step_nodes, times, strict=False):
            per_node[name] = per_node.get(name, 0.0) + seconds / repeat
        total = sum(per_node.values()) or 1.0
        nodes = {node.name: node for node in self.graph.nodes}
        rows = [
            {
                "name": name,
                "op": nodes[name].op,
                "output": str(nodes[name].outputs[0].type),
                "us": seconds * 1e6,
                "share": seconds / total,
            }
            for name, seconds in per_node.items()
        ]
        return sorted(rows, key=lambda row: -row["us"])

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of parameters and buffers with PyTorch's keys (``num_batches_tracked`` too,
        so ``torch_model.load_state_dict`` accepts it strictly)."""
        state = OrderedDict((k, v.copy()) for k, v in self.params.items())
        state.update((k, v.copy()) for k, v in self._extra_state.items())
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy weights in from a mapping keyed like torch's ``state_dict()`` (NumPy arrays or
        anything ``np.asarray`` takes). Every key must match in name and shape; BatchNorm's
        ``num_batches_tracked`` is accepted and ignored."""
        ignored = set(self._extra_state)
        missing = sorted(set(self.params) - set(state))
        unexpected = sorted(set(state) - set(self.params) - ignored)
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {name: np.asarray(state[name]) for name in self.params}
        for name, array in arrays.items():
            if array.shape != self.params[name].shape:
                raise ValueError(
                    f"load_state_dict: {name} expected shape {list(self.params[name].shape)}, "
                    f"but got {list(array.shape)}"
                )
            if not np.issubdtype(array.dtype, np.number):
                raise TypeError(f"load_state_dict: {name} must be numeric, got {array.dtype}")
        for name, array in arrays.items():
            np.copyto(self.params[name], array, casting="unsafe")

    def __repr__(self) -> str:
        return (
            f"Executable(input={list(self._input.shape)}, dtype={self._input.dtype}, "
            f"nodes={len(self.graph.nodes)}, steps={self._runner.count}, "
            f"arena={self.plan.arena_bytes:,} bytes)"
        )
