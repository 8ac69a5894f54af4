"""A tiny name -> object registry, and the one registry of training methods (``METHODS``) that the offline
distillers (``distill/``) and the online methods (``online/``) register into; ``mixdistill.methods`` imports
them all so that the registry is complete, then the plugins (:func:`load_plugins`), which may register methods,
augmentations and models."""

from __future__ import annotations

import importlib
import os
import re

from mixdistill.errors import MixdistillError, UnknownNameError

# a name a plugin may register (a method, an augmentation, a model): what a config key=value and a run name can hold
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
PLUGINS_ENV = "MIXDISTILL_PLUGINS"  # the plugin modules to import (comma-separated): mixdistill.methods imports them
ENTRY_POINT_GROUP = "mixdistill.plugins"  # installed packages' plugins
# said with an unknown method, augmentation or model name: a run trained with a plugin, its plugin not loaded here
PLUGIN_NOTE = f"a plugin's? name its module in ${PLUGINS_ENV}"


class Registry(dict):
    def __init__(self, kind: str, plugins: bool = False):
        super().__init__()
        self.kind, self.plugins = kind, plugins

    def register(self, name: str):
        def wrap(obj):
            if name in self:
                raise ValueError(f"{self.kind} '{name}' registered twice")
            self[name] = obj
            obj.registry_name = name
            return obj

        return wrap

    def get_or_raise(self, name: str):
        if name not in self:
            raise UnknownNameError(self.kind, name, self.keys(), PLUGIN_NOTE if self.plugins else "")
        return self[name]


def remove_registered(registry: dict, kind: str, name: str, built_in) -> None:
    """Remove the plugin ``name`` from ``registry``; a built-in name, or one not registered (a misspelt name would
    leave the plugin registered), is a ValueError."""
    if name in built_in:
        raise ValueError(f"{kind} '{name}' is built in")
    if name not in registry:
        raise ValueError(f"{kind} '{name}' is not registered (registered: {', '.join(sorted(registry))})")
    del registry[name]


METHODS = Registry("method", plugins=True)


def load_plugins() -> list[str]:
    """Import the plugins: every ``mixdistill.plugins`` entry point, then every module named in
    ``$MIXDISTILL_PLUGINS``. A plugin that fails to import is a MixdistillError naming it (its own error chained)."""
    from importlib.metadata import entry_points

    loaded = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            point.load()
        except Exception as err:
            raise MixdistillError(f"plugin {point.value} (entry point '{point.name}' of group {ENTRY_POINT_GROUP}) "
                                  f"failed to import: {type(err).__name__}: {err}") from err
        loaded.append(point.value)
    for module in (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",")):
        if module:
            try:
                importlib.import_module(module)
            except Exception as err:
                raise MixdistillError(f"plugin {module} (from ${PLUGINS_ENV}) failed to import: "
                                      f"{type(err).__name__}: {err}") from err
            loaded.append(module)
    return loaded
