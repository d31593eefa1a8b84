"""Recompute (Chen et al. 2016, "Training deep nets with sublinear memory cost"): drop chosen
activations after the forward pass and recompute them in the backward pass, just before the
first backward node that reads them.

The pass rewrites (a copy of) a training graph (``graph.autodiff``) in the same IR:

1. Saved values are forward values that backward nodes read. ``policy`` picks the dropped
   ones, in groups that are recomputed together:
   - ``"sqrt"``: the forward pass is cut into about sqrt(k) segments of equal saved bytes at
     its articulation points (the k places where a single value is all that flows from one
     node to the rest of the forward pass: a ResNet block's output). Each segment's saved
     values are dropped, except its last value (the checkpoint the next segment starts from);
     the last segment is kept, since the backward pass starts there anyway.
   - a list of layer names: the saved values of those layers' nodes (the layer and every
     node below it), one group per name.
2. For each group, clones of the forward nodes needed to rebuild its dropped values (walking
   back through values that are no longer live, to kept values, checkpoints and parameters)
   are inserted before the group's first backward reader, and the backward nodes read the
   clones. The originals then die in the forward pass; the planner sees the shorter lives.

Clones run the same kernels on the same inputs, so gradients are bit-identical. A node that
does more than compute its outputs has a recompute form: ``batch_norm_train`` becomes
``batch_norm_recompute``, which gives y without updating the running statistics a second
time. Dropout masks are a pure function of the step's seed and the element, so the clone draws
the same mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from graph.ir import Graph, Node, Value
from graph.ops import get_op

RECOMPUTE_FORMS = {"batch_norm_train": "batch_norm_recompute"}


def recompute(graph: Graph, policy: str | Sequence[str]) -> Graph:
    """A copy of ``graph`` (a training graph) that recomputes the activations ``policy``
    picks: "sqrt" or a list of layer names."""
    if graph.backward_start is None:
        raise ValueError("recompute applies to training graphs (compile with train=True)")
    graph = graph.copy()
    forward = graph.nodes[: graph.backward_start - 1]
    backward = graph.nodes[graph.backward_start :]
    in_backward = {node.name for node in backward}
    saved = {
        v.name
        for node in forward
        for v in node.outputs
        if any(user.name in in_backward for user in v.users)
    }
    if policy == "sqrt":
        groups, checkpoints = _sqrt_segments(graph, forward, saved)
    elif isinstance(policy, str):
        raise ValueError(f'recompute must be "sqrt" or a list of layer names, not {policy!r}')
    else:
        groups, checkpoints = _layer_groups(forward, list(policy)), set()
    dropped = {
        v.name
        for group in groups
        for node in group
        for k, v in enumerate(node.outputs)
        if v.name in saved and v.name not in checkpoints and _recomputable(node, k)
    }
    kept = (saved - dropped) | checkpoints
    inserts: dict[str, list[Node]] = {}
    for group in groups:
        _recompute_group(graph, group, dropped, kept, in_backward, backward, inserts)
    graph.nodes = graph.nodes[: graph.backward_start] + [
        clone_or_node for node in backward for clone_or_node in (*inserts.get(node.name, ()), node)
    ]
    graph.verify()
    return graph


def _recomputable(node: Node, output: int) -> bool:
    """Whether the recompute form of ``node`` gives its ``output``."""
    if node.op not in RECOMPUTE_FORMS:
        return True
    return output < len(_form_types(node))


def _form_types(node: Node):
    op = RECOMPUTE_FORMS.get(node.op, node.op)
    return get_op(op).infer([v.type for v in node.inputs], node.attrs)


def _sqrt_segments(
    graph: Graph, forward: list[Node], saved: set[str]
) -> tuple[list[list[Node]], set[str]]:
    """About sqrt(k) segments of equal saved bytes, cut at articulation points; all but the
    last are recomputed. Returns (segments to recompute, their checkpoint values)."""
    cuts = _articulation_points(forward, graph.nodes[graph.backward_start - 1])
    if not cuts:
        return [], set()
    cumulative, total = [], 0
    for node in forward:
        total += sum(v.type.nbytes for v in node.outputs if v.name in saved)
        cumulative.append(total)
    segments = max(2, round(math.sqrt(len(cuts))))
    chosen: list[int] = []
    for j in range(1, segments):
        target = total * j / segments
        best = min(cuts, key=lambda i: abs(cumulative[i] - target))
        if best not in chosen and (not chosen or best > chosen[-1]):
            chosen.append(best)
    groups, start = [], 0
    for end in chosen:
        groups.append(forward[start : end + 1])
        start = end + 1
    return groups, {forward[i].outputs[0].name for i in chosen}


def _articulation_points(forward: list[Node], loss: Node) -> list[int]:
    """Positions i where the only activation flowing from nodes <= i to later forward nodes
    (or to the loss) is node i's first output. Backward readers do not count: a recomputed
    segment needs only what flows forward."""
    position = {node.name: i for i, node in enumerate(forward)}
    end = len(forward)  # the loss node
    crossing = [0] * (end + 1)
    last_read: dict[str, int] = {}
    for i, node in enumerate(forward):
        for v in node.outputs:
            readers = [
                end if u is loss else position[u.name]
                for u in v.users
                if u.name in position or u is loss
            ]
            last_read[v.name] = last = max(readers, default=i)
            crossing[i] += 1  # live across the boundaries after nodes i .. last - 1
            crossing[last] -= 1
    cuts, live = [], 0
    for i, node in enumerate(forward[:-1]):
        live += crossing[i]
        if node.outputs and live == 1 and last_read[node.outputs[0].name] > i:
            cuts.append(i)
    return cuts


def _layer_groups(forward: list[Node], layers: list[str]) -> list[list[Node]]:
    """One group per layer name: its forward nodes (the layer itself and those below it)."""
    groups, taken = [], set()
    for layer in layers:
        group = [
            node
            for node in forward
            if (node.name == layer or node.name.startswith(layer + ".")) and node.name not in taken
        ]
        if not group:
            tops = sorted({node.name.split(".")[0] for node in forward})
            raise ValueError(
                f"recompute: no layer named {layer!r} in the forward pass; "
                f"top-level layers are {tops}"
            )
        taken.update(node.name for node in group)
        groups.append(group)
    return groups


def _recompute_group(
    graph: Graph,
    group: list[Node],
    dropped: set[str],
    kept: set[str],
    in_backward: set[str],
    backward: list[Node],
    inserts: dict[str, list[Node]],
) -> None:
    """Clone what rebuilds the group's dropped values before their first backward reader,
    and point every backward reader at the clones."""
    targets = [v for node in group for v in node.outputs if v.name in dropped]
    readers = [node for node in backward if any(v in node.inputs for v in targets)]
    if not readers:
        return
    clones: list[Node] = []
    rebuilt: dict[str, Value] = {}

    def rebuild(value: Value) -> Value:
        if value.producer is None or value.name in kept or value.producer.name in in_backward:
            return value
        if value.name not in rebuilt:
            node = value.producer
            inputs = [rebuild(v) for v in node.inputs]
            op = RECOMPUTE_FORMS.get(node.op, node.op)
            name = graph.unique_name(f"{node.name}.recompute")
            clone = graph.add_node(op, inputs, _form_types(node), node.attrs, name)
            graph.nodes.pop()  # placed by the caller, before the first reader
            clones.append(clone)
            rebuilt.update(zip([v.name for v in node.outputs], clone.outputs, strict=False))
        return rebuilt[value.name]

    for reader in readers:
        for k, value in enumerate(reader.inputs):
            if value.name in dropped and value in targets:
                replacement = rebuild(value)
                value.users.remove(reader)
                replacement.users.append(reader)
                reader.inputs[k] = replacement
    inserts.setdefault(readers[0].name, []).extend(clones)
