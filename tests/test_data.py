"""Tests of mixdistill.data: readers on tiny archives in the real layouts, root resolution, transforms, loader."""

import gzip
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mixdistill.data import (DATASETS, DeviceLoader, datasets, load_dataset, normalize, random_crop_flip, readers,
                             streaming)
from mixdistill.errors import DataError, DatasetNotFoundError, UnknownNameError

RNG = np.random.default_rng(0)


# --------------------------------------------------------------------------------- writers (fixtures)


def write_cifar10(root: Path, per_batch=3, n_test=4):
    """Five train batches and a test batch in root/cifar-10-batches-py; returns (train, test) arrays."""
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    out = {}
    for split, names, n in (("train", [f"data_batch_{i}" for i in range(1, 6)], per_batch), ("test", ["test_batch"], n_test)):
        xs, ys = [], []
        for name in names:
            x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
            y = RNG.integers(0, 10, n).tolist()
            with open(d / name, "wb") as f:
                pickle.dump({b"batch_label": name.encode(), b"data": x, b"labels": y, b"filenames": [b"f"] * n}, f)
            xs.append(x)
            ys += y
        out[split] = (np.concatenate(xs).reshape(-1, 3, 32, 32), np.array(ys))
    return out


def write_cifar100(root: Path, n_train=5, n_test=3):
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = RNG.integers(0, 100, n).tolist()
        with open(d / split, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y, b"coarse_labels": [0] * n}, f)
        out[split] = (x.reshape(-1, 3, 32, 32), np.array(y))
    return out


def idx_bytes(arr: np.ndarray) -> bytes:
    code = {np.uint8: 0x08, np.int32: 0x0C}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(d: Path, gz: bool, n_train=7, n_test=5):
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        x = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = RNG.integers(0, 10, n).astype(np.uint8)
        for kind, arr in (("images-idx3", x), ("labels-idx1", y)):
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (d / (name + ".gz")).write_bytes(gzip.compress(idx_bytes(arr)))
            else:
                (d / name).write_bytes(idx_bytes(arr))
        out[split] = (x[:, None], y.astype(np.int64))
    return out


def save_png(path: Path, arr: np.ndarray, fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def write_image_folder(root: Path, classes=("dog", "cat", "bird"), n=2, size=(6, 8)):
    """root/train/<class>/*.png and root/test/<class>/*.png; returns {split: (images, labels)} expected."""
    out = {}
    for split in ("train", "test"):
        xs, ys = [], []
        for label, cls in enumerate(sorted(classes)):
            for i in range(n):
                arr = RNG.integers(0, 256, (*size, 3), dtype=np.uint8)
                save_png(root / split / cls / f"img{i}.png", arr)
                xs.append(arr.transpose(2, 0, 1))
                ys.append(label)
        out[split] = (np.stack(xs), np.array(ys))
    return out


# ------------------------------------------------------------------------------------------- readers


def test_cifar10_roundtrip(tmp_path):
    expected = write_cifar10(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        for split in ("train", "test"):
            x, y = readers.read_cifar10(root, split)
            assert x.dtype == torch.uint8 and y.dtype == torch.int64
            assert x.shape == (len(expected[split][1]), 3, 32, 32)
            assert np.array_equal(x.numpy(), expected[split][0])
            assert np.array_equal(y.numpy(), expected[split][1])


def test_cifar100_roundtrip(tmp_path):
    expected = write_cifar100(tmp_path)
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        for split in ("train", "test"):
            x, y = readers.read_cifar100(root, split)
            assert np.array_equal(x.numpy(), expected[split][0])
            assert np.array_equal(y.numpy(), expected[split][1])


def test_corrupt_pickle_names_file(tmp_path):
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_3"):
        readers.read_cifar10(tmp_path, "train")
    bad.write_bytes(b"this is not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        readers.read_cifar10(tmp_path, "train")


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    expected = write_idx(tmp_path, gz)
    for split in ("train", "test"):
        x, y = readers.read_mnist_like(tmp_path, split)
        assert x.shape == (len(expected[split][1]), 1, 28, 28) and x.dtype == torch.uint8
        assert np.array_equal(x.numpy(), expected[split][0])
        assert np.array_equal(y.numpy(), expected[split][1]) and y.dtype == torch.int64


def test_idx_torchvision_layout(tmp_path):
    expected = write_idx(tmp_path / "FashionMNIST" / "raw", gz=True)
    assert readers.find_idx(tmp_path) == tmp_path / "FashionMNIST" / "raw"
    x, _ = readers.read_mnist_like(tmp_path, "test")
    assert np.array_equal(x.numpy(), expected["test"][0])


def test_idx_int32_and_header(tmp_path):
    arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    (tmp_path / "a").write_bytes(idx_bytes(arr))
    assert np.array_equal(readers.read_idx(tmp_path / "a"), arr)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_raises(tmp_path, gz):
    write_idx(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = idx_bytes(RNG.integers(0, 256, (7, 28, 28), dtype=np.uint8))[:-10]
    (tmp_path / name).write_bytes(gzip.compress(raw) if gz else raw)
    with pytest.raises(DataError, match=name):
        readers.read_mnist_like(tmp_path, "train")


def test_corrupt_gzip_and_bad_magic(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"\0" * 1000)[:30])
    with pytest.raises(DataError, match="x.gz"):
        readers.read_idx(tmp_path / "x.gz")
    (tmp_path / "y").write_bytes(b"\x12\x34\x08\x01" + b"\0" * 8)
    with pytest.raises(DataError, match="y"):
        readers.read_idx(tmp_path / "y")


def test_idx_label_count_mismatch(tmp_path):
    write_idx(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataError, match="t10k-labels"):
        readers.read_mnist_like(tmp_path, "test")


def test_image_folder_roundtrip(tmp_path):
    expected = write_image_folder(tmp_path)
    for split in ("train", "test"):
        x, y = readers.read_image_folder_split(tmp_path, split)
        assert x.shape == (6, 3, 6, 8)
        assert np.array_equal(x.numpy(), expected[split][0])
        assert np.array_equal(y.numpy(), expected[split][1])  # bird=0, cat=1, dog=2


def test_image_folder_mixed_sizes(tmp_path):
    save_png(tmp_path / "a" / "1.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "a" / "2.png", np.zeros((8, 8, 3), np.uint8))
    save_png(tmp_path / "b" / "3.png", np.zeros((9, 7, 3), np.uint8))
    with pytest.raises(DataError) as e:
        readers.read_image_folder(tmp_path)
    msg = str(e.value)
    assert "1.png" in msg and "8x8" in msg and "3.png" in msg and "7x9" in msg


def test_image_folder_is_colour_when_any_image_is(tmp_path):
    """The mode was the first image's: one greyscale image first turned a colour folder grey (and the model with it)."""
    gray = RNG.integers(0, 256, (5, 5), dtype=np.uint8)
    save_png(tmp_path / "a" / "1.png", gray)
    save_png(tmp_path / "b" / "2.png", np.stack([gray] * 3, -1))
    x, y = readers.read_image_folder(tmp_path)
    assert x.shape == (2, 3, 5, 5) and y.tolist() == [0, 1]
    assert all(np.array_equal(x[i, c].numpy(), gray) for i in range(2) for c in range(3))
    (tmp_path / "b" / "2.png").unlink()
    save_png(tmp_path / "b" / "2.png", gray)
    assert readers.read_image_folder(tmp_path)[0].shape == (2, 1, 5, 5)  # every image grey: one channel


def test_image_folder_splits_share_one_mode_and_size(tmp_path):
    """A greyscale train split beside a test split with one colour image: both read as RGB (the test split alone
    was RGB, and normalising it with the train split's one-channel statistics failed); sizes must agree."""
    gray = RNG.integers(0, 256, (6, 6), dtype=np.uint8)
    for split in ("train", "test"):
        for c in ("x", "y"):
            save_png(tmp_path / split / c / "0.png", gray)
    save_png(tmp_path / "test" / "y" / "1.png", np.stack([gray] * 3, -1))
    for split in ("train", "test"):
        assert readers.read_image_folder_split(tmp_path, split)[0].shape[1] == 3
    save_png(tmp_path / "test" / "y" / "1.png", np.stack([RNG.integers(0, 256, (8, 8), dtype=np.uint8)] * 3, -1))
    (tmp_path / "test" / "x" / "0.png").unlink()
    (tmp_path / "test" / "y" / "0.png").unlink()
    save_png(tmp_path / "test" / "x" / "0.png", np.zeros((8, 8), np.uint8))
    for split in ("train", "test"):
        with pytest.raises(DataError, match="train and test images differ in size.* is 6x6 .* is 8x8|"
                                            "train and test images differ in size.* is 8x8 .* is 6x6"):
            readers.read_image_folder_split(tmp_path, split)


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    """PIL's convert clipped every 16-bit value above 255 (a ramp read as 99.6% white)."""
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 3)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    (tmp_path / "a").mkdir()
    (tmp_path / "r.png").rename(tmp_path / "a" / "r.png")
    x, _ = readers.read_image_folder(tmp_path)
    assert x.shape == (1, 1, 8, 8) and np.array_equal(x[0, 0].numpy(), (ramp >> 8).astype(np.uint8))
    assert readers.read_image_folder(tmp_path, mode="RGB")[0].shape == (1, 3, 8, 8)
    # Pillow before 10.3 opens a 16-bit PNG as 32-bit 'I': scaled the same; 8-bit values in 'I' kept; wider refused
    as_i = Image.fromarray(ramp.astype(np.int32))
    assert as_i.mode == "I" and np.array_equal(np.asarray(readers.in_mode(as_i, "L", "x")), ramp >> 8)
    small = np.arange(64, dtype=np.int32).reshape(8, 8)
    assert np.array_equal(np.asarray(readers.in_mode(Image.fromarray(small), "L", "x")), small)
    with pytest.raises(DataError, match=r"x holds 32-bit integers \(PIL mode I, 0..70000\)"):
        readers.in_mode(Image.fromarray(np.array([[0, 70000]], np.int32)), "L", "x")
    # the streaming loader decodes through the same function (it clipped: 40000 read as 255)
    for split in ("train", "test"):
        for c in ("x", "y"):
            (tmp_path / "s" / split / c).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), 40000, np.uint16)).save(tmp_path / "s" / split / c / "0.png")
    images, _ = next(iter(streaming.StreamingImageFolder(tmp_path / "s", "test", image_size=4, batch_size=2,
                                                         num_workers=0, augment=False, mean=(0.0,), std=(1.0,),
                                                         mode="L")))
    assert torch.allclose(images, torch.full_like(images, (40000 >> 8) / 255))
    shutil.rmtree(tmp_path / "s")  # not a class of the folder below
    Image.fromarray(np.ones((8, 8), np.float32)).save(tmp_path / "a" / "f.tif")
    with pytest.raises(DataError, match=r"f.tif holds 32-bit floats \(PIL mode F\)"):
        readers.read_image_folder(tmp_path)


def test_image_folder_unreadable_file(tmp_path):
    save_png(tmp_path / "a" / "1.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "2.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="2.png"):
        readers.read_image_folder(tmp_path)


def test_tiny_imagenet(tmp_path):
    d = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # labels follow sorted order
    d.mkdir()
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    train = {}
    for w in wnids:
        for i in range(2):
            arr = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            save_png(d / "train" / w / "images" / f"{w}_{i}.JPEG", arr)  # PNG content: exact comparison
            train[(w, i)] = arr
    gray = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
    save_png(d / "train" / "n01" / "images" / "n01_2.JPEG", gray)  # Tiny-ImageNet has some grayscale files
    val_rows, val = [], []
    for i, w in enumerate(["n02", "n03", "n01", "n02"]):
        arr = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        save_png(d / "val" / "images" / f"val_{i}.JPEG", arr)
        val_rows.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
        val.append((arr, sorted(wnids).index(w)))
    (d / "val" / "val_annotations.txt").write_text("\n".join(val_rows) + "\n")

    x, y = readers.read_tiny_imagenet(tmp_path, "train", num_classes=3)
    assert x.shape == (7, 3, 64, 64) and y.tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert np.array_equal(x[0].numpy(), train[("n01", 0)].transpose(2, 0, 1))
    assert np.array_equal(x[2].numpy(), np.stack([gray] * 3))
    assert np.array_equal(x[6].numpy(), train[("n03", 1)].transpose(2, 0, 1))
    x, y = readers.read_tiny_imagenet(d, "test", num_classes=3)
    assert y.tolist() == [label for _, label in val]
    assert np.array_equal(x.numpy(), np.stack([a.transpose(2, 0, 1) for a, _ in val]))

    # val/ sorted into wnid folders, as many preparation scripts leave it: the same set
    (d / "sorted").mkdir()
    for w in wnids:
        (d / "sorted" / w).mkdir()
    for i, (w, (arr, _)) in enumerate(zip(["n02", "n03", "n01", "n02"], val)):
        (d / "val" / "images" / f"val_{i}.JPEG").rename(d / "sorted" / w / f"val_{i}.JPEG")
    (d / "val").rename(d / "released")
    (d / "sorted").rename(d / "val")
    x2, y2 = readers.read_tiny_imagenet(d, "test", num_classes=3)
    order = sorted(range(4), key=lambda i: (val[i][1], i))  # class by class, files sorted
    assert y2.tolist() == [val[i][1] for i in order] and torch.equal(x2, x[order])
    (d / "val").rename(d / "sorted")
    (d / "released").rename(d / "val")

    # what was accepted: 3 wnids for the dataset's 200 classes, an empty class, a val file listed twice
    with pytest.raises(DataError, match="lists 3 wnids; Tiny-ImageNet has 200"):
        load_dataset("tiny_imagenet", "train", root=tmp_path, download=False)
    (d / "val" / "val_annotations.txt").write_text("\n".join(val_rows + [val_rows[0]]) + "\n")
    with pytest.raises(DataError, match="lists val_0.JPEG more than once"):
        readers.read_tiny_imagenet(d, "test", num_classes=3)
    # what was left out without a word: a train folder wnids.txt does not list, a val image with no annotation
    (d / "val" / "val_annotations.txt").write_text("\n".join(val_rows) + "\n")
    save_png(d / "val" / "images" / "val_9.JPEG", val[0][0])
    with pytest.raises(DataError, match=r"val/images holds 1 image\(s\) val_annotations.txt does not list: val_9.JPEG"):
        readers.read_tiny_imagenet(d, "test", num_classes=3)
    save_png(d / "train" / "n77" / "images" / "n77_0.JPEG", val[0][0])
    with pytest.raises(DataError, match="train has folders wnids.txt does not list: n77"):
        readers.read_tiny_imagenet(d, "train", num_classes=3)
    shutil.rmtree(d / "train" / "n77")
    for f in (d / "train" / "n02" / "images").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="n02/images holds no image files"):
        readers.read_tiny_imagenet(d, "train", num_classes=3)


def test_a_named_dataset_of_another_image_shape_is_refused(tmp_path):
    """32x32 IDX files read as fashion_mnist (28x28) were accepted, and each split could differ from the other."""
    from mixdistill.data.synthetic import write_idx

    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="fashion_mnist train split in .* holds 1x32x32 images, not fashion_mnist's "
                                        "1x28x28"):
        load_dataset("fashion_mnist", "train", root=tmp_path, download=False)
    assert load_dataset("fashion_mnist", "test", root=tmp_path, download=False).images.shape == (4, 1, 28, 28)


# ------------------------------------------------------------------------------- registry and roots


@pytest.fixture
def no_default_roots(tmp_path, monkeypatch):
    """No env var, an empty Debian location and download cache."""
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "debian")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    return tmp_path


def test_registry():
    assert set(DATASETS) == {"cifar10", "cifar100", "fashion_mnist", "imagefolder", "imagenet", "tiny_imagenet"}
    assert DATASETS["cifar100"].mean == (0.5071, 0.4867, 0.4408)
    assert DATASETS["cifar10"].std == (0.2470, 0.2435, 0.2616)
    assert DATASETS["fashion_mnist"].crop_padding == 2 and DATASETS["fashion_mnist"].in_channels == 1
    assert DATASETS["tiny_imagenet"].crop_padding == 8
    with pytest.raises(UnknownNameError, match="cifar10"):
        load_dataset("cifar-10", "train")
    with pytest.raises(UnknownNameError):
        load_dataset("cifar10", "validation")


def test_load_dataset_cifar(no_default_roots):
    expected = write_cifar10(no_default_roots / "data")
    s = load_dataset("cifar10", "test", root=no_default_roots / "data", download=False)
    assert s.root == no_default_roots / "data" / "cifar-10-batches-py" and s.spec is DATASETS["cifar10"]
    assert np.array_equal(s.images.numpy(), expected["test"][0])
    assert len(s) == 4


def test_root_order(no_default_roots, monkeypatch):
    tmp = no_default_roots
    write_idx(tmp / "explicit", gz=False, n_train=2)
    write_idx(tmp / "env" / "FashionMNIST" / "raw", gz=True, n_train=3)
    write_idx(tmp / "debian", gz=True, n_train=4)
    monkeypatch.setenv(datasets.ENV_VAR, str(tmp / "env"))
    n = lambda **kw: len(load_dataset("fashion_mnist", "train", download=False, **kw))
    assert n(root=tmp / "explicit") == 2
    assert n() == 3
    # an explicit root is the only place looked: missing, or without the files, is an error (no fallback)
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        n(root=tmp / "missing")
    (tmp / "file").write_text("")
    with pytest.raises(DatasetNotFoundError, match="data root .*file is a file: give the folder holding "
                                                   "fashion_mnist's files"):
        n(root=tmp / "file")  # it was "does not exist"
    (tmp / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="only place looked"):
        n(root=tmp / "empty")
    monkeypatch.delenv(datasets.ENV_VAR)
    assert n() == 4
    assert load_dataset("fashion_mnist", "train", download=False).root == tmp / "debian"
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp / "nothing")
    with pytest.raises(DatasetNotFoundError) as e:
        n()
    msg = str(e.value)
    for part in ("--data-root", "data.root", "MIXDISTILL_DATA", "apt-get install dataset-fashion-mnist",
                 str(tmp / "nothing"), str(tmp / "cache")):
        assert part in msg, part
    assert "\n" not in msg


def test_env_root_holds_several_datasets(no_default_roots, monkeypatch):
    write_cifar10(no_default_roots / "all")
    write_cifar100(no_default_roots / "all")
    monkeypatch.setenv(datasets.ENV_VAR, str(no_default_roots / "all"))
    assert load_dataset("cifar10", "test", download=False).root.name == "cifar-10-batches-py"
    assert load_dataset("cifar100", "test", download=False).root.name == "cifar-100-python"
    with pytest.raises(DatasetNotFoundError, match="tiny-imagenet-200.zip"):
        load_dataset("tiny_imagenet", "train", download=False)


@pytest.mark.parametrize("error, cause", [
    (OSError("Network is unreachable"), "OSError: Network is unreachable"),
    # torchvision's message, whose first line says nothing of why
    (RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried http://mirror/, got:\n<urlopen error "
                  "[Errno -2] Name or service not known>\n"),
     "RuntimeError: Error downloading train-images-idx3-ubyte.gz: Tried http://mirror/, got: <urlopen error [Errno -2] "
     "Name or service not known>"),
])
def test_failed_download_is_caught(no_default_roots, monkeypatch, error, cause):
    def offline(root):
        raise error

    monkeypatch.setitem(DATASETS, "cifar100", datasets.dataclasses.replace(DATASETS["cifar100"], download=offline))
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset("cifar100", "train", download=True)
    assert f"failed: {cause}" in str(e.value) and "--data-root" in str(e.value) and "\n" not in str(e.value)
    assert "let it download" not in str(e.value)  # it did, and the message says why that failed
    with pytest.raises(DatasetNotFoundError, match=r"download disabled.*or let it download from the internet "
                                                   r"\(data.download=true"):
        load_dataset("cifar100", "train", download=False)


def test_a_failed_download_leaves_the_data_root_as_it_was(no_default_roots, monkeypatch):
    """torchvision's FashionMNIST/raw/ stayed, empty, in the user's own folder (an image tree given as data.root)."""
    def half_done(root):
        (root / "FashionMNIST" / "raw").mkdir(parents=True)
        (root / "FashionMNIST" / "processed").mkdir(parents=True)
        raise OSError("Network is unreachable")

    monkeypatch.setitem(DATASETS, "fashion_mnist",
                        datasets.dataclasses.replace(DATASETS["fashion_mnist"], download=half_done))
    mine = no_default_roots / "imgs"
    (mine / "cat").mkdir(parents=True)
    (mine / "cat" / "1.png").write_bytes(b"png")
    with pytest.raises(DatasetNotFoundError, match="Network is unreachable"):
        load_dataset("fashion_mnist", "train", root=mine)
    assert sorted(p.relative_to(mine).as_posix() for p in mine.rglob("*")) == ["cat", "cat/1.png"]
    assert not (no_default_roots / "cache").exists()
    with pytest.raises(DatasetNotFoundError, match="Network is unreachable"):  # the cache folder it made: gone again
        load_dataset("fashion_mnist", "train")
    assert not (no_default_roots / "cache").exists()

    def beside_another(root):  # a file there is another process's download (a torchrun rank's): it stays
        (root / "FashionMNIST" / "raw").mkdir(parents=True)
        (root / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz").write_bytes(b"theirs")
        raise OSError("Network is unreachable")

    monkeypatch.setitem(DATASETS, "fashion_mnist",
                        datasets.dataclasses.replace(DATASETS["fashion_mnist"], download=beside_another))
    with pytest.raises(DatasetNotFoundError):
        load_dataset("fashion_mnist", "train", root=mine)
    assert (mine / "FashionMNIST" / "raw" / "train-labels-idx1-ubyte.gz").read_bytes() == b"theirs"


def test_download_into_cache(no_default_roots, monkeypatch):
    def fake_download(root):
        write_cifar10(root)

    monkeypatch.setitem(DATASETS, "cifar10", datasets.dataclasses.replace(DATASETS["cifar10"], download=fake_download))
    s = load_dataset("cifar10", "train")
    assert s.root == no_default_roots / "cache" / "cifar-10-batches-py" and len(s) == 15


def test_imagefolder_dataset(no_default_roots):
    write_image_folder(no_default_roots / "imgs", size=(8, 8))
    s = load_dataset("imagefolder", "test", root=no_default_roots / "imgs")
    assert s.spec.num_classes == 3 and s.spec.in_channels == 3 and s.spec.image_size == 8
    assert s.spec.mean == (0.5, 0.5, 0.5) and s.spec.crop_padding == 1


def test_subset_stratified_and_deterministic():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    s = datasets.Split(torch.arange(100, dtype=torch.uint8).reshape(100, 1, 1, 1), labels, DATASETS["cifar10"], Path("."))
    a, b, c = s.subset(10, seed=1), s.subset(10, seed=1), s.subset(10, seed=2)
    assert torch.bincount(a.labels).tolist() == [5, 3, 2]
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert torch.equal(a.labels, labels[a.images.flatten().long()])  # images and labels stay paired
    assert (a.images.flatten().diff() > 0).all()  # original order kept
    counts = torch.bincount(s.subset(33, seed=0).labels, minlength=3)
    assert counts.sum() == 33 and ((counts - torch.tensor([16.5, 9.9, 6.6])).abs() <= 1).all()


# ----------------------------------------------------------------------------------------- transforms


def coord_images(B, H, W):
    """Float images whose channels hold (row + 1, col + 1): 0 only where padding was filled in."""
    rows = torch.arange(1, H + 1, dtype=torch.float32)[:, None].expand(H, W)
    cols = torch.arange(1, W + 1, dtype=torch.float32)[None, :].expand(H, W)
    return torch.stack([rows, cols])[None].repeat(B, 1, 1, 1)


def reference_crop_flip(img, p, dy, dx, flip):
    out = F.pad(img, (p, p, p, p))[:, dy : dy + img.shape[1], dx : dx + img.shape[2]]
    return out.flip(-1) if flip else out


def test_crop_flip_statistics_and_exactness():
    B, H, W, p = 5000, 8, 8, 2
    x = coord_images(B, H, W)
    x_before = x.clone()
    out = random_crop_flip(x, p, torch.Generator().manual_seed(0))
    assert torch.equal(x, x_before) and out.shape == x.shape
    # the centre pixel is always inside the image: recover the offsets and the flip from it
    r, c = H // 2, W // 2
    flipped = out[:, 1, r, c + 1] < out[:, 1, r, c]
    dy = (out[:, 0, r, c] - 1 - r + p).long()
    dx = torch.where(flipped, out[:, 1, r, c] - 1 - (W - 1 - c), out[:, 1, r, c] - 1 - c).long() + p
    assert dy.min() == 0 and dy.max() == 2 * p and dx.min() == 0 and dx.max() == 2 * p
    counts = torch.bincount(dy * (2 * p + 1) + dx, minlength=(2 * p + 1) ** 2).double()
    expected = B / (2 * p + 1) ** 2
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60, chi2  # 24 degrees of freedom: P(chi2 > 51) < 0.001
    assert abs(flipped.double().mean().item() - 0.5) < 0.03
    # every sample equals pad-crop-flip with its parameters (zero fill included)
    for i in range(200):
        assert torch.equal(out[i], reference_crop_flip(x[i], p, dy[i], dx[i], flipped[i])), i
    assert (out == 0).any()


def test_crop_flip_uint8_matches_float_and_seeds():
    x = torch.randint(0, 256, (64, 3, 10, 12), dtype=torch.uint8)
    x_before = x.clone()
    a = random_crop_flip(x, 3, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, 3, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, 3, torch.Generator().manual_seed(6))
    f = random_crop_flip(x.float(), 3, torch.Generator().manual_seed(5))
    assert a.dtype == torch.uint8 and torch.equal(x, x_before)
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a.float(), f)


def test_crop_flip_options():
    x = torch.randint(0, 256, (32, 1, 6, 6), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, 0, torch.Generator(), flip=False), x)
    flipped = random_crop_flip(x, 0, torch.Generator().manual_seed(1), flip=True)
    is_flipped = (flipped == x.flip(-1)).flatten(1).all(1)
    assert torch.equal(flipped[is_flipped], x.flip(-1)[is_flipped])
    assert torch.equal(flipped[~is_flipped], x[~is_flipped]) and 0 < is_flipped.sum() < 32


def test_normalize():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    y = normalize(x, mean, std)
    ref = (x.double() / 255 - torch.tensor(mean, dtype=torch.float64)[:, None, None]) / torch.tensor(std, dtype=torch.float64)[:, None, None]
    assert y.dtype == torch.float32 and torch.allclose(y.double(), ref, atol=1e-5)
    xf = x.float()
    normalize(xf, mean, std)
    assert torch.equal(xf, x.float())  # input untouched even when already float
    assert normalize(x, mean, std, dtype=torch.float64).dtype == torch.float64


# --------------------------------------------------------------------------------------------- loader


def make_data(N=103, C=3, H=6, W=6):
    images = torch.randint(0, 256, (N, C, H, W), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(N) % 256  # makes every sample identifiable with labels below
    return images, torch.arange(N)


def collect(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_loader_epochs_reproducible():
    images, labels = make_data()
    kw = dict(batch_size=16, mean=(0.5,), std=(0.25,), crop_padding=2, flip=True, seed=3)
    dl = DeviceLoader(images, labels, **kw)
    assert len(dl) == 103 // 16
    dl.set_epoch(4)
    e4 = collect(dl)
    dl.set_epoch(5)
    e5 = collect(dl)
    dl.set_epoch(4)
    again = collect(dl)
    fresh = DeviceLoader(images, labels, **kw)  # a resumed run: new loader, same epoch
    fresh.set_epoch(4)
    assert len(e4) == 6 and all(x.shape == (16, 3, 6, 6) for x, _ in e4)
    for (x1, y1), (x2, y2), (x3, y3) in zip(e4, again, collect(fresh)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2) and torch.equal(x1, x3) and torch.equal(y1, y3)
    assert not torch.equal(torch.cat([y for _, y in e4]), torch.cat([y for _, y in e5]))
    other_seed = DeviceLoader(images, labels, **{**kw, "seed": 4})
    other_seed.set_epoch(4)
    assert not torch.equal(collect(other_seed)[0][1], e4[0][1])


def test_loader_eval_covers_once_and_normalizes():
    images, labels = make_data()
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.6, 0.7)
    dl = DeviceLoader(images, labels, batch_size=16, mean=mean, std=std, shuffle=False, drop_last=False)
    batches = collect(dl)
    assert len(dl) == len(batches) == 7 and len(batches[-1][1]) == 103 - 96
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(y, labels)
    ref = (images.float() / 255 - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    assert torch.allclose(x, ref, atol=1e-6)
    shuffled = DeviceLoader(images, labels, batch_size=16, mean=mean, std=std, shuffle=True, drop_last=False)
    ys = torch.cat([b[1] for b in collect(shuffled)])
    assert sorted(ys.tolist()) == list(range(103)) and not torch.equal(ys, labels)


def test_loader_rank_shards():
    images, labels = make_data(N=120)
    kw = dict(batch_size=8, mean=(0.5,), std=(0.5,), seed=1, world_size=3, drop_last=False, crop_padding=1, flip=True)
    shards = []
    for rank in range(3):
        dl = DeviceLoader(images, labels, rank=rank, **kw)
        dl.set_epoch(2)
        ys = [y for _, y in collect(dl)]
        assert len(ys) == len(dl) == 5
        shards.append(torch.cat(ys))
    allys = torch.cat(shards).tolist()
    assert len(allys) == 120 and sorted(allys) == list(range(120))  # disjoint and covering
    # uneven N with drop_last: same batch count on every rank, disjoint
    images, labels = make_data(N=100)
    kw.update(drop_last=True)
    shards = [torch.cat([y for _, y in DeviceLoader(images, labels, rank=r, **kw)]) for r in range(3)]
    assert [len(s) for s in shards] == [32, 32, 32] and len(set(torch.cat(shards).tolist())) == 96
    kw.update(drop_last=False)
    lens = [len(DeviceLoader(images, labels, rank=r, **kw)) for r in range(3)]
    assert lens == [5, 5, 5]


def test_loader_channels_last_and_input_untouched():
    images, labels = make_data()
    before = images.clone()
    dl = DeviceLoader(images, labels, batch_size=10, mean=(0.5,), std=(0.5,), crop_padding=2, flip=True, channels_last=True)
    x, y = next(iter(dl))
    assert x.is_contiguous(memory_format=torch.channels_last) and y.dtype == torch.int64
    assert torch.equal(images, before)


# ------------------------------------------------------------------------------------ real data (opt.)


@pytest.mark.skipif(not readers.find_idx("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist(monkeypatch):
    monkeypatch.delenv(datasets.ENV_VAR, raising=False)
    train = load_dataset("fashion_mnist", "train", download=False)
    test = load_dataset("fashion_mnist", "test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert abs(train.images.float().mean().item() / 255 - 0.2860) < 1e-3


def test_a_partly_present_dataset_is_named_and_nothing_downloaded_over_it(tmp_path, monkeypatch):
    """A data root with one file missing was downloaded into: the user's 12 images were replaced by the real
    dataset without a word (CIFAR's archive unpacks over the user's batches)."""
    downloads = []
    for name in ("fashion_mnist", "cifar10"):
        monkeypatch.setitem(DATASETS, name, datasets.dataclasses.replace(DATASETS[name],
                                                                         download=downloads.append))
    write_idx(tmp_path / "fm", gz=True)
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte.gz").unlink()
    write_cifar10(tmp_path / "c10")
    (tmp_path / "c10" / "cifar-10-batches-py" / "data_batch_4").unlink()
    (tmp_path / "c10" / "cifar-10-batches-py" / "test_batch").unlink()
    for name, root, missing in (("fashion_mnist", tmp_path / "fm", "t10k-labels-idx1-ubyte[.gz] missing"),
                                ("cifar10", tmp_path / "c10", "data_batch_4 and 1 more missing")):
        for download in (True, False):
            with pytest.raises(DatasetNotFoundError, match=rf"'{name}' is partly in data root .*{re.escape(missing)}; "
                                                           "nothing downloaded there"):
                load_dataset(name, "train", root=root, download=download)
    assert downloads == []
    write_idx(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)  # torchvision's own folder, its download cut short:
    (tmp_path / "tv" / "FashionMNIST" / "raw" / "t10k-images-idx3-ubyte").unlink()  # downloaded again, as before
    with pytest.raises(DatasetNotFoundError, match="the download finished but the files are not there"):
        load_dataset("fashion_mnist", "train", root=tmp_path / "tv")
    assert downloads == [tmp_path / "tv"]
    (tmp_path / "empty").mkdir()  # none of it there: downloaded as before
    with pytest.raises(DatasetNotFoundError, match="the download finished but the files are not there"):
        load_dataset("cifar10", "train", root=tmp_path / "empty")
    assert downloads == [tmp_path / "tv", tmp_path / "empty"]


def test_unreadable_folders_and_impossible_idx_headers_are_data_errors(tmp_path, monkeypatch):
    """A class folder the user may not list was a PermissionError traceback; an IDX header whose dimensions multiply
    past 2**63 overflowed numpy's product and ended in a reshape ValueError."""
    write_image_folder(tmp_path / "f")
    locked = [tmp_path / "f" / "train" / "cat"]

    def refusing(listing):  # as chmod 0 does for a user other than root (the tests may run as root)
        def listing_unless_locked(path="."):
            if isinstance(path, (str, os.PathLike)) and Path(path) in locked:
                raise PermissionError(13, "Permission denied", str(path))
            return listing(path)
        return listing_unless_locked

    monkeypatch.setattr(os, "scandir", refusing(os.scandir))  # os.walk's, and Path.iterdir's from Python 3.12
    monkeypatch.setattr(os, "listdir", refusing(os.listdir))  # Path.iterdir's before
    for split in ("train", "test"):  # the test split reads the train split's folders too (one mode for both)
        with pytest.raises(DataError, match=r"cannot read folder .*train/cat: Permission denied"):
            readers.read_image_folder_split(tmp_path / "f", split)
    with pytest.raises(DataError, match=r"cannot read folder .*train/cat: Permission denied"):
        streaming.StreamingImageFolder(tmp_path / "f", "train", image_size=4, batch_size=2, num_workers=0)
    locked.append(tmp_path / "f" / "train")  # the class list itself (folder_classes)
    with pytest.raises(DataError, match=r"cannot read folder .*/f/train: Permission denied"):
        readers.read_image_folder_split(tmp_path / "f", "test")
    header = bytes([0, 0, 0x08, 4]) + np.array([65536] * 4, ">u4").tobytes()
    (tmp_path / "x-idx3-ubyte").write_bytes(header)
    with pytest.raises(DataError, match=r"header says \[65536, 65536, 65536, 65536\]"):
        readers.read_idx(tmp_path / "x-idx3-ubyte")


def test_in_memory_and_streaming_image_folders_read_the_same_files(tmp_path):
    """The in-memory reader took a class folder's top-level files only: images in sub-folders (Tiny-ImageNet's
    train/<wnid>/images/) were dropped, or the class called empty, while the streaming loader read them."""
    for split in ("train", "test"):
        save_png(tmp_path / split / "a" / "0.png", np.full((4, 4), 10, np.uint8))
        save_png(tmp_path / split / "a" / "more" / "1.png", np.full((4, 4), 20, np.uint8))
        save_png(tmp_path / split / "b" / "images" / "2.png", np.full((4, 4), 30, np.uint8))
        save_png(tmp_path / split / "b" / ".hidden" / "3.png", np.full((4, 4), 40, np.uint8))
    x, y = readers.read_image_folder_split(tmp_path, "train")
    assert x[:, 0, 0, 0].tolist() == [10, 20, 30] and y.tolist() == [0, 0, 1]
    paths, labels = streaming.scan_image_folder(tmp_path / "train", ["a", "b"])
    assert paths == ["a/0.png", "a/more/1.png", "b/images/2.png"] and labels.tolist() == y.tolist()


def test_cifar_labels_that_are_not_whole_numbers_are_refused(tmp_path):
    """Float labels were truncated: 0.7 read as class 0."""
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = [0.7] * len(batch[b"labels"])
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="test_batch: its 'labels' are float64, not whole numbers"):
        readers.read_cifar10(tmp_path, "test")
    assert len(readers.read_cifar10(tmp_path, "train")[1]) == 15


def test_an_image_folder_of_one_class_is_refused(tmp_path):
    """It trained to 100% accuracy and a loss of 0 without a word."""
    write_image_folder(tmp_path, classes=("only",))
    with pytest.raises(DataError, match="train holds 1 class folder: a classifier needs two or more"):
        load_dataset("imagefolder", "train", root=tmp_path)
    from mixdistill.config import load_config
    from mixdistill.engine.trainer import train

    cfg = load_config(None, [f"data.root={tmp_path}", "data.dataset=imagefolder", "data.loader=streaming",
                             "data.image_size=8", "data.num_workers=0", "data.batch_size=2",
                             f"output_dir={tmp_path / 'runs'}", "train.device=cpu", "optim.epochs=1",
                             "optim.milestones=[]"])
    with pytest.raises(DataError, match="train holds 1 class folder: a classifier needs two or more"):
        train(cfg, quiet=True)  # streaming
    write_image_folder(tmp_path / "two", classes=("a", "b"))
    assert load_dataset("imagefolder", "test", root=tmp_path / "two").spec.num_classes == 2


def test_labels_are_whole_numbers_in_one_row_that_fit_a_class_index(tmp_path):
    """IDX labels stored as floats were truncated without a word (0.7 read as class 0); CIFAR labels saved as a
    column [N, 1] crashed the first step ("multi-target not supported"); uint64 labels past int64 wrapped to
    negative classes."""
    d = tmp_path / "idx"
    write_idx(d, gz=False)
    labels = np.arange(7, dtype=np.float32) % 10 + 0.7
    header = bytes([0, 0, 0x0D, 1]) + np.array([7], ">u4").tobytes()
    (d / "train-labels-idx1-ubyte").write_bytes(header + labels.astype(">f4").tobytes())
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: its labels are float32, not whole numbers"):
        readers.read_mnist_like(d, "train")
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((7, 1), np.uint8)))  # a column: read as a row
    assert readers.read_mnist_like(d, "train")[1].tolist() == [0] * 7
    (d / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros((7, 2), np.uint8)))
    with pytest.raises(DataError, match=r"expected labels \[N\], got shape \[7, 2\]"):  # it said "(7, 2) labels"
        readers.read_mnist_like(d, "train")

    expected = write_cifar10(tmp_path / "c")
    path = tmp_path / "c" / "cifar-10-batches-py" / "test_batch"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"] = np.asarray(batch[b"labels"]).reshape(-1, 1)
    path.write_bytes(pickle.dumps(batch))
    assert readers.read_cifar10(tmp_path / "c", "test")[1].tolist() == expected["test"][1].tolist()
    batch[b"labels"] = np.full((len(batch[b"data"]),), 2**63 + 9, np.uint64)
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataError, match="test_batch: its 'labels' go up to 9223372036854775817, past any class"):
        readers.read_cifar10(tmp_path / "c", "test")


def test_an_empty_cifar_batch_written_by_python_2_reads(tmp_path):
    """numpy pickles an empty array's buffer with bytes(): the data-only unpickler called the file hostile."""
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    path.write_bytes(pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": np.zeros(0, np.int64)},
                                  protocol=2))
    assert len(readers.read_cifar10(tmp_path, "train")[1]) == 12


def test_a_link_back_up_inside_an_image_folder_is_refused(tmp_path):
    """os.walk follows links without noticing a loop: a class folder linking to its parent read the other classes'
    images again under its own label (60 images became 2,460, most mislabelled) until the path grew too long."""
    write_image_folder(tmp_path)
    (tmp_path / "train" / "bird" / "loop").symlink_to("..")
    with pytest.raises(DataError, match=r"train/bird/loop links back to .*/train, a folder it is in"):
        readers.read_image_folder_split(tmp_path, "train")
    (tmp_path / "train" / "bird" / "loop").unlink()
    (tmp_path / "train" / "bird" / "loop").symlink_to("../..")  # above the split: it read test/ as birds first
    with pytest.raises(DataError, match=r"train/bird/loop links back to"):
        readers.read_image_folder_split(tmp_path, "train")
    with pytest.raises(DataError, match="links back to"):
        streaming.StreamingImageFolder(tmp_path, "train", image_size=4, batch_size=2, num_workers=0)
    (tmp_path / "train" / "bird" / "loop").unlink()
    elsewhere = tmp_path / "more_birds"
    save_png(elsewhere / "0.png", RNG.integers(0, 256, (6, 8, 3), dtype=np.uint8))
    (tmp_path / "train" / "bird" / "linked").symlink_to(elsewhere)  # a link to a folder outside: read, once
    assert readers.read_image_folder_split(tmp_path, "train")[1].tolist() == [0, 0, 0, 1, 1, 2, 2]
    (tmp_path / "train" / "cat" / "birds").symlink_to(elsewhere)  # one folder through two links: read by each
    assert readers.read_image_folder_split(tmp_path, "train")[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


def test_a_data_folder_this_user_cannot_enter_is_one_line(no_default_roots, monkeypatch):
    """Path.is_file() inside a folder without search permission raises PermissionError (a traceback)."""
    write_idx(no_default_roots / "locked", gz=False)
    real_is_file = Path.is_file

    def is_file(self):
        if self.parent == no_default_roots / "locked":
            raise PermissionError(13, "Permission denied", str(self))
        return real_is_file(self)

    monkeypatch.setattr(Path, "is_file", is_file)
    with pytest.raises(DataError, match=r"cannot read .*locked/train-images-idx3-ubyte: Permission denied "
                                        r"\(looking for fashion_mnist's files\)"):
        load_dataset("fashion_mnist", "train", root=no_default_roots / "locked", download=False)


def test_a_mixdistill_data_that_does_not_hold_the_dataset_is_named_before_the_search_goes_on(no_default_roots,
                                                                                           monkeypatch):
    """A typo in $MIXDISTILL_DATA, or a copy cut short there, trained on another copy without a word."""
    write_idx(no_default_roots / "debian", gz=True, n_train=4)
    monkeypatch.setenv(datasets.ENV_VAR, str(no_default_roots / "typo"))
    with pytest.warns(UserWarning, match=r"MIXDISTILL_DATA=.*typo does not exist; looking for fashion_mnist"):
        assert load_dataset("fashion_mnist", "train", download=False).root == no_default_roots / "debian"
    write_idx(no_default_roots / "partial", gz=True)
    (no_default_roots / "partial" / "t10k-labels-idx1-ubyte.gz").unlink()
    monkeypatch.setenv(datasets.ENV_VAR, str(no_default_roots / "partial"))
    with pytest.warns(UserWarning, match=r"holds part of fashion_mnist: .*t10k-labels-idx1-ubyte\[.gz\] missing"):
        load_dataset("fashion_mnist", "train", download=False)
    write_cifar10(no_default_roots / "other")  # another dataset's folder: searched on without a word
    monkeypatch.setenv(datasets.ENV_VAR, str(no_default_roots / "other"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset("fashion_mnist", "train", download=False)


def test_a_relative_data_root_that_is_not_there_says_from_where_and_the_commands_way(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetNotFoundError, match=rf"data root data/x does not exist, read from the current "
                                                   rf"directory {re.escape(str(tmp_path))} .*To fix, give the folder"):
        load_dataset("fashion_mnist", "train", root="data/x", download=False)
    token = datasets.ROOT_HINT.set("pass --data-root PATH")
    try:
        with pytest.raises(DatasetNotFoundError, match=r"To fix, pass --data-root PATH$"):
            load_dataset("fashion_mnist", "train", root="data/x", download=False)
    finally:
        datasets.ROOT_HINT.reset(token)
