"""Load weights into a zoo model from a file or an in-memory checkpoint.

Accepts ``{'model': state_dict}`` (RepDistiller's and our own format),
``{'state_dict': state_dict}`` or a bare state dict; strips ``module.``
(DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes.  Files are read
with ``torch.load(..., map_location='cpu', weights_only=True)``.  Every problem
becomes one ``CheckpointError`` with a message a user can act on.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping

import torch
from torch import nn

from ..errors import CheckpointError

_PREFIXES = ("module.", "_orig_mod.")
_SHOW = 5  # how many offending keys a message lists


def _listing(keys) -> str:
    keys = list(keys)
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _unpickler_detail(msg: str) -> str:
    """The informative line of torch's long weights-only error message (torch's advice to load with
    weights_only=False, and terminal colour codes, left out)."""
    boiler = ("weights only load failed", "please file an issue", "check the documentation", "in pytorch 2.6",
              "re-running `torch.load`", "weightsunpickler error")
    lines = [_ANSI.sub("", ln).strip() for ln in msg.splitlines()]
    lines = [ln for ln in lines if ln]
    useful = [ln for ln in lines if not ln.lower().startswith(boiler)]
    return (useful[0] if useful else "unpickling error").rstrip(".")


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar")


def names_a_file(source: str) -> bool:
    """A checkpoint given by its path (a folder in it, or a checkpoint's suffix), not by a name (a benchmark
    teacher's, ``resnet32x4``)."""
    return os.sep in source or "/" in source or os.path.splitext(source)[1].lower() in CHECKPOINT_SUFFIXES


def read_checkpoint(path) -> object:
    """``torch.load`` a file safely (``weights_only=True``: it can never execute code), turning every
    failure into one CheckpointError line. The one checkpoint reader of the project."""
    path = os.fspath(path)
    if os.path.isdir(path):
        kept = [name for name in ("last.pt", "best.pt") if os.path.isfile(os.path.join(path, name))]
        raise CheckpointError(f"checkpoint {path} is a directory: name a checkpoint file in it"
                              + (f" ({' or '.join(os.path.join(path, name) for name in kept)})" if kept else ""))
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. pickle-protocol notices from the safe unpickler
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = _ANSI.sub("", str(e))
        if re.search(r"unsupported global|global .* is not an allowed global", msg, re.IGNORECASE):
            raise CheckpointError(
                f"refused to load checkpoint {path}: unpickling it would execute code or import objects "
                f"that safe loading does not allow ({_unpickler_detail(msg)}). Only use checkpoints "
                "from a trusted source, and re-save them as plain state dicts."
            ) from None
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch checkpoint "
            f"({_unpickler_detail(msg)})"
        ) from None
    except MemoryError:
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch checkpoint (out of memory "
                              "reading it)") from None
    except Exception as e:  # truncated zip, garbage bytes, plain text, ...
        first = _ANSI.sub("", str(e)).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        reason = f"{type(e).__name__}: {first}" if first else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: the file is truncated or corrupt, or not a PyTorch checkpoint "
            f"({reason})"
        ) from None


def extract_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the state dict in a checkpoint object and strip wrapper prefixes."""
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{source} does not contain a state dict (expected {{'model': state_dict}}, "
            f"{{'state_dict': state_dict}} or a state dict; got {type(obj).__name__})"
        )
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{source} does not contain a state dict: entries are not tensors: {_listing(bad)} "
            "(expected {'model': state_dict}, {'state_dict': state_dict} or a state dict)"
        )
    sd = {str(k): v for k, v in obj.items()}
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped = True
    return sd


def _classifier_key(model: nn.Module, own: Mapping[str, torch.Tensor]) -> str | None:
    """The state_dict key of the final linear layer's weight, if it can be found."""
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for name, module in model.named_modules():
            if module is head:
                return f"{name}.weight"
    weights = [k for k, v in own.items() if k.endswith(".weight") and v.ndim == 2]
    return weights[-1] if weights else None


def load_weights(model: nn.Module, path_or_state, strict: bool = True) -> nn.Module:
    """Load a checkpoint file or object into ``model`` (in place) and return the model.

    With ``strict=False`` missing and unexpected keys are tolerated, but shape
    mismatches are still errors.
    """
    if isinstance(path_or_state, (str, os.PathLike)):
        source = f"checkpoint {os.fspath(path_or_state)}"
        obj = read_checkpoint(path_or_state)
    else:
        source = "checkpoint"
        obj = path_or_state
    sd = extract_state_dict(obj, source)
    own = model.state_dict()

    problems = []
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        problems.append(
            "; ".join(parts) + f" (is it a checkpoint of a different architecture than {type(model).__name__}?)"
        )

    cls_key = _classifier_key(model, own)
    mismatched = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if cls_key in mismatched and sd[cls_key].ndim == 2 and sd[cls_key].shape[1] == own[cls_key].shape[1]:
        bias_key = cls_key[: -len("weight")] + "bias"
        mismatched = [k for k in mismatched if k not in (cls_key, bias_key)]
        problems.append(
            f"checkpoint has {sd[cls_key].shape[0]} classes, model has {own[cls_key].shape[0]} "
            f"(classifier '{cls_key}'); create the model with num_classes={sd[cls_key].shape[0]}"
        )
    if mismatched:
        shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}" for k in mismatched]
        problems.append(f"{len(mismatched)} shape mismatches: {_listing(shapes)}")

    if problems:
        raise CheckpointError(f"cannot load {source} into {type(model).__name__}: " + "; ".join(problems))
    try:
        model.load_state_dict(sd, strict=strict)
    except Exception as e:  # anything the checks above did not foresee
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load {source} into {type(model).__name__}: {first}") from None
    return model
