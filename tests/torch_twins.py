"""Torch twins shared by the tests (and bench/train.py): the torch form of networks built with
graph.nn, with the same module names, so state_dicts load both ways."""

from __future__ import annotations

import torch
import torch.nn as T


class TorchBasicBlock(T.Module):
    """torchvision's BasicBlock: 3x3 conv-BN-ReLU, 3x3 conv-BN, residual add, ReLU; a 1x1 conv +
    BN projection when the stride or width changes."""

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = T.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = T.BatchNorm2d(planes)
        self.conv2 = T.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = T.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = T.Sequential(
                T.Conv2d(inplanes, planes, 1, stride, bias=False), T.BatchNorm2d(planes)
            )

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + identity)


class TorchResNet18(T.Module):
    """ResNet-18 (torchvision's names); ``cifar_stem``: 3x3 stride-1 stem and no max-pool."""

    def __init__(self, num_classes: int = 10, cifar_stem: bool = False) -> None:
        super().__init__()
        self.cifar_stem = cifar_stem
        self.conv1 = (
            T.Conv2d(3, 64, 3, 1, 1, bias=False)
            if cifar_stem
            else T.Conv2d(3, 64, 7, 2, 3, bias=False)
        )
        self.bn1 = T.BatchNorm2d(64)
        inplanes = 64
        for i, planes in enumerate((64, 128, 256, 512)):
            stride = 1 if i == 0 else 2
            setattr(
                self,
                f"layer{i + 1}",
                T.Sequential(
                    TorchBasicBlock(inplanes, planes, stride), TorchBasicBlock(planes, planes, 1)
                ),
            )
            inplanes = planes
        self.fc = T.Linear(512, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        if not self.cifar_stem:
            x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))
