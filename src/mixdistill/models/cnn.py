"""Small plain CNNs for 28x28 grayscale images: ``cnn5_w8``, ``cnn5_w16``, ``cnn5_w32``.

Our own design (no external source), sized so that KD studies run on a 2-core
CPU.  Five Conv3x3-BN-ReLU blocks of widths w, 2w, 4w, 4w, 8w in four stages,
with a 2x2 max-pool after each of the first three stages
(28 -> 14 -> 7 -> 3; 32 -> 16 -> 8 -> 4), global average pool, linear.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class CNN5(ZooModel):
    def __init__(self, width: int = 16, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.feature_dim = 8 * w
        self.conv1 = _conv_bn_relu(in_channels, w)
        self.conv2 = _conv_bn_relu(w, 2 * w)
        self.conv3 = _conv_bn_relu(2 * w, 4 * w)
        self.conv4 = _conv_bn_relu(4 * w, 4 * w)
        self.conv5 = _conv_bn_relu(4 * w, 8 * w)
        self.fc = nn.Linear(8 * w, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _body(self, x, maps):
        x = self.conv1(x)
        record(maps, x)
        x = self.conv2(F.max_pool2d(x, 2))
        record(maps, x)
        x = self.conv4(self.conv3(F.max_pool2d(x, 2)))
        record(maps, x)
        x = self.conv5(F.max_pool2d(x, 2))
        record(maps, x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def cnn5_w8(num_classes=100, in_channels=3):
    return CNN5(8, num_classes, in_channels)


def cnn5_w16(num_classes=100, in_channels=3):
    return CNN5(16, num_classes, in_channels)


def cnn5_w32(num_classes=100, in_channels=3):
    return CNN5(32, num_classes, in_channels)
