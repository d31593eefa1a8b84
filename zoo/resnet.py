"""ResNets (He et al. 2016) in torchvision's layout and parameter names, and the CIFAR forms.

- ``resnet18/34/50/101/152``, ``resnext50_32x4d`` (Xie et al. 2017: 32 groups of width 4) and
  ``wide_resnet50_2`` (Zagoruyko & Komodakis 2016: bottleneck width x2), as torchvision builds
  them: 7x7/2 stem, 3x3/2 max-pool, four stages, global average pooling, one linear layer.
- ``resnet18_cifar``: ResNet-18's stages on 32x32 inputs with a 3x3 stride-1 stem and no
  max-pool (the usual CIFAR-10 adaptation).
- ``resnet20/32/56/110_cifar``: the CIFAR networks of the paper's section 4.2 (3 stages of
  16/32/64 channels, 6n+2 layers). Shortcuts that change shape are 1x1 conv + BN projections
  (the paper's option B), so counts differ slightly from option A's zero-padding figures.
- ``resnet20/56_plain_cifar``: the same stacks without any shortcut (the paper's "plain"
  networks of its degradation experiment, and Li et al. 2018's loss landscapes without skip
  connections): each block is conv-BN-ReLU-conv-BN-ReLU, and no projection exists.
Weights start as torchvision's: Kaiming-normal (fan_out) convs, BN weight 1 and bias 0.
``blur=k`` builds the anti-aliased variant (``zoo/blurpool.py``, as antialiased-cnns lays it
out): the stem's max-pool runs at stride 1 then blur-pools, each strided block conv runs at
stride 1 and blur-pools after its ReLU, and shortcut projections blur-pool before the 1x1 conv
(the CIFAR forms, which have no max-pool, take ``blur`` too).
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register
from zoo.blurpool import BlurPool2d, antialiased_max_pool


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample=None,
        groups: int = 1,
        base_width: int = 64,
        blur: int = 0,
        plain: bool = False,
    ) -> None:
        super().__init__()
        conv_stride = 1 if blur and stride > 1 else stride
        self.plain = plain
        self.conv1 = nn.Conv2d(inplanes, planes, 3, conv_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.blurpool = BlurPool2d(planes, blur, stride) if conv_stride != stride else None
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.blurpool(out) if self.blurpool is not None else out
        if self.plain:  # no shortcut: the block is two stacked conv layers
            return self.relu(self.bn2(self.conv2(out)))
        return self.relu(F.add(self.bn2(self.conv2(out)), identity))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample=None,
        groups: int = 1,
        base_width: int = 64,
        blur: int = 0,
    ) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        conv_stride = 1 if blur and stride > 1 else stride
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, conv_stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.blurpool = BlurPool2d(width, blur, stride) if conv_stride != stride else None
        self.conv3 = nn.Conv2d(width, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = self.downsample(x) if self.downsample is not None else x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.blurpool(out) if self.blurpool is not None else out
        return self.relu(F.add(self.bn3(self.conv3(out)), identity))


class ResNet(nn.Module):
    """torchvision's ResNet; ``cifar_stem`` swaps the 7x7/2 stem and max-pool for a 3x3/1
    conv, ``widths`` sets the stages' channels (64, 128, 256, 512 for ImageNet), ``blur`` the
    anti-aliasing filter size (0: none), ``plain`` drops every shortcut (BasicBlock only)."""

    def __init__(
        self,
        block,
        layers,
        num_classes: int = 1000,
        groups: int = 1,
        width_per_group: int = 64,
        cifar_stem: bool = False,
        widths=(64, 128, 256, 512),
        in_channels: int = 3,
        blur: int = 0,
        plain: bool = False,
    ) -> None:
        super().__init__()
        if plain and block is not BasicBlock:
            raise ValueError(f"plain=True builds BasicBlock stacks only, but got {block.__name__}")
        self.inplanes, self.groups, self.base_width = widths[0], groups, width_per_group
        self.blur, self.plain = blur, plain
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        if cifar_stem:
            self.maxpool = nn.Identity()
        elif blur:
            self.maxpool = antialiased_max_pool(widths[0], 3, 2, 1, blur)
        else:
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (planes, blocks) in enumerate(zip(widths, layers, strict=True)):
            stride = 1 if i == 0 else 2
            setattr(self, f"layer{i + 1}", self._make_layer(block, planes, blocks, stride))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[len(layers) - 1] * block.expansion, num_classes)
        for _, module in self.named_modules():
            if isinstance(module, nn.Conv2d):
                nn.kaiming_normal_(module.weight, mode="fan_out")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample, out = None, planes * block.expansion
        options = (self.groups, self.base_width, self.blur)
        if self.plain:  # no shortcut, so nothing to project
            layers = [block(self.inplanes, planes, stride, None, *options, plain=True)]
            layers += [block(out, planes, 1, None, *options, plain=True) for _ in range(1, blocks)]
            self.inplanes = out
            return nn.Sequential(*layers)
        if self.blur and stride != 1:
            downsample = nn.Sequential(
                BlurPool2d(self.inplanes, self.blur, stride),
                nn.Conv2d(self.inplanes, out, 1, bias=False),
                nn.BatchNorm2d(out),
            )
        elif stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [block(self.inplanes, planes, stride, downsample, *options)]
        self.inplanes = out
        layers += [block(self.inplanes, planes, 1, None, *options) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, 5):
            layer = getattr(self, f"layer{i}", None)
            if layer is not None:
                x = layer(x)
        return self.fc(F.flatten(self.avgpool(x), 1))


_IMAGENET = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], {}),
    "resnet34": (BasicBlock, [3, 4, 6, 3], {}),
    "resnet50": (Bottleneck, [3, 4, 6, 3], {}),
    "resnet101": (Bottleneck, [3, 4, 23, 3], {}),
    "resnet152": (Bottleneck, [3, 8, 36, 3], {}),
    "resnext50_32x4d": (Bottleneck, [3, 4, 6, 3], {"groups": 32, "width_per_group": 4}),
    "wide_resnet50_2": (Bottleneck, [3, 4, 6, 3], {"width_per_group": 128}),
}


def _imagenet_factory(block, layers, options):
    def build(num_classes: int = 1000, in_channels: int = 3, blur: int = 0) -> ResNet:
        return ResNet(block, layers, num_classes, in_channels=in_channels, blur=blur, **options)

    return build


for _name, (_block, _layers, _options) in _IMAGENET.items():
    register(_name, (3, 224, 224), 1000, torchvision=_name)(
        _imagenet_factory(_block, _layers, _options)
    )


@register(
    "resnet18_cifar",
    (3, 32, 32),
    10,
    torchvision="resnet18",
    departs="CIFAR form: 3x3 stride-1 stem, no max-pool, 10 classes",
)
def resnet18_cifar(num_classes: int = 10, in_channels: int = 3) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, cifar_stem=True, in_channels=in_channels)


def _cifar_factory(depth: int, plain: bool = False):
    def build(num_classes: int = 10, in_channels: int = 3, blur: int = 0) -> ResNet:
        n = (depth - 2) // 6
        return ResNet(
            BasicBlock,
            [n, n, n],
            num_classes,
            cifar_stem=True,
            widths=(16, 32, 64),
            in_channels=in_channels,
            blur=blur,
            plain=plain,
        )

    return build


for _depth in (20, 32, 56, 110):
    register(
        f"resnet{_depth}_cifar",
        (3, 32, 32),
        10,
        departs="not in torchvision (He et al. 2016's CIFAR ResNets)",
    )(_cifar_factory(_depth))

for _depth in (20, 56):
    register(
        f"resnet{_depth}_plain_cifar",
        (3, 32, 32),
        10,
        departs="not in torchvision (He et al. 2016's plain CIFAR networks: no shortcuts)",
    )(_cifar_factory(_depth, plain=True))
