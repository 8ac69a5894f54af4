"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4).

Follows RepDistiller ``models/resnet.py`` (HobbitLong/RepDistiller, itself after
W. Yang's pytorch-classification port): same modules and state_dict keys
(conv1, bn1, layer{1,2,3}.i.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc).
Differences: adaptive average pooling instead of ``AvgPool2d(8)`` (works at any
input size); ``in_channels`` sets the stem's input channels; the unused
Bottleneck variant and the ``is_last``/preact plumbing are omitted.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut)


class CifarResNet(ZooModel):
    def __init__(self, depth: int, widths, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.num_classes = num_classes
        self.feature_dim = widths[3]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [BasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _body(self, x, maps):
        x = self.relu(self.bn1(self.conv1(x)))
        record(maps, x)
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            record(maps, x)
        return self.avgpool(x).flatten(1)


_THIN = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)


def resnet8(num_classes=100, in_channels=3):
    return CifarResNet(8, _THIN, num_classes, in_channels)


def resnet14(num_classes=100, in_channels=3):
    return CifarResNet(14, _THIN, num_classes, in_channels)


def resnet20(num_classes=100, in_channels=3):
    return CifarResNet(20, _THIN, num_classes, in_channels)


def resnet32(num_classes=100, in_channels=3):
    return CifarResNet(32, _THIN, num_classes, in_channels)


def resnet44(num_classes=100, in_channels=3):
    return CifarResNet(44, _THIN, num_classes, in_channels)


def resnet56(num_classes=100, in_channels=3):
    return CifarResNet(56, _THIN, num_classes, in_channels)


def resnet110(num_classes=100, in_channels=3):
    return CifarResNet(110, _THIN, num_classes, in_channels)


def resnet8x4(num_classes=100, in_channels=3):
    return CifarResNet(8, _WIDE, num_classes, in_channels)


def resnet32x4(num_classes=100, in_channels=3):
    return CifarResNet(32, _WIDE, num_classes, in_channels)
