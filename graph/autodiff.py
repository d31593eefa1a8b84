"""Reverse-mode autodiff: a forward Graph plus a loss becomes a training Graph in the same IR.

The algorithm reads in one sitting (micrograd's ``backward``, tinygrad's ``compute_gradient``):

1. Replay the forward nodes in training mode: BatchNorm normalises with batch statistics and
   updates its running statistics (``batch_norm_train``), dropout draws a seeded mask
   (``dropout_train``). The replay keeps every value name.
2. Append the loss node, reading the logits and a new ``target`` input.
3. Seed the loss gradient with a constant 1 and walk the nodes in reverse; each op's VJP rule
   (``graph.ops``) emits backward nodes and returns one gradient per input. A value used by
   several nodes gets the sum of their gradients (``add`` nodes), as micrograd's ``+=``.
4. The gradient of every parameter is recorded in ``graph.grads`` (name -> value): the
   executable keeps those values in persistent storage.

Saved activations are simply forward values that backward nodes read; the memory planner
sees their lifetimes.
"""

from __future__ import annotations

from collections.abc import Sequence

from graph.ir import Graph, TensorType, Value
from graph.ops import get_op
from graph.ops.sync_norm import sync_batch_norm_form

LOSSES = ("cross_entropy", "mse", "margin")
DROPOUT_RNG = "dropout.rng"
_TRAINING_FORMS = {"batch_norm": "batch_norm_train", "dropout": "dropout_train"}


def autodiff(
    forward: Graph,
    loss: str = "cross_entropy",
    input_grad: bool = False,
    value_grads: Sequence[str] = (),
    sync_batch_norm: int | None = None,
    **loss_attrs: object,
) -> Graph:
    """The training graph of ``forward`` (left unchanged) under ``loss``.

    Args:
        forward: a traced inference graph with one output (the logits or prediction).
        loss: "cross_entropy" (target: class indices, ``label_smoothing`` attr), "mse"
            (target: same shape as the output) or "margin" (capsule lengths [N, C] and class
            indices, Sabour et al.'s margin loss).
        input_grad: also differentiate with respect to the graph input (``grads["input"]``),
            for gradient checks and input-space methods.
        value_grads: names of forward values whose gradients to record in ``grads`` too
            (under the value's name), for ``Executable.forward_backward(..., capture=...)``.
        sync_batch_norm: normalise with batch statistics over this many processes' batches
            (``engine.distributed``): each batch_norm becomes the sub-graph of
            ``graph.ops.sync_norm`` (``allreduce_mean`` nodes between its statistics); None:
            ``batch_norm_train``, statistics of this process's batch alone.
    Returns:
        A graph with inputs (input, target), outputs (loss,), ``grads`` for every parameter
        that the loss depends on, and ``backward_start``: the index of the first node after
        the loss node (the forward pass and the loss come before it).
    """
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, but got loss={loss!r}")
    graph, renamed = _replay_training_form(forward, sync_batch_norm)
    prediction = renamed[forward.outputs[0].name]
    target_shape = prediction.shape if loss == "mse" else prediction.shape[:1]
    target = graph.add_value("target", TensorType(target_shape, prediction.type.dtype), "input")
    attrs = {}
    if loss == "cross_entropy":
        attrs = {"label_smoothing": float(loss_attrs.get("label_smoothing", 0.0))}
    loss_node = graph.add_node(
        loss,
        [prediction, target],
        get_op(loss).infer([prediction.type, target.type], attrs),
        attrs,
        "loss",
    )
    graph.outputs = [loss_node.outputs[0]]
    graph.backward_start = len(graph.nodes)
    seed = graph.add_value("loss.seed", loss_node.outputs[0].type, "const")
    graph.consts[seed.name] = 1.0
    extra = [graph.values[name] for name in value_grads]
    graph.grads = _backward(graph, loss_node.outputs[0], seed, input_grad, extra)
    graph.verify()
    return graph


def _replay_training_form(
    forward: Graph, sync_batch_norm: int | None = None
) -> tuple[Graph, dict[str, Value]]:
    """A copy of ``forward`` with mode-dependent ops in their training form (BatchNorm's
    synchronised over ``sync_batch_norm`` processes when given)."""
    graph = Graph()
    renamed: dict[str, Value] = {}
    for value in forward.inputs + forward.params:
        renamed[value.name] = graph.add_value(value.name, value.type, value.role)
    for node in forward.nodes:
        op = _TRAINING_FORMS.get(node.op, node.op)
        inputs = [renamed[v.name] for v in node.inputs]
        attrs = dict(node.attrs)
        if op == "dropout_train":
            inputs.append(_dropout_counter(graph))
        try:
            if op == "batch_norm_train" and sync_batch_norm is not None:
                replayed = sync_batch_norm_form(graph, node, inputs, sync_batch_norm)
            else:
                out_types = get_op(op).infer([v.type for v in inputs], attrs)
                replayed = graph.add_node(op, inputs, out_types, attrs, node.name)
        except (ValueError, TypeError) as err:
            raise type(err)(f"{node.name}: {err}") from None
        renamed.update(zip([v.name for v in node.outputs], replayed.outputs, strict=False))
    return graph, renamed


def _dropout_counter(graph: Graph) -> Value:
    """The [seed, step] vector every dropout layer reads (one per graph, a constant the
    executable advances once per training-mode forward)."""
    if DROPOUT_RNG not in graph.values:
        dtype = graph.inputs[0].type.dtype
        graph.add_value(DROPOUT_RNG, TensorType((2,), dtype), "const")
        graph.consts[DROPOUT_RNG] = 0.0
    return graph.values[DROPOUT_RNG]


def _backward(
    graph: Graph, loss: Value, seed: Value, input_grad: bool, extra: list[Value]
) -> dict[str, Value]:
    """Reverse walk from ``loss``; returns the gradient value of each parameter (and of the
    input when ``input_grad``, and of each ``extra`` value)."""
    sources = [v for v in graph.params if v.role == "param"] + graph.inputs[:1] * input_grad
    sources += extra
    wanted = _needs_grad(graph, sources)
    grads: dict[str, Value] = {loss.name: seed}
    for node in reversed(graph.nodes[: graph.backward_start]):
        out_grads = [grads.get(v.name) for v in node.outputs]
        if all(g is None for g in out_grads):
            continue
        rule = get_op(node.op).vjp
        if rule is None:
            raise NotImplementedError(f"{node.name}: failed to compute gradient for {node.op}")
        wants = [v.name in wanted for v in node.inputs]
        in_grads = rule(node, out_grads, wants, _emitter(graph, node.name))
        assert len(in_grads) == len(node.inputs), f"{node.op} VJP must return one grad per input"
        for value, grad, want in zip(node.inputs, in_grads, wants, strict=True):
            if want and grad is not None:
                grads[value.name] = _accumulate(graph, grads.get(value.name), grad, value)
    return {v.name: grads[v.name] for v in sources if v.name in grads}


def _needs_grad(graph: Graph, sources: list[Value]) -> set[str]:
    """Values that depend on a source (a trainable parameter, or the input)."""
    depends = {v.name for v in sources}
    for node in graph.nodes:
        if any(v.name in depends for v in node.inputs):
            depends.update(v.name for v in node.outputs)
    return depends


def _emitter(graph: Graph, layer: str):
    def emit(op: str, inputs: list[Value], **attrs: object) -> list[Value]:
        out_types = get_op(op).infer([v.type for v in inputs], attrs)
        name = graph.unique_name(f"{layer}.{op}")
        return graph.add_node(op, inputs, out_types, attrs, name).outputs

    return emit


def _accumulate(graph: Graph, total: Value | None, grad: Value, value: Value) -> Value:
    """Fan-out: the gradient of a value read by several nodes is the sum of their gradients."""
    if grad.type != value.type:
        raise AssertionError(f"gradient of %{value.name} has type {grad.type}, not {value.type}")
    if total is None:
        return grad
    name = graph.unique_name(f"{value.name}.grad_sum")
    return graph.add_node("add", [total, grad], [value.type], {}, name).outputs[0]
