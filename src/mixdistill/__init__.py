"""mixdistill: knowledge distillation with mixed-sample data augmentation.

The Python API (README: "Python API"): ``train``, ``evaluate``, ``open_run``, ``collect_results``,
``register_method``, ``register_augment``; the model zoo: ``create_model``, ``list_models``, ``register_model``.
Each is imported on first use, so that ``import mixdistill`` (and ``mixdistill --help``) does not pay for importing
torch.
"""

__version__ = "0.1.0"

# name -> the module that defines it. The registering functions come from the registries' own modules, not
# from api.py, so that a plugin imported while the config layer loads (MIXDISTILL_PLUGINS) can use them.
_LAZY = {
    "create_model": "mixdistill.models",
    "list_models": "mixdistill.models",
    "register_model": "mixdistill.models",
    "unregister_model": "mixdistill.models",
    "train": "mixdistill.api",
    "evaluate": "mixdistill.api",
    "open_run": "mixdistill.engine.run",
    "collect_results": "mixdistill.results",
    "register_method": "mixdistill.methods",
    "unregister_method": "mixdistill.methods",
    "register_augment": "mixdistill.augment.registry",
    "unregister_augment": "mixdistill.augment.registry",
}

__all__ = [*_LAZY, "__version__"]


def __getattr__(name):  # lazy, so `mixdistill --help` does not pay for importing torch models
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mixdistill' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__})
