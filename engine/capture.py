"""Capture: any layer's output (and its gradient) for one batch, for ``Executable.run(x,
capture=...)`` and ``Executable.forward_backward(x, y, capture=...)``.

An ordinary plan keeps only the graph's output: every intermediate value lives in the arena and
is overwritten as soon as its last reader has run, and the inference passes fuse many of them
away (a conv's output inside ``conv2d_fused``). So a capture does not read the ordinary plan:
it compiles a second plan in which the captured values are extra graph outputs. Graph outputs
live in persistent buffers outside the arena, so the planner keeps them whole, and the fusion
passes stop at a graph output, so a captured value is never fused away (its producer runs
unfused in this plan only). Gradients come from the same autodiff as training
(``graph.autodiff``'s ``value_grads``), also kept as persistent buffers.

The plan is built at the first capture of a set of names and cached on the executable; it
shares the executable's parameter, state, input and target buffers, so it always sees the
current weights. Ordinary ``run`` calls never touch it and copy nothing extra.

Names are the traced graph's value names (``exe.traced_graph``; ``capturable(exe)`` lists them):
a layer's output is named after the layer (``layer1.0.relu``, ``features.3``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from engine.compiler import plan_graph
from graph.autodiff import autodiff
from graph.ir import Graph, Value
from graph.passes.inference import optimize_for_inference

if TYPE_CHECKING:
    from engine.executable import Executable, Plan


@dataclass(frozen=True)
class CapturePlan:
    """A plan whose graph outputs include the captured values; ``output`` names the model's
    output (the logits), ``loss`` the loss value of a training-mode plan (else None)."""

    plan: Plan
    names: tuple[str, ...]
    output: str
    loss: str | None
    gradients: bool


def capturable(exe: Executable) -> list[str]:
    """The names ``capture`` accepts: every value a node of the traced graph computes."""
    graph = _traced(exe)
    return [value.name for node in graph.nodes for value in node.outputs]


def capture_plan(exe: Executable, names: Sequence[str], training: bool, gradients: bool):
    """The cached ``CapturePlan`` of ``exe`` for ``names`` (built on first use)."""
    names = tuple(dict.fromkeys(names))
    _check_names(exe, names)
    key = (names, training, gradients)
    if key not in exe._capture_plans:
        exe._capture_plans[key] = _build(exe, names, training, gradients)
    return exe._capture_plans[key]


def read_captured(captured: CapturePlan) -> dict[str, np.ndarray]:
    """Copies of the captured values after a run of ``captured.plan``."""
    storage, backend = captured.plan.storage, captured.plan.backend
    return {name: np.array(backend.to_host(storage[name]), copy=True) for name in captured.names}


def read_gradients(captured: CapturePlan) -> dict[str, np.ndarray]:
    """Copies of the loss's gradient with respect to each captured value."""
    graph, backend = captured.plan.graph, captured.plan.backend
    return {
        name: np.array(backend.to_host(captured.plan.storage[graph.grads[name].name]), copy=True)
        for name in captured.names
    }


def _traced(exe: Executable) -> Graph:
    if exe.traced_graph is None or exe.options is None:
        raise RuntimeError("capture needs an executable built by engine.compile or engine.load")
    return exe.traced_graph


def _check_names(exe: Executable, names: tuple[str, ...]) -> None:
    known = capturable(exe)
    unknown = [name for name in names if name not in set(known)]
    if not names or unknown:
        raise ValueError(
            f"capture: {unknown or 'no names'} not computed by the model; capturable values "
            f"(in execution order): {', '.join(known)}"
        )


def _build(exe: Executable, names: tuple[str, ...], training: bool, gradients: bool):
    """Compile the capture graph against ``exe``'s buffers."""
    from engine.executable import build_plan

    forward, options, device = _traced(exe), exe.options, exe._backend
    output = forward.outputs[0].name
    if training:
        graph = autodiff(
            forward,
            options.loss or "cross_entropy",
            label_smoothing=options.label_smoothing,
            value_grads=names if gradients else (),
            sync_batch_norm=options.sync_batch_norm,
        )
        loss = graph.outputs[0].name
        missing = [name for name in names if gradients and name not in graph.grads]
        if missing:
            raise ValueError(f"capture: the loss does not depend on {missing}: no gradient")
    else:
        graph, loss = forward.copy(), None
    kept = dict.fromkeys([v.name for v in graph.outputs] + [output, *names])
    graph.outputs = [graph.values[name] for name in kept]
    if not training and options.optimize:
        graph = optimize_for_inference(graph, device.supported_ops)
    memory = plan_graph(graph, device, inplace=options.inplace, reorder=options.reorder)
    storage = _storage(exe, graph)
    plan = build_plan(graph, device, storage, memory)
    if exe._training is not None:  # under engine.distributed: synchronise as training does
        plan.communicate = exe._training.communicate
    return CapturePlan(plan, names, output, loss, gradients)


def _storage(exe: Executable, graph: Graph) -> dict:
    """The executable's buffers for everything the two plans share (parameters, state, the
    input, the target, constants), new ones for this plan's outputs and gradients."""
    shared = exe._storage
    device = exe._backend
    storage = {}
    fresh: list[Value] = list(graph.outputs) + list(graph.grads.values())
    for value in graph.inputs + graph.params + [graph.values[n] for n in graph.consts]:
        if value.name in shared:
            storage[value.name] = shared[value.name]
        else:
            fresh.append(value)
    for value in fresh:
        fill = graph.consts.get(value.name, np.nan)
        storage[value.name] = device.from_host(np.full(value.shape, fill, value.type.dtype))
    return storage
