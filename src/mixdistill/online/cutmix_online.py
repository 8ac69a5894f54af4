"""Online distillation on mixed samples.

``online_cutmix`` (shen2022's first step): peers train on one CutMix batch with area-weighted labels,
and the distillation target on that mixed batch is the peers' ensemble (mean logits, detached) on the
same batch: ``L_i = softCE(mixed labels, z_i) + T^2 * KL_T(mean_j z_j || z_i)``.

``cutnmix`` — the Cut^nMix framework of shen2022, RECONSTRUCTED FROM ITS ABSTRACT (no code or full text
was available; every choice below is a config field). Peers see a Cut^nMix batch (n boxes from n
partners, visible-area label weights). Per peer:
``softCE + ramp(t) * T^2 * KL_T(teacher || z_i) + mu * feature loss`` where
- the self-ensemble teacher is the mean of the peers' logits on the batch, detached, or with
  ``teacher: ema`` the mean of exponential-moving-average copies of the peers (decay ``ema_decay``; torch's
  ``AveragedModel`` with ``get_ema_multi_avg_fn``, weights and buffers, starting from the initial peers);
- the feature loss is the mean over the batch of the squared L2 distance between the peer's
  L2-normalised pooled penultimate feature and the detached mean of the other peers' normalised features;
- ``ramp(t) = exp(-5 (1 - t / ramp_epochs)^2)`` for epoch t < ramp_epochs, then 1; T = 3.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mixdistill.distill.base import step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.online.base import MutualParams, OnlineDistiller
from mixdistill.registry import METHODS


@METHODS.register("online_cutmix")
class OnlineCutMix(OnlineDistiller):
    source = "shen2022 (arXiv 2206.12370): online distillation on CutMix batches, its first step"
    Params = MutualParams
    default_augment = "cutmix"

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        batch = self.mix(images, labels, info)
        logits = [peer(batch.images) for peer in self.peers]
        target = torch.stack(logits).mean(0).detach()
        ce = sum(mixed_cross_entropy(z, labels, batch) for z in logits)
        kl = sum(kd_loss(z, target, T) for z in logits)
        return step_output(logits[0], {"ce": ce, "kl": kl}, labels, batch)


def sigmoid_rampup(epoch: float, ramp_epochs: float) -> float:
    """exp(-5 (1 - t/L)^2) for t < L, else 1 (Laine & Aila's ramp-up)."""
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return 1.0
    phase = 1.0 - max(epoch, 0.0) / ramp_epochs
    return math.exp(-5.0 * phase * phase)


def feature_mutual_loss(features: list[torch.Tensor]) -> torch.Tensor:
    """sum over peers of mean_n || u_i - mean_{j != i} u_j.detach() ||^2, u = L2-normalised features."""
    units = [F.normalize(f.float(), dim=1) for f in features]
    total = 0
    for i, u in enumerate(units):
        others = torch.stack([v.detach() for j, v in enumerate(units) if j != i]).mean(0)
        total = total + (u - others).pow(2).sum(1).mean()
    return total


class CutNMixParams(MutualParams):
    teacher: Literal["mean", "ema"] = "mean"
    ema_decay: float = Field(0.999, ge=0, lt=1)
    feature_weight: float = Field(1.0, ge=0, description="mu, weight of the feature-level mutual loss")
    ramp_epochs: float = Field(80, ge=0)


@METHODS.register("cutnmix")
class CutNMix(OnlineDistiller):
    """Cut^nMix online distillation — RECONSTRUCTED from the abstract of shen2022 (see module docstring)."""

    source = "shen2022 (arXiv 2206.12370): Cut^nMix, RECONSTRUCTED from its abstract"
    Params = CutNMixParams
    default_augment = "cut_n_mix"

    def __init__(self, peers, params):
        super().__init__(peers, params)
        widths = [getattr(peer, "feature_dim", None) for peer in peers]
        if params.feature_weight > 0 and len(set(widths)) > 1:
            raise ConfigError(
                "cutnmix: the feature-level mutual loss compares the peers' pooled features, so every peer needs "
                f"the same feature width; got {', '.join(f'peer {i}: {w}' for i, w in enumerate(widths))}. "
                "Use peers of one width or set method.feature_weight=0")
        if params.teacher == "ema":  # torch's EMA, as train.ema_decay: a copy of each peer, updated every step
            self.ema_peers = nn.ModuleList(
                AveragedModel(p, multi_avg_fn=get_ema_multi_avg_fn(params.ema_decay), use_buffers=True) for p in peers)
            self.ema_peers.requires_grad_(False)
            for ema in self.ema_peers:  # each starts as a copy of its peer, as a first update_parameters would
                ema.n_averaged.fill_(1)  # leave it (set, not read: the meta device has no values to read)

    def learnable_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith("ema_peers.")]

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "ema_peers"):
            self.ema_peers.eval()  # the EMA teacher's BN statistics are averaged, not updated by batches
        return self

    @torch.no_grad()
    def after_step(self):
        if not hasattr(self, "ema_peers"):
            return
        for ema, peer in zip(self.ema_peers, self.peers):  # ema += (1 - decay) * (peer - ema), buffers too
            ema.update_parameters(peer)

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        outputs = [peer.forward_features(batch.images) for peer in self.peers]
        logits = [z for z, _ in outputs]
        if p.teacher == "ema":
            with torch.no_grad():
                target = torch.stack([ema(batch.images) for ema in self.ema_peers]).mean(0)
        else:
            target = torch.stack(logits).mean(0).detach()
        ramp = sigmoid_rampup(info.epoch, p.ramp_epochs)
        losses = {
            "ce": sum(mixed_cross_entropy(z, labels, batch) for z in logits),
            "kl": ramp * sum(kd_loss(z, target, p.temperature) for z in logits),
        }
        if p.feature_weight > 0:
            losses["feat"] = p.feature_weight * feature_mutual_loss([f["pooled"] for _, f in outputs])
        return step_output(logits[0], losses, labels, batch, stats={"ramp": ramp})
