"""Mixed-sample augmentation: batched, device-side views and mixes that return a ``MixedBatch`` record
(methods.md section 2)."""

from .mix import (
    autoaugment,
    box_mask,
    crop_flip,
    cut_n_mix,
    cutmix,
    cutout,
    derangement,
    draw_boxes,
    flip,
    identity,
    mixup,
    mixup_two_perm,
    pmu,
    sample_beta,
)
from .pick import PICK_CRITERIA, cutmix_pick, pick_scores
from .record import MixedBatch
from .registry import AUGMENTATIONS, augment_params, make_augment

__all__ = [
    "AUGMENTATIONS",
    "MixedBatch",
    "PICK_CRITERIA",
    "augment_params",
    "autoaugment",
    "box_mask",
    "crop_flip",
    "cut_n_mix",
    "cutmix",
    "cutmix_pick",
    "cutout",
    "derangement",
    "draw_boxes",
    "flip",
    "identity",
    "make_augment",
    "mixup",
    "mixup_two_perm",
    "pick_scores",
    "pmu",
    "sample_beta",
]
