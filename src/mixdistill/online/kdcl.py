"""KDCL, naive ensemble (Guo et al. 2020): each peer sees its own view of the batch (the configured
augmentation drawn independently per peer, default a random horizontal flip on top of the loader's
crop/flip; set ``data.crop_padding=0 data.flip=false augment=crop_flip`` for fully independent
crop+flip views). Target = mean of the peers' logits, detached:
``L_i = CE(y, z_i) + T^2 * KL_T(mean || z_i)``."""

import torch

from mixdistill.augment import LABEL_PRESERVING
from mixdistill.distill.base import step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import cross_entropy, kd_loss
from mixdistill.online.base import MutualParams, OnlineDistiller
from mixdistill.registry import METHODS

NEEDS_LABEL_PRESERVING = (f"kdcl needs label-preserving views ({', '.join(LABEL_PRESERVING)}); use online_cutmix or "
                          "cutnmix for mixed samples, or leave augment unset for kdcl's default (augment={} on the "
                          "command line)")


@METHODS.register("kdcl")
class KDCL(OnlineDistiller):
    source = 'Guo et al., "Online Knowledge Distillation via Collaborative Learning", CVPR 2020'
    Params = MutualParams
    default_augment = "flip"

    @classmethod
    def check_config(cls, cfg) -> None:
        if cfg.augment.name not in ("none", *LABEL_PRESERVING):
            raise ValueError(NEEDS_LABEL_PRESERVING)

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        logits = []
        for peer in self.peers:
            view = self.mix(images, labels, info)  # a fresh random view per peer
            if view.num_sources != 1:
                raise ConfigError(NEEDS_LABEL_PRESERVING)
            logits.append(peer(view.images))
        target = torch.stack(logits).mean(0).detach()
        ce = sum(cross_entropy(z, labels) for z in logits)
        kl = sum(kd_loss(z, target, T) for z in logits)
        return step_output(logits[0], {"ce": ce, "kl": kl}, labels)  # label-preserving views
