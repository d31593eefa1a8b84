"""Weight sharing by per-layer k-means (Han et al. 2016, "Deep Compression", section 3).

A layer with ``bits`` bits per index keeps a codebook of ``2**bits`` float32 values: entry 0 is
0.0, the value of pruned weights and of the sparse format's filler entries
(``graph.compress.cfz``), and entries 1.. are ``2**bits - 1`` centroids, found by 1-D k-means
(Lloyd's algorithm) over the surviving weights from the linear initialisation the paper
recommends (evenly spaced between the smallest and the largest weight: it keeps the rare large
weights, which matter most, better than density-based starts). Fine-tuning moves each centroid
by the sum of the gradients of the weights that share it (the paper's grouped gradient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BITS = {"conv": 8, "fc": 5}


@dataclass
class SharedWeights:
    """One layer's shared weights: its shape, the kept positions, the codebook index of each
    kept weight (in C order, 1-based: 0 is the pruned value) and the centroids (float64 while
    fine-tuning; ``codebook`` is what the file stores and the model uses)."""

    shape: tuple[int, ...]
    mask: np.ndarray  # bool, True = kept
    labels: np.ndarray  # int, one per kept weight, in 1 .. 2**bits - 1
    centroids: np.ndarray  # float64, 2**bits entries, centroids[0] = 0
    bits: int

    @property
    def codebook(self) -> np.ndarray:
        book = self.centroids.astype(np.float32)
        book[0] = 0.0
        return book

    def weights(self) -> np.ndarray:
        """The dense float32 weights these shared weights stand for."""
        dense = np.zeros(self.shape, np.float32)
        dense[self.mask] = self.codebook[self.labels]
        return dense

    def centroid_gradient(self, grad: np.ndarray) -> np.ndarray:
        """The grouped gradient: for each centroid, the sum of its weights' gradients."""
        kept = np.asarray(grad, np.float64)[self.mask]
        summed = np.bincount(self.labels, weights=kept, minlength=self.centroids.size)
        summed[0] = 0.0  # the pruned value stays zero
        return summed


def share_weights(
    weight: np.ndarray, bits: int, mask: np.ndarray | None = None, iterations: int = 100
) -> SharedWeights:
    """k-means of the kept entries of ``weight`` into ``2**bits - 1`` shared values.

    Args:
        weight: a layer's weights.
        bits: index width, 1 to 16.
        mask: the kept entries (default: every nonzero weight).
        iterations: the most Lloyd iterations (it stops when no label changes).
    """
    if not 1 <= bits <= 16:
        raise ValueError(f"weight sharing needs 1 to 16 bits per index, but got bits={bits}")
    weight = np.asarray(weight)
    mask = weight != 0 if mask is None else np.asarray(mask, bool)
    values = weight[mask].astype(np.float64)
    clusters = 2**bits - 1
    centroids = np.zeros(clusters + 1)
    if values.size == 0:
        return SharedWeights(weight.shape, mask, np.zeros(0, np.int64), centroids, bits)
    centers = np.linspace(values.min(), values.max(), clusters)
    labels = _nearest(values, centers)
    for _ in range(iterations):
        sums = np.bincount(labels, weights=values, minlength=clusters)
        counts = np.bincount(labels, minlength=clusters)
        filled = counts > 0  # an empty cluster keeps its centre
        centers[filled] = sums[filled] / counts[filled]
        new = _nearest(values, centers)
        if np.array_equal(new, labels):
            break
        labels = new
    centroids[1:] = centers
    return SharedWeights(weight.shape, mask, labels + 1, centroids, bits)


def _nearest(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted ``centers`` for each value (1-D, so a search among
    the midpoints; 1-D Lloyd keeps the centres sorted)."""
    return np.searchsorted((centers[1:] + centers[:-1]) / 2, values)
