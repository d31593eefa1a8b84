"""Inference fusion: fold BatchNorm into the layer before it, then fuse the residual add and
the activation into that layer's epilogue (``graph.ops.fused``; the CPU kernels' epilogue in
``backends/cpu/epilogue.py``).

``fold_batch_norm``: a conv2d or linear whose only reader is an inference batch_norm becomes
``batch_norm_fold`` (the BatchNorm's [alpha; beta] from its live parameters) and the layer as
``conv2d_fused``/``linear_fused`` with epilogue (bias,) batch_norm.

``fuse_epilogues``: a conv2d, linear or fused layer (without an add or activation yet) whose
output is read only by an ``add`` takes the add's other input as its residual, and a layer
(or that add) read only by one activation takes the activation: conv -> BatchNorm -> add ->
ReLU, a ResNet block's tail, becomes one node.

In both, the fused node takes the place of the last node it absorbs (its inputs are all
defined there), keeps the first layer's name (errors and profiles name the conv) and gives its
output the last absorbed value's name, so every reader and the graph's outputs keep theirs.
An intermediate value that is a graph output, or has another reader, stops the fusion.
"""

from __future__ import annotations

from graph.ir import Graph, Node, Value
from graph.ops.fused import ACTIVATION_DEFAULTS, ACTIVATIONS
from graph.passes.rewrite import Builder, rebuild

LAYERS = {"conv2d": "conv2d_fused", "linear": "linear_fused"}
FUSED = frozenset(LAYERS.values())


def fold_batch_norm(graph: Graph) -> Graph:
    """``graph`` with every inference BatchNorm that directly follows a conv2d or linear (its
    only reader) folded into that layer's epilogue."""
    folds = {}  # batch_norm node name -> the layer it folds into
    for node in graph.nodes:
        reader = _only_reader(graph, node)
        if node.op in LAYERS and reader is not None and reader.op == "batch_norm":
            folds[reader.name] = node
    absorbed = {layer.name for layer in folds.values()}

    def replace(node: Node, builder: Builder) -> list[Value] | None:
        if node.name in absorbed:
            return []
        if node.name not in folds:
            return None
        layer, stats = folds[node.name], [builder.new(v) for v in node.inputs[1:]]
        (fold,) = builder.emit(
            "batch_norm_fold", stats, {"eps": node.attrs["eps"]}, f"{node.name}.fold"
        )
        return _emit_fused(builder, layer, ("batch_norm",), [fold], [node])

    return rebuild(graph, replace)


def fuse_epilogues(graph: Graph) -> Graph:
    """``graph`` with each residual add and activation that a layer's output flows straight
    into fused into the layer's epilogue."""
    chains: dict[str, tuple[Node, list[Node], list[Value]]] = {}  # last node -> chain
    claimed: set[str] = set()
    for node in graph.nodes:
        if node.name in claimed or not _open_epilogue(node):
            continue
        absorbed, residual, tail = [], [], node
        reader = _only_reader(graph, tail)
        if reader is not None and reader.op == "add" and reader.name not in claimed:
            other = [v for v in reader.inputs if v is not tail.outputs[0]]
            if len(other) == 1:
                absorbed, residual, tail = [reader], other, reader
                reader = _only_reader(graph, tail)
        if reader is not None and reader.op in ACTIVATIONS:
            absorbed, tail = [*absorbed, reader], reader
        if absorbed:
            chains[tail.name] = (node, absorbed, residual)
            claimed.update(n.name for n in [node, *absorbed])

    def replace(node: Node, builder: Builder) -> list[Value] | None:
        if node.name in chains:
            layer, absorbed, residual = chains[node.name]
            parts = ("add",) if residual else ()
            parts += tuple(n.op for n in absorbed if n.op in ACTIVATIONS)
            extra = [builder.new(v) for v in residual]
            return _emit_fused(builder, layer, parts, extra, absorbed)
        return [] if node.name in claimed else None

    return rebuild(graph, replace)


def _open_epilogue(node: Node) -> bool:
    """A layer whose epilogue can still take an add or an activation."""
    if node.op in LAYERS:
        return True
    return node.op in FUSED and not {"add", *ACTIVATIONS} & set(node.attrs["epilogue"])


def _only_reader(graph: Graph, node: Node) -> Node | None:
    """The one node reading ``node``'s only output, unless it is a graph output."""
    if len(node.outputs) != 1:
        return None
    out = node.outputs[0]
    if len(out.users) != 1 or any(v is out for v in graph.outputs):
        return None
    return out.users[0]


def _emit_fused(
    builder: Builder, layer: Node, parts: tuple[str, ...], extra: list[Value], absorbed: list[Node]
) -> list[Value]:
    """``layer`` (plain or already fused) with ``parts`` appended to its epilogue, reading the
    ``extra`` inputs after its own, named after its last absorbed value."""
    attrs = dict(layer.attrs)
    attrs.setdefault("epilogue", ("bias",) if len(layer.inputs) == 3 else ())
    attrs.setdefault("layers", ())
    attrs["epilogue"] += parts
    attrs["layers"] += tuple(n.name for n in absorbed)
    for node in absorbed:
        if node.op in ACTIVATIONS:
            attrs.update({k: v for k, v in node.attrs.items() if k in ACTIVATION_DEFAULTS})
    inputs = [builder.new(v) for v in layer.inputs] + extra
    op = LAYERS.get(layer.op, layer.op)
    return builder.emit(op, inputs, attrs, layer.name, [absorbed[-1].outputs[0].name])
