"""A data loader that keeps the whole uint8 dataset on the device and augments batches there."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mixdistill.data.transforms import copy_to_device, normalize, random_crop_flip


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 64-bit seed from (seed, epoch, stream); a pure function, so epochs can be replayed."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0])


def samples_per_rank(num_samples: int, world_size: int, drop_last: bool) -> int:
    return num_samples // world_size if drop_last else math.ceil(num_samples / world_size)


def num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else math.ceil(samples / batch_size)


def epoch_order(num_samples: int, total: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    """The global sample order of an epoch (the same on every rank), cut or wrapped around to ``total``
    positions; rank ``r`` of ``R`` takes ``order[r::R]``."""
    if shuffle:
        g = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
        order = torch.randperm(num_samples, generator=g)
    else:
        order = torch.arange(num_samples)
    return order[:total] if total <= num_samples else torch.cat([order, order[: total - num_samples]])


class DeviceLoader:
    """Batches of ``(normalized float images [B, C, H, W], int64 labels)`` on ``device``.

    The uint8 images are copied to ``device`` once. Epoch ``e``'s order and augmentation come from CPU
    generators seeded by :func:`epoch_seed` of ``(seed, e)`` only, so iterating the same epoch twice
    gives the same batches: call :meth:`set_epoch` before each epoch (resuming needs no loader state).

    With ``world_size > 1`` every rank draws the same global permutation and takes ``perm[rank::world_size]``.
    All ranks get the same number of batches: with ``drop_last`` the permutation is first cut to a
    multiple of ``world_size``; without it, it is padded by repeating its first samples (as
    ``torch.utils.data.DistributedSampler`` does), so a few samples are then seen twice.

    For evaluation use ``shuffle=False, drop_last=False`` and no augmentation (the defaults of
    ``crop_padding`` and ``flip``).
    """

    def __init__(
        self,
        images_uint8: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = True,
        drop_last: bool = True,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
    ):
        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {images_uint8.dtype} {list(images_uint8.shape)}")
        if len(labels) != len(images_uint8):
            raise ValueError(f"{len(images_uint8)} images but {len(labels)} labels")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        self.device = torch.device(device)
        self.images = images_uint8.to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        C = images_uint8.shape[1]
        if len(mean) not in (1, C) or len(std) not in (1, C):
            raise ValueError(f"mean/std need 1 or {C} values, got {len(mean)} and {len(std)}")
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(C).reshape(1, C, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).expand(C).reshape(1, C, 1, 1).to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.crop_padding, self.flip = crop_padding, flip
        self.seed, self.epoch = seed, 0
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.with_indices = with_indices  # also yield each batch's dataset indices (teacher caches, CRD)
        # view id of each sample of the batch last yielded (data.transforms.random_crop_flip; 0s when the loader
        # does not augment): with the indices, what the teacher saw, so engine/teacher_views can look it up
        self.views: torch.Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def samples_per_rank(self) -> int:
        return samples_per_rank(len(self.labels), self.world_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.samples_per_rank, self.batch_size, self.drop_last)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (CPU tensor)."""
        R = self.world_size
        order = epoch_order(len(self.labels), self.samples_per_rank * R, self.seed, self.epoch, self.shuffle)
        return order[self.rank :: R]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        idx = copy_to_device(self.indices(), self.device)
        augment = self.crop_padding > 0 or self.flip
        # augmentation stream differs per rank; it depends only on (seed, epoch, rank)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1 + self.rank))
        B = self.batch_size
        for i in range(len(self)):
            batch_idx = idx[i * B : (i + 1) * B]
            x = self.images.index_select(0, batch_idx)
            y = self.labels.index_select(0, batch_idx)
            if augment:
                x, self.views = random_crop_flip(x, self.crop_padding, g, flip=self.flip, return_views=True)
            else:
                self.views = torch.zeros(len(batch_idx), dtype=torch.int64)
            x = normalize(x, self.mean, self.std)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield (x, y, batch_idx) if self.with_indices else (x, y)
