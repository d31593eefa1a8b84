"""``compile``: trace, differentiate (training), plan memory, lower every node, pack the plan.

``compile(model, ...)`` traces the model and hands the graph to ``compile_graph(forward,
tensors, options)``, which does the rest from a traced graph and its weights alone: so
``engine.load`` rebuilds a saved executable without any Python model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from backends import get_backend
from backends.base import WEIGHTS_GENERATION, Backend, Buffer
from engine.executable import Executable, build_plan
from engine.optim import SGD, Optimizer
from graph.autodiff import autodiff
from graph.ir import Graph
from graph.memory import MemoryPlan, plan_graph_memory
from graph.nn import Module, Parameter
from graph.passes.inference import optimize_for_inference
from graph.passes.recompute import recompute as run_recompute
from graph.trace import trace


@dataclass(frozen=True)
class CompileOptions:
    """How ``compile_graph`` turns a traced graph into an Executable: ``compile``'s arguments
    except the model, input shape, batch and dtype (the traced graph fixes those) and the
    optimizer (an object with state). The Executable keeps them, so ``engine.save`` can rebuild
    the same plans from the traced graph; see ``compile`` for what each one does."""

    backend: str = "cpu"
    train: bool = False
    loss: str | None = None
    label_smoothing: float = 0.0
    input_grad: bool = False
    recompute: str | tuple[str, ...] | None = None
    inplace: bool = True
    reorder: bool = True
    optimize: bool = True
    sync_batch_norm: int | None = None
    freeze: bool = False

    def check(self, optimizer: Optimizer | None) -> None:
        """Refuse training options without ``train=True``, and option pairs that do not mix."""
        if not self.train and (self.loss is not None or optimizer is not None):
            raise ValueError("loss and optimizer apply to training: pass train=True as well")
        if not self.train and self.recompute is not None:
            raise ValueError("recompute applies to training: pass train=True as well")
        if self.train and self.freeze:
            raise ValueError("freeze=True makes the weights constants: it applies to inference")
        if self.sync_batch_norm is not None:
            self._check_sync_batch_norm()

    def _check_sync_batch_norm(self) -> None:
        processes = self.sync_batch_norm
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
            raise ValueError(
                f"sync_batch_norm must be a positive number of processes or None, but got "
                f"sync_batch_norm={processes!r}"
            )
        if not self.train:
            raise ValueError("sync_batch_norm applies to training: pass train=True as well")
        if self.recompute is not None:
            # recompute would clone the statistics' allreduce_mean nodes into the backward
            # pass and has no form of sync_batch_norm that leaves the running statistics alone
            raise ValueError(
                f"recompute={self.recompute!r} does not support sync_batch_norm: compile with "
                "one of them"
            )

    def for_inference(self) -> CompileOptions:
        """These options without the training ones (a clone's: it has no training plan)."""
        return CompileOptions(
            self.backend,
            inplace=self.inplace,
            reorder=self.reorder,
            optimize=self.optimize,
            freeze=self.freeze,
        )


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
    sync_batch_norm: int | None = None,
    freeze: bool = False,
) -> Executable:
    """Compile ``model`` for inputs of shape [batch, *input_shape]: trace it, then
    ``compile_graph``.

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
        sync_batch_norm: with train=True, normalise training batches with statistics over
            this many processes' batches (``engine.distributed``); None: each process its own
            (the default, as DistributedDataParallel). CPU only.
        optimize: run the inference passes on the inference plan (``graph.passes.inference``:
            drop inference dropout, fold BatchNorm into the conv or linear before it, fuse the
            residual add and activation into its epilogue, remove dead nodes). The results
            equal the unfused plan's; ``exe.graph`` shows the fused nodes. Training plans keep
            the ops as traced.
        freeze: inference only: the weights become constants of the plan, as in an ONNX
            Runtime session or ``torch.jit.freeze``. ``params`` are then read-only and
            ``load_state_dict`` is the way to change them; in exchange, kernels may keep the
            weights packed in the layout they read best (CPU: ``conv_blocked``, the deep convs
            at small batches), repacking only after a load.
    Returns:
        An ``Executable``: ``run(x)``, ``params``, ``state_dict()``, ``load_state_dict()``, and
        with ``train=True`` also ``forward_backward(x, y)``, ``train_step(x, y)``, ``grads``.
    """
    policy = recompute if recompute is None or isinstance(recompute, str) else tuple(recompute)
    options = CompileOptions(
        backend,
        train,
        loss,
        label_smoothing,
        input_grad,
        policy,
        inplace,
        reorder,
        optimize,
        sync_batch_norm,
        freeze,
    )
    options.check(optimizer)
    device = get_backend(backend)  # first: a missing device is reported before any work
    forward = trace(model, input_shape, batch, dtype)
    tensors = {
        name: t.data if isinstance(t, Parameter) else t for name, t, _ in model.named_tensors()
    }
    return compile_graph(forward, tensors, options, optimizer, device)


def compile_graph(
    forward: Graph,
    tensors: Mapping[str, np.ndarray],
    options: CompileOptions,
    optimizer: Optimizer | None = None,
    device: Backend | None = None,
) -> Executable:
    """Everything ``compile`` does after tracing: the Executable of a traced graph.

    Args:
        forward: a traced inference graph (``graph.trace``); left unchanged, and kept as
            ``exe.traced_graph``.
        tensors: the weights by ``state_dict`` key: an array for every parameter and state
            value of ``forward`` (copied in), and the non-float buffers (``num_batches_tracked``),
            which become ``exe.extra_state``.
        options: the plans to build; ``optimizer``: as ``compile``'s.
        device: the backend of ``options.backend``, if the caller already has it.
    """
    options.check(optimizer)
    device = device or get_backend(options.backend)
    extra_state = _extra_state(forward, tensors)
    storage = _persistent_storage(forward, tensors, device)
    if options.freeze:
        storage[WEIGHTS_GENERATION] = device.from_host(np.zeros(1, np.int64))
    passes = {"inplace": options.inplace, "reorder": options.reorder}
    training = None
    if options.train:
        graph = autodiff(
            forward,
            options.loss or "cross_entropy",
            input_grad=options.input_grad,
            label_smoothing=options.label_smoothing,
            sync_batch_norm=options.sync_batch_norm,
        )
        if optimizer is not None:
            optimizer.add_updates(graph)
        _add_training_storage(graph, storage, device)
        graph, memory = plan_training_graph(graph, device, options.recompute, **passes)
        training = build_plan(graph, device, storage, memory)
    inference_graph = _inference_graph(forward, device, options.optimize)
    memory = plan_graph(inference_graph, device, **passes)
    inference = build_plan(inference_graph, device, storage, memory)
    return Executable(
        inference, training, storage, extra_state, optimizer, traced_graph=forward, options=options
    )


def _inference_graph(forward: Graph, device: Backend, optimize: bool) -> Graph:
    """The graph of the inference plan: a copy of ``forward`` (planning reorders its nodes, and
    ``forward`` stays as traced for ``engine.save``), or its rewrite by the inference passes
    (with the fused ops where ``device`` lowers them)."""
    return optimize_for_inference(forward, device.supported_ops) if optimize else forward.copy()


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


def _extra_state(forward: Graph, tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of the non-float buffers (the graph holds only float values), after checking that
    every parameter and state value of ``forward`` has an array of its shape."""
    missing = [v.name for v in forward.params if v.name not in tensors]
    wrong = [
        f"{v.name} has shape {list(np.shape(tensors[v.name]))}, but the graph needs {list(v.shape)}"
        for v in forward.params
        if v.name in tensors and np.shape(tensors[v.name]) != v.shape
    ]
    faults = ([f"no tensor for {missing}"] if missing else []) + wrong
    if faults:
        raise ValueError(f"compile_graph: the tensors do not fit the graph: {'; '.join(faults)}")
    return {
        name: np.array(array, copy=True)
        for name, array in tensors.items()
        if not np.issubdtype(np.asarray(array).dtype, np.floating)
    }


def _persistent_storage(
    graph: Graph, tensors: Mapping[str, np.ndarray], device: Backend
) -> dict[str, Buffer]:
    """Buffers outside the arena: the input, the output, and every parameter and state buffer
    (initialised from ``tensors``)."""
    dtype = graph.inputs[0].type.dtype
    storage = {}
    for value in graph.inputs + graph.outputs:
        storage[value.name] = device.from_host(np.full(value.shape, np.nan, dtype))
    for value in graph.params:
        storage[value.name] = device.from_host(np.asarray(tensors[value.name], dtype=dtype))
    return storage


def _add_training_storage(graph: Graph, storage: dict[str, Buffer], device: Backend) -> None:
    """The target, the loss, gradients, constants and optimizer state (zero, as torch starts)."""
    dtype = graph.inputs[0].type.dtype
    for value in graph.inputs + graph.outputs + list(graph.grads.values()):
        if value.name not in storage:
            storage[value.name] = device.from_host(np.full(value.shape, np.nan, dtype))
    for value in graph.params:
        if value.name not in storage:
            storage[value.name] = device.from_host(np.zeros(value.shape, dtype))
    for name, fill in graph.consts.items():
        storage[name] = device.from_host(np.full(graph.values[name].shape, fill, dtype))
