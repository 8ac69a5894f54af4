"""Shared interface of every model in the zoo.

Each model implements ``_body(x, maps)`` (everything up to the pooled, penultimate
feature vector, appending stage outputs to ``maps`` when it is a list) and
``get_classifier()`` (the final linear layer).  ``forward`` and
``forward_features`` both go through ``_body``, so the layer logic exists once.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ZooModel(nn.Module):
    """Base class: ``forward(x) -> logits``; ``forward_features(x) -> (logits, feats)``."""

    num_classes: int
    feature_dim: int

    def get_classifier(self) -> nn.Module:
        raise NotImplementedError

    def _body(self, x: torch.Tensor, maps: list | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.get_classifier()(self._body(x, None))

    def forward_features(self, x: torch.Tensor):
        """Return ``(logits, {"pooled": [B, feature_dim], "maps": [stage outputs]})``."""
        maps: list[torch.Tensor] = []
        pooled = self._body(x, maps)
        return self.get_classifier()(pooled), {"pooled": pooled, "maps": maps}


def repdistiller_init(model: nn.Module) -> None:
    """RepDistiller's VGG and MobileNetV2 initialisation: convs normal(0, sqrt(2 / fan_out)), biases 0; BN 1, 0;
    linears normal(0, 0.01), biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def pools_before_relu(model: nn.Module) -> bool:
    """Whether ``model`` now runs each max-pool before the ReLU in front of it: its ``relu_after_pool``, except
    under ``torch.compile``, which traces the textbook order (why: ``models/cnn.py``)."""
    return model.relu_after_pool and not torch.compiler.is_compiling()


def record(maps: list | None, t: torch.Tensor) -> None:
    """Append a stage output when features are being collected."""
    if maps is not None:
        maps.append(t)


class _GradInChannelsLast(torch.autograd.Function):
    """The identity, whose backward hands the gradient on channels-last."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=torch.channels_last)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1).flatten(1)``, the same floats both ways. On a channels-last map that needs a
    gradient, the gradient also goes back channels-last: ATen's pooling is a mean, whose gradient is a division of
    an expanded tensor, laid out NCHW; the ReLU before it then takes its backward through ATen's slow path for
    mismatched layouts (0.27 ms for cnn5_w8's [128, 64, 3, 3] on one core, against 0.02 ms with one copy to
    channels-last first). Left out under ``torch.compile`` and ``torch.fx`` tracing (conv-BN folding, int8): their
    graphs stay as they were."""
    if (not isinstance(x, torch.fx.Proxy)  # first: a traced value cannot answer the questions after it
            and torch.is_grad_enabled() and x.requires_grad and x.dim() == 4 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last) and not torch.compiler.is_compiling()):
        x = _GradInChannelsLast.apply(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)
