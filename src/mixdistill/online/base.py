"""The online-distillation contract: a group of peers behind the offline Distiller interface.

``peers[0]`` doubles as ``student`` (its weights are the checkpoint's ``model``); every peer and the
ensemble (mean of peer logits) are evaluated each epoch.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from mixdistill.distill.base import Distiller, MethodParams
from mixdistill.models import create_model


class OnlineParams(MethodParams):
    peers: int = Field(3, ge=2, description="number of peers when model.peers is not given")


class MutualParams(OnlineParams):
    """Peers distilling from their ensemble at a temperature (KDCL, online CutMix)."""

    temperature: float = Field(3.0, gt=0)


class OnlineDistiller(Distiller):
    online: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = False
    Params = OnlineParams

    def __init__(self, peers: list[nn.Module], params: OnlineParams):
        super().__init__(peers[0], None, params)
        self.peers = nn.ModuleList(peers)

    @classmethod
    def from_names(cls, names: list[str], params, *, num_classes: int, in_channels: int, pretrained: bool = False):
        return cls([create_model(n, num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)
                    for n in names], params)

    @classmethod
    def evaluation_names(cls, params) -> list[str]:
        """The outputs ``evaluation_logits`` returns for these parameters (train.best_metric is checked against them
        before a run starts); a subclass that adds outputs adds their names here too."""
        return [f"peer{i}" for i in range(params.peers)] + ["ensemble"]

    def evaluation_logits(self, images):
        logits = [peer(images) for peer in self.peers]
        out = {f"peer{i}": z for i, z in enumerate(logits)}
        out["ensemble"] = torch.stack(logits).mean(0)
        return out

    def compile_targets(self):
        return list(self.peers)

    def state_dict_extra(self) -> dict:
        return {name: module.state_dict() for name, module in self.named_children() if name != "student"}
