"""KD + a stronger view (wang2022, "Knowledge distillation thrives on data augmentation").

Each step uses the clean loader batch ``x`` and an augmented batch ``x'`` made from it:
``ce_weight * CE(z_s(x), y) + kd_weight * [KL_T(z_t(x) || z_s(x)) + KL_T(z_t(x') || z_s(x'))]``
(each KL batch-mean times T^2). The augmented batch gets the KL term only, against the teacher
re-run on ``x'`` (or CutMixPick's pool logits, which are exactly that); its mixed labels are unused
unless ``aug_ce_weight`` > 0 (an ablation). The student forwards ``x`` and ``x'`` separately, so
BatchNorm sees each batch on its own, as in the released code.
"""

import torch
from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import cross_entropy, kd_loss, mixed_cross_entropy
from mixdistill.registry import METHODS


class KDViewParams(MethodParams):
    temperature: float = Field(4.0, gt=0)
    ce_weight: float = Field(0.1, ge=0)
    kd_weight: float = Field(0.9, ge=0)
    aug_ce_weight: float = Field(0.0, ge=0, description="mixed-label CE on the augmented batch (ablation)")


@METHODS.register("kd_view")
class KDView(Distiller):
    source = ('wang2022: Wang, Lohit, Jones, Fu, "What Makes a \'Good\' Data Augmentation in Knowledge '
              'Distillation", NeurIPS 2022 (arXiv 2012.02909)')
    Params = KDViewParams
    default_augment = "cutmix"

    def forward_train(self, images, labels, info):
        p = self.params
        view = self.mix(images, labels, info)
        if view.teacher_logits is not None:
            teacher_clean, teacher_view = self.teacher_logits(images), view.teacher_logits
        else:  # one teacher pass over both batches (eval mode: no batch statistics involved)
            teacher_clean, teacher_view = self.teacher_logits(torch.cat([images, view.images])).chunk(2)
        logits = self.student(images)
        logits_view = self.student(view.images)
        losses = {
            "ce": p.ce_weight * cross_entropy(logits, labels),
            "kd": p.kd_weight * kd_loss(logits, teacher_clean, p.temperature),
            "kd_view": p.kd_weight * kd_loss(logits_view, teacher_view, p.temperature),
        }
        if p.aug_ce_weight > 0:
            losses["ce_view"] = p.aug_ce_weight * mixed_cross_entropy(logits_view, labels, view)
        return step_output(logits, losses, labels, view, logits_of_batch=False)  # the clean batch's logits
