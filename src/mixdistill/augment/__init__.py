"""Mixed-sample augmentation: batched, device-side views and mixes that return a ``MixedBatch`` record
(README: "Mixed-sample augmentation")."""

from .mix import (autoaugment, box_mask, crop_flip, cut_n_mix, cutmix, cutout, derangement, draw_boxes, flip, identity,
                  mixup, mixup_two_perm, pmu, sample_beta)
from .pick import PICK_CRITERIA, cutmix_pick, pick_scores
from .record import MixedBatch
from .registry import (AUGMENTATIONS, LABEL_PRESERVING, augment_params, augment_uses_teacher, make_augment,
                       register_augment, resolve_augment_params, unregister_augment)

__all__ = [
    "AUGMENTATIONS",
    "LABEL_PRESERVING",
    "MixedBatch",
    "PICK_CRITERIA",
    "augment_params",
    "augment_uses_teacher",
    "resolve_augment_params",
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
    "register_augment",
    "sample_beta",
    "unregister_augment",
]
