"""AlexNet, ZFNet and GoogLeNet as published, with local response normalisation (``lrn=True``).

The torch twins below are the BVLC Caffe models' layers written with ``torch.nn`` under our
module names (torchvision has neither): they load our ``state_dict`` strictly, so names and
shapes agree, give the parameter counts (BVLC's published AlexNet has 60,965,224, GoogLeNet
6,998,552 without its auxiliary classifiers), and compute the same logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import zoo
from graph import nn
from tests.helpers import NET_TOLERANCE, rel_error, run_poisoned, torch_run, torch_twin
from tests.zoo.test_classic import ZFNET_PARAMS

T = torch.nn


def _lrn() -> T.Module:
    return T.LocalResponseNorm(5, 1e-4, 0.75)


def torch_bvlc_alexnet(num_classes: int) -> T.Module:
    """bvlc_alexnet (conv2, conv4, conv5 in two groups; LRN before pool1 and pool2) with
    torchvision's avgpool and classifier."""

    class AlexNet(T.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = T.Sequential(
                T.Conv2d(3, 96, 11, stride=4), T.ReLU(), _lrn(), T.MaxPool2d(3, 2),
                T.Conv2d(96, 256, 5, padding=2, groups=2), T.ReLU(), _lrn(), T.MaxPool2d(3, 2),
                T.Conv2d(256, 384, 3, padding=1), T.ReLU(),
                T.Conv2d(384, 384, 3, padding=1, groups=2), T.ReLU(),
                T.Conv2d(384, 256, 3, padding=1, groups=2), T.ReLU(), T.MaxPool2d(3, 2),
            )  # fmt: skip
            self.avgpool = T.AdaptiveAvgPool2d((6, 6))
            self.classifier = T.Sequential(
                T.Dropout(), T.Linear(9216, 4096), T.ReLU(),
                T.Dropout(), T.Linear(4096, 4096), T.ReLU(), T.Linear(4096, num_classes),
            )  # fmt: skip

        def forward(self, x):
            return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))

    return AlexNet()


GOOGLENET_BLOCKS = {  # in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection (Table 1)
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


def torch_bvlc_googlenet(num_classes: int, aux_logits: bool) -> T.Module:
    """bvlc_googlenet: convs with biases and ReLU, LRN after pool1 and conv3, 5x5 branches;
    auxiliary heads in torchvision's form (4x4 adaptive pool, 1x1 conv, fc 1024, fc)."""

    class ConvReLU(T.Module):
        def __init__(self, c_in: int, c_out: int, kernel: int, **options) -> None:
            super().__init__()
            self.conv = T.Conv2d(c_in, c_out, kernel, **options)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class Inception(T.Module):
        def __init__(self, c_in, ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) -> None:
            super().__init__()
            self.branch1 = ConvReLU(c_in, ch1x1, 1)
            self.branch2 = T.Sequential(
                ConvReLU(c_in, ch3x3red, 1), ConvReLU(ch3x3red, ch3x3, 3, padding=1)
            )
            self.branch3 = T.Sequential(
                ConvReLU(c_in, ch5x5red, 1), ConvReLU(ch5x5red, ch5x5, 5, padding=2)
            )
            self.branch4 = T.Sequential(
                T.MaxPool2d(3, 1, 1, ceil_mode=True), ConvReLU(c_in, pool_proj, 1)
            )

        def forward(self, x):
            branches = (self.branch1, self.branch2, self.branch3, self.branch4)
            return torch.cat([branch(x) for branch in branches], 1)

    class InceptionAux(T.Module):
        def __init__(self, c_in: int) -> None:
            super().__init__()
            self.conv = ConvReLU(c_in, 128, 1)
            self.fc1 = T.Linear(2048, 1024)
            self.fc2 = T.Linear(1024, num_classes)

    class GoogLeNet(T.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = ConvReLU(3, 64, 7, stride=2, padding=3)
            self.maxpool1 = T.MaxPool2d(3, 2, ceil_mode=True)
            self.lrn1 = _lrn()
            self.conv2 = ConvReLU(64, 64, 1)
            self.conv3 = ConvReLU(64, 192, 3, padding=1)
            self.lrn2 = _lrn()
            self.maxpool2 = T.MaxPool2d(3, 2, ceil_mode=True)
            for name, arguments in GOOGLENET_BLOCKS.items():
                setattr(self, name, Inception(*arguments))
                if name == "inception3b":
                    self.maxpool3 = T.MaxPool2d(3, 2, ceil_mode=True)
                if name == "inception4e":
                    self.maxpool4 = T.MaxPool2d(2, 2, ceil_mode=True)
            if aux_logits:
                self.aux1, self.aux2 = InceptionAux(512), InceptionAux(528)
            self.fc = T.Linear(1024, num_classes)

        def forward(self, x):
            x = self.lrn1(self.maxpool1(self.conv1(x)))
            x = self.maxpool2(self.lrn2(self.conv3(self.conv2(x))))
            x = self.maxpool3(self.inception3b(self.inception3a(x)))
            for name in ("inception4a", "inception4b", "inception4c", "inception4d"):
                x = getattr(self, name)(x)
            x = self.inception5b(self.inception5a(self.maxpool4(self.inception4e(x))))
            return self.fc(torch.flatten(T.functional.adaptive_avg_pool2d(x, 1), 1))

    return GoogLeNet()


def _count(model) -> int:
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.mark.parametrize(
    "aux_logits,params",
    [(False, 6_998_552), pytest.param(True, 13_378_280, marks=pytest.mark.slow)],
    ids=["no_aux", "aux"],
)
def test_googlenet_as_published_has_bvlc_parameters(aux_logits, params):
    model = zoo.get("googlenet", lrn=True, aux_logits=aux_logits)
    twin = torch_twin(model, torch_bvlc_googlenet(1000, aux_logits), "float32")
    assert _count(model) == _count(twin) == params
    assert sum(isinstance(m, nn.LocalResponseNorm) for _, m in model.named_modules()) == 2


def test_googlenet_as_published_matches_torch_twin(rng):
    torch.manual_seed(int(rng.integers(2**31)))
    model = zoo.get("googlenet", lrn=True, aux_logits=False, num_classes=10)
    twin = torch_twin(model, torch_bvlc_googlenet(10, False), "float32")
    x = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    err = rel_error(run_poisoned(model, x, "float32"), torch_run(twin, x))
    assert err < NET_TOLERANCE["float32"], f"relative error {err:.3e}"


@pytest.mark.slow
def test_alexnet_as_published_matches_bvlc_twin(rng):
    """60,965,224 parameters; the paper's 227x227 input, every map size as in Figure 2."""
    model = zoo.get("alexnet", lrn=True)
    twin = torch_twin(model, torch_bvlc_alexnet(1000), "float32")
    assert _count(model) == _count(twin) == 60_965_224
    x = rng.standard_normal((1, 3, 227, 227)).astype(np.float32)
    err = rel_error(run_poisoned(model, x, "float32"), torch_run(twin, x))
    assert err < NET_TOLERANCE["float32"], f"relative error {err:.3e}"


@pytest.mark.slow
def test_zfnet_as_published():
    """ZFNet's LRNs follow its first two pools and add no parameters."""
    model = zoo.get("zfnet", lrn=True)
    kinds = [type(m).__name__ for m in model.features]
    assert kinds[:8] == ["Conv2d", "ReLU", "MaxPool2d", "LocalResponseNorm"] * 2
    assert _count(model) == ZFNET_PARAMS


def test_alexnet_blur_and_lrn_are_separate_variants():
    with pytest.raises(ValueError, match="AlexNet: blur and lrn are separate variants"):
        zoo.get("alexnet", lrn=True, blur=3)
