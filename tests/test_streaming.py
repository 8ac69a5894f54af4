"""Tests of the streaming image-folder loader (mixdistill.data.streaming) and the torchvision ResNets."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mixdistill.data.datasets import DATASETS, Split
from mixdistill.data.streaming import (IMAGENET_MEAN, IMAGENET_STD, StreamingImageFolder, random_resized_crop_box,
                                       stratified_subset)
from mixdistill.errors import CheckpointError, DataError, DatasetNotFoundError
from mixdistill.models import MODELS, create_model, load_weights

CLASSES = ("cat", "dog", "eel")
PER_CLASS_TRAIN, PER_CLASS_VAL = 6, 2
N_TRAIN = len(CLASSES) * PER_CLASS_TRAIN
S = 32  # output size in these tests (eval resize: round(32 * 8 / 7) = 37)


def _image(rng: np.random.Generator, w: int, h: int, mode: str) -> Image.Image:
    """A smooth gradient plus noise, so that different crops differ."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    arr = np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    im = Image.fromarray(arr, "RGB")
    return im.convert(mode) if mode != "RGB" else im


def write_tree(root: Path, seed: int = 0) -> Path:
    """root/train/<class>/ (6 images each) and root/val/<class>/ (2 each): JPEG and PNG, RGB, grayscale,
    RGBA and palette images, sizes 40-90 px, non-square; one class keeps its files in a subfolder."""
    rng = np.random.default_rng(seed)
    kinds = [("jpg", "RGB"), ("png", "RGB"), ("jpg", "L"), ("png", "RGBA"), ("png", "P"), ("jpeg", "RGB")]
    for split, n in (("train", PER_CLASS_TRAIN), ("val", PER_CLASS_VAL)):
        for c, cls in enumerate(CLASSES):
            d = root / split / cls / ("images" if cls == "eel" else "")
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                ext, mode = kinds[(i + c) % len(kinds)]
                w, h = (int(v) for v in rng.integers(40, 91, 2))
                _image(rng, w, h, mode).save(d / f"{cls}_{i}.{ext}")
    (root / "train" / "cat" / ".hidden.jpg").write_bytes(b"not an image")  # skipped
    (root / "train" / "cat" / "notes.txt").write_text("not an image")  # skipped
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return write_tree(tmp_path_factory.mktemp("imagefolder"))


def loader(root, split="train", **kw) -> StreamingImageFolder:
    kw.setdefault("batch_size", 4)
    kw.setdefault("image_size", S)
    kw.setdefault("num_workers", 0)
    return StreamingImageFolder(root, split, **kw)


def collect(ld) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    xs, ys, idx = zip(*ld)
    return torch.cat(xs), torch.cat(ys), torch.cat(idx)


def to_uint8(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    u = (x * s + m) * 255
    assert (u - u.round()).abs().max() < 1e-3  # normalised uint8 values
    return u.round().to(torch.uint8)


# ---------------------------------------------------------------------------------------- the data


def test_scan_classes_labels_and_shapes(tree):
    ld = loader(tree, "train", with_indices=True, drop_last=False)
    assert ld.classes == list(CLASSES) and ld.num_classes == 3 and ld.in_channels == 3
    assert ld.num_samples == N_TRAIN  # hidden file and .txt skipped, eel's images/ subfolder found
    assert ld.labels.tolist() == [c for c in range(3) for _ in range(PER_CLASS_TRAIN)]
    assert ld.path(0).name == "cat_0.jpg" and ld.path(N_TRAIN - 1).parent.name == "images"
    assert len(ld) == 5  # ceil(18 / 4)
    n = 0
    for x, y, idx in ld:
        assert x.dtype == torch.float32 and x.shape[1:] == (3, S, S) and x.is_contiguous()
        assert y.dtype == torch.int64 and idx.dtype == torch.int64 and len(y) == len(idx) == len(x)
        assert torch.equal(y, ld.labels[idx])
        to_uint8(x)
        n += len(y)
    assert n == N_TRAIN
    val = loader(tree, "val")
    assert val.num_samples == 3 * PER_CLASS_VAL and not val.augment and not val.flip
    assert sum(len(y) for _, y in val) == 6  # with_indices=False yields pairs


def test_eval_transform_matches_torchvision(tree):
    """Eval: exactly torchvision's Resize(37) + CenterCrop(32) on the RGB-converted PIL image."""
    from torchvision.transforms import CenterCrop, Compose, PILToTensor, Resize

    ref = Compose([Resize(37), CenterCrop(S), PILToTensor()])
    ld = loader(tree, "val", with_indices=True, mean=(0.0,), std=(1.0,))
    x, y, idx = collect(ld)
    assert idx.tolist() == list(range(6)) and ld.resize_size == 37
    for k, i in enumerate(idx.tolist()):
        with Image.open(ld.path(i)) as im:
            expected = ref(im.convert("RGB"))
        assert torch.equal(to_uint8(x[k : k + 1], (0.0,), (1.0,))[0], expected), ld.path(i)


def test_random_resized_crop_box_matches_torchvision_statistics():
    """Same distribution as torchvision's RandomResizedCrop.get_params (which draws from torch's RNG)."""
    from torchvision.transforms import RandomResizedCrop

    rng, sizes = random.Random(0), np.random.default_rng(0).integers(40, 500, (3000, 2))
    torch.manual_seed(0)
    ours, theirs = [], []
    for W, H in sizes.tolist():
        left, top, w, h = random_resized_crop_box(W, H, rng)
        assert 0 <= left and left + w <= W and 0 <= top and top + h <= H and w > 0 and h > 0
        ours.append((w * h / (W * H), w / h))
        t, l, h, w = RandomResizedCrop.get_params(torch.empty(1, H, W), (0.08, 1.0), (3 / 4, 4 / 3))
        theirs.append((w * h / (W * H), w / h))
    ours, theirs = np.array(ours), np.array(theirs)
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        np.testing.assert_allclose(np.quantile(ours, q, axis=0), np.quantile(theirs, q, axis=0), rtol=0.08)
    assert random_resized_crop_box(80, 60, random.Random(7)) == random_resized_crop_box(80, 60, random.Random(7))


def test_train_crop_is_the_resized_box(tree):
    """A training sample is the RandomResizedCrop box of its file, resized to 32x32 (then maybe flipped)."""
    ld = loader(tree, "train", with_indices=True, drop_last=False, flip=False, mean=(0.0,), std=(1.0,))
    ld.set_epoch(2)
    order, seeds, _ = ld.sampler.plan()
    x, _, idx = collect(ld)
    assert torch.equal(idx, order)
    for k in (0, 5, 11):
        i, seed = int(order[k]), int(seeds[k])
        with Image.open(ld.path(i)) as im:
            im = im.convert("RGB")
            left, top, w, h = random_resized_crop_box(*im.size, random.Random(seed))
            ref = np.asarray(im.crop((left, top, left + w, top + h)).resize((S, S), Image.BILINEAR))
        got = to_uint8(x[k : k + 1], (0.0,), (1.0,))[0].permute(1, 2, 0).numpy()
        assert np.abs(got.astype(int) - ref.astype(int)).mean() < 4  # box resize vs crop+resize: edges only


def test_every_sample_once_per_epoch(tree):
    for split, n in (("train", N_TRAIN), ("val", 6)):
        ld = loader(tree, split, with_indices=True, drop_last=False)
        for epoch in (0, 1):
            ld.set_epoch(epoch)
            _, y, idx = collect(ld)
            assert sorted(idx.tolist()) == list(range(n))
            assert torch.equal(y, ld.labels[idx])
    ld = loader(tree, "train", with_indices=True)  # drop_last: 4 full batches, no repeats
    _, _, idx = collect(ld)
    assert len(ld) == 4 and len(idx) == 16 and len(set(idx.tolist())) == 16


def test_epochs_are_reproducible_and_differ(tree):
    results = {}
    for workers in (0, 2):
        ld = loader(tree, "train", with_indices=True, num_workers=workers)
        for epoch in (3, 4, 3):  # the same epoch twice, with another epoch in between
            ld.set_epoch(epoch)
            got = collect(ld)
            if (workers, epoch) in results:
                for a, b in zip(results[(workers, epoch)], got):
                    assert torch.equal(a, b)
            results[(workers, epoch)] = got
        ld.close()
    for a, b in zip(results[(0, 3)], results[(2, 3)]):  # whatever the number of workers
        assert torch.equal(a, b)
    (x3, _, i3), (x4, _, i4) = results[(0, 3)], results[(0, 4)]
    assert not torch.equal(i3, i4)
    # the same sample is cropped/flipped differently in another epoch
    k3, k4 = int((i3 == i3[0]).nonzero()[0]), (i4 == i3[0]).nonzero()
    if len(k4):
        assert not torch.equal(x3[k3], x4[int(k4[0])])
    assert not torch.equal(x3, x4)


def test_flip_is_applied_on_the_batch(tree):
    kw = dict(with_indices=True, drop_last=False, mean=(0.0,), std=(1.0,))
    plain = loader(tree, "train", flip=False, **kw)
    flipped = loader(tree, "train", flip=True, **kw)
    _, _, flips = flipped.sampler.plan()
    (x0, _, i0), (x1, _, i1) = collect(plain), collect(flipped)
    assert torch.equal(i0, i1) and 0 < int(flips.sum()) < N_TRAIN
    assert torch.equal(x1[flips], x0[flips].flip(3)) and torch.equal(x1[~flips], x0[~flips])


def test_rank_shards(tree):
    # 18 samples over 3 ranks: disjoint and complete
    shards = [collect(loader(tree, "train", with_indices=True, drop_last=False, rank=r, world_size=3))
              for r in range(3)]
    idx = [s[2].tolist() for s in shards]
    assert [len(i) for i in idx] == [6, 6, 6]
    assert sorted(sum(idx, [])) == list(range(N_TRAIN))
    # 18 over 4 ranks: every rank the same number of batches (padded as DistributedSampler / DeviceLoader)
    lens = [len(loader(tree, "train", drop_last=dl, rank=r, world_size=4)) for r in range(4) for dl in (True, False)]
    assert lens == [1, 2] * 4
    # the ranks' batch i together are the single-process batch i of the same global batch, same pixels
    single = loader(tree, "train", batch_size=4, with_indices=True)
    ranks = [loader(tree, "train", batch_size=2, rank=r, world_size=2, with_indices=True) for r in range(2)]
    for ld in [single, *ranks]:
        ld.set_epoch(5)
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    for (xs, _, i_s), (xa, _, ia), (xb, _, ib) in zip(single, *ranks):
        assert sorted(i_s.tolist()) == sorted(ia.tolist() + ib.tolist())
        pixels = {int(i): x for i, x in zip(torch.cat([ia, ib]), torch.cat([xa, xb]))}
        for i, x in zip(i_s.tolist(), xs):
            assert torch.equal(pixels[i], x)


def test_subset_matches_in_memory_subset(tree):
    labels = torch.tensor([c for c in range(3) for _ in range(PER_CLASS_TRAIN)])
    images = torch.arange(N_TRAIN, dtype=torch.uint8).view(-1, 1, 1, 1)
    split = Split(images, labels, DATASETS["imagefolder"], tree).subset(9, seed=3)
    keep = stratified_subset(labels, 9, seed=3)
    assert keep.tolist() == split.images.flatten().tolist()
    ld = loader(tree, "train", subset=9, subset_seed=3, drop_last=False, with_indices=True)
    assert ld.num_samples == 9 and torch.equal(ld.labels, split.labels)
    assert sorted(collect(ld)[2].tolist()) == list(range(9))


def test_global_rng_untouched_and_channels_last(tree):
    state = torch.get_rng_state()
    ld = loader(tree, "train", num_workers=2, channels_last=True)
    x, _ = next(iter(ld))
    assert x.is_contiguous(memory_format=torch.channels_last)
    ld.close()
    assert torch.equal(torch.get_rng_state(), state)


def test_grayscale_mode(tree):
    ld = loader(tree, "val", mode="L", mean=(0.5,), std=(0.5,))
    x, _ = next(iter(ld))
    assert ld.in_channels == 1 and x.shape[1:] == (1, S, S)


def test_jpeg_draft_keeps_shapes(tree):
    for split in ("train", "val"):
        ld = loader(tree, split, image_size=16, jpeg_draft=True, drop_last=False)
        assert sum(x.shape[0] for x, _ in ld if x.shape[1:] == (3, 16, 16)) == ld.num_samples


# ---------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_file_is_one_data_error_naming_it(tmp_path, workers):
    root = write_tree(tmp_path / "data", seed=1)
    bad = root / "train" / "dog" / "dog_3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    truncated = root / "val" / "cat" / "cat_0.jpg"
    truncated.write_bytes(truncated.read_bytes()[:200])
    for split, path in (("train", bad), ("val", truncated)):
        ld = loader(root, split, num_workers=workers, drop_last=False)
        with pytest.raises(DataError) as err:
            for _ in ld:
                pass
        msg = str(err.value)
        assert str(path) in msg and msg.startswith("cannot decode image") and "\n" not in msg, msg
        assert "Traceback" not in msg
        ld.close()


def test_missing_and_inconsistent_folders(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no train/"):
        StreamingImageFolder(tmp_path, "train", batch_size=2)
    root = write_tree(tmp_path / "d")
    assert StreamingImageFolder(root, "test", batch_size=2, num_workers=0).folder == root / "val"  # no test/
    (root / "val").rename(root / "elsewhere")
    with pytest.raises(DatasetNotFoundError, match="val"):
        StreamingImageFolder(root, "val", batch_size=2)
    (root / "elsewhere").rename(root / "val")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        StreamingImageFolder(root, "val", batch_size=2)


# ---------------------------------------------------------------------------- torchvision models


@pytest.mark.parametrize("name,dim", [("tv_resnet18", 512), ("tv_resnet34", 512), ("tv_resnet50", 2048)])
def test_torchvision_resnet_interface(name, dim):
    assert name in MODELS
    torch.manual_seed(0)
    for channels in (3, 1) if name == "tv_resnet18" else (3,):  # (every zoo model: tests/test_models.py)
        model = create_model(name, num_classes=7, in_channels=channels).eval()
        assert model.num_classes == 7 and model.feature_dim == dim
        x = torch.randn(2, channels, 32, 32)
        with torch.no_grad():
            logits, feats = model.forward_features(x)
            plain = model(x)
        assert logits.shape == (2, 7) and feats["pooled"].shape == (2, dim)
        assert [m.shape[-1] for m in feats["maps"]] == [8, 8, 4, 2, 1]  # stem (after max-pool), layer1..4
        assert feats["maps"][-1].shape[1] == dim
        torch.testing.assert_close(plain, logits)


def test_torchvision_checkpoint_loads_strictly(tmp_path):
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    path = tmp_path / "resnet18-torchvision.pth"
    torch.save(ref.state_dict(), path)  # a bare state dict, as torchvision's released weights
    model = load_weights(create_model("tv_resnet18", num_classes=1000), path, strict=True).eval()
    assert list(model.state_dict()) == list(ref.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))
    with pytest.raises(CheckpointError, match="1000 classes"):
        load_weights(create_model("tv_resnet18", num_classes=10), path)
    with pytest.raises(CheckpointError, match="conv1.weight"):
        load_weights(create_model("tv_resnet18", num_classes=1000, in_channels=1), path)


def test_training_step_on_a_streamed_batch(tree):
    ld = loader(tree, "train", batch_size=8, num_workers=2, with_indices=True)
    images, labels, _ = next(iter(ld))
    ld.close()
    torch.manual_seed(0)
    model = create_model("tv_resnet18", num_classes=3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    before = model.fc.weight.detach().clone()
    loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    opt.step()
    assert not torch.equal(before, model.fc.weight)


# ----------------------------------------------------------------------------------------------- the trainer


def test_trainer_streams_imagenet_layout_and_num_workers_do_not_change_the_run(tree, tmp_path, interrupt_at):
    """`data.dataset=imagenet data.loader=streaming` trains from train/ and evaluates on val/; a run resumed
    with another data.num_workers ends bitwise equal to an uninterrupted one (crops do not depend on it)."""
    from mixdistill.config import load_config
    from mixdistill.engine.checkpoint import load_checkpoint
    from mixdistill.engine.trainer import train

    common = [f"data.root={tree}", f"output_dir={tmp_path / 'runs'}", "data.dataset=imagenet", "data.loader=streaming",
              "data.image_size=32", "data.batch_size=6", "data.eval_batch_size=4", "model.student=tv_resnet18",
              "optim.schedule=constant", "optim.milestones=[]", "optim.lr=0.01", "train.progress=false",
              "train.tensorboard=false", "train.device=cpu", "train.precision=fp32", "train.channels_last=false",
              "train.compile=false"]
    teacher = load_config(None, common + ["name=teacher", "optim.epochs=1", "data.num_workers=0"])
    with pytest.warns(UserWarning, match=r"train has \d+ class folders, not imagenet's 1000: the run trains"):
        summary = train(teacher, quiet=True)  # a part of ImageNet (it said nothing: a half-extracted copy trained)
    assert summary["dataset"] == "imagenet" and summary["train_images"] == N_TRAIN
    assert summary["data_root"] == str(Path(teacher.data.root).resolve())
    assert 0 <= summary["last_acc"] <= 100
    kd = common + [f"model.teacher_checkpoint={teacher.run_dir / 'last.pt'}", "method=kd_view",
                   "augment=cutmix_pick", "optim.epochs=2"]
    full = load_config(None, kd + ["name=full", "data.num_workers=0"])
    train(full, quiet=True)
    first = load_config(None, kd + ["name=split", "data.num_workers=0"])
    with interrupt_at(1):  # dies after epoch 1's checkpoint
        train(first, quiet=True)
    resumed = load_config(None, kd + ["name=split", "data.num_workers=2"])
    train(resumed, resume=True, quiet=True)
    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(resumed.run_dir / "last.pt")
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # more workers than this machine: never started
@pytest.mark.parametrize("cpus, workers", [(3, 3), (1, 1), (64, 8)])
def test_decoding_workers_default_to_the_cpus_this_process_may_use(tree, monkeypatch, cpus, workers):
    import mixdistill.data.streaming as streaming

    monkeypatch.setattr(streaming, "available_cpus", lambda: cpus)
    assert StreamingImageFolder(tree, "train", batch_size=2).num_workers == workers


def test_an_image_size_too_small_for_the_network_or_too_large_is_one_line_before_training(tree, tmp_path):
    """data.image_size=2 for LeNet-5 was a torch traceback at the first step; 100000 filled the machine's memory."""
    from mixdistill.config import load_config
    from mixdistill.engine.build import check_buildable
    from mixdistill.engine.trainer import train
    from mixdistill.errors import ConfigError

    common = [f"data.root={tree}", f"output_dir={tmp_path / 'runs'}", "data.dataset=imagenet", "data.loader=streaming",
              "data.batch_size=6", "model.student=lenet5", "data.num_workers=0", "optim.epochs=1",
              "optim.milestones=[]", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
              "train.precision=fp32"]
    cfg = load_config(None, common + ["data.image_size=8"])
    message = r"lenet5 cannot take 8x8 images: they are too small for its pooling or kernels \(.*Kernel size"
    with pytest.raises(ConfigError, match=message):
        check_buildable(cfg)  # --print-config
    with pytest.raises(ConfigError, match=message):
        train(cfg, quiet=True)
    assert not (tmp_path / "runs" / "run" / "config.yaml").exists()
    check_buildable(load_config(None, common + ["data.image_size=32"]))
    # ViT's own size assertion (once a --print-config traceback, then left to the first step's) is a config error
    with pytest.raises(ConfigError, match="tv:vit_b_16 cannot take 28x28 images: it is built for one input size"):
        check_buildable(load_config(None, ["model.student=tv:vit_b_16", "optim.milestones=[]", "optim.epochs=1"]))
    with pytest.raises(ConfigError, match="data.image_size: Input should be less than or equal to 4096"):
        load_config(None, common + ["data.image_size=100000"])


def test_eval_of_a_streaming_run_reads_its_images_as_the_run_did(tree, tmp_path, capsys):
    """eval of a streaming run loaded its test split into memory at the files' own sizes: ImageNet 'does not fit in
    memory; stream it', an image folder of mixed sizes refused, one of large images scored at their size."""
    import mixdistill
    from mixdistill.cli import main
    from mixdistill.config import load_config
    from mixdistill.engine.trainer import train
    from mixdistill.errors import ConfigError

    cfg = load_config(None, [f"data.root={tree}", f"output_dir={tmp_path / 'runs'}", "data.dataset=imagenet",
                             "data.loader=streaming", "data.image_size=32", "data.batch_size=6",
                             "data.eval_batch_size=4", "data.num_workers=0", "model.student=lenet5",
                             "optim.epochs=1", "optim.milestones=[]", "train.progress=false",
                             "train.tensorboard=false", "train.device=cpu", "train.precision=fp32"])
    summary = train(cfg, quiet=True)
    scored = mixdistill.evaluate(cfg.run_dir, device="cpu", batch_size=4)
    assert scored["images"] == len(CLASSES) * PER_CLASS_VAL and scored["acc"] == summary["last_acc"]
    assert scored["loss"] == pytest.approx(summary["last_test_loss"], rel=1e-6)
    opened = mixdistill.open_run(cfg.run_dir)  # the Python API's loader streams it too
    assert sum(len(labels) for _, labels in opened.test_loader()) == len(CLASSES) * PER_CLASS_VAL
    with pytest.raises(ConfigError, match="a streaming run's split is not held in memory"):
        opened.split()
    capsys.readouterr()
    assert main(["analyze", str(cfg.run_dir)]) == 2
    assert "a streaming run's (data.loader=streaming) are resized and cropped per batch" in capsys.readouterr().err
