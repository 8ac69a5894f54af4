"""Readers for the on-disk dataset formats.

Every reader returns ``(images, labels)``: a uint8 tensor ``[N, C, H, W]`` and an int64 tensor ``[N]``,
both on the CPU. Each ``find_*`` function takes a folder and returns the folder that actually holds the
files (the folder itself or the subfolder torchvision would create there), or ``None``.
Files that exist but cannot be read raise :class:`DataError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mixdistill.errors import DataError, DatasetNotFoundError
from mixdistill.machine import available_cpus

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_tensors(images: np.ndarray, labels) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
    labels = torch.from_numpy(np.asarray(labels, dtype=np.int64).copy())
    return images, labels


def class_labels(labels, path, what: str = "labels") -> np.ndarray:
    """``labels`` read from ``path`` as one row of whole numbers that fit a class index (``what``: how the message
    names them): a column [N, 1] (or a row [1, N]) is flattened, as numpy saves labels either way; fractions (0.7
    was read as class 0), other shapes and unsigned values past int64 (they wrapped to negative classes) are a
    DataError naming the file."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and 1 in labels.shape:
        labels = labels.reshape(-1)
    if labels.ndim != 1:
        raise DataError(f"cannot read {path}: expected {what} [N], got shape {list(labels.shape)}")
    if len(labels) and not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"cannot read {path}: its {what} are {labels.dtype}, not whole numbers")
    if len(labels) and np.issubdtype(labels.dtype, np.unsignedinteger) and labels.max() > np.uint64(2**63 - 1):
        raise DataError(f"cannot read {path}: its {what} go up to {labels.max()}, past any class index")
    return labels


# ----------------------------------------------------------------------------------------------- CIFAR

CIFAR_LAYOUT = {
    # num_classes: (torchvision folder name, train files, test files, label key)
    10: ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels"),
    100: ("cifar-100-python", ["train"], ["test"], "fine_labels"),
}


def find_cifar(root, num_classes: int = 10) -> Path | None:
    folder, train_files, test_files, _ = CIFAR_LAYOUT[num_classes]
    root = Path(root)
    for d in (root, root / folder):
        if all((d / f).is_file() for f in train_files + test_files):
            return d
    return None


def cifar_missing(root, num_classes: int = 10) -> list[Path]:
    """The files a partly present CIFAR copy in ``root`` lacks (none of it there, or all of it: [])."""
    folder, train_files, test_files, _ = CIFAR_LAYOUT[num_classes]
    for d in (Path(root), Path(root) / folder):
        there = [(d / f).is_file() for f in train_files + test_files]
        if any(there) and not all(there):
            return [d / f for f, ok in zip(train_files + test_files, there) if not ok]
    return []


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays, and nothing else: a crafted data file
    cannot run code (the plain unpickler would call whatever global the file names)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"), ("__builtin__", "object"),
        ("builtins", "object"), ("__builtin__", "bytes"), ("builtins", "bytes"),  # an empty array's buffer
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a data file has no reason to hold "
                                     f"(only arrays, lists and dicts are read)")


def _load_pickle(path: Path) -> dict:
    """A CIFAR batch: a pickled dict, written by Python 2 (bytes keys) or re-saved by Python 3 (str keys);
    the keys are returned as str."""
    try:
        with open(path, "rb") as f:
            obj = _DataOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # corrupt pickles raise almost anything
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise DataError(f"cannot read {path}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def read_cifar(root, split: str, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10/100 python pickles; ``root`` is the parent folder or the batches folder itself."""
    d = find_cifar(root, num_classes)
    if d is None:
        raise DatasetNotFoundError(f"no CIFAR-{num_classes} python archive in {root}")
    _, train_files, test_files, label_key = CIFAR_LAYOUT[num_classes]
    images, labels = [], []
    for name in train_files if split == "train" else test_files:
        path = d / name
        batch = _load_pickle(path)
        if "data" not in batch or label_key not in batch:
            raise DataError(f"cannot read {path}: missing key 'data' or {label_key!r}")
        data = np.asarray(batch["data"])
        lab = class_labels(batch[label_key], path, repr(label_key))
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(lab) != len(data):
            raise DataError(
                f"cannot read {path}: expected uint8 data [N, 3072] and N labels, "
                f"got data {data.dtype} {list(data.shape)} and {len(lab)} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    return _to_tensors(np.concatenate(images), np.concatenate(labels))


def read_cifar10(root, split: str):
    return read_cifar(root, split, 10)


def read_cifar100(root, split: str):
    return read_cifar(root, split, 100)


# ------------------------------------------------------------------------------------------------- IDX

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_PREFIX = {"train": "train", "test": "t10k"}
# where (Fashion-)MNIST files may sit under a root: the root itself, torchvision's layout, common names
TORCHVISION_IDX_FOLDER = "FashionMNIST/raw"
IDX_SUBDIRS = (".", TORCHVISION_IDX_FOLDER, "fashion-mnist", "fashion_mnist")


def read_idx(path) -> np.ndarray:
    """One IDX file (gzipped when the name ends in .gz); the header's dims are checked against the payload."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"cannot read {path}: not an IDX file (bad magic number {data[:4].hex()})")
    dtype, ndim = np.dtype(IDX_DTYPES[data[2]]), data[3]
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(f"cannot read {path}: truncated header")
    dims = [int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4)]
    expected = math.prod(dims) * dtype.itemsize  # Python's integers: a crafted header's product overflowed int64
    if len(data) - offset != expected:
        raise DataError(
            f"cannot read {path}: header says {dims} ({expected} bytes of data) "
            f"but the file holds {len(data) - offset} bytes; truncated or corrupt"
        )
    return np.frombuffer(data, dtype, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _idx_file(d: Path, split: str, kind: str) -> Path | None:
    """kind: 'images' or 'labels'; prefers the uncompressed file when both exist."""
    base = f"{IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for name in (base, base + ".gz"):
        if (d / name).is_file():
            return d / name
    return None


def find_idx(root) -> Path | None:
    """The folder holding all four (Fashion-)MNIST IDX files."""
    root = Path(root)
    for sub in IDX_SUBDIRS:
        d = root / sub
        if all(_idx_file(d, s, k) for s in IDX_PREFIX for k in ("images", "labels")):
            return d if sub != "." else root
    return None


def idx_missing(root) -> list[Path]:
    """The files a partly present (Fashion-)MNIST copy in ``root`` lacks (none of it there, or all of it: []); not
    in torchvision's own folder, where an interrupted download is finished by downloading again."""
    for sub in (s for s in IDX_SUBDIRS if s != TORCHVISION_IDX_FOLDER):
        d = Path(root) / sub
        wanted = [(s, k) for s in IDX_PREFIX for k in ("images", "labels")]
        there = [_idx_file(d, s, k) is not None for s, k in wanted]
        if any(there) and not all(there):
            return [d / f"{IDX_PREFIX[s]}-{k}-idx{3 if k == 'images' else 1}-ubyte[.gz]"
                    for (s, k), ok in zip(wanted, there) if not ok]
    return []


def read_idx_pair(images_path, labels_path) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = read_idx(images_path), class_labels(read_idx(labels_path), labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"cannot read {images_path}: expected uint8 images [N, H, W], got {images.dtype} {list(images.shape)}")
    if len(labels) != len(images):
        raise DataError(f"{labels_path} holds {len(labels)} labels but {images_path} holds {len(images)} images")
    return _to_tensors(images[:, None], labels)


def read_mnist_like(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(Fashion-)MNIST IDX files in ``root`` or in one of its usual subfolders (``FashionMNIST/raw``)."""
    d = find_idx(root)
    if d is None:
        raise DatasetNotFoundError(f"no IDX files (train-images-idx3-ubyte[.gz] etc.) in {root}")
    return read_idx_pair(_idx_file(d, split, "images"), _idx_file(d, split, "labels"))


# ---------------------------------------------------------------------------------------- image files


def _open(path: Path):
    try:
        return Image.open(path)
    except Exception as e:
        raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None


def _in_threads(fn, items) -> list:
    """``fn`` over ``items`` in threads (PIL decodes without the GIL); the first error, in item order, is raised."""
    with ThreadPoolExecutor(max_workers=min(8, available_cpus())) as pool:
        return list(pool.map(fn, items))


def image_mode(paths: list[Path]) -> str:
    """'L' when every image is greyscale, else 'RGB': one colour image makes the whole set colour (it was the
    first image's mode, so one greyscale image first turned a colour dataset grey). Reads headers, in order, up to
    the first colour image (one, for a colour folder); a file that cannot be opened is left to the decoding."""
    for path in paths:
        try:
            with Image.open(path) as im:
                if im.mode not in GRAY_MODES:
                    return "RGB"
        except Exception:  # noqa: BLE001 - reported, naming the file, when its split is decoded
            pass
    return "L"


def in_mode(im: Image.Image, mode: str, path) -> Image.Image:
    """``im`` as an 8-bit ``mode`` ('L' or 'RGB') image: PIL's convert, except that 16-bit images are scaled to 8
    bits (their top 8 bits, torchvision.io's scale, 65535 -> 255) where convert clips them at 255, and 32-bit ones,
    whose range is not known, are refused. Pillow before 10.3 opens a 16-bit PNG as 32-bit 'I': values within
    0-255 are taken as they are, within 0-65535 as 16 bits."""
    if im.mode in SIXTEEN_BIT or im.mode == "I":
        values = np.asarray(im)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if im.mode == "I" and not 0 <= low <= high <= 65535:
            raise DataError(f"{path} holds 32-bit integers (PIL mode I, {low}..{high}), whose range to 0-255 is not "
                            "known: save it as 8- or 16-bit")
        if im.mode in SIXTEEN_BIT or high > 255:
            im = Image.fromarray((values.astype(np.int64) >> 8).astype(np.uint8))
    elif im.mode == "F":
        raise DataError(f"{path} holds 32-bit floats (PIL mode F), whose range to 0-255 is not known: save it as "
                        "8- or 16-bit")
    return im if im.mode == mode else im.convert(mode)


def decode_images(paths: list[Path], mode: str | None = None) -> np.ndarray:
    """Decode image files into one uint8 array [N, C, H, W] (threads; PIL decodes without the GIL).

    ``mode`` is 'L' or 'RGB'; None: :func:`image_mode` of ``paths``. Every image is converted to that mode (16-bit
    ones scaled, not clipped). All images must have the first image's size.
    """
    if not paths:
        raise DataError("no images to decode")
    mode = image_mode(paths) if mode is None else mode
    with _open(paths[0]) as im:
        size = im.size
    channels = 1 if mode == "L" else 3
    out = np.empty((len(paths), channels, size[1], size[0]), dtype=np.uint8)

    def decode(i: int) -> None:
        path = paths[i]
        with _open(path) as im:
            if im.size != size:
                raise DataError(
                    f"images of different sizes: {paths[0]} is {size[0]}x{size[1]} but "
                    f"{path} is {im.size[0]}x{im.size[1]} (width x height); resize them to one size"
                )
            try:
                arr = np.asarray(in_mode(im, mode, path))  # [H, W] ('L') or [H, W, 3] ('RGB')
            except DataError:
                raise
            except Exception as e:
                raise DataError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None
        out[i] = arr[None] if channels == 1 else arr.transpose(2, 0, 1)

    _in_threads(decode, range(len(paths)))
    return out


def folder_classes(root) -> list[str]:
    """Sorted names of the non-hidden subfolders of ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"no such folder: {root}")
    return sorted(p.name for p in _entries(root) if p.is_dir() and not p.name.startswith("."))


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as e:  # permissions: one line, not a traceback
        raise DataError(f"cannot read folder {folder}: {e.strerror or e}") from None


def image_files(folder: str) -> list[str]:
    """The image files below ``folder``, sub-folders too (as torchvision's ImageFolder reads them; hidden files and
    folders left out), as paths relative to it in sorted walk order. A folder that cannot be listed is a DataError
    (``os.walk`` skipped it, and its class was called empty)."""
    def refuse(err: OSError):
        raise DataError(f"cannot read folder {err.filename}: {err.strerror or err}")

    found = []
    above = {}  # real path of each folder walked -> the real paths of the folders above it
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True, onerror=refuse):
        real = os.path.realpath(dirpath)
        chain = above.get(real, set()) | {real}
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            inner = os.path.realpath(os.path.join(dirpath, d))
            if any(c == inner or c.startswith(inner.rstrip(os.sep) + os.sep) for c in chain):  # read it again
                raise DataError(f"{os.path.join(dirpath, d)} links back to {inner}, a folder it is in: the images "
                                "would be read again and again (remove the link)")
            above[inner] = chain
        rel = os.path.relpath(dirpath, folder)
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMG_EXTENSIONS:
                found.append(name if rel == "." else os.path.join(rel, name))
    return found


def scan_image_folder(folder, classes) -> tuple[list[str], list[int]]:
    """``(paths relative to folder, labels)`` of ``folder/<class>/**/<image>``, classes in the given order (label =
    position). A class folder not in ``classes``, or one without images, is an error; a missing one is allowed."""
    folder = Path(folder)
    extra = set(folder_classes(folder)) - set(classes)
    if extra:
        raise DataError(f"{folder} has class folders not in the training classes: {', '.join(sorted(extra))}")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        if not (folder / cls).is_dir():
            continue
        files = image_files(str(folder / cls))
        if not files:
            raise DataError(f"class folder {folder / cls} holds no image files ({', '.join(IMG_EXTENSIONS)}); "
                            "remove it or add its images (an empty class would silently change the class count)")
        paths += [os.path.join(cls, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in the class folders of {folder}")
    return paths, labels


def _folder_files(root: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    """The image files of ``root/<class>/`` (sub-folders too) and their labels (the class's index in ``classes``)."""
    paths, labels = scan_image_folder(root, classes)
    return [root / p for p in paths], labels


def read_image_folder(root, classes: list[str] | None = None, mode: str | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """``root/<class>/<image>``, classes sorted by name (or given), everything decoded into memory.

    ``mode``: 'L' or 'RGB'; None: greyscale when every image is, else RGB. Sizes must all be equal.
    """
    root = Path(root)
    paths, labels = _folder_files(root, folder_classes(root) if classes is None else classes)
    return _to_tensors(decode_images(paths, mode), labels)


def find_image_folder(root) -> Path | None:
    """An image-folder dataset root holds ``train/<class>/...`` and ``test/`` (or ``val/``) beside it."""
    root = Path(root)
    return root if (root / "train").is_dir() else None


def read_image_folder_split(root, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``root/train`` for the train split, ``root/test`` (or ``root/val``) for test; classes from train. Both
    splits are read in one mode (greyscale when every image of both is) and must have one image size."""
    root = Path(root)
    classes = folder_classes(root / "train")
    test = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test is None:
        raise DatasetNotFoundError(f"image folder {root} has no test/ or val/ folder for the test split")
    train_paths, train_labels = _folder_files(root / "train", classes)
    test_paths, test_labels = _folder_files(test, classes)
    mode = image_mode(train_paths + test_paths)
    paths, labels, other = ((train_paths, train_labels, test_paths) if split == "train"
                            else (test_paths, test_labels, train_paths))
    images = decode_images(paths, mode)
    with _open(other[0]) as im:
        if im.size != (images.shape[3], images.shape[2]):
            raise DataError(f"the train and test images differ in size: {paths[0]} is {images.shape[3]}x"
                            f"{images.shape[2]} but {other[0]} is {im.size[0]}x{im.size[1]} (width x height); "
                            "resize them to one size")
    return _to_tensors(images, labels)


# -------------------------------------------------------------------------------------- Tiny-ImageNet


def find_tiny_imagenet(root) -> Path | None:
    root = Path(root)
    for d in (root, root / "tiny-imagenet-200"):
        if (d / "wnids.txt").is_file() and (d / "train").is_dir() and (d / "val").is_dir():
            return d
    return None


def read_tiny_imagenet(root, split: str, num_classes: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny-ImageNet-200; the test split is the labelled ``val`` set, as released (``val/images/`` and
    ``val/val_annotations.txt``) or sorted into ``val/<wnid>/`` folders. Labels index the sorted wnids, of which
    ``wnids.txt`` must list ``num_classes`` (a tree of 3 trained a 200-way classifier)."""
    d = find_tiny_imagenet(root)
    if d is None:
        raise DatasetNotFoundError(f"no Tiny-ImageNet (wnids.txt, train/, val/) in {root}")
    try:
        wnids = sorted({w.strip() for w in (d / "wnids.txt").read_text().split() if w.strip()})
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {d / 'wnids.txt'}: {e}") from None
    if len(wnids) != num_classes:
        raise DataError(f"{d / 'wnids.txt'} lists {len(wnids)} wnids; Tiny-ImageNet has {num_classes} (a subset of "
                        "its classes is an image folder: train/<wnid>/*.JPEG, test/<wnid>/*.JPEG and "
                        "data.dataset=imagefolder)")
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    if split == "train":
        extra = sorted(set(folder_classes(d / "train")) - set(wnids))
        if extra:  # its images were left out without a word
            raise DataError(f"Tiny-ImageNet: {d / 'train'} has folders wnids.txt does not list: "
                            f"{', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        for w in wnids:
            img_dir = d / "train" / w / "images"
            if not img_dir.is_dir():
                raise DataError(f"Tiny-ImageNet: missing folder {img_dir}")
            files = image_files(str(img_dir))
            if not files:
                raise DataError(f"Tiny-ImageNet: {img_dir} holds no image files")
            paths += [img_dir / f for f in files]
            labels += [index[w]] * len(files)
    elif not (d / "val" / "val_annotations.txt").is_file():  # val/ sorted into wnid folders
        if not set(folder_classes(d / "val")) & set(wnids):
            raise DataError(f"Tiny-ImageNet: {d / 'val'} holds neither val_annotations.txt nor wnid folders")
        found, labels = scan_image_folder(d / "val", wnids)
        paths = [d / "val" / p for p in found]
    else:
        ann = d / "val" / "val_annotations.txt"
        try:
            lines = ann.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {ann}: {e}") from None
        rows = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or fields[1] not in index:
                raise DataError(f"{ann}, line {n}: expected '<file>\\t<wnid>...' with a wnid from wnids.txt")
            rows.append((fields[0], index[fields[1]]))
        twice = sorted(name for name, n in Counter(name for name, _ in rows).items() if n > 1)[:3]
        if twice:
            raise DataError(f"{ann} lists {', '.join(twice)} more than once")
        unlisted = sorted(set(image_files(str(d / "val" / "images"))) - {name for name, _ in rows})
        if unlisted:  # left out without a word
            raise DataError(f"{d / 'val' / 'images'} holds {len(unlisted)} image(s) {ann.name} does not list: "
                            f"{', '.join(unlisted[:3])}{' ...' if len(unlisted) > 3 else ''}")
        for name, label in sorted(rows):
            paths.append(d / "val" / "images" / name)
            labels.append(label)
    return _to_tensors(decode_images(paths, mode="RGB"), labels)
