"""ShuffleNet V1 (groups 3) and ShuffleNet V2 (1x) for CIFAR.

Follows RepDistiller ``models/ShuffleNetv1.py`` and ``models/ShuffleNetv2.py``
(HobbitLong/RepDistiller, after kuangliu/pytorch-cifar): 1x1 stem to 24
channels, three stages, linear ``linear``; state_dict keys are identical.
Differences: adaptive average pooling instead of ``avg_pool2d(4)``;
``in_channels`` sets the stem's input channels; the parameter-free channel
shuffle, split and shortcut pooling are functions, not submodules.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._base import ZooModel, record


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """[N, C, H, W] -> [N, g, C/g, H, W] -> [N, C/g, g, H, W] -> [N, C, H, W]."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


# ----------------------------------------------------------------- ShuffleNet V1


class ShuffleV1Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid = out_planes // 4
        # The first block after the 24-channel stem uses an ungrouped 1x1 conv.
        self.g1 = 1 if in_planes == 24 else groups
        self.conv1 = nn.Conv2d(in_planes, mid, kernel_size=1, groups=self.g1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.g1)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


class ShuffleNetV1(ZooModel):
    def __init__(self, out_planes=(240, 480, 960), num_blocks=(4, 8, 4), groups: int = 3,
                 num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = out_planes[2]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes: int, num_blocks: int, groups: int) -> nn.Sequential:
        layers = []
        for i in range(num_blocks):
            # A stride-2 block concatenates its pooled input, so its branch is narrower.
            branch = out_planes - self.in_planes if i == 0 else out_planes
            layers.append(ShuffleV1Block(self.in_planes, branch, 2 if i == 0 else 1, groups))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def _body(self, x, maps):
        x = F.relu(self.bn1(self.conv1(x)))
        record(maps, x)
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            record(maps, x)
        return self.avgpool(x).flatten(1)


def ShuffleV1(num_classes=100, in_channels=3):
    return ShuffleNetV1((240, 480, 960), (4, 8, 4), 3, num_classes, in_channels)


# ----------------------------------------------------------------- ShuffleNet V2


class ShuffleV2Block(nn.Module):
    """Stride-1 unit: split channels in half, transform one half, concat, shuffle."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, stride=1, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x):
        c = x.shape[1] // 2
        x1, x2 = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([x1, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: two branches on the full input, concat, shuffle."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        # left branch
        self.conv1 = nn.Conv2d(cin, cin, kernel_size=3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = nn.Conv2d(cin, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(ZooModel):
    def __init__(self, out_channels=(116, 232, 464, 1024), num_blocks=(3, 7, 3),
                 num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.feature_dim = out_channels[3]
        self.conv1 = nn.Conv2d(in_channels, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self._cin = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, cout: int, num_blocks: int) -> nn.Sequential:
        layers = [ShuffleV2DownBlock(self._cin, cout)]
        layers += [ShuffleV2Block(cout) for _ in range(num_blocks)]
        self._cin = cout
        return nn.Sequential(*layers)

    def get_classifier(self) -> nn.Module:
        return self.linear

    def _body(self, x, maps):
        x = F.relu(self.bn1(self.conv1(x)))
        record(maps, x)
        for layer in (self.layer1, self.layer2, self.layer3):
            x = layer(x)
            record(maps, x)
        x = F.relu(self.bn2(self.conv2(x)))
        return self.avgpool(x).flatten(1)


def ShuffleV2(num_classes=100, in_channels=3):
    return ShuffleNetV2((116, 232, 464, 1024), (3, 7, 3), num_classes, in_channels)
