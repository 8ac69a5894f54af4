"""Every training method by its config name (``method.name``): importing this module imports the offline
distillers and the online methods, which register themselves into ``METHODS``, then the plugins: the modules
named in ``$MIXDISTILL_PLUGINS`` (comma-separated) and the ``mixdistill.plugins`` entry points of installed
packages, which register their own methods, augmentations and models (``register_method``, ``register_augment``,
``register_model``), so that the command line and configs know them too."""

from __future__ import annotations

import mixdistill.distill  # noqa: F401  (registration)
import mixdistill.online  # noqa: F401  (registration)
from mixdistill.augment.registry import AUGMENTATIONS
from mixdistill.registry import METHODS, NAME_PATTERN, load_plugins, remove_registered

__all__ = ["METHODS", "load_plugins", "register_method", "unregister_method"]

BUILT_IN = frozenset(METHODS)


def register_method(name: str, cls=None, *, replace: bool = False):
    """Register a :class:`~mixdistill.distill.Distiller` subclass as training method ``name`` (usable as
    ``method=name`` in a config or override; its ``Params`` fields become the ``method`` section's keys). Use as
    ``@register_method("name")`` or ``register_method("name", cls)``. A built-in name cannot be taken;
    registering a name again needs ``replace=True``."""
    from mixdistill.distill.base import Distiller, MethodParams

    def register(cls):
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"method name {name!r}: use letters, digits, '_' and '-'")
        if not (isinstance(cls, type) and issubclass(cls, Distiller)):
            raise TypeError(f"method '{name}': {cls!r} is not a subclass of mixdistill.distill.Distiller")
        if not (isinstance(cls.Params, type) and issubclass(cls.Params, MethodParams)):
            raise TypeError(f"method '{name}': {cls.__name__}.Params must subclass mixdistill.distill.MethodParams")
        if cls.forward_train is Distiller.forward_train:
            raise TypeError(f"method '{name}': {cls.__name__} does not define forward_train")
        _check_params(name, cls)
        if cls.default_augment is not None and cls.default_augment not in AUGMENTATIONS:
            raise ValueError(f"method '{name}': default_augment '{cls.default_augment}' is not a registered "
                             "augmentation")
        if name in BUILT_IN:
            raise ValueError(f"method '{name}' is built in; choose another name")
        if name in METHODS:
            if not replace:
                raise ValueError(f"method '{name}' is registered already (pass replace=True to replace it)")
            del METHODS[name]
        return METHODS.register(name)(cls)

    return register if cls is None else register(cls)


def _check_params(name: str, cls) -> None:
    """A method's ``Params`` as the ``method`` section can hold them: no field named ``name`` (the section's own
    key, the method's name), and every default passing its own field's type and range (pydantic does not check
    defaults, so a bad one would reach a config unvalidated)."""
    from pydantic import ValidationError

    fields = cls.Params.model_fields
    if "name" in fields:
        raise TypeError(f"method '{name}': {cls.__name__}.Params has a field 'name', which is the method section's "
                        "own key (method.name); rename it")
    defaults = {key: field.get_default(call_default_factory=True) for key, field in fields.items()
                if not field.is_required()}
    try:
        cls.Params.model_validate(defaults)
    except ValidationError as err:
        bad = [e for e in err.errors() if e["type"] != "missing"]
        if bad:
            key = ".".join(map(str, bad[0]["loc"]))
            raise TypeError(f"method '{name}': the default {defaults.get(key)!r} of {cls.__name__}.Params.{key} "
                            f"fails its own type: {bad[0]['msg']}") from None


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (built-in ones stay)."""
    remove_registered(METHODS, "method", name, BUILT_IN)


PLUGINS = load_plugins()
