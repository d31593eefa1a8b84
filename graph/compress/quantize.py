"""int8 post-training quantisation: calibration scales and the rewrite to the int8 ops.

``quantize_graph(graph, input_scales)`` is a pure Graph -> Graph pass, like
``graph/passes/*``: every conv2d, conv2d_fused, linear and linear_fused node whose input has a
calibrated scale becomes ``conv2d_int8`` / ``linear_int8`` (``graph/ops/quantized.py``) with
the same inputs, attributes and epilogue, plus ``input_scale``. Layers without a scale stay
float (a user can keep a sensitive first or last layer in float32 by leaving it out).

Scales are symmetric and per tensor: ``scale = max |x| / 127`` over the calibration batches
(``activation_scale``), the "max" observer of PyTorch's ``MinMaxObserver`` with
``qscheme=torch.per_tensor_symmetric``. Set ``CONVFORGE_NO_INT8=1`` to leave every layer float
(to bisect a wrong answer).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from graph.ir import Graph, Node, Value
from graph.passes.rewrite import Builder, rebuild

INT8_OF = {
    "conv2d": "conv2d_int8",
    "conv2d_fused": "conv2d_int8",
    "linear": "linear_int8",
    "linear_fused": "linear_int8",
}


def quantizable_inputs(graph: Graph) -> dict[str, str]:
    """Layer name -> the name of its input value, for every node the pass can rewrite."""
    return {node.name: node.inputs[0].name for node in graph.nodes if node.op in INT8_OF}


def activation_scale(batches: Iterable[np.ndarray]) -> float:
    """The symmetric per-tensor scale of a value seen as ``batches``: max |x| / 127 (1.0 for
    an all-zero value, whose quantisation is exact with any scale), rounded to float32, the
    precision the kernels keep it in."""
    peak = max((float(np.max(np.abs(b))) for b in batches), default=0.0)
    if not np.isfinite(peak):
        raise ValueError(f"calibration saw a non-finite activation (max |x| = {peak})")
    return float(np.float32(peak / 127.0)) if peak > 0 else 1.0


def quantize_graph(graph: Graph, input_scales: Mapping[str, float]) -> Graph:
    """``graph`` with each weighted layer named in ``input_scales`` (layer name -> scale of
    its input) in int8."""
    unknown = sorted(set(input_scales) - set(quantizable_inputs(graph)))
    if unknown:
        raise ValueError(
            f"quantize_graph: {unknown} are not conv2d or linear layers of this graph; "
            f"quantizable layers: {sorted(quantizable_inputs(graph))}"
        )
    bad = {k: v for k, v in input_scales.items() if not (np.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"quantize_graph: input scales must be positive, but got {bad}")
    if os.environ.get("CONVFORGE_NO_INT8") == "1" or not input_scales:
        return rebuild(graph, lambda node, builder: None)

    def replace(node: Node, builder: Builder) -> list[Value] | None:
        if node.name not in input_scales:
            return None
        attrs = dict(node.attrs)
        attrs.setdefault("epilogue", ("bias",) if len(node.inputs) == 3 else ())
        attrs["input_scale"] = float(input_scales[node.name])
        inputs = [builder.new(v) for v in node.inputs]
        names = [v.name for v in node.outputs]
        return builder.emit(INT8_OF[node.op], inputs, attrs, node.name, names)

    return rebuild(graph, replace)
