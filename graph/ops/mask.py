"""``apply_mask``: keep a pruned tensor's zeros inside the compiled training step.

``apply_mask(x, mask)`` writes ``x[i] = 0`` wherever ``mask[i] == 0`` and leaves the other
elements untouched (bit for bit: no multiply, so a NaN or -0.0 elsewhere stays as it is).
Pruning (``graph/compress/masks.py``) appends one such node after each pruned parameter's
optimizer update, for the parameter, its gradient and every optimizer slot, so a masked weight,
its gradient, momentum and Adam moments are exactly zero after every ``train_step``, as the
masks of Han et al. 2015 require. No output: it mutates ``x``.
"""

from __future__ import annotations

from graph.ir import TensorType
from graph.ops import no_macs, register


def _apply_mask_shape(in_types: list[TensorType], attrs: dict) -> list[TensorType]:
    x, mask = in_types
    if x.shape != mask.shape:
        raise ValueError(
            f"apply_mask: the mask must have the tensor's shape, but got tensor "
            f"{list(x.shape)} and mask {list(mask.shape)}"
        )
    return []


register("apply_mask", _apply_mask_shape, no_macs, arity=2, mutates=(0,))
