"""Atomic checkpoint files.

A checkpoint is ``{'model': student state_dict, ...}`` so that it doubles as a teacher checkpoint in
the RepDistiller/CRD format. It also holds the optimiser, scheduler, epoch, step, RNG state, the
method's own modules, the resolved config and the metrics so far. Loading always uses
``weights_only=True``: a checkpoint can never execute code.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from mixdistill.errors import CheckpointError

FORMAT = "mixdistill-checkpoint-v1"


def save_atomic(obj, path: str | Path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over ``path``:
    an interrupted write never leaves a corrupt file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it holds objects that would execute code on load "
            f"(loading uses weights_only=True). Detail: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt: {str(err).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    return obj
