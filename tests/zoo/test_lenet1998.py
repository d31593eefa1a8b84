"""LeNet-5 as in LeCun et al. 1998: 60,000 trainable parameters, the C3 connection table,
trainable subsampling, the scaled tanh and a fixed RBF output, checked against a torch twin."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as TF

import engine
import zoo
from tests.helpers import rel_error
from zoo.lenet1998 import C3_TABLE


def test_parameter_counts_follow_the_paper():
    model = zoo.get("lenet5_1998")
    assert model.num_parameters() == 60_000
    per_layer = {}
    for name, p in model.named_parameters():
        per_layer[name.split(".")[0]] = per_layer.get(name.split(".")[0], 0) + p.data.size
    # C1 6*(25+1); S2 6*2; C3 sum over the table of (inputs*25 + 1); S4 16*2; C5 120*(400+1);
    # F6 84*(120+1)
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}
    assert sum(len(t) * 25 + 1 for t in C3_TABLE) == 1516


def _torch_forward(x, p, rbf_weight, rbf_bias):
    def squash(a):
        return 1.7159 * torch.tanh(a * (2.0 / 3.0))

    def subsample(a, key):
        return TF.conv2d(
            TF.avg_pool2d(a, 2), p[f"{key}.weight"], p[f"{key}.bias"], groups=a.shape[1]
        )

    x = squash(subsample(TF.conv2d(x, p["c1.weight"], p["c1.bias"]), "s2.coefficient"))
    maps = [
        TF.conv2d(x[:, list(inputs)], p[f"c3.maps.{k}.weight"], p[f"c3.maps.{k}.bias"])
        for k, inputs in enumerate(C3_TABLE)
    ]
    x = squash(subsample(squash(torch.cat(maps, 1)), "s4.coefficient"))
    x = squash(TF.conv2d(x, p["c5.weight"], p["c5.bias"]).flatten(1))
    f6 = squash(TF.linear(x, p["f6.weight"], p["f6.bias"]))
    return TF.linear(f6, rbf_weight, rbf_bias), f6


def test_forward_matches_a_torch_twin_and_the_rbf_distances():
    model = zoo.get("lenet5_1998")
    state = {k: torch.from_numpy(v) for k, v in model.state_dict().items()}
    x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
    ours = engine.compile(model, (1, 32, 32), batch=3).run(x)
    expected, f6 = _torch_forward(
        torch.from_numpy(x), state, state["rbf_weight"], state["rbf_bias"]
    )
    assert rel_error(ours, expected.numpy()) < 1e-5
    # the logits are minus the squared RBF distances to the class codes, up to a per-sample
    # constant (-||f6||^2), so softmax and argmax see the RBF outputs
    codes = state["rbf_weight"].numpy() / 2.0
    distances = ((f6.numpy()[:, None, :] - codes[None]) ** 2).sum(axis=2)
    offset = -distances - ours
    np.testing.assert_allclose(offset, np.broadcast_to(offset[:, :1], offset.shape), atol=1e-3)


def test_trains_with_the_papers_small_learning_rate():
    exe = engine.compile(
        zoo.get("lenet5_1998"),
        (1, 32, 32),
        batch=4,
        train=True,
        optimizer=engine.optim.SGD(lr=1e-4, momentum=0.9),
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 1, 32, 32)).astype(np.float32), np.arange(4)
    losses = [exe.train_step(x, y) for _ in range(4)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
