"""Faults and bad input: SIGKILL + resume, interrupted checkpoint writes, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mixdistill.cli import main
from mixdistill.engine.checkpoint import load_checkpoint, save_atomic
from mixdistill.errors import CheckpointError


def test_interrupted_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic({"epoch": 1, "w": torch.ones(3)}, path)

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")  # some bytes, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"epoch": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "a temporary file was left behind"


def test_truncated_checkpoint_is_one_clear_error(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic({"w": torch.ones(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)


def _cli_error(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixdistill: error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.checkout
def test_bad_input_one_line_and_nothing_overwritten(capsys, tiny_run_overrides, tmp_path):
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=t", "optim.epochs=1",
                 "--quiet"]) == 0
    capsys.readouterr()
    run = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/t"
    before = {p: open(os.path.join(run, p), "rb").read() for p in os.listdir(run) if os.path.isfile(os.path.join(run, p))}
    teacher = f"model.teacher_checkpoint={run}/last.pt"
    assert "unknown augmentation 'cutmixx'" in _cli_error(capsys, ["train", "configs/fmnist_cpu.yaml", teacher,
                                                                   "augment=cutmixx"])
    assert "unknown dataset 'fmnist'" in _cli_error(capsys, ["train", "configs/fmnist_cpu.yaml", teacher,
                                                             "data.dataset=fmnist"])
    assert "already holds a run" in _cli_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml",
                                                        *tiny_run_overrides, "name=t", "optim.epochs=1"])
    # a teacher checkpoint trained for 10 classes loaded into a 100-class problem
    from mixdistill.data.synthetic import write_cifar_like

    cifar = write_cifar_like(tmp_path / "c100", 100, 200, 100)
    err = _cli_error(capsys, ["train", "configs/cifar100_crd.yaml", f"data.root={cifar}", f"output_dir={tmp_path}",
                              "model.teacher=cnn5_w8", teacher, "model.student=cnn5_w8"])
    assert "10 classes" in err and "100" in err
    # a corrupt checkpoint as teacher
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    _cli_error(capsys, ["train", "configs/fmnist_cpu.yaml", f"model.teacher_checkpoint={bad}",
                        *tiny_run_overrides, "name=s"])
    after = {p: open(os.path.join(run, p), "rb").read() for p in before}
    assert after == before, "an earlier result was modified"


@pytest.mark.checkout
@pytest.mark.slow
def test_sigkill_mid_run_then_resume_is_bitwise_equal(tmp_path):
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 3000, 200)
    common = ["configs/fmnist_cpu_teacher.yaml", f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
              "model.student=cnn5_w8", "optim.epochs=5", "train.progress=false", "train.tensorboard=false",
              "train.device=cpu", "train.precision=fp32", "--quiet"]
    cmd = [sys.executable, "-m", "mixdistill", "train", *common]
    assert subprocess.run(cmd + ["name=full"], capture_output=True, timeout=600).returncode == 0

    victim = subprocess.Popen(cmd + ["name=killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = tmp_path / "runs" / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert victim.poll() is None, "the run finished before it could be killed"
    time.sleep(0.3)  # inside a later epoch
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    state = load_checkpoint(tmp_path / "runs" / "killed" / "last.pt")
    assert 2 <= state["epoch"] < 5
    resumed = subprocess.run(cmd + ["name=killed", "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a = load_checkpoint(tmp_path / "runs" / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "runs" / "killed" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    epochs = [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]
