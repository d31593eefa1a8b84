"""The in-place pass: a node writes its output over an input that dies at that node.

A node may take over input k's buffer when its op declares k in ``OpDef.inplace`` (elementwise
kernels that read each element before writing it: activations, add, eval-mode BatchNorm,
dropout, the activation and BatchNorm gradients), the two values have the same byte size, both
live in the arena (not graph inputs, outputs, parameters or gradients), and no node after it in
the schedule reads the input: a saved activation for the backward pass or a residual branch
keeps its own buffer. Chains fold: conv -> BatchNorm -> ReLU can share one buffer at inference.

The result is an alias map, output value name -> the input value name it overwrites; the
planner gives both one buffer (``graph.memory.transient_buffers``), and uses the map only when
that shrinks the arena (an in-place kernel step runs slower: ``backends/cpu/kernels.py``).
``verify_inplace`` checks a map against the rules with its own walk.
"""

from __future__ import annotations

from graph.ir import Graph, Value
from graph.ops import get_op


def inplace_aliases(graph: Graph, persistent: set[str]) -> dict[str, str]:
    """The in-place alias map of ``graph`` in its current node order. ``persistent`` names the
    values stored outside the arena (inputs, outputs, parameters, gradients, constants)."""
    last_read = _last_reads(graph)
    aliases: dict[str, str] = {}
    for step, node in enumerate(graph.nodes):
        if not node.outputs or node.outputs[0].name in persistent:
            continue
        out = node.outputs[0]
        for k in get_op(node.op).inplace:
            source = node.inputs[k]
            if _can_overwrite(source, out, step, last_read, persistent):
                aliases[out.name] = source.name
                break
    return aliases


def verify_inplace(graph: Graph, aliases: dict[str, str], persistent: set[str]) -> None:
    """Raise if an alias breaks a rule: an op that does not declare it, a size mismatch, a
    persistent value, or a read of the overwritten value after the node."""
    step_of = {node.name: i for i, node in enumerate(graph.nodes)}
    for out_name, in_name in aliases.items():
        out, source = graph.values[out_name], graph.values[in_name]
        node = out.producer
        where = f"{node.name if node else out_name}: %{out_name} over %{in_name}"
        if node is None or out is not node.outputs[0]:
            raise AssertionError(f"{where}: only a node's first output can be written in place")
        allowed = [node.inputs[k] for k in get_op(node.op).inplace]
        if not any(v is source for v in allowed):
            raise AssertionError(f"{where}: {node.op} does not declare that input in-place")
        if out.type.nbytes != source.type.nbytes or {out_name, in_name} & persistent:
            raise AssertionError(f"{where}: sizes differ or a value is persistent")
        late = [u.name for u in source.users if step_of[u.name] > step_of[node.name]]
        if late:
            raise AssertionError(f"{where}: %{in_name} is still read later by {late}")


def _last_reads(graph: Graph) -> dict[str, int]:
    """The last step at which each value is read."""
    last: dict[str, int] = {}
    for step, node in enumerate(graph.nodes):
        for value in node.inputs:
            last[value.name] = step
    return last


def _can_overwrite(
    source: Value, out: Value, step: int, last_read: dict[str, int], persistent: set[str]
) -> bool:
    return (
        source.producer is not None
        and source.name not in persistent
        and source.type.nbytes == out.type.nbytes
        and last_read[source.name] == step
    )


def alias_root(aliases: dict[str, str], name: str) -> str:
    """The value whose buffer ``name`` finally lives in (following chains of aliases)."""
    while name in aliases:
        name = aliases[name]
    return name
