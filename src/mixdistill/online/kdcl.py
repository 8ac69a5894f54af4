"""KDCL, naive ensemble (Guo et al. 2020): each peer sees its own view of the batch (the configured
augmentation drawn independently per peer, default a random horizontal flip on top of the loader's
crop/flip; set ``data.crop_padding=0 data.flip=false augment=crop_flip`` for fully independent
crop+flip views). Target = mean of the peers' logits, detached:
``L_i = CE(y, z_i) + T^2 * KL_T(mean || z_i)``."""

from pydantic import Field

import torch

from mixdistill.distill.registry import DISTILLERS
from mixdistill.errors import ConfigError
from mixdistill.losses import cross_entropy, kd_loss
from mixdistill.online.base import OnlineDistiller, OnlineParams


class KDCLParams(OnlineParams):
    temperature: float = Field(3.0, gt=0)


@DISTILLERS.register("kdcl")
class KDCL(OnlineDistiller):
    Params = KDCLParams
    default_augment = "flip"

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        logits = []
        for peer in self.peers:
            view = self.mix(images, labels, info)  # a fresh random view per peer
            if view.num_sources != 1:
                raise ConfigError("kdcl needs label-preserving views (identity, flip, crop_flip, cutout, autoaugment); "
                                  "use online_cutmix or cutnmix for mixed samples")
            logits.append(peer(view.images))
        target = torch.stack(logits).mean(0).detach()
        ce = sum(cross_entropy(z, labels) for z in logits)
        kl = sum(kd_loss(z, target, T) for z in logits)
        info.train_labels = None
        return logits[0], {"ce": ce, "kl": kl}
