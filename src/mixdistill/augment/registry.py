"""Augmentations by name, and ``make_augment`` to bind a config's parameters to one."""

from __future__ import annotations

import functools
import inspect
from typing import Annotated, Literal, Optional

from pydantic import Field, NonNegativeInt, PositiveInt, StrictBool, ValidationError, create_model

from ..errors import ConfigError, UnknownNameError
from ..schema import Schema
from .mix import BOX_ROUNDINGS, autoaugment, crop_flip, cut_n_mix, cutmix, cutout, flip, identity, mixup, mixup_two_perm, pmu
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

# The views that keep every image's label (one source per sample).
LABEL_PRESERVING = ("identity", "flip", "crop_flip", "cutout", "autoaugment")

# Arguments every augmentation takes and a config cannot set.
_CALL_ARGS = ("images", "labels", "generator")
# Runtime arguments (objects, not config values): given at call time, never through make_augment.
_RUNTIME_ARGS = ("teacher", "student")

_Probability = Annotated[float, Field(ge=0, le=1)]
_Positive = Annotated[float, Field(gt=0)]
_Channels = Optional[tuple[float, ...]]
# Every configurable parameter's type and range, by name (a name means the same thing wherever it occurs).
# alpha > 0: Beta(0, 0) is not a distribution; augment=none is how mixing is turned off.
PARAM_TYPES = {
    "p": _Probability,
    "prob": _Probability,
    "alpha": _Positive,
    "padding": NonNegativeInt,
    "flip": StrictBool,
    "size": PositiveInt,
    "shared_mask": StrictBool,
    "per_sample": StrictBool,
    "per_sample_boxes": StrictBool,
    "student_train_mode": StrictBool,
    "n": PositiveInt,
    "n_runs": PositiveInt,
    "sampling": Literal["replacement", "exact"],
    "partner": Literal["derangement", "permutation"],
    "criterion": Literal[PICK_CRITERIA],
    "box_rounding": Literal[BOX_ROUNDINGS],
    "mean": _Channels,
    "std": _Channels,
}


class _Params(Schema):
    pass


@functools.cache
def _params_model(name: str) -> type[_Params]:
    fields = {}
    for key, default in augment_params(name).items():
        fields[key] = (PARAM_TYPES[key], ... if default is inspect.Parameter.empty else default)
    return create_model(f"{name}_params", __base__=_Params, **fields)


def augment_params(name: str) -> dict:
    """The configurable parameters of augmentation ``name`` and their defaults (``inspect.Parameter.empty``
    for a required one)."""
    fn = AUGMENTATIONS[name]
    return {
        k: p.default
        for k, p in inspect.signature(fn).parameters.items()
        if k not in _CALL_ARGS and k not in _RUNTIME_ARGS
    }


def augment_uses_teacher(name: str) -> bool:
    """Does augmentation ``name`` score its candidates with the teacher (and so need a method with one)?"""
    return "teacher" in inspect.signature(AUGMENTATIONS[name]).parameters


def resolve_augment_params(name: str, **params) -> dict:
    """Every parameter of augmentation ``name``, type- and range-checked, defaults filled in (``mean`` and
    ``std`` stay None when not given: the dataset's are bound when training).

    Unknown name -> UnknownNameError; unknown parameter, wrong type or value out of range -> ConfigError
    naming it.
    """
    if name not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", name, AUGMENTATIONS)
    valid = augment_params(name)
    for key in params:
        if key not in valid:
            raise ConfigError(
                f"unknown parameter '{key}' for augmentation '{name}'; valid parameters: {', '.join(valid) or '(none)'}"
            )
    filled = {k: None for k in ("mean", "std") if k in valid and k not in params}
    try:
        model = _params_model(name)(**{**filled, **params})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"invalid value {e.get('input')!r} for parameter '{key}' of augmentation '{name}': "
                          f"{e['msg'].removeprefix('Value error, ')}") from None
    out = model.model_dump()
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def make_augment(name: str, **params):
    """``fn(images, labels, *, generator, **runtime) -> MixedBatch`` with ``params`` checked and bound.

    Runtime objects (``teacher``, ``student`` for cutmix_pick) are passed at call time. ``mean``/``std``
    left None are the caller's to bind (the dataset's).
    """
    resolved = resolve_augment_params(name, **params)
    bound = {k: v for k, v in resolved.items() if not (k in ("mean", "std") and v is None)}
    return functools.partial(AUGMENTATIONS[name], **bound)
