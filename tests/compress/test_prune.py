"""Magnitude pruning: per layer and global, by fraction and by threshold, iterative."""

from __future__ import annotations

import numpy as np
import pytest

from graph.compress.prune import iterative_fractions, magnitude_masks, prunable, sparsity


def _weights(rng):
    return {
        "a.weight": rng.standard_normal((20, 30)),
        "b.weight": 3.0 * rng.standard_normal((4, 3, 5, 5)),
    }


def test_per_layer_fraction_removes_the_smallest_of_each_layer(rng):
    weights = _weights(rng)
    masks = magnitude_masks(weights, fraction=0.7)
    for name, w in weights.items():
        assert masks[name].sum() == w.size - round(0.7 * w.size)
        assert np.abs(w[~masks[name]]).max() <= np.abs(w[masks[name]]).min()


def test_global_fraction_ranks_all_layers_together(rng):
    weights = _weights(rng)
    masks = magnitude_masks(weights, fraction=0.5, scope="global")
    pruned = np.concatenate([np.abs(w[~masks[n]]) for n, w in weights.items()])
    kept = np.concatenate([np.abs(w[masks[n]]) for n, w in weights.items()])
    assert pruned.size == round(0.5 * (600 + 300)) and pruned.max() <= kept.min()
    # the larger-scaled conv layer keeps a larger share than the fc layer
    assert masks["b.weight"].mean() > masks["a.weight"].mean()


def test_threshold_and_iterative_rounds_never_revive_a_weight(rng):
    weights = _weights(rng)
    masks = magnitude_masks(weights, threshold=0.5)
    for name, w in weights.items():
        np.testing.assert_array_equal(masks[name], np.abs(w) >= 0.5)
    fractions = iterative_fractions(0.9, 3)
    masks = None
    for fraction in fractions:
        weights = {n: w + 0.01 for n, w in weights.items()}  # retraining moves the weights
        new = magnitude_masks(weights, fraction=fraction, masks=masks)
        if masks is not None:
            assert all(not np.any(new[n] & ~masks[n]) for n in new)
        masks = new
    assert abs(sparsity(masks) - 0.9) < 0.01


def test_rates_per_layer_and_errors(rng):
    weights = _weights(rng)
    masks = magnitude_masks(weights, fraction={"a.weight": 0.2, "b.weight": 0.1})
    assert masks["a.weight"].sum() == 480 and masks["b.weight"].sum() == 270
    with pytest.raises(ValueError, match="exactly one of fraction and threshold"):
        magnitude_masks(weights)
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\], but got 1.5"):
        magnitude_masks(weights, fraction=1.5)
    with pytest.raises(ValueError, match=r"a.weight: mask shape \[2\]"):
        magnitude_masks(weights, fraction=0.1, masks={"a.weight": np.ones(2, bool)})


def test_prunable_weights_are_conv_and_linear_weights():
    tensors = {
        "f.0.weight": np.zeros((2, 1, 3, 3)),
        "f.1.weight": np.zeros(2),  # BatchNorm's weight
        "f.0.bias": np.zeros(2),
        "c.weight": np.zeros((3, 8)),
    }
    assert prunable(tensors) == ["f.0.weight", "c.weight"]
