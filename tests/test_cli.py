"""The command line: help, tables, errors as one line with a non-zero exit, train → eval."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from mixdistill.cli import main


@pytest.mark.parametrize("command", ["train", "eval", "analyze", "models", "teachers", "demo", "study"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mixdistill " + command in out


def test_train_help_lists_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "optim.lr=0.05" in out and "data.batch_size=64" in out


def test_models_table(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name, params in (("resnet32x4", "7.43"), ("resnet8x4", "1.23"), ("wrn_40_2", "2.26")):
        row = next(line for line in out.splitlines() if f" {name} " in line)
        assert params in row, row


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixdistill: error:") and fragment in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_unknown_model_lists_close_names(capsys, tiny_run_overrides):
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "model.student=resnet8x5"],
                    "Did you mean: resnet8x4")


def test_bad_config_key_is_named(capsys):
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "optim.learning_rate=3"],
                    "optim.learning_rate: unknown key")


def test_missing_config_file(capsys):
    _one_line_error(capsys, ["train", "nope.yaml"], "config file not found")


def test_missing_dataset_names_every_way(capsys, tmp_path, monkeypatch):
    import mixdistill.data.datasets as datasets

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.delenv("MIXDISTILL_DATA", raising=False)
    _one_line_error(capsys, ["eval", "x.pt"], "checkpoint not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", f"data.root={tmp_path / 'empty'}",
                             "data.download=false", f"output_dir={tmp_path}"], "MIXDISTILL_DATA")
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "data.download=false",
                             f"output_dir={tmp_path}"], "point data.root (--data-root for eval")
    assert not (tmp_path / "fmnist_teacher_cnn5_w32").exists(), "a run that failed to start left a directory"


def test_train_then_eval_reports_the_same_accuracy(capsys, tiny_run_overrides):
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=cli", "optim.epochs=1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "results" in out
    run_dir = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/cli"
    summary = json.loads(open(run_dir + "/summary.json").read())
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    assert main(["eval", run_dir + "/last.pt", "--data-root", data_root, "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert f"{summary['last_acc']:.2f}" in out


def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "mixdistill", "train", "configs/fmnist_cpu.yaml", "method=nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_quick(tmp_path, fmnist_root, capsys):
    assert main(["demo", "--quick", "--seeds", "2", "--output-dir", str(tmp_path / "demo"),
                 "--data-root", str(fmnist_root)]) == 0
    out = capsys.readouterr().out
    assert "teacher cnn5_w16" in out and "(CE)" in out and "(KD)" in out
    assert "KD beats CE" in out or "KD did NOT beat CE" in out
    # a second run reuses every finished run instead of training again
    assert main(["demo", "--quick", "--seeds", "2", "--output-dir", str(tmp_path / "demo"),
                 "--data-root", str(fmnist_root)]) == 0
