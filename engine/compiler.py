"""``compile``: trace, plan memory, lower every node, pack the plan for the executor."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from backends import get_backend
from engine._runtime import Runner
from engine.executable import Executable
from graph.ir import Graph
from graph.memory import plan_naive, transient_buffers
from graph.nn import Module, Parameter
from graph.trace import trace


def compile(
    model: Module,
    input_shape: Sequence[int],
    batch: int = 1,
    backend: str = "cpu",
    dtype: str = "float32",
) -> Executable:
    """Compile ``model`` for inputs of shape [batch, *input_shape].

    Args:
        model: a ``graph.nn.Module`` (its current weights are copied in).
        input_shape: (C, H, W).
        batch: the fixed batch size.
        backend: "cpu".
        dtype: "float32" or "float64".
    Returns:
        An ``Executable`` with ``run(x)``, ``params``, ``state_dict()``, ``load_state_dict()``.
    """
    graph = trace(model, input_shape, batch, dtype)
    device = get_backend(backend)
    device.check_supported(graph)
    scratch = {node.name: device.scratch_bytes(node) for node in graph.nodes}
    plan = plan_naive(transient_buffers(graph, scratch))
    arena = device.allocate(plan.arena_bytes)
    storage = _persistent_storage(graph, model, dtype)

    def address(name: str) -> int:
        if name in storage:
            return storage[name].ctypes.data
        return arena.ctypes.data + plan.offsets[name]

    consts: list[np.ndarray] = []
    steps, step_nodes = [], []
    for node in graph.nodes:
        scratch_key = f"{node.name}#scratch"
        scratch_address = address(scratch_key) if scratch_key in plan.offsets else 0
        node_steps = device.lower(node, address, scratch_address, consts)
        steps += node_steps
        step_nodes += [node.name] * len(node_steps)
    runner = Runner(**device.pack(steps))
    extra_state = {
        name: np.array(t, copy=True)
        for name, t, _ in model.named_tensors()
        if not isinstance(t, Parameter) and not np.issubdtype(t.dtype, np.floating)
    }
    return Executable(graph, plan, runner, step_nodes, storage, extra_state, [arena, consts])


def _persistent_storage(graph: Graph, model: Module, dtype: str) -> dict[str, np.ndarray]:
    """Arrays outside the arena: the input, the output, and every parameter and state buffer
    (initialised from the model's current values)."""
    tensors = {name: t for name, t, _ in model.named_tensors()}
    storage = {}
    for value in graph.inputs + graph.outputs:
        storage[value.name] = np.full(value.shape, np.nan, dtype)
    for value in graph.params:
        source = tensors[value.name]
        storage[value.name] = np.array(
            source.data if isinstance(source, Parameter) else source, dtype=dtype, order="C"
        )
    return storage
