"""Lottery tickets by iterative magnitude pruning (Frankle & Carbin 2019; rewinding: Frankle
et al. 2019, "Stabilizing the Lottery Ticket Hypothesis").

Each round prunes ``rate`` of each layer's surviving weights by magnitude, the output layer at
half that rate (as the paper does for its fully connected nets), from the weights the previous
round's ticket trained to. The survivors are then reset to their values at the start
(``start``: the initial weights, or those of iteration k of the dense run when rewinding) and
trained again with the mask: that is the ticket. Beside it, the same mask on a random
re-initialisation (``random_start``) is trained the same way, the paper's control.

Training is the caller's (``train(weights, masks) -> (trained weights, accuracy)``), so this
module stays free of the engine, as DESIGN.md's layering requires.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from graph.compress.prune import Masks, magnitude_masks

Weights = dict[str, np.ndarray]
Train = Callable[[Weights, Masks], tuple[Weights, float]]


@dataclass(frozen=True)
class Round:
    """One pruning round: the fraction of the prunable weights left, and the accuracies."""

    remaining: float
    ticket: float
    random: float
    masks: Masks


def round_rates(names: list[str], rate: float, output: str) -> dict[str, float]:
    """Each prunable layer's pruning fraction per round: ``rate``, the output layer half."""
    if not 0.0 < rate < 1.0:
        raise ValueError(f"lottery pruning rate must be in (0, 1), but got {rate}")
    if output not in names:
        raise ValueError(f"the output layer {output} is not among the pruned weights {names}")
    return {name: rate / 2 if name == output else rate for name in names}


def masked_start(start: Mapping[str, np.ndarray], masks: Masks) -> Weights:
    """``start`` with the pruned weights zeroed (every other tensor as it is)."""
    return {
        name: np.where(masks[name], value, 0).astype(value.dtype) if name in masks else value
        for name, value in start.items()
    }


def find_tickets(
    start: Mapping[str, np.ndarray],
    random_start: Mapping[str, np.ndarray],
    trained: Mapping[str, np.ndarray],
    prunable: list[str],
    train: Train,
    rounds: int,
    rate: float,
    output: str,
) -> list[Round]:
    """``rounds`` rounds of iterative magnitude pruning from the dense ``trained`` weights.

    Args:
        start: every tensor at the point survivors are reset to (initial or rewound weights).
        random_start: a random re-initialisation of the same model (the control).
        trained: the dense model's trained weights (pruned in the first round).
        prunable: the names of the weights pruned (conv and linear weights).
        output: the output layer's weight, pruned at half the rate.
    """
    rates = round_rates(prunable, rate, output)
    masks: Masks = {name: np.ones(np.shape(start[name]), bool) for name in prunable}
    current, results = dict(trained), []
    for _ in range(rounds):
        masks = magnitude_masks({n: current[n] for n in prunable}, rates, masks=masks)
        current, ticket = train(masked_start(start, masks), masks)
        _, control = train(masked_start(random_start, masks), masks)
        kept = sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        results.append(Round(kept, ticket, control, masks))
    return results
