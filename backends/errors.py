"""Kernel error codes, one table for every backend, and the messages made of them.

A kernel cannot raise (an exception inside a Numba cfunc is printed and swallowed; a GPU kernel
has no exceptions at all), so it returns 0 or one code of ``ERRORS`` and the executor stops at
the first non-zero one. The executable then turns (node, code) into a ``RuntimeError`` that
names the layer and the cause, reading the failed step's buffers where the cause is in the data
(which sample's target was out of range)::

    loss: cross_entropy target 12 out of range [0, 10) at sample 3

Kernels import their codes from here (``return BAD_TARGET``), never a bare number. A code is
never renumbered or reused, only added: Numba freezes an imported constant into the cached
kernel and does not notice when this file changes, so a renumbered code would leave cached
kernels returning the old number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from graph.ir import Node, Value

Read = Callable[[Value], np.ndarray]
"""A value's buffer as the failed step left it, as a host array (the step's inputs are live)."""

BAD_TARGET = 1
TOO_FEW_VALUES = 2
# 3 was BLAS_FAILED, retired when blas.py came to bind its library at import; never reuse it.


@dataclass(frozen=True)
class KernelError:
    """One error code: its name in the kernels, and the cause it means for a node (the message
    after "layer: ")."""

    code: int
    name: str
    cause: Callable[[Node, Read], str]


def _bad_target(node: Node, read: Read) -> str:
    """cross_entropy and margin: logits/lengths [N, C], target [N] class indices as floats; the
    kernel rejects a target that is not an integer in [0, C), as torch does."""
    classes, target = node.inputs[0].shape[1], read(node.inputs[1])
    valid = (target >= 0) & (target < classes) & (target == np.floor(target))
    bad = np.flatnonzero(~valid)
    if bad.size == 0:  # rewritten since the step failed: nothing left to name
        return f"{node.op} target out of range [0, {classes})"
    sample, value = int(bad[0]), float(target[bad[0]])
    if np.isfinite(value) and value == np.floor(value):
        return f"{node.op} target {int(value)} out of range [0, {classes}) at sample {sample}"
    return f"{node.op} target {value:g} at sample {sample} is not a class index in [0, {classes})"


def _too_few_values(node: Node, read: Read) -> str:
    """batch_norm_train/_recompute: the batch variance needs N*H*W >= 2 values per channel
    (torch: "Expected more than 1 value per channel when training")."""
    shape = node.inputs[0].shape
    per_channel = int(np.prod(shape)) // shape[1]
    return (
        f"batch_norm in training mode needs more than 1 value per channel, but got input "
        f"{list(shape)} ({per_channel} per channel; torch raises the same)"
    )


ERRORS: dict[int, KernelError] = {
    error.code: error
    for error in (
        KernelError(BAD_TARGET, "BAD_TARGET", _bad_target),
        KernelError(TOO_FEW_VALUES, "TOO_FEW_VALUES", _too_few_values),
    )
}


def kernel_error_message(node: Node, code: int, read: Read) -> str:
    """The message for ``node``'s kernel having returned ``code`` (non-zero): layer name first,
    then the cause; an unknown code still names the layer, the op and the code."""
    error = ERRORS.get(code)
    if error is None:
        return (
            f"{node.name}: {node.op} kernel failed with error code {code}, which "
            f"backends/errors.py does not define"
        )
    return f"{node.name}: {error.cause(node, read)}"
