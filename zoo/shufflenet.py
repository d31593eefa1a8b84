"""ShuffleNet v2 (Ma et al. 2018) in torchvision's layout and parameter names.

Each unit splits the channels in two (``chunk``), transforms one half (1x1 conv, 3x3 depthwise,
1x1 conv), concatenates and shuffles the channels; a stride-2 unit transforms both halves.
Widths x0.5 / x1.0 / x1.5 / x2.0: 1,366,792 / 2,278,604 / 3,503,624 / 7,393,996 parameters.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register

_WIDTHS = {
    "shufflenet_v2_x0_5": (24, 48, 96, 192, 1024),
    "shufflenet_v2_x1_0": (24, 116, 232, 464, 1024),
    "shufflenet_v2_x1_5": (24, 176, 352, 704, 1024),
    "shufflenet_v2_x2_0": (24, 244, 488, 976, 2048),
}


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int) -> None:
        super().__init__()
        if stride == 1 and inp != 2 * (oup // 2):
            raise ValueError(f"a stride-1 unit needs in_channels = 2*(out//2), got {inp}, {oup}")
        self.stride = stride
        branch = oup // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(inp, stride), nn.BatchNorm2d(inp),
                nn.Conv2d(inp, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(),
            )  # fmt: skip
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(inp if stride > 1 else branch, branch, 1, bias=False),
            nn.BatchNorm2d(branch), nn.ReLU(),
            _depthwise(branch, stride), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(),
        )  # fmt: skip

    def forward(self, x):
        if self.stride == 1:
            kept, transformed = F.chunk(x, 2, dim=1)
            out = F.cat([kept, self.branch2(transformed)], dim=1)
        else:
            out = F.cat([self.branch1(x), self.branch2(x)], dim=1)
        return F.channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(
        self, widths, num_classes: int = 1000, in_channels: int = 3, repeats=(4, 8, 4)
    ) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        )  # fmt: skip
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        channels = widths[0]
        for i, (count, out) in enumerate(zip(repeats, widths[1:4], strict=True)):
            units = [InvertedResidual(channels, out, 2)]
            units += [InvertedResidual(out, out, 1) for _ in range(count - 1)]
            setattr(self, f"stage{i + 2}", nn.Sequential(*units))
            channels = out
        self.conv5 = nn.Sequential(
            nn.Conv2d(channels, widths[4], 1, bias=False), nn.BatchNorm2d(widths[4]), nn.ReLU()
        )
        self.fc = nn.Linear(widths[4], num_classes)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _factory(widths):
    def build(num_classes: int = 1000, in_channels: int = 3) -> ShuffleNetV2:
        return ShuffleNetV2(widths, num_classes, in_channels)

    return build


for _name, _widths in _WIDTHS.items():
    register(_name, (3, 224, 224), 1000, torchvision=_name)(_factory(_widths))
