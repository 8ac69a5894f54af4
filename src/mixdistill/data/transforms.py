"""Batched augmentation and normalization that run on the images' device.

No per-sample Python loops and no host synchronisation: the random parameters are drawn on the CPU
(from a CPU ``torch.Generator``, so results do not depend on the device) and copied to the device
without blocking; the pixel work is one indexed copy. Inputs are never modified.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def copy_to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def random_crop_flip(
    images: torch.Tensor, padding: int, generator: torch.Generator | None, flip: bool = True,
    return_views: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Random crop with zero padding, then random horizontal flip, per sample.

    Same distribution as torchvision's ``RandomCrop(size, padding)`` + ``RandomHorizontalFlip()``: each
    sample is zero-padded by ``padding`` on every side and cropped back to ``H x W`` at offsets drawn
    uniformly from ``0..2*padding`` (rows and columns independently), then flipped with probability 0.5.
    ``images``: uint8 or float ``[B, C, H, W]`` on any device. ``generator``: a CPU generator (or None for
    the default CPU generator). Returns a new tensor of the same dtype, device and shape; with ``return_views``
    also each sample's view id (:func:`crop_flip_views`), a CPU int64 ``[B]``.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError("generator must be a CPU torch.Generator")
    B = images.shape[0]
    # random parameters, drawn on the CPU in a fixed order: row offsets, column offsets, flips
    dy = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (B,), generator=generator)
    flips = torch.rand(B, generator=generator) < 0.5 if flip else torch.zeros(B, dtype=torch.bool)
    out = crop_flip(images, padding, dy, dx, flips)
    return (out, (dy * (2 * padding + 1) + dx) * 2 + flips.long()) if return_views else out


def crop_flip_views(padding: int, flip: bool) -> torch.Tensor:
    """The view ids :func:`random_crop_flip` draws from, in order: ``(2 * padding + 1)^2`` crops, each flipped or
    not (without ``flip`` only the unflipped ones). A view's id is ``(dy * (2 * padding + 1) + dx) * 2 + flipped``."""
    return torch.arange(0, (2 * padding + 1) ** 2 * 2, 1 if flip else 2)


def view_parameters(views: torch.Tensor, padding: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dy, dx, flipped) of view ids (the inverse of the id :func:`random_crop_flip` returns)."""
    side = 2 * padding + 1
    return views // 2 // side, views // 2 % side, views % 2 == 1


def crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
              flips: torch.Tensor) -> torch.Tensor:
    """The crop at offsets (``dy``, ``dx``) of each zero-padded sample, flipped where ``flips``: CPU tensors
    ``[B]`` (copied to the images' device without blocking)."""
    B, C, H, W = images.shape
    device = images.device
    params = copy_to_device(torch.stack([dy, dx, flips.long()]), device)
    dy, dx, flipped = params[0], params[1], params[2]

    # every crop of every padded sample and of its mirror image is a strided view of the two; a flipped crop at
    # column dx is the mirror's crop at column 2 * padding - dx. One indexing copy takes each sample's crop.
    p = padding
    padded = torch.nn.functional.pad(images, (p, p, p, p))
    Hp, Wp = H + 2 * p, W + 2 * p
    both = torch.stack([padded, padded.flip(3)])  # [2, B, C, Hp, Wp]
    crops = both.as_strided((2, B, C, 2 * p + 1, 2 * p + 1, H, W),
                            (B * C * Hp * Wp, C * Hp * Wp, Hp * Wp, Wp, 1, Wp, 1))
    return crops[flipped, torch.arange(B, device=device), :, dy, torch.where(flipped.bool(), 2 * p - dx, dx)]


def _stats(values, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=dtype)
    if t.device != images.device:
        t = copy_to_device(t, images.device)
    return t.reshape(1, -1, 1, 1)


def normalize(
    images_uint8: torch.Tensor,
    mean: Sequence[float] | torch.Tensor,
    std: Sequence[float] | torch.Tensor,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``(x / 255 - mean) / std`` per channel on a batch ``[B, C, H, W]``; returns a new ``dtype`` tensor.

    ``mean``/``std`` hold C values (or one, used for every channel); pass tensors already on the
    images' device to avoid a small copy per call.
    """
    if images_uint8.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got shape {list(images_uint8.shape)}")
    C = images_uint8.shape[1]
    mean, std = _stats(mean, images_uint8, dtype), _stats(std, images_uint8, dtype)
    if mean.numel() not in (1, C) or std.numel() not in (1, C):
        raise ValueError(f"mean/std need 1 or {C} values, got {mean.numel()} and {std.numel()}")
    return images_uint8.to(dtype, copy=True).div_(255).sub_(mean).div_(std)
