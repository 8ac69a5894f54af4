"""DIST: Knowledge Distillation from A Stronger Teacher (Huang, You, Wang, Qian, Xu, NeurIPS 2022, arXiv 2205.10536).

DIST is not in mdistiller; this follows the authors' release (github hunto/DIST_KD, whose ``classification``
submodule is github hunto/image_classification_sota: the loss in ``lib/models/losses/dist_kd.py``, its wiring in
``lib/models/losses/kd_loss.py`` and the CIFAR-100 recipe ``configs/strategies/distill/dist_cifar.yaml``).

With ``y_s = softmax(z_s / tau)`` and ``y_t = softmax(z_t / tau)`` ([B, C]) and the Pearson correlation of two
vectors ``rho(a, b) = <a - mean(a), b - mean(b)> / (|a - mean(a)| |b - mean(b)| + 1e-8)`` (the released eps, added
to the product of the norms):

- inter-class relation: ``1 - mean_n rho(y_s[n, :], y_t[n, :])`` (per sample, across the classes);
- intra-class relation: ``1 - mean_c rho(y_s[:, c], y_t[:, c])`` (per class column, across the batch);
- ``loss = ce_weight * CE + kd_weight * (beta * tau^2 * inter + gamma * tau^2 * intra)``.

Released CIFAR-100 defaults: ``kd: dist_t4`` is ``DIST(beta=1, gamma=1, tau=4)``, with ``ori_loss_weight: 1.``
(``ce_weight``) and ``kd_weight: 2.`` (``kd_weight``) in ``dist_cifar.yaml``.

Augmentation: like ``kd``, teacher and student both see ``self.mix(...)``'s images: the loss uses logits only, so
under mixing the teacher's logits are those of the same mixed images (CutMixPick's pool logits are reused). The
intra-class term is computed per class column over the batch, so it needs no labels: a mixed batch enters it as it
is. The CE term is ``mixed_cross_entropy`` against the record's mixed labels (plain CE on an unmixed batch, which
is the released ``ori_loss``, CE without label smoothing in the CIFAR recipe). The relations are computed in fp32
with autocast off.
"""

import torch
from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import mixed_cross_entropy
from mixdistill.registry import METHODS

PEARSON_EPS = 1e-8


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = PEARSON_EPS) -> torch.Tensor:
    """[N]: the Pearson correlation of row n of ``a`` with row n of ``b`` ([N, M] each), eps added to the
    product of the centred norms (the release's cosine similarity of the centred rows)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - the batch mean of the per-sample correlations across classes ([B, C] probabilities)."""
    return 1.0 - pearson_rows(y_s, y_t).mean()


def intra_class_relation(y_s: torch.Tensor, y_t: torch.Tensor) -> torch.Tensor:
    """1 - the class mean of the per-class correlations across the batch (columns of [B, C])."""
    return inter_class_relation(y_s.t(), y_t.t())


def dist_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               tau: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(tau^2 * inter-class relation, tau^2 * intra-class relation), fp32 with autocast off."""
    with torch.autocast(student_logits.device.type, enabled=False):
        y_s = torch.softmax(student_logits.float() / tau, dim=1)
        y_t = torch.softmax(teacher_logits.float() / tau, dim=1)
        return tau**2 * inter_class_relation(y_s, y_t), tau**2 * intra_class_relation(y_s, y_t)


def dist_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 1.0, gamma: float = 1.0,
              tau: float = 4.0) -> torch.Tensor:
    """The released ``DIST.forward``: beta * tau^2 * inter + gamma * tau^2 * intra."""
    inter, intra = dist_terms(student_logits, teacher_logits, tau)
    return beta * inter + gamma * intra


class DISTParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="weight of the CE term (the release's ori_loss_weight)")
    kd_weight: float = Field(2.0, ge=0, description="weight of the DIST term (the release's kd_loss_weight; "
                                                    "2 in its CIFAR-100 recipe)")
    beta: float = Field(1.0, ge=0, description="weight of the inter-class relation")
    gamma: float = Field(1.0, ge=0, description="weight of the intra-class relation")
    tau: float = Field(4.0, gt=0, description="temperature of both softmaxes (the release's dist_t4 on CIFAR-100); "
                                              "both relations are multiplied by tau^2")


@METHODS.register("dist")
class DIST(Distiller):
    source = ('Huang, You, Wang, Qian, Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022 '
              '(arXiv 2205.10536)')
    Params = DISTParams

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student(batch.images)
        inter, intra = dist_terms(logits, teacher_logits, p.tau)
        return step_output(logits, {
            "ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
            "dist": p.kd_weight * (p.beta * inter + p.gamma * intra),
        }, labels, batch, stats={"inter": inter.detach(), "intra": intra.detach()})
