"""ImageNet-style ResNets adapted to CIFAR: ``ResNet50`` and ``resnet18_cifar``.

``ResNet50`` follows RepDistiller ``models/resnetv2.py`` (HobbitLong/RepDistiller,
after kuangliu/pytorch-cifar): 3x3 stride-1 stem, no max-pool, four stages of
bottlenecks (64-128-256-512, expansion 4), adaptive average pool, ``linear``.
``resnet18_cifar`` is the same family with basic blocks [2, 2, 2, 2]; it matches
das2020 (deepandas11/Distilling-with-VRM ``models/resnet_model.py`` ResNet18),
whose modules and state_dict keys are the same.  Differences: ``in_channels``
sets the stem's input channels; the ``is_last``/preact plumbing is omitted.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record


def _shortcut(cin: int, cout: int, stride: int) -> nn.Sequential:
    if stride == 1 and cin == cout:
        return nn.Sequential()
    return nn.Sequential(nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNetV2(ZooModel):
    def __init__(self, block, num_blocks, num_classes: int = 100, in_channels: int = 3, kaiming_init: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = 512 * block.expansion
        self.in_planes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], 1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], 2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], 2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        if kaiming_init:  # RepDistiller's init; das2020 keeps PyTorch defaults
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def _make_layer(self, block, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for i in range(n):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def _body(self, x, maps):
        x = F.relu(self.bn1(self.conv1(x)))
        record(maps, x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            record(maps, x)
        return self.avgpool(x).flatten(1)


def ResNet50(num_classes=100, in_channels=3):
    return ResNetV2(Bottleneck, [3, 4, 6, 3], num_classes, in_channels)


def resnet18_cifar(num_classes=100, in_channels=3):
    return ResNetV2(BasicBlock, [2, 2, 2, 2], num_classes, in_channels, kaiming_init=False)
