"""Inception networks, v1 to v3, with batch norm after every convolution.

- ``googlenet``: Inception v1 (Szegedy et al. 2015, "Going deeper with convolutions", Table 1)
  as torchvision builds it: every conv is a ``BasicConv2d`` (bias-free conv, BN(eps=0.001),
  ReLU; the paper predates batch norm); max-pools round up (``ceil_mode``) as Caffe's did.
  torchvision's ``branch3`` uses a 3x3 conv where the paper has 5x5 (a known torchvision bug,
  kept so that parameter counts and checkpoints match): 13,004,888 parameters with the two
  auxiliary classifiers (the default, as torchvision's), 6,624,904 without.
  ``googlenet(lrn=True)`` builds it as published and as BVLC's Caffe model ``bvlc_googlenet``
  (the ONNX model zoo's GoogLeNet) has it: convs with biases and ReLU and no batch norm, an
  LRN(5, 1e-4, 0.75) after the first max-pool and after conv3, 5x5 convs in ``branch3``,
  dropout 0.4: 6,998,552 parameters without the auxiliary heads (whose convs carry
  biases too), 13,378,280 with them.
- ``inception_v2``: BN-Inception (Ioffe & Szegedy 2015, "Batch Normalization", section 4.2.1,
  with the filter counts of the appendix's Figure 5), built from the same ``BasicConv2d`` units:
  each 5x5 branch becomes two 3x3 convs, modules 3c and 4e reduce the grid with stride 2, and
  there is no dropout. 11,285,224 parameters (summed by hand in ``tests/zoo/test_inception.py``).
- ``inception_v3``: Szegedy et al. 2016, "Rethinking the Inception Architecture", in torchvision's
  layout (``Conv2d_1a_3x3`` ... ``Mixed_7c``, 1x7/7x1 and 1x3/3x1 factorised convs, BN eps
  0.001): 27,161,264 parameters with the ``AuxLogits`` head (the default, as torchvision's),
  23,834,568 without.

GoogLeNet's and v3's parameter names are torchvision's, so their ``state_dict`` keys are too;
BN-Inception, which torchvision lacks, reuses GoogLeNet's names. Inputs are used as given
(torchvision's ``transform_input=False``). Weights start from ``graph.nn``'s torch defaults, not
torchvision's truncated normals (``graph.nn`` has no ``trunc_normal_``; BN absorbs the scale).

Auxiliary classifiers: the papers add the auxiliary logits' losses (weight 0.3 in v1) during
training only; in eval mode torchvision returns the main logits alone. A traced ConvForge graph
has one output, so ``forward`` returns the main logits (``fc``); ``model.select_head("aux1")``
makes ``forward`` stop at that head's tap and return its logits instead, so an auxiliary
classifier compiles, runs and trains on its own with the same weights and names; training on
the weighted sum of all heads' losses needs a multi-output graph. ``aux_logits`` defaults to
True, as in torchvision's ``googlenet()`` and ``inception_v3()`` constructors, so the default
models have torchvision's parameter counts and state_dict keys. The heads are off the main
logits' path: a graph traced through ``fc`` carries their parameters (state_dicts round-trip)
but computes nothing with them, and training it leaves their weights as they are (no gradient
reaches them). ``aux_logits=False`` builds the model without them, as torchvision returns its
pretrained GoogLeNet (whose auxiliary heads were never trained).
"""

from __future__ import annotations

from typing import Self

import graph.functional as F
from graph import nn
from graph.nn import Tensor
from zoo import register

# **** Shared pieces ****


class BasicConv2d(nn.Module):
    """Conv without bias (BN's shift makes one redundant: Ioffe & Szegedy 2015, section 3.2),
    BN with eps 0.001 (TensorFlow's default, which torchvision's ports kept), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, **conv_options) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, bias=False, **conv_options)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


class ConvReLU(nn.Module):
    """Conv with bias, then ReLU: the unit of the published GoogLeNet (before batch norm)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, **conv_options) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, **conv_options)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x))


class _AuxiliaryHeads(nn.Module):
    """A network whose ``forward`` returns the logits of ``self.head``: ``"fc"`` (the main
    classifier) or one of ``aux_heads`` when it was built with ``aux_logits=True``."""

    aux_heads: tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.head = "fc"

    def select_head(self, head: str) -> Self:
        """Make ``forward`` return ``head``'s logits (stopping at its tap); returns the model."""
        built = ("fc",) + tuple(name for name in self.aux_heads if getattr(self, name) is not None)
        if head not in built:
            raise ValueError(
                f"{type(self).__name__} head must be one of {built}, but got head={head!r}"
                + (" (build it with aux_logits=True)" if head in self.aux_heads else "")
            )
        self.head = head
        return self


# **** GoogLeNet (Inception v1) ****


class Inception(nn.Module):
    """GoogLeNet's module: 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" (3x3, as torchvision, unless
    ``kernel5x5=5``) | 3x3 max-pool -> 1x1, concatenated along channels; every conv a
    ``unit`` (BasicConv2d, or ConvReLU as published)."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        ch5x5red: int,
        ch5x5: int,
        pool_proj: int,
        unit: type[nn.Module] = BasicConv2d,
        kernel5x5: int = 3,
    ) -> None:
        super().__init__()
        self.branch1 = unit(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(
            unit(in_channels, ch3x3red, 1), unit(ch3x3red, ch3x3, 3, padding=1)
        )
        self.branch3 = nn.Sequential(
            unit(in_channels, ch5x5red, 1),
            unit(ch5x5red, ch5x5, kernel5x5, padding=kernel5x5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, 1, 1, ceil_mode=True), unit(in_channels, pool_proj, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return F.cat(branches, 1)


class InceptionAux(nn.Module):
    """GoogLeNet's auxiliary classifier as torchvision: 4x4 adaptive average pool (in place of
    the paper's 5x5/3 pool), 1x1 conv 128, fc 2048 -> 1024, ReLU, dropout 0.7, fc -> classes."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.7,
        unit: type[nn.Module] = BasicConv2d,
    ) -> None:
        super().__init__()
        self.conv = unit(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = F.flatten(self.conv(F.adaptive_avg_pool2d(x, (4, 4))), 1)
        return self.fc2(self.dropout(F.relu(self.fc1(x))))


class GoogLeNet(_AuxiliaryHeads):
    """torchvision's GoogLeNet; the auxiliary heads tap inception4a (``aux1``) and inception4d
    (``aux2``). Inputs far below the paper's 3x224x224 trace (e.g. 3x64x64): the max-pools round
    up and the pools before the classifiers adapt. ``lrn=True``: as published (module
    docstring); ``lrn1`` and ``lrn2`` are the two LRN layers."""

    aux_heads = ("aux1", "aux2")

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        in_channels: int = 3,
        lrn: bool = False,
    ) -> None:
        super().__init__()
        unit = ConvReLU if lrn else BasicConv2d
        options = dict(unit=unit, kernel5x5=5 if lrn else 3)
        self.conv1 = unit(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.lrn1 = nn.LocalResponseNorm(5, 1e-4, 0.75) if lrn else None
        self.conv2 = unit(64, 64, 1)
        self.conv3 = unit(64, 192, 3, padding=1)
        self.lrn2 = nn.LocalResponseNorm(5, 1e-4, 0.75) if lrn else None
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception3a = Inception(192, 64, 96, 128, 16, 32, 32, **options)
        self.inception3b = Inception(256, 128, 128, 192, 32, 96, 64, **options)
        self.maxpool3 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.inception4a = Inception(480, 192, 96, 208, 16, 48, 64, **options)
        self.inception4b = Inception(512, 160, 112, 224, 24, 64, 64, **options)
        self.inception4c = Inception(512, 128, 128, 256, 24, 64, 64, **options)
        self.inception4d = Inception(512, 112, 144, 288, 32, 64, 64, **options)
        self.inception4e = Inception(528, 256, 160, 320, 32, 128, 128, **options)
        self.maxpool4 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.inception5a = Inception(832, 256, 160, 320, 32, 128, 128, **options)
        self.inception5b = Inception(832, 384, 192, 384, 48, 128, 128, **options)
        self.aux1 = InceptionAux(512, num_classes, dropout_aux, unit) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, dropout_aux, unit) if aux_logits else None
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.lrn1(x) if self.lrn1 is not None else x
        x = self.conv3(self.conv2(x))
        x = self.maxpool2(self.lrn2(x) if self.lrn2 is not None else x)
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        if self.head == "aux1":
            return self.aux1(x)
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        if self.head == "aux2":
            return self.aux2(x)
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        return self.fc(self.dropout(F.flatten(self.avgpool(x), 1)))


@register("googlenet", (3, 224, 224), 1000, torchvision="googlenet")
def googlenet(
    num_classes: int = 1000, aux_logits: bool = True, in_channels: int = 3, lrn: bool = False
) -> GoogLeNet:
    """torchvision's GoogLeNet; ``lrn=True``: as published (bvlc_googlenet, module docstring)."""
    dropout = 0.4 if lrn else 0.2
    return GoogLeNet(num_classes, aux_logits, dropout, in_channels=in_channels, lrn=lrn)


# **** BN-Inception (Inception v2) ****

# Figure 5 of Ioffe & Szegedy 2015, one row per module: #1x1, #3x3 reduce, #3x3, double #3x3
# reduce, double #3x3, pool, pool projection (0: the pooled input passes through), stride.
# Modules 3c and 4e stride 2 and have no 1x1 branch. The figure's output depths for 4c and 4d
# (576) and 4e (1024) disagree with its own filter counts (608, 608, 1056); we follow the
# counts, as the Caffe release that pretrained BN-Inception weights come from does.
_BN_INCEPTION = {
    "inception3a": (64, 64, 64, 64, 96, "avg", 32, 1),
    "inception3b": (64, 64, 96, 64, 96, "avg", 64, 1),
    "inception3c": (0, 128, 160, 64, 96, "max", 0, 2),
    "inception4a": (224, 64, 96, 96, 128, "avg", 128, 1),
    "inception4b": (192, 96, 128, 96, 128, "avg", 128, 1),
    "inception4c": (160, 128, 160, 128, 160, "avg", 128, 1),
    "inception4d": (96, 128, 192, 160, 192, "avg", 128, 1),
    "inception4e": (0, 128, 192, 192, 256, "max", 0, 2),
    "inception5a": (352, 192, 320, 160, 224, "avg", 128, 1),
    "inception5b": (352, 192, 320, 192, 224, "max", 128, 1),
}


class InceptionBN(nn.Module):
    """A BN-Inception module: 1x1 | 1x1 -> 3x3 | 1x1 -> 3x3 -> 3x3 (the factorised 5x5) |
    3x3 avg- or max-pool -> 1x1 projection. A stride-2 module drops the 1x1 branch, strides
    its last convs and concatenates the 3x3/2 max-pooled input unprojected; its pool rounds up
    (Caffe's), so the map entering it must have even sides for the branches to line up."""

    def __init__(
        self,
        in_channels: int,
        ch1x1: int,
        ch3x3red: int,
        ch3x3: int,
        dbl3x3red: int,
        dbl3x3: int,
        pool: str,
        pool_proj: int,
        stride: int,
    ) -> None:
        super().__init__()
        self.out_channels = ch1x1 + ch3x3 + dbl3x3 + (pool_proj or in_channels)
        self.branch1 = BasicConv2d(in_channels, ch1x1, 1) if ch1x1 else None
        self.branch2 = nn.Sequential(
            BasicConv2d(in_channels, ch3x3red, 1),
            BasicConv2d(ch3x3red, ch3x3, 3, stride=stride, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(in_channels, dbl3x3red, 1),
            BasicConv2d(dbl3x3red, dbl3x3, 3, padding=1),
            BasicConv2d(dbl3x3, dbl3x3, 3, stride=stride, padding=1),
        )
        if stride == 2:
            pooling = nn.MaxPool2d(3, 2, ceil_mode=True)
        elif pool == "max":
            pooling = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
        else:
            pooling = nn.AvgPool2d(3, 1, 1)
        projection = [BasicConv2d(in_channels, pool_proj, 1)] if pool_proj else []
        self.branch4 = nn.Sequential(pooling, *projection)

    def forward(self, x: Tensor) -> Tensor:
        branches = [self.branch2(x), self.branch3(x), self.branch4(x)]
        if self.branch1 is not None:
            branches.insert(0, self.branch1(x))
        return F.cat(branches, 1)


class BNInception(nn.Module):
    """BN-Inception: 7x7/2 conv 64, 3x3/2 max-pool, 1x1 conv 64, 3x3 conv 192, 3x3/2 max-pool,
    the ten modules of ``_BN_INCEPTION``, global average pooling and one linear layer (the
    paper removes dropout, section 4.2.1). Sides that are multiples of 32 work (see
    ``InceptionBN``); 3x224x224 is the paper's. The Caffe release's convs also carry biases
    (10,016 more parameters) that the following BN makes redundant, and its names differ."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = BasicConv2d(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        channels = 192
        for name, row in _BN_INCEPTION.items():
            module = InceptionBN(channels, *row)
            setattr(self, name, module)
            channels = module.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        for name in _BN_INCEPTION:
            x = getattr(self, name)(x)
        return self.fc(F.flatten(self.avgpool(x), 1))


@register("inception_v2", (3, 224, 224), 1000, departs="not in torchvision (BN-Inception)")
def inception_v2(num_classes: int = 1000, in_channels: int = 3) -> BNInception:
    return BNInception(num_classes, in_channels)


# **** Inception v3 ****


class InceptionA(nn.Module):
    """35x35 module: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1. The paper's
    figure 5 has only the two-3x3 branch; torchvision (after Google's released model) keeps a
    5x5 branch beside it."""

    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return F.cat([self.branch1x1(x), branch5x5, branch3x3dbl, branch_pool], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 grid reduction (the paper's figure 10): strided convs beside a max-pool,
    so the grid shrinks without a representational bottleneck (section 7)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return F.cat([self.branch3x3(x), branch3x3dbl, F.max_pool2d(x, 3, 2)], 1)


class InceptionC(nn.Module):
    """17x17 module (the paper's figure 6): 7x7 convs factorised into 1x7 and 7x1 (section 3.2),
    ``channels_7x7`` wide inside the branches."""

    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for i in range(1, 6):
            branch7x7dbl = getattr(self, f"branch7x7dbl_{i}")(branch7x7dbl)
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return F.cat([self.branch1x1(x), branch7x7, branch7x7dbl, branch_pool], 1)


class InceptionD(nn.Module):
    """17x17 -> 8x8 grid reduction: strided 3x3 convs (one after a 1x7/7x1 pair) beside a
    max-pool."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = x
        for i in range(1, 5):
            branch7x7x3 = getattr(self, f"branch7x7x3_{i}")(branch7x7x3)
        return F.cat([branch3x3, branch7x7x3, F.max_pool2d(x, 3, 2)], 1)


class InceptionE(nn.Module):
    """8x8 module (the paper's figure 7): the 3x3 convs' outputs fan out into parallel 1x3
    and 3x1 convs, widening the filter bank for high-dimensional representations (section 2)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3 = F.cat([self.branch3x3_2a(branch3x3), self.branch3x3_2b(branch3x3)], 1)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        branch3x3dbl = F.cat(
            [self.branch3x3dbl_3a(branch3x3dbl), self.branch3x3dbl_3b(branch3x3dbl)], 1
        )
        branch_pool = self.branch_pool(F.avg_pool2d(x, 3, 1, 1))
        return F.cat([self.branch1x1(x), branch3x3, branch3x3dbl, branch_pool], 1)


class InceptionV3Aux(nn.Module):
    """Inception v3's auxiliary classifier on the 17x17 grid (section 4: with BN it acts as a
    regulariser): 5x5/3 avg-pool, 1x1 conv 128, 5x5 conv 768, global pool, fc. Its 5x5 conv
    needs a 17x17 grid, so it traces only from inputs of about 3x299x299 up."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_channels, 128, 1)
        self.conv1 = BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(self.conv0(F.avg_pool2d(x, 5, 3)))
        return self.fc(F.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1))


class Inception3(_AuxiliaryHeads):
    """torchvision's Inception3; the ``AuxLogits`` head taps Mixed_6e. The main path traces
    from 3x75x75 up; 3x299x299 is the paper's."""

    aux_heads = ("AuxLogits",)

    def __init__(
        self,
        num_classes: int = 1000,
        aux_logits: bool = True,
        dropout: float = 0.5,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(in_channels, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, 2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, 2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.AuxLogits = InceptionV3Aux(768, num_classes) if aux_logits else None
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(2048, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x))))
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        if self.head == "AuxLogits":
            return self.AuxLogits(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return self.fc(F.flatten(self.dropout(self.avgpool(x)), 1))


@register("inception_v3", (3, 299, 299), 1000, torchvision="inception_v3")
def inception_v3(
    num_classes: int = 1000, aux_logits: bool = True, in_channels: int = 3
) -> Inception3:
    return Inception3(num_classes, aux_logits, in_channels=in_channels)
