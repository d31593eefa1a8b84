"""The fused ops of inference plans, made by the inference passes (``graph.passes.inference``),
never by the tracer, and never differentiated.

- ``batch_norm_fold``: inputs running_mean, running_var and optionally weight, bias [C] of an
  inference BatchNorm; output ``[alpha; beta]`` [2, C] with ``alpha = weight / sqrt(var + eps)``
  and ``beta = bias - mean * alpha``, as the batch_norm kernels compute them. It reads the live
  parameters on every run (a few microseconds), so changing a weight can never leave a stale
  folded copy behind.
- ``conv2d_fused`` and ``linear_fused``: the layer, then its epilogue
  ``y = act((acc + bias) * alpha + beta + residual)`` while the output is in cache. Attribute
  ``epilogue`` lists the parts present, in that order, from ``EPILOGUE_PARTS`` and one
  activation of ``ACTIVATIONS``; inputs are the layer's x and weight, then one per part that
  takes a tensor (bias [OC], the [2, OC] fold, the residual of the output's shape), in that
  order. The activation's own attributes (``negative_slope``, ``min_val``, ``max_val``,
  ``approximate``) sit beside it, and ``layers`` names the absorbed layers for printing. The
  conv attributes are conv2d's; MACs are the layer's.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import conv, linear, no_macs, register

# Epilogue parts that take an input tensor, in their fixed order.
EPILOGUE_PARTS = ("bias", "batch_norm", "add")
ACTIVATIONS = frozenset({"relu", "leaky_relu", "hardtanh", "gelu", "sigmoid", "tanh"})
ACTIVATION_DEFAULTS = {
    "negative_slope": 0.01,
    "min_val": -1.0,
    "max_val": 1.0,
    "approximate": "none",
}


def _batch_norm_fold_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    if len(in_types) not in (2, 4):
        raise ValueError(
            "batch_norm_fold takes running_mean, running_var and optionally weight and bias, "
            f"but got {len(in_types)} inputs"
        )
    (channels,) = in_types[0].shape
    if any(t.shape != (channels,) for t in in_types):
        raise ValueError(
            f"batch_norm_fold inputs must all have shape [{channels}], but got "
            f"{[list(t.shape) for t in in_types]}"
        )
    return [TensorType((2, channels), in_types[0].dtype)]


def epilogue_inputs(epilogue: tuple[str, ...]) -> list[str]:
    """The epilogue parts that take an input, in input order (after x and weight)."""
    return [part for part in EPILOGUE_PARTS if part in epilogue]


def activation_of(epilogue: tuple[str, ...]) -> str | None:
    return next((part for part in epilogue if part in ACTIVATIONS), None)


def _check_epilogue(op: str, in_types: list[TensorType], out: TensorType, attrs: dict) -> None:
    epilogue = attrs["epilogue"]
    parts = [p for p in epilogue if p not in ACTIVATIONS]
    activations = [p for p in epilogue if p in ACTIVATIONS]
    expected = tuple(epilogue_inputs(epilogue)) + tuple(activations)
    if parts != epilogue_inputs(epilogue) or len(activations) > 1 or tuple(epilogue) != expected:
        raise ValueError(
            f"{op} epilogue must list parts of {EPILOGUE_PARTS} in that order, then at most one "
            f"activation of {sorted(ACTIVATIONS)}, but got {epilogue}"
        )
    if len(in_types) != 2 + len(parts):
        raise ValueError(
            f"{op} with epilogue {epilogue} takes {2 + len(parts)} inputs, but got {len(in_types)}"
        )
    channels = out.shape[1]
    wanted = {"bias": (channels,), "batch_norm": (2, channels), "add": out.shape}
    for part, t in zip(parts, in_types[2:], strict=True):
        if t.shape != wanted[part]:
            raise ValueError(
                f"{op} {part} input must have shape {list(wanted[part])}, but got {list(t.shape)}"
            )


def _layer_types(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    """The unfused layer's inputs: x, weight and the bias when the epilogue has one."""
    return in_types[:3] if "bias" in attrs["epilogue"] else in_types[:2]


def _conv2d_fused_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    (out,) = conv._conv2d_shape(_layer_types(in_types, attrs), attrs)
    _check_epilogue("conv2d_fused", in_types, out, attrs)
    return [out]


def _linear_fused_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    (out,) = linear._linear_shape(_layer_types(in_types, attrs), attrs)
    _check_epilogue("linear_fused", in_types, out, attrs)
    return [out]


register("batch_norm_fold", _batch_norm_fold_shape, no_macs, arity=None, eps=1e-5)
register(
    "conv2d_fused",
    _conv2d_fused_shape,
    conv._conv2d_macs,
    arity=None,
    **conv._CONV_DEFAULTS,
    **ACTIVATION_DEFAULTS,
)
register(
    "linear_fused", _linear_fused_shape, linear._linear_macs, arity=None, **ACTIVATION_DEFAULTS
)
