"""MobileNetV2 for CIFAR at width 0.5 (``mobile_half``, alias ``MobileNetV2``).

Follows RepDistiller ``models/mobilenetv2.py`` (HobbitLong/RepDistiller, the
version from "Knowledge Distillation via Route Constrained Optimization"):
stride-2 stem ``conv1``, seven stages ``blocks.0..6`` of inverted residuals
(expansion 6; the expansion-1 stage keeps its 1x1 expand conv), 1x1 ``conv2``
to 1280 channels, ``classifier.0`` linear; state_dict keys are identical.
Differences: adaptive average pooling instead of ``AvgPool2d(2, ceil_mode)``;
``in_channels`` sets the stem's input channels; no print in the constructor.
"""

from __future__ import annotations

from torch import nn

from ._base import ZooModel, record, repdistiller_init

# expansion t, channels c, repeats n, first stride s
_SETTING = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),  # pointwise expand
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),  # depthwise
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),  # pointwise linear
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNetV2(ZooModel):
    def __init__(self, expansion: int = 6, width_mult: float = 0.5, num_classes: int = 100, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        cin = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(in_channels, cin, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in _SETTING:
            t = expansion if t != 1 else 1
            cout = int(c * width_mult)
            stage = []
            for i in range(n):
                stage.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
            self.blocks.append(nn.Sequential(*stage))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.feature_dim = self.last_channel
        self.conv2 = _conv_bn_relu(cin, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

        repdistiller_init(self)

    def get_classifier(self) -> nn.Module:
        return self.classifier[0]

    def _body(self, x, maps):
        x = self.conv1(x)
        record(maps, x)
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i in (1, 2, 4, 6):  # the stages RepDistiller exposes as features
                record(maps, x)
        x = self.conv2(x)
        return self.avgpool(x).flatten(1)


def mobile_half(num_classes=100, in_channels=3):
    return MobileNetV2(6, 0.5, num_classes, in_channels)
