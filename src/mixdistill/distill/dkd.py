"""DKD: Decoupled Knowledge Distillation (Zhao, Cui, Song, Qiu, Liang, CVPR 2022, arXiv 2203.08679).

Follows mdistiller (github megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``):

    loss = ce_weight * CE(z_s, y) + min(epoch / warmup, 1) * (alpha * TCKD + beta * NCKD)

with mdistiller's 1-based epoch, i.e. ``(info.epoch + 1) / warmup`` here. At temperature T:

- TCKD: KL between the binary distributions [p_gt, 1 - p_gt] of teacher and student, times T^2,
  summed over the batch and divided by B.
- NCKD: KL between the teacher's and the student's distributions over the non-target classes (the
  target logit is pushed out of the softmax by subtracting 1000, as mdistiller does), times T^2 / B.

The binary log-probabilities are computed as ``log_softmax`` / ``logsumexp`` differences instead of
mdistiller's ``log(sum of probabilities)``: the same value, without ``log(0)`` when p_gt rounds to 1.

Per pair: mdistiller's CIFAR-100 configs set ``beta`` per teacher-student pair (8, 6 or 2; nothing else under
DKD). ``DKD.pair_params`` reads them from ``resources/pair_params.yaml``, and a run config on a listed pair takes
the pair's value for every parameter it leaves unset (``RunConfig``); the class default (8) is mdistiller's
``cfg.py`` default, which the pairs without a DKD section of their own use.

Augmentation: like ``kd``, teacher and student both see ``self.mix(...)``'s images. With a mixing
record (K > 1 sources) the CE term is soft-label CE on the mixed labels, and the target class of DKD
(which decides the binary split and which class is removed for NCKD) is the label of **source 0** (the
base / first image of the mix). DKD has no soft-target form; source 0 is the record's base image, and
for two-source mixes ``weights[:, 0]`` is its share.
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.losses import mixed_cross_entropy
from mixdistill.registry import METHODS
from mixdistill.resources import pair_params


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each already times T^2 and batch-summed / B (weights are applied by the caller)."""
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    batch_size = s.shape[0]
    gt_mask = F.one_hot(target, s.shape[1]).bool()

    def binary_log_probs(z):  # [B, 2]: log p_gt, log (1 - p_gt)
        log_all = torch.logsumexp(z, dim=1)
        log_gt = z.gather(1, target[:, None]).squeeze(1) - log_all
        log_other = torch.logsumexp(z.masked_fill(gt_mask, float("-inf")), dim=1) - log_all
        return torch.stack([log_gt, log_other], dim=1)

    log_bs, log_bt = binary_log_probs(s), binary_log_probs(t)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / batch_size

    log_ns = F.log_softmax(s - 1000.0 * gt_mask, dim=1)
    p_nt = F.softmax(t - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_ns, p_nt, reduction="sum") / batch_size
    return tckd * temperature**2, nckd * temperature**2


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0) -> torch.Tensor:
    """mdistiller's ``dkd_loss``: alpha * TCKD + beta * NCKD (without the warm-up factor)."""
    tckd, nckd = dkd_terms(student_logits, teacher_logits, target, temperature)
    return alpha * tckd + beta * nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with its 1-based epoch; ``epoch`` here is 0-based."""
    return 1.0 if warmup <= 0 else min((epoch + 1) / warmup, 1.0)


class DKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    alpha: float = Field(1.0, ge=0, description="weight of TCKD (target-class KD)")
    beta: float = Field(8.0, ge=0, description="weight of NCKD (non-target-class KD); unset, a pair listed in "
                                               "resources/pair_params.yaml takes mdistiller's beta for it (6 or 2)")
    temperature: float = Field(4.0, gt=0)
    warmup: int = Field(20, ge=0, description="epochs over which the DKD term ramps up linearly (0: none)")


# names mdistiller's configs use for a network this package also registers under another name
_PAIR_NAMES = {"mobile_half": "MobileNetV2"}


@METHODS.register("dkd")
class DKD(Distiller):
    source = 'Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv 2203.08679)'
    Params = DKDParams

    @classmethod
    def pair_params(cls, teacher: str | None, student: str | None) -> dict:
        """The parameters mdistiller's config for this pair sets (``{"beta": ...}``), {} for a pair it has none for."""
        return pair_params("dkd", _PAIR_NAMES.get(teacher, teacher), _PAIR_NAMES.get(student, student))

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_logits = batch.teacher_logits if batch.teacher_logits is not None else self.teacher_logits(batch.images)
        logits = self.student(batch.images)
        target = labels[batch.sources[:, 0]]  # the label of source 0 for mixed samples (see module docstring)
        tckd, nckd = dkd_terms(logits, teacher_logits, target, p.temperature)
        return step_output(logits, {
            "ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
            "dkd": warmup_factor(info.epoch, p.warmup) * (p.alpha * tckd + p.beta * nckd),
        }, labels, batch, stats={"tckd": tckd.detach(), "nckd": nckd.detach()})
