"""The epilogue of the conv2d and linear kernels: what happens to an output row while it is
still in cache, so a fused layer (``graph.passes.fuse_epilogues``) never reads its output back.

    y = act((acc + bias) * alpha + beta + residual)        every part optional

- ``bias``: the layer's own bias (empty without one);
- ``affine``: ``[alpha; beta]``, the [2, C] output of ``batch_norm_fold``, an inference
  BatchNorm folded in (``graph.passes.fold_batch_norm``; empty without one);
- ``residual``: a tensor of the output's shape (a ResNet shortcut; empty without one);
- ``kind``: an activation of ``elementwise.py`` (``COPY`` for none) with its
  ``consts = [negative_slope, min_val, max_val]``.

Each part is its own loop over the row, in the order and with the arithmetic of the unfused
kernels (conv bias, ``batch_norm``'s ``x * alpha + beta``, ``add``, the activation), so a fused
plan gives the unfused plan's results bit for bit. Conv kernels call ``finish_channel`` on runs
of one output channel (or, holding a run in a SIMD vector, ``finish_vector``, for none, ReLU
and hardtanh); ``linear`` calls ``finish_features`` on runs of one sample's features.

Buffers, after each layer kernel's x and w: bias, affine, residual, consts (``epilogue_buffers``);
the activation kind is the kernel's last attr.
"""

from __future__ import annotations

from numba import njit

from backends.cpu import simd
from backends.cpu.elementwise import (
    COPY,
    HARDTANH,
    RELU,
    _unary_chunk,
    activation_consts,
    unary_kind,
)
from backends.cpu.lowering import NodeIO
from graph.ir import Node
from graph.ops.fused import EPILOGUE_PARTS, activation_of, epilogue_inputs


@njit(cache=True)
def finish_channel(row, channel, bias, affine, residual, kind, consts):
    """The epilogue of a run of output channel ``channel``, in place; ``residual`` is the
    matching run of the residual (empty without one)."""
    if bias.shape[0]:
        b = bias[channel]
        for i in range(row.shape[0]):
            row[i] += b
    channels = affine.shape[0] // 2
    if channels and (kind == COPY or kind == RELU or kind == HARDTANH):
        _one_pass(row, affine[channel], affine[channels + channel], residual, kind, consts)
        return
    if channels:
        alpha, beta = affine[channel], affine[channels + channel]
        for i in range(row.shape[0]):
            row[i] = row[i] * alpha + beta
    _finish_rest(row, residual, kind, consts)


@njit(inline="always", cache=True)
def _one_pass(row, alpha, beta, residual, kind, consts):
    """A folded BatchNorm's affine, a residual, then none, ReLU or hardtanh, in one pass over
    the row instead of one per part: the same operations in the same order on each element,
    so the same bits (a 64 -> 256 1x1 conv on 56x56 with BatchNorm and ReLU: 65-114 us of
    epilogue -> 16-52). Each combination is its own loop, so none tests a part per element."""
    low, high = consts[1], consts[2]
    if residual.shape[0]:
        _by_kind(row, alpha, beta, residual, True, kind, low, high)
    else:
        _by_kind(row, alpha, beta, residual, False, kind, low, high)


@njit(inline="always", cache=True)
def _by_kind(row, alpha, beta, residual, has_residual, kind, low, high):
    if kind == RELU:
        _pass(row, alpha, beta, residual, has_residual, RELU, low, high)
    elif kind == HARDTANH:
        _pass(row, alpha, beta, residual, has_residual, HARDTANH, low, high)
    else:
        _pass(row, alpha, beta, residual, has_residual, COPY, low, high)


@njit(inline="always", cache=True)
def _pass(row, alpha, beta, residual, has_residual, act, low, high):
    for i in range(row.shape[0]):
        v = row[i] * alpha + beta
        if has_residual:
            v += residual[i]
        row[i] = activated(v, act, low, high)


@njit(inline="always", cache=True)
def activated(v, kind, low, high):
    """None, ReLU or hardtanh (``kind``) of one value, the others' activation."""
    if kind == RELU:
        return 0 if v <= 0 else v  # keeps NaN, as torch.relu
    if kind == HARDTANH:
        return low if v < low else (high if v > high else v)
    return v


@njit(inline="always", cache=True)
def finish_vector(v, channel, bias, affine, residual, at, count, kind, consts):
    """``finish_channel`` with none, ReLU or hardtanh on a run of channel ``channel`` held in a
    SIMD vector ``v`` (``simd.py``; its first ``count`` lanes are outputs at ``at``, where the
    residual's run is read): the same parts in the same order, one rounding each, so the same
    bits. Returns the finished vector."""
    if bias.shape[0]:
        v = v + bias[channel]
    channels = affine.shape[0] // 2
    if channels:
        v = v * affine[channel] + affine[channels + channel]
    if residual.shape[0]:
        v = v + simd.load(residual, at, count)
    if kind == RELU:
        return simd.relu(v)
    if kind == HARDTANH:
        return simd.clamp(v, consts[1], consts[2])
    return v


@njit(cache=True)
def finish_features(row, start, bias, affine, residual, kind, consts):
    """The epilogue of features ``start``.. of one sample's output row, in place."""
    if bias.shape[0]:
        for k in range(row.shape[0]):
            row[k] += bias[start + k]
    features = affine.shape[0] // 2
    if features:
        for k in range(row.shape[0]):
            row[k] = row[k] * affine[start + k] + affine[features + start + k]
    _finish_rest(row, residual, kind, consts)


@njit(inline="always", cache=True)
def _finish_rest(row, residual, kind, consts):
    if residual.shape[0]:
        for i in range(row.shape[0]):
            row[i] += residual[i]
    if kind != COPY:
        _unary_chunk(row, row, kind, consts[0], consts[1], consts[2])


def epilogue_buffers(node: Node, io: NodeIO) -> tuple[list[tuple[int, int]], int]:
    """[bias, affine, residual, consts] of a conv2d or linear node, plain or fused (absent
    parts empty), and its activation kind."""
    epilogue = node.attrs.get("epilogue", ("bias",) if len(node.inputs) == 3 else ())
    tensors = {part: io.input(2 + i) for i, part in enumerate(epilogue_inputs(epilogue))}
    activation = activation_of(epilogue)
    kind = unary_kind(activation, node.attrs) if activation else COPY
    # three constants even without an activation: where the epilogue is inlined into a
    # parallel loop (conv_depthwise.py), Numba hoists its reads of consts[0..2] out of the loop
    # and of the ``kind`` test, so an empty (null) buffer would be read
    consts = activation_consts(node.attrs, io) if activation else io.const([0.0, 0.0, 0.0])
    parts = [tensors.get(part, io.empty()) for part in EPILOGUE_PARTS]
    return [*parts, consts], kind
