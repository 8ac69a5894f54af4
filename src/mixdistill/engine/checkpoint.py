"""Training checkpoints.

A checkpoint is ``{'model': student state_dict, ...}`` so that it doubles as a teacher checkpoint in
the RepDistiller/CRD format. It also holds the optimiser, scheduler, epoch, step, RNG state, the
method's own modules, the resolved config and the metrics so far (``last.pt``); ``best.pt`` holds the same
without the optimiser, scheduler and RNG state, at the best evaluated epoch. It is written whole
(``mixdistill.files``) and read by the project's one safe reader (``models.checkpoint.read_checkpoint``,
``weights_only=True``: a checkpoint can never execute code).
"""

from __future__ import annotations

from pathlib import Path

import torch

from mixdistill.errors import CheckpointError
from mixdistill.files import save_torch
from mixdistill.models.checkpoint import read_checkpoint

FORMAT = "mixdistill-checkpoint-v1"
# best.pt: a training checkpoint's weights, config and history at its best epoch, with ``best`` (metric, value,
# epoch) and without optimiser, scheduler and RNG state, so it cannot be resumed from
BEST_FORMAT = "mixdistill-best-v1"


def save_atomic(obj, path: str | Path) -> None:
    """Write a checkpoint whole: an interrupted write never leaves a corrupt file under the final name."""
    save_torch(obj, path)


def load_checkpoint(path: str | Path) -> dict:
    obj = read_checkpoint(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict (it holds a {type(obj).__name__})")
    return obj


def non_finite_tensors(tree, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a nested dict/list that hold NaN or inf (one host sync)."""
    named = []

    def walk(node, name):
        if torch.is_tensor(node):
            if node.is_floating_point() and node.numel():
                named.append((name, node))
        elif isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{name}.{key}" if name else str(key))
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f"{name}[{i}]")

    walk(tree, prefix)
    if not named:
        return []
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).tolist()
    return [name for (name, _), ok in zip(named, finite) if not ok]
