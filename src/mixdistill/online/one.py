"""ONE (Lan et al. 2018, on-the-fly native ensemble): a shared trunk, m branches, a gate
``softmax(ReLU(BN(FC(pooled trunk feature))))`` and the gated ensemble ``z_e = sum_i g_i z_i``.
``L = sum_i CE(y, z_i) + CE(y, z_e) + T^2 * sum_i KL_T(z_e || z_i)``, T = 3, the ensemble target
detached in the KL term (``detach_ensemble``).

The branches: ``online/branches.py``; peer 0's copy of the architecture gives the trunk and is the checkpoint's
``model``."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mixdistill.distill.base import step_output
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.online.base import OnlineDistiller, OnlineParams
from mixdistill.online.branches import build_branches
from mixdistill.registry import METHODS


class ONEParams(OnlineParams):
    temperature: float = Field(3.0, gt=0)
    detach_ensemble: bool = True


@METHODS.register("one")
class ONE(OnlineDistiller):
    source = 'Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018'
    Params = ONEParams

    def __init__(self, trunk, peers, trunk_channels, params, standalone: nn.Module | None = None):
        super().__init__(peers, params)
        self.trunk = trunk
        if standalone is not None:  # peer 0 as the whole network (trunk + branch 0): the checkpoint's model
            self.student = standalone
        m = len(peers)
        self.gate = nn.Sequential(nn.Linear(trunk_channels, m), nn.BatchNorm1d(m), nn.ReLU())

    @classmethod
    def from_names(cls, names, params, *, num_classes, in_channels, pretrained=False):
        trunk, peers, channels, whole = build_branches(names, num_classes=num_classes, in_channels=in_channels,
                                                       pretrained=pretrained, whole=0, who="one")
        return cls(trunk, peers, channels, params, standalone=whole)

    def _branches(self, images):
        h = self.trunk(images)
        logits = [peer.forward_from_trunk(h) for peer in self.peers]
        gate = torch.softmax(self.gate(h.mean((2, 3))), dim=1)  # [B, m]
        ensemble = (gate.unsqueeze(2) * torch.stack(logits, 1)).sum(1)
        return logits, ensemble

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        batch = self.mix(images, labels, info)
        logits, ensemble = self._branches(batch.images)
        target = ensemble.detach() if self.params.detach_ensemble else ensemble
        ce = sum(mixed_cross_entropy(z, labels, batch) for z in logits) + mixed_cross_entropy(ensemble, labels, batch)
        kl = sum(kd_loss(z, target, T) for z in logits)
        return step_output(ensemble, {"ce": ce, "kl": kl}, labels, batch)

    @classmethod
    def evaluation_names(cls, params) -> list[str]:
        return super().evaluation_names(params)  # the same names, the gated ensemble as "ensemble"

    def evaluation_logits(self, images):
        logits, ensemble = self._branches(images)
        out = {f"peer{i}": z for i, z in enumerate(logits)}
        out["ensemble"] = ensemble
        return out

    def compile_targets(self):
        return [self.trunk] + [peer.branch for peer in self.peers]
