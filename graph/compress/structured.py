"""Filter pruning (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): remove whole
conv filters with the smallest L1 norms and rewrite the model to fewer channels.

The traced graph says where each conv's channels go. From a conv's output the walk passes
through ops that treat channels independently (BatchNorm, whose per-channel parameters and
statistics are sliced with the filters; activations; pooling; dropout) and must end at
consumers that read channels through their weights: a conv (its input-channel slice is cut) or
a linear after a flatten (the columns of the removed channels' blocks are cut). A conv whose
channels reach anything else (a residual add, a concat, a grouped conv, the graph's output) is
left as it is: cutting it would change what the other operand meets.

``filter_masks`` gives the equivalent element masks: the removed filters and the consumers'
weights that read them. A model with those entries zeroed (``masked``) computes exactly what
the rewritten model computes, since the consumers ignore the removed channels either way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from graph.ir import Graph, Node
from graph.nn import BatchNorm2d, Conv2d, Linear, Module, Parameter
from graph.trace import trace

# Ops through which a channel stays a channel (the walk's pass-through set).
_CHANNELWISE = frozenset(
    {
        "batch_norm", "relu", "leaky_relu", "sigmoid", "tanh", "gelu", "hardtanh", "dropout",
        "max_pool2d", "avg_pool2d", "adaptive_max_pool2d", "adaptive_avg_pool2d",
        "global_avg_pool2d",
    }
)  # fmt: skip


@dataclass(frozen=True)
class FilterPlan:
    """One prunable conv: the filters kept and where its channels are consumed."""

    conv: str  # module path
    keep: np.ndarray  # sorted filter indices kept
    norms: tuple[str, ...]  # BatchNorm module paths on the way
    consumers: tuple[tuple[str, int], ...]  # (conv or linear path, spatial size per channel)


def plan_filters(model: Module, input_shape: Sequence[int], fraction: float) -> list[FilterPlan]:
    """For each prunable conv, keep the ``1 - fraction`` share of its filters (at least one)
    with the largest L1 norms."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"filter pruning fraction must be in [0, 1), but got {fraction}")
    graph = trace(model, input_shape, batch=1)
    modules = dict(model.named_modules())
    plans = []
    for node in graph.nodes:
        if node.op != "conv2d" or node.attrs.get("groups", 1) != 1:
            continue
        route = _route(graph, node)
        if route is None:
            continue
        weight = modules[node.name].weight.data
        norms = np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)
        count = max(1, weight.shape[0] - int(round(fraction * weight.shape[0])))
        keep = np.sort(np.argsort(-norms, kind="stable")[:count])
        plans.append(FilterPlan(node.name, keep, *route))
    return plans


def _route(graph: Graph, conv: Node) -> tuple[tuple[str, ...], tuple[tuple[str, int], ...]] | None:
    """The BatchNorms and the consumers of ``conv``'s channels, or None if they reach an op
    the rewrite cannot follow."""
    norms, consumers = [], []
    frontier = [(conv.outputs[0], None)]  # (value, spatial size once flattened)
    outputs = {v.name for v in graph.outputs}
    while frontier:
        value, flat = frontier.pop()
        if value.name in outputs:
            return None
        for user in value.users:
            if user.inputs[0] is not value:
                return None  # read as a weight or a second operand
            if user.op in _CHANNELWISE and flat is None:
                if user.op == "batch_norm":
                    norms.append(user.name)
                frontier.append((user.outputs[0], None))
            elif user.op == "conv2d" and flat is None and user.attrs.get("groups", 1) == 1:
                consumers.append((user.name, 1))
            elif user.op == "flatten" and flat is None and len(value.type.shape) == 4:
                frontier.append((user.outputs[0], int(np.prod(value.type.shape[2:]))))
            elif user.op == "linear" and flat is not None:
                consumers.append((user.name, flat))
            else:
                return None
    return tuple(norms), tuple(consumers)


def _consumer_columns(keep: np.ndarray, spatial: int) -> np.ndarray:
    """The input columns of the kept channels (each a block of ``spatial`` columns)."""
    return (keep[:, None] * spatial + np.arange(spatial)[None, :]).ravel()


def prune_filters(model: Module, plans: Sequence[FilterPlan]) -> Module:
    """A copy of ``model`` rewritten to the kept filters of ``plans``."""
    pruned = copy.deepcopy(model)
    modules = dict(pruned.named_modules())
    for plan in plans:
        conv = modules[plan.conv]
        _cut(conv, "weight", plan.keep, 0)
        _cut(conv, "bias", plan.keep, 0)
        conv.out_channels = plan.keep.size
        for path in plan.norms:
            norm = modules[path]
            assert isinstance(norm, BatchNorm2d)
            for name in ("weight", "bias", "running_mean", "running_var"):
                _cut(norm, name, plan.keep, 0)
            norm.num_features = plan.keep.size
        for path, spatial in plan.consumers:
            consumer = modules[path]
            columns = _consumer_columns(plan.keep, spatial)
            _cut(consumer, "weight", columns, 1)
            if isinstance(consumer, Conv2d):
                consumer.in_channels = plan.keep.size
            else:
                assert isinstance(consumer, Linear)
                consumer.in_features = columns.size
    return pruned


def _cut(module: Module, name: str, index: np.ndarray, axis: int) -> None:
    tensor = getattr(module, name)
    if tensor is None:
        return
    if isinstance(tensor, Parameter):
        setattr(module, name, Parameter(np.take(tensor.data, index, axis=axis)))
    else:
        setattr(module, name, np.ascontiguousarray(np.take(tensor, index, axis=axis)))


def filter_masks(model: Module, plans: Sequence[FilterPlan]) -> dict[str, np.ndarray]:
    """Element masks (True = kept) equivalent to ``plans``: the removed filters, and the
    consumers' weights that read their channels."""
    modules = dict(model.named_modules())
    masks: dict[str, np.ndarray] = {}

    def mask_of(path: str) -> np.ndarray:
        key = f"{path}.weight"
        return masks.setdefault(key, np.ones(modules[path].weight.data.shape, bool))

    for plan in plans:
        drop = np.setdiff1d(np.arange(modules[plan.conv].weight.data.shape[0]), plan.keep)
        mask_of(plan.conv)[drop] = False
        for path, spatial in plan.consumers:
            mask_of(path)[:, _consumer_columns(drop, spatial)] = False
    return masks
