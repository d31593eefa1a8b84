"""A memory-aware schedule: among the valid topological orders, one with a lower peak.

The tracer and autodiff emit nodes in program order: each Inception branch runs to its end
before the next starts, and the backward pass mirrors the forward. ``memory_aware_order`` is a
greedy list scheduler (as in TVM's and XLA's memory-minimising schedulers): among the nodes
whose inputs are ready, run the one that adds the fewest live bytes (its new outputs, less
the inputs it is the last reader of), ties going to program order.

The order stays valid in every sense the executable relies on: a node runs after the
producers of its inputs; a node that writes a value in place (a running-statistics or
optimizer update, ``OpDef.mutates``) keeps its place relative to every other reader of that
value; and the phases keep their place: forward, then the loss node, then backward, then the
optimizer updates, each reordered only within itself. ``schedule_for_memory`` offers the new
order only when its peak (the planner's lower bound) is lower.
"""

from __future__ import annotations

from collections.abc import Callable

from graph.ir import Graph, Node
from graph.ops import get_op
from graph.ops.optim import UPDATES


def schedule_for_memory(graph: Graph, peak: Callable[[Graph], int]) -> tuple[list[Node], int, int]:
    """The memory-aware order of ``graph`` if it lowers ``peak``, else its own order; and the
    peaks (before, after). ``graph`` is left as it was."""
    before = peak(graph)
    order = memory_aware_order(graph)
    reordered = graph.copy()
    reordered.nodes = [reordered.nodes[i] for i in _positions(graph, order)]
    after = peak(reordered)
    if after >= before:
        return list(graph.nodes), before, before
    return order, before, after


def _positions(graph: Graph, order: list[Node]) -> list[int]:
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    return [position[node.name] for node in order]


def memory_aware_order(graph: Graph) -> list[Node]:
    """The greedy order described in the module docstring."""
    deps = _dependencies(graph)
    order: list[Node] = []
    for phase in _phases(graph):
        order += _greedy(phase, deps, graph)
    return order


def _phases(graph: Graph) -> list[list[Node]]:
    """Forward, loss, backward, updates (an inference graph is one phase)."""
    nodes, start = graph.nodes, graph.backward_start
    if start is None:
        return [nodes]
    backward = nodes[start:]
    first_update = next((i for i, n in enumerate(backward) if n.op in UPDATES), len(backward))
    phases = [nodes[: start - 1], nodes[start - 1 : start], backward[:first_update]]
    return phases + [backward[first_update:]]


def _dependencies(graph: Graph) -> dict[str, set[str]]:
    """Node name -> names of the nodes it must follow: the producers of its inputs, and for
    values written in place, every earlier reader (and every later reader follows the writer)."""
    deps = {node.name: set() for node in graph.nodes}
    position = {node.name: i for i, node in enumerate(graph.nodes)}
    readers: dict[str, list[Node]] = {}
    for node in graph.nodes:
        for value in node.inputs:
            if value.producer is not None:
                deps[node.name].add(value.producer.name)
            readers.setdefault(value.name, []).append(node)
    for node in graph.nodes:
        for k in get_op(node.op).mutates:
            for reader in readers[node.inputs[k].name]:
                if reader is node:
                    continue
                if position[reader.name] < position[node.name]:
                    deps[node.name].add(reader.name)
                else:
                    deps[reader.name].add(node.name)
    return deps


def _greedy(phase: list[Node], deps: dict[str, set[str]], graph: Graph) -> list[Node]:
    """List-schedule one phase: the ready node adding the fewest live bytes first."""
    position = {node.name: i for i, node in enumerate(phase)}
    waiting = {n.name: len(deps[n.name] & position.keys()) for n in phase}
    followers: dict[str, list[Node]] = {}
    for node in phase:
        for dep in deps[node.name] & position.keys():
            followers.setdefault(dep, []).append(node)
    unread = {v.name: len(v.users) for v in graph.values.values()}
    keep = {v.name for v in graph.outputs} | {v.name for v in graph.grads.values()}

    def added_bytes(node: Node) -> int:
        """Its new activations, less the activations it is the last reader of."""
        new = sum(v.type.nbytes for v in node.outputs if v.name not in keep)
        freed = {
            v.name: v.type.nbytes
            for v in node.inputs
            if v.producer is not None
            and v.name not in keep
            and unread[v.name] == node.inputs.count(v)
        }
        return new - sum(freed.values())

    ready = [n for n in phase if waiting[n.name] == 0]
    order = []
    while ready:
        best = min(ready, key=lambda n: (added_bytes(n), position[n.name]))
        ready.remove(best)
        order.append(best)
        for value in best.inputs:
            unread[value.name] -= 1
        for follower in followers.get(best.name, ()):
            waiting[follower.name] -= 1
            if waiting[follower.name] == 0:
                ready.append(follower)
    if len(order) != len(phase):
        raise AssertionError("schedule: a dependency cycle or a dependency outside its phase")
    return order
