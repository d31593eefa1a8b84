"""Synchronised BatchNorm: batch statistics over the batches of all processes of a
data-parallel run (``engine.distributed``), as ``torch.nn.SyncBatchNorm``.

``autodiff(..., sync_batch_norm=N)`` replays each ``batch_norm`` layer as the sub-graph
``sync_batch_norm_form`` builds. Only per-process MEANS cross processes, through
``allreduce_mean`` (graph/ops/collective.py): the processes' batches are of equal size, so the
mean of their means is the global mean.

Forward (training form), per channel, over a local batch x [N, C, ...]:

- ``mean = allreduce_mean(batch_moments(x))``: the global batch mean;
- ``var = allreduce_mean(batch_moments(x, mean))``: the mean of (x - mean)^2, the global
  biased variance;
- ``y, invstd = sync_batch_norm(x, running_mean, running_var, mean, var[, weight, bias])``:
  ``invstd = 1 / sqrt(var + eps)``, ``y = (x - mean) * invstd * weight + bias``, and the
  running statistics are updated in place as ``batch_norm_train`` does, with the unbiased
  variance ``var * M / (M - 1)`` from the GLOBAL count ``M = processes * N * H * W``.

Backward (``sync_batch_norm``'s VJP), with ``xhat = (x - mean) * invstd``:

- ``local = batch_norm_grad_moments(gy, x, mean, invstd)`` = [mean(gy); mean(gy * xhat)],
  ``moments = allreduce_mean(local)``;
- ``sync_batch_norm_grad``: ``grad_x = invstd * weight * (gy - moments[0] - xhat *
  moments[1])`` (PyTorch's batch-norm backward with global means), and the LOCAL parameter
  gradients ``grad_weight = M_local * local[1]`` (the sum of gy * xhat), ``grad_bias =
  M_local * local[0]`` (the sum of gy).

Each process thus computes the gradients of the sum of all processes' losses (the convention
of graph/ops/collective.py); the driver then averages the parameter gradients, which makes the
whole step equal one process with the batch of all N. In one process every value equals
``batch_norm_train``'s and ``batch_norm_grad``'s.
"""

from __future__ import annotations

from graph.ir import Graph, Node, TensorType, Value
from graph.ops import get_op, no_macs, register
from graph.ops.norm import _batch_norm_shape, _expect_channel_vectors


def _batch_moments_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """x [N, C, ...] and optionally the centre [C]: the per-channel mean of x, or of
    (x - centre)^2."""
    if len(in_types) not in (1, 2):
        raise ValueError(f"batch_moments takes x and optionally a centre, not {len(in_types)}")
    x = in_types[0]
    if len(x.shape) not in (2, 4):
        raise ValueError(f"batch_moments expects a rank-2 or rank-4 input, but got {list(x.shape)}")
    _expect_channel_vectors("batch_moments", x, in_types[1:], ("centre",))
    return [TensorType((x.shape[1],), x.dtype)]


def _batch_norm_grad_moments_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """gy, x, mean, invstd: [mean(gy); mean(gy * xhat)] per channel, [2, C]."""
    gy, x = in_types[:2]
    if gy != x:
        raise ValueError(f"batch_norm_grad_moments: gradient {gy} does not match input {x}")
    _batch_moments_shape([x], attrs)
    _expect_channel_vectors("batch_norm_grad_moments", x, in_types[2:], ("mean", "invstd"))
    return [TensorType((2, x.shape[1]), x.dtype)]


def _sync_batch_norm_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """Outputs y and invstd (saved for the backward pass)."""
    if len(in_types) not in (5, 7):
        raise ValueError(
            "sync_batch_norm takes x, running_mean, running_var, mean, var and optionally "
            f"weight and bias, but got {len(in_types)} inputs"
        )
    x, stats = in_types[0], in_types[3:5]
    _batch_norm_shape([x, *in_types[1:3], *in_types[5:]], attrs)
    _expect_channel_vectors("sync_batch_norm", x, stats, ("mean", "var"))
    if not 0.0 <= attrs["momentum"] <= 1.0:
        raise ValueError(f"batch_norm momentum must be in [0, 1], got {attrs['momentum']}")
    processes = attrs["processes"]
    if not isinstance(processes, int) or processes < 1:
        raise ValueError(f"sync_batch_norm processes must be a positive integer, not {processes}")
    per_channel = x.numel // x.shape[1]
    if processes * per_channel < 2:
        raise ValueError(
            f"batch_norm in training mode needs more than 1 value per channel over all "
            f"processes, but got {processes} process(es) x {per_channel} per channel for "
            f"input shape {list(x.shape)}"
        )
    return [x, TensorType((x.shape[1],), x.dtype)]


def _sync_batch_norm_vjp(node, grads, wants, emit):
    """The whole input gradient through the global statistics (module docstring); mean and
    var get none, since it is already in grad_x."""
    x, mean, invstd, gy = node.inputs[0], node.inputs[3], node.outputs[1], grads[0]
    local = emit("batch_norm_grad_moments", [gy, x, mean, invstd])[0]
    moments = emit("allreduce_mean", [local])[0]
    affine = node.inputs[5:6]
    grad_x, grad_w, grad_b = emit(
        "sync_batch_norm_grad", [gy, x, mean, invstd, moments, local, *affine]
    )
    return [grad_x, None, None, None, None] + ([grad_w, grad_b] if affine else [])


def _sync_batch_norm_grad_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """gy, x, mean, invstd, moments, local moments [, weight] -> grad_x, grad_weight,
    grad_bias."""
    if len(in_types) not in (6, 7):
        raise ValueError(f"sync_batch_norm_grad takes 6 or 7 inputs, but got {len(in_types)}")
    gy, x = in_types[:2]
    if gy != x:
        raise ValueError(f"sync_batch_norm_grad: gradient {gy} does not match input {x}")
    vectors = in_types[2:4] + in_types[6:]
    _expect_channel_vectors("sync_batch_norm_grad", x, vectors, ("mean", "invstd", "weight"))
    for name, t in zip(("moments", "local moments"), in_types[4:6], strict=True):
        if t.shape != (2, x.shape[1]):
            raise ValueError(
                f"sync_batch_norm_grad {name} must have shape [2, {x.shape[1]}], but got "
                f"{list(t.shape)}"
            )
    channel = TensorType((x.shape[1],), x.dtype)
    return [x, channel, channel]


def sync_batch_norm_form(graph: Graph, node: Node, inputs: list[Value], processes: int) -> Node:
    """Append the training form of ``node`` (a batch_norm reading ``inputs``: x, running_mean,
    running_var[, weight, bias]) with statistics over ``processes`` batches to ``graph``.

    The statistics nodes are named ``<layer>.local_mean``, ``<layer>.mean``, ``<layer>.local_var``
    and ``<layer>.var``; the returned ``sync_batch_norm`` node keeps the layer's name, so its
    output keeps the name of the batch_norm's and the running statistics stay the same state
    values. Returns that node."""

    def add(op: str, args: list[Value], name: str, **attrs: object) -> Node:
        types = get_op(op).infer([v.type for v in args], attrs)
        return graph.add_node(op, args, types, attrs, name)

    def statistic(args: list[Value], name: str) -> Value:
        local = add("batch_moments", args, graph.unique_name(f"{node.name}.local_{name}"))
        averaged = graph.unique_name(f"{node.name}.{name}")
        return add("allreduce_mean", local.outputs, averaged).outputs[0]

    x = inputs[0]
    mean = statistic([x], "mean")
    var = statistic([x, mean], "var")
    attrs = {**node.attrs, "processes": processes}
    return add("sync_batch_norm", [*inputs[:3], mean, var, *inputs[3:]], node.name, **attrs)


register("batch_moments", _batch_moments_shape, no_macs, arity=None)
register("batch_norm_grad_moments", _batch_norm_grad_moments_shape, no_macs, arity=4)
register(
    "sync_batch_norm",
    _sync_batch_norm_shape,
    no_macs,
    arity=None,
    vjp=_sync_batch_norm_vjp,
    mutates=(1, 2),
    eps=1e-5,
    momentum=0.1,
    processes=1,
)
register(
    "sync_batch_norm_grad",
    _sync_batch_norm_grad_shape,
    no_macs,
    arity=None,
    inplace=(0,),
)
