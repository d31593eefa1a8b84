"""``rebuild``: the one way the inference passes rewrite a graph, as a fresh copy.

A pass decides, node by node in program order, what stands for that node in the new graph:
the node itself (copied with its inputs remapped), nothing (a value no one reads any more),
or values it emits (a fused node, or an existing value for a node that becomes the identity).
The input graph is never changed, so every pass is a pure function Graph -> Graph.
"""

from __future__ import annotations

from collections.abc import Callable

from graph.ir import Graph, Node, Value
from graph.ops import get_op


class Builder:
    """What a pass's ``replace`` callback gets: the new graph under construction, ``new(v)``
    for the value standing for old value ``v``, and ``emit`` to add a node."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.mapping: dict[str, Value] = {}

    def new(self, old: Value) -> Value:
        try:
            return self.mapping[old.name]
        except KeyError:
            raise AssertionError(f"%{old.name} is read but the rewrite dropped it") from None

    def emit(
        self,
        op: str,
        inputs: list[Value],
        attrs: dict,
        name: str,
        output_names: list[str] | None = None,
    ) -> list[Value]:
        """Add a node of ``op`` on new values ``inputs``; its output types come from the op's
        shape rule, which checks the rewrite."""
        types = get_op(op).infer([v.type for v in inputs], attrs)
        return self.graph.add_node(op, inputs, types, attrs, name, output_names).outputs


# replace(node, builder) -> None to copy the node, or the new values standing for its outputs
# (an empty list when nothing reads them any more).
Replace = Callable[[Node, Builder], list[Value] | None]


def rebuild(graph: Graph, replace: Replace) -> Graph:
    """A new graph: each node of ``graph`` in order, copied or replaced by ``replace``."""
    builder = Builder(Graph())
    for value in graph.values.values():
        if value.producer is None:
            builder.mapping[value.name] = builder.graph.add_value(
                value.name, value.type, value.role
            )
    for node in graph.nodes:
        outputs = replace(node, builder)
        if outputs is None:
            inputs = [builder.new(v) for v in node.inputs]
            names = [v.name for v in node.outputs]
            outputs = builder.emit(node.op, inputs, node.attrs, node.name, names)
        for old, new in zip(node.outputs, outputs, strict=False):
            builder.mapping[old.name] = new
    new_graph = builder.graph
    new_graph.outputs = [builder.new(v) for v in graph.outputs]
    for old, new in zip(graph.outputs, new_graph.outputs, strict=True):
        if old.name != new.name:
            raise AssertionError(f"the rewrite renamed graph output %{old.name} to %{new.name}")
    new_graph.consts = dict(graph.consts)
    new_graph.verify()
    return new_graph
