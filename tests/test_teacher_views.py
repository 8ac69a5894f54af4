"""train.teacher_cache (engine/teacher_views.py): the teacher's logits of every crop/flip view, looked up instead of
computed, and the same bits either way."""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings

import pytest
import torch

from mixdistill.config import load_config
from mixdistill.data.transforms import crop_flip, crop_flip_views, random_crop_flip, view_parameters
from mixdistill.engine import teacher_views
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.trainer import Trainer, _SilentLogger, train
from mixdistill.errors import ConfigError
from mixdistill.files import hold_lock
from mixdistill.studies.grid import GridRun, with_teacher_views


@pytest.mark.parametrize("padding,flip", [(2, True), (1, False), (0, True), (4, True)])
def test_a_view_id_names_the_crop_and_flip_the_loader_drew(padding, flip):
    x = torch.randint(0, 256, (200, 3, 9, 7), dtype=torch.uint8)
    plain = random_crop_flip(x, padding, torch.Generator().manual_seed(3), flip=flip)
    out, views = random_crop_flip(x, padding, torch.Generator().manual_seed(3), flip=flip, return_views=True)
    assert torch.equal(out, plain)  # asking for the ids draws nothing more
    assert set(views.tolist()) <= set(crop_flip_views(padding, flip).tolist())
    assert len(crop_flip_views(padding, flip)) == (2 * padding + 1) ** 2 * (2 if flip else 1)
    assert torch.equal(crop_flip(x, padding, *view_parameters(views, padding)), out)
    if padding == 2 and flip:  # 200 draws from 50 views: both flips and the extreme offsets occur
        dy, dx, flipped = view_parameters(views, padding)
        assert flipped.any() and not flipped.all() and dy.min() == 0 and dx.max() == 4


@pytest.fixture
def teacher_ckpt(tiny_run_overrides):
    teacher = load_config(None, tiny_run_overrides + ["name=teacher", "optim.epochs=1"])
    train(teacher, quiet=True)
    return teacher.run_dir / "last.pt"


def _kd(tiny_run_overrides, teacher_ckpt, name, *extra):
    return load_config(None, tiny_run_overrides + ["method=kd", "optim.epochs=2", f"name={name}",
                                                   f"model.teacher_checkpoint={teacher_ckpt}", *extra])


@pytest.mark.parametrize("run_precision", ["fp32", "bf16"])
def test_a_kd_run_ends_with_the_same_weights_with_the_table_or_with_the_teacher(run_precision, tiny_run_overrides,
                                                                              teacher_ckpt, capsys, monkeypatch):
    """Built by the first run, loaded by the second; both end bit for bit where the run without it ends."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)  # bf16 as natively
    extra = [f"train.precision={run_precision}", f"train.channels_last={run_precision == 'bf16'}"]
    summaries, weights = {}, {}
    for name, setting in (("built", "true"), ("loaded", "true"), ("live", "false")):
        cfg = _kd(tiny_run_overrides, teacher_ckpt, name, f"train.teacher_cache={setting}", *extra)
        capsys.readouterr()
        summaries[name] = train(cfg)
        log = capsys.readouterr().err
        weights[name] = load_checkpoint(cfg.run_dir / "last.pt")["model"]
        if setting == "true":
            assert ("built in" if name == "built" else "loaded;") in log and "50 views x 800 images" in log
            assert ("teacher view cache: building 50 views x 800 images (40,000 teacher passes" in log) == (
                name == "built")  # said before the silent minutes of a large table
        assert "(the teacher as this run computes it: 5 conv+bn folded" + (", bf16;" if run_precision == "bf16"
                                                                            else ";") in log
    views = summaries["built"]["teacher_views"]
    assert views["views"] == 50 and views["images"] == 800
    assert views["built_s"] > 0 and views["views_built"] == 50
    assert summaries["loaded"]["teacher_views"]["views_built"] == 0
    assert summaries["live"]["teacher_views"] is None
    src = Trainer(_kd(tiny_run_overrides, teacher_ckpt, "probe", *extra), quiet=True)._views_source()
    if _logits_depend_on_the_batch(src):  # kernels whose sums depend on the batch: the first-batch check's case
        for name in ("built", "loaded"):
            assert "differ from the teacher's on the first batch" in summaries[name]["teacher_views"]["off"]
    else:
        assert all("off" not in summaries[name]["teacher_views"] for name in ("built", "loaded"))
    for name in ("built", "loaded"):
        assert all(torch.equal(weights[name][k], weights["live"][k]) for k in weights["live"])
        assert summaries[name]["last_test_loss"] == summaries["live"]["last_test_loss"]


def _view_logits(src, rows: torch.Tensor, view: int) -> torch.Tensor:
    """The teacher's logits of ``rows`` in view id ``view``, computed here as one batch as the training step would
    (crop/flip, normalise, layout, autocast), independently of build_table."""
    loader = src.loader
    x = crop_flip(loader.images[rows], loader.crop_padding,
                  *view_parameters(torch.full((len(rows),), view), loader.crop_padding))
    x = (x.float() / 255 - loader.mean) / loader.std
    if loader.channels_last or src.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with src.autocast():
        return src.teacher_logits(x)


def _logits_depend_on_the_batch(src) -> bool:
    """Whether a sample's teacher logits here change with the other samples of its batch or the batch's size: the
    table's premise, which holds on the CPUs measured so far; where it fails, every run's first-batch check turns
    the table off. Every sample of one view, in the build's batches of 64, in shuffled ones and in batches of 24."""
    n = len(src.loader.labels)
    view = int(crop_flip_views(src.loader.crop_padding, src.loader.flip)[7])

    def in_batches(rows: torch.Tensor, size: int) -> torch.Tensor:
        out = torch.cat([_view_logits(src, rows[i:i + size], view) for i in range(0, n, size)])
        return out[rows.argsort()]

    built = in_batches(torch.arange(n), 64)
    shuffled = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return not (torch.equal(in_batches(shuffled, 64), built) and torch.equal(in_batches(shuffled, 24), built))


def test_the_batch_probe_sees_a_teacher_whose_logits_depend_on_the_batch(tiny_run_overrides, teacher_ckpt):
    src = Trainer(_kd(tiny_run_overrides, teacher_ckpt, "probe"), quiet=True)._views_source()
    mixing = dataclasses.replace(src, teacher_logits=lambda x: src.teacher_logits(x) + 1e-3 * x.mean())
    assert _logits_depend_on_the_batch(mixing)


def test_the_table_holds_the_teachers_logits_of_each_view(tiny_run_overrides, teacher_ckpt):
    """Each view's column is that crop/flip of every sample: compared on the batches the build ran (rows 0-63, and
    768-799 of its last, 736-799, which overlaps the one before), so this holds whatever the kernels do with other
    batches; and the build runs the teacher on full batches only."""
    trainer = Trainer(_kd(tiny_run_overrides, teacher_ckpt, "t"), quiet=True)
    src = trainer._views_source()
    sizes = []
    table = teacher_views.build_table(dataclasses.replace(
        src, teacher_logits=lambda x: sizes.append(len(x)) or src.teacher_logits(x)), 64)
    ids = crop_flip_views(src.loader.crop_padding, src.loader.flip)
    assert table.shape == (800, len(ids), 10) and set(sizes) == {64} and len(sizes) == 13 * len(ids)
    for v in (0, 17, len(ids) - 1):
        assert torch.equal(_view_logits(src, torch.arange(64), int(ids[v])), table[:64, v])
        assert torch.equal(_view_logits(src, torch.arange(736, 800), int(ids[v]))[32:], table[768:, v])
    assert not torch.equal(table[:, 0], table[:, 17])


def test_a_table_that_differs_from_the_teacher_is_caught_and_the_run_computes_what_it_would_have(
        tiny_run_overrides, teacher_ckpt):
    good = train(_kd(tiny_run_overrides, teacher_ckpt, "first", "train.teacher_cache=true"), quiet=True)
    path = teacher_views.Path(good["teacher_views"]["file"])
    table = torch.load(path)
    table += 1e-3  # every logit a little off: no batch can pass the check
    torch.save(table, path)
    plain = train(_kd(tiny_run_overrides, teacher_ckpt, "plain", "train.teacher_cache=false"), quiet=True)
    with pytest.warns(UserWarning, match="differ from the teacher's on the first batch"):
        checked = train(_kd(tiny_run_overrides, teacher_ckpt, "checked", "train.teacher_cache=true"), quiet=True)
    assert "differ" in checked["teacher_views"]["off"]
    assert checked["last_test_loss"] == plain["last_test_loss"] == good["last_test_loss"]


def test_a_damaged_table_is_built_again(tiny_run_overrides, teacher_ckpt):
    first = train(_kd(tiny_run_overrides, teacher_ckpt, "first", "train.teacher_cache=true"), quiet=True)
    path = teacher_views.Path(first["teacher_views"]["file"])
    path.write_bytes(b"not a table")
    with pytest.warns(UserWarning, match="unreadable"):
        again = train(_kd(tiny_run_overrides, teacher_ckpt, "again", "train.teacher_cache=true"), quiet=True)
    assert again["teacher_views"]["views_built"] == 50 and again["last_test_loss"] == first["last_test_loss"]
    assert torch.load(path).shape == (800, 50, 10)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".lock").name])


def _source_and_path(tiny_run_overrides, teacher_ckpt, name):
    cfg = _kd(tiny_run_overrides, teacher_ckpt, name, "train.teacher_cache=true")
    trainer = Trainer(cfg, quiet=True)
    src = trainer._views_source()
    return trainer, src, cfg.run_dir.parent / teacher_views.FOLDER / f"{teacher_views.table_key(src)}.pt"


def test_a_run_builds_the_views_no_one_else_is_building_and_waits_for_the_rest(tiny_run_overrides, teacher_ckpt):
    """Another process holds view 0's lock (building it) until this run has built the other 49 and half a second
    more: this run waits for view 0, starts with the whole table, writes it and removes the views' files and locks."""
    trainer, src, path = _source_and_path(tiny_run_overrides, teacher_ckpt, "waits")
    whole = teacher_views.build_table(src, 64).cpu()
    holding = threading.Event()

    def other_process():
        view = teacher_views._view_file(path, 0)
        with hold_lock(view.with_suffix(".lock"), "a test building view 0"):
            holding.set()
            while not teacher_views._view_file(path, 49).exists():
                time.sleep(0.01)
            time.sleep(0.5)
            teacher_views.save_torch(whole[:, :1].clone(), view)

    builder = threading.Thread(target=other_process)
    builder.start()
    holding.wait()
    trainer._start_teacher_views(_SilentLogger())
    builder.join()
    report = trainer.teacher_views_report
    assert report["views_built"] == 49 and report["waited_s"] >= 0.4
    assert torch.equal(trainer.distiller.teacher_views.table, whole) and torch.equal(torch.load(path), whole)
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([path.name, path.with_suffix(".lock").name])


def test_runs_that_ask_at_once_build_the_table_together(tiny_run_overrides, teacher_ckpt):
    """Two runs (threads standing in for processes: each holds its own file locks) build one table between them,
    each view once, and both get the table one process alone builds."""
    built = {}
    trainers = [_source_and_path(tiny_run_overrides, teacher_ckpt, f"peer{i}") for i in range(2)]
    whole = teacher_views.build_table(trainers[0][1], 64).cpu()
    start = threading.Barrier(2)

    def run(i):
        _, src, path = trainers[i]
        start.wait()
        built[i] = teacher_views.build_or_wait(path, src, 64)

    peers = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in peers:
        t.start()
    for t in peers:
        t.join()
    for table, _ in built.values():
        assert torch.equal(table.table, whole)
    assert sum(did.views_built for _, did in built.values()) == 50
    assert torch.equal(torch.load(trainers[0][2]), whole)


def test_a_view_whose_builder_died_is_built_by_the_next_run(tiny_run_overrides, teacher_ckpt):
    """A view's lock left free with no file (its builder killed) and a damaged view file: built here."""
    trainer, src, path = _source_and_path(tiny_run_overrides, teacher_ckpt, "died")
    path.parent.mkdir(parents=True, exist_ok=True)
    teacher_views._view_file(path, 3).with_suffix(".lock").write_text("")
    teacher_views._view_file(path, 4).write_bytes(b"half")
    table, did = teacher_views.build_or_wait(path, src, 64)
    assert did.views_built == 50 and torch.equal(table.table, teacher_views.build_table(src, 64))


def test_the_table_is_the_same_at_any_thread_count(tiny_run_overrides, teacher_ckpt):
    trainer = Trainer(_kd(tiny_run_overrides, teacher_ckpt, "threads"), quiet=True)
    src, threads = trainer._views_source(), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = teacher_views.build_table(src, 64)
        torch.set_num_threads(2)
        assert torch.equal(teacher_views.build_table(src, 64), one)
    finally:
        torch.set_num_threads(threads)


def test_auto_builds_a_table_only_where_the_runs_epochs_repay_it(tiny_run_overrides, teacher_ckpt, capsys):
    short = train(_kd(tiny_run_overrides, teacher_ckpt, "short"))  # 2 epochs, 50 views: not worth it
    assert short["teacher_views"] is None and "teacher view cache: off (2 epochs" in capsys.readouterr().err
    assert teacher_views.pays(51, 2, True) and not teacher_views.pays(50, 2, True)
    assert teacher_views.pays(26, 2, False) and not teacher_views.pays(25, 2, False)
    built = train(_kd(tiny_run_overrides, teacher_ckpt, "built", "train.teacher_cache=true"), quiet=True)
    reused = train(_kd(tiny_run_overrides, teacher_ckpt, "reused"), quiet=True)  # auto takes a table that is there
    assert reused["teacher_views"]["file"] == built["teacher_views"]["file"]
    assert reused["teacher_views"]["views_built"] == 0


def test_auto_says_why_it_builds_no_table(tiny_run_overrides, teacher_ckpt, capsys, monkeypatch):
    short = train(_kd(tiny_run_overrides, teacher_ckpt, "short"))
    err = capsys.readouterr().err
    assert short["teacher_views"] is None
    assert "teacher view cache: off (2 epochs of teacher passes cost less than building 50 views x 800 images)" in err
    monkeypatch.setattr(teacher_views, "AUTO_MAX_BYTES", 1000)  # a table of 1 view x 800 images x 10 fp32 logits
    one_view = ["data.crop_padding=0", "data.flip=false"]  # 2 epochs repay one view
    large = train(_kd(tiny_run_overrides, teacher_ckpt, "large", *one_view))
    err = capsys.readouterr().err
    assert large["teacher_views"] is None and "cost less" not in err
    assert ("teacher view cache: off (its 1 views x 800 images would take 0 MiB, above the 0 MiB auto builds; "
            "train.teacher_cache=true builds it)") in err


@pytest.mark.parametrize("extra,why", [
    (["augment.name=mixup"], "augment mixup mixes the batch the teacher sees"),
    (["method=crd"], "method crd runs its teacher on other inputs"),
])
def test_asking_for_a_table_a_run_cannot_use_is_one_clear_error(extra, why, tiny_run_overrides, teacher_ckpt):
    with pytest.raises(ConfigError, match=why):
        train(_kd(tiny_run_overrides, teacher_ckpt, "refused", "train.teacher_cache=true", *extra), quiet=True)


def test_a_grid_turns_the_table_on_for_runs_that_share_it_and_repay_it(tmp_path):
    def run(key, epochs, **over):
        tree = {"data": {"dataset": "fashion_mnist", "root": str(tmp_path), "train_subset": 3000},
                "model": {"student": "cnn5_w8", "teacher_checkpoint": "/t.pt"}, "method": {"name": "kd"},
                "optim": {"epochs": epochs, "milestones": []}, "train": {"device": "cpu", "threads": 1}}
        for section, values in over.items():
            tree[section] = {**tree.get(section, {}), **values}
        return GridRun(key, tree)

    runs = [run("kd/s0", 30), run("kd/s1", 30), run("mix/s0", 30, augment={"name": "mixup"}),
            run("mix/s1", 30, augment={"name": "mixup"}), run("alone/s0", 45, model={"teacher_checkpoint": "/u.pt"}),
            run("few/s0", 20, model={"teacher_checkpoint": "/v.pt"}),
            run("few/s1", 20, model={"teacher_checkpoint": "/v.pt"}),
            run("off/s0", 30, train={"teacher_cache": False}), run("off/s1", 30, train={"teacher_cache": False})]
    got = {r.key: r.config["train"].get("teacher_cache", "auto") for r in with_teacher_views(runs, tmp_path)}
    assert got == {"kd/s0": True, "kd/s1": True, "mix/s0": "auto", "mix/s1": "auto", "alone/s0": "auto",
                   "few/s0": "auto", "few/s1": "auto", "off/s0": False, "off/s1": False}


def test_the_table_setting_is_no_difference_to_a_finished_run(tiny_run_overrides, teacher_ckpt):
    from mixdistill.engine.run import stored_config_difference

    cfg = _kd(tiny_run_overrides, teacher_ckpt, "x")
    assert stored_config_difference(_kd(tiny_run_overrides, teacher_ckpt, "x", "train.teacher_cache=true").to_dict(),
                                    cfg) == []


def test_no_warning_from_a_table_that_passes_its_check(tiny_run_overrides, teacher_ckpt):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        summary = train(_kd(tiny_run_overrides, teacher_ckpt, "w", "train.teacher_cache=true"), quiet=True)
    assert "off" not in summary["teacher_views"]
