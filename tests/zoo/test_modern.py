"""ResNets, MobileNets, ShuffleNet v2, ConvNeXt and the highway network: exact parameter counts,
forward and training at small inputs, and torch twins with identical state_dicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as T

import engine
import zoo
from engine.optim import SGD
from tests.helpers import rel_error
from tests.torch_twins import TorchResNet18

COUNTS = {
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808, "resnext50_32x4d": 25_028_904,
    "wide_resnet50_2": 68_883_240, "mobilenet_v2": 3_504_872,
    "shufflenet_v2_x0_5": 1_366_792, "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624, "shufflenet_v2_x2_0": 7_393_996,
    "convnext_tiny": 28_589_128, "convnext_small": 50_223_688, "convnext_base": 88_591_464,
    # MobileNet v1: conv 3x3 (864 + BN 64), 13 separable blocks, fc 1024*1000 + 1000
    "mobilenet_v1": 4_231_976,
}  # fmt: skip


@pytest.mark.parametrize("name", list(COUNTS))
@pytest.mark.slow
def test_parameter_counts_are_exact(name):
    assert zoo.get(name).num_parameters() == COUNTS[name]


# Small inputs where the architecture allows it (adaptive pooling at the end), 10 classes.
# ShuffleNet v2 takes 64x64: on 32x32 its last stage's BatchNorms see 1x1 maps, four values a
# channel at batch 4, and three steps are chaotic (float32 and float64 part at the second loss,
# which one falls is down to rounding); on 2x2 maps both descend alike.
TRAINABLE = {
    "resnet20_cifar": (3, 32, 32), "resnet18_cifar": (3, 16, 16), "resnet18": (3, 32, 32),
    "resnext50_32x4d": (3, 32, 32), "mobilenet_v1": (3, 32, 32), "mobilenet_v2": (3, 32, 32),
    "shufflenet_v2_x0_5": (3, 64, 64), "convnext_tiny": (3, 32, 32), "highway_cifar": (3, 16, 16),
}  # fmt: skip


@pytest.mark.parametrize("name", list(TRAINABLE))
def test_trains_three_steps_with_a_falling_loss(name):
    """Seeded weights and batch; a small learning rate, so three steps on one batch of four
    (BatchNorm statistics from four images) descend rather than bounce."""
    import graph.nn as nn

    nn.manual_seed(0)
    shape = TRAINABLE[name]
    exe = engine.compile(
        zoo.get(name, num_classes=10),
        shape,
        batch=4,
        train=True,
        optimizer=SGD(lr=0.005, momentum=0.9),
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    losses = [exe.train_step(x, y) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses


def _torch_resnet18() -> T.Module:
    return TorchResNet18(num_classes=10)


def _torch_mobilenet_v2() -> T.Module:
    def cna(i, o, k=3, s=1, g=1):
        return T.Sequential(
            T.Conv2d(i, o, k, s, (k - 1) // 2, groups=g, bias=False), T.BatchNorm2d(o), T.ReLU6()
        )

    class Inverted(T.Module):
        def __init__(self, i, o, s, t):
            super().__init__()
            hidden = i * t
            self.res = s == 1 and i == o
            layers = [cna(i, hidden, 1)] if t != 1 else []
            layers += [
                cna(hidden, hidden, 3, s, hidden),
                T.Conv2d(hidden, o, 1, bias=False),
                T.BatchNorm2d(o),
            ]
            self.conv = T.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    class Net(T.Module):
        def __init__(self):
            super().__init__()
            layers, c = [cna(3, 32, s=2)], 32
            for t, out, n, s in (
                (1, 16, 1, 1),
                (6, 24, 2, 2),
                (6, 32, 3, 2),
                (6, 64, 4, 2),
                (6, 96, 3, 1),
                (6, 160, 3, 2),
                (6, 320, 1, 1),
            ):
                for k in range(n):
                    layers.append(Inverted(c, out, s if k == 0 else 1, t))
                    c = out
            layers.append(cna(c, 1280, 1))
            self.features = T.Sequential(*layers)
            self.classifier = T.Sequential(T.Dropout(0.2), T.Linear(1280, 10))

        def forward(self, x):
            return self.classifier(TF.adaptive_avg_pool2d(self.features(x), 1).flatten(1))

    return Net()


TF = torch.nn.functional


@pytest.mark.parametrize(
    "name,twin", [("resnet18", _torch_resnet18), ("mobilenet_v2", _torch_mobilenet_v2)]
)
def test_outputs_equal_the_same_network_written_in_torch(name, twin):
    model = zoo.get(name, num_classes=10)
    rng = np.random.default_rng(1)
    # non-trivial BatchNorm statistics, so eval mode is really exercised
    state = {
        k: (
            rng.uniform(0.5, 2.0, v.shape)
            if k.endswith("running_var")
            else 0.1 * rng.standard_normal(v.shape)
            if k.endswith("running_mean")
            else v
        )
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(state)
    reference = twin().eval()
    reference.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    x = rng.standard_normal((2, 3, 64, 64)).astype(np.float32)
    ours = engine.compile(model, (3, 64, 64), batch=2).run(x)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    assert rel_error(ours, expected) < 1e-4


# **** Anti-aliased variants (blur=k) ****


@pytest.mark.parametrize("size", range(1, 8))
def test_binomial_filters_are_normalised_rows_of_pascals_triangle(size):
    from math import comb

    from zoo.blurpool import binomial_filter

    kernel = binomial_filter(size)
    row = np.array([comb(size - 1, k) for k in range(size)], np.float64)
    np.testing.assert_allclose(kernel, np.outer(row, row) / row.sum() ** 2, rtol=1e-6)


@pytest.mark.parametrize("size,stride", [(1, 2), (3, 2), (4, 2), (7, 2), (3, 1)])
def test_blurpool_equals_reflect_pad_and_depthwise_binomial_conv(size, stride, rng):
    from tests.helpers import check
    from zoo.blurpool import BlurPool2d, binomial_filter

    filt = torch.from_numpy(np.broadcast_to(binomial_filter(size), (3, 1, size, size)).copy())
    total = size - 1
    pads = (total // 2, total - total // 2) * 2

    def reference(x):
        return TF.conv2d(TF.pad(x, pads, mode="reflect"), filt.to(x.dtype), stride=stride, groups=3)

    check(BlurPool2d(3, size, stride), reference, (2, 3, 9, 10), "float64", rng)


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "mobilenet_v2", "vgg11_bn", "alexnet"])
@pytest.mark.slow
def test_blur_adds_no_parameters_and_keeps_every_stage_size(name):
    from graph.trace import trace

    plain, blurred = zoo.get(name), zoo.get(name, blur=4)
    assert blurred.num_parameters() == plain.num_parameters()
    size = (3, 224, 224) if name == "alexnet" else (3, 64, 64)
    shapes = {n.name: n.outputs[0].shape for n in trace(plain, size, 1).nodes}
    joins = [n for n in trace(blurred, size, 1).nodes if n.op in ("add", "linear")]
    assert joins
    for node in joins:  # residual sums (block outputs) and the classifier keep their sizes
        assert node.outputs[0].shape == shapes[node.name], node.name
    pooled = [n.inputs[0].shape for n in trace(blurred, size, 1).nodes if "avg_pool" in n.op]
    plain_pooled = [n.inputs[0].shape for n in trace(plain, size, 1).nodes if "avg_pool" in n.op]
    assert pooled == plain_pooled  # the feature map reaching the head has the same size


def test_blurred_resnet_trains():
    exe = engine.compile(
        zoo.get("resnet18", blur=3, num_classes=10),
        (3, 32, 32),
        batch=4,
        train=True,
        optimizer=SGD(lr=0.01, momentum=0.9),
    )
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 4)
    losses = [exe.train_step(x, y) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0], losses
