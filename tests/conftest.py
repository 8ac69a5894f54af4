"""Shared fixtures: small datasets written in the real on-disk formats."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> None:
    """IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian int32 dims, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def make_fashion_like(n: int, seed: int, classes: int = 10):
    """28x28 grayscale images whose class is a learnable pattern (a bright bar at a class-specific
    position) under noise, so a tiny net beats chance within an epoch."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n).astype(np.uint8)
    images = rng.integers(0, 90, (n, 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        row = 2 + 2 * int(c)
        images[i, row:row + 3, 4:24] = 230
    return images, labels


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """A small Fashion-MNIST lookalike in the real IDX layout (gzipped), 800 train / 200 test."""
    root = tmp_path_factory.mktemp("fmnist")
    for prefix, n, seed in (("train", 800, 0), ("t10k", 200, 1)):
        images, labels = make_fashion_like(n, seed)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels)
    return root


@pytest.fixture
def tiny_run_overrides(fmnist_root, tmp_path):
    """Overrides for a seconds-long CPU training run on the fixture data."""
    return [f"data.root={fmnist_root}", f"output_dir={tmp_path / 'runs'}", "data.batch_size=64",
            "data.eval_batch_size=200", "model.student=cnn5_w8", "optim.schedule=onecycle", "optim.milestones=[]",
            "optim.lr=0.05", "optim.epochs=3", "train.progress=false", "train.tensorboard=false",
            "train.device=cpu", "train.precision=fp32"]
