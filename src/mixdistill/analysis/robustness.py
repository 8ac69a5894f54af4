"""Accuracy under FGSM and PGD (L-infinity) attacks.

The model sees normalised images ``(x - mean) / std``. ``eps`` and ``step_size`` are in pixel units
(images in [0, 1]); per channel they become ``eps / std`` in normalised units, and every adversarial image
is clamped to the valid normalised range ``[(0 - mean) / std, (1 - mean) / std]``. The model runs in eval
mode; only the input gets gradients.

- FGSM: ``x' = clamp(x + eps * sign(grad_x CE(f(x), y)))``.
- PGD (Madry et al.): optional uniform random start in the eps-ball, then ``steps`` iterations of
  ``x' = clamp(proj_eps(x' + step_size * sign(grad)))``; default ``step_size = 2.5 * eps / steps``.

``eps = 0`` leaves every image unchanged, so the accuracy equals the clean accuracy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F


def _channel(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=x.dtype, device=x.device).reshape(-1)
    return t.expand(x.shape[1]).reshape(1, -1, 1, 1) if t.numel() == 1 else t.reshape(1, -1, 1, 1)


class _Bounds:
    def __init__(self, x: torch.Tensor, mean, std):
        m, s = _channel(mean, x), _channel(std, x)
        self.scale = 1 / s  # pixel units -> normalised units
        self.lo, self.hi = (0 - m) / s, (1 - m) / s

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.hi), self.lo)


def _input_grad(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(model(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def fgsm(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, mean, std) -> torch.Tensor:
    """FGSM adversarial images (normalised) for a batch of normalised ``images``."""
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if eps == 0:
        return images.detach().clone()
    b = _Bounds(images, mean, std)
    grad = _input_grad(model, images, labels)
    return b.clamp(images.detach() + eps * b.scale * grad.sign())


def pgd(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, *, mean, std,
        steps: int = 10, step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """L-infinity PGD adversarial images (normalised)."""
    if eps < 0 or steps < 1:
        raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    if eps == 0:
        return images.detach().clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    b = _Bounds(images, mean, std)
    x0 = images.detach()
    radius = eps * b.scale
    lo, hi = torch.maximum(x0 - radius, b.lo), torch.minimum(x0 + radius, b.hi)
    x = x0
    if random_start:
        noise = torch.rand(x0.shape, generator=generator, dtype=torch.float32).to(x0.device, x0.dtype)
        x = torch.maximum(torch.minimum(x0 + (2 * noise - 1) * radius, hi), lo)
    for _ in range(steps):
        grad = _input_grad(model, x, labels)
        x = torch.maximum(torch.minimum(x + step_size * b.scale * grad.sign(), hi), lo)
    return x


@torch.no_grad()
def adversarial_accuracy(model: torch.nn.Module, batches: Iterable, *, attack: str, eps: float, mean, std,
                         steps: int = 10, step_size: float | None = None, random_start: bool = True,
                         seed: int = 0) -> dict:
    """Top-1 accuracy (%) under ``attack`` ("fgsm" or "pgd") over ``batches`` of normalised
    ``(images, labels, ...)``. Returns ``{"attack", "eps", "accuracy", "clean_accuracy", ...}``."""
    if attack not in ("fgsm", "pgd"):
        raise ValueError(f"attack must be fgsm or pgd, got {attack!r}")
    was = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = clean = total = 0
    try:
        for batch in batches:
            x, y = batch[0], batch[1]
            clean += int((model(x).argmax(1) == y).sum())
            if attack == "fgsm":
                adv = fgsm(model, x, y, eps, mean=mean, std=std)
            else:
                adv = pgd(model, x, y, eps, mean=mean, std=std, steps=steps, step_size=step_size,
                          random_start=random_start, generator=generator)
            correct += int((model(adv).argmax(1) == y).sum())
            total += len(y)
    finally:
        model.train(was)
    out = {"attack": attack, "eps": eps, "accuracy": 100.0 * correct / max(1, total),
           "clean_accuracy": 100.0 * clean / max(1, total), "samples": total}
    if attack == "pgd":
        out.update(steps=steps, step_size=2.5 * eps / steps if step_size is None else step_size,
                   random_start=random_start)
    return out
