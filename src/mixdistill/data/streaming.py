"""A streaming loader for image-folder datasets that do not fit in memory (ImageNet).

:class:`StreamingImageFolder` has the interface of :class:`~mixdistill.data.loader.DeviceLoader`
(``__iter__`` yields ``(images, labels)`` or ``(images, labels, indices)`` on the training device,
``__len__``, ``set_epoch``, ``rank``/``world_size`` sharding), but reads the files as it goes:

* **Layout.** ``root/train/<class>/**/<image>`` and ``root/val/<class>/**/<image>`` (torchvision's
  ``ImageFolder`` / ImageNet layout; files are found recursively, hidden files and folders are skipped,
  classes are the sorted folder names of ``root/train`` for every split).
* **Workers** (a torch ``DataLoader``, ``num_workers`` processes) decode each file with PIL, convert it
  to RGB (or ``mode``) and resize it:

  - training (``augment=True``): ``RandomResizedCrop(image_size, scale=(0.08, 1), ratio=(3/4, 4/3))``,
    the standard ImageNet recipe, done as one PIL ``resize(box=...)`` (bilinear, antialiased, as
    torchvision's PIL path);
  - evaluation: ``Resize(resize_size)`` of the shorter side (default ``image_size * 8 / 7``: 256 for
    224) then ``CenterCrop(image_size)``, exactly torchvision's arithmetic.

  They return uint8 HWC arrays; the collate stacks them into one uint8 batch (in shared memory), which
  the DataLoader pins when the device is CUDA.
* **Main process**: copies the uint8 batch to the device (non-blocking), then does the horizontal flip
  and the normalisation **batched on the device** (flip first, on uint8). Mixing (CutMix, ...) is left
  to the method, as with ``DeviceLoader``. **Decision:** the flip is on the device, not in the workers:
  it costs one batched ``where`` there and keeps the workers' output a pure function of the file and
  its crop. The batch arrives in NHWC memory, i.e. already ``channels_last``; with
  ``channels_last=False`` it is made NCHW-contiguous on the device.

Determinism. Epoch ``e``'s sample order is ``randperm`` from a generator seeded with
``epoch_seed(seed, e, 0)`` (the same on every rank, as ``DeviceLoader``). The augmentation is drawn in
the main process too, per position of the global epoch order, from ``epoch_seed(seed, e, 1)``: one
64-bit crop seed and one flip bit per sample. The worker that decodes a sample derives its crop from
that seed alone, so **an epoch is reproducible whatever ``num_workers`` is and whichever worker gets
which batch** (stronger than seeding each worker from ``(seed, epoch, worker id)``, which would tie the
crops to the number of workers), and the workers hold no per-epoch state, so they persist across
epochs. The DataLoader gets its own generator, so iterating does not consume the global torch RNG.

Sharding is ``DeviceLoader``'s: every rank draws the same global permutation and takes
``perm[rank::world_size]``; with ``drop_last`` the permutation is first cut to a multiple of
``world_size``, without it, padded by repeating its first samples. Every rank gets the same number of
batches, and the union of the ranks' batch ``i`` is the single-process batch ``i`` of the same global
batch size, with the same crops and flips.

Errors: a file that cannot be read or decoded stops the epoch with one :class:`DataError` naming the
file, raised in the main process (the worker reports it in the batch instead of raising, so no worker
traceback is wrapped around it).

Shared memory: workers pass batches through ``/dev/shm``; ``num_workers * prefetch_factor`` batches of
``batch_size * image_size^2 * 3`` bytes (38 MB for 256 x 224^2) must fit there (Docker's default
64 MB does not: run containers with ``--shm-size`` of a few GB, or lower ``prefetch_factor``).
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from mixdistill.data.loader import epoch_order, epoch_seed, num_batches, samples_per_rank
from mixdistill.data import readers
from mixdistill.data.transforms import normalize
from mixdistill.errors import DataError, DatasetNotFoundError
from mixdistill.machine import available_cpus

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLIT_FOLDERS = {"train": ("train",), "val": ("val",), "test": ("test", "val")}  # first existing folder wins

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "StreamingImageFolder",
    "find_split_folder",
    "random_resized_crop_box",
    "scan_image_folder",
    "stratified_subset",
]


# ----------------------------------------------------------------------------------------- the files


def find_split_folder(root, split: str) -> Path:
    """``root/train`` for ``train``, ``root/val`` for ``val``, ``root/test`` (else ``root/val``) for ``test``."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split must be one of {', '.join(SPLIT_FOLDERS)}, got {split!r}")
    root = Path(root)
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    wanted = " or ".join(f"{root / n}/" for n in SPLIT_FOLDERS[split])
    raise DatasetNotFoundError(f"image folder {root}: no {wanted} folder for the {split} split")


def scan_image_folder(folder, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """:func:`readers.scan_image_folder`, its labels as an int64 array."""
    paths, labels = readers.scan_image_folder(folder, classes)
    return paths, np.asarray(labels, dtype=np.int64)


class _PathTable:
    """Many relative paths in two numpy arrays (one byte buffer and offsets), not a list of str objects:
    forked workers then share the pages instead of copying them as refcounts change."""

    def __init__(self, paths: Sequence[str]):
        encoded = [p.encode("utf-8", "surrogateescape") for p in paths]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")


# ------------------------------------------------------------------------------------------ decoding


def random_resized_crop_box(
    width: int, height: int, rng: random.Random, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` with a given ``random.Random``: ``(left, top, w, h)``.

    Ten tries at an area fraction uniform in ``scale`` and a log-uniform aspect ratio in ``ratio``; then
    the central crop with the aspect ratio clamped to ``ratio``.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, width - w), rng.randint(0, height - h), w, h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _draft(im: Image.Image, mode: str, need_w: float, need_h: float) -> tuple[float, float]:
    """Let a JPEG decode at a reduced scale (1/2, 1/4, 1/8) that still gives at least ``need_w x need_h``
    pixels; returns the factors ``(x, y)`` the image shrank by (1.0 if not a JPEG or no reduction)."""
    w0, h0 = im.size
    im.draft(mode, (max(1, math.ceil(need_w)), max(1, math.ceil(need_h))))
    return im.size[0] / w0, im.size[1] / h0


class _ImageFiles(torch.utils.data.Dataset):
    """Decodes one ``(index, crop_seed)`` item into ``(uint8 HWC array, label, index, error)``."""

    def __init__(self, folder: Path, paths: _PathTable, labels: np.ndarray, *, size: int, augment: bool,
                 resize_size: int, scale, ratio, mode: str, jpeg_draft: bool):
        self.folder, self.paths, self.labels = str(folder), paths, labels
        self.size, self.augment, self.resize_size = size, augment, resize_size
        self.scale, self.ratio = tuple(scale), tuple(ratio)
        self.mode, self.jpeg_draft = mode, jpeg_draft

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, index: int) -> str:
        return os.path.join(self.folder, self.paths[index])

    def decode(self, index: int, crop_seed: int) -> np.ndarray:
        S = self.size
        with Image.open(self.path(index)) as im:
            if self.augment:
                W, H = im.size
                left, top, w, h = random_resized_crop_box(W, H, random.Random(crop_seed), self.scale, self.ratio)
                box = (left, top, left + w, top + h)
                if self.jpeg_draft:  # keep the crop at >= S x S pixels after the reduced decode
                    fx, fy = _draft(im, self.mode, W * S / w, H * S / h)
                    box = (left * fx, top * fy, min((left + w) * fx, im.size[0]), min((top + h) * fy, im.size[1]))
                im = readers.in_mode(im, self.mode, self.path(index))  # 16-bit scaled, not clipped
                out = im.resize((S, S), Image.BILINEAR, box=box)
            else:
                W, H = im.size
                R = self.resize_size
                new_w, new_h = (R, int(R * H / W)) if W <= H else (int(R * W / H), R)
                if self.jpeg_draft:
                    _draft(im, self.mode, new_w, new_h)
                im = readers.in_mode(im, self.mode, self.path(index))  # 16-bit scaled, not clipped
                im = im.resize((new_w, new_h), Image.BILINEAR)
                top, left = int(round((new_h - S) / 2.0)), int(round((new_w - S) / 2.0))
                out = im.crop((left, top, left + S, top + S))
            arr = np.array(out, dtype=np.uint8)
        return arr[:, :, None] if arr.ndim == 2 else arr

    def __getitem__(self, item):
        index, crop_seed, flip = item
        try:
            return self.decode(index, crop_seed), int(self.labels[index]), index, flip, None
        except Exception as e:  # corrupt, truncated, unreadable, vanished: reported in the main process
            if isinstance(e, UnidentifiedImageError):  # its message repeats the path
                reason = "not an image file, or one in an unknown format or corrupt"
            else:
                reason = f"{type(e).__name__}: {e}"
            return None, 0, index, flip, f"cannot decode image {self.path(index)}: {reason}"


def _collate(samples):
    """``(uint8 [B, H, W, C], int64 labels, int64 indices, bool flips, first error or None)``."""
    for s in samples:
        if s[4] is not None:
            return None, None, None, None, s[4]
    # default_collate stacks into shared memory when run in a worker (no copy on the way back)
    images = torch.utils.data.default_collate([torch.from_numpy(s[0]) for s in samples])
    labels = torch.tensor([s[1] for s in samples], dtype=torch.int64)
    indices = torch.tensor([s[2] for s in samples], dtype=torch.int64)
    flips = torch.tensor([s[3] for s in samples], dtype=torch.bool)
    return images, labels, indices, flips, None


# ------------------------------------------------------------------------------------------- sampler


class _EpochBatchSampler:
    """Per epoch: this rank's batches of ``(index, crop_seed, flip)``; iterated in the main process."""

    def __init__(self, num_samples: int, batch_size: int, *, shuffle: bool, drop_last: bool, augment: bool,
                 flip: bool, seed: int, rank: int, world_size: int):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.shuffle, self.drop_last, self.augment, self.flip = shuffle, drop_last, augment, flip
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    @property
    def samples_per_rank(self) -> int:
        return samples_per_rank(self.num_samples, self.world_size, self.drop_last)

    def __len__(self) -> int:
        return num_batches(self.samples_per_rank, self.batch_size, self.drop_last)

    def plan(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(indices, crop_seeds, flips)`` of this rank for the current epoch, in order."""
        R = self.world_size
        total = self.samples_per_rank * R
        order = epoch_order(self.num_samples, total, self.seed, self.epoch, self.shuffle)  # same on every rank
        # augmentation per position of the global order: identical crops whatever world_size / workers
        g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, 1))
        seeds = torch.randint(0, 2**62, (total,), generator=g) if self.augment else torch.zeros(total, dtype=torch.long)
        flips = torch.rand(total, generator=g) < 0.5 if self.flip else torch.zeros(total, dtype=torch.bool)
        sl = slice(self.rank, None, R)
        return order[sl], seeds[sl], flips[sl]

    def __iter__(self) -> Iterator[list[tuple[int, int, bool]]]:
        idx, seeds, flips = self.plan()
        B = self.batch_size
        for i in range(len(self)):
            s = slice(i * B, (i + 1) * B)
            yield list(zip(idx[s].tolist(), seeds[s].tolist(), flips[s].tolist()))


# -------------------------------------------------------------------------------------------- loader


class StreamingImageFolder:
    """Batches of ``(normalized float images [B, C, S, S], int64 labels[, int64 indices])`` on ``device``,
    decoded from an image-folder tree by ``num_workers`` worker processes (see the module docstring).

    ``root``: the dataset folder holding ``train/`` and ``val/`` (or ``test/``); ``split``: ``train``,
    ``val`` or ``test`` (``test`` reads ``test/``, else ``val/``). ``augment`` (default: ``split ==
    'train'``) picks RandomResizedCrop + flip over Resize + CenterCrop; ``shuffle``, ``drop_last`` and
    ``flip`` default to ``augment``. ``subset``: a class-stratified subset of ``n`` samples (the same
    selection as ``Split.subset(n, subset_seed)`` of the in-memory loader); indices then count within it.
    ``jpeg_draft``: let JPEGs decode at 1/2, 1/4 or 1/8 scale when the output still gets at least its
    full resolution from it (faster, slightly different pixels from the reference recipe; default off).
    """

    def __init__(
        self,
        root,
        split: str = "train",
        *,
        batch_size: int,
        image_size: int = 224,
        augment: bool | None = None,
        resize_size: int | None = None,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip: bool | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        shuffle: bool | None = None,
        drop_last: bool | None = None,
        seed: int = 0,
        device: str | torch.device = "cpu",
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        with_indices: bool = False,
        num_workers: int | None = None,
        persistent_workers: bool = True,
        prefetch_factor: int = 2,
        pin_memory: bool | None = None,
        mode: str = "RGB",
        jpeg_draft: bool = False,
        classes: Sequence[str] | None = None,
        subset: int | None = None,
        subset_seed: int = 0,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
        if mode not in ("RGB", "L"):
            raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
        if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1], got {scale}, {ratio}")
        self.root = Path(root)
        if not (self.root / "train").is_dir():
            raise DatasetNotFoundError(f"image folder {self.root}: no train/ folder (expected train/<class>/<image>)")
        self.folder = find_split_folder(self.root, split)
        self.split = split
        self.classes = list(readers.folder_classes(self.root / "train") if classes is None else classes)
        paths, labels = scan_image_folder(self.folder, self.classes)
        if subset is not None:
            keep = stratified_subset(torch.from_numpy(labels), subset, subset_seed).numpy()
            paths, labels = [paths[i] for i in keep], labels[keep]
        self.labels = torch.from_numpy(labels)

        self.augment = split == "train" if augment is None else augment
        self.flip = self.augment if flip is None else flip
        shuffle = self.augment if shuffle is None else shuffle
        drop_last = self.augment if drop_last is None else drop_last
        self.image_size = image_size
        self.resize_size = int(round(image_size * 8 / 7)) if resize_size is None else resize_size
        if self.resize_size < image_size:
            raise ValueError(f"resize_size {self.resize_size} is smaller than image_size {image_size}")
        self.mode = mode
        self.in_channels = 1 if mode == "L" else 3
        C = self.in_channels
        if len(mean) not in (1, C) or len(std) not in (1, C):
            raise ValueError(f"mean/std need 1 or {C} values, got {len(mean)} and {len(std)}")
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32).expand(C).reshape(1, C, 1, 1).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).expand(C).reshape(1, C, 1, 1).to(self.device)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.seed, self.epoch = seed, 0
        self.channels_last = channels_last
        self.rank, self.world_size = rank, world_size
        self.with_indices = with_indices
        self.num_workers = min(8, available_cpus()) if num_workers is None else num_workers
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory

        self.dataset = _ImageFiles(self.folder, _PathTable(paths), labels, size=image_size, augment=self.augment,
                                   resize_size=self.resize_size, scale=scale, ratio=ratio, mode=mode,
                                   jpeg_draft=jpeg_draft)
        self.sampler = _EpochBatchSampler(len(labels), batch_size, shuffle=shuffle, drop_last=drop_last,
                                          augment=self.augment, flip=self.flip, seed=seed, rank=rank,
                                          world_size=world_size)
        self._generator = torch.Generator()  # the DataLoader's base seed; keeps the global RNG untouched
        workers = self.num_workers > 0
        self._loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=self.sampler, num_workers=self.num_workers, collate_fn=_collate,
            pin_memory=self.pin_memory, generator=self._generator,
            persistent_workers=persistent_workers and workers, prefetch_factor=prefetch_factor if workers else None,
        )

    # -- DeviceLoader's interface ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    @property
    def samples_per_rank(self) -> int:
        return self.sampler.samples_per_rank

    def set_epoch(self, epoch: int) -> None:
        self.epoch = self.sampler.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices for the current epoch, in order (CPU tensor)."""
        return self.sampler.plan()[0]

    def path(self, index: int) -> Path:
        """The file of sample ``index``."""
        return Path(self.dataset.path(index))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        self._generator.manual_seed(epoch_seed(self.seed, self.epoch, 2))
        device, non_blocking = self.device, self.pin_memory and self.device.type == "cuda"
        for images, labels, indices, flips, error in self._loader:
            if error is not None:
                raise DataError(error)
            x = images.permute(0, 3, 1, 2)  # [B, C, H, W] view of NHWC memory (channels_last strides)
            x = x.to(device, non_blocking=non_blocking)
            if not self.channels_last:
                x = x.contiguous()  # on uint8: 4x less memory traffic than after normalising
            y = labels.to(device, non_blocking=non_blocking)
            if self.flip:
                f = flips.to(device, non_blocking=non_blocking)
                x = torch.where(f[:, None, None, None], x.flip(3), x)
            x = normalize(x, self.mean, self.std)
            if self.with_indices:
                yield x, y, indices.to(device, non_blocking=non_blocking)
            else:
                yield x, y

    def close(self) -> None:
        """Stop the persistent worker processes (they also stop when the loader is garbage-collected)."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None


def stratified_subset(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``n`` samples, each class in proportion to its share (within one sample), the same
    for the same seed; in-memory splits (:meth:`mixdistill.data.datasets.Split.subset`) and streamed folders
    both select with it."""
    N = len(labels)
    if not 0 < n <= N:
        raise ValueError(f"subset size must be in 1..{N}, got {n}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(N, generator=g)
    lab = labels[perm]
    # rank of each sample among its class (in the random order), as a fraction of the class size:
    # taking the n smallest fractions takes about n * share from every class
    by_class = torch.argsort(lab, stable=True)
    counts = torch.bincount(lab)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(N, dtype=torch.long)
    rank[by_class] = torch.arange(N) - starts[lab[by_class]]
    key = (rank + 0.5) / counts[lab]
    return perm[torch.argsort(key, stable=True)[:n]].sort().values
