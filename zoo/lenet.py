"""LeNet-5, the common modern variant (LeCun et al. 1998, with full C3 connections, ReLU and
max pooling): conv 6@5x5 (padded so 28x28 MNIST-size inputs keep the 32x32 geometry), pool,
conv 16@5x5, pool, FC 120, FC 84, FC classes. 61,706 parameters with 10 classes.
"""

from __future__ import annotations

import graph.functional as F
from graph import nn
from zoo import register


class LeNet5(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(F.flatten(self.features(x), 1))


@register("lenet5", (1, 28, 28), 10, departs="not in torchvision (LeNet-5, modern variant)")
def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    return LeNet5(num_classes, in_channels)
