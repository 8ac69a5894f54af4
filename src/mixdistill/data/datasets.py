"""The dataset registry and :func:`load_dataset`.

Where the files are looked for, first match wins:

1. the ``root`` argument (config ``data.root``, e.g. ``train CONFIG data.root=PATH``; ``--data-root`` of eval,
   analyze, study and demo): when given, the only place
   looked (downloaded into when missing and downloading is allowed), never a fallback to the others;
2. the environment variable ``MIXDISTILL_DATA``;
3. for ``fashion_mnist``, the Debian package location ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. ``~/.cache/mixdistill/data``, downloading into it with torchvision first if ``download=True``
   (CIFAR-10/100 and Fashion-MNIST only).

A folder counts only if that dataset's files are in it, directly or in the subfolder torchvision
names (``cifar-10-batches-py``, ``cifar-100-python``, ``FashionMNIST/raw``, ``tiny-imagenet-200``),
so one folder can hold several datasets.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch

from mixdistill.data import readers
from mixdistill.data.streaming import IMAGENET_MEAN, IMAGENET_STD, stratified_subset
from mixdistill.errors import DataError, DatasetNotFoundError, UnknownNameError, one_line

log = logging.getLogger(__name__)

ENV_VAR = "MIXDISTILL_DATA"
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
CACHE_DIR = Path.home() / ".cache" / "mixdistill" / "data"
SPLITS = ("train", "test")
# How to give a data root, as the dataset-not-found message says it: the CLI sets the way its command takes
# one (cli.DATA_ROOT_HINTS); elsewhere (the library, a study's worker process) every command's way is named.
ROOT_HINT: ContextVar[str] = ContextVar(
    "ROOT_HINT", default="give the folder holding it as the data root (train: the override data.root=PATH or "
                         "data.root in the config; eval, analyze, study and demo: --data-root PATH)")


@dataclass(frozen=True)
class DatasetSpec:
    """What a model and a loader need to know about a dataset.

    For ``imagefolder`` the fields marked None are unknown until the files are read; the spec of a
    loaded :class:`Split` has them filled in.
    """

    name: str
    num_classes: int | None
    in_channels: int | None
    image_size: int | tuple[int, int] | None  # int for square images, (H, W) otherwise
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int  # padding of the random-crop augmentation, about image_size / 8
    reader: Callable[[Path, str], tuple[torch.Tensor, torch.Tensor]]  # (folder, split) -> (images, labels)
    find: Callable[[Path], Path | None]  # folder -> the folder holding the files, or None
    download: Callable[[Path], None] | None = None  # download into a folder, or None if not possible
    missing: Callable[[Path], list[Path]] = lambda folder: []  # what a partly present copy in a folder lacks
    how_to_get: str = ""  # the dataset-specific way to obtain the files besides a download, for the not-found message
    num_train: int | None = None  # images in the training split (None: unknown until read)
    num_test: int | None = None  # images in the test (ImageNet: validation) split
    class_names: tuple[str, ...] | None = None  # an image folder's, label order (its folder names, sorted)

    def padding_for(self, configured: int | None) -> int:
        """The crop padding of a run whose ``data.crop_padding`` is ``configured`` (None: this dataset's)."""
        return self.crop_padding if configured is None else configured


def _download_cifar10(root: Path) -> None:
    import torchvision

    torchvision.datasets.CIFAR10(str(root), train=True, download=True)


def _download_cifar100(root: Path) -> None:
    import torchvision

    torchvision.datasets.CIFAR100(str(root), train=True, download=True)


def _download_fashion_mnist(root: Path) -> None:
    import torchvision

    torchvision.datasets.FashionMNIST(str(root), train=True, download=True)  # fetches both splits


def _find_imagenet(root: Path) -> Path | None:
    for d in (root, root / "imagenet", root / "ILSVRC2012"):
        if (d / "train").is_dir() and (d / "val").is_dir():
            return d
    return None


def _imagenet_in_memory(root: Path, split: str):
    raise DataError(f"ImageNet ({root}) does not fit in memory; stream it: set data.loader: streaming")


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        name="cifar10", num_train=50000, num_test=10000, num_classes=10, in_channels=3, image_size=32,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), crop_padding=4,
        reader=readers.read_cifar10, find=lambda d: readers.find_cifar(d, 10), download=_download_cifar10,
        missing=lambda d: readers.cifar_missing(d, 10),
    ),
    "cifar100": DatasetSpec(
        name="cifar100", num_train=50000, num_test=10000, num_classes=100, in_channels=3, image_size=32,
        mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761), crop_padding=4,
        reader=readers.read_cifar100, find=lambda d: readers.find_cifar(d, 100), download=_download_cifar100,
        missing=lambda d: readers.cifar_missing(d, 100),
    ),
    # 2 pixels of crop padding at 28x28: the usual 4 (from CIFAR's 32x32) cuts into the centred garments
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist", num_train=60000, num_test=10000, num_classes=10, in_channels=1, image_size=28,
        mean=(0.2860,), std=(0.3530,), crop_padding=2,
        reader=readers.read_mnist_like, find=readers.find_idx, download=_download_fashion_mnist,
        missing=readers.idx_missing,
        how_to_get=f"on Debian/Ubuntu run `apt-get install dataset-fashion-mnist` (installs {DEBIAN_FASHION_MNIST})",
    ),
    # sizes, channels and classes come from the files; 0.5 mean/std for every channel
    "imagefolder": DatasetSpec(
        name="imagefolder", num_classes=None, in_channels=None, image_size=None,
        mean=(0.5,), std=(0.5,), crop_padding=4,
        reader=readers.read_image_folder_split, find=readers.find_image_folder,
        how_to_get="point it at a folder holding train/<class>/<image> and test/<class>/<image>",
    ),
    "tiny_imagenet": DatasetSpec(
        name="tiny_imagenet", num_train=100000, num_test=10000, num_classes=200, in_channels=3, image_size=64,
        mean=(0.4802, 0.4481, 0.3975), std=(0.2302, 0.2265, 0.2262), crop_padding=8,
        reader=lambda d, split: readers.read_tiny_imagenet(d, split, 200), find=readers.find_tiny_imagenet,
        how_to_get="download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into that folder",
    ),
    # ILSVRC-2012 as torchvision's ImageFolder layout (train/<wnid>/*.JPEG, val/<wnid>/*.JPEG): streamed only
    "imagenet": DatasetSpec(
        name="imagenet", num_train=1281167, num_test=50000, num_classes=1000, in_channels=3, image_size=224,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_padding=0,
        reader=_imagenet_in_memory, find=_find_imagenet,
        how_to_get=("download ILSVRC-2012 from image-net.org and arrange it as train/<wnid>/*.JPEG and "
                    "val/<wnid>/*.JPEG (the validation images sorted into class folders, e.g. with valprep.sh)"),
    ),
}


@dataclass
class Split:
    """One split of a dataset, all in CPU memory."""

    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]
    spec: DatasetSpec
    root: Path  # the folder the files were read from

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int, seed: int = 0) -> Split:
        """``n`` samples, each class in proportion to its share (within one sample), same for the same seed.

        The samples keep their original order.
        """
        return self.take(stratified_subset(self.labels, n, seed))

    def take(self, rows: torch.Tensor) -> Split:
        """The samples at ``rows`` (indices into this split), in that order."""
        return Split(self.images[rows], self.labels[rows], self.spec, self.root)


def find_root(name: str, root=None, download: bool = True) -> Path:
    """The folder holding dataset ``name``'s files. An explicit ``root`` is the only place looked (the
    dataset is downloaded into it when it is not there and ``download`` allows); with no ``root`` the
    search order of the module docstring applies."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    try:
        return _find_root(DATASETS[name], root, download)
    except PermissionError as e:  # Path.is_file() of a path in a folder this user cannot enter raises
        raise DataError(f"cannot read {e.filename or 'a folder'}: {e.strerror} (looking for {name}'s files)") from None


def _find_root(spec: DatasetSpec, root, download: bool) -> Path:
    name = spec.name
    if root is not None:
        return _find_in_explicit_root(spec, Path(root).expanduser(), download)
    candidates = []
    env_folder = Path(os.environ[ENV_VAR]).expanduser() if os.environ.get(ENV_VAR) else None
    candidates.append((f"${ENV_VAR}", env_folder) if env_folder else (f"${ENV_VAR} (not set)", None))
    if name == "fashion_mnist":
        candidates.append(("Debian package location", DEBIAN_FASHION_MNIST))
    candidates.append(("download cache", CACHE_DIR))

    for _, folder in candidates:
        found = spec.find(folder) if folder is not None else None
        if found is not None:
            return found
        if folder is not None and folder is env_folder:
            _warn_env_folder_without(spec, folder)

    download_note = _download_into(spec, CACHE_DIR) if download else ""
    if isinstance(download_note, Path):
        return download_note
    if not download and spec.download is not None:
        download_note = "; download disabled"
    looked = ", ".join(where if folder is None else f"{where} {folder}" for where, folder in candidates)
    raise DatasetNotFoundError(
        f"dataset '{name}' not found (looked in: {looked}{download_note}). "
        f"To fix, {ROOT_HINT.get()}, or set the environment variable {ENV_VAR} to that folder"
        + "".join(f", or {way}" for way in _other_ways(spec, tried_download=download)) + "."
    )


ENV_WARNING = f"${ENV_VAR}="  # how the warning below starts (a grid's workers leave it to the grid's own process)


def _warn_env_folder_without(spec: DatasetSpec, folder: Path) -> None:
    """``$MIXDISTILL_DATA`` names a folder without the dataset: a typo, or a copy cut short there, is said before the
    search goes on (it trained on another copy without a word); a folder of other datasets is not."""
    missing = spec.missing(folder) if folder.is_dir() else []
    why = ("does not exist" if not folder.exists() else "is not a folder" if not folder.is_dir() else
           f"holds part of {spec.name}: {_files_text(missing)} missing" if missing else "")
    if why:
        warnings.warn(f"{ENV_WARNING}{folder} {why}; looking for {spec.name} in the usual locations", stacklevel=4)


def _files_text(paths: list[Path]) -> str:
    """``a`` or ``a and 2 more``."""
    return f"{paths[0]}" + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")


def check_root_exists(name: str, root: str | Path) -> None:
    """An explicit data root that is no folder: the error finding the dataset there would raise, without looking
    for the dataset (a grid checks its runs' roots before it makes its folder)."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DatasetNotFoundError(f"data root {root} is a file: give the folder holding {name}'s files")
    if not root.is_dir():
        relative = "" if root.is_absolute() else f", read from the current directory {Path.cwd()}"
        raise DatasetNotFoundError(
            f"data root {root} does not exist{relative} (a data root given in the config or on the command line is "
            f"the only place looked for {name}; leave it unset to search ${ENV_VAR}, the usual locations and the "
            f"download cache). To fix, {ROOT_HINT.get()}")


def _find_in_explicit_root(spec: DatasetSpec, root: Path, download: bool) -> Path:
    check_root_exists(spec.name, root)
    found = spec.find(root)
    if found is not None:
        return found
    if missing := spec.missing(root):  # a download would go beside the user's files, or over them (CIFAR's)
        raise DatasetNotFoundError(f"dataset '{spec.name}' is partly in data root {root}: {_files_text(missing)} "
                                   "missing; nothing downloaded there (complete it, delete it to download it "
                                   "again, or give another data root)")
    note = _download_into(spec, root) if download else ("; download disabled" if spec.download else "")
    if isinstance(note, Path):
        return note
    raise DatasetNotFoundError(
        f"dataset '{spec.name}' not found in data root {root}{note} (a given data root is the only place looked; "
        f"leave it unset to search ${ENV_VAR}, the usual locations and the download cache"
        + "".join(f", or {way}" for way in _other_ways(spec, tried_download=download)) + ")")


def _other_ways(spec: DatasetSpec, tried_download: bool) -> list[str]:
    """The not-found message's other ways to the files: the dataset's own, and a download where it was disabled (one
    that was tried and failed says why in the message)."""
    download = ["let it download from the internet (data.download=true, the default)"] if (
        spec.download is not None and not tried_download) else []
    return [spec.how_to_get] * bool(spec.how_to_get) + download


def _download_into(spec: DatasetSpec, folder: Path) -> Path | str:
    """Download ``spec`` into ``folder``: the folder holding the files, or a note saying why not."""
    if spec.download is None:
        return ""
    made = not folder.exists()
    before = set(folder.iterdir()) if folder.is_dir() else set()
    try:
        log.info("downloading %s into %s", spec.name, folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec.download(folder)
        found = spec.find(folder)
        if found is not None:
            return found
        return "; the download finished but the files are not there"
    except Exception as e:  # no network, proxy, checksum mismatch, disk full ...
        _remove_new_entries(folder, before, made)  # its empty folders were left in the user's data root
        return f"; downloading into {folder} failed: {type(e).__name__}: {one_line(e)}"


def _remove_new_entries(folder: Path, before: set[Path], made: bool) -> None:
    """The empty folders a failed download made in ``folder`` (and ``folder`` itself, where it made it and it is
    empty). Files stay: another process (a torchrun rank, a run beside this one) may be downloading into the same
    folder, and its files are not this download's to remove."""
    new = [entry for entry in set(folder.iterdir()) - before if entry.is_dir() and not entry.is_symlink()]
    for top in new:
        for path in sorted((p for p in [top, *top.rglob("*")] if p.is_dir() and not p.is_symlink()),
                           key=lambda p: len(p.parts), reverse=True):  # the deepest first
            with contextlib.suppress(OSError):  # not empty (a file in it), or gone already
                path.rmdir()
    if made:
        with contextlib.suppress(OSError):
            folder.rmdir()


def load_dataset(name: str, split: str = "train", root=None, download: bool = True) -> Split:
    """Read one split of a registered dataset into CPU memory: uint8 images [N, C, H, W], int64 labels."""
    if name not in DATASETS:
        raise UnknownNameError("dataset", name, DATASETS)
    if split not in SPLITS:
        raise UnknownNameError("split", split, SPLITS)
    spec = DATASETS[name]
    folder = find_root(name, root, download)
    images, labels = spec.reader(folder, split)
    if spec.num_classes is not None and tuple(images.shape[1:]) != (spec.in_channels, *image_hw(spec.image_size)):
        _, C, H, W = images.shape  # the zoo's nets and the normalisation are built for the dataset's own shape
        raise DataError(f"the {name} {split} split in {folder} holds {C}x{H}x{W} images, not {name}'s "
                        f"{spec.in_channels}x{'x'.join(map(str, image_hw(spec.image_size)))}")
    if spec.num_classes is None:  # imagefolder: fill in what the files say
        check_two_classes(classes := readers.folder_classes(folder / "train"), folder / "train")
        _, C, H, W = images.shape
        spec = dataclasses.replace(
            spec,
            num_classes=len(classes),
            class_names=tuple(classes),
            in_channels=C,
            image_size=H if H == W else (H, W),
            mean=spec.mean * C if len(spec.mean) == 1 else spec.mean,
            std=spec.std * C if len(spec.std) == 1 else spec.std,
            crop_padding=max(1, min(H, W) // 8),
        )
    _check_labels(labels, spec.num_classes, f"{name} {split} split in {folder}")
    return Split(images, labels, spec, folder)


def check_two_classes(classes, folder) -> None:
    """An image folder of fewer than two classes is refused: it trained to 100% and a loss of 0 without a word."""
    if len(classes) < 2:
        raise DataError(f"{folder} holds {len(classes)} class folder{'s' * (len(classes) != 1)}: a classifier needs "
                        "two or more")


def check_class_names(recorded, found, where: str) -> None:
    """An image folder's classes are its folder names in sorted order; a network trained on ``recorded`` scores
    labels by position, so ``found`` (another folder's, or the same folder's now) must be the same names."""
    if recorded and found and list(recorded) != list(found):
        first = next((i for i, (a, b) in enumerate(zip(recorded, found)) if a != b), min(len(recorded), len(found)))
        was = recorded[first] if first < len(recorded) else "nothing"
        now = found[first] if first < len(found) else "nothing"
        raise DataError(f"{where}: class {first} is '{now}' where the network learnt '{was}' (an image folder's "
                        "labels are its class folders in sorted order: the same names are needed)")


def image_hw(image_size) -> tuple[int, int]:
    """(height, width) of an image size given as one side (square) or as (H, W)."""
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


def _check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Every label must name a class: one outside 0..num_classes-1 would crash training mid-run."""
    if len(labels) == 0:
        raise DataError(f"the {where} holds no images")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        bad = int(((labels < 0) | (labels >= num_classes)).sum())
        raise DataError(f"the {where} has {bad} label(s) outside 0..{num_classes - 1} (found {low}..{high})")
