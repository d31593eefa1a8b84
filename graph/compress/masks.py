"""Pruning masks inside the compiled training step.

A mask is a 0/1 array beside a weight (1 = kept). ``add_mask_nodes`` appends, after each pruned
parameter's optimizer update, one ``apply_mask`` node (``graph/ops/mask.py``) for the
parameter, its gradient and each of its optimizer slots (momentum, Adam's moments). The mask
itself is a persistent ``const`` value ``mask.<param>``, filled with ones at compile time, so a
graph whose masks were never written trains as if unpruned; the engine writes the real masks
(``engine.compress.set_masks``). The nodes come after the update, so whatever the optimizer's
formula (weight decay, Nesterov, AdamW's decoupled decay), every masked entry is exactly zero
after each step.
"""

from __future__ import annotations

from collections.abc import Iterable

from graph.ir import Graph, Value
from graph.ops import get_op
from graph.ops.optim import UPDATES

MASK_PREFIX = "mask."


def mask_name(param: str) -> str:
    return f"{MASK_PREFIX}{param}"


def add_mask_nodes(graph: Graph, params: Iterable[str]) -> None:
    """Append the ``apply_mask`` nodes of ``params`` to a training graph with its updates.

    Raises:
        ValueError: a parameter has no optimizer update in ``graph`` (naming it).
    """
    updates = {node.inputs[0].name: node for node in graph.nodes if node.op in UPDATES}
    for name in params:
        if name not in updates:
            raise ValueError(
                f"cannot mask {name}: the training graph has no optimizer update for it "
                f"(updated parameters: {sorted(updates)[:5]}...)"
            )
        update = updates[name]
        param = update.inputs[0]
        mask = graph.add_value(mask_name(name), param.type, "const")
        graph.consts[mask.name] = 1.0
        targets: list[Value] = update.inputs[:-1]  # param, grad, optimizer slots (not hyper)
        for target in targets:
            get_op("apply_mask").infer([target.type, mask.type], {})
            label = target.name.replace(".", "_")
            graph.add_node("apply_mask", [target, mask], [], {}, f"{name}.apply_mask.{label}")
