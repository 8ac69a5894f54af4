"""CE: the student alone (baselines and teacher training)."""

from mixdistill.distill.base import Distiller, MethodParams
from mixdistill.distill.registry import DISTILLERS
from mixdistill.losses import cross_entropy


class CEParams(MethodParams):
    pass


@DISTILLERS.register("ce")
class CE(Distiller):
    Params = CEParams
    needs_teacher = False

    def forward_train(self, images, labels, info):
        logits = self.student(images)
        return logits, {"ce": cross_entropy(logits, labels)}
