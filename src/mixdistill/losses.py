"""Functional losses. Every function computes in fp32 whatever the autocast dtype of its inputs.

Notation follows the README's "Methods" section: ``kd_loss`` is RepDistiller's ``DistillKL``
(batch-mean KL(softmax(t/T) || softmax(s/T)) times T^2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy with integer labels."""
    return F.cross_entropy(logits.float(), labels)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets_c * log_softmax(logits)_c (targets: rows of probabilities)."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
           reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) without the T^2 factor.

    reduction: ``batchmean`` (sum over classes, mean over samples), ``mean`` (mean over all B*C
    elements, PyTorch's default and das2020's setting: 1/C of batchmean), ``sum`` or ``none``
    (per-sample values, [B]).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    elementwise = log_p_t.exp() * (log_p_t - log_p_s)
    if reduction == "batchmean":
        return elementwise.sum() / student_logits.shape[0]
    if reduction == "mean":
        return elementwise.mean()
    if reduction == "sum":
        return elementwise.sum()
    if reduction == "none":
        return elementwise.sum(dim=1)
    raise ValueError(f"unknown reduction {reduction!r}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Hinton KD term as RepDistiller's DistillKL: T^2 * batchmean KL(softmax(t/T) || softmax(s/T))."""
    return kl_div(student_logits, teacher_logits, temperature) * temperature**2


def std_normalized(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """choi2023's MIXSTD temperature: each sample's logits divided by their unbiased std over classes
    (+ eps; the released code has eps = 0). Gradient flows through the std."""
    logits = logits.float()
    return logits / (logits.std(dim=1, keepdim=True, unbiased=True) + eps)


def mixstd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, soft_targets: torch.Tensor,
                 eps: float = 1e-7) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft-label CE on std-normalised student logits, batch-mean KL between the std-normalised
    softmaxes), without any T^2 factor. Weights are applied by the caller."""
    s = std_normalized(student_logits, eps)
    t = std_normalized(teacher_logits, eps)
    return soft_cross_entropy(s, soft_targets), kl_div(s, t, temperature=1.0, reduction="batchmean")


def mixed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, batch) -> torch.Tensor:
    """CE against a MixedBatch's targets: plain CE for one-source views, soft-label CE otherwise.
    For two sources this equals lam * CE(y_a) + (1 - lam) * CE(y_b) exactly."""
    if batch.num_sources == 1:
        return cross_entropy(logits, labels[batch.sources[:, 0]])
    return soft_cross_entropy(logits, batch.soft_targets(labels, logits.shape[1]))
