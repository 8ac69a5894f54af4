"""KD (Hinton et al.): ``ce_weight * CE + kd_weight * T^2 * KL_T(teacher || student)``, batch-mean."""

from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams
from mixdistill.distill.registry import DISTILLERS
from mixdistill.losses import cross_entropy, kd_loss


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)


@DISTILLERS.register("kd")
class KD(Distiller):
    Params = KDParams

    def forward_train(self, images, labels, info):
        p = self.params
        teacher_logits = self.teacher_logits(images)
        logits = self.student(images)
        return logits, {
            "ce": p.ce_weight * cross_entropy(logits, labels),
            "kd": p.kd_weight * kd_loss(logits, teacher_logits, p.temperature),
        }
