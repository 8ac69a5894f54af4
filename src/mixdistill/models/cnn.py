"""Small plain CNNs for 28x28 grayscale images: ``cnn5_w8``, ``cnn5_w16``, ``cnn5_w32``.

Our own design (no external source), sized so that KD studies run on a 2-core
CPU.  Five Conv3x3-BN-ReLU blocks of widths w, 2w, 4w, 4w, 8w in four stages,
with a 2x2 max-pool after each of the first three stages
(28 -> 14 -> 7 -> 3; 32 -> 16 -> 8 -> 4), global average pool, linear.

A pooled block runs conv, BN, max-pool, ReLU unless its map is being recorded (``forward_features``):
ReLU is monotone, so it commutes with max, value for value and gradient for gradient (a window whose max
is <= 0 passes no gradient either way; otherwise both orders route it to the same first maximum), and after
the pool it touches a quarter of the elements. Under ``torch.compile`` the textbook order is traced: inductor
fuses the ReLU anyway, and its fused kernels round differently when the order changes, so a compiled run
computes what it computed before. ``relu_after_pool = False`` restores the textbook order everywhere (tests
compare the two bit for bit; ``benchmarks/relu_after_pool.py`` times them).
"""

from __future__ import annotations

from torch import nn

from ._base import ZooModel, global_avg_pool, pools_before_relu, record


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _pooled(block: nn.Sequential, pool: nn.MaxPool2d, x, maps, pool_first: bool):
    """``block`` (conv, BN, ReLU) then ``pool``; the block's output is recorded when maps are collected."""
    if maps is None and pool_first:
        conv, bn, relu = block
        return relu(pool(bn(conv(x))))
    x = block(x)
    record(maps, x)
    return pool(x)


class CNN5(ZooModel):
    relu_after_pool = True  # see the module docstring

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
        self.pool = nn.MaxPool2d(2)  # a module (no parameters), so that the trainer can give it engine/small_pool
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _body(self, x, maps):
        pool_first = pools_before_relu(self)
        x = _pooled(self.conv1, self.pool, x, maps, pool_first)
        x = _pooled(self.conv2, self.pool, x, maps, pool_first)
        x = _pooled(self.conv4, self.pool, self.conv3(x), maps, pool_first)
        x = self.conv5(x)
        record(maps, x)
        return global_avg_pool(x)


def cnn5_w8(num_classes=100, in_channels=3):
    return CNN5(8, num_classes, in_channels)


def cnn5_w16(num_classes=100, in_channels=3):
    return CNN5(16, num_classes, in_channels)


def cnn5_w32(num_classes=100, in_channels=3):
    return CNN5(32, num_classes, in_channels)
