"""OKDDip (Chen et al., AAAI 2020, "Online Knowledge Distillation with Diverse Peers"), as the released code
(github.com/DefangChen/OKDDip-AAAI2020: ``train_GL.py`` ``train``, ``models/model_cifar/resnet_GL.py``
``ResNet.forward``, ``utils.KL_Loss``). Peers ``0 .. m-2`` are the auxiliary peers, peer ``m-1`` the group
leader (default m = 4, the released ``--num_branches``); every peer sees the same (possibly mixed) batch.

First level: auxiliary peer a's pooled feature h_a gives a query ``L(h_a)`` and a key ``E(h_a)`` (linear maps
without bias shared by the peers, width = feature width // 8); per sample ``alpha_ab = softmax_b(L(h_a) . E(h_b))``
over the auxiliary peers (b = a included, as released) and a's target is the weighted logits
``t_a = sum_b alpha_ab z_b``. Second level: the leader's target is the mean of the auxiliary peers' logits.

``L = sum_a CE(y, z_a) + CE(y, z_l) + w(t) * (sum_a T^2 KL_T(t_a || z_a) + T^2 KL_T(mean_a z_a || z_l))``,
``w(t) = alpha * exp(-5 (1 - t / 80)^2)`` for epoch t < 80, then alpha (released ``--alpha 1 --length 80
--start_consistency 0``), T = 3. As released, neither target is detached: the distillation terms are what
trains the query/key maps, and the leader's term reaches the auxiliary peers too.

The peers are, as released (``peer_form: branches``), branches of one network: a trunk shared up to the last
stage, one last stage and classifier per peer (``online/branches.py``; the trunk comes from the leader's copy, so
the checkpoint's ``model`` is the leader as a whole network, the network OKDDip deploys). ``peer_form: networks``
makes them separate networks (peers of different architectures, or one without a branch form, need it); its
checkpoint's ``model`` is peer 0, an auxiliary peer. The leader is evaluated as ``peer{m-1}`` and again as
``leader``. Difference from the released code: the KL omits the 1e-7 the released ``KL_Loss`` adds to the target
probabilities.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from mixdistill.distill.base import step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.online.base import OnlineDistiller, OnlineParams
from mixdistill.online.branches import BranchPeers
from mixdistill.online.cutmix_online import sigmoid_rampup
from mixdistill.registry import METHODS


class OKDDipParams(OnlineParams):
    peers: int = Field(4, ge=2, description="auxiliary peers + the group leader (the last peer), when model.peers "
                                            "is not given")
    temperature: float = Field(3.0, gt=0)
    alpha: float = Field(1.0, ge=0, description="weight of both distillation levels (released --alpha)")
    ramp_epochs: float = Field(80, ge=0, description="w(t) = alpha exp(-5 (1 - t/ramp_epochs)^2) before, alpha after")
    projection_factor: int = Field(8, ge=1, description="query/key width = the peers' feature width // factor")
    peer_form: Literal["branches", "networks"] = Field(
        "branches", description="branches: as released, the peers share the network up to its last stage "
                                "(README, Online distillation); networks: separate networks")


@METHODS.register("okddip")
class OKDDip(BranchPeers, OnlineDistiller):
    source = 'Chen, Mei, Wang, Feng, Chen, "Online Knowledge Distillation with Diverse Peers", AAAI 2020'
    Params = OKDDipParams
    whole_peer = -1  # the leader: the network OKDDip deploys

    def __init__(self, peers, params, trunk: nn.Module | None = None, whole: nn.Module | None = None):
        super().__init__(peers, params, trunk=trunk, whole=whole)
        widths = [getattr(peer, "feature_dim", None) for peer in peers[:-1]]
        if None in widths or len(set(widths)) != 1:
            raise ConfigError(
                "okddip: the auxiliary peers (all but the last, the group leader) share the query/key projections "
                "of their pooled features, so they need one feature width; got "
                f"{', '.join(f'peer {i}: {w}' for i, w in enumerate(widths))}")
        width = widths[0]
        dim = max(1, width // params.projection_factor)
        self.query = nn.Linear(width, dim, bias=False)
        self.key = nn.Linear(width, dim, bias=False)

    def _features(self, images) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(logits of every peer, pooled features of the auxiliary peers); branches share one pass through the
        trunk."""
        if self.trunk is None:
            *auxiliary, leader = self.peers
            outputs = [peer.forward_features(images) for peer in auxiliary]
            return [z for z, _ in outputs] + [leader(images)], [f["pooled"] for _, f in outputs]
        h = self.trunk(images)
        pooled = [peer.branch(h) for peer in self.peers]
        return [peer.fc(f) for peer, f in zip(self.peers, pooled)], pooled[:-1]

    def attention_targets(self, logits: list[torch.Tensor], pooled: list[torch.Tensor]):
        """(attention [B, A, A], targets [B, A, C]): row a of the attention weighs the auxiliary peers for peer a,
        and ``targets[:, a] = sum_b attention[:, a, b] * logits[b]``."""
        q = torch.stack([self.query(h) for h in pooled], 1)  # [B, A, k]
        k = torch.stack([self.key(h) for h in pooled], 1)
        attention = torch.softmax((q @ k.transpose(1, 2)).float(), dim=-1)
        return attention, attention @ torch.stack(logits, 1).float()

    def forward_train(self, images, labels, info):
        p = self.params
        T = p.temperature
        batch = self.mix(images, labels, info)
        all_logits, pooled = self._features(batch.images)
        *logits, z_leader = all_logits
        _, targets = self.attention_targets(logits, pooled)
        group = torch.stack(logits).mean(0)
        ramp = sigmoid_rampup(info.epoch, p.ramp_epochs)
        weight = p.alpha * ramp
        losses = {
            "ce": sum(mixed_cross_entropy(z, labels, batch) for z in [*logits, z_leader]),
            "kl_peers": weight * sum(kd_loss(z, targets[:, a], T) for a, z in enumerate(logits)),
            "kl_leader": weight * kd_loss(z_leader, group, T),
        }
        return step_output(logits[0], losses, labels, batch, stats={"ramp": ramp})

    @classmethod
    def evaluation_names(cls, params) -> list[str]:
        return super().evaluation_names(params) + ["leader"]

    def evaluation_logits(self, images):
        if self.trunk is None:
            out = super().evaluation_logits(images)
        else:
            logits, _ = self._features(images)
            out = {f"peer{i}": z for i, z in enumerate(logits)}
            out["ensemble"] = torch.stack(logits).mean(0)
        out["leader"] = out[f"peer{len(self.peers) - 1}"]  # the deployed model
        return out
