"""A small ResNet (BatchNorm, residual adds, pooling, dropout off) trained for 3 steps against the
same torch model with the same state_dict: losses, weights and BatchNorm statistics agree."""

from __future__ import annotations

import pytest
import torch

import engine
import graph.functional as F
import graph.nn as nn
from engine.optim import SGD
from tests.helpers import DTYPES, rel_error
from tests.torch_twins import TorchBasicBlock


class Block(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + identity)


class SmallResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
        self.dropout = nn.Dropout(0.0)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(self.dropout(F.flatten(x, 1)))


class TorchSmallResNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        T = torch.nn
        self.conv1 = T.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = T.BatchNorm2d(8)
        self.pool = T.MaxPool2d(2)
        self.layer1 = T.Sequential(TorchBasicBlock(8, 8, 1), TorchBasicBlock(8, 16, 2))
        self.dropout = T.Dropout(0.0)
        self.avgpool = T.AdaptiveAvgPool2d(1)
        self.fc = T.Linear(16, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layer1(x))
        return self.fc(self.dropout(x.flatten(1)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_small_resnet_three_steps_match_torch(dtype, rng):
    model = SmallResNet()
    exe = engine.compile(
        model,
        (3, 16, 16),
        batch=4,
        dtype=dtype,
        train=True,
        optimizer=SGD(lr=0.05, momentum=0.9, weight_decay=5e-4),
    )
    twin = TorchSmallResNet().to(getattr(torch, dtype)).train()
    twin.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    tolerance = 1e-4 if dtype == "float32" else 1e-9
    for step in range(3):
        x = rng.standard_normal((4, 3, 16, 16)).astype(dtype)
        y = rng.integers(0, 10, 4)
        loss = exe.train_step(x, y)
        optimizer.zero_grad()
        ref = torch.nn.functional.cross_entropy(twin(torch.from_numpy(x)), torch.from_numpy(y))
        ref.backward()
        optimizer.step()
        assert rel_error([loss], [ref.item()]) < tolerance, (step, loss, ref.item())
    reference = twin.state_dict()
    for name, value in exe.state_dict().items():
        err = rel_error(value, reference[name].numpy())
        assert err < tolerance, f"{name}: relative error {err:.2e}"
    # eval mode uses the running statistics the three steps accumulated, as torch's does
    x = rng.standard_normal((4, 3, 16, 16)).astype(dtype)
    with torch.no_grad():
        expected = twin.eval()(torch.from_numpy(x)).numpy()
    assert rel_error(exe.eval().run(x), expected) < tolerance
