"""Network in Network (Lin, Chen & Yan 2014), the CIFAR-10 model of the paper's section 4.2.

Each mlpconv block is a spatial conv followed by two 1x1 convs (the paper's "micro network", a
small MLP slid over the map), each with a ReLU. Three blocks on a 3x32x32 input:

- 5x5 conv 192, 1x1 160, 1x1 96; 3x3 stride-2 max-pool (32 -> 16), dropout 0.5
- 5x5 conv 192, 1x1 192, 1x1 192; 3x3 stride-2 average pool (16 -> 8), dropout 0.5
- 3x3 conv 192, 1x1 192, 1x1 classes; global average pooling

Global average pooling of the last block's class maps replaces the fully connected classifier,
the paper's second idea. Layer widths and the pooling are those of the authors' Caffe model;
its pools round up (``ceil_mode=True``), which gives the 16 and 8 map sizes. 966,986 parameters
with 10 classes. Layout in the manner of torchvision's SqueezeNet, the nearest torchvision
model: ``features`` and a ``classifier`` holding the class conv, its ReLU and the pooling.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register


def _mlpconv(in_channels: int, widths: tuple[int, ...], kernel: int) -> list[nn.Module]:
    """A ``kernel`` x ``kernel`` conv ("same" padding) then 1x1 convs, each with a ReLU."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        size = kernel if i == 0 else 1
        layers += [nn.Conv2d(in_channels, width, size, padding=size // 2), nn.ReLU(inplace=True)]
        in_channels = width
    return layers


class NIN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            *_mlpconv(in_channels, (192, 160, 96), 5),
            nn.MaxPool2d(3, 2, ceil_mode=True),
            nn.Dropout(dropout),
            *_mlpconv(96, (192, 192, 192), 5),
            nn.AvgPool2d(3, 2, ceil_mode=True),
            nn.Dropout(dropout),
            *_mlpconv(192, (192, 192), 3),
        )
        self.classifier = nn.Sequential(
            nn.Conv2d(192, num_classes, 1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )

    def forward(self, x):
        return F.flatten(self.classifier(self.features(x)), 1)


@register("nin_cifar", (3, 32, 32), 10, departs="not in torchvision (Lin et al. 2014)")
def nin_cifar(num_classes: int = 10, in_channels: int = 3) -> NIN:
    return NIN(num_classes, in_channels)
