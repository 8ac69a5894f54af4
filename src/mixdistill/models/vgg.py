"""VGG with batch norm for CIFAR (vgg8, vgg11, vgg13, vgg16, vgg19; okd_vgg16).

Follows RepDistiller ``models/vgg.py`` (HobbitLong/RepDistiller, after W. Yang):
five conv blocks ``block0..block4`` (Conv-BN-ReLU triples, the block's last ReLU
applied outside it), max-pools between blocks, global average pool, one linear
``classifier`` on 512 features; state_dict keys are identical.  As in that code
the fourth max-pool is only used for inputs of 64 pixels or more (RepDistiller:
exactly 64), so 32x32 (and 28x28) images reach block4 at 4x4 (3x3).  Other
difference: ``in_channels`` sets the first conv's input channels.

``okd_vgg16`` is the online-distillation benchmark's VGG-16 (OKDDip's released ``models/model_cifar/vgg.py``, whose
keys it keeps): conv1/bn1, conv2/bn2, a max-pool, then ``layer1..layer4`` (2, 3, 3, 3 Conv-BN-ReLU and a max-pool
each), and a three-layer ``classifier`` 512-512-512-classes with ReLUs and dropout (p = 0, the released default).
Its pooled features are the 512 values the classifier reads. Differences, none of which changes a 32x32 input's
floats: the max-pools round up (``ceil_mode``), so 28x28 inputs reach 1x1 too, and an adaptive average pool to
1x1 comes before the classifier (larger inputs).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record, repdistiller_init

_CFG = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _make_block(widths, cin: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for w in widths:
        layers += [nn.Conv2d(cin, w, kernel_size=3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
        cin = w
    return nn.Sequential(*layers[:-1])  # the block's final ReLU is applied in _body


class VGG(ZooModel):
    def __init__(self, cfg, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = cfg[4][-1]
        self.block0 = _make_block(cfg[0], in_channels)
        self.block1 = _make_block(cfg[1], cfg[0][-1])
        self.block2 = _make_block(cfg[2], cfg[1][-1])
        self.block3 = _make_block(cfg[3], cfg[2][-1])
        self.block4 = _make_block(cfg[4], cfg[3][-1])
        self.pool0 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(cfg[4][-1], num_classes)
        repdistiller_init(self)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def _body(self, x, maps):
        large = x.shape[2] >= 64
        x = F.relu(self.block0(x))
        record(maps, x)
        x = F.relu(self.block1(self.pool0(x)))
        record(maps, x)
        x = F.relu(self.block2(self.pool1(x)))
        record(maps, x)
        x = F.relu(self.block3(self.pool2(x)))
        record(maps, x)
        if large:
            x = self.pool3(x)
        x = F.relu(self.block4(x))
        record(maps, x)
        return self.pool4(x).flatten(1)


def vgg8(num_classes=100, in_channels=3):
    return VGG(_CFG["S"], num_classes, in_channels)


def vgg11(num_classes=100, in_channels=3):
    return VGG(_CFG["A"], num_classes, in_channels)


def vgg13(num_classes=100, in_channels=3):
    return VGG(_CFG["B"], num_classes, in_channels)


def vgg16(num_classes=100, in_channels=3):
    return VGG(_CFG["D"], num_classes, in_channels)


def vgg19(num_classes=100, in_channels=3):
    return VGG(_CFG["E"], num_classes, in_channels)


class OKDVGG16(ZooModel):
    def __init__(self, num_classes: int = 100, in_channels: int = 3, dropout: float = 0.0):
        super().__init__()
        self.num_classes, self.feature_dim = num_classes, 512
        self.inplanes = 64
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(64)
        self.conv2 = nn.Conv2d(64, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True)
        self.layer1 = self._make_layer(128, 2)
        self.layer2 = self._make_layer(256, 3)
        self.layer3 = self._make_layer(512, 3)
        self.layer4 = self._make_layer(512, 3)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(512, num_classes))
        repdistiller_init(self)  # OKDDip's: kaiming_normal_(fan_out, relu), the same normal(0, sqrt(2 / fan_out))

    def _make_layer(self, width: int, convs: int) -> nn.Sequential:
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers += [nn.Conv2d(self.inplanes, width, kernel_size=3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            self.inplanes = width
        return nn.Sequential(*layers, nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def _body(self, x, maps):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.bn2(self.conv2(x)))
        record(maps, x)
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            record(maps, x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def okd_vgg16(num_classes=100, in_channels=3):
    return OKDVGG16(num_classes, in_channels)
