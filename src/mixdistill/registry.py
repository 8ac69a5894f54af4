"""A tiny name -> object registry, and the one registry of training methods (``METHODS``) that the offline
distillers (``distill/``) and the online methods (``online/``) register into; ``mixdistill.methods`` imports
them all so that the registry is complete."""

from __future__ import annotations

from mixdistill.errors import UnknownNameError


class Registry(dict):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

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
            raise UnknownNameError(self.kind, name, self.keys())
        return self[name]


def remove_registered(registry: dict, kind: str, name: str, built_in) -> None:
    """Remove the plugin ``name`` from ``registry``; a built-in name, or one not registered (a misspelt name would
    leave the plugin registered), is a ValueError."""
    if name in built_in:
        raise ValueError(f"{kind} '{name}' is built in")
    if name not in registry:
        raise ValueError(f"{kind} '{name}' is not registered (registered: {', '.join(sorted(registry))})")
    del registry[name]


METHODS = Registry("method")
