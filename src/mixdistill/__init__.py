"""mixdistill: knowledge distillation with mixed-sample data augmentation."""

__version__ = "0.1.0"

__all__ = ["create_model", "list_models", "__version__"]


def __getattr__(name):  # lazy, so `mixdistill --help` does not pay for importing torch models
    if name in ("create_model", "list_models"):
        from mixdistill import models

        return getattr(models, name)
    raise AttributeError(f"module 'mixdistill' has no attribute {name!r}")
