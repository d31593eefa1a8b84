"""Filter pruning: a smaller model with the same outputs as the masked model."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import graph.functional as F
import zoo
from graph import nn
from graph.compress.structured import filter_masks, plan_filters, prune_filters
from tests.helpers import NET_TOLERANCE, rel_error, run_poisoned


class _Net(nn.Module):
    """conv-BN-ReLU-pool twice, a 1x1 conv consumer, a residual block (not prunable: an add
    reads its channels), then flatten and linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.a_bn = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 6, 3)
        self.b_bn = nn.BatchNorm2d(6)
        self.c = nn.Conv2d(6, 6, 1)
        self.d = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 4 * 4, 4)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.a_bn(self.a(x))), 2)
        x = F.relu(self.b_bn(self.b(x)))
        x = self.c(x)
        x = F.relu(F.add(x, self.d(x)))
        return self.fc(F.flatten(x, 1))


def _randomise_norms(model, rng):
    for _, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean = rng.standard_normal(n).astype(np.float32)
            module.running_var = rng.uniform(0.5, 2, n).astype(np.float32)
            module.weight.data[:] = rng.uniform(0.5, 1.5, n)
            module.bias.data[:] = rng.standard_normal(n)


def _masked(model, masks):
    state = model.state_dict()
    for name, mask in masks.items():
        state[name] = np.where(mask, state[name], 0).astype(np.float32)
    masked = copy.deepcopy(model)
    masked.load_state_dict(state)
    return masked


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pruned_model_is_smaller_with_the_masked_models_outputs(rng, dtype):
    nn.manual_seed(0)
    model = _Net()
    _randomise_norms(model, rng)
    plans = plan_filters(model, (3, 12, 12), 0.5)
    assert [p.conv for p in plans] == ["a", "b"]  # c and d feed the residual add
    assert plans[0].norms == ("a_bn",) and plans[0].consumers == (("b", 1),)
    assert plans[1].consumers == (("c", 1),)
    pruned = prune_filters(model, plans)
    assert pruned.a.weight.data.shape == (4, 3, 3, 3) and pruned.b.weight.data.shape == (3, 4, 3, 3)
    assert pruned.c.weight.data.shape == (6, 3, 1, 1) and pruned.a_bn.running_var.shape == (4,)
    assert pruned.num_parameters() < model.num_parameters()
    # the filters kept have the largest L1 norms
    norms = np.abs(model.a.weight.data).sum(axis=(1, 2, 3))
    assert norms[plans[0].keep].min() >= np.delete(norms, plans[0].keep).max()
    masked = _masked(model, filter_masks(model, plans))
    x = rng.standard_normal((2, 3, 12, 12))
    expected = run_poisoned(masked, x, dtype)
    assert rel_error(run_poisoned(pruned, x, dtype), expected) < NET_TOLERANCE[dtype]
    assert model.a.weight.data.shape == (8, 3, 3, 3)  # the original is left as it was


def test_lenet_caffe_prunes_into_the_linear_layer(rng):
    nn.manual_seed(1)
    model = zoo.get("lenet_caffe")
    plans = plan_filters(model, (1, 28, 28), 0.4)
    assert [(p.conv, p.consumers) for p in plans] == [
        ("features.0", (("features.2", 1),)),
        ("features.2", (("classifier.0", 16),)),
    ]
    pruned = prune_filters(model, plans)
    assert pruned.classifier[0].weight.data.shape == (500, 30 * 16)
    masked = _masked(model, filter_masks(model, plans))
    x = rng.random((2, 1, 28, 28))
    expected = run_poisoned(masked, x, "float64")
    assert rel_error(run_poisoned(pruned, x, "float64"), expected) < NET_TOLERANCE["float64"]


def test_bad_fraction():
    with pytest.raises(ValueError, match=r"fraction must be in \[0, 1\), but got 1.0"):
        plan_filters(_Net(), (3, 12, 12), 1.0)
