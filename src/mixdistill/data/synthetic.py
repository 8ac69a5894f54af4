"""Synthetic datasets written in the real on-disk formats (CIFAR pickle archives, IDX files).

For tests, benchmarks and smoke runs on machines without the real data. Each class is a learnable
pattern (a bright bar at a class-specific position) under noise, so accuracy moves above chance.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def _patterned(n: int, classes: int, shape: tuple[int, ...], seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 90, (n, *shape)).astype(np.uint8)  # [..., H, W] last
    h = shape[-2]
    for c in range(classes):
        row = (c * (h - 3)) // max(1, classes - 1)
        col = (c * 7) % max(1, shape[-1] - 12)
        images[labels == c, ..., row:row + 3, col:col + 12] = 230
    return images, labels


def write_idx(path: str | Path, array: np.ndarray, compress: bool = True) -> Path:
    """IDX: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, then the raw bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    payload = header + array.astype(np.uint8).tobytes()
    path = Path(str(path) + (".gz" if compress else ""))
    if compress:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_like(root: str | Path, n_train: int = 800, n_test: int = 200, seed: int = 0) -> Path:
    """28x28 grayscale, 10 classes, gzipped IDX files named as Fashion-MNIST's."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = _patterned(n, 10, (28, 28), s)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels.astype(np.uint8))
    return root


def write_cifar_like(root: str | Path, num_classes: int = 100, n_train: int = 50000, n_test: int = 10000,
                     seed: int = 0) -> Path:
    """32x32 RGB in torchvision's CIFAR-10 (5 train batches + test_batch) or CIFAR-100 (train, test) layout."""
    root = Path(root)
    train_x, train_y = _patterned(n_train, num_classes, (3, 32, 32), seed)
    test_x, test_y = _patterned(n_test, num_classes, (3, 32, 32), seed + 1)
    if num_classes == 100:
        d = root / "cifar-100-python"
        files = {"train": (train_x, train_y), "test": (test_x, test_y)}
        label_key = b"fine_labels"
    elif num_classes == 10:
        d = root / "cifar-10-batches-py"
        parts = np.array_split(np.arange(n_train), 5)
        files = {f"data_batch_{i + 1}": (train_x[p], train_y[p]) for i, p in enumerate(parts)}
        files["test_batch"] = (test_x, test_y)
        label_key = b"labels"
    else:
        raise ValueError("num_classes must be 10 or 100")
    d.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in files.items():
        with open(d / name, "wb") as f:
            pickle.dump({b"data": x.reshape(len(x), -1), label_key: y.tolist()}, f)
    return root


if __name__ == "__main__":  # python -m mixdistill.data.synthetic cifar100 DIR [n_train n_test]
    import sys

    kind, out = sys.argv[1], sys.argv[2]
    sizes = [int(v) for v in sys.argv[3:5]]
    if kind == "fashion_mnist":
        write_fashion_like(out, *sizes)
    else:
        write_cifar_like(out, {"cifar10": 10, "cifar100": 100}[kind], *sizes)
    print(out)
