"""SqueezeNet (Iandola et al. 2016) 1.0 and 1.1, in torchvision's layout.

A Fire module squeezes with 1x1 convs, then expands with parallel 1x1 and 3x3 convs whose
outputs are concatenated along channels. No fully connected layer: a 1x1 conv to the classes
(after dropout), ReLU and global average pooling classify. ``squeezenet1_1`` (the SqueezeNet
repository's v1.1) has a 3x3 first conv with 64 filters and pools earlier, for 2.4x less
computation at the same accuracy. Max-pools round up (``ceil_mode=True``), as Caffe's pooling
did and torchvision keeps. Parameter counts (1,248,424 and 1,235,496 with 1000 classes) and
state-dict keys (``features.3.squeeze.weight``, ``classifier.1.weight``) equal torchvision's.

Weights: torchvision draws convs from kaiming_uniform_ (variance 2/fan_in); ``graph.nn`` offers
the normal form of the same variance, used here. The final conv is N(0, 0.01), as there
(``trunc_normal_``'s default +-2 bounds lie 200 standard deviations out), and biases start at 0.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register


class Fire(nn.Module):
    def __init__(
        self, inplanes: int, squeeze_planes: int, expand1x1_planes: int, expand3x3_planes: int
    ) -> None:
        super().__init__()
        self.inplanes = inplanes
        self.squeeze = nn.Conv2d(inplanes, squeeze_planes, 1)
        self.squeeze_activation = nn.ReLU(inplace=True)
        self.expand1x1 = nn.Conv2d(squeeze_planes, expand1x1_planes, 1)
        self.expand1x1_activation = nn.ReLU(inplace=True)
        self.expand3x3 = nn.Conv2d(squeeze_planes, expand3x3_planes, 3, padding=1)
        self.expand3x3_activation = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.squeeze_activation(self.squeeze(x))
        return F.cat(
            [
                self.expand1x1_activation(self.expand1x1(x)),
                self.expand3x3_activation(self.expand3x3(x)),
            ],
            1,
        )


def _features_1_0(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 96, 7, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(96, 16, 64, 64),
        Fire(128, 16, 64, 64),
        Fire(128, 32, 128, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 32, 128, 128),
        Fire(256, 48, 192, 192),
        Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(512, 64, 256, 256),
    )


def _features_1_1(in_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, 3, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(64, 16, 64, 64),
        Fire(128, 16, 64, 64),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(128, 32, 128, 128),
        Fire(256, 32, 128, 128),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(256, 48, 192, 192),
        Fire(384, 48, 192, 192),
        Fire(384, 64, 256, 256),
        Fire(512, 64, 256, 256),
    )


class SqueezeNet(nn.Module):
    """torchvision's SqueezeNet: ``features`` (Fire modules) and a conv ``classifier``."""

    def __init__(
        self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        final_conv = nn.Conv2d(512, num_classes, 1)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), final_conv, nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d((1, 1))
        )
        for _, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                if module is final_conv:
                    nn.trunc_normal_(module.weight, std=0.01)
                else:
                    nn.kaiming_normal_(module.weight, mode="fan_in")
                module.bias.data[...] = 0.0

    def forward(self, x):
        return F.flatten(self.classifier(self.features(x)), 1)


@register("squeezenet1_0", (3, 224, 224), 1000, torchvision="squeezenet1_0")
def squeezenet1_0(num_classes: int = 1000, in_channels: int = 3) -> SqueezeNet:
    return SqueezeNet(_features_1_0(in_channels), num_classes)


@register("squeezenet1_1", (3, 224, 224), 1000, torchvision="squeezenet1_1")
def squeezenet1_1(num_classes: int = 1000, in_channels: int = 3) -> SqueezeNet:
    return SqueezeNet(_features_1_1(in_channels), num_classes)
