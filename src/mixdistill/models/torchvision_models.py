"""torchvision's ImageNet ResNets (18, 34, 50) with the zoo interface.

The network is built by ``torchvision.models.resnet*`` with ``weights=None`` (nothing is downloaded) and
its modules are adopted under torchvision's own names (``conv1``, ``bn1``, ``layer1`` ... ``layer4``,
``fc``), so the state_dict keys are torchvision's and its pretrained checkpoints (e.g.
``resnet34-b627a593.pth``, a bare state dict) load strictly with
:func:`mixdistill.models.checkpoint.load_weights`.

``forward_features`` returns ``(logits, {"pooled": [B, feature_dim], "maps": [stem, layer1, layer2,
layer3, layer4]})``; the stem map is taken after the max-pool (as RepDistiller's ImageNet ResNets).
``feature_dim`` is 512 for ResNet18/34 and 2048 for ResNet50. With ``in_channels != 3`` the first
convolution is replaced by a fresh one of the same shape otherwise (7x7, stride 2, 64 filters, He
initialisation as torchvision's), so 3-channel pretrained weights then no longer fit ``conv1``.
torchvision is imported when a model is built, not when the zoo is imported.
"""

from __future__ import annotations

import torch
from torch import nn

from ._base import ZooModel, record

FEATURE_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


class TorchvisionResNet(ZooModel):
    """A ``torchvision.models.ResNet`` whose submodules are this module's own (same state_dict keys)."""

    def __init__(self, arch: str, num_classes: int = 1000, in_channels: int = 3, **kwargs):
        super().__init__()
        if arch not in FEATURE_DIM:
            raise ValueError(f"unknown torchvision ResNet '{arch}' (have {', '.join(FEATURE_DIM)})")
        from torchvision import models

        net = getattr(models, arch)(weights=None, num_classes=num_classes, **kwargs)
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                                  padding=old.padding, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        for name, child in net.named_children():  # conv1, bn1, relu, maxpool, layer1..4, avgpool, fc
            self.add_module(name, child)
        self.arch = arch
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.feature_dim = net.fc.in_features
        assert self.feature_dim == FEATURE_DIM[arch]

    def get_classifier(self) -> nn.Module:
        return self.fc

    def _body(self, x: torch.Tensor, maps: list | None) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        record(maps, x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            record(maps, x)
        return torch.flatten(self.avgpool(x), 1)


def tv_resnet18(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet18", num_classes=num_classes, in_channels=in_channels)


def tv_resnet34(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet34", num_classes=num_classes, in_channels=in_channels)


def tv_resnet50(num_classes: int = 1000, in_channels: int = 3) -> TorchvisionResNet:
    return TorchvisionResNet("resnet50", num_classes=num_classes, in_channels=in_channels)
