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
record (K > 1 sources) the CE term is soft-label CE on the mixed labels. DKD has no soft-target form: its
target class decides the binary split and which class is removed for NCKD. ``mixed_target`` says which:

- ``first`` (default): the label of **source 0** (the base / first image of the mix; for two-source mixes
  ``weights[:, 0]`` is its share). On an unmixed batch this is mdistiller's DKD, and it is what this package
  did before the option existed, so existing runs keep their results.
- ``weighted``: the two-label (K-label) form. TCKD and NCKD are computed once per source k = 1..K with that
  source's label y_k as the target class, and combined per sample with the record's weights w_k:

      L_DKD = mean_n sum_k w_{n,k} * (alpha * TCKD_k(n) + beta * NCKD_k(n))

  (both terms times T^2, as above). A one-source record (no mixing) gives exactly the ``first`` form, and so does
  a mixed sample whose weights are (1, 0).

``logit_stand=true``: Sun et al.'s logit standardisation (CVPR 2024; their ``mdistiller/distillers/DKD.py``): both
networks' logits z-scored per sample before TCKD and NCKD (the CE term keeps the raw logits); see ``kd``.
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, step_output
from mixdistill.distill.kd import LOGIT_STAND
from mixdistill.losses import logit_standardized, mixed_cross_entropy
from mixdistill.registry import METHODS
from mixdistill.resources import pair_params, paired_teachers


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor,
              temperature: float, sample_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(TCKD, NCKD), each already times T^2 and batch-summed / B (alpha and beta are applied by the caller).

    ``sample_weights``: optional [B]; each sample's TCKD and NCKD are multiplied by its weight before the batch sum
    (the ``weighted`` mixed target: one call per source, weights = that source's column of the record)."""
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
    log_ns = F.log_softmax(s - 1000.0 * gt_mask, dim=1)
    p_nt = F.softmax(t - 1000.0 * gt_mask, dim=1)
    if sample_weights is None:
        tckd = (log_bt.exp() * (log_bt - log_bs)).sum() / batch_size
        nckd = F.kl_div(log_ns, p_nt, reduction="sum") / batch_size
    else:
        w = sample_weights.to(s.dtype)[:, None]
        tckd = (w * (log_bt.exp() * (log_bt - log_bs))).sum() / batch_size
        nckd = (w * F.kl_div(log_ns, p_nt, reduction="none")).sum() / batch_size
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
    mixed_target: Literal["first", "weighted"] = Field(
        "first", description="target class of TCKD/NCKD on a mixed batch: first = source 0's label (mdistiller's "
                             "DKD on unmixed batches, the behaviour before this option); weighted = "
                             "sum_k w_k (alpha TCKD_k + beta NCKD_k) over the record's sources")
    logit_stand: bool = Field(False, description=LOGIT_STAND)


# names mdistiller's configs use for a network this package also registers under another name
_PAIR_NAMES = {"mobile_half": "MobileNetV2"}


@METHODS.register("dkd")
class DKD(Distiller):
    source = 'Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022 (arXiv 2203.08679)'
    Params = DKDParams
    teacher_sees_loader_view = True

    @classmethod
    def pair_params(cls, teacher: str | None, student: str | None) -> dict:
        """The parameters mdistiller's config for this pair sets (``{"beta": ...}``), {} for a pair it has none for."""
        return pair_params("dkd", _PAIR_NAMES.get(teacher, teacher), _PAIR_NAMES.get(student, student))

    @classmethod
    def paired_teachers(cls, student: str) -> list[str]:
        """The teachers whose pair with ``student`` has parameters of its own (``pair_params``)."""
        names = {v: k for k, v in _PAIR_NAMES.items()}
        return [names.get(t, t) for t in paired_teachers("dkd", _PAIR_NAMES.get(student, student))]

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_logits = self.batch_teacher_logits(batch)
        logits = self.student(batch.images)
        z_s, z_t = ((logit_standardized(logits), logit_standardized(teacher_logits)) if p.logit_stand
                    else (logits, teacher_logits))
        if p.mixed_target == "weighted" and batch.num_sources > 1:
            tckd = nckd = 0
            for k in range(batch.num_sources):  # sum_k w_k * (TCKD, NCKD) with source k's label as target class
                t_k, n_k = dkd_terms(z_s, z_t, labels[batch.sources[:, k]], p.temperature,
                                     sample_weights=batch.weights[:, k])
                tckd, nckd = tckd + t_k, nckd + n_k
        else:
            target = labels[batch.sources[:, 0]]  # the label of source 0 for mixed samples (see module docstring)
            tckd, nckd = dkd_terms(z_s, z_t, target, p.temperature)
        return step_output(logits, {
            "ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
            "dkd": warmup_factor(info.epoch, p.warmup) * (p.alpha * tckd + p.beta * nckd),
        }, labels, batch, stats={"tckd": tckd.detach(), "nckd": nckd.detach()})
