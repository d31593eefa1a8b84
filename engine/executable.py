"""The Executable: a compiled model bound to its buffers, run by its backend's runner.

Storage: each plan (inference, and training when compiled with ``train=True``) has one arena
(planned offsets, ``graph.memory``) for its transient activations and scratch; persistent
buffers, shared by the plans, hold the input, the outputs, the target, each parameter and state
buffer, each gradient, the optimizer state and constants. Steps hold raw addresses into these
buffers, so they are never reallocated: loading weights copies into them in place.

Every buffer belongs to the backend (``backends.base``): this module reads and writes them only
through ``to_host`` and ``copy_in``, so the same code drives the CPU and a GPU.

Threads: an executable has one set of buffers, so ``run`` (and every other call that executes a
plan) holds a lock from loading the input to reading the output. For parallel inference, each
thread takes a ``clone()``: the same weight buffers, its own arena, input and output.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from backends import get_backend
from backends.base import WEIGHTS_GENERATION, Backend, Buffer, Runner
from backends.errors import kernel_error_message
from engine.optim import HYPER_VALUE, Optimizer
from graph.autodiff import DROPOUT_RNG
from graph.ir import Graph, Value
from graph.memory import MemoryPlan, plan_report
from graph.ops.collective import COLLECTIVES
from graph.ops.optim import UPDATES

if TYPE_CHECKING:
    from engine.compiler import CompileOptions


@dataclass
class Plan:
    """One lowered graph: its memory plan, its runner, the node behind each step, and what the
    steps point into: ``arena``, the constants in ``consts``, and ``storage``, the persistent
    buffers (shared with the executable and the other plan)."""

    graph: Graph
    memory: MemoryPlan
    runner: Runner
    step_nodes: list[str]
    arena: Buffer
    consts: list[Buffer]
    storage: dict[str, Buffer]
    backend: Backend
    communicate: Callable[[np.ndarray], None] | None = None

    def first_step_of(self, predicate) -> int:
        """Index of the first step whose node satisfies ``predicate`` (else the step count)."""
        nodes = {node.name: node for node in self.graph.nodes}
        for i, name in enumerate(self.step_nodes):
            if predicate(nodes[name]):
                return i
        return len(self.step_nodes)

    def execute(self, start: int = 0, stop: int | None = None, repeat: int = 1) -> None:
        """Run steps ``start`` to ``stop``, ``repeat`` times. With ``communicate`` set
        (``engine.distributed``), the run stops after each collective node's step and hands
        that node's output to ``communicate``, which averages it across processes in place."""
        stop = self.runner.count if stop is None else stop
        if self.communicate is None:
            self.check(*self.runner.run(repeat, start, stop))
            return
        points = [p for p in self.collective_points if start < p[0] <= stop]
        for _ in range(repeat):
            done = start
            for step, value in points:
                self.check(*self.runner.run(1, done, step))
                self.communicate(self.buffer(value))
                done = step
            self.check(*self.runner.run(1, done, stop))

    @cached_property
    def collective_points(self) -> list[tuple[int, Value]]:
        """(step after which its output is complete, output) of each collective node."""
        points, nodes = [], {node.name: node for node in self.graph.nodes}
        for index, name in enumerate(self.step_nodes):
            node = nodes[name]
            last = index + 1 == len(self.step_nodes) or self.step_nodes[index + 1] != name
            if node.op in COLLECTIVES and last:
                points.append((index + 1, node.outputs[0]))
        return points

    def check(self, step: int, code: int) -> None:
        """Raise the RuntimeError for a runner's (failed step, code), if code is non-zero: the
        layer and the cause (``backends.errors``), read from the step's buffers."""
        if code:
            node = next(n for n in self.graph.nodes if n.name == self.step_nodes[step])
            raise RuntimeError(kernel_error_message(node, code, self.buffer))

    def buffer(self, value: Value) -> np.ndarray:
        """``value``'s buffer as the steps see it: its persistent array, or a view of the arena
        at its planned offset (meaningful while the value is live)."""
        if value.name in self.storage:
            return self.backend.to_host(self.storage[value.name])
        start = self.memory.offset(value.name)
        raw = self.backend.to_host(self.arena)[start : start + value.type.nbytes]
        return raw.view(value.type.dtype).reshape(value.shape)


def inference_storage(
    graph: Graph, device: Backend, params: Mapping[str, Buffer]
) -> dict[str, Buffer]:
    """The persistent buffers of another inference plan of ``graph``: the parameter and state
    buffers given in ``params`` (shared, not copied, as is a frozen plan's weight generation)
    and fresh input and output buffers."""
    storage = {v.name: params[v.name] for v in graph.params}
    if WEIGHTS_GENERATION in params:  # a frozen plan's clone repacks after the same loads
        storage[WEIGHTS_GENERATION] = params[WEIGHTS_GENERATION]
    for value in graph.inputs + graph.outputs:
        storage[value.name] = device.from_host(np.full(value.shape, np.nan, value.type.dtype))
    return storage


def build_plan(
    graph: Graph, device: Backend, storage: dict[str, Buffer], memory: MemoryPlan
) -> Plan:
    """Allocate the arena of ``memory`` (the graph's plan) and lower every node to steps that
    address it and ``storage`` (the persistent buffers, found by value name)."""
    arena = device.allocate(memory.arena_bytes)
    arena_address = device.address(arena)
    storage_addresses = {name: device.address(buffer) for name, buffer in storage.items()}

    def address(name: str) -> int:
        if name in storage_addresses:
            return storage_addresses[name]
        return arena_address + memory.offset(name)  # KeyError for a name the plan lacks

    consts: list[Buffer] = []
    steps, step_nodes = [], []
    for node in graph.nodes:
        scratch_key = f"{node.name}#scratch"
        scratch_address = address(scratch_key) if scratch_key in memory.offsets else 0
        node_steps = device.lower(node, address, scratch_address, consts)
        steps += node_steps
        step_nodes += [node.name] * len(node_steps)
    return Plan(graph, memory, device.runner(steps), step_nodes, arena, consts, storage, device)


class Executable:
    """A model compiled for one input shape, batch, dtype and backend.

    Attributes:
        graph: the inference plan's graph, fused by the inference passes unless compiled with
            ``optimize=False`` (print it for the one-line-per-node listing).
        traced_graph: the forward graph as traced, before any pass (what ``engine.save``
            writes); None for an executable not built by ``engine.compile``.
        options: the ``engine.compiler.CompileOptions`` it was built with (None likewise).
        training_graph: the training graph, when compiled with ``train=True``.
        params: parameter and state arrays by ``state_dict`` key (live views: writing into them
            changes the model; read-only when compiled with ``freeze=True``).
        grads: after ``forward_backward``/``train_step``, each parameter's gradient by key.
        training: True in training mode (BatchNorm uses batch statistics, dropout is active).
    """

    def __init__(
        self,
        inference: Plan,
        training: Plan | None,
        storage: dict[str, Buffer],
        extra_state: dict[str, np.ndarray],
        optimizer: Optimizer | None,
        *,
        traced_graph: Graph | None = None,
        options: CompileOptions | None = None,
    ) -> None:
        self._inference, self._training = inference, training
        self._backend = inference.backend
        self._lock = threading.Lock()
        self.graph = inference.graph
        self.traced_graph, self.options = traced_graph, options
        self.training_graph = training.graph if training else None
        self.optimizer = optimizer
        self._storage = storage
        self._input = storage[self.graph.inputs[0].name]
        self._output = storage[self.graph.outputs[0].name]
        self._param_names = [v.name for v in self.graph.params]
        self._extra_state = extra_state
        used = {value.name for node in self.graph.nodes for value in node.inputs}
        self._counters = [
            counter
            for name, counter in extra_state.items()
            if f"{name.rsplit('.', 1)[0]}.running_mean" in used
        ]
        self._dropout_rng = storage.get(DROPOUT_RNG)
        self._generation = storage.get(WEIGHTS_GENERATION)
        self._capture_plans: dict = {}  # engine.capture's plans, built on first use
        self.training = False
        if training is not None:
            graph = training.graph
            self._grad_values = {name: v.name for name, v in graph.grads.items()}
            self._target = storage["target"]
            self._loss = storage[graph.outputs[0].name]
            loss_node = graph.nodes[graph.backward_start - 1]
            self._loss_op = loss_node.op
            self._loss_step = training.first_step_of(lambda node: node is loss_node)
            self._update_step = training.first_step_of(lambda node: node.op in UPDATES)

    # **** Tensors on the host ****

    @property
    def params(self) -> dict[str, np.ndarray]:
        """Parameters and state buffers by ``state_dict`` key: live views on the CPU (writing
        into them changes the model), copies from a GPU (write with ``load_state_dict``).
        Compiled with ``freeze=True``: read-only (kernels may hold the weights packed, and
        only ``load_state_dict`` tells them to repack)."""
        arrays = {name: self._host(name) for name in self._param_names}
        if self._generation is not None:
            for name, array in arrays.items():
                arrays[name] = array.view()
                arrays[name].flags.writeable = False
        return arrays

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """After ``forward_backward``/``train_step``, each parameter's gradient by key (and
        ``"input"`` with ``input_grad=True``): live on the CPU, copies from a GPU."""
        if self._training is None:
            raise RuntimeError("this executable was compiled without train=True")
        return {name: self._host(value) for name, value in self._grad_values.items()}

    @property
    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Optimizer buffers (momentum, Adam's moments) as ``optimizer.<param>.<slot>``."""
        return {
            k: self._backend.to_host(v)
            for k, v in self._storage.items()
            if k.startswith("optimizer.") and k != HYPER_VALUE
        }

    @property
    def rng_state(self) -> dict[str, np.ndarray]:
        """The [seed, step] vector of the dropout masks (empty without dropout)."""
        return {DROPOUT_RNG: self._host(DROPOUT_RNG)} if self._dropout_rng is not None else {}

    def set_tensors(self, tensors: Mapping[str, np.ndarray]) -> None:
        """Copy arrays into the persistent buffers of the same names (parameters, state,
        optimizer slots, the dropout vector; ``extra_state`` keys go to the host counters).
        Callers check names and shapes first (``load_state_dict``, ``engine.train``). A frozen
        plan's weight generation moves, so packed copies of the weights are rebuilt."""
        for name, array in tensors.items():
            if name in self._extra_state:
                np.copyto(self._extra_state[name], array)
                continue
            self._backend.copy_in(self._storage[name], array)
        if self._generation is not None:
            moved = self._backend.to_host(self._generation) + 1
            self._backend.copy_in(self._generation, moved)

    def set_grads(self, grads: Mapping[str, np.ndarray]) -> None:
        """Copy arrays into the gradient buffers by parameter key (``engine.distributed``
        writes back the averaged gradients before the update)."""
        for key, array in grads.items():
            self._backend.copy_in(self._storage[self._grad_values[key]], array)

    def _host(self, name: str) -> np.ndarray:
        return self._backend.to_host(self._storage[name])

    @property
    def extra_state(self) -> dict[str, np.ndarray]:
        """Live non-float buffers (BatchNorm's ``num_batches_tracked``)."""
        return self._extra_state

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input.shape

    @property
    def dtype(self) -> np.dtype:
        return self._input.dtype

    # **** Modes ****

    def train(self, mode: bool = True) -> Executable:
        """Training mode (as ``torch.nn.Module.train``): ``run`` then normalises with batch
        statistics, updates BatchNorm's running statistics and applies dropout."""
        if mode and self._training is None:
            raise RuntimeError("this executable was compiled without train=True")
        self.training = mode
        return self

    def eval(self) -> Executable:
        return self.train(False)

    # **** Running ****

    def run(self, x: np.ndarray, capture: Sequence[str] | None = None):
        """Forward pass on one batch of the compiled shape and dtype; returns a new array.

        Safe to call from several threads: every call shares this executable's input, arena
        and output buffers, so a lock makes calls take turns from loading the input to copying
        the output (the executor releases the GIL meanwhile). For calls that run in parallel,
        give each thread a ``clone()``. Weights are not locked: load new ones between runs.

        ``capture``: names of intermediate values (``engine.capture.capturable(exe)``; a
        layer's output has the layer's name). Then returns ``(output, {name: array})``, from
        a second plan that keeps those values (``engine.capture``), built on first use.
        """
        if capture is not None:
            return self._run_capturing(x, None, capture)
        with self._lock:
            self._load_input(x)
            if self.training:
                self._advance()
                self._training.execute(stop=self._loss_step)
            else:
                self._inference.execute()
            return np.array(self._backend.to_host(self._output), copy=True)

    __call__ = run

    def forward_backward(self, x: np.ndarray, y: np.ndarray, capture: Sequence[str] | None = None):
        """Loss of one batch in training mode; gradients are left in ``grads``, weights are not
        changed (BatchNorm running statistics are, as in a torch forward in train mode).

        ``capture``: names of intermediate values, as in ``run``; then returns ``(loss,
        values, gradients)``, each a dict by name (the loss's gradient with respect to each
        value), and leaves ``grads`` as they were."""
        if capture is not None:
            return self._run_capturing(x, y, capture)
        with self._lock:
            self._load_batch(x, y)
            self._advance()
            self._training.execute(stop=self._update_step)
            return self._loss_value()

    def train_step(self, x: np.ndarray, y: np.ndarray) -> float:
        """``forward_backward`` plus the optimizer update, in one executor call."""
        if self.optimizer is None:
            raise RuntimeError("train_step needs an optimizer: compile(..., optimizer=...)")
        with self._lock:
            self._start_step(x, y)
            self._training.execute()
            return self._loss_value()

    def _start_step(self, x: np.ndarray, y: np.ndarray) -> None:
        """What a training step does before its plan runs (``engine.distributed`` runs the
        plan in parts): load the batch, count the step, set this step's hyperparameters."""
        self._load_batch(x, y)
        self.optimizer.steps += 1
        hyper = np.array(self.optimizer.hyper_values())
        self._backend.copy_in(self._storage[HYPER_VALUE], hyper)
        self._advance()

    def _run_capturing(self, x: np.ndarray, y: np.ndarray | None, names: Sequence[str]):
        """``run`` (``y`` None) or ``forward_backward`` on the capture plan of ``names``."""
        from engine.capture import capture_plan, read_captured, read_gradients

        gradients = y is not None
        if gradients and self._training is None:
            raise RuntimeError("this executable was compiled without train=True")
        training = self.training or gradients
        with self._lock:
            captured = capture_plan(self, names, training, gradients)
            if gradients:
                self._load_batch(x, y)
            else:
                self._load_input(x)
            if training:
                if not gradients:  # the loss is computed but not reported: any valid class
                    self._backend.copy_in(self._target, np.zeros(self._target.shape))
                self._advance()
            captured.plan.execute()
            values = read_captured(captured)
            if gradients:
                loss = float(self._backend.to_host(captured.plan.storage[captured.loss])[0])
                return loss, values, read_gradients(captured)
            output = self._backend.to_host(captured.plan.storage[captured.output])
            return np.array(output, copy=True), values

    def clone(self) -> Executable:
        """Another executable for inference in parallel with this one: it shares the weights
        (the same parameter and state buffers, so a weight written through either is seen by
        both) and has its own arena, input and output buffers and its own lock. It has no
        training plan and runs in eval mode.

        The inference plan is lowered again against the new buffers, on a new instance of the
        backend (on a GPU: its own stream and staging buffers), reusing the memory plan.
        """
        if self.options is None:
            raise RuntimeError("clone needs an executable built by engine.compile")
        device = get_backend(self.options.backend)
        storage = inference_storage(self.graph, device, self._storage)
        plan = build_plan(self.graph, device, storage, self._inference.memory)
        return Executable(
            plan,
            None,
            storage,
            self._extra_state,
            None,
            traced_graph=self.traced_graph,
            options=self.options.for_inference(),
        )

    def _loss_value(self) -> float:
        return float(self._backend.to_host(self._loss)[0])

    def _load_input(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.shape != self._input.shape:
            raise ValueError(
                f"expected an input of shape {list(self._input.shape)} (batch, C, H, W as "
                f"compiled), but got {list(x.shape)}"
            )
        if x.dtype != self._input.dtype:
            raise TypeError(
                f"expected an input of dtype {self._input.dtype}, but got {x.dtype}; "
                f"convert it with x.astype(np.{self._input.dtype})"
            )
        self._backend.copy_in(self._input, x)

    def _load_batch(self, x: np.ndarray, y: np.ndarray) -> None:
        if self._training is None:
            raise RuntimeError("this executable was compiled without train=True")
        self._load_input(x)
        y = np.asarray(y)
        if y.shape != self._target.shape:
            raise ValueError(
                f"expected a target of shape {list(self._target.shape)}, but got {list(y.shape)}"
            )
        if self._loss_op in ("cross_entropy", "margin"):
            classes = self._output.shape[1]
            if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= classes:
                raise ValueError(
                    f"expected integer class indices in [0, {classes}), but got "
                    f"dtype {y.dtype}, range [{y.min()}, {y.max()}]"
                )
        self._backend.copy_in(self._target, y)

    def _advance(self) -> None:
        """Before each training-mode forward: BatchNorm's num_batches_tracked counts it, as in
        torch, and dropout draws new masks (the step wraps at 2^24, exact in float32). Only the
        BatchNorm layers the graph runs count: GoogLeNet's auxiliary heads stay at 0, as torch's
        do when no forward reaches them."""
        for counter in self._counters:
            counter += 1
        if self._dropout_rng is not None:
            # read back each step: a caller may have set it (rng_state is live on the CPU)
            seed_step = np.array(self._backend.to_host(self._dropout_rng))
            seed_step[1] = (seed_step[1] + 1) % 2**24
            self._backend.copy_in(self._dropout_rng, seed_step)

    def poison_buffers(self) -> None:
        """Fill the arenas and the outputs with NaN bit patterns (a testing aid: an element no
        kernel writes then shows up as NaN instead of a stale value)."""
        for plan in (self._inference, self._training):
            if plan is not None:
                self._backend.fill_bytes(plan.arena, 0xFF)
        self._backend.copy_in(self._output, np.full(self._output.shape, np.nan))

    def _execute(self, repeat: int = 1) -> None:
        self._inference.execute(repeat=repeat)

    def profile(self, x: np.ndarray, repeat: int = 20) -> list[dict[str, object]]:
        """Run ``x`` ``repeat`` times and time every step; one row per node (name, op, output
        shape, mean microseconds, share of the total), slowest first."""
        plan = self._inference
        with self._lock:
            self._load_input(x)
            times, step, code = plan.runner.profile(repeat)
            plan.check(step, code)
        per_node: dict[str, float] = {}
        for name, seconds in zip(plan.step_nodes, times, strict=True):
            per_node[name] = per_node.get(name, 0.0) + seconds / repeat
        total = sum(per_node.values()) or 1.0
        nodes = {node.name: node for node in plan.graph.nodes}
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

    # **** Memory ****

    def memory_report(self, top: int = 5) -> dict[str, object]:
        """Bytes of the plan in use (the training plan when compiled with train=True): the
        planner's numbers (``graph.memory.plan_report``: naive, arena, lower bound before and
        after the passes, recompute, the ``top`` buffers live at the peak step) and the
        persistent ``param_bytes``, ``grad_bytes`` and ``optimizer_bytes`` outside the arena."""
        plan = self._training or self._inference
        grads = getattr(self, "_grad_values", {})
        optimizer = [k for k in self._storage if k.startswith("optimizer.") and k != HYPER_VALUE]
        return {
            "plan": "training" if self._training else "inference",
            **plan_report(plan.memory, top),
            "param_bytes": sum(self._storage[k].nbytes for k in self._param_names),
            "grad_bytes": sum(self._storage[v].nbytes for k, v in grads.items() if k != "input"),
            "optimizer_bytes": sum(self._storage[k].nbytes for k in optimizer),
            "dtype_bytes": self._input.itemsize,
        }

    # **** Weights ****

    def state_dict(self) -> OrderedDict[str, np.ndarray]:
        """Copies of parameters and buffers with PyTorch's keys (``num_batches_tracked`` too,
        so ``torch_model.load_state_dict`` accepts it strictly)."""
        state = OrderedDict((k, np.array(v, copy=True)) for k, v in self.params.items())
        state.update((k, v.copy()) for k, v in self._extra_state.items())
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Copy weights in from a mapping keyed like torch's ``state_dict()`` (NumPy arrays or
        anything ``np.asarray`` takes). Every key must match in name and shape; BatchNorm's
        ``num_batches_tracked`` is accepted and ignored."""
        names = set(self._param_names)
        missing = sorted(names - set(state))
        unexpected = sorted(set(state) - names - set(self._extra_state))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        arrays = {name: np.asarray(state[name]) for name in self._param_names}
        for name, array in arrays.items():
            expected = self._storage[name].shape
            if array.shape != expected:
                raise ValueError(
                    f"load_state_dict: {name} expected shape {list(expected)}, "
                    f"but got {list(array.shape)}"
                )
            if not np.issubdtype(array.dtype, np.number):
                raise TypeError(f"load_state_dict: {name} must be numeric, got {array.dtype}")
        self.set_tensors(arrays)

    def __repr__(self) -> str:
        plans = f"steps={self._inference.runner.count}"
        if self._training is not None:
            plans += f", training steps={self._training.runner.count}"
        return (
            f"Executable(input={list(self._input.shape)}, dtype={self._input.dtype}, "
            f"nodes={len(self.graph.nodes)}, {plans}, "
            f"arena={self._inference.memory.arena_bytes:,} bytes)"
        )
