"""CE: the student alone (baselines and teacher training), on the configured augmentation.

With a mixing augmentation the loss is soft-label CE against the record's mixed labels, which for
two sources is exactly ``lam * CE(y_a) + (1 - lam) * CE(y_b)`` (das2020's mixup/CutMix teachers), and
per-sample two-permutation mixup gives choi2023's mixup-trained teachers.
"""

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import mixed_cross_entropy
from mixdistill.registry import METHODS


class CEParams(MethodParams):
    pass


@METHODS.register("ce")
class CE(Distiller):
    source = "cross-entropy on the labels, no distillation (teachers and baselines)"
    Params = CEParams
    needs_teacher = False

    def forward_train(self, images, labels, info):
        batch = self.mix(images, labels, info)
        logits = self.student(batch.images)
        return step_output(logits, {"ce": mixed_cross_entropy(logits, labels, batch)}, labels, batch)
