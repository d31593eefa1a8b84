"""MobileNets: v1 (Howard et al. 2017, depthwise separable convolutions) and v2 (Sandler et al.
2018, inverted residuals with linear bottlenecks and ReLU6), the latter in torchvision's layout
and parameter names (``features.<i>.conv.<j>``, ``classifier.1``).

- ``mobilenet_v1``: 3x3/2 conv 32, then 13 depthwise-separable blocks (3x3 depthwise + BN +
  ReLU, 1x1 pointwise + BN + ReLU) up to 1024 channels, global average pooling, one linear
  layer; ``width_mult`` scales every width (the paper's alpha).
- ``mobilenet_v2``: torchvision's inverted-residual setting, widths rounded to multiples of 8,
  dropout 0.2 before the classifier; 3,504,872 parameters. ``blur=k`` is the anti-aliased
  variant: strided depthwise convs run at stride 1 followed by a BlurPool (``zoo/blurpool.py``).
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register
from zoo.blurpool import BlurPool2d


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's rounding of scaled widths: nearest multiple of ``divisor``, never below
    90% of the requested value."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNActivation(nn.Sequential):
    """conv (no bias) -> BN -> ReLU6/ReLU, as torchvision's Conv2dNormActivation (keys .0, .1)."""

    def __init__(
        self,
        inp: int,
        out: int,
        kernel: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation=nn.ReLU6,
    ) -> None:
        super().__init__(
            nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
            activation(),
        )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, blur: int = 0) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = [ConvBNActivation(inp, hidden, 1)] if expand_ratio != 1 else []
        if blur and stride > 1:  # anti-aliased: depthwise at stride 1, then blur-pool
            layers += [
                ConvBNActivation(hidden, hidden, 3, 1, groups=hidden),
                BlurPool2d(hidden, blur, stride),
            ]
        else:
            layers.append(ConvBNActivation(hidden, hidden, 3, stride, groups=hidden))
        layers += [
            nn.Conv2d(hidden, oup, 1, bias=False),
            nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return F.add(x, self.conv(x)) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    SETTING = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )  # (expand t, channels c, repeats n, stride s)

    def __init__(
        self,
        num_classes: int = 1000,
        width_mult: float = 1.0,
        dropout: float = 0.2,
        in_channels: int = 3,
        blur: int = 0,
    ) -> None:
        super().__init__()
        channels = _make_divisible(32 * width_mult)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult))
        layers = [ConvBNActivation(in_channels, channels, stride=2)]
        for t, c, n, s in self.SETTING:
            out = _make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t, blur))
                channels = out
        layers.append(ConvBNActivation(channels, self.last_channel, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.last_channel, num_classes)
        )
        for _, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(F.flatten(x, 1))


class MobileNetV1(nn.Module):
    BLOCKS = (
        (64, 1),
        (128, 2),
        (128, 1),
        (256, 2),
        (256, 1),
        (512, 2),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (512, 1),
        (1024, 2),
        (1024, 1),
    )  # (pointwise width, stride)

    def __init__(
        self, num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3
    ) -> None:
        super().__init__()
        channels = int(32 * width_mult)
        layers = [ConvBNActivation(in_channels, channels, stride=2, activation=nn.ReLU)]
        for width, stride in self.BLOCKS:
            out = int(width * width_mult)
            layers += [
                ConvBNActivation(
                    channels, channels, 3, stride, groups=channels, activation=nn.ReLU
                ),
                ConvBNActivation(channels, out, 1, activation=nn.ReLU),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.fc(F.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


@register("mobilenet_v2", (3, 224, 224), 1000, torchvision="mobilenet_v2")
def mobilenet_v2(
    num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3, blur: int = 0
) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, in_channels=in_channels, blur=blur)


@register("mobilenet_v1", (3, 224, 224), 1000, departs="not in torchvision (it has v2 and v3)")
def mobilenet_v1(
    num_classes: int = 1000, width_mult: float = 1.0, in_channels: int = 3
) -> MobileNetV1:
    return MobileNetV1(num_classes, width_mult, in_channels)
