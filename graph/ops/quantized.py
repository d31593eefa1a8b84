"""The int8 ops of quantised inference plans, made by ``graph.compress.quantize``, never by the
tracer, and never differentiated.

- ``conv2d_int8`` and ``linear_int8``: ``conv2d_fused`` / ``linear_fused`` computed in int8
  (post-training quantisation, Jacob et al. 2018; symmetric, as TensorRT and PyTorch's
  ``per_channel_symmetric`` do). Inputs, attributes and output are those of the fused op, plus
  ``input_scale``, the calibrated per-tensor scale of x:

      xq = clamp(round(x * (1 / input_scale)), -127, 127)                 per tensor
      wq = round(w / sw[o]),  sw[o] = max |w[o, ...]| / 127               per output channel
      acc[o, p] = sum_k xq[k, p] * wq[o, k]                              exact, int32
      y = epilogue(acc * (input_scale * sw[o]))                           float, as fused

  The weights stay float parameters of the graph (``state_dict`` keeps PyTorch's keys);
  the CPU kernel packs them to int8 on its plan's first run (``backends/cpu/int8.py``).
  Activations use ``x * (1 / input_scale)`` in float64; the rescale factor is
  ``float32(input_scale * float32(sw[o]))``, applied to ``float32(acc)`` in float32.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import conv, fused, linear, register


def _check_scale(op: str, attrs: dict) -> None:
    scale = attrs["input_scale"]
    if not isinstance(scale, float) or not scale > 0:
        raise ValueError(f"{op} input_scale must be a positive float, but got {scale!r}")


def _conv2d_int8_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    _check_scale("conv2d_int8", attrs)
    return fused._conv2d_fused_shape(in_types, attrs)


def _linear_int8_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    _check_scale("linear_int8", attrs)
    return fused._linear_fused_shape(in_types, attrs)


register(
    "conv2d_int8",
    _conv2d_int8_shape,
    conv._conv2d_macs,
    arity=None,
    **conv._CONV_DEFAULTS,
    **fused.ACTIVATION_DEFAULTS,
)
register(
    "linear_int8",
    _linear_int8_shape,
    linear._linear_macs,
    arity=None,
    **fused.ACTIVATION_DEFAULTS,
)

QUANTIZED = frozenset({"conv2d_int8", "linear_int8"})
