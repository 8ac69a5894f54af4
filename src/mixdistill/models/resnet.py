"""CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4; okd_resnet110 and wrn_20_8).

Follows RepDistiller ``models/resnet.py`` (HobbitLong/RepDistiller, itself after
W. Yang's pytorch-classification port): same modules and state_dict keys
(conv1, bn1, layer{1,2,3}.i.{conv1,bn1,conv2,bn2,downsample.{0,1}}, fc).
Differences: adaptive average pooling instead of ``AvgPool2d(8)`` (works at any
input size); ``in_channels`` sets the stem's input channels; the ``is_last``/preact
plumbing is a method of the block (``preact``).

The online-distillation benchmark (ONE, OKDDip, PCL: the PCL table of reference-results.md) has two nets of its
own, from OKDDip's released ``models/model_cifar/resnet.py``: the same stem and 16/32/64-plane stages with
torchvision's Bottleneck block (1x1, 3x3 carrying the stride, 1x1 to 4x the planes; inner width planes x
``width_per_group`` / 64), ``resnet110`` = Bottleneck x [12, 12, 12] (named ``okd_resnet110`` here: RepDistiller's
``resnet110`` is BasicBlock x 18) and ``wide_resnet20_8`` = Bottleneck x [2, 2, 2] with ``width_per_group`` 512
(``wrn_20_8``; not a Zagoruyko WRN, whose depth is 6n + 4). Their state_dict keys are that file's
(``layer{1,2,3}.i.{conv1,bn1,conv2,bn2,conv3,bn3,downsample.{0,1}}``).
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

    def preact(self, x):
        """The block's output before its last ReLU (ReviewKD's teacher targets)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut

    def forward(self, x):
        return F.relu(self.preact(x))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (stride on the 3x3), as OKDDip's released CIFAR ResNet uses it."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 width_factor: int = 1):
        super().__init__()
        width = planes * width_factor
        self.conv1 = nn.Conv2d(inplanes, width, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = _conv3x3(width, width, stride)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def preact(self, x):
        """The block's output before its last ReLU (ReviewKD's teacher targets)."""
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut

    def forward(self, x):
        return F.relu(self.preact(x))


class CifarResNet(ZooModel):
    """``widths``: the stem's channels, then each stage's planes (a Bottleneck stage puts out 4x its planes)."""

    def __init__(self, depth: int, widths, num_classes: int = 100, in_channels: int = 3,
                 block: type[nn.Module] = BasicBlock, width_factor: int = 1):
        super().__init__()
        convs_per_block = 3 if block is Bottleneck else 2
        if (depth - 2) % (3 * convs_per_block) != 0:
            raise ValueError(f"CIFAR ResNet depth must be {3 * convs_per_block}n+2 with {block.__name__}, "
                             f"got {depth}")
        n = (depth - 2) // (3 * convs_per_block)
        self.block, self.width_factor = block, width_factor
        self.num_classes = num_classes
        self.feature_dim = widths[3] * block.expansion
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(widths[1], n, stride=1)
        self.layer2 = self._make_layer(widths[2], n, stride=2)
        self.layer3 = self._make_layer(widths[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.feature_dim, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * self.block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )
        extra = {} if self.block is BasicBlock else {"width_factor": self.width_factor}
        layers = [self.block(self.inplanes, planes, stride, downsample, **extra)]
        self.inplanes = out
        layers += [self.block(out, planes, **extra) for _ in range(1, blocks)]
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


def okd_resnet110(num_classes=100, in_channels=3):
    return CifarResNet(110, _THIN, num_classes, in_channels, block=Bottleneck)


def wrn_20_8(num_classes=100, in_channels=3):
    return CifarResNet(20, _THIN, num_classes, in_channels, block=Bottleneck, width_factor=8)
