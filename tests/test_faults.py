"""Faults that must lose nothing: a second run into a busy run directory, non-finite weights, full and
read-only disks, unreadable checkpoints and data files, and inputs that must be one-line errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdistill.cli import main
from mixdistill.config import load_config
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.trainer import Trainer, train
from mixdistill.errors import CheckpointError, DataError, MixdistillError, NonFiniteLossError
from mixdistill.files import TMP_SUFFIX, hold_lock


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixdistill: error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "\x1b[" not in err, "terminal colour codes in an error message"
    return err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------- run-directory lock

@pytest.mark.checkout
def test_second_run_into_a_busy_run_directory_stops_naming_the_holder(capsys, tiny_run_overrides, tmp_path):
    run_dir = tmp_path / "runs" / "busy"
    with hold_lock(run_dir / ".lock", "training busy"):  # as another process's run holds it
        err = one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=busy"])
    assert "in use by" in err and f"pid {os.getpid()}" in err and "training busy" in err
    assert not (run_dir / "config.yaml").exists()
    # released: the run now goes ahead
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=busy", "optim.epochs=1",
                 "--quiet"]) == 0


def test_a_damaged_cache_is_computed_again(tmp_path):
    from mixdistill.files import read_cache

    for text in ("", '{"a": 1', "[1, 2]", "\xff"):
        (tmp_path / "tstddev.json").write_text(text)
        assert read_cache(tmp_path / "tstddev.json") == {}
    assert read_cache(tmp_path / "missing.json") == {}
    (tmp_path / "tstddev.json").write_text('{"a": 1}')
    assert read_cache(tmp_path / "tstddev.json") == {"a": 1}


def test_a_run_stopped_before_its_first_checkpoint_is_not_overwritten_by_another(capsys, tiny_run_overrides,
                                                                                  tmp_path):
    """Killed in its first epoch (or on a full disk at its first last.pt), a run leaves config.yaml, metrics.jsonl
    and perhaps best.pt: nothing to resume, so the same run may start again, but another config is refused (it
    replaced them silently)."""
    train = ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=stopped", "optim.epochs=1"]
    assert main([*train, "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "stopped"
    (run_dir / "last.pt").unlink()
    (run_dir / "summary.json").unlink()
    before = snapshot(run_dir)
    err = one_line_error(capsys, [*train, "optim.lr=0.01"])
    assert "holds a run stopped before its first checkpoint, with another config (optim.lr: 0.05 -> 0.01)" in err
    assert snapshot(run_dir) == before
    err = one_line_error(capsys, [*train, "--resume"])
    assert "(the run there stopped before its first one: run without resuming to start it again)" in err
    assert main([*train, "--quiet"]) == 0 and (run_dir / "last.pt").exists()
    # a run folder renamed is resumed under its new name (name and output_dir change no result)
    run_dir.rename(run_dir.with_name("renamed"))
    assert main([*train, "name=renamed", "--resume", "--quiet"]) == 0
    assert json.loads((run_dir.with_name("renamed") / "summary.json").read_text())["name"] == "renamed"


def test_ctrl_c_or_sigterm_of_train_says_what_the_same_command_does_next(capsys, tiny_run_overrides, monkeypatch):
    """Ctrl-C in the first epoch: no checkpoint yet, so the advice is to start again, not --resume (which then
    failed). SIGTERM (kill, a scheduler's preemption) stops as Ctrl-C does, with its own word and status (it was
    silent: Python's default)."""
    import signal

    from mixdistill.engine.trainer import Trainer

    original = Trainer._train_epoch
    stop = {}

    def stopping(self, epoch, *args):
        if epoch == stop["at"]:
            if stop["how"] == "sigint":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, epoch, *args)

    monkeypatch.setattr(Trainer, "_train_epoch", stopping)
    train = ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=stopped"]
    before = signal.getsignal(signal.SIGTERM)  # the default, or what an earlier test's library set (ray.init's)
    stop.update(at=0, how="sigint")
    assert main([*train, "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mixdistill: interrupted (before its first checkpoint: the same command without --resume starts it again)")
    stop.update(at=1, how="sigterm")
    assert main([*train, "--quiet"]) == 143  # started again, as it said; stopped after its first checkpoint
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "mixdistill: terminated (the same command with --resume continues from the last checkpoint)")
    assert signal.getsignal(signal.SIGTERM) is before, "main() puts the handler back"
    stop.update(at=None)
    assert main([*train, "--resume", "--quiet"]) == 0


def test_a_run_saved_with_peers_its_method_ignored_still_resumes_and_opens(capsys, tiny_run_overrides, tmp_path):
    """Until 2026-12-04 ``model.peers`` beside a method that trains one student was accepted and ignored, and saved in
    the run's config.yaml and checkpoint; today's schema refuses it, which made such a run impossible to resume (its
    checkpoint's config did not validate) or open (eval, analyze). It is read as the run it was: without them."""
    import yaml

    from mixdistill.engine.checkpoint import save_atomic
    from mixdistill.engine.run import open_run

    train = ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=old", "optim.epochs=1"]
    assert main([*train, "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "old"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    saved["model"]["peers"] = ["cnn5_w8", "cnn5_w16"]  # as an older mixdistill wrote it
    (run_dir / "config.yaml").write_text(yaml.safe_dump(saved))
    state = load_checkpoint(run_dir / "last.pt")
    state["config"]["model"]["peers"] = ["cnn5_w8", "cnn5_w16"]
    save_atomic(state, run_dir / "last.pt")
    opened = open_run(run_dir)
    assert opened.config_error is None and opened.cfg.model.peers is None
    assert main([*train, "--resume", "--quiet"]) == 0  # finished: its summary, nothing trained
    (run_dir / "summary.json").unlink()  # as killed after its last checkpoint: resumed from it
    assert main([*train, "--resume", "--quiet"]) == 0 and (run_dir / "summary.json").exists()
    capsys.readouterr()


@pytest.mark.checkout
@pytest.mark.slow
def test_two_processes_into_one_run_directory_during_the_first_epoch(tmp_path):
    """The old check looked for last.pt, which does not exist during the first epoch."""
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 3000, 100)
    cmd = [sys.executable, "-m", "mixdistill", "train", "configs/fmnist_cpu_teacher.yaml", f"data.root={root}",
           f"output_dir={tmp_path / 'runs'}", "name=r", "model.student=cnn5_w8", "data.batch_size=32",
           "optim.epochs=50", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
           "train.precision=fp32", "train.threads=1", "train.compile=false", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = tmp_path / "runs" / "r" / "config.yaml"
        deadline = time.time() + 120
        while not config.exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert first.poll() is None and config.exists() and not (config.parent / "last.pt").exists()
        before = config.read_bytes()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and f"pid {first.pid}" in second.stderr, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and "Traceback" not in second.stderr
        assert config.read_bytes() == before
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()


# ---------------------------------------------------------------------------------- finite checkpoints

def test_non_finite_weights_are_never_checkpointed(tiny_run_overrides, monkeypatch):
    """The last step of epoch 2 has a finite loss but leaves a NaN BatchNorm buffer: epoch 1's checkpoint stays."""
    cfg = load_config(None, tiny_run_overrides + ["name=nan", "optim.epochs=3"])
    original = Trainer._train_epoch

    def poison_after_epoch_2(self, epoch, epochs, logger):
        record = original(self, epoch, epochs, logger)
        if epoch == 1:
            bn = next(m for m in self.distiller.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
            bn.running_var[0] = float("nan")
        return record

    monkeypatch.setattr(Trainer, "_train_epoch", poison_after_epoch_2)
    with pytest.raises(NonFiniteLossError, match=r"after epoch 2 .*running_var.*kept at"):
        train(cfg, quiet=True)
    state = load_checkpoint(cfg.run_dir / "last.pt")
    assert state["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point())


# ------------------------------------------------------------------------------------- full disks

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only); yields (mount point, fill(keep_bytes), make_read_only())."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")

    def fill(keep: int = 0):
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        with open(mount / "filler", "wb") as f:
            with contextlib.suppress(OSError):
                f.write(b"\0" * max(0, free - keep))

    def read_only():
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)

    try:
        yield mount, fill, read_only
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _disk_run(fmnist_root, disk, epochs=2):
    return ["train", "configs/fmnist_cpu_teacher.yaml", f"data.root={fmnist_root}", f"output_dir={disk}",
            "name=r", "model.student=cnn5_w8", "data.batch_size=64", "data.eval_batch_size=200",
            "optim.schedule=onecycle", "optim.milestones=[]", f"optim.epochs={epochs}", "train.progress=false",
            "train.tensorboard=false", "train.device=cpu", "train.precision=fp32", "--quiet"]


@pytest.mark.checkout
@pytest.mark.slow
def test_full_disk_is_one_line_and_leaves_no_empty_config(capsys, fmnist_root, small_disk):
    disk, fill, _ = small_disk
    fill(keep=0)
    err = one_line_error(capsys, _disk_run(fmnist_root, disk))
    assert "No space left on device" in err and "Errno 28" in err and str(disk) in err
    config = disk / "r" / "config.yaml"
    assert not config.exists() or config.stat().st_size > 0
    assert not list((disk / "r").glob(f".*{TMP_SUFFIX}")) if (disk / "r").exists() else True


def test_a_checkpoint_that_fills_the_disk_is_one_write_error(small_disk):
    """The disk fills while torch.save writes (not before): torch's zip writer raises a RuntimeError as it closes,
    with the OSError as its context; it is the same one line as any full disk, and the old file stays."""
    import torch

    from mixdistill.errors import WriteError
    from mixdistill.files import save_torch

    disk, fill, _ = small_disk
    save_torch({"w": torch.zeros(10)}, disk / "last.pt")
    old = (disk / "last.pt").read_bytes()
    fill(keep=200_000)
    with pytest.raises(WriteError, match=r"^cannot write .*last\.pt: \[Errno 28\] No space left on device$"):
        save_torch({"w": torch.zeros(250_000)}, disk / "last.pt")  # 1 MB, past the 200 KB left
    assert (disk / "last.pt").read_bytes() == old and not list(disk.glob(f".*{TMP_SUFFIX}"))


@pytest.mark.checkout
@pytest.mark.slow
def test_resume_on_a_full_disk_keeps_every_file_whole(capsys, fmnist_root, small_disk, interrupt_at):
    disk, fill, _ = small_disk
    with interrupt_at(2):
        main(_disk_run(fmnist_root, disk, epochs=3))
    run = disk / "r"
    before = snapshot(run)
    assert len(before["metrics.jsonl"].splitlines()) == 2
    fill(keep=0)
    err = one_line_error(capsys, _disk_run(fmnist_root, disk, epochs=3) + ["--resume"])
    assert "No space left on device" in err
    after = snapshot(run)
    assert {k: v for k, v in after.items() if not k.startswith(".lock")} == \
        {k: v for k, v in before.items() if not k.startswith(".lock")}, "a file changed on a full disk"
    # the resumed run's logger rewrites metrics.jsonl from the checkpoint's history: on a full disk that
    # write fails and the file keeps every line (it used to be reopened with "w", truncating it first)
    from mixdistill.engine.logging import RunLogger
    from mixdistill.errors import WriteError

    history = [json.loads(x) for x in before["metrics.jsonl"].splitlines()]
    with pytest.raises(WriteError, match="No space left"):
        RunLogger(run, history=history, tensorboard=False, quiet=True)
    assert (run / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]
    # space again: an orphaned temporary file of an interrupted write is removed on the next start
    (disk / "filler").unlink()
    (run / f".last.pt.x{TMP_SUFFIX}").write_bytes(b"partial")
    assert main(_disk_run(fmnist_root, disk, epochs=3) + ["--resume"]) == 0
    assert not list(run.glob(f".*{TMP_SUFFIX}"))
    assert [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@pytest.mark.checkout
@pytest.mark.slow
def test_read_only_disk_is_one_line_and_changes_nothing(capsys, fmnist_root, small_disk):
    disk, _, read_only = small_disk
    assert main(_disk_run(fmnist_root, disk, epochs=1)) == 0
    before = snapshot(disk)
    read_only()
    err = one_line_error(capsys, _disk_run(fmnist_root, disk, epochs=1) + ["name=other"])
    assert "Read-only file system" in err
    assert snapshot(disk) == before


def test_files_are_written_with_the_umasks_mode(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=modes", "optim.epochs=1", "train.tensorboard=true"])
    old = os.umask(0o022)
    try:
        train(cfg, quiet=True)
    finally:
        os.umask(old)
    for name in ("config.yaml", "last.pt", "best.pt", "metrics.jsonl", "summary.json"):
        assert stat.S_IMODE((cfg.run_dir / name).stat().st_mode) == 0o644, name


# ------------------------------------------------------------------------------------ checkpoints

class _RunsCode:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("content, fragment", [
    (b"", "the file is empty"),
    (b"epoch 3 of 240, all fine\nnot a checkpoint at all\n", "not a PyTorch checkpoint"),
    (np.random.default_rng(0).bytes(5000), "not a PyTorch checkpoint"),
])
def test_unreadable_checkpoints_are_one_line_and_not_called_code(capsys, tmp_path, content, fragment):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    err = one_line_error(capsys, ["eval", str(path)])
    assert fragment in err and "execute code" not in err and "weights_only" not in err


def test_a_run_directory_given_as_a_teacher_checkpoint_names_its_checkpoint_files(capsys, tmp_path):
    run = tmp_path / "teacher_run"
    run.mkdir()
    torch.save({"model": {}}, run / "last.pt")
    for extra in (["--print-config"], []):  # --print-config says what training says, before any folder is made
        err = one_line_error(capsys, ["train", "configs/fmnist_cpu.yaml", f"model.teacher_checkpoint={run}",
                                      f"output_dir={tmp_path / 'runs'}", *extra])
        assert f"checkpoint {run} is a directory: name a checkpoint file in it ({run / 'last.pt'})" in err
    assert not (tmp_path / "runs" / "run").exists()


def test_a_code_running_checkpoint_is_refused(capsys, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode()}, path)
    err = one_line_error(capsys, ["eval", str(path)])
    assert "would execute code" in err and "posix.system" in err and "weights_only=False" not in err
    with pytest.raises(CheckpointError, match="would execute code"):
        load_checkpoint(path)


# --------------------------------------------------------------------------------------- CIFAR files

def test_cifar_resaved_by_python3_is_read_like_the_original(tmp_path):
    from mixdistill.data.readers import read_cifar
    from mixdistill.data.synthetic import write_cifar_like

    original = write_cifar_like(tmp_path / "py2", 10, 50, 20)
    resaved = tmp_path / "py3" / "cifar-10-batches-py"
    resaved.mkdir(parents=True)
    for f in (original / "cifar-10-batches-py").iterdir():
        batch = pickle.loads(f.read_bytes(), encoding="bytes")
        (resaved / f.name).write_bytes(pickle.dumps({k.decode(): v for k, v in batch.items()}, protocol=5))
    for split in ("train", "test"):
        a, b = read_cifar(original, split, 10), read_cifar(resaved.parent, split, 10)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_a_crafted_cifar_file_runs_no_code(tmp_path):
    from mixdistill.data.readers import read_cifar
    from mixdistill.data.synthetic import write_cifar_like

    root = write_cifar_like(tmp_path, 10, 50, 20)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Payload(), b"labels": [0]}))
    with pytest.raises(DataError, match="system"):
        read_cifar(root, "test", 10)
    assert not marker.exists(), "unpickling the data file ran its code"


# --------------------------------------------------------------------------------------- validation

def test_labels_outside_the_classes_fail_at_load(tmp_path):
    from mixdistill.data import load_dataset
    from mixdistill.data.synthetic import write_fashion_like, write_idx

    root = write_fashion_like(tmp_path, 50, 20)
    labels = np.zeros(20, dtype=np.uint8)
    labels[3] = 12
    write_idx(root / "t10k-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=r"1 label\(s\) outside 0..9 \(found 0..12\)"):
        load_dataset("fashion_mnist", "test", root=root)


def test_an_empty_class_folder_is_an_error(tmp_path):
    from PIL import Image

    from mixdistill.data import load_dataset

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / split / cls / "0.png")
    (tmp_path / "train" / "c").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/c holds no image files"):
        load_dataset("imagefolder", "train", root=tmp_path)


@pytest.mark.checkout
@pytest.mark.parametrize("overrides, fragment", [
    (["augment=mixup", "augment.alpha=abc"], "invalid value 'abc' for parameter 'alpha'"),
    (["augment=mixup", "augment.alpha=-1"], "greater than 0"),
    (["augment.alpha=-1"], "augment 'none' takes no parameters, got alpha (name the augmentation too: "
                           "augment=mixup augment.alpha=...)"),
    (["augment=cutout", "augment.size=2.5"], "parameter 'size'"),
    (["augment=mixup", "augment.alhpa=1"], "unknown parameter 'alhpa' for augmentation 'mixup' (did you mean alpha"),
    (["augment=flip", "augment.p=1.5"], "less than or equal to 1"),
    (["augment=cutmix", "augment.per_sample_boxes=1"], "per_sample_boxes"),
    (["optim.epochs=true"], "optim.epochs: expected a number, got true"),
    (["method=kd", "model.teacher_checkpoint=t.pt", "method.temperature=true"], "expected a number"),
    (["seed=-1"], "seed: Input should be greater than or equal to 0"),
    (["train.device=meta"], "train.device: 'meta' is not a device"),
    (["model.student=resnet99"], "unknown model (model.student) 'resnet99'"),
    (["augment=cutmix_pick"], "scores the pool with the teacher; method ce has none"),
    (["data.dataset=fmnist"], "unknown dataset 'fmnist'"),
    (["data.image_size=32"], "data.image_size=32 is for data.loader=streaming"),
    (["optim.schedule=step", "optim.milestones=[150,180]", "optim.epochs=1"],
     "optim.epochs=1 leaves no room for a step schedule's decay: set optim.schedule=constant / onecycle / cosine"),
    (["optim.schedule=step", "optim.milestones=[150,180]", "optim.epochs=10"],
     "must lie strictly inside 1..9 for optim.epochs=10: set optim.milestones too (e.g. "),
    (["method=dml", "method.peers=2", "model.peers=[cnn5_w8,cnn5_w8,cnn5_w16]"],
     "method.peers is 2 but model.peers names 3 models"),
    # the run's folder in output_dir: not output_dir itself (it hid the runs below it), not a folder outside it
    (["name=''"], "name '' is the run's folder in output_dir: one folder name"),
    (["name=.."], "name '..' is the run's folder"),
    (["name=../escape"], "name '../escape' is the run's folder"),
    (["name=/tmp/elsewhere"], "name '/tmp/elsewhere' is the run's folder"),
    (["name=a/b"], "name 'a/b' is the run's folder"),
    (["name=kd.superseded1"], "'.superseded' marks a run set aside, which results leaves out"),
])
def test_bad_values_are_config_errors(overrides, fragment):
    with pytest.raises(MixdistillError, match=fragment.replace(".", r"\.").replace("(", r"\(").replace(")", r"\)")):
        load_config("configs/fmnist_cpu_teacher.yaml", overrides)


def test_a_numeric_name_is_a_folder_name():
    """``name=123`` parses as YAML's integer: the folder '123' (it was 'Input should be a valid string'); YAML 1.2
    reads off, yes and a date as text."""
    assert load_config(None, ["name=123"]).name == "123"
    for word, value in (("true", "true"), ("False", "false")):
        with pytest.raises(MixdistillError, match=f"name: reads as the YAML boolean {value} .*quote it"):
            load_config(None, [f"name={word}"])
    assert [load_config(None, [f"name={word}"]).name for word in ("off", "yes", "2024-01-01", "'true'")] == [
        "off", "yes", "2024-01-01", "true"]
    with pytest.raises(MixdistillError, match=r"name: give the run a name \(name= is empty\)"):
        load_config(None, ["name="])


@pytest.mark.checkout
def test_print_config_validates_as_training_does(capsys, tmp_path):
    assert "unknown model (model.student)" in one_line_error(
        capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "model.student=resnet99", "--print-config"])
    assert "scores the pool with the teacher" in one_line_error(
        capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "augment=cutmix_pick", "--print-config"])
    # built as training builds it (models on the meta device): ONE's branch form
    assert "one: the branch form (a shared trunk) exists for" in one_line_error(
        capsys, ["train", "configs/online_fmnist_cpu.yaml", "method=one", "model.student=vgg8", "--print-config"])
    # ... where no value can be read: Cut^nMix's EMA teachers start as copies without reading their counters
    assert main(["train", "configs/online_fmnist_cpu.yaml", "method=cutnmix", "method.teacher=ema",
                 "--print-config"]) == 0
    # the methods' own shape checks, which run where they learn the shapes (prepare), on the meta device too
    assert "method.hint_layer 7 is out of range" in one_line_error(
        capsys, ["train", "configs/cifar100_crd.yaml", "method=fitnet", "method.hint_layer=7", "--print-config"])
    assert "reviewkd needs at least two 4-D stage maps" in one_line_error(
        capsys, ["train", "configs/cifar100_crd.yaml", "method=reviewkd", "model.student=tv:mobilenet_v2",
                 "--print-config"])
    assert "need a batch of at least 10, got data.batch_size=8" in one_line_error(
        capsys, ["train", "configs/online_fmnist_cpu.yaml", "augment.n=9", "data.batch_size=8", "--print-config"])
    # the teacher's form, the teacher table and this machine's device and precision, as training decides them
    assert "reads the teacher's features, which a folded or int8 teacher does not expose" in one_line_error(
        capsys, ["train", "configs/cifar100_crd.yaml", "method=crd", "train.int8_teacher=true", "--print-config"])
    assert "train.teacher_cache=true: augment cutmix mixes the batch the teacher sees" in one_line_error(
        capsys, ["train", "configs/cifar100_crd.yaml", "method=kd", "augment=cutmix", "train.teacher_cache=true",
                 "--print-config"])
    assert "int8_teacher=true quantises the folded teacher, which train.fast_teacher=false turns off" in \
        one_line_error(capsys, ["train", "configs/cifar100_crd.yaml", "method=kd", "train.int8_teacher=true",
                                "train.fast_teacher=false", "--print-config"])
    if not torch.cuda.is_available():
        assert "train.precision=fp16 is for CUDA GPUs" in one_line_error(
            capsys, ["train", "configs/cifar100_crd.yaml", "train.precision=fp16", "--print-config"])
    # a benchmark teacher's architecture is known without its file: model.teacher must agree (it picks DKD's beta)
    assert "model.teacher is 'resnet32x4' but the benchmark teacher resnet56 is a 'resnet56'" in one_line_error(
        capsys, ["train", "configs/cifar100_crd.yaml", "method=dkd", "model.teacher_checkpoint=resnet56",
                 "model.student=resnet20", "--print-config"])
    # ... and its classes: a CIFAR-100 model for a 10-class dataset is refused before training as at its load
    assert "resnet32x4 is a benchmark teacher, a CIFAR-100 model (100 classes); fashion_mnist has 10" in \
        one_line_error(capsys, ["train", "configs/fmnist_cpu.yaml", "model.teacher_checkpoint=resnet32x4",
                                "model.teacher=null", "--print-config"])
    # a teacher file that records no architecture needs model.teacher: refused as at its load (--print-config passed
    # it, and built the teacher as the student)
    from mixdistill.models import create_model

    plain = tmp_path / "plain.pt"
    torch.save({"model": create_model("cnn5_w16", num_classes=10, in_channels=1).state_dict()}, plain)
    assert f"{plain} does not record its architecture: set model.teacher" in one_line_error(
        capsys, ["train", "configs/fmnist_cpu.yaml", f"model.teacher_checkpoint={plain}", "--print-config"])
    assert main(["train", "configs/fmnist_cpu.yaml", f"model.teacher_checkpoint={plain}", "model.teacher=cnn5_w16",
                 "--print-config"]) == 0
    capsys.readouterr()
    # a method without a teacher loads none: a config's teacher file that is not there yet is no error (training
    # accepts it), for CE as for an online method
    for method in ("ce", "dml"):
        assert main(["train", "configs/fmnist_cpu.yaml", f"method={method}",
                     "model.teacher_checkpoint=no/such/last.pt", "--print-config"]) == 0, method


def test_config_files_duplicate_keys_non_utf8_and_yaml12_floats(capsys, tmp_path):
    dup = tmp_path / "dup.yaml"
    dup.write_text("optim:\n  lr: 0.1\n  lr: 0.2\n")
    assert one_line_error(capsys, ["train", str(dup), "--print-config"]).endswith(
        "duplicate key 'lr' (line 3, column 3)")  # the position once
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in one_line_error(capsys, ["train", str(latin), "--print-config"])
    exp = tmp_path / "exp.yaml"
    exp.write_text("optim: {lr: 1e-3, weight_decay: 5E-4}\n")
    cfg = load_config(exp, ["optim.momentum=9e-1"])
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.momentum) == (1e-3, 5e-4, 0.9)


def test_configs_and_overrides_read_numbers_and_booleans_as_yaml_1_2(tmp_path):
    """PyYAML's YAML 1.1 read seed=1:30 as 90 (base 60), seed=017 as 15 (octal) and off/yes as booleans."""
    assert load_config(None, ["seed=017"]).seed == 17
    assert load_config(None, ["seed=0o17"]).seed == 15 and load_config(None, ["seed=0x1f"]).seed == 31
    with pytest.raises(MixdistillError, match="seed: Input should be a valid integer"):
        load_config(None, ["seed=1:30"])
    assert load_config(None, ["data.flip=false", "output_dir=off"]).output_dir == "off"
    # off and yes are text, which every true/false option reads as pydantic does, auto-or-boolean ones too
    assert load_config(None, ["data.flip=off", "train.compile=off", "train.channels_last=yes"]).train.compile is False
    base = tmp_path / "anchors.yaml"  # merge keys, which the duplicate-key check refused ("could not determine a
    base.write_text("common: &c {epochs: 2, lr: 0.2}\noptim: {<<: *c, epochs: 3}\n")  # constructor")
    with pytest.raises(MixdistillError, match="common: unknown key"):  # read, then validated: the anchor's holder
        load_config(base)
    base.write_text("optim: {<<: {epochs: 2, lr: 0.2, schedule: constant}, epochs: 3}\n")
    optim = load_config(base).optim
    assert (optim.epochs, optim.lr, optim.schedule) == (3, 0.2, "constant")  # the mapping's own key wins


@pytest.mark.parametrize("overrides, fragment", [
    (["optim.nesterov=true", "optim.momentum=0"], "optim.nesterov=true needs a momentum"),  # torch's SGD raised it
    (["optim.lr_overrides={cnn5_w8: -1}"], "optim.lr_overrides.cnn5_w8: Input should be greater than 0"),
    (["optim.lr_overrides={cnn5_w8: 0}"], "optim.lr_overrides.cnn5_w8: Input should be greater than 0"),
    (["optim.lr=.inf"], "optim.lr: Input should be a finite number"),  # passed, and diverged at step 1
    (["method=kd", "model.teacher_checkpoint=t.pt", "method.temperature=.nan"], "Input should be a finite number"),
    (["optim.momentum=1.5"], "optim.momentum: Input should be less than 1"),
    (["train.compile=maybe"], "train.compile: expected true, false or auto, got 'maybe'"),
    (["train.channels_last=2"], "train.channels_last: expected true, false or auto, got 2"),
    (["optim.epochs=3", "optim={lr: 0.2, schedule: constant}"],  # the section dropped the key: 240 epochs
     "override optim.epochs comes before optim, which replaces the whole optim section and would drop it"),
    (["train.cuda_graphs=true", "train.compile=false"],  # refused once training started, not by --print-config
     "train.cuda_graphs=true needs train.compile on a CUDA device (here: cpu, compile off)"),
    (["train.cuda_graphs=true", "train.compile=true", "train.device=cpu"],  # trained on, the option ignored
     "train.cuda_graphs=true needs train.compile on a CUDA device (here: cpu, compile on)"),
    (["data.num_workers=4"], "data.num_workers=4 is for data.loader=streaming"),  # accepted, doing nothing
    (["data.dataset=imagefolder", "data.loader=streaming", "data.image_size=32", "data.crop_padding=4"],
     "data.crop_padding=4 is the memory loader's random crop of padded images"),  # accepted, doing nothing
    (["train.int8_teacher=true"], "train.int8_teacher=true quantises the teacher; method ce has none"),
    (["augment=autoaugment", "augment.std=[0]"], "std without mean: they go together"),  # ignored, recorded as used
    (["augment=cutmix", "data.batch_size=1"], "cutmix pairs each image with another of its batch (a derangement): "
                                              "data.batch_size=1 has none; or augment.partner=permutation"),
    (["augment=autoaugment", "augment.mean=[0.3]"], "mean without std: they go together"),  # a traceback mid-run
    (["augment=autoaugment", "augment.mean=[0.3]", "augment.std=[0]"], "std values are > 0"),
    (["augment=autoaugment", "augment.mean=[0.3,0.3,0.3]", "augment.std=[0.2,0.2,0.2]"],
     "augment.mean and augment.std give 3 values; fashion_mnist images have 1 channel"),
    ([".epochs=3"], "the key '.epochs' has an empty part"),
    (["optim..epochs=3"], "the key 'optim..epochs' has an empty part"),
])
def test_config_values_training_could_not_use_are_one_line(capsys, overrides, fragment):
    """Each trained to a traceback, trained silently wrong, or named pydantic's internals."""
    err = one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *overrides, "--print-config"])
    assert fragment in err and "literal[" not in err, err


def test_eval_counts_below_one(capsys, tmp_path):
    assert "--batch-size must be at least 1" in one_line_error(capsys, ["eval", "x.pt", "--batch-size", "-1"])


@pytest.mark.parametrize("argv", [["demo", "--quick"], ["study", "shen2022", "--scale", "smoke", "--seeds", "1"]])
def test_a_data_root_that_is_no_folder_is_refused_before_the_grid_makes_its_own(argv, capsys, tmp_path):
    missing = tmp_path / "no" / "such"
    out = tmp_path / "out"
    assert one_line_error(capsys, [*argv, "--data-root", str(missing), "--output-dir", str(out)]).endswith(
        f"data root {missing} does not exist (a data root given in the config or on the command line is the only "
        "place looked for fashion_mnist; leave it unset to search $MIXDISTILL_DATA, the usual locations and the "
        "download cache). To fix, pass --data-root PATH naming the folder holding it")
    assert not out.exists()  # it made the folder, its grid.lock and runs/ first


def test_a_bad_device_flag_is_one_line_naming_it(capsys, tmp_path, fmnist_root):
    from mixdistill.files import save_torch
    from mixdistill.models import create_model

    ckpt = save_torch({"model": create_model("cnn5_w8", 10, 1).state_dict(), "arch": "cnn5_w8"}, tmp_path / "m.pt")
    data = ["--data", "fashion_mnist", "--data-root", str(fmnist_root)]
    assert one_line_error(capsys, ["bench", "--quick", "--device", "tpu", "--out", str(tmp_path / "b")]).endswith(
        "bench --device: 'tpu' is not a device (auto, cpu, cuda, cuda:N)")  # was torch's traceback
    for command in ("eval", "analyze"):
        argv = [command, str(ckpt), *data, "--device", "mps"]
        assert one_line_error(capsys, argv).endswith("--device: 'mps' is not a device (auto, cpu, cuda, cuda:N)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # refused before anything was written


def test_analyze_names_its_flag_in_a_bad_view_and_a_file_in_the_way_of_its_folder(capsys, tmp_path, fmnist_root):
    from mixdistill.files import save_torch
    from mixdistill.models import create_model

    ckpt = save_torch({"model": create_model("cnn5_w8", 10, 1).state_dict(), "arch": "cnn5_w8"}, tmp_path / "m.pt")
    argv = ["analyze", str(ckpt), "--data", "fashion_mnist", "--data-root", str(fmnist_root), "--device", "cpu"]
    err = one_line_error(capsys, argv + ["--teacher-stats", "mixp"])
    assert "unknown augmentation (--teacher-stats) 'mixp'. Did you mean: mixup" in err and err.endswith(", run")
    (tmp_path / "report").write_text("mine")
    err = one_line_error(capsys, argv + ["--out", str(tmp_path / "report")])
    assert err.endswith(f"cannot write {tmp_path / 'report'}: a file of that name is there, not a folder")
    assert (tmp_path / "report").read_text() == "mine"


# ---------------------------------------------------------------------- the resolved config is complete

@pytest.mark.checkout
def test_resolved_config_records_every_default(capsys, tiny_run_overrides):
    # a CIFAR-100 config: the benchmark teacher resnet32x4 is a CIFAR-100 model (refused for Fashion-MNIST)
    assert main(["train", "configs/cifar100_crd.yaml", "method=dkd", "model.teacher_checkpoint=resnet32x4",
                 "--print-config"]) == 0
    import yaml

    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["method"] == {"name": "dkd", "ce_weight": 1.0, "alpha": 1.0, "beta": 8.0, "temperature": 4.0,
                                 "warmup": 20, "mixed_target": "first", "logit_stand": False}
    assert printed["augment"] == {"name": "none"} and printed["train"]["threads"] >= 1
    mixed = load_config(None, ["augment=cutmix"]).augment.model_extra
    assert mixed == {"alpha": 1.0, "partner": "derangement", "per_sample_boxes": False,
                     "box_rounding": "exact"}
    kept = load_config(None, ["method.temperature=1", "method=kd", "model.teacher_checkpoint=t.pt"])
    assert kept.method.model_extra["temperature"] == 1
    # and the run's config.yaml holds them, so a changed default is a changed config
    cfg = load_config(None, tiny_run_overrides + ["name=defaults", "optim.epochs=1", "augment=mixup"])
    train(cfg, quiet=True)
    saved = yaml.safe_load((cfg.run_dir / "config.yaml").read_text())
    assert saved["augment"] == {"name": "mixup", "alpha": 1.0, "per_sample": False}
    assert saved["train"]["threads"] == torch.get_num_threads()


def test_a_changed_default_makes_the_grid_run_again(tmp_path, fmnist_root):
    from mixdistill.studies.grid import GridRun, ResultsFile, run_grid

    base = {"data": {"root": str(fmnist_root), "batch_size": 64, "eval_batch_size": 200},
            "model": {"student": "cnn5_w8"}, "augment": {"name": "mixup"},
            "optim": {"epochs": 1, "schedule": "onecycle", "milestones": [], "lr": 0.05},
            "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}}
    runs = [GridRun("a", base)]
    run_grid(runs, tmp_path, log=lambda *_: None)
    results = ResultsFile(tmp_path / "results.jsonl")
    row = results.read()["a"]
    assert row["config"]["augment"]["alpha"] == 1.0
    row["config"]["augment"]["alpha"] = 0.4  # as written when mixup's default alpha was 0.4
    results.path.write_text(json.dumps(row) + "\n")
    said = []
    run_grid(runs, tmp_path, log=said.append)
    assert any("different config" in s for s in said) and (tmp_path / "runs" / "a.superseded1").is_dir()


# --------------------------------------------------------------------------------- executors agree

@pytest.mark.slow
def test_every_executor_makes_the_same_runs(tmp_path, fmnist_root):
    pytest.importorskip("ray")
    from mixdistill.studies.grid import GridRun, run_grid

    def grid(study):
        base = {"data": {"root": str(fmnist_root), "batch_size": 64, "eval_batch_size": 200},
                "model": {"student": "cnn5_w8"}, "method": {"name": "ce"}, "augment": {"name": "cutmix"},
                "optim": {"epochs": 1, "schedule": "onecycle", "milestones": [], "lr": 0.05},
                "train": {"progress": False, "tensorboard": False, "device": "cpu", "precision": "fp32"}}
        return [GridRun(f"s{seed}", {**base, "seed": seed}) for seed in range(2)]

    outcomes = {}
    for name, kwargs in {"local": dict(jobs=1), "local_side_by_side": dict(jobs=2),
                         "ray": dict(executor="ray")}.items():
        study = tmp_path / name
        rows = run_grid(grid(study), study, threads=1, log=lambda *_: None, **kwargs)
        outcomes[name] = {k: (r["summary"]["last_acc"], r["summary"]["last_test_loss"], r["config"]["train"]["threads"])
                          for k, r in rows.items()}
    assert outcomes["local"] == outcomes["local_side_by_side"] == outcomes["ray"]
    assert all(threads == 1 for *_, threads in outcomes["ray"].values())


def test_standard_output_that_cannot_be_written_is_one_line_or_silence(capsys, monkeypatch):
    """``mixdistill models > /dev/full``: one line, exit 1 (it was a traceback); a reader that closed the pipe
    (``| head``): exit 1, nothing printed."""
    import io

    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sys, "stdout", Full())
    assert main(["models"]) == 1
    assert capsys.readouterr().err == "mixdistill: error: cannot write the output: [Errno 28] No space left on device\n"
    monkeypatch.undo()
    proc = subprocess.Popen([sys.executable, "-m", "mixdistill", "methods"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader is gone before the table is written
    err = proc.stderr.read()
    assert proc.wait() == 1 and err == b""


def test_resume_after_the_data_gained_a_class_names_it(capsys, tmp_path):
    """A class folder added to an image folder between a run's stop and its --resume: a 'size mismatch for
    fc.weight' traceback (the config, the same, passed the resume check); now one line."""
    from PIL import Image

    rng = np.random.default_rng(0)

    def add_class(name):
        for split, n in (("train", 8), ("test", 2)):
            for i in range(n):
                path = tmp_path / "data" / split / name / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(path)

    for name in ("a", "b"):
        add_class(name)
    train = ["train", "configs/fmnist_cpu_teacher.yaml", "data.dataset=imagefolder", f"data.root={tmp_path / 'data'}",
             f"output_dir={tmp_path / 'runs'}", "name=r", "model.student=cnn5_w8", "data.batch_size=4",
             "optim.epochs=1", "optim.milestones=[]", "train.progress=false", "train.tensorboard=false",
             "train.device=cpu", "--quiet"]
    assert main(train) == 0
    (tmp_path / "runs" / "r" / "summary.json").unlink()  # as killed after its last checkpoint
    add_class("c")
    before = (tmp_path / "runs" / "r" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main([*train, "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixdistill: error: --resume (resume=True in Python): the data has 3 classes but ")
    assert "was started on data with 2: its files changed since" in err and len(err.splitlines()) == 1
    assert (tmp_path / "runs" / "r" / "last.pt").read_bytes() == before


def test_a_write_to_a_device_fifo_or_link_goes_through_it_and_keeps_it(tmp_path):
    """The atomic writer renamed its temporary file over the path: `results --csv /dev/full` replaced the device
    with a file and said 'wrote'; a symbolic link became a file and its target was never written."""
    from mixdistill.errors import WriteError
    from mixdistill.files import write_text

    (tmp_path / "target.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to("target.csv")
    write_text(tmp_path / "link.csv", "new")
    assert (tmp_path / "link.csv").is_symlink() and (tmp_path / "target.csv").read_text() == "new"
    os.mkfifo(tmp_path / "fifo")
    reader = subprocess.Popen(["cat", str(tmp_path / "fifo")], stdout=subprocess.PIPE)
    write_text(tmp_path / "fifo", "through the pipe")
    assert reader.communicate(timeout=10)[0] == b"through the pipe"
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode)
    if os.path.exists("/dev/full"):  # a full disk: one error, the device left as it was
        with pytest.raises(WriteError, match=r"cannot write /dev/full: \[Errno 28\]"):
            write_text("/dev/full", "x")
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def test_resume_on_another_number_of_processes_is_refused(capsys, tiny_run_overrides, tmp_path):
    """A 2-rank run resumed in one process was accepted: its summary said 1 process and results pooled it with the
    runs that were one throughout, though a rank's share of each batch (and the floats) depend on it."""
    from mixdistill.engine.checkpoint import save_atomic

    train = ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=w", "optim.epochs=1"]
    assert main([*train, "--quiet"]) == 0
    run_dir = tmp_path / "runs" / "w"
    state = load_checkpoint(run_dir / "last.pt")
    assert state["world_size"] == 1
    state["world_size"] = 2  # as a torchrun --nproc-per-node 2 run writes it
    save_atomic(state, run_dir / "last.pt")
    (run_dir / "summary.json").unlink()  # as killed after its last checkpoint
    capsys.readouterr()
    assert main([*train, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "was started on 2 process(es), this is 1: a rank's share of each batch" in err
    assert "torchrun --nproc-per-node 2" in err and len(err.splitlines()) == 1


def test_more_threads_than_cpus_is_said(tiny_run_overrides, monkeypatch):
    """train.threads=99 on 2 cores ran some 600 times slower without a word."""
    from mixdistill.engine import trainer as trainer_module

    monkeypatch.setattr(trainer_module, "available_cpus", lambda: 2)
    cfg = load_config("configs/fmnist_cpu_teacher.yaml", [*tiny_run_overrides, "name=t", "train.threads=3"])
    threads = torch.get_num_threads()
    try:
        with pytest.warns(UserWarning, match="train.threads=3 is more than the 2 CPU"):
            Trainer(cfg, quiet=True).close()
    finally:
        torch.set_num_threads(threads)  # the tests after this one run with the process's own


def test_paths_in_a_config_start_from_the_home_folder_as_the_shell_reads_them(tmp_path, monkeypatch):
    """output_dir=~/runs made a folder named '~' in the current directory, and a teacher checkpoint was looked
    for in one; data.root was expanded. The resolved config records the expanded paths."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["output_dir=~/runs", "data.root=~/data", "method=kd", "model.teacher_checkpoint=~/t.pt"])
    assert (cfg.output_dir, cfg.data.root, cfg.model.teacher_checkpoint) == (
        str(tmp_path / "runs"), str(tmp_path / "data"), str(tmp_path / "t.pt"))
    assert cfg.run_dir == tmp_path / "runs" / "run"
    assert load_config(None, ["output_dir=a~b"]).output_dir == "a~b"


def test_under_torchrun_the_demo_is_refused_and_a_nodes_other_ranks_stay_silent(capsys, tmp_path, monkeypatch):
    """torchrun started one demo a process (one took the folder, the other stopped on its lock, and the agent then
    killed the first mid-grid); every rank printed the same error, warning or interruption line."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert one_line_error(capsys, ["demo", "--quick", "--output-dir", str(tmp_path / "demo")]).endswith(
        "the demo starts its own processes for its runs: run `mixdistill demo` directly, not under torchrun "
        "(torchrun is for one run: `torchrun ... -m mixdistill train CONFIG`)")
    assert not (tmp_path / "demo").exists()
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")]) == 2  # the same status, said once
    assert capsys.readouterr().err == ""
    from mixdistill import cli

    monkeypatch.setenv("LOCAL_RANK", "0")  # a node's first process says a warning (the CLI's one line); no other does
    cli._show_warning("said", UserWarning, cli.__file__, 1)
    assert capsys.readouterr().err == "mixdistill: warning: said\n"
    monkeypatch.setenv("LOCAL_RANK", "1")
    cli._show_warning("said", UserWarning, cli.__file__, 1)
    assert capsys.readouterr().err == ""
    for world, local in (("1", "1"), ("2", "x"), ("2", "")):  # not under torchrun, or not its numbers: said
        monkeypatch.setenv("WORLD_SIZE", world)
        monkeypatch.setenv("LOCAL_RANK", local)
        cli._show_warning("said", UserWarning, cli.__file__, 1)
        assert capsys.readouterr().err == "mixdistill: warning: said\n"


def test_a_run_refused_after_its_folder_was_claimed_leaves_no_output_folders(capsys, tmp_path, fmnist_root):
    """The run's own folder was removed again, but the output folders made above it stayed, empty."""
    out = tmp_path / "new" / "runs"
    common = ["train", "configs/fmnist_cpu.yaml", f"data.root={fmnist_root}", "optim.epochs=1", "train.threads=1",
              "data.train_subset=500", "model.teacher_checkpoint=" + str(tmp_path / "none.pt")]
    assert one_line_error(capsys, [*common, f"output_dir={out}"]).endswith("(a run's last.pt)")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()  # a folder that was there stays, empty or not
    one_line_error(capsys, [*common, f"output_dir={tmp_path / 'kept'}"])
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and list((tmp_path / "kept").iterdir()) == []


def test_a_run_that_loses_the_race_for_its_folder_leaves_the_winners_folder(tmp_path, monkeypatch):
    """Two runs started into one new folder at once: the one refused on the lock removed the folder (and its lock)
    the other had just made, as a folder it had made itself and left empty."""
    import contextlib

    from mixdistill.engine import run
    from mixdistill.errors import LockedError

    run_dir = tmp_path / "out" / "r"

    @contextlib.contextmanager
    def taken(path, what):  # the other process makes the folder and takes its lock first
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        raise LockedError("in use")
        yield

    monkeypatch.setattr(run, "hold_lock", taken)
    with pytest.raises(LockedError):
        with run.claim(run_dir, "training r"):
            pass
    assert (run_dir / run.LOCK).exists()
