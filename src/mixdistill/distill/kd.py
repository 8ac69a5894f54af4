"""KD (Hinton et al.): ``ce_weight * CE + kd_weight * T^2 * KL_T(teacher || student)``, batch-mean.

Teacher and student see the same (possibly augmented) batch; with a mixing augmentation the CE term
is soft-label CE on the mixed labels. ``mix_kd`` is the same loss with choi2023's per-sample
two-permutation mixup as its default augmentation (their Mix-S grid at T = 4 vs T = 1).

``logit_stand=true`` is Sun et al.'s logit standardisation (CVPR 2024, arXiv 2403.01427; released code
github.com/sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py``): both networks' logits are
z-scored per sample (``losses.logit_standardized``) before the temperature, in the KD term only (the CE term keeps
the raw logits). Their CIFAR-100 runs pair it with ``temperature=2`` (3 on some pairs) and ``kd_weight=9``
(``--base-temp 2 --kd-weight 9``), the CE weight staying at 0.1.
"""

from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.registry import METHODS

LOGIT_STAND = ("z-score each sample's logits of both networks before the temperature in the KD term (Sun et al., "
               "CVPR 2024, logit standardization; their CIFAR-100 setting: temperature=2, kd_weight=9)")


class KDParams(MethodParams):
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)
    logit_stand: bool = Field(False, description=LOGIT_STAND)


@METHODS.register("kd")
class KD(Distiller):
    source = 'Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015 (arXiv 1503.02531)'
    Params = KDParams
    teacher_sees_loader_view = True

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student(batch.images)
        return step_output(logits, {
            "ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
            "kd": p.kd_weight * kd_loss(logits, teacher_logits, p.temperature, p.logit_stand),
        }, labels, batch)


@METHODS.register("mix_kd")
class MixKD(KD):
    source = ('choi2023 (Mix-S): Choi, Jeon, Shukla, Turaga, "Understanding the Role of Mixup in Knowledge '
              'Distillation", WACV 2023 (arXiv 2211.03946)')
    default_augment = "mixup_two_perm"
