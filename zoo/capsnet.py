"""CapsNet (Sabour, Frosst & Hinton 2017) for 28x28 digits.

- conv1: 256 9x9 convs + ReLU (20x20 maps).
- primary capsules: 32 channels of 8-D capsules from a 9x9 stride-2 conv (6x6 grid): the conv's
  256 output channels read as [32, 8, 36], transposed so each capsule's 8 values are
  contiguous, then squashed: 1,152 capsules.
- digit capsules: ``W`` [1152, 10, 16, 8] turns each primary capsule into a 16-D prediction
  for each class; 3 iterations of routing by agreement give the 10 output capsules.
- output: capsule lengths [N, 10], trained with the margin loss
  (``engine.compile(..., loss="margin")``).
- ``reconstruction=True`` adds the decoder's parameters (FC 160-512-1024-784) as in the paper
  (8,215,568 parameters in all; 6,804,224 without). The decoder regularises training by
  reconstructing the image from the target capsule; training it needs a second loss term on a
  second output, which the single-output training graph does not support yet, so its layers
  are built (for parameter counts and weight transfer) but not run in ``forward``.
"""

from __future__ import annotations

import numpy as np

import graph.functional as F
from graph import nn
from zoo import register


class CapsNet(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        routing_iterations: int = 3,
        reconstruction: bool = False,
    ) -> None:
        super().__init__()
        self.routing_iterations = routing_iterations
        self.conv1 = nn.Conv2d(in_channels, 256, 9)
        self.primary_capsules = nn.Conv2d(256, 32 * 8, 9, stride=2)
        # a small init keeps the squashed predictions off the squash's flat region
        self.digit_weight = nn.Parameter(np.zeros((1152, num_classes, 16, 8), np.float32))
        nn.trunc_normal_(self.digit_weight, std=0.01)
        if reconstruction:
            self.decoder = nn.Sequential(
                nn.Linear(16 * num_classes, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                nn.Linear(1024, 784), nn.Sigmoid(),
            )  # fmt: skip

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.primary_capsules(x)  # [N, 256, 6, 6]
        n, _, h, w = x.shape
        u = F.transpose(F.reshape(x, (n, 32, 8, h * w)), 2, 3)  # [N, 32, 36, 8]
        u = F.squash(F.reshape(u, (n, 32 * h * w, 8)), dim=2)
        predictions = F.capsule_predict(u, self.digit_weight)
        return F.capsule_length(F.capsule_routing(predictions, self.routing_iterations))


@register("capsnet", (1, 28, 28), 10, departs="not in torchvision (Sabour et al. 2017)")
def capsnet(
    num_classes: int = 10,
    in_channels: int = 1,
    routing_iterations: int = 3,
    reconstruction: bool = False,
) -> CapsNet:
    return CapsNet(num_classes, in_channels, routing_iterations, reconstruction)
