"""Functional losses. Every function computes in fp32 whatever the autocast dtype of its inputs.

Notation follows the README's "Methods" section: ``kd_loss`` is RepDistiller's ``DistillKL``
(batch-mean KL(softmax(t/T) || softmax(s/T)) times T^2).

Label smoothing (``train.label_smoothing``): the CE terms against the labels (``cross_entropy``,
``mixed_cross_entropy``, the soft-label CE of ``mixstd_terms``) use the targets ``(1 - eps) * y + eps / C``, where
``y`` is the one-hot label or a MixedBatch's soft targets. ``eps`` is the ``smoothing`` argument, else the one
set by the ``label_smoothing(eps)`` context (the trainer enters it around every training forward), else 0. At 0
every function computes exactly what it computed before the option existed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F

_LABEL_SMOOTHING: ContextVar[float] = ContextVar("mixdistill_label_smoothing", default=0.0)


@contextlib.contextmanager
def label_smoothing(eps: float) -> Iterator[None]:
    """Within the block, the label CE terms smooth their targets by ``eps`` (0 <= eps < 1)."""
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"label smoothing {eps} must lie in [0, 1)")
    token = _LABEL_SMOOTHING.set(float(eps))
    try:
        yield
    finally:
        _LABEL_SMOOTHING.reset(token)


def current_label_smoothing(smoothing: float | None = None) -> float:
    """``smoothing`` if given, else the enclosing ``label_smoothing`` context's eps (0 outside one)."""
    return _LABEL_SMOOTHING.get() if smoothing is None else float(smoothing)


def smooth_targets(targets: torch.Tensor, eps: float) -> torch.Tensor:
    """``(1 - eps) * targets + eps / C`` for rows of probabilities [B, C] (unchanged at eps = 0)."""
    if eps == 0:
        return targets
    return (1.0 - eps) * targets + eps / targets.shape[1]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, smoothing: float | None = None) -> torch.Tensor:
    """Mean cross-entropy with integer labels; label smoothing as the module docstring says (PyTorch's
    ``label_smoothing``, whose targets are ``(1 - eps) * onehot + eps / C``)."""
    eps = current_label_smoothing(smoothing)
    if eps == 0:
        return F.cross_entropy(logits.float(), labels)
    return F.cross_entropy(logits.float(), labels, label_smoothing=eps)


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c targets_c * log_softmax(logits)_c (targets: rows of probabilities)."""
    return -(targets.float() * F.log_softmax(logits.float(), dim=1)).sum(dim=1).mean()


def kl_div(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
           reduction: str = "batchmean") -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) without the T^2 factor.

    reduction: ``batchmean`` (sum over classes, mean over samples), ``mean`` (mean over all B*C
    elements, PyTorch's default and das2020's setting: 1/C of batchmean), ``sum`` or ``none``
    (per-sample values, [B]). A temperature that is not positive is refused (at 0 the softmaxes are NaN).
    """
    if not temperature > 0:
        raise ValueError(f"temperature {temperature} must be > 0")
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


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0,
            logit_stand: bool = False) -> torch.Tensor:
    """Hinton KD term as RepDistiller's DistillKL: T^2 * batchmean KL(softmax(t/T) || softmax(s/T)); with
    ``logit_stand`` both networks' logits are first :func:`logit_standardized` (the released LS-KD ``kd_loss``)."""
    if logit_stand:
        student_logits, teacher_logits = logit_standardized(student_logits), logit_standardized(teacher_logits)
    return kl_div(student_logits, teacher_logits, temperature) * temperature**2


def logit_standardized(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Sun et al.'s logit standardisation (CVPR 2024, "Logit Standardization in Knowledge Distillation", released
    ``normalize``): each sample's logits minus their mean over classes, divided by their unbiased std plus ``eps``.
    Gradient flows through the mean and the std. A KD loss on standardised logits does not change when a network's
    logits of a sample are shifted or scaled (by a positive factor): only their relations are matched."""
    logits = logits.float()
    return (logits - logits.mean(dim=1, keepdim=True)) / (logits.std(dim=1, keepdim=True, unbiased=True) + eps)


def std_normalized(logits: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """choi2023's MIXSTD temperature: each sample's logits divided by their unbiased std over classes
    (+ eps; the released code has eps = 0). Gradient flows through the std."""
    logits = logits.float()
    return logits / (logits.std(dim=1, keepdim=True, unbiased=True) + eps)


def mixstd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, soft_targets: torch.Tensor,
                 eps: float = 1e-7, smoothing: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft-label CE on std-normalised student logits, batch-mean KL between the std-normalised
    softmaxes), without any T^2 factor. Weights are applied by the caller. ``soft_targets`` (the labels) are
    label-smoothed as the module docstring says."""
    s = std_normalized(student_logits, eps)
    t = std_normalized(teacher_logits, eps)
    targets = smooth_targets(soft_targets, current_label_smoothing(smoothing))
    return soft_cross_entropy(s, targets), kl_div(s, t, temperature=1.0, reduction="batchmean")


def mixed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, batch,
                        smoothing: float | None = None) -> torch.Tensor:
    """CE against a MixedBatch's targets: plain CE for one-source views, soft-label CE otherwise.
    For two sources this equals lam * CE(y_a) + (1 - lam) * CE(y_b) exactly. With label smoothing eps the
    targets are ``(1 - eps) * soft_targets + eps / C`` (for one source: PyTorch's label-smoothed CE, the same)."""
    eps = current_label_smoothing(smoothing)
    if batch.num_sources == 1:
        return cross_entropy(logits, labels[batch.sources[:, 0]], eps)
    return soft_cross_entropy(logits, smooth_targets(batch.soft_targets(labels, logits.shape[1]), eps))
