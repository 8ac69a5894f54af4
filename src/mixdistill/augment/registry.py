"""Augmentations by name, and ``make_augment`` to bind a config's parameters to one."""

from __future__ import annotations

import functools
import inspect

from ..errors import ConfigError, UnknownNameError
from .mix import autoaugment, crop_flip, cut_n_mix, cutmix, cutout, flip, identity, mixup, mixup_two_perm, pmu
from .pick import PICK_CRITERIA, cutmix_pick

AUGMENTATIONS = {
    "identity": identity,
    "flip": flip,
    "crop_flip": crop_flip,
    "cutout": cutout,
    "autoaugment": autoaugment,
    "mixup": mixup,
    "mixup_two_perm": mixup_two_perm,
    "pmu": pmu,
    "cutmix": cutmix,
    "cut_n_mix": cut_n_mix,
    "cutmix_pick": cutmix_pick,
}

# Arguments every augmentation takes and a config cannot set.
_CALL_ARGS = ("images", "labels", "generator")
# Runtime arguments (objects, not config values): given at call time, never through make_augment.
_RUNTIME_ARGS = ("teacher", "student")
_CHOICES = {
    "sampling": ("replacement", "exact"),
    "partner": ("derangement", "permutation"),
    "criterion": PICK_CRITERIA,
}


def augment_params(name: str) -> dict:
    """The configurable parameters of augmentation ``name`` and their defaults (``inspect.Parameter.empty``
    for a required one)."""
    fn = AUGMENTATIONS[name]
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if k not in _CALL_ARGS and k not in _RUNTIME_ARGS
    }


def make_augment(name: str, **params):
    """``fn(images, labels, *, generator, **runtime) -> MixedBatch`` with ``params`` bound.

    Unknown name -> UnknownNameError; unknown parameter or invalid choice -> ConfigError naming it.
    Runtime objects (``teacher``, ``student`` for cutmix_pick) are passed at call time.
    """
    if name not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", name, AUGMENTATIONS)
    valid = augment_params(name)
    for key, value in params.items():
        if key not in valid:
            raise ConfigError(
                f"unknown parameter '{key}' for augmentation '{name}'; valid parameters: {', '.join(valid) or '(none)'}"
            )
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(
                f"invalid value {value!r} for parameter '{key}' of augmentation '{name}'; choose one of {', '.join(_CHOICES[key])}"
            )
    return functools.partial(AUGMENTATIONS[name], **params)
