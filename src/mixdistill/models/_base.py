"""Shared interface of every model in the zoo.

Each model implements ``_body(x, maps)`` (everything up to the pooled, penultimate
feature vector, appending stage outputs to ``maps`` when it is a list) and
``get_classifier()`` (the final linear layer).  ``forward`` and
``forward_features`` both go through ``_body``, so the layer logic exists once.
"""

from __future__ import annotations

import torch
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


def pools_before_relu(model: nn.Module) -> bool:
    """Whether ``model`` now runs each max-pool before the ReLU in front of it: its ``relu_after_pool``, except
    under ``torch.compile``, which traces the textbook order (why: ``models/cnn.py``)."""
    return model.relu_after_pool and not torch.compiler.is_compiling()


def record(maps: list | None, t: torch.Tensor) -> None:
    """Append a stage output when features are being collected."""
    if maps is not None:
        maps.append(t)
