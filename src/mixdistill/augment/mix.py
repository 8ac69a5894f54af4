"""Batched augmentation views and mixed-sample augmentations (README: "Mixed-sample augmentation").

Every function has the form ``fn(images, labels, *, generator, **params) -> MixedBatch``:

* ``images`` is a normalized float batch [B, C, H, W] on any device; it is never modified in place.
* ``generator`` is a CPU ``torch.Generator``. Every random parameter (lams, permutations, boxes, indices) is
  drawn from it on the CPU and moved to the images' device; pixel work is batched on the device (masks by
  broadcasting coordinates, gathers by index). No value is ever read back from the device.
* Beta(a, a) samples come from a numpy Generator seeded from ``generator`` (one CPU draw per call).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch

from ..errors import ConfigError
from .record import MixedBatch

# ----------------------------------------------------------------------------------------------- helpers


def _check_generator(generator: torch.Generator) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("augmentations need a CPU torch.Generator (all random parameters are drawn on the CPU)")


def check_choice(param: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"invalid value {value!r} for augmentation parameter '{param}'; choose one of {', '.join(map(str, choices))}")


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to ``device`` without blocking the host (through pinned memory for CUDA)."""
    device = torch.device(device)
    if device.type == "cpu":
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _arange_sources(b: int, device) -> torch.Tensor:
    return torch.arange(b, device=device).unsqueeze(1)


def _unmixed(images: torch.Tensor, out: torch.Tensor, boxes=None, info=None) -> MixedBatch:
    """Record of a non-mixing view: each output row comes from the same input row with weight 1."""
    b = images.shape[0]
    return MixedBatch(
        images=out,
        sources=_arange_sources(b, images.device),
        weights=torch.ones(b, 1, device=images.device),
        boxes=boxes,
        info=info or {},
    )


def seed_from(generator: torch.Generator) -> int:
    """A 62-bit seed drawn from ``generator`` (a CPU op), to seed numpy or torch's global RNG."""
    return int(torch.randint(2**62, (1,), generator=generator).item())


@contextmanager
def global_rng_seeded_from(generator: torch.Generator, device: torch.device | None = None):
    """Run a block that draws from torch's global RNG (torchvision ops, dropout) deterministically under
    ``generator``: the global CPU RNG (and ``device``'s, if CUDA) is seeded from it inside ``fork_rng``, so the
    global state is left as it was."""
    seed = seed_from(generator)
    cuda = device is not None and device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def sample_beta(alpha: float, size: int | tuple = (), generator: torch.Generator = None) -> torch.Tensor:
    """Beta(alpha, alpha) samples as a float64 CPU tensor of shape ``size``; alpha <= 0 gives lam = 1 (no mix)."""
    _check_generator(generator)
    if alpha <= 0:
        return torch.ones(size, dtype=torch.float64)
    rng = np.random.default_rng(seed_from(generator))
    return torch.from_numpy(np.asarray(rng.beta(alpha, alpha, size), dtype=np.float64))


def derangement(n: int, generator: torch.Generator) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (CPU int64 tensor).

    Rejection sampling of uniform permutations: the acceptance rate tends to 1/e, so about e tries.
    """
    _check_generator(generator)
    if n == 1:
        raise ValueError("no derangement of a single element exists (batch of size 1); use a plain permutation")
    ar = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=generator)
        if not bool((perm == ar).any()):
            return perm


def _partner(n: int, kind: str, generator: torch.Generator) -> torch.Tensor:
    return derangement(n, generator) if kind == "derangement" else torch.randperm(n, generator=generator)


def _distinct_partner(n: int, kind: str, generator: torch.Generator, taken: list[torch.Tensor]) -> torch.Tensor:
    """A partner permutation that gives no row a partner it already has in ``taken`` (CPU tensors; rejection
    sampling: about e^len(taken) draws, so a handful for Cut^nMix's n = 2 or 3)."""
    while True:
        perm = _partner(n, kind, generator)
        if not any(bool((perm == t).any()) for t in taken):
            return perm


BOX_ROUNDINGS = ("exact", "released")
# methods.md section 6 names the two roundings `correct` and `as_published`: the same two, recorded by these names
SPEC_BOX_ROUNDINGS = {"correct": "exact", "as_published": "released"}


def draw_boxes(lam: torch.Tensor, height: int, width: int, generator: torch.Generator,
               rounding: str = "exact") -> torch.Tensor:
    """CutMix boxes, one per entry of ``lam`` (CPU float tensor [N]) -> CPU int64 [N, 4] (y1, x1, y2, x2).

    Side ratio sqrt(1 - lam): box height floor(H * sqrt(1 - lam)), width floor(W * sqrt(1 - lam)); centre
    uniform over the pixels of the image; the box is then clipped to the image. ``rounding``: ``exact`` spans
    the side exactly (corners c - s//2 and c - s//2 + s); ``released`` spans c - s//2 .. c + s//2 as the
    released ``rand_bbox`` of CutMix, Good-DA-in-KD and Distilling-with-VRM does, one pixel short for odd s.
    """
    rounding = SPEC_BOX_ROUNDINGS.get(rounding, rounding) if isinstance(rounding, str) else rounding
    check_choice("box_rounding", rounding, BOX_ROUNDINGS)
    ratio = torch.sqrt(1.0 - lam.double())
    cut_h = torch.floor(height * ratio).long()
    cut_w = torch.floor(width * ratio).long()
    n = lam.shape[0]
    cy = torch.randint(height, (n,), generator=generator)
    cx = torch.randint(width, (n,), generator=generator)
    y1 = cy - cut_h // 2
    x1 = cx - cut_w // 2
    if rounding == "released":
        y2, x2 = cy + cut_h // 2, cx + cut_w // 2
    else:
        y2, x2 = y1 + cut_h, x1 + cut_w
    return torch.stack(
        [y1.clamp(0, height), x1.clamp(0, width), y2.clamp(0, height), x2.clamp(0, width)], dim=1
    )


def square_boxes(size: int, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Cutout holes: side ``size``, centre uniform over the image pixels, clipped -> CPU int64 [n, 4]."""
    cy = torch.randint(height, (n,), generator=generator)
    cx = torch.randint(width, (n,), generator=generator)
    y1, x1 = cy - size // 2, cx - size // 2
    return torch.stack(
        [y1.clamp(0, height), x1.clamp(0, width), (y1 + size).clamp(0, height), (x1 + size).clamp(0, width)], dim=1
    )


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bool [N, 1, H, W], True inside each box; ``boxes`` [N, 4] (y1, x1, y2, x2) on the target device."""
    device = boxes.device
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    y1, x1, y2, x2 = (boxes[:, i].view(-1, 1, 1) for i in range(4))
    return ((ys >= y1) & (ys < y2) & (xs >= x1) & (xs < x2)).unsqueeze(1)


def box_area_fraction(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area of each clipped box as a fraction of the image (float64, same device as ``boxes``)."""
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).double() / (height * width)


def _expand_boxes(boxes: torch.Tensor, b: int) -> torch.Tensor:
    """[N, n, 4] with N in {1, b} -> [b, n, 4] (a view when N == 1)."""
    return boxes.expand(b, -1, -1)


# ------------------------------------------------------------------------------------ non-mixing views


def identity(images, labels, *, generator) -> MixedBatch:
    """The batch unchanged (a copy, so the caller may modify it freely)."""
    return _unmixed(images, images.clone())


def flip(images, labels, *, generator, p: float = 0.5) -> MixedBatch:
    """Horizontal flip of each sample with probability ``p`` (one coin per sample).

    wang2022's released code applies torchvision's RandomHorizontalFlip to the whole batch tensor, which
    flips all samples or none; here every sample has its own coin. ``info['flipped']``: bool [B].
    """
    _check_generator(generator)
    b = images.shape[0]
    flipped = _to(torch.rand(b, generator=generator) < p, images.device)
    out = torch.where(flipped.view(b, 1, 1, 1), images.flip(-1), images)
    return _unmixed(images, out, info={"flipped": flipped})


def crop_flip(images, labels, *, generator, padding: int = 4, flip: bool = True, mean=None, std=None) -> MixedBatch:
    """Random crop with zero padding of ``padding`` pixels, then (if ``flip``) a random horizontal flip,
    per sample, batched (``mixdistill.data.transforms.random_crop_flip``).

    The input is normalized, so padding with 0 pads with the dataset mean colour. Give ``mean`` and ``std``
    (per channel) to pad with black instead, as a crop of the uint8 image does (wang2022's released code
    de-normalizes, crops and re-normalizes).
    """
    from ..data.transforms import random_crop_flip

    _check_generator(generator)
    if mean is None and std is None:
        return _unmixed(images, random_crop_flip(images, padding, generator, flip=flip))
    if mean is None or std is None:
        raise ConfigError("crop_flip needs both 'mean' and 'std' or neither")
    # Shift so that black (0 before normalizing) is 0, crop with zero padding, shift back.
    shift = (torch.as_tensor(mean, dtype=images.dtype) / torch.as_tensor(std, dtype=images.dtype)).view(1, -1, 1, 1)
    shift = _to(shift, images.device)
    out = random_crop_flip(images + shift, padding, generator, flip=flip) - shift
    return _unmixed(images, out)


def cutout(images, labels, *, generator, size: int = 8, shared_mask: bool = False) -> MixedBatch:
    """Cutout: one square hole of side ``size`` per image, centre uniform over the image, clipped to it,
    filled with 0 (in the normalized space, as the reference code does).

    ``shared_mask=True``: one hole for the whole batch (wang2022's code). ``boxes`` [B, 1, 4] holds the hole.
    Labels are untouched (weights = 1).
    """
    _check_generator(generator)
    b, _, h, w = images.shape
    boxes = square_boxes(size, 1 if shared_mask else b, h, w, generator)
    boxes = _to(boxes, images.device)
    hole = box_mask(boxes, h, w)
    out = images.masked_fill(hole, 0.0)
    return _unmixed(images, out, boxes=_expand_boxes(boxes.unsqueeze(1), b))


def autoaugment(images, labels, *, generator, mean, std) -> MixedBatch:
    """torchvision's AutoAugment with the CIFAR-10 policy (used on CIFAR-100 by wang2022).

    De-normalizes to uint8 (rounded), applies the policy to each sample separately (a loop over samples,
    the only one in this module: the ops are per-image PIL-style ops), re-normalizes. torchvision draws its
    parameters from torch's global CPU RNG; it is seeded here from ``generator`` inside ``fork_rng`` so the
    result is deterministic under the generator and the global RNG state is left as it was.
    (wang2022's released code applies one policy draw to the whole batch tensor at once.)
    """
    from torchvision.transforms import AutoAugment, AutoAugmentPolicy

    _check_generator(generator)
    dev = images.device
    m = _to(torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), dev)
    s = _to(torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1), dev)
    u8 = ((images.float() * s + m) * 255.0).round().clamp(0, 255).to(torch.uint8)
    policy = AutoAugment(AutoAugmentPolicy.CIFAR10)
    with global_rng_seeded_from(generator):
        aug = torch.stack([policy(img) for img in u8])
    out = ((aug.float() / 255.0 - m) / s).to(images.dtype)
    return _unmixed(images, out)


# ------------------------------------------------------------------------------------------- mixing


def _two_source(images, out, src_a, src_b, lam, boxes=None, info=None) -> MixedBatch:
    """Record with sources [src_a, src_b] and weights [lam, 1 - lam] (lam: [B] float64 on CPU or device)."""
    weights = _to(torch.stack([lam, 1.0 - lam], dim=1).float(), images.device)
    return MixedBatch(
        images=out,
        sources=torch.stack([src_a, src_b], dim=1),
        weights=weights,
        boxes=boxes,
        info=info or {},
    )


def _blend(images, idx_a, idx_b, lam_dev):
    """lam * images[idx_a] + (1 - lam) * images[idx_b]; lam_dev [B] or scalar tensor on the device."""
    lam_dev = lam_dev.to(images.dtype).view(-1, 1, 1, 1)
    a = images if idx_a is None else images[idx_a]
    return lam_dev * a + (1.0 - lam_dev) * images[idx_b]


def mixup(images, labels, *, generator, alpha: float = 1.0, per_sample: bool = False) -> MixedBatch:
    """MixUp: x~ = lam * x + (1 - lam) * x[perm], perm a random permutation, lam ~ Beta(alpha, alpha).

    One lam for the batch (das2020, wang2022; ``info['lam']`` is then a float) or one per sample
    (``per_sample=True``). sources = [arange, perm], weights = [lam, 1 - lam].
    """
    _check_generator(generator)
    b, dev = images.shape[0], images.device
    lam = sample_beta(alpha, (b,) if per_sample else (1,), generator)
    perm = torch.randperm(b, generator=generator)
    lam_b = lam.expand(b)
    perm_d = _to(perm, dev)
    out = _blend(images, None, perm_d, _to(lam_b.float(), dev))
    info = {} if per_sample else {"lam": float(lam[0])}
    return _two_source(images, out, torch.arange(b, device=dev), perm_d, lam_b, info=info)


def _two_perm(images, generator, alpha, p, sampling):
    """Shared core of choi2023's FMU (p=None) and PMU. Draw order as the released code: p1, p2, lam, indices."""
    _check_generator(generator)
    b, dev = images.shape[0], images.device
    p1 = torch.randperm(b, generator=generator)
    p2 = torch.randperm(b, generator=generator)
    lam = sample_beta(alpha, (b,), generator)
    info = {}
    if p is not None:
        if sampling == "replacement":
            # As the released code: lam = 1 at floor(B * p) indices drawn WITH replacement.
            keep = torch.randint(b, (int(math.floor(b * p)),), generator=generator)
        else:
            # Exactly round((1 - p) * B) samples stay mixed.
            keep = torch.randperm(b, generator=generator)[: b - int(round((1 - p) * b))]
        unmixed = torch.zeros(b, dtype=torch.bool)
        unmixed[keep] = True
        lam = torch.where(unmixed, torch.ones_like(lam), lam)
        info["mixed_fraction"] = 1.0 - float(unmixed.double().mean())
    p1_d, p2_d = _to(p1, dev), _to(p2, dev)
    out = _blend(images, p1_d, p2_d, _to(lam.float(), dev))
    return _two_source(images, out, p1_d, p2_d, lam, info=info)


def mixup_two_perm(images, labels, *, generator, alpha: float = 1.0) -> MixedBatch:
    """choi2023's full mixup (FMU): x~_i = lam_i * x[p1(i)] + (1 - lam_i) * x[p2(i)] with two independent
    random permutations and per-sample lam_i ~ Beta(alpha, alpha); the original order is not kept.
    sources = [p1, p2], weights = [lam, 1 - lam].
    """
    return _two_perm(images, generator, alpha, None, None)


def pmu(images, labels, *, generator, p: float = 0.9, alpha: float = 1.0, sampling: str = "replacement") -> MixedBatch:
    """choi2023's partial mixup (PMU): two-permutation mixup with lam_i = 1 for part of the batch.

    ``sampling='replacement'`` (default, as the released code): lam = 1 at floor(B * p) indices drawn with
    replacement, which leaves about exp(-p) of the batch mixed (41% at p = 0.9), not the 1 - p the paper
    states. ``sampling='exact'``: exactly round((1 - p) * B) samples are mixed.
    ``info['mixed_fraction']``: the realised fraction of samples whose lam was not forced to 1 (a float).
    """
    check_choice("sampling", sampling, ("replacement", "exact"))
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"pmu: p must be in [0, 1], got {p}")
    return _two_perm(images, generator, alpha, p, sampling)


def cutmix(
    images, labels, *, generator, alpha: float = 1.0, partner: str = "derangement", per_sample_boxes: bool = False,
    box_rounding: str = "exact",
) -> MixedBatch:
    """CutMix: paste a box of the partner image into each image.

    lam ~ Beta(alpha, alpha); box side ratio sqrt(1 - lam), centre uniform over the image, clipped; lam is
    then recomputed from the clipped box as the exact fraction of pixels left to the base image.
    Default: one box and one lam for the whole batch (wang2022, das2020; ``info['lam']`` a float);
    ``per_sample_boxes=True``: one lam and one box per sample. ``partner``: ``derangement`` (no sample is
    paired with itself, wang2022) or ``permutation`` (das2020). ``box_rounding``: see ``draw_boxes``.
    Draw order: lam, box, partner. sources = [arange, partner], weights = [lam, 1 - lam], boxes [B, 1, 4].
    """
    check_choice("partner", partner, ("derangement", "permutation"))
    _check_generator(generator)
    b, _, h, w = images.shape
    dev = images.device
    lam = sample_beta(alpha, (b if per_sample_boxes else 1,), generator)
    boxes = draw_boxes(lam, h, w, generator, box_rounding)
    perm = _to(_partner(b, partner, generator), dev)
    lam = 1.0 - box_area_fraction(boxes, h, w)  # exact unmasked-pixel fraction
    boxes_d = _to(boxes, dev)
    out = torch.where(box_mask(boxes_d, h, w), images[perm], images)
    info = {} if per_sample_boxes else {"lam": float(lam[0])}
    return _two_source(
        images, out, torch.arange(b, device=dev), perm, lam.expand(b), boxes=_expand_boxes(boxes_d.unsqueeze(1), b), info=info
    )


def cut_n_mix_batch_error(n: int, partner: str, batch: int, batch_name: str = "") -> str | None:
    """Why a batch of ``batch`` is too small for ``n`` different partners per sample (a derangement also excludes
    the sample itself), or None (``batch_name``: the setting the batch size came from, for the message)."""
    need = n + (partner == "derangement")
    if batch < need:
        return (f"cut_n_mix: {n} different partner images per sample need a batch of at least {need}, got "
                f"{batch_name}{batch}")
    return None


def cut_n_mix(
    images,
    labels,
    *,
    generator,
    n: int = 2,
    alpha: float = 1.0,
    partner: str = "derangement",
    per_sample_boxes: bool = False,
    box_rounding: str = "exact",
    prob: float = 1.0,
) -> MixedBatch:
    """Cut^nMix (shen2022) -- a RECONSTRUCTION from the paper's abstract, no code is public.

    Paste ``n`` boxes into the base image one after another, box j taken from partner p_j (n independent
    derangements, or permutations with ``partner='permutation'``); each box is drawn as in CutMix (own lam_j ~
    Beta(alpha, alpha), side ratio sqrt(1 - lam_j), centre uniform, clipped; one box per paste for the whole
    batch by default, per sample with ``per_sample_boxes``). The label weight of each source is its VISIBLE
    area after all pastes (later boxes cover earlier ones); the base keeps the rest. K = n + 1,
    sources = [arange, p_1, ..., p_n], boxes [B, n, 4] in paste order. With n = 1 this is ``cutmix`` and,
    under the same generator state, gives the same record. Each sample's n boxes come from n different
    images (the project's spec of Cut^nMix): paste j's derangement is redrawn until no sample gets a partner it already has.
    ``prob`` < 1: the batch is mixed with that probability (one uniform draw first, as the released CutMix's
    ``cutmix_prob``), else returned unmixed (one source, weight 1); with ``prob`` = 1 nothing extra is drawn.
    """
    check_choice("partner", partner, ("derangement", "permutation"))
    if n < 1:
        raise ConfigError(f"cut_n_mix: n must be >= 1, got {n}")
    _check_generator(generator)
    b, _, h, w = images.shape
    too_small = cut_n_mix_batch_error(n, partner, b)
    if too_small:
        raise ConfigError(too_small)
    if prob < 1.0 and float(torch.rand((), generator=generator)) >= prob:
        return _unmixed(images, images)
    dev = images.device
    nb = b if per_sample_boxes else 1
    out = images
    owner = torch.zeros(nb, 1, h, w, dtype=torch.long, device=dev)  # which source shows at each pixel
    sources, boxes, partners = [torch.arange(b, device=dev)], [], []  # partners: the host copies (no read-back)
    for j in range(1, n + 1):  # loop over pastes, not samples
        lam = sample_beta(alpha, (nb,), generator)
        box = _to(draw_boxes(lam, h, w, generator, box_rounding), dev)
        partners.append(_distinct_partner(b, partner, generator, partners))
        perm = _to(partners[-1], dev)
        mask = box_mask(box, h, w)
        out = torch.where(mask, images[perm], out)
        owner = owner.masked_fill(mask, j)
        sources.append(perm)
        boxes.append(box)
    ids = torch.arange(n + 1, device=dev).view(1, n + 1, 1)
    visible = (owner.view(nb, 1, h * w) == ids).sum(2).float() / (h * w)  # [nb, n + 1] visible area
    return MixedBatch(
        images=out,
        sources=torch.stack(sources, dim=1),
        weights=visible.expand(b, -1),
        boxes=_expand_boxes(torch.stack(boxes, dim=1), b),
    )
