"""SPP-net (He, Zhang, Ren & Sun 2014): spatial pyramid pooling between the convs and the FCs.

A conv backbone's output size follows the input size, but a fully connected layer needs a fixed
length. Spatial pyramid pooling max-pools each channel of the last conv map into a fixed grid of
bins at several levels (here 1x1, 2x2 and 4x4: 21 bins, the pyramid of the paper's Figure 3)
whatever the map size, and concatenates them, so one network with one set of weights takes
inputs of any size. The bins are adaptive max-pools: bin i of n spans
``[floor(i*a/n), ceil((i+1)*a/n))`` of an a-wide map (PyTorch's adaptive windows). On the 13x13
map of a 224x224 input these are exactly the paper's windows (size ceil(a/n), stride
floor(a/n)); unlike those they always cover the whole map (for a=10, n=4 the paper's windows
leave out the last row and column).

Backbone: the paper's "ZF-5" (its Table 1), ZFNet's five conv layers without pool5 (13x13x256
on 224x224 inputs, 10x10 on 180x180), shared with ``zoo.alexnet``. Head: FC 4096-4096-classes
with dropout, as the paper's fc6, fc7. 46,628,968 parameters with 1000 classes.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register
from zoo.alexnet import zf_conv_layers


class SpatialPyramidPool2d(nn.Module):
    """Max-pool [N, C, H, W] into each ``levels`` x ``levels`` grid; return [N, C * sum(n*n)]:
    level by level, channel-major within a level (``flatten`` order)."""

    def __init__(self, levels: tuple[int, ...] = (1, 2, 4)) -> None:
        super().__init__()
        self.levels = levels

    @property
    def bins(self) -> int:
        return sum(n * n for n in self.levels)

    def forward(self, x):
        return F.cat([F.flatten(F.adaptive_max_pool2d(x, n), 1) for n in self.levels], 1)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"


class SPPNet(nn.Module):
    """``features`` (ZF-5), ``spp`` and ``classifier``; any input on which conv5 is non-empty."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        levels: tuple[int, ...] = (1, 2, 4),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = nn.Sequential(*zf_conv_layers(in_channels))
        self.spp = SpatialPyramidPool2d(levels)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * self.spp.bins, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.spp(self.features(x)))


@register("spp_net", (3, 224, 224), 1000, departs="not in torchvision (He et al. 2014)")
def spp_net(num_classes: int = 1000, in_channels: int = 3) -> SPPNet:
    return SPPNet(num_classes, in_channels)
