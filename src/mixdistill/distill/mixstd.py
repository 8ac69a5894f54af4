"""MIXSTD (choi2023, MIX-KD): distillation on a mixed batch with per-sample std temperatures.

The whole step uses the two-permutation mixed batch (FMU by default; ``augment=pmu`` for PMU);
teacher and student see the same mixed batch. Each network's logits are divided by that sample's
unbiased std over classes (gradient flows through the student's std; ``eps`` guards a zero std,
0 reproduces the released code). Loss: ``ce_weight * softCE(mixed labels, z_s/std_s) + kd_weight *
KL(softmax(z_t/std_t) || softmax(z_s/std_s))``, batch-mean, no T^2 and no fixed temperature.
"""

from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import mixstd_terms
from mixdistill.registry import METHODS


class MixSTDParams(MethodParams):
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)
    eps: float = Field(1e-7, ge=0, description="added to the per-sample std (released code: 0)")


@METHODS.register("mixstd")
class MixSTD(Distiller):
    source = ('choi2023 (MIXSTD): Choi, Jeon, Shukla, Turaga, "Understanding the Role of Mixup in Knowledge '
              'Distillation", WACV 2023 (arXiv 2211.03946)')
    Params = MixSTDParams
    default_augment = "mixup_two_perm"

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student(batch.images)
        ce, kl = mixstd_terms(logits, teacher_logits, batch.soft_targets(labels, logits.shape[1]), p.eps)
        return step_output(logits, {"ce": p.ce_weight * ce, "kd": p.kd_weight * kl}, labels, batch)
