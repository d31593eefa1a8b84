"""The engine side: centroid fine-tuning by grouped gradients, and .cfz files written
atomically and read back exactly."""

from __future__ import annotations

import numpy as np
import pytest

import engine
from engine.compress import finetune_centroids, is_compressed, load_compressed, save_compressed
from engine.data import Dataset
from graph import nn
from graph.compress.kmeans import share_weights


def _tiny(rng):
    nn.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    data = Dataset(
        rng.random((16, 1, 3, 4)).astype(np.float32), rng.integers(0, 3, 16), ("a", "b", "c")
    )
    return model, data


def test_centroid_finetuning_steps_by_the_summed_gradients(rng):
    model, data = _tiny(rng)
    exe = engine.compile(model, (1, 3, 4), batch=8, train=True)
    shared = {"1.weight": share_weights(exe.params["1.weight"], 3)}
    exe.set_tensors({"1.weight": shared["1.weight"].weights()})
    # the reference: one forward_backward per batch, centroid -= lr * sum of its gradients
    reference = shared["1.weight"].centroids.copy()
    labels, mask = shared["1.weight"].labels, shared["1.weight"].mask
    check = engine.compile(model, (1, 3, 4), batch=8, train=True)
    check.set_tensors({n: np.array(v) for n, v in exe.state_dict().items()})
    for x, y in data.batches(8, seed=0, epoch=0):
        check.forward_backward(x, y)
        grad = check.grads["1.weight"][mask].astype(np.float64)
        for k in range(1, reference.size):
            reference[k] -= 0.5 * grad[labels == k].sum()
        dense = np.zeros((8, 12), np.float32)
        dense[mask] = reference.astype(np.float32)[labels]
        check.set_tensors({"1.weight": dense})
    finetune_centroids(exe, shared, data, epochs=1, lr=0.5, progress=False)
    np.testing.assert_allclose(shared["1.weight"].centroids, reference, rtol=1e-10)
    np.testing.assert_array_equal(exe.params["1.weight"], shared["1.weight"].weights())
    assert shared["1.weight"].centroids[0] == 0
    np.testing.assert_array_equal(exe.params["3.weight"], model.state_dict()["3.weight"])


def test_save_is_atomic_and_load_is_exact(tmp_path, rng):
    model, _ = _tiny(rng)
    state = model.state_dict()
    shared = {"1.weight": share_weights(state["1.weight"], 4)}
    path = tmp_path / "m.cfz"
    path.write_bytes(b"old")
    blob, _ = save_compressed(path, shared, state, {"model": "tiny"}, {"1.weight": 4})
    assert path.read_bytes() == blob and [p.name for p in tmp_path.iterdir()] == ["m.cfz"]
    assert is_compressed(path)
    loaded = load_compressed(path)
    np.testing.assert_array_equal(loaded.tensors["1.weight"], shared["1.weight"].weights())
    for name in ("1.bias", "3.weight", "3.bias"):
        np.testing.assert_array_equal(loaded.tensors[name], state[name])
    path.write_bytes(blob[:-3])
    with pytest.raises(ValueError, match=rf"{path}: truncated: section 3.bias ends at byte"):
        load_compressed(path)
