"""Augmentations by name, ``make_augment`` to bind a config's parameters to one, and ``register_augment`` to add
one from outside the package (its parameters typed from its annotations and defaults)."""

from __future__ import annotations

import functools
import inspect
import typing
from typing import Annotated, Any, Literal, Optional

from pydantic import (BeforeValidator, Field, NonNegativeInt, PositiveInt, StrictBool, TypeAdapter, ValidationError,
                      create_model)

from ..errors import ConfigError, UnknownNameError
from ..registry import NAME_PATTERN, PLUGIN_NOTE, remove_registered
from ..schema import Schema
from .mix import (BOX_ROUNDINGS, SPEC_BOX_ROUNDINGS, autoaugment, crop_flip, cut_n_mix, cutmix, cutout, flip, identity,
                  mixup, mixup_two_perm, pmu)
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
    "box_rounding": Annotated[Literal[BOX_ROUNDINGS],
                              BeforeValidator(lambda v: SPEC_BOX_ROUNDINGS.get(v, v) if isinstance(v, str) else v)],
    "mean": _Channels,
    "std": _Channels,
}


BUILT_IN = frozenset(AUGMENTATIONS)
# The parameter types of augmentations registered from outside the package (``register_augment``), by
# augmentation: their parameter names need not be in PARAM_TYPES, and a name there may mean something else.
_OWN_PARAM_TYPES: dict[str, dict[str, Any]] = {}


class _Params(Schema):
    pass


@functools.cache
def _params_model(name: str) -> type[_Params]:
    fields = {}
    own = _OWN_PARAM_TYPES.get(name, {})
    for key, default in augment_params(name).items():
        fields[key] = (own[key] if key in own else PARAM_TYPES[key],
                       ... if default is inspect.Parameter.empty else default)
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
    ``std`` stay None when not given: the dataset's are bound when training), as a config holds them (tuples as
    lists).

    Unknown name -> UnknownNameError; unknown parameter, wrong type or value out of range -> ConfigError
    naming it.
    """
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in _validated_params(name, params).items()}


def _validated_params(name: str, params: dict) -> dict:
    """:func:`resolve_augment_params`'s values as their types make them (a tuple parameter a tuple)."""
    if name not in AUGMENTATIONS:
        raise UnknownNameError("augmentation", name, AUGMENTATIONS, PLUGIN_NOTE)
    valid = augment_params(name)
    for key in params:
        if key not in valid:
            import difflib

            close = difflib.get_close_matches(key, list(valid), n=2, cutoff=0.6)
            raise ConfigError(
                f"unknown parameter '{key}' for augmentation '{name}'"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + f"; valid parameters: {', '.join(valid) or '(none)'}")
    filled = {k: None for k in ("mean", "std") if k in valid and k not in params}
    try:
        model = _params_model(name)(**{**filled, **params})
    except ValidationError as err:
        e = err.errors()[0]
        key = ".".join(str(x) for x in e["loc"])
        raise ConfigError(f"invalid value {e.get('input')!r} for parameter '{key}' of augmentation '{name}': "
                          f"{e['msg'].removeprefix('Value error, ')}") from None
    values = dict(model)
    if "mean" in values and "std" in values:
        _check_normalisation(name, values["mean"], values["std"])
    return values


def _check_normalisation(name: str, mean, std) -> None:
    """``mean`` and ``std`` of a pixel-space augmentation: both or neither (one alone was ignored, or a traceback
    mid-run), one value per channel in each, std > 0."""
    if (mean is None) != (std is None):
        given, missing = ("mean", "std") if std is None else ("std", "mean")
        raise ConfigError(f"augmentation '{name}': {given} without {missing}: they go together (the normalisation its "
                          f"pixel-space steps undo and redo); give both, or neither for the dataset's")
    if mean is not None and (not mean or not std or (len(mean) != len(std) and 1 not in (len(mean), len(std)))):
        raise ConfigError(f"augmentation '{name}': mean and std give one value per channel each, or one for all "
                          f"(got {len(mean)} and {len(std)})")
    if std is not None and any(v <= 0 for v in std):
        raise ConfigError(f"augmentation '{name}': std values are > 0 (got {list(std)})")


def make_augment(name: str, **params):
    """``fn(images, labels, *, generator, **runtime) -> MixedBatch`` with ``params`` checked and bound.

    Runtime objects (``teacher``, ``student`` for cutmix_pick) are passed at call time. ``mean``/``std``
    left None are the caller's to bind (the dataset's).
    """
    resolved = _validated_params(name, params)
    bound = {k: v for k, v in resolved.items() if not (k in ("mean", "std") and v is None)}
    return functools.partial(AUGMENTATIONS[name], **bound)


# -------------------------------------------------------------------------------- augmentations from outside

def _type_of_default(value) -> Any:
    if isinstance(value, bool):
        return StrictBool
    if isinstance(value, (int, float, str)):
        return type(value)
    if isinstance(value, (tuple, list)):
        kinds = {_type_of_default(v) for v in value}
        return tuple[kinds.pop() if len(kinds) == 1 else Any, ...]
    return None


def _own_param_types(name: str, fn) -> dict[str, Any]:
    """Each configurable parameter's type: its annotation, else PARAM_TYPES' type for a name listed there, else
    the type of its default (bool, int, float, str, a tuple of those). ``mean``/``std`` are always the dataset's
    normalisation (PARAM_TYPES)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        raise TypeError(f"augmentation '{name}': cannot read the signature of {fn!r}") from None
    params = signature.parameters
    missing = [a for a in _CALL_ARGS if a not in params]
    if missing:
        raise TypeError(f"augmentation '{name}' must take (images, labels, *, generator, ...): "
                        f"{', '.join(missing)} missing")
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation naming something not importable: read them one by one
        hints = {k: _resolved_annotation(name, fn, k, p.annotation) for k, p in params.items()
                 if p.annotation is not inspect.Parameter.empty and k not in _CALL_ARGS + _RUNTIME_ARGS}
    types = {}
    for key, p in params.items():
        if key in _CALL_ARGS or key in _RUNTIME_ARGS:
            continue
        if key == "name":
            raise TypeError(f"augmentation '{name}': a parameter 'name' would be the augment section's own key "
                            "(augment.name); rename it")
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"augmentation '{name}': *{key} cannot be configured; name every parameter")
        if p.kind is p.POSITIONAL_ONLY:
            raise TypeError(f"augmentation '{name}': parameter '{key}' is positional-only; it is passed by name")
        if key in ("mean", "std"):
            kind = PARAM_TYPES[key]
        elif key in hints:
            kind = hints[key]
        elif key in PARAM_TYPES:
            kind = PARAM_TYPES[key]
        else:
            kind = None if p.default is inspect.Parameter.empty else _type_of_default(p.default)
        if kind is None:
            raise TypeError(f"parameter '{key}' of augmentation '{name}' needs a type annotation (or a default of "
                            f"type bool, int, float, str or a tuple of them to take its type from)")
        types[key] = kind
    return types


def _resolved_annotation(name: str, fn, key: str, annotation):
    """A configurable parameter's annotation, a string (``from __future__ import annotations``) evaluated where
    ``fn`` is defined; one that names what is not there is a TypeError (typing it from its default instead would
    drop the range it declares)."""
    if not isinstance(annotation, str):
        return annotation
    try:
        return eval(annotation, getattr(fn, "__globals__", {}))  # what typing.get_type_hints does, one at a time
    except Exception as err:  # noqa: BLE001
        raise TypeError(f"augmentation '{name}': the annotation {annotation!r} of parameter '{key}' cannot be "
                        f"resolved where {getattr(fn, '__qualname__', fn)} is defined ({type(err).__name__}: {err}); "
                        "define the names it uses at module level") from None


def register_augment(name: str, fn=None, *, replace: bool = False):
    """Register ``fn(images, labels, *, generator, **params) -> MixedBatch`` as augmentation ``name`` (usable as
    ``augment=name`` in a config or override). Use as ``@register_augment("name")`` or
    ``register_augment("name", fn)``. Its parameters become the ``augment`` section's keys, validated like the
    built-in ones: each is typed by its annotation (``Annotated[float, Field(ge=0, le=1)]`` adds a range), else
    by PARAM_TYPES for a name the built-ins use (``p``, ``alpha``, ...), else by its default's type; a parameter
    named ``teacher`` (and ``student``) receives the models at call time, as cutmix_pick's does. A built-in name
    cannot be taken; registering a name again needs ``replace=True``."""

    def register(fn):
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or name == "none":
            raise ValueError(f"augmentation name {name!r}: use letters, digits, '_' and '-' (and not 'none')")
        if not callable(fn):
            raise TypeError(f"augmentation '{name}': {fn!r} is not callable")
        if name in BUILT_IN:
            raise ValueError(f"augmentation '{name}' is built in; choose another name")
        if name in AUGMENTATIONS and not replace:
            raise ValueError(f"augmentation '{name}' is registered already (pass replace=True to replace it)")
        types = _own_param_types(name, fn)
        previous = AUGMENTATIONS.get(name), _OWN_PARAM_TYPES.get(name)
        AUGMENTATIONS[name], _OWN_PARAM_TYPES[name] = fn, types
        _params_model.cache_clear()
        try:
            _params_model(name)  # every type is one pydantic can validate
            for key, default in augment_params(name).items():
                if default is not inspect.Parameter.empty and key not in ("mean", "std"):
                    try:
                        TypeAdapter(types[key]).validate_python(default)
                    except ValidationError as err:
                        raise TypeError(f"the default {default!r} of '{key}' fails its own type: "
                                        f"{err.errors()[0]['msg']}") from None
        except Exception as err:  # noqa: BLE001 - leave no trace of a registration that failed
            if previous[0] is None:
                del AUGMENTATIONS[name], _OWN_PARAM_TYPES[name]
            else:
                AUGMENTATIONS[name], _OWN_PARAM_TYPES[name] = previous
            _params_model.cache_clear()
            raise TypeError(f"augmentation '{name}': {str(err).splitlines()[0]}") from None
        return fn

    return register if fn is None else register(fn)


def unregister_augment(name: str) -> None:
    """Remove an augmentation registered with :func:`register_augment` (built-in ones stay)."""
    remove_registered(AUGMENTATIONS, "augmentation", name, BUILT_IN)
    _OWN_PARAM_TYPES.pop(name, None)
    _params_model.cache_clear()
