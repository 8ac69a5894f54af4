"""Forwards over many images at once (evaluation, a teacher's logit cache): on a CPU, in chunks small enough for
its caches. The activations of a 1,000-image batch outgrow them; ``benchmarks/eval_chunks.py`` times both ways."""

from __future__ import annotations

from typing import Callable

import torch

CPU_CHUNK = 128  # images per forward on a CPU (docs/speed.md: "Evaluation on a CPU runs in chunks")


def forward_in_chunks(forward: Callable, images: torch.Tensor, chunk: int | None = None):
    """``forward(images)``, computed ``chunk`` images at a time (default: ``CPU_CHUNK`` for images on a CPU, all
    at once elsewhere) and joined along the batch: a tensor, or tuples, lists and dicts of them."""
    if chunk is None:
        chunk = CPU_CHUNK if images.device.type == "cpu" else len(images)
    if len(images) <= chunk:
        return forward(images)
    return _join([forward(part) for part in images.split(chunk)])


def _join(parts: list):
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, dict):
        return {key: _join([p[key] for p in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_join(list(items)) for items in zip(*parts))
    raise TypeError(f"cannot join forward outputs of type {type(first).__name__}")
