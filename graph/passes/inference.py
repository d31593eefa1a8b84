"""The inference passes, run by ``engine.compile`` on inference plans (``optimize=True``):

1. ``remove_identities``: inference dropout (and stochastic depth) reads its input unchanged,
   so its readers read the input instead (a node whose output is a graph output stays: that
   buffer needs a writer);
2. ``fold_batch_norm`` and 3. ``fuse_epilogues`` (``graph.passes.fusion``), where the backend
   lowers the fused ops;
4. ``eliminate_dead_code``: nodes whose outputs nobody reads.

Training plans keep the ops as traced: autodiff needs every intermediate value.
"""

from __future__ import annotations

from collections.abc import Collection

from graph.ir import Graph, Node, Value
from graph.ops import get_op
from graph.passes.fusion import fold_batch_norm, fuse_epilogues
from graph.passes.rewrite import Builder, rebuild

# Ops that return their first input unchanged in an inference plan.
IDENTITY_AT_INFERENCE = frozenset({"dropout"})
FUSED_OPS = frozenset({"batch_norm_fold", "conv2d_fused", "linear_fused"})


def optimize_for_inference(graph: Graph, supported: Collection[str]) -> Graph:
    """``graph`` after the inference passes; fusion only where the backend lowers every fused op
    (``supported``: the op names it lowers)."""
    graph = remove_identities(graph)
    if FUSED_OPS <= set(supported):
        graph = fuse_epilogues(fold_batch_norm(graph))
    return eliminate_dead_code(graph)


def remove_identities(graph: Graph) -> Graph:
    """``graph`` without the nodes that are the identity at inference."""
    outputs = {v.name for v in graph.outputs}

    def replace(node: Node, builder: Builder) -> list[Value] | None:
        if node.op in IDENTITY_AT_INFERENCE and node.outputs[0].name not in outputs:
            return [builder.new(node.inputs[0])]
        return None

    return rebuild(graph, replace)


def eliminate_dead_code(graph: Graph) -> Graph:
    """``graph`` without the nodes whose outputs no live node or graph output reads (a node
    that writes one of its inputs, such as an update, is always live)."""
    live = {v.name for v in graph.outputs}
    dead = set()
    for node in reversed(graph.nodes):
        if get_op(node.op).mutates or any(v.name in live for v in node.outputs):
            live.update(v.name for v in node.inputs)
        else:
            dead.add(node.name)
    return rebuild(graph, lambda node, builder: [] if node.name in dead else None)
