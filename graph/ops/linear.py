"""linear: ``y = x @ weight.T + bias`` on a 2-D input [N, in_features], as ``F.linear``."""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import expect_rank, register


def _linear_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (2, 3):
        raise ValueError(f"linear takes x, weight and an optional bias, but got {len(in_types)}")
    x, w = in_types[0], in_types[1]
    expect_rank("linear", x, 2)
    expect_rank("linear", w, 2, "weight")
    out_features, in_features = w.shape
    if x.shape[1] != in_features:
        raise ValueError(
            f"linear in_features must match the input's features, but got in_features="
            f"{in_features} for input shape {list(x.shape)}: the traced shape needs "
            f"in_features={x.shape[1]}"
        )
    if len(in_types) == 3 and in_types[2].shape != (out_features,):
        raise ValueError(
            f"linear bias must have shape [{out_features}], but got {list(in_types[2].shape)}"
        )
    return [TensorType((x.shape[0], out_features), x.dtype)]


def _linear_macs(in_types: list[TensorType], out_types: list[TensorType], attrs: dict) -> int:
    return out_types[0].numel * in_types[1].shape[1]


register("linear", _linear_shape, _linear_macs, arity=None)
