"""k-means weight sharing, Huffman coding and the .cfz format: exact round trips, sizes that
count everything, and clear errors for damaged files."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest
from sklearn.cluster import KMeans

from graph.compress import cfz
from graph.compress.huffman import code_lengths, decode, encode
from graph.compress.kmeans import share_weights
from graph.compress.prune import magnitude_masks

# **** k-means ****


def test_kmeans_matches_sklearn_from_the_same_linear_start(rng):
    """Uniform weights leave no cluster empty (where sklearn would move a centre and we keep
    it), so both run the same Lloyd iterations from the linear initialisation."""
    w = rng.uniform(-1, 1, (40, 50))
    mask = rng.random((40, 50)) < 0.5
    shared = share_weights(w, 4, mask)
    values = w[mask]
    start = np.linspace(values.min(), values.max(), 15)[:, None]
    reference = KMeans(15, init=start, n_init=1, tol=0, max_iter=300, algorithm="lloyd")
    reference.fit(values[:, None])
    np.testing.assert_allclose(
        np.sort(shared.centroids[1:]), np.sort(reference.cluster_centers_[:, 0]), rtol=1e-9
    )
    assert shared.labels.min() >= 1 and shared.centroids[0] == 0
    dense = shared.weights()
    assert np.all(dense[~mask] == 0)
    np.testing.assert_array_equal(dense[mask], shared.codebook[shared.labels])


def test_grouped_gradient_is_the_sum_over_each_centroid(rng):
    w = rng.standard_normal((10, 10))
    shared = share_weights(w, 2)
    grad = rng.standard_normal((10, 10))
    expected = [grad[w != 0][shared.labels == k].sum() for k in range(1, 4)]
    np.testing.assert_allclose(shared.centroid_gradient(grad)[1:], expected, rtol=1e-12)
    assert shared.centroid_gradient(grad)[0] == 0


# **** Huffman ****


def test_huffman_round_trip_and_optimal_length(rng):
    symbols = np.minimum(rng.geometric(0.25, 20_000) - 1, 40)
    counts = np.bincount(symbols, minlength=45)
    lengths = code_lengths(counts)
    stream, nbits = encode(symbols, lengths)
    np.testing.assert_array_equal(decode(stream, nbits, symbols.size, lengths), symbols)
    assert nbits == int((counts * lengths).sum()) and len(stream) == (nbits + 7) // 8
    # Kraft equality (a complete prefix code) and within one bit of the entropy
    used = lengths[counts > 0].astype(float)
    assert np.isclose(np.sum(2.0**-used), 1.0)
    p = counts[counts > 0] / counts.sum()
    assert nbits / symbols.size < -(p * np.log2(p)).sum() + 1


def test_huffman_single_symbol_and_fixed_width():
    lengths = code_lengths(np.array([0, 7, 0]))
    stream, nbits = encode(np.full(7, 1), lengths)
    assert nbits == 7 and list(decode(stream, nbits, 7, lengths)) == [1] * 7
    fixed = np.full(8, 3, np.uint8)  # equal lengths: plain 3-bit binary
    stream, nbits = encode(np.array([5, 2]), fixed)
    assert nbits == 6 and stream[0] == 0b101_010_00


def test_huffman_errors():
    lengths = code_lengths(np.array([5, 3, 1]))
    stream, nbits = encode(np.array([0, 1, 2, 0]), lengths)
    with pytest.raises(ValueError, match="ends after"):
        decode(stream, nbits - 1, 4, lengths)
    with pytest.raises(ValueError, match="bits left"):
        decode(stream, nbits, 3, lengths)
    with pytest.raises(ValueError, match="has no Huffman code"):
        encode(np.array([0]), np.array([0, 1, 1], np.uint8))


# **** .cfz ****


def _layers(rng):
    weights = {
        "features.0.weight": rng.standard_normal((6, 3, 5, 5)).astype(np.float32),
        "classifier.0.weight": rng.standard_normal((300, 400)).astype(np.float32),
    }
    masks = magnitude_masks(
        weights, fraction={"features.0.weight": 0.3, "classifier.0.weight": 0.97}
    )
    bits = {"features.0.weight": 8, "classifier.0.weight": 5}
    shared = {n: share_weights(w, bits[n], masks[n]) for n, w in weights.items()}
    dense = {
        "classifier.0.bias": rng.standard_normal(300).astype(np.float32),
        "bn.num_batches_tracked": np.array(7, np.int64),
    }
    return shared, dense, bits


@pytest.mark.parametrize("huffman", [True, False])
def test_cfz_round_trip_is_exact_and_sizes_count_everything(rng, huffman):
    shared, dense, bits = _layers(rng)
    blob, sizes = cfz.pack(shared, dense, {"model": "m", "x": [1, 2]}, bits, huffman)
    out = cfz.unpack(blob)
    for name, layer in shared.items():
        assert out.tensors[name].dtype == np.float32
        np.testing.assert_array_equal(out.tensors[name], layer.weights())
    for name, array in dense.items():
        assert out.tensors[name].dtype == array.dtype and out.tensors[name].shape == array.shape
        np.testing.assert_array_equal(out.tensors[name], array)
    assert out.metadata == {"model": "m", "x": [1, 2]}
    raw = sum(a.nbytes for a in dense.values())
    assert len(blob) == out.header_bytes + sum(s.nbytes for s in sizes) + raw
    fc = sizes[1]
    assert fc.section_bytes["codebook"] == 4 * 32 and fc.kept == round(0.03 * 120_000)
    # the 5-bit gaps of a 97%-pruned layer need fillers (mean gap 33 > 32)
    assert fc.entries > fc.kept
    if not huffman:  # fixed width: 8 bytes of bit count plus the packed fields
        assert fc.section_bytes["weights"] == 8 + (5 * fc.entries + 7) // 8


def test_huffman_makes_the_file_smaller(rng):
    shared, dense, bits = _layers(rng)
    coded = cfz.pack(shared, dense, {}, bits, True)[0]
    fixed = cfz.pack(shared, dense, {}, bits, False)[0]
    assert len(coded) < len(fixed)


def test_damaged_files_are_clear_errors(rng):
    shared, dense, bits = _layers(rng)
    blob = cfz.pack(shared, dense, {}, bits)[0]
    with pytest.raises(ValueError, match="m.cfz: not a .cfz file"):
        cfz.unpack(b"PK\x03\x04" + blob[4:], "m.cfz")
    with pytest.raises(ValueError, match="m.cfz: .cfz version 9"):
        cfz.unpack(blob[:4] + struct.pack("<I", 9) + blob[8:], "m.cfz")
    with pytest.raises(ValueError, match=r"m.cfz: truncated: section .* ends at byte"):
        cfz.unpack(blob[:-10], "m.cfz")
    with pytest.raises(ValueError, match="m.cfz: truncated: 10 bytes"):
        cfz.unpack(blob[:10], "m.cfz")
    header_bytes = struct.unpack_from("<Q", blob, 8)[0]
    with pytest.raises(ValueError, match="m.cfz: truncated: the header needs"):
        cfz.unpack(blob[: 20 + header_bytes // 2], "m.cfz")
    damaged = bytearray(blob)
    damaged[30] ^= 0x20  # inside the JSON header
    with pytest.raises(ValueError, match="m.cfz: corrupted: the header's CRC-32"):
        cfz.unpack(bytes(damaged), "m.cfz")
    header = json.loads(zlib.decompress(blob[20 : 20 + header_bytes]))
    sizes = [size for size, _ in header["sections"]]
    weights_offset = sum(sizes[:8])  # features.0.weight's 5 sections, then classifier's 3 first
    damaged = bytearray(blob)
    damaged[20 + header_bytes + weights_offset + 9] ^= 0x01
    with pytest.raises(ValueError, match="section classifier.0.weight/weights fails its CRC-32"):
        cfz.unpack(bytes(damaged), "m.cfz")
    with pytest.raises(ValueError, match="bytes follow the last section"):
        cfz.unpack(blob + b"\0", "m.cfz")
