"""The two MNIST networks that the pruning and compression papers use (Han et al. 2015, "Learning
both Weights and Connections"; Han et al. 2016, "Deep Compression"), on 1x28x28:

- ``lenet_300_100``: LeCun et al. 1998's fully connected net, 784-300-100-10 with ReLU; 266,610
  parameters.
- ``lenet_caffe``: Caffe's "LeNet" example (``examples/mnist/lenet.prototxt``), the papers'
  LeNet-5: conv 20@5x5, 2x2 max-pool, conv 50@5x5, 2x2 max-pool, FC 500, ReLU, FC 10; no ReLU
  after the convs, as in the prototxt. 431,080 parameters.

Layout as ``zoo.lenet``: ``features`` (none for the MLP) and ``classifier``.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register


class LeNet300100(nn.Module):
    """An MLP on the flattened 28x28 image."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 28 * 28, 300),
            nn.ReLU(),
            nn.Linear(300, 100),
            nn.ReLU(),
            nn.Linear(100, num_classes),
        )

    def forward(self, x):
        return self.classifier(F.flatten(x, 1))


class LeNetCaffe(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 20, 5),
            nn.MaxPool2d(2),
            nn.Conv2d(20, 50, 5),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(50 * 4 * 4, 500),
            nn.ReLU(),
            nn.Linear(500, num_classes),
        )

    def forward(self, x):
        return self.classifier(F.flatten(self.features(x), 1))


@register("lenet_300_100", (1, 28, 28), 10, departs="not in torchvision (LeCun et al. 1998)")
def lenet_300_100(num_classes: int = 10, in_channels: int = 1) -> LeNet300100:
    return LeNet300100(num_classes, in_channels)


@register("lenet_caffe", (1, 28, 28), 10, departs="not in torchvision (Caffe's MNIST LeNet)")
def lenet_caffe(num_classes: int = 10, in_channels: int = 1) -> LeNetCaffe:
    return LeNetCaffe(num_classes, in_channels)
