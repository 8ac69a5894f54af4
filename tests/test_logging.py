"""The console log (a progress bar only on an interactive terminal, one line per epoch elsewhere) and the metric
sinks of train.loggers (jsonl always, tensorboard, csv, wandb)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

import pytest

from mixdistill.cli import main
from mixdistill.config import load_config
from mixdistill.engine import logging as run_logging
from mixdistill.engine.logging import RunLogger
from mixdistill.engine.trainer import train
from mixdistill.errors import ConfigError, MixdistillError

CONFIG = "configs/fmnist_cpu_teacher.yaml"


def _record(epoch: int, evaluated: bool = True) -> dict:
    record = {"epoch": epoch, "lr": 0.1, "train_loss": 1.0 / epoch, "train_acc": 50.0 + epoch, "images_per_s": 900.0,
              "epoch_time_s": 1.5}
    if evaluated:
        record.update(test_loss=0.5, test_acc=60.0 + epoch, test_top5=99.0)
    return record


# ----------------------------------------------------------------------------------------- console

@pytest.mark.checkout
def test_captured_output_has_one_line_per_epoch_and_no_progress_bar(capfd, tiny_run_overrides):
    """stdout/stderr not a terminal (a CI log): no bar, no carriage return, one line per epoch with its loss,
    test accuracy and time."""
    assert main(["train", CONFIG, *tiny_run_overrides, "name=plain", "optim.epochs=2", "train.progress=true",
                 "train.log_every=1"]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "\x1b[" not in out + err
    epoch_lines = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2, err
    for n, line in enumerate(epoch_lines, 1):
        assert re.fullmatch(rf"epoch {n} \| loss \d+\.\d{{4}} \| train [\d.]+% \| test [\d.]+% \| \d+ img/s \| "
                            rf"[\d.]+ s", line), line


def test_interactive_terminal_gets_a_transient_bar(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(run_logging, "interactive", lambda: True)
    logger = RunLogger(tmp_path, tensorboard=False)
    bar = logger.progress(10, "epoch 1/1")
    assert isinstance(bar, run_logging._Progress) and logger.live is bar
    bar.update(5, loss=0.25, images_per_s=1000.0)
    logger.info("a message while the bar is up [not markup]")
    bar.close()
    assert logger.live is None
    logger.info("after")
    assert "a message while the bar is up [not markup]" in capsys.readouterr().err
    # train.progress=false, --quiet, or no terminal: no bar
    assert not isinstance(logger.progress(10, "x", enabled=False), run_logging._Progress)
    monkeypatch.setattr(run_logging, "interactive", lambda: False)
    assert not isinstance(logger.progress(10, "x"), run_logging._Progress)


def test_no_tty_under_pytest_capture():
    assert not run_logging.interactive()


# ----------------------------------------------------------------------------------------- config

def test_loggers_resolve_with_the_tensorboard_switch(tiny_run_overrides):
    base = [o for o in tiny_run_overrides if not o.startswith("train.tensorboard")]
    assert load_config(None, base).train.loggers == ["jsonl", "tensorboard"]
    assert load_config(None, base).train.tensorboard is True
    off = load_config(None, base + ["train.tensorboard=false"]).train
    assert off.loggers == ["jsonl"] and off.tensorboard is False
    sinks = load_config(None, base + ["train.loggers=[csv, tensorboard]"]).train
    assert sinks.loggers == ["jsonl", "csv", "tensorboard"] and sinks.tensorboard is True
    no_tb = load_config(None, base + ["train.loggers=[csv]"]).train
    assert no_tb.loggers == ["jsonl", "csv"] and no_tb.tensorboard is False
    with pytest.raises(MixdistillError, match="loggers"):
        load_config(None, base + ["train.loggers=[mlflow]"])


# ----------------------------------------------------------------------------------------- csv

def test_csv_logger_writes_one_row_per_evaluation(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=csv", "optim.epochs=3", "train.eval_every=2",
                                                  "train.loggers=[csv]"])
    train(cfg, quiet=True)
    run = cfg.run_dir
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "test_acc" in r]
    assert [r["epoch"] for r in records] == [1, 2, 3] and [r["epoch"] for r in evaluated] == [2, 3]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(row["epoch"]) for row in rows] == [2, 3]
    assert list(rows[0]) == list(evaluated[0])
    for row, record in zip(rows, evaluated):
        assert float(row["test_acc"]) == pytest.approx(record["test_acc"])
        assert float(row["train_loss"]) == pytest.approx(record["train_loss"])
    assert not (run / "tensorboard").exists()


def test_csv_is_rewritten_from_the_history_then_appended(tmp_path):
    """As metrics.jsonl: a resumed run starts metrics.csv from its checkpoint's history (an epoch logged after the
    last checkpoint is not there twice), then appends one row per evaluation."""
    (tmp_path / "metrics.csv").write_text("epoch,stale\n9,x\n")
    history = [_record(1, evaluated=False), _record(2)]
    logger = RunLogger(tmp_path, history=history, tensorboard=False, quiet=True, loggers=["csv"])
    logger.epoch(_record(3, evaluated=False))
    logger.epoch({**_record(4), "extra_key": 1.0})
    logger.close()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["2", "4"] and "extra_key" not in rows[1]
    assert float(rows[1]["test_acc"]) == 64.0
    # without csv in loggers, no metrics.csv is written
    (tmp_path / "none").mkdir()
    RunLogger(tmp_path / "none", history=history, tensorboard=False, quiet=True).close()
    assert not (tmp_path / "none" / "metrics.csv").exists()


# ----------------------------------------------------------------------------------------- wandb

@pytest.mark.checkout
def test_wandb_missing_is_one_clear_line(monkeypatch, capsys, tmp_path, tiny_run_overrides):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as when not installed
    with pytest.raises(ConfigError, match=r"pip install wandb"):
        RunLogger(tmp_path, tensorboard=False, quiet=True, loggers=["wandb"])
    assert main(["train", CONFIG, *tiny_run_overrides, "name=nowandb", "optim.epochs=1",
                 "train.loggers=[wandb]"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mixdistill: error:") and "pip install wandb" in err[-1], err
    assert not any("Traceback" in line for line in err)
    # refused before the run's folder got anything (it held config.yaml and blocked the name for the next run),
    # and --print-config refuses it too
    output_dir = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir="))
    assert not (Path(output_dir) / "nowandb").exists()
    assert main(["train", CONFIG, *tiny_run_overrides, "train.loggers=[wandb]", "--print-config"]) == 2
    assert "pip install wandb" in capsys.readouterr().err


def test_wandb_offline_run_is_written(monkeypatch, tmp_path, tiny_run_overrides):
    pytest.importorskip("wandb")
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": tmp_path / "wandb_config",
                       "WANDB_CACHE_DIR": tmp_path / "wandb_cache", "WANDB_DATA_DIR": tmp_path / "wandb_data"}.items():
        monkeypatch.setenv(key, str(value))
    cfg = load_config(None, tiny_run_overrides + ["name=wandb", "optim.epochs=1", "train.loggers=[wandb]"])
    train(cfg, quiet=True)
    runs = list((cfg.run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb")), list((cfg.run_dir / "wandb").rglob("*"))
