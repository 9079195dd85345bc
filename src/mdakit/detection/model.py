"""A compact anchor-free single-stage detector of the FCOS/YOLO kind, and what its output map means.

The body maps an image to one dense map ``B × (4 + K) × H/s × W/s`` (stride ``s``, 4 here): at each
location, channels 0–3 are the log-distances from the location's centre to the left, top, right and
bottom sides of its box, in units of the stride, and channels ``4 + k`` the logit that an object of class
``k`` is centred there. One map, one final convolution: the channel graph sees a detector as it sees a
classifier whose logits are spatial, so attribution, masks and surgery apply unchanged, and a part keeps
the four box rows and the rows of its classes.

The backbone has three stages (strides 2, 4, 8); a feature-pyramid merge adds the stride-8 features,
upsampled, to the stride-4 ones (so their channels are coupled), and a two-convolution tower predicts
the map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BOX_CHANNELS = 4
"""The map's first channels: the box side distances (left, top, right, bottom)."""


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution, BatchNorm, ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class AnchorFreeDetector(nn.Module):
    """Backbone (strides 2, 4, 8), a top-down merge to stride 4 and a prediction tower.

    >>> net = AnchorFreeDetector(1, 3)
    >>> net(torch.zeros(2, 1, 64, 64)).shape
    torch.Size([2, 7, 16, 16])
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        w = width
        self.stem = conv_bn(in_channels, w // 2)
        self.stage2 = nn.Sequential(conv_bn(w // 2, w, 2), conv_bn(w, w))
        self.stage4 = nn.Sequential(conv_bn(w, 2 * w, 2), conv_bn(2 * w, 2 * w))
        self.stage8 = nn.Sequential(conv_bn(2 * w, 4 * w, 2), conv_bn(4 * w, 4 * w))
        self.lateral4 = nn.Conv2d(2 * w, 2 * w, 1)
        self.lateral8 = nn.Conv2d(4 * w, 2 * w, 1)
        self.tower = nn.Sequential(conv_bn(2 * w, 2 * w), conv_bn(2 * w, 2 * w))
        self.predict = nn.Conv2d(2 * w, BOX_CHANNELS + num_classes, 1)
        prior = 0.01  # the classification logits start at a low object probability (as in RetinaNet and FCOS)
        nn.init.constant_(self.predict.bias[BOX_CHANNELS:], -float(torch.log(torch.tensor((1 - prior) / prior))))
        nn.init.constant_(self.predict.bias[:BOX_CHANNELS], 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c4 = self.stage4(self.stage2(self.stem(x)))
        c8 = self.stage8(c4)
        merged = self.lateral4(c4) + F.interpolate(self.lateral8(c8), scale_factor=2.0, mode="nearest")
        return self.predict(self.tower(merged))
