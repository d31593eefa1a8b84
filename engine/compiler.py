"""``compile``: trace, differentiate (training), plan memory, lower every node, pack the plan."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from backends import get_backend
from backends.base import Backend, Buffer
from engine.executable import Executable, Plan
from engine.optim import SGD, Optimizer
from graph.autodiff import autodiff
from graph.ir import Graph
from graph.memory import MemoryPlan, plan_graph_memory
from graph.nn import Module, Parameter
from graph.passes.inference import optimize_for_inference
from graph.passes.recompute import recompute as run_recompute
from graph.trace import trace


def compile(
    model: Module,
    input_shape: Sequence[int],
    batch: int = 1,
    backend: str = "cpu",
    dtype: str = "float32",
    train: bool = False,
    loss: str | None = None,
    optimizer: Optimizer | None = None,
    label_smoothing: float = 0.0,
    input_grad: bool = False,
    recompute: str | Sequence[str] | None = None,
    inplace: bool = True,
    reorder: bool = True,
    optimize: bool = True,
) -> Executable:
    """Compile ``model`` for inputs of shape [batch, *input_shape].

    Args:
        model: a ``graph.nn.Module`` (its current weights are copied in).
        input_shape: (C, H, W).
        batch: the fixed batch size.
        backend: "cpu".
        dtype: "float32" or "float64".
        train: also build the training plan (forward in training mode, loss, backward, and the
            optimizer's updates when ``optimizer`` is given).
        loss: "cross_entropy" (default when training), "mse" or "margin" (capsule lengths).
        optimizer: an ``engine.optim`` optimizer (SGD, Adam, AdamW); needed by ``train_step``.
        label_smoothing: for the cross-entropy loss, as ``torch.nn.CrossEntropyLoss``.
        input_grad: with train=True, also compute the loss's gradient with respect to the input
            (``grads["input"]``).
        recompute: with train=True, "sqrt" or a list of layer names: drop those activations
            after the forward pass and recompute them in the backward pass (less memory, more
            time, the same gradients bit for bit; ``graph.passes.recompute``).
        inplace: let elementwise nodes write over an input that dies there
            (``graph.passes.inplace``); results are identical either way.
        reorder: run the nodes in a memory-aware order (``graph.passes.schedule``).
        optimize: run the inference passes on the inference plan (``graph.passes.inference``:
            drop inference dropout, fold BatchNorm into the conv or linear before it, fuse the
            residual add and activation into its epilogue, remove dead nodes). The results
            equal the unfused plan's; ``exe.graph`` shows the fused nodes. Training plans keep
            the ops as traced.
    Returns:
        An ``Executable``: ``run(x)``, ``params``, ``state_dict()``, ``load_state_dict()``, and
        with ``train=True`` also ``forward_backward(x, y)``, ``train_step(x, y)``, ``grads``.
    """
    if not train and (loss is not None or optimizer is not None):
        raise ValueError("loss and optimizer apply to training: pass train=True as well")
    if not train and recompute is not None:
        raise ValueError("recompute applies to training: pass train=True as well")
    device = get_backend(backend)  # first: a missing device is reported before any work
    forward = trace(model, input_shape, batch, dtype)
    storage = _persistent_storage(forward, model, dtype, device)
    passes = {"inplace": inplace, "reorder": reorder}
    training = None
    if train:  # differentiated in program order, before planning reorders ``forward``
        graph = autodiff(
            forward, loss or "cross_entropy", input_grad=input_grad, label_smoothing=label_smoothing
        )
        if optimizer is not None:
            optimizer.add_updates(graph)
        _add_training_storage(graph, storage, dtype, device)
        graph, memory = plan_training_graph(graph, device, recompute, **passes)
        training = _build_plan(graph, device, storage, memory)
    inference_graph = _inference_graph(forward, device, optimize)
    memory = plan_graph(inference_graph, device, **passes)
    inference = _build_plan(inference_graph, device, storage, memory)
    extra_state = {
        name: np.array(t, copy=True)
        for name, t, _ in model.named_tensors()
        if not isinstance(t, Parameter) and not np.issubdtype(t.dtype, np.floating)
    }
    return Executable(inference, training, storage, extra_state, optimizer)


def _inference_graph(forward: Graph, device: Backend, optimize: bool) -> Graph:
    """The graph of the inference plan: ``forward`` itself, or its rewrite by the inference
    passes (with the fused ops where ``device`` lowers them)."""
    return optimize_for_inference(forward, device.supported_ops) if optimize else forward


def plan_graph(
    graph: Graph,
    device: Backend,
    inplace: bool = True,
    reorder: bool = True,
) -> MemoryPlan:
    """The verified memory plan of ``graph`` (``graph.memory.plan_graph_memory``: the
    memory-aware order, which changes ``graph.nodes``, in-place aliases, offsets) with the
    backend's scratch sizes."""
    device.check_supported(graph)
    scratch = {node.name: device.scratch_bytes(node) for node in graph.nodes}
    return plan_graph_memory(graph, scratch, inplace=inplace, reorder=reorder)


def plan_training_graph(
    graph: Graph, device: Backend, recompute: str | Sequence[str] | None, **passes: bool
) -> tuple[Graph, MemoryPlan]:
    """The training graph to run (``graph``, or its rewrite by the recompute pass) and its
    plan, which keeps the plan without recompute for the report."""
    if recompute is None:
        return graph, plan_graph(graph, device, **passes)
    without = plan_graph(graph, device, **passes)
    rewritten = run_recompute(graph, recompute)
    policy = recompute if isinstance(recompute, str) else tuple(recompute)
    plan = plan_graph(rewritten, device, **passes)
    return rewritten, replace(plan, recompute=policy, without_recompute=without)


def memory_plans(
    model: Module,
    input_shape: Sequence[int],
    batch: int = 1,
    train: bool = False,
    dtype: str = "float32",
    backend: str = "cpu",
    recompute: str | Sequence[str] | None = None,
    optimize: bool = True,
) -> dict[str, MemoryPlan]:
    """The plans ``compile`` would make (inference, and training with an SGD-with-momentum
    update), without allocating anything: for reports and the memory benchmark."""
    forward = trace(model, input_shape, batch, dtype)
    device = get_backend(backend)
    plans = {}
    if train:  # differentiated in program order, as compile does
        graph = autodiff(forward)
        SGD(momentum=0.9).add_updates(graph)
        plans["training"] = plan_training_graph(graph, device, recompute)[1]
    plans["inference"] = plan_graph(_inference_graph(forward, device, optimize), device)
    return plans


def _build_plan(
    graph: Graph, device: Backend, storage: dict[str, Buffer], memory: MemoryPlan
) -> Plan:
    """Allocate the arena of ``memory`` (the graph's plan) and lower every node to steps."""
    arena = device.allocate(memory.arena_bytes)
    arena_address = device.address(arena)
    storage_addresses = {name: device.address(buffer) for name, buffer in storage.items()}

    def address(name: str) -> int:
        if name in storage_addresses:
            return storage_addresses[name]
        return arena_address + memory.offset(name)

    consts: list[Buffer] = []
    steps, step_nodes = [], []
    for node in graph.nodes:
        scratch_key = f"{node.name}#scratch"
        scratch_address = address(scratch_key) if scratch_key in memory.offsets else 0
        node_steps = device.lower(node, address, scratch_address, consts)
        steps += node_steps
        step_nodes += [node.name] * len(node_steps)
    return Plan(graph, memory, device.runner(steps), step_nodes, arena, consts, storage, device)


def _persistent_storage(
    graph: Graph, model: Module, dtype: str, device: Backend
) -> dict[str, Buffer]:
    """Buffers outside the arena: the input, the output, and every parameter and state buffer
    (initialised from the model's current values)."""
    tensors = {name: t for name, t, _ in model.named_tensors()}
    storage = {}
    for value in graph.inputs + graph.outputs:
        storage[value.name] = device.from_host(np.full(value.shape, np.nan, dtype))
    for value in graph.params:
        source = tensors[value.name]
        array = source.data if isinstance(source, Parameter) else source
        storage[value.name] = device.from_host(np.asarray(array, dtype=dtype))
    return storage


def _add_training_storage(
    graph: Graph, storage: dict[str, Buffer], dtype: str, device: Backend
) -> None:
    """The target, the loss, gradients, constants and optimizer state (zero, as torch starts)."""
    for value in graph.inputs + graph.outputs + list(graph.grads.values()):
        if value.name not in storage:
            storage[value.name] = device.from_host(np.full(value.shape, np.nan, dtype))
    for value in graph.params:
        if value.name not in storage:
            storage[value.name] = device.from_host(np.zeros(value.shape, dtype))
    for name, fill in graph.consts.items():
        storage[name] = device.from_host(np.full(graph.values[name].shape, fill, dtype))
