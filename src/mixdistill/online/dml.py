"""DML (Zhang et al. 2018, deep mutual learning):
``L_i = CE(y, z_i) + 1/(m-1) * sum_{j != i} KL_1(z_j || z_i)``, targets detached, all peers on the
same (possibly augmented) batch; with a mixing augmentation CE is soft-label CE on the mixed labels."""

from pydantic import Field

from mixdistill.distill.base import step_output
from mixdistill.losses import kl_div, mixed_cross_entropy
from mixdistill.online.base import OnlineDistiller, OnlineParams
from mixdistill.registry import METHODS


class DMLParams(OnlineParams):
    temperature: float = Field(1.0, gt=0)


@METHODS.register("dml")
class DML(OnlineDistiller):
    source = 'Zhang, Xiang, Hospedales, Lu, "Deep Mutual Learning", CVPR 2018'
    Params = DMLParams

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        batch = self.mix(images, labels, info)
        logits = [peer(batch.images) for peer in self.peers]
        m = len(logits)
        ce = sum(mixed_cross_entropy(z, labels, batch) for z in logits)
        kl = sum(kl_div(z_i, z_j.detach(), T) * T**2 for i, z_i in enumerate(logits)
                 for j, z_j in enumerate(logits) if j != i) / (m - 1)
        return step_output(logits[0], {"ce": ce, "kl": kl}, labels, batch)
