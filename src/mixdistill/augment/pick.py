"""CutMixPick (wang2022): build a pool of CutMix images and keep the ones the networks find hardest."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F

from .mix import check_choice, cutmix, global_rng_seeded_from
from .record import MixedBatch

PICK_CRITERIA = ("kl", "teacher_entropy", "student_entropy")
KL_TEMPERATURE = 4.0


@contextmanager
def _mode(model: torch.nn.Module, train: bool):
    """Put every submodule in train/eval mode, then restore each submodule's own previous mode."""
    before = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, was_training in before:
            m.training = was_training


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1)


def pick_scores(criterion: str, teacher_logits: torch.Tensor, student_logits: torch.Tensor | None) -> torch.Tensor:
    """Per-sample scores [N]; larger = picked first.

    kl: KL(softmax(z_t/4) || softmax(z_s/4)) summed over classes, without the T^2 factor;
    teacher_entropy / student_entropy: entropy of the softmax at T = 1.
    """
    if criterion == "teacher_entropy":
        return _entropy(teacher_logits)
    if criterion == "student_entropy":
        return _entropy(student_logits)
    log_pt = F.log_softmax(teacher_logits.float() / KL_TEMPERATURE, dim=1)
    log_ps = F.log_softmax(student_logits.float() / KL_TEMPERATURE, dim=1)
    return (log_pt.exp() * (log_pt - log_ps)).sum(1)


def cutmix_pick(
    images,
    labels,
    *,
    generator,
    teacher: torch.nn.Module,
    student: torch.nn.Module,
    criterion: str = "kl",
    n_runs: int = 2,
    alpha: float = 1.0,
    student_train_mode: bool = False,
    box_rounding: str = "exact",
) -> MixedBatch:
    """CutMixPick (wang2022).

    Runs ``cutmix`` ``n_runs`` times (each with its own lam, box and derangement, as wang2022) to get a pool
    of ``n_runs * B`` images, scores every pool image without gradient and keeps the ``B`` images with the
    LARGEST scores (``criterion``: see ``pick_scores``; default ``kl``). Kept images are returned in pool
    order (run 0 first).

    The teacher runs in eval mode under ``torch.inference_mode``. The student is scored in eval mode under
    ``torch.no_grad`` unless ``student_train_mode=True``: wang2022's released code scores with the student in
    train mode, which updates its BatchNorm running statistics (and applies dropout). Both networks get
    their previous train/eval modes back afterwards.

    The record's sources / weights refer to the rows of the ORIGINAL batch. ``teacher_logits`` holds the
    teacher's logits of the kept images (ordinary tensors, usable with autograd), so the caller need not run
    the teacher again. ``info['scores']``: scores of the kept images; ``info['pool_index']``: their
    positions in the pool; ``info['lam']``: the lam of each run.
    """
    check_choice("criterion", criterion, PICK_CRITERIA)
    if n_runs < 1:
        raise ValueError(f"cutmix_pick: n_runs must be >= 1, got {n_runs}")
    b = images.shape[0]
    runs = [cutmix(images, labels, generator=generator, alpha=alpha, partner="derangement", box_rounding=box_rounding)
            for _ in range(n_runs)]
    pool = torch.cat([r.images for r in runs])

    with _mode(teacher, False), torch.inference_mode():
        t_logits = teacher(pool)
    s_logits = None
    if criterion != "teacher_entropy":
        # train-mode scoring draws dropout masks from the global RNG: seeded from the generator
        rng = global_rng_seeded_from(generator, pool.device) if student_train_mode else nullcontext()
        with _mode(student, student_train_mode), torch.no_grad(), rng:
            s_logits = student(pool)
    with torch.inference_mode():
        scores = pick_scores(criterion, t_logits, s_logits)
        keep = torch.topk(scores, b).indices.sort().values

    # Out of inference mode: clones are ordinary tensors.
    keep = keep.clone()
    return MixedBatch(
        images=pool[keep],
        sources=torch.cat([r.sources for r in runs])[keep],
        weights=torch.cat([r.weights for r in runs])[keep],
        boxes=torch.cat([r.boxes for r in runs])[keep],
        info={"scores": scores[keep].clone(), "pool_index": keep, "lam": [r.info["lam"] for r in runs]},
        teacher_logits=t_logits[keep].clone(),
    )
