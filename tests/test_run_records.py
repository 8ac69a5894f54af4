"""What a run records: summary.json's environment and top-5 accuracy, and best.pt (the best evaluated epoch,
kept across --resume)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import mixdistill.engine.trainer as trainer_module
from mixdistill.config import load_config
from mixdistill.engine.build import build_teacher
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.evaluate import eval_record, evaluate_many
from mixdistill.engine.run import open_run
from mixdistill.engine.runtime import git_commit_of, resolve_runtime
from mixdistill.engine.trainer import Trainer, best_so_far, train
from mixdistill.errors import CheckpointError, ConfigError
from mixdistill.machine import cpu_name

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "mixdistill"


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.checkout
def test_summary_records_the_environment_and_top5(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=env", "optim.epochs=2", "train.precision=auto"])
    summary = train(cfg, quiet=True)
    assert json.loads((cfg.run_dir / "summary.json").read_text()) == summary
    env = summary["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"] == cpu_name() and env["python"].count(".") == 2
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["cpu_native_bf16"] is False
    assert env["device"] == "cpu" and env["device_name"] == cpu_name() and env["processes"] == 1
    assert env["precision"] == "fp32"  # auto, resolved (native bf16 detection is off in the tests)
    assert env["threads"] == cfg.train.threads
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PACKAGE, capture_output=True, text=True)
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "__init__.py"], cwd=PACKAGE, capture_output=True)
    expected = head.stdout.strip() if head.returncode == 0 and tracked.returncode == 0 else None
    assert env["git_commit"] == expected
    lines = metrics(cfg.run_dir)
    assert all(0 <= r["test_acc"] <= r["test_top5"] <= 100 for r in lines)
    assert summary["last_top5"] == lines[-1]["test_top5"] and summary["last_acc"] == lines[-1]["test_acc"]


def test_git_commit_is_none_outside_a_checkout_and_never_fails(tmp_path, monkeypatch):
    assert git_commit_of(tmp_path) is None  # no repository
    assert git_commit_of(tmp_path / "missing") is None
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "__init__.py").write_text("")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(git + ["init", "-q"], cwd=repo, check=True)
    (repo / "other").write_text("x")
    subprocess.run(git + ["add", "other"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "c"], cwd=repo, check=True)
    assert git_commit_of(repo / "pkg") is None  # inside a repository that does not track the package
    subprocess.run(git + ["add", "pkg/__init__.py"], cwd=repo, check=True)
    subprocess.run(git + ["commit", "-qm", "c2"], cwd=repo, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert git_commit_of(repo / "pkg") == head
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert git_commit_of(repo / "pkg") is None


def test_top5_counts_the_label_among_the_five_highest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([4, 0, 0])  # 5th highest (top-5 only), lowest (neither), highest (both)
    runtime = resolve_runtime("cpu", "fp32", channels_last=False, compile=False)
    out = evaluate_many(nn.Identity(), lambda x: {"six": x}, [(logits, labels)], runtime)
    assert out["six"]["acc"] == pytest.approx(100 / 3) and out["six"]["top5"] == pytest.approx(200 / 3)
    assert out["six"]["loss"] == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    out["four"] = evaluate_many(nn.Identity(), lambda x: {"four": x[:, :4]}, [(logits, labels % 4)], runtime)["four"]
    assert out["four"]["top5"] is None and out["four"]["acc"] == pytest.approx(200 / 3)  # rows 0 and 2
    assert eval_record({"student": out["six"]})["test_top5"] == pytest.approx(200 / 3)
    assert "test_top5" not in eval_record({"student": out["four"]})
    online = eval_record({"peer0": out["six"], "peer1": {**out["six"], "top5": 100.0}, "ensemble": out["six"]})
    assert online["test_top5"] == pytest.approx((200 / 3 + 100) / 2)
    assert online["test_top5_ensemble"] == pytest.approx(200 / 3)


def test_best_so_far_is_strictly_better_lower_for_a_loss():
    history = [{"epoch": 1, "test_acc": 10.0, "test_loss": 2.0}, {"epoch": 2, "train_acc": 50.0},
               {"epoch": 3, "test_acc": 10.0, "test_loss": 1.0},
               {"epoch": 4, "test_acc": math.nan, "test_loss": math.nan}]
    assert best_so_far(history, "test_acc") == {"metric": "test_acc", "value": 10.0, "epoch": 1}  # a tie: earlier
    assert best_so_far(history, "test_loss") == {"metric": "test_loss", "value": 1.0, "epoch": 3}
    assert best_so_far(history, None) is None and best_so_far([], "test_acc") is None


def test_best_pt_holds_the_best_evaluated_epoch_and_resume_keeps_it(tiny_run_overrides, interrupt_at, monkeypatch):
    scripted = iter([30.0, 50.0, 40.0, 45.0])  # test_acc of epochs 1-4: the best is epoch 2, the last is worse
    real = trainer_module.eval_record

    def scripted_record(results):
        return {**real(results), "test_acc": next(scripted)}

    monkeypatch.setattr(trainer_module, "eval_record", scripted_record)
    common = tiny_run_overrides + ["optim.schedule=constant", "train.compile=false"]
    cfg = load_config(None, common + ["name=best", "optim.epochs=4"])
    with interrupt_at(3):  # dies as epoch 4 starts, after epoch 3's checkpoint
        train(cfg, quiet=True)
    best_path = cfg.run_dir / "best.pt"
    best = load_checkpoint(best_path)
    assert best["best"] == {"metric": "test_acc", "value": 50.0, "epoch": 2} and best["epoch"] == 2
    assert [r["epoch"] for r in json.loads(best["history"])] == [1, 2]
    assert not {"optimizer", "scheduler", "rng"} & set(best) and best["format"] == "mixdistill-best-v1"
    before = best_path.read_bytes()

    summary = train(cfg, resume=True, quiet=True)  # epoch 4 (45) must not replace epoch 2 (50)
    assert best_path.read_bytes() == before
    assert summary["last_acc"] == 45.0  # the reported number stays the last epoch's
    assert summary["best_checkpoint"] == {"file": "best.pt", "metric": "test_acc", "value": 50.0, "epoch": 2}
    lines = metrics(cfg.run_dir)
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4]
    assert max(lines, key=lambda r: r["test_acc"])["epoch"] == best["epoch"] == summary["best_epoch"]

    # its weights are epoch 2's: a 2-epoch run of the same seed and constant schedule ends with them
    monkeypatch.setattr(trainer_module, "eval_record", real)
    short = load_config(None, common + ["name=short", "optim.epochs=2"])
    train(short, quiet=True)
    short_state = load_checkpoint(short.run_dir / "last.pt")["model"]
    assert set(best["model"]) == set(short_state)
    assert all(torch.equal(best["model"][k], short_state[k]) for k in short_state)

    opened = open_run(best_path)  # the project's reader; evaluable and usable as a teacher
    assert opened.cfg.name == "best" and not opened.model().training
    student = load_config(None, tiny_run_overrides + ["method=kd", f"model.teacher_checkpoint={best_path}"])
    teacher = build_teacher(student, 10, 1)
    assert all(torch.equal(teacher.state_dict()[k], best["model"][k]) for k in best["model"])
    assert load_checkpoint(cfg.run_dir / "last.pt")["epoch"] == 4
    best_path.replace(cfg.run_dir / "last.pt")  # but it cannot be resumed from
    with pytest.raises(CheckpointError, match="not a mixdistill training checkpoint"):
        Trainer(cfg, resume=True, quiet=True)


def test_best_metric_is_checked_and_null_writes_no_best_pt(tiny_run_overrides):
    with pytest.raises(ConfigError, match="best_metric"):
        load_config(None, tiny_run_overrides + ["train.best_metric=accuracy"])
    with pytest.raises(ConfigError, match="online method"):
        load_config(None, tiny_run_overrides + ["train.best_metric=test_acc_ensemble"])
    assert load_config(None, ["method=dml", "train.best_metric=test_acc_ensemble"]).train.best_metric == \
        "test_acc_ensemble"
    cfg = load_config(None, tiny_run_overrides + ["name=nobest", "optim.epochs=1", "train.best_metric=null"])
    summary = train(cfg, quiet=True)
    assert not (cfg.run_dir / "best.pt").exists() and summary["best_checkpoint"] is None
    loss = load_config(None, tiny_run_overrides + ["name=byloss", "optim.epochs=2", "train.best_metric=test_loss"])
    summary = train(loss, quiet=True)
    lines = metrics(loss.run_dir)
    best = min(lines, key=lambda r: r["test_loss"])
    assert summary["best_checkpoint"] == {"file": "best.pt", "metric": "test_loss", "value": best["test_loss"],
                                          "epoch": best["epoch"]}
    assert load_checkpoint(loss.run_dir / "best.pt")["epoch"] == best["epoch"]


def test_an_online_run_keeps_the_best_ensemble(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=dml", "method=dml", "method.peers=2", "optim.epochs=2",
                                                  "train.best_metric=test_acc_ensemble"])
    summary = train(cfg, quiet=True)
    lines = metrics(cfg.run_dir)
    best = max(lines, key=lambda r: r["test_acc_ensemble"])
    assert summary["best_checkpoint"]["epoch"] == best["epoch"] == load_checkpoint(cfg.run_dir / "best.pt")["epoch"]
    assert summary["best_checkpoint"]["value"] == best["test_acc_ensemble"]
    assert {"test_top5_peer0", "test_top5_peer1", "test_top5_ensemble", "test_top5"} <= set(lines[-1])
    assert summary["last_top5"] == pytest.approx((lines[-1]["test_top5_peer0"] + lines[-1]["test_top5_peer1"]) / 2)


def test_best_metric_may_change_on_resume_and_the_summary_says_what_best_pt_holds(tiny_run_overrides, interrupt_at,
                                                                                  monkeypatch, capsys):
    scripted = iter([30.0, 50.0, 40.0])
    real = trainer_module.eval_record
    monkeypatch.setattr(trainer_module, "eval_record", lambda results: {**real(results), "test_acc": next(scripted)})
    cfg = load_config(None, tiny_run_overrides + ["name=switch", "optim.epochs=3"])
    with interrupt_at(2):
        train(cfg, quiet=True)
    assert load_checkpoint(cfg.run_dir / "last.pt")["best"] == {"metric": "test_acc", "value": 50.0, "epoch": 2}
    before = (cfg.run_dir / "best.pt").read_bytes()
    # not a config change that --resume refuses (it changes no result), and no new best.pt without a metric
    resumed = load_config(None, tiny_run_overrides + ["name=switch", "optim.epochs=3", "train.best_metric=null"])
    capsys.readouterr()
    summary = train(resumed, resume=True)
    assert (cfg.run_dir / "best.pt").read_bytes() == before
    said = " ".join("".join(capsys.readouterr()).split())
    assert ("note: train.best_metric is null: best.pt (epoch 2, test_acc 50, from before the resume) is kept as it "
            "is and not replaced") in said
    assert summary["best_checkpoint"] == {"file": "best.pt", "metric": "test_acc", "value": 50.0, "epoch": 2}
