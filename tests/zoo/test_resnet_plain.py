"""The plain CIFAR networks (He et al. 2016, section 4.2's degradation experiment): the ResNet
stacks without shortcuts, checked against a PyTorch twin written here with the same names."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as T

import zoo
from graph import nn
from graph.trace import trace
from tests.helpers import rel_error, run_with_random_params


class _TorchPlainBlock(T.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = T.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = T.BatchNorm2d(planes)
        self.conv2 = T.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = T.BatchNorm2d(planes)

    def forward(self, x):
        return torch.relu(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class _TorchPlainNet(T.Module):
    """6n+2 layers: a 3x3 stem, three stages of n plain blocks (16, 32, 64 channels), a linear
    layer after global average pooling."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = T.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = T.BatchNorm2d(16)
        inplanes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = [_TorchPlainBlock(inplanes, planes, 1 if i == 0 else 2)]
            blocks += [_TorchPlainBlock(planes, planes, 1) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", T.Sequential(*blocks))
            inplanes = planes
        self.fc = T.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("depth", [20, 56])
def test_plain_network_has_no_shortcut_and_the_resnet_layers(depth):
    nn.manual_seed(0)
    plain = zoo.get(f"resnet{depth}_plain_cifar")
    graph = trace(plain, (3, 32, 32), batch=1)
    assert not [node.name for node in graph.nodes if node.op == "add"]
    convs = [node for node in graph.nodes if node.op == "conv2d"]
    assert len(convs) == depth - 1  # 6n+1 convs and the linear layer: 6n+2 weighted layers
    twin = _TorchPlainNet(depth)
    assert plain.num_parameters() == sum(p.numel() for p in twin.parameters())
    assert set(plain.state_dict()) == set(twin.state_dict())


def test_plain_resnet20_matches_its_torch_twin_in_float64():
    nn.manual_seed(0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 32, 32))
    out, params = run_with_random_params(zoo.get("resnet20_plain_cifar"), x, "float64", rng)
    twin = _TorchPlainNet(20).double().eval()
    twin.load_state_dict(params, strict=False)
    with torch.no_grad():
        expected = twin(torch.from_numpy(x)).numpy()
    assert rel_error(out, expected) < 1e-10


def test_plain_option_refuses_bottleneck_blocks():
    from zoo.resnet import Bottleneck, ResNet

    with pytest.raises(ValueError, match="BasicBlock stacks only, but got Bottleneck"):
        ResNet(Bottleneck, [1, 1], plain=True)


@pytest.mark.parametrize("name", ["resnet20_cifar", "resnet20_plain_cifar"])
def test_cifar_resnets_take_blur_for_the_shift_invariance_comparison(name):
    graph = trace(zoo.get(name, blur=3), (3, 32, 32), batch=1)
    shapes = {node.name: node.outputs[0].shape for node in graph.nodes}
    # the strided conv runs at stride 1, then a 3x3 blur filter subsamples by 2 (Zhang 2019)
    assert shapes["layer2.0.conv1"] == (1, 32, 32, 32)
    assert shapes["layer2.0.blurpool.conv2d"] == (1, 32, 16, 16)
    assert shapes["layer3.0.blurpool.conv2d"] == (1, 64, 8, 8)
    assert graph.outputs[0].shape == (1, 10)
    plain = name.endswith("plain_cifar")
    assert plain == (not [node for node in graph.nodes if node.op == "add"])
