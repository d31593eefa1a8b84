"""ConvNeXt (Liu et al. 2022) in torchvision's layout and parameter names.

A block: 7x7 depthwise conv, LayerNorm over channels, pointwise 4x expansion, GELU, pointwise
projection, layer scale (a learned per-channel factor, initialised to 1e-6), residual add. The
stem is a 4x4/4 "patchify" conv; stages are separated by LayerNorm + 2x2/2 conv downsampling.

torchvision applies its pointwise layers as ``Linear`` over channels-last data (``block.3`` and
``block.5`` hold [out, in] weights); here they run as 1x1 convs on the same weights, reshaped
in the graph, so state_dicts load both ways. ``block.1`` and ``block.6`` (torchvision's permutes)
are parameter-free placeholders. Stochastic depth (drop path) grows linearly over the blocks to
``stochastic_depth_prob`` (torchvision's defaults: 0.1 / 0.4 / 0.5 for T/S/B); it is the
identity at inference.
ConvNeXt-T/S/B: 28,589,128 / 50,223,688 / 88,591,464 parameters.
"""

from __future__ import annotations

import numpy as np

import graph.functional as F
from graph import nn
from zoo import register

_STAGES = {  # widths, depths, torchvision's default stochastic depth
    "convnext_tiny": ((96, 192, 384, 768), (3, 3, 9, 3), 0.1),
    "convnext_small": ((96, 192, 384, 768), (3, 3, 27, 3), 0.4),
    "convnext_base": ((128, 256, 512, 1024), (3, 3, 27, 3), 0.5),
}


class PointwiseLinear(nn.Linear):
    """``Linear`` over the channels of NCHW data: a 1x1 conv on the Linear's own weights."""

    def forward(self, x):
        weight = F.reshape(self.weight, (self.out_features, self.in_features, 1, 1))
        return F.conv2d(x, weight, self.bias)


class CNBlock(nn.Module):
    def __init__(
        self, dim: int, stochastic_depth_prob: float = 0.0, layer_scale: float = 1e-6
    ) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim),
            nn.Identity(),
            nn.LayerNorm2d(dim, eps=1e-6),
            PointwiseLinear(dim, 4 * dim),
            nn.GELU(),
            PointwiseLinear(4 * dim, dim),
            nn.Identity(),
        )
        self.layer_scale = nn.Parameter(np.full((dim, 1, 1), layer_scale, np.float32))
        self.stochastic_depth = nn.StochasticDepth(stochastic_depth_prob, "row")

    def forward(self, x):
        branch = F.channel_scale(self.block(x), self.layer_scale)
        if self.stochastic_depth.p > 0:
            branch = self.stochastic_depth(branch)
        return F.add(branch, x)


class ConvNeXt(nn.Module):
    def __init__(
        self,
        widths,
        depths,
        num_classes: int = 1000,
        in_channels: int = 3,
        stochastic_depth_prob: float = 0.0,
    ) -> None:
        super().__init__()
        stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 4, 4), nn.LayerNorm2d(widths[0], eps=1e-6)
        )
        layers, block_id, total = [stem], 0, sum(depths)
        for i, (dim, depth) in enumerate(zip(widths, depths, strict=True)):
            blocks = []
            for _ in range(depth):  # torchvision: the drop probability grows linearly to p
                blocks.append(CNBlock(dim, stochastic_depth_prob * block_id / (total - 1.0)))
                block_id += 1
            layers.append(nn.Sequential(*blocks))
            if i + 1 < len(widths):
                layers.append(
                    nn.Sequential(
                        nn.LayerNorm2d(dim, eps=1e-6), nn.Conv2d(dim, widths[i + 1], 2, 2)
                    )
                )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.LayerNorm2d(widths[-1], eps=1e-6), nn.Flatten(1), nn.Linear(widths[-1], num_classes)
        )
        self._init_weights()

    def _init_weights(self) -> None:
        """torchvision: truncated normal (std 0.02) for conv and linear weights, zero biases."""
        for _, module in self.named_modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    module.bias.data[...] = 0.0

    def forward(self, x):
        # the classifier's LayerNorm2d runs on the pooled [N, C, 1, 1] map, then flattens
        return self.classifier(self.avgpool(self.features(x)))


def _factory(widths, depths, default_depth_prob):
    def build(
        num_classes: int = 1000,
        in_channels: int = 3,
        stochastic_depth_prob: float = default_depth_prob,
    ) -> ConvNeXt:
        return ConvNeXt(widths, depths, num_classes, in_channels, stochastic_depth_prob)

    return build


for _name, (_widths, _depths, _depth_prob) in _STAGES.items():
    register(_name, (3, 224, 224), 1000, torchvision=_name)(_factory(_widths, _depths, _depth_prob))
