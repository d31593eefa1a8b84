"""VGG (Simonyan & Zisserman 2015), configurations A, B, D and E, in torchvision's layout.

``vgg11/13/16/19`` and their ``_bn`` forms (BatchNorm after every conv, Ioffe & Szegedy 2015):
3x3 stride-1 convs in five stages, each closed by a 2x2 max-pool, then
``AdaptiveAvgPool2d((7, 7))`` and the classifier FC 4096-4096-classes with dropout. The adaptive
pool is torchvision's: the identity at 224x224, and what lets a 32x32 or 64x64 input (a 1x1 or
2x2 map after five pools) reach the 512*7*7 classifier. Parameter counts and state-dict keys
(``features.0.weight``, ``classifier.6.bias``) equal torchvision's.

Weights start as torchvision's: Kaiming-normal (fan_out) convs, linear weights N(0, 0.01)
(``trunc_normal_`` with its default +-2 bounds, 200 standard deviations away, never cuts), zero
biases, BatchNorm weight 1 and bias 0.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register
from zoo.blurpool import BlurPool2d

# Convs per stage (the paper's Table 1 columns A, B, D, E); stage widths are shared.
_STAGE_DEPTHS: dict[str, tuple[int, ...]] = {
    "vgg11": (1, 1, 2, 2, 2),
    "vgg13": (2, 2, 2, 2, 2),
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_STAGE_WIDTHS = (64, 128, 256, 512, 512)


def make_layers(
    depths: tuple[int, ...], batch_norm: bool, in_channels: int = 3, blur: int = 0
) -> nn.Sequential:
    """torchvision's ``make_layers``: conv (+ BN) + ReLU per conv, a 2x2 max-pool per stage,
    in the same order, so module indices (and state-dict keys) line up with torchvision's.
    ``blur=k`` (anti-aliased, as antialiased-cnns): each pool is a 2x2 max-pool at stride 1
    followed by a BlurPool of filter size k and stride 2 (two modules, so indices shift)."""
    layers: list[nn.Module] = []
    channels = in_channels
    for depth, width in zip(depths, _STAGE_WIDTHS, strict=True):
        for _ in range(depth):
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        if blur:
            layers += [nn.MaxPool2d(2, 1), BlurPool2d(channels, blur, 2)]
        else:
            layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG: ``features``, ``avgpool``, ``classifier``."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        for _, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.kaiming_normal_(module.weight, mode="fan_out")
                module.bias.data[...] = 0.0
            elif isinstance(module, nn.Linear):
                nn.trunc_normal_(module.weight, std=0.01)
                module.bias.data[...] = 0.0

    def forward(self, x):
        return self.classifier(F.flatten(self.avgpool(self.features(x)), 1))


def _factory(depths: tuple[int, ...], batch_norm: bool):
    def build(num_classes: int = 1000, in_channels: int = 3, blur: int = 0) -> VGG:
        return VGG(make_layers(depths, batch_norm, in_channels, blur), num_classes)

    return build


for _name, _depths in _STAGE_DEPTHS.items():
    register(_name, (3, 224, 224), 1000, torchvision=_name)(_factory(_depths, batch_norm=False))
    register(f"{_name}_bn", (3, 224, 224), 1000, torchvision=f"{_name}_bn")(
        _factory(_depths, batch_norm=True)
    )
