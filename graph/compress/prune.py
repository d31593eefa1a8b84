"""Magnitude pruning (Han et al. 2015, "Learning both Weights and Connections").

The prunable weights are the conv and linear weights (the 2-D and 4-D parameters named
``*.weight``); biases and BatchNorm parameters stay dense, as in the paper. A pruning round
removes the smallest surviving magnitudes, either in each layer separately (``scope="layer"``)
or over all layers at once (``scope="global"``), either a fraction of what survives or every
weight below a threshold. Masks only ever lose entries, so repeated rounds give the iterative
prune -> retrain schedule of the paper (``iterative_fractions``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Masks = dict[str, np.ndarray]


def prunable(tensors: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the conv (4-D) and linear (2-D) weights, in the model's order."""
    return [
        name for name, t in tensors.items() if name.endswith(".weight") and np.ndim(t) in (2, 4)
    ]


def layer_kind(weight: np.ndarray) -> str:
    """``"conv"`` for a 4-D weight, ``"fc"`` for a 2-D one (Deep Compression's two bit widths)."""
    return "conv" if np.ndim(weight) == 4 else "fc"


def magnitude_masks(
    weights: Mapping[str, np.ndarray],
    fraction: float | Mapping[str, float] | None = None,
    threshold: float | None = None,
    scope: str = "layer",
    masks: Mapping[str, np.ndarray] | None = None,
) -> Masks:
    """New masks (bool, True = kept) removing the smallest surviving magnitudes.

    Args:
        weights: the weights to prune, by name.
        fraction: the fraction of the surviving weights to remove (per layer, or one per name:
            the lottery ticket prunes the output layer at half the rate); exactly
            ``round(fraction * surviving)`` go, ties broken by position.
        threshold: instead, remove every surviving weight with ``|w| < threshold``.
        scope: ``"layer"`` ranks each weight separately; ``"global"`` ranks all together
            (with one float ``fraction``).
        masks: the current masks (default: everything kept); pruned entries stay pruned.
    """
    if (fraction is None) == (threshold is None):
        raise ValueError("magnitude_masks: give exactly one of fraction and threshold")
    if scope not in ("layer", "global"):
        raise ValueError(f"magnitude_masks scope must be 'layer' or 'global', got {scope!r}")
    current = {
        name: np.ones(np.shape(w), bool) if masks is None or name not in masks else masks[name]
        for name, w in weights.items()
    }
    for name, mask in current.items():
        if mask.shape != np.shape(weights[name]):
            raise ValueError(
                f"{name}: mask shape {list(mask.shape)} differs from the weight's "
                f"{list(np.shape(weights[name]))}"
            )
    if threshold is not None:
        return {n: current[n] & (np.abs(w) >= threshold) for n, w in weights.items()}
    if scope == "global":
        if not isinstance(fraction, float | int):
            raise ValueError("global pruning takes one fraction for all layers")
        names = list(weights)
        flat = np.concatenate([np.abs(np.asarray(weights[n], np.float64)).ravel() for n in names])
        kept = _prune_smallest(flat, np.concatenate([current[n].ravel() for n in names]), fraction)
        pieces = np.split(kept, np.cumsum([current[n].size for n in names])[:-1])
        return {n: p.reshape(current[n].shape) for n, p in zip(names, pieces, strict=True)}
    rates = fraction if isinstance(fraction, Mapping) else dict.fromkeys(weights, fraction)
    return {
        n: _prune_smallest(
            np.abs(np.asarray(w, np.float64)).ravel(), current[n].ravel(), rates[n]
        ).reshape(current[n].shape)
        for n, w in weights.items()
    }


def _prune_smallest(magnitude: np.ndarray, kept: np.ndarray, fraction: float) -> np.ndarray:
    """``kept`` less its ``round(fraction * kept.sum())`` smallest magnitudes."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"pruning fraction must be in [0, 1], but got {fraction}")
    alive = np.flatnonzero(kept)
    count = int(round(fraction * alive.size))
    order = alive[np.argsort(magnitude[alive], kind="stable")]
    result = kept.copy()
    result[order[:count]] = False
    return result


def iterative_fractions(final_sparsity: float, rounds: int) -> list[float]:
    """Per-round fractions of the survivors that reach ``final_sparsity`` in ``rounds`` equal
    geometric steps (each round keeps the same share), as iterative pruning schedules do."""
    if not 0.0 <= final_sparsity < 1.0 or rounds < 1:
        raise ValueError(
            f"need 0 <= sparsity < 1 and rounds >= 1, but got {final_sparsity}, {rounds}"
        )
    keep = (1.0 - final_sparsity) ** (1.0 / rounds)
    return [1.0 - keep] * rounds


def sparsity(masks: Mapping[str, np.ndarray]) -> float:
    """The fraction of the masked weights that are pruned."""
    total = sum(m.size for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / max(total, 1)
