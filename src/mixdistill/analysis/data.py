"""Evaluation sets for the analysis: the run's test set, any registered dataset's test split, a CIFAR-10.1
style ``.npy`` pair, an image folder (CINIC-10); and CIFAR-10H human soft labels.

``--data`` accepts

- a registered dataset name (``cifar10``, ``cifar100``, ``fashion_mnist``, ``imagefolder``,
  ``tiny_imagenet``): its test split, found as ``load_dataset`` finds it (``--data-root``, ...);
- a CIFAR-10.1 file pair: the ``*_data.npy`` file (uint8 [N, 32, 32, 3]; [N, H, W] for grayscale), its
  ``*_labels.npy`` partner (integers [N]), or a folder holding exactly one such pair
  (``cifar10.1_v6_data.npy`` + ``cifar10.1_v6_labels.npy``);
- a folder with ``train/`` and ``test/`` (or ``valid/``) class folders, as CINIC-10 is distributed
  (``load_dataset("imagefolder", "test", root=FOLDER)``: ``FOLDER/test/<class>/<image>``, classes sorted by
  name from ``FOLDER/train``; CINIC-10's sorted names give CIFAR-10's label order);
- a folder of class folders ``FOLDER/<class>/<image>`` (classes sorted by name).

Images are always normalised with the mean / std of the dataset the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixdistill.data import DATASETS, load_dataset, readers
from mixdistill.data.datasets import Split, check_class_names, image_hw
from mixdistill.errors import DataError

DATA_SUFFIX, LABELS_SUFFIX = "_data.npy", "_labels.npy"


@dataclass
class EvalSet:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    name: str  # what the report calls it
    classes: int | None = None  # how many the set has, where it says (a dataset, an image folder; not .npy labels)
    class_names: tuple[str, ...] | None = None  # an image folder's, in label order


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # truncated, not an .npy, object array ...
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def cifar10_1_pair(path: str | Path) -> tuple[Path, Path]:
    """The ``(*_data.npy, *_labels.npy)`` pair named by ``path`` (either file, or a folder holding one pair)."""
    p = Path(path).expanduser()
    if p.is_dir():
        pairs = sorted(f for f in p.glob(f"*{DATA_SUFFIX}")
                       if f.with_name(f.name[: -len(DATA_SUFFIX)] + LABELS_SUFFIX).is_file())
        if not pairs:
            raise DataError(f"{p} holds no *{DATA_SUFFIX} file with a matching *{LABELS_SUFFIX} file")
        if len(pairs) > 1:
            raise DataError(f"{p} holds several data files ({', '.join(f.name for f in pairs)}): pass one of them")
        data = pairs[0]
    elif p.name.endswith(DATA_SUFFIX):
        data = p
    elif p.name.endswith(LABELS_SUFFIX):
        data = p.with_name(p.name[: -len(LABELS_SUFFIX)] + DATA_SUFFIX)
    else:
        raise DataError(f"{p}: expected a *{DATA_SUFFIX} / *{LABELS_SUFFIX} file or a folder holding such a pair")
    labels = data.with_name(data.name[: -len(DATA_SUFFIX)] + LABELS_SUFFIX)
    for f in (data, labels):
        if not f.is_file():
            raise DataError(f"file not found: {f} (a CIFAR-10.1 style set needs both {data.name} and {labels.name})")
    return data, labels


def read_cifar10_1(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A CIFAR-10.1 style pair: uint8 images [N, H, W, 3] (or [N, H, W]) and integer labels [N]
    -> (uint8 [N, C, H, W], int64 [N])."""
    data_path, labels_path = cifar10_1_pair(path)
    images, labels = _load_npy(data_path), _load_npy(labels_path)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise DataError(f"{data_path}: expected images [N, H, W, 3] (or [N, H, W]), got shape {list(images.shape)}")
    if images.dtype != np.uint8:
        raise DataError(f"{data_path}: expected uint8 pixels, got {images.dtype}")
    labels = readers.class_labels(labels, labels_path)
    if len(labels) != len(images):
        raise DataError(f"{labels_path}: expected {len(images)} labels, got {len(labels)}")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{labels_path}: labels must be non-negative, found {labels.min()}")
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return x, torch.from_numpy(labels.astype(np.int64))


def load_eval_set(data: str, root: str | None = None) -> EvalSet:
    """The evaluation set named by ``--data`` (see the module docstring)."""
    if data in DATASETS:
        return split_eval_set(load_dataset(data, "test", root=root), f"{data} (test)")
    p = Path(data).expanduser()
    if not p.exists():
        raise DataError(f"--data {data}: neither a dataset name ({', '.join(DATASETS)}) nor an existing path")
    if p.is_file() or any(p.glob(f"*{DATA_SUFFIX}")):
        images, labels = read_cifar10_1(p)
        return EvalSet(images, labels, p.name if p.is_dir() else cifar10_1_pair(p)[0].name[: -len(DATA_SUFFIX)])
    if (p / "train").is_dir():
        return split_eval_set(load_dataset("imagefolder", "test", root=p), f"{p.name} (image folder, test)")
    if classes := readers.folder_classes(p):
        images, labels = readers.read_image_folder(p, classes)
        return EvalSet(images, labels, f"{p.name} (image folder)", len(classes), tuple(classes))
    held = [name for name, spec in DATASETS.items() if spec.num_classes is not None and spec.find(p) is not None]
    hint = f" (it holds {held[0]}: give --data {held[0]} --data-root {data})" if held else ""
    raise DataError(f"--data {data}: no *{DATA_SUFFIX} pair, no train/ + test/ class folders and no class folders "
                    f"in it{hint}")


def split_eval_set(split: Split, name: str) -> EvalSet:
    """A dataset split as an evaluation set, with its class count (and an image folder's class names)."""
    return EvalSet(split.images, split.labels, name, split.spec.num_classes, split.spec.class_names)


def check_compatible(eval_set: EvalSet, in_channels: int, num_classes: int, image_size=None,
                     class_names=None) -> None:
    """A clear DataError when the model cannot take these images or labels: ``class_names``, the image folder's
    the network learnt (its checkpoint's), must be the set's, and the set's class count the network's."""
    _, C, H, W = eval_set.images.shape
    if C != in_channels:
        raise DataError(f"{eval_set.name} has {C}-channel images but the model takes {in_channels} channels")
    if image_size is not None:
        h, w = image_hw(image_size)
        if (H, W) != (h, w):
            raise DataError(f"{eval_set.name} has {H}x{W} images but the model was trained on {h}x{w}")
    if len(eval_set.labels) == 0:
        raise DataError(f"{eval_set.name} holds no images")
    top = int(eval_set.labels.max())
    if top >= num_classes:
        raise DataError(f"{eval_set.name} has label {top} but the model has only {num_classes} classes")
    if eval_set.classes is not None and eval_set.classes != num_classes:
        raise DataError(f"{eval_set.name} has {eval_set.classes} classes but the network {num_classes}: its labels "
                        "would not name its classes")
    check_class_names(class_names, eval_set.class_names, eval_set.name)


# ------------------------------------------------------------------------------------------ CIFAR-10H

def load_human_labels(path: str | Path, num_samples: int, num_classes: int) -> torch.Tensor:
    """CIFAR-10H style human soft labels: a ``.npy`` float array [N, C] of probabilities (rows sum to 1),
    in the order of the whole test split. float64 tensor; DataError on any mismatch."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"human labels file not found: {p}")
    h = _load_npy(p)
    if h.ndim != 2 or h.shape != (num_samples, num_classes):
        raise DataError(f"human labels {p} have shape {list(h.shape)} but the evaluation set needs "
                        f"[{num_samples}, {num_classes}] (one probability row per image of the whole test split, "
                        f"in its order, a run's test subset taking its own rows; "
                        f"CIFAR-10H's cifar10h-probs.npy is [10000, 10] for the full CIFAR-10 test set)")
    if not np.issubdtype(h.dtype, np.number):
        raise DataError(f"human labels {p}: expected numbers, got {h.dtype}")
    h = h.astype(np.float64)
    if not np.isfinite(h).all() or (h < 0).any():
        raise DataError(f"human labels {p}: values must be finite and non-negative")
    sums = h.sum(1)
    if np.abs(sums - 1).max() > 1e-3:
        raise DataError(f"human labels {p}: rows must be probabilities summing to 1 (row sums range "
                        f"{sums.min():.4g}..{sums.max():.4g}; for vote counts use cifar10h-probs.npy, not -counts)")
    return torch.from_numpy(h)


def human_label_kl(probs: torch.Tensor, human: torch.Tensor, eps: float = 1e-12) -> float:
    """Mean over samples of ``KL(h_n || p_n) = sum_c h log(h / p)`` (0 log 0 = 0; p clamped at eps)."""
    p = torch.as_tensor(probs).to(torch.float64)
    h = torch.as_tensor(human).to(torch.float64)
    if p.shape != h.shape:
        raise DataError(f"human labels {list(h.shape)} and model outputs {list(p.shape)} differ in shape")
    terms = torch.where(h > 0, h * (h.clamp(min=eps).log() - p.clamp(min=eps).log()), torch.zeros_like(h))
    return float(terms.sum(1).mean())
