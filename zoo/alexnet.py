"""AlexNet (Krizhevsky et al. 2012) and ZFNet (Zeiler & Fergus 2013), in torchvision's layout.

- ``alexnet``: torchvision's single-tower variant ("One weird trick", Krizhevsky 2014): 64/192/
  384/256/256 filters, no local response normalisation, 61,100,840 parameters.
- ``zfnet``: the network of "Visualizing and Understanding Convolutional Networks" (Figure 3):
  a 7x7 stride-2 first layer with 96 filters and 3x3 stride-2 pooling, then a 5x5 stride-2 conv
  with 256 filters, 384/384/256 3x3 convs and FC 4096-4096-classes. Padding 1 on conv1 and
  ceil-mode pooling reproduce the figure's map sizes on 224x224 inputs (110, 55, 26, 13, 13, 6).
  Its contrast normalisation is left out, as torchvision leaves out AlexNet's LRN (see below).

As published (``lrn=True``), with the local response normalisation (LRN(5, alpha=1e-4,
beta=0.75, k=1), PyTorch's and Caffe's formula) that torchvision dropped:

- ``alexnet(lrn=True)``: the network of the paper (Krizhevsky et al. 2012, Figure 2) as BVLC's
  Caffe reference model ``bvlc_alexnet`` has it and the ONNX model zoo exported it: 96/256/384/
  384/256 filters, conv1 without padding (227x227 inputs give the paper's 55, 27, 13, 6),
  conv2, conv4 and conv5 in two groups (the paper's two GPUs), LRN after the ReLUs of conv1
  and conv2, each before its max-pool; 60,965,224 parameters.
- ``zfnet(lrn=True)``: ZFNet's figure with its contrast normalisation, an LRN after each of
  the first two max-pools; the parameters are those of ``zfnet()`` (62,357,608).

Both end in torchvision's ``AdaptiveAvgPool2d((6, 6))``: the identity at 224x224, and what lets
smaller inputs reach the 256*6*6 classifier. State-dict keys are torchvision's
(``features.0.weight``, ``classifier.1.weight``); weights start from torch.nn's defaults, as
torchvision's AlexNet does.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register
from zoo.blurpool import BlurPool2d


class AlexNet(nn.Module):
    """torchvision's AlexNet: ``features``, ``avgpool``, ``classifier`` (with dropout)."""

    def __init__(
        self,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.5,
        blur: int = 0,
        lrn: bool = False,
    ):
        super().__init__()
        if blur and lrn:
            raise ValueError(f"{type(self).__name__}: blur and lrn are separate variants")
        if blur:
            self.features = self._make_blurred_features(in_channels, blur)
        elif lrn:
            self.features = self._make_published_features(in_channels)
        else:
            self.features = self._make_features(in_channels)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(256 * 6 * 6, 4096),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(inplace=True),
            nn.Linear(4096, num_classes),
        )

    @staticmethod
    def _make_features(in_channels: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=4, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )

    @staticmethod
    def _make_published_features(in_channels: int) -> nn.Sequential:
        """bvlc_alexnet's conv1 ... pool5 (module docstring)."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 96, 11, stride=4), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, 1e-4, 0.75), nn.MaxPool2d(3, 2),
            nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(inplace=True),
            nn.LocalResponseNorm(5, 1e-4, 0.75), nn.MaxPool2d(3, 2),
            nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2),
        )  # fmt: skip

    @staticmethod
    def _make_blurred_features(in_channels: int, blur: int) -> nn.Sequential:
        """Anti-aliased AlexNet (Zhang 2019, as antialiased-cnns builds it): the stride-4 conv
        becomes stride 2 + ReLU + BlurPool(2), each max-pool becomes max-pool(stride 1) +
        BlurPool(2)."""
        return nn.Sequential(
            nn.Conv2d(in_channels, 64, 11, stride=2, padding=2), nn.ReLU(inplace=True),
            BlurPool2d(64, blur, 2), nn.MaxPool2d(3, 1), BlurPool2d(64, blur, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 1), BlurPool2d(192, blur, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 1), BlurPool2d(256, blur, 2),
        )  # fmt: skip

    def forward(self, x):
        return self.classifier(F.flatten(self.avgpool(self.features(x)), 1))


def zf_conv_layers(in_channels: int) -> list[nn.Module]:
    """ZFNet's five conv layers with their ReLUs and the two pools between them, up to conv5's
    ReLU (13x13 on 224x224 inputs): the "ZF-5" backbone that SPP-net also builds on."""
    return [
        nn.Conv2d(in_channels, 96, 7, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(96, 256, 5, stride=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
    ]


class ZFNet(AlexNet):
    """AlexNet's head on ZFNet's smaller-stride first layers; same module indices as AlexNet."""

    @staticmethod
    def _make_features(in_channels: int) -> nn.Sequential:
        return nn.Sequential(*zf_conv_layers(in_channels), nn.MaxPool2d(3, 2, ceil_mode=True))

    @staticmethod
    def _make_published_features(in_channels: int) -> nn.Sequential:
        """Figure 3's contrast normalisation: an LRN after the first two max-pools."""
        layers = zf_conv_layers(in_channels)
        for after in (5, 2):  # the pools' indices, the later first so the earlier stays put
            layers.insert(after + 1, nn.LocalResponseNorm(5, 1e-4, 0.75))
        return nn.Sequential(*layers, nn.MaxPool2d(3, 2, ceil_mode=True))


@register("alexnet", (3, 224, 224), 1000, torchvision="alexnet")
def alexnet(
    num_classes: int = 1000, in_channels: int = 3, blur: int = 0, lrn: bool = False
) -> AlexNet:
    """torchvision's AlexNet; ``lrn=True``: as published (bvlc_alexnet, module docstring)."""
    return AlexNet(num_classes, in_channels, blur=blur, lrn=lrn)


@register("zfnet", (3, 224, 224), 1000, departs="not in torchvision (Zeiler & Fergus 2013)")
def zfnet(num_classes: int = 1000, in_channels: int = 3, lrn: bool = False) -> ZFNet:
    """ZFNet; ``lrn=True``: with the paper's contrast normalisation (module docstring)."""
    return ZFNet(num_classes, in_channels, lrn=lrn)
