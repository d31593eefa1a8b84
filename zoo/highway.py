"""Convolutional highway network for CIFAR (Srivastava, Greff & Schmidhuber 2015).

A highway layer carries its input through a learned gate: ``y = H(x) * T(x) + x * (1 - T(x))``
with ``H`` a 3x3 conv + BN + ReLU and ``T`` a 3x3 conv + sigmoid whose bias starts negative
(-2 here, the paper's -1 to -3 range), so the network begins close to the identity and deep
stacks still train. It is computed as ``x + T * (H - x)``: the same value, one multiply fewer.

``highway_cifar``: a 3x3 conv stem to 32 channels, three stages of ``layers`` highway layers
(32, 64, 128 channels) joined by 1x1 conv + max-pool transitions, global average pooling and
one linear layer; 3x32x32 inputs, 10 classes.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register


class HighwayLayer(nn.Module):
    def __init__(self, channels: int, gate_bias: float = -2.0) -> None:
        super().__init__()
        self.transform = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
            nn.ReLU(),
        )  # fmt: skip
        self.gate = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate.bias.data[...] = gate_bias

    def forward(self, x):
        gate = F.sigmoid(self.gate(x))
        return F.add(x, F.mul(gate, F.sub(self.transform(x), x)))


class HighwayNet(nn.Module):
    def __init__(
        self, layers: int = 3, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128)
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU(),
        )  # fmt: skip
        stages = []
        for i, width in enumerate(widths):
            blocks = [HighwayLayer(width) for _ in range(layers)]
            if i + 1 < len(widths):
                blocks += [
                    nn.Conv2d(width, widths[i + 1], 1, bias=False),
                    nn.BatchNorm2d(widths[i + 1]),
                    nn.ReLU(),
                    nn.MaxPool2d(2),
                ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register("highway_cifar", (3, 32, 32), 10, departs="not in torchvision (Srivastava et al. 2015)")
def highway_cifar(num_classes: int = 10, in_channels: int = 3, layers: int = 3) -> HighwayNet:
    return HighwayNet(layers, num_classes, in_channels)
