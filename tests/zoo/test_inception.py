"""The Inception family: GoogLeNet, BN-Inception (inception_v2) and Inception v3.

Parameter counts are torchvision's for GoogLeNet and Inception v3 (their defaults carry the
auxiliary heads, as torchvision's builders do; ``zoo/torchvision_params.py`` sums the heads) and
summed by hand below for BN-Inception. Each model compiles and runs at batch 1 on a small input;
GoogLeNet's three heads match a torch twin written here with torchvision's module names (it
loads our state_dict strictly, so the keys are torchvision's), and GoogLeNet trains for three
SGD steps on its main logits, leaving the auxiliary heads' weights as they were.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import engine
import zoo
from graph import nn
from graph.trace import trace
from tests.helpers import NET_TOLERANCE, rel_error, run_poisoned, torch_twin

# BN-Inception, 1000 classes. u(i, o, k) = o*i*k*k + 2*o: a bias-free k x k conv from i to o
# channels and its BN scale and shift.
#   stem: u(3, 64, 7) + u(64, 64, 1) + u(64, 192, 3) = 9,536 + 4,224 + 110,976 = 124,736
#   module (input channels c): 1x1 u(c, #1x1) | u(c, red) + u(red, #3x3, 3)
#       | u(c, dred) + u(dred, d, 3) + u(d, d, 3) | u(c, proj), e.g. 3a (c = 192):
#       12,416 | 12,416 + 36,992 | 12,416 + 55,488 + 83,136 | 6,208 = 219,072
#   module   c      1x1       3x3     double 3x3   pool proj      total
#   3a      192    12,416    49,408    151,040       6,208        219,072
#   3b      256    16,512    72,000    155,136      16,512        260,160
#   3c      320         0   225,856    159,232           0        385,088
#   4a      576   129,472    92,480    314,048      73,984        609,984
#   4b      576   110,976   166,336    314,048      73,984        665,344
#   4c      576    92,480   258,624    489,344      73,984        914,432
#   4d      608    58,560   299,648    706,624      78,080      1,142,912
#   4e      608         0   299,648  1,150,336           0      1,449,984
#   5a     1056   372,416   756,736    944,320     135,424      2,208,896
#   5b     1024   361,152   750,592  1,036,544     131,328      2,279,616
#   fc: 1024*1000 + 1000 = 1,025,000
BN_INCEPTION_PARAMS = (
    124_736
    + 219_072
    + 260_160
    + 385_088
    + 609_984
    + 665_344
    + 914_432
    + 1_142_912
    + 1_449_984
    + 2_208_896
    + 2_279_616
    + 1_025_000
)  # 11,285,224

COUNTS = [
    ("googlenet", {}, 13_004_888),
    ("googlenet", {"aux_logits": False}, 6_624_904),
    ("inception_v2", {}, BN_INCEPTION_PARAMS),
    ("inception_v3", {}, 27_161_264),
    ("inception_v3", {"aux_logits": False}, 23_834_568),
]


@pytest.mark.parametrize(
    ("name", "options", "params"),
    COUNTS,
    ids=["googlenet", "googlenet_no_aux", "inception_v2", "inception_v3", "inception_v3_no_aux"],
)
def test_parameter_count(name, options, params):
    assert zoo.get(name, **options).num_parameters() == params


@pytest.mark.parametrize(
    ("name", "shape"),
    [("inception_v2", (3, 96, 96)), ("inception_v3", (3, 75, 75))],
    ids=["inception_v2", "inception_v3"],
)
def test_forward_runs_on_a_small_input(name, shape, rng):
    model = zoo.get(name, num_classes=10)
    out = run_poisoned(model, rng.standard_normal((1, *shape)), "float32")
    assert out.shape == (1, 10)
    assert np.all(np.isfinite(out))


def test_registered_design_inputs():
    assert zoo.spec("googlenet").input_shape == (3, 224, 224)
    assert zoo.spec("inception_v2").input_shape == (3, 224, 224)
    assert zoo.spec("inception_v3").input_shape == (3, 299, 299)


def test_auxiliary_heads_trace_at_the_design_size():
    """Tracing only (shape rules, no compile): v3's aux head needs the 17x17 grid of 299x299."""
    model = zoo.get("inception_v3", num_classes=10, aux_logits=True).select_head("AuxLogits")
    assert trace(model, (3, 299, 299)).outputs[0].shape == (1, 10)
    model = zoo.get("googlenet", num_classes=10, aux_logits=True)
    for head in ("aux1", "aux2", "fc"):
        assert trace(model.select_head(head), (3, 224, 224)).outputs[0].shape == (1, 10)


def test_select_head_needs_the_head_built():
    with pytest.raises(ValueError, match=r"aux_logits=True"):
        zoo.get("googlenet", aux_logits=False).select_head("aux1")
    with pytest.raises(ValueError, match=r"head must be one of \('fc', 'AuxLogits'\)"):
        zoo.get("inception_v3", aux_logits=True).select_head("aux")


def test_googlenet_trains():
    """The default model carries the auxiliary heads; the main logits' loss never reaches them."""
    nn.manual_seed(0)
    model = zoo.get("googlenet", num_classes=10)
    aux_weights = {k: v for k, v in model.state_dict().items() if k.startswith("aux")}
    assert aux_weights
    exe = engine.compile(
        model,
        (3, 64, 64),
        batch=2,
        train=True,
        optimizer=engine.optim.SGD(lr=0.01, momentum=0.9),
    )
    data = np.random.default_rng(0)
    x = data.standard_normal((2, 3, 64, 64)).astype(np.float32)
    y = data.integers(0, 10, 2)
    losses = [exe.train_step(x, y) for _ in range(3)]
    assert np.all(np.isfinite(losses)), losses
    assert losses[0] > losses[1] > losses[2], losses
    assert not any(key.startswith("aux") for key in exe.grads)
    trained = exe.state_dict()
    for key, weight in aux_weights.items():  # num_batches_tracked too: no forward ran the heads
        np.testing.assert_array_equal(trained[key], weight, err_msg=key)
    assert trained["conv1.bn.num_batches_tracked"] == 3


# **** GoogLeNet's torch twin, with torchvision's module names ****

# torchvision's Inception(in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj) arguments.
GOOGLENET_BLOCKS = {
    "inception3a": (192, 64, 96, 128, 16, 32, 32),
    "inception3b": (256, 128, 128, 192, 32, 96, 64),
    "inception4a": (480, 192, 96, 208, 16, 48, 64),
    "inception4b": (512, 160, 112, 224, 24, 64, 64),
    "inception4c": (512, 128, 128, 256, 24, 64, 64),
    "inception4d": (512, 112, 144, 288, 32, 64, 64),
    "inception4e": (528, 256, 160, 320, 32, 128, 128),
    "inception5a": (832, 256, 160, 320, 32, 128, 128),
    "inception5b": (832, 384, 192, 384, 48, 128, 128),
}


def torch_googlenet(num_classes: int) -> torch.nn.Module:
    """torchvision's GoogLeNet with aux heads; forward returns (fc, aux1, aux2) logits."""
    T = torch.nn

    class BasicConv2d(T.Module):
        def __init__(self, in_channels: int, out_channels: int, kernel_size: int, **options):
            super().__init__()
            self.conv = T.Conv2d(in_channels, out_channels, kernel_size, bias=False, **options)
            self.bn = T.BatchNorm2d(out_channels, eps=0.001)

        def forward(self, x):
            return torch.relu(self.bn(self.conv(x)))

    class Inception(T.Module):
        def __init__(self, c_in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj):
            super().__init__()
            self.branch1 = BasicConv2d(c_in, ch1x1, 1)
            self.branch2 = T.Sequential(
                BasicConv2d(c_in, ch3x3red, 1), BasicConv2d(ch3x3red, ch3x3, 3, padding=1)
            )
            self.branch3 = T.Sequential(
                BasicConv2d(c_in, ch5x5red, 1), BasicConv2d(ch5x5red, ch5x5, 3, padding=1)
            )
            self.branch4 = T.Sequential(
                T.MaxPool2d(3, 1, 1, ceil_mode=True), BasicConv2d(c_in, pool_proj, 1)
            )

        def forward(self, x):
            branches = (self.branch1, self.branch2, self.branch3, self.branch4)
            return torch.cat([branch(x) for branch in branches], 1)

    class InceptionAux(T.Module):
        def __init__(self, c_in: int):
            super().__init__()
            self.conv = BasicConv2d(c_in, 128, 1)
            self.fc1 = T.Linear(2048, 1024)
            self.fc2 = T.Linear(1024, num_classes)
            self.dropout = T.Dropout(0.7)

        def forward(self, x):
            x = torch.flatten(self.conv(T.functional.adaptive_avg_pool2d(x, (4, 4))), 1)
            return self.fc2(self.dropout(torch.relu(self.fc1(x))))

    class GoogLeNet(T.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = BasicConv2d(3, 64, 7, stride=2, padding=3)
            self.maxpool1 = T.MaxPool2d(3, 2, ceil_mode=True)
            self.conv2 = BasicConv2d(64, 64, 1)
            self.conv3 = BasicConv2d(64, 192, 3, padding=1)
            self.maxpool2 = T.MaxPool2d(3, 2, ceil_mode=True)
            for name, arguments in GOOGLENET_BLOCKS.items():
                setattr(self, name, Inception(*arguments))
                if name == "inception3b":
                    self.maxpool3 = T.MaxPool2d(3, 2, ceil_mode=True)
                if name == "inception4e":
                    self.maxpool4 = T.MaxPool2d(2, 2, ceil_mode=True)
            self.aux1 = InceptionAux(512)
            self.aux2 = InceptionAux(528)
            self.avgpool = T.AdaptiveAvgPool2d((1, 1))
            self.dropout = T.Dropout(0.2)
            self.fc = T.Linear(1024, num_classes)

        def forward(self, x):
            x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
            x = self.inception4a(self.maxpool3(self.inception3b(self.inception3a(x))))
            aux1 = self.aux1(x)
            x = self.inception4d(self.inception4c(self.inception4b(x)))
            aux2 = self.aux2(x)
            x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(x))))
            return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1))), aux1, aux2

    return GoogLeNet()


def _calibrate_batch_norms(torch_model: torch.nn.Module, x: np.ndarray) -> None:
    """Random BN scales and shifts, and running statistics taken from one training-mode batch
    (momentum 1 keeps exactly that batch's), so every eval-mode BN normalises activations of
    order one through the whole depth: neither the identity nor a vanishing signal is tested."""
    with torch.no_grad():
        for module in torch_model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
                module.momentum = 1.0
        torch_model.train()(torch.from_numpy(x))
    torch_model.eval()


def test_googlenet_heads_match_torch_twin(rng):
    torch.manual_seed(int(rng.integers(2**31)))
    model = zoo.get("googlenet", num_classes=10, aux_logits=True)
    torch_model = torch_twin(model, torch_googlenet(10), "float32")
    assert list(torch_model.state_dict()) == list(model.state_dict())
    _calibrate_batch_norms(torch_model, rng.standard_normal((4, 3, 96, 96)).astype(np.float32))
    model.load_state_dict(torch_model.state_dict())
    x = rng.standard_normal((1, 3, 96, 96)).astype(np.float32)
    with torch.no_grad():
        expected = torch_model(torch.from_numpy(x))
    for head, logits in zip(("fc", "aux1", "aux2"), expected, strict=True):
        err = rel_error(run_poisoned(model.select_head(head), x, "float32"), logits.numpy())
        assert err < NET_TOLERANCE["float32"], f"{head}: relative error {err:.3e}"
