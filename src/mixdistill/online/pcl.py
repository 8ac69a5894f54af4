"""PCL (Wu & Gong, AAAI 2021, "Peer Collaborative Learning for Online Knowledge Distillation").

m peers (default 3). The peer ensemble teacher is an extra linear classifier on the concatenated pooled
features of the peers, ``z_e = W [f_1; ...; f_m] + b`` (learned; not a mean of logits); each peer's temporal
mean network (an exponential moving average of its weights) is its peer mean teacher ``zbar_i``:
``L = sum_i CE(y, z_i) + CE(y, z_e)
      + w(t) * (sum_i T^2 KL_T(z_e || z_i) + sum_i 1/(m-1) sum_{j != i} T^2 KL_T(zbar_j || z_i))``
with z_e detached in the KL (the ensemble classifier learns from its CE, and its CE trains the peers' features)
and the mean teachers run without gradient; ``w(t) = exp(-5 (1 - t / 80)^2)`` for epoch t < 80, then 1; T = 3.
After every optimiser step ``theta_bar_i <- a theta_bar_i + (1 - a) theta_i`` with Mean Teacher's warm-up
``a = min(1 - 1/(n + 1), 0.999)`` at the n-th update (the first copies): a true average until it reaches 0.999.
PCL deploys a temporal mean network: every epoch each ``temporal_mean{i}`` is evaluated beside the peers and
the ensemble teacher (``ensemble``).

No code was released by the authors. The loss, the concatenated-feature classifier, the EMA and its warm-up
follow the paper as far as it was available and the public reproduction
github.com/shaoeric/Peer-Collaborative-Learning-for-Online-Knowledge-Distillation (``src/losses/loss_wrapper.py``
``LossWrapper.forward``, ``src/losses/kd_loss.py`` ``KDLoss``/``PMLoss``, ``src/controller.py``,
``src/utils/ema.py``, ``src/models/resnet.py`` ``en_fc``), which ramps both KL terms up. Its ramp-up has
``exp(-5 (1 - epoch / lambda)^2)`` with lambda = 1 where the ramp length 80 belongs (a weight near 0 from
epoch 2 to 80); we use the intended ``exp(-5 (1 - t / 80)^2)``.

The peers are, as in the paper and the reproduction (``peer_form: branches``), branches of one network sharing
its low-level layers (``online/branches.py``: the trunk is peer 0's copy, so the checkpoint's ``model`` is peer 0
as a whole network); peer i's temporal mean is then the averaged trunk (``temporal_trunk``, one for all: every
peer's trunk is the one live trunk) followed by its averaged branch and classifier (``temporal_means[i]``).
``peer_form: networks`` makes them separate networks, each averaged whole. The reproduction's three branch
classifiers start as copies of one; ours are drawn independently. Simplifications, declared: by default every
peer sees the same (possibly mixed) batch, so that every augmentation works (one trunk pass a step);
``views: per_peer`` gives each peer its own draw of a label-preserving augmentation (the paper's "random
augmentation multiple times", e.g. ``augment=crop_flip``; the trunk then runs once per view, as in the
reproduction), each mean teacher seeing its peer's view as in the reproduction. The mean teachers run in eval
mode with their BatchNorm statistics averaged like the weights (the reproduction runs them in train mode on batch
statistics). The checkpoint's ``model`` is the live peer 0; its temporal mean is saved under ``distiller_extra``
(``temporal_means``, and with branches ``temporal_trunk``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn
from torch.optim.swa_utils import AveragedModel

from mixdistill.augment import LABEL_PRESERVING
from mixdistill.distill.base import step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.online.base import OnlineDistiller, OnlineParams
from mixdistill.online.branches import BranchPeers
from mixdistill.online.cutmix_online import sigmoid_rampup
from mixdistill.registry import METHODS

PER_PEER_NEEDS_LABEL_PRESERVING = (
    f"pcl with views=per_peer needs label-preserving views ({', '.join(LABEL_PRESERVING)}); use views=shared for "
    "mixed samples")


def mean_teacher_ema(decay: float):
    """``multi_avg_fn`` for ``AveragedModel``: EMA with Mean Teacher's warm-up. At the n-th update after the first
    (which copies), ``a = min(1 - 1/(n + 1), decay)``: a true running average until it reaches ``decay``. Computed
    on the device (no host sync); integer buffers (BatchNorm's num_batches_tracked) are copied."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        a = torch.clamp(1 - 1 / (num_averaged.to(averaged[0].dtype) + 1), max=decay)
        torch._foreach_lerp_(averaged, current, 1 - a)

    return update


class PCLParams(OnlineParams):
    temperature: float = Field(3.0, gt=0)
    ema_decay: float = Field(0.999, ge=0, lt=1, description="temporal mean decay (after the warm-up)")
    ramp_epochs: float = Field(80, ge=0, description="w(t) = exp(-5 (1 - t/ramp_epochs)^2) before, 1 after")
    views: Literal["shared", "per_peer"] = Field(
        "shared", description="shared: one (possibly mixed) batch for all peers; per_peer: each peer its own draw "
                              "of a label-preserving augmentation")
    peer_form: Literal["branches", "networks"] = Field(
        "branches", description="branches: the paper's multi-branch network, low-level layers shared (README, Online "
                                "distillation); networks: separate networks")


@METHODS.register("pcl")
class PCL(BranchPeers, OnlineDistiller):
    source = 'Wu, Gong, "Peer Collaborative Learning for Online Knowledge Distillation", AAAI 2021'
    Params = PCLParams

    def __init__(self, peers, params, trunk: nn.Module | None = None, whole: nn.Module | None = None):
        super().__init__(peers, params, trunk=trunk, whole=whole)
        widths = [getattr(peer, "feature_dim", None) for peer in peers]
        if None in widths:
            raise ConfigError("pcl: the peer ensemble teacher classifies the peers' concatenated pooled features, so "
                              "every peer needs a feature_dim")
        self.ensemble_head = nn.Linear(sum(widths), self.student.num_classes)

        def average(module):
            return AveragedModel(module, multi_avg_fn=mean_teacher_ema(params.ema_decay), use_buffers=True)

        # what each temporal mean averages: the whole peer, or (branches) its branch and classifier
        self._averaged = list(peers) if trunk is None else [nn.Sequential(p.branch, p.fc) for p in peers]
        self.temporal_means = nn.ModuleList(average(m) for m in self._averaged)
        self.temporal_trunk = None if trunk is None else average(trunk)
        for module in (self.temporal_means, self.temporal_trunk):
            if module is not None:
                module.requires_grad_(False)
                module.eval()

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.method.params().views == "per_peer" and cfg.augment.name == "none":  # accepted: every view the same
            raise ValueError("pcl with views=per_peer gives each peer its own draw of augment; with augment none every "
                             "peer sees the same batch (the loader's crop and flip are drawn once per batch), at the "
                             f"cost of a trunk pass each: set one of {', '.join(LABEL_PRESERVING)}, or views=shared")
        if cfg.method.params().views == "per_peer" and cfg.augment.name not in LABEL_PRESERVING:
            raise ValueError(PER_PEER_NEEDS_LABEL_PRESERVING)

    def learnable_parameters(self):
        return [p for name, p in self.named_parameters() if not name.startswith(("temporal_means.", "temporal_trunk."))]

    def train(self, mode: bool = True):
        super().train(mode)
        self.temporal_means.eval()  # teachers: averaged BatchNorm statistics, never updated by batches
        if self.temporal_trunk is not None:
            self.temporal_trunk.eval()
        return self

    @torch.no_grad()
    def after_step(self):
        if self.temporal_trunk is not None:
            self.temporal_trunk.update_parameters(self.trunk)
        for mean, live in zip(self.temporal_means, self._averaged):
            mean.update_parameters(live)

    def _outputs(self, images: list[torch.Tensor]):
        """(logits, pooled features, temporal means' logits) of every peer, peer i on ``images[i]``; branches
        share the trunk's pass where their images are the same tensor."""
        if self.trunk is None:
            outputs = [peer.forward_features(x) for peer, x in zip(self.peers, images)]
            with torch.no_grad():
                means = [mean(x) for mean, x in zip(self.temporal_means, images)]
            return [z for z, _ in outputs], [f["pooled"] for _, f in outputs], means
        distinct = {id(x): x for x in images}  # shared views are one tensor: one trunk pass
        h = {key: self.trunk(x) for key, x in distinct.items()}
        pooled = [peer.branch(h[id(x)]) for peer, x in zip(self.peers, images)]
        with torch.no_grad():
            h_mean = {key: self.temporal_trunk(x) for key, x in distinct.items()}
            means = [mean(h_mean[id(x)]) for mean, x in zip(self.temporal_means, images)]
        return [peer.fc(f) for peer, f in zip(self.peers, pooled)], pooled, means

    def ensemble(self, pooled: list[torch.Tensor]) -> torch.Tensor:
        """The peer ensemble teacher's logits from the peers' pooled features."""
        return self.ensemble_head(torch.cat(pooled, 1))

    def forward_train(self, images, labels, info):
        p = self.params
        T, m = p.temperature, len(self.peers)
        if p.views == "per_peer":
            views = [self.mix(images, labels, info) for _ in self.peers]  # a fresh random view per peer
            if any(view.num_sources != 1 for view in views):
                raise ConfigError(PER_PEER_NEEDS_LABEL_PRESERVING)
        else:
            views = [self.mix(images, labels, info)] * m
        logits, pooled, means = self._outputs([view.images for view in views])
        ensemble = self.ensemble(pooled)
        target = ensemble.detach()
        ramp = sigmoid_rampup(info.epoch, p.ramp_epochs)
        losses = {
            # per_peer views are label-preserving, so views[0]'s labels are every view's
            "ce": sum(mixed_cross_entropy(z, labels, view) for z, view in zip(logits, views))
            + mixed_cross_entropy(ensemble, labels, views[0]),
            "kl_ensemble": ramp * sum(kd_loss(z, target, T) for z in logits),
            "kl_mean": ramp * sum(kd_loss(z_i, means[j], T) for i, z_i in enumerate(logits)
                                  for j in range(m) if j != i) / (m - 1),
        }
        return step_output(logits[0], losses, labels, views[0], stats={"ramp": ramp})

    @classmethod
    def evaluation_names(cls, params) -> list[str]:
        return super().evaluation_names(params) + [f"temporal_mean{i}" for i in range(params.peers)]

    def evaluation_logits(self, images):
        logits, pooled, means = self._outputs([images] * len(self.peers))
        out = {f"peer{i}": z for i, z in enumerate(logits)}
        out["ensemble"] = self.ensemble(pooled)
        out.update({f"temporal_mean{i}": z for i, z in enumerate(means)})
        return out
