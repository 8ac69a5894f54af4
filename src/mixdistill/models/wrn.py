"""Wide ResNets (wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2).

Follows RepDistiller ``models/wrn.py`` (HobbitLong/RepDistiller, after W. Yang;
Zagoruyko & Komodakis, "Wide Residual Networks"): pre-activation blocks with the
same modules and state_dict keys (conv1, block{1,2,3}.layer.i.{bn1,conv1,bn2,
conv2,convShortcut}, bn1, fc).  Differences: adaptive average pooling instead
of ``avg_pool2d(8)``; ``in_channels`` sets the stem's input channels; dropout
(0 in every benchmark model) is not offered.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x):
        act = F.relu(self.bn1(x))
        # When the width changes, the shortcut also sees the pre-activated input.
        shortcut = x if self.convShortcut is None else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    def __init__(self, nb_layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(
            *[BasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1) for i in range(nb_layers)]
        )

    def forward(self, x):
        return self.layer(x)


class WideResNet(ZooModel):
    def __init__(self, depth: int, widen_factor: int, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.feature_dim = ch[3]
        self.conv1 = nn.Conv2d(in_channels, ch[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = NetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = NetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(ch[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _body(self, x, maps):
        x = self.conv1(x)
        record(maps, x)
        for block in (self.block1, self.block2, self.block3):
            x = block(x)
            record(maps, x)
        x = self.relu(self.bn1(x))
        return self.avgpool(x).flatten(1)


def wrn_16_1(num_classes=100, in_channels=3):
    return WideResNet(16, 1, num_classes, in_channels)


def wrn_16_2(num_classes=100, in_channels=3):
    return WideResNet(16, 2, num_classes, in_channels)


def wrn_40_1(num_classes=100, in_channels=3):
    return WideResNet(40, 1, num_classes, in_channels)


def wrn_40_2(num_classes=100, in_channels=3):
    return WideResNet(40, 2, num_classes, in_channels)
