"""Studies at smoke scale: grid, results file, report with paper and ours, rerun skips everything."""

from __future__ import annotations

import math

import pytest

from mixdistill.cli import main
from mixdistill.errors import ConfigError, UnknownNameError
from mixdistill.studies import get_study, run_study
from mixdistill.studies.grid import ResultsFile


def test_unknown_study_and_scale(tmp_path):
    with pytest.raises(UnknownNameError, match="das2020"):
        get_study("das2021")
    with pytest.raises(ConfigError, match="scale"):
        run_study("shen2022", scale="huge", output_dir=str(tmp_path), log=lambda *_: None)


@pytest.mark.parametrize("name", ["choi2023", "das2020", "shen2022", "wang2022"])
def test_every_scale_resolves_to_valid_configs(name, tmp_path):
    from mixdistill.studies.grid import resolve

    study = get_study(name)
    for scale in ("smoke", "cpu", "full"):
        for run in study.grid(scale, 3, tmp_path, None):
            resolve(run, tmp_path)


@pytest.mark.slow
def test_shen2022_smoke_study(fmnist_root, tmp_path, capsys):
    assert main(["study", "shen2022", "--scale", "smoke", "--seeds", "2", "--output-dir", str(tmp_path),
                 "--data-root", str(fmnist_root)]) == 0
    report = (tmp_path / "shen2022_smoke" / "report.md").read_text()
    assert "reconstruction of shen2022" in report and "| cutnmix |" in report and "Welch p" in report
    assert len(ResultsFile(tmp_path / "shen2022_smoke" / "results.jsonl").read()) == 12
    capsys.readouterr()
    assert main(["study", "shen2022", "--scale", "smoke", "--seeds", "2", "--output-dir", str(tmp_path),
                 "--data-root", str(fmnist_root)]) == 0
    assert "12 of 12 runs already finished" in capsys.readouterr().out


@pytest.mark.slow
def test_choi2023_smoke_study(fmnist_root, tmp_path):
    path = run_study("choi2023", scale="smoke", seeds=2, output_dir=str(tmp_path), data_root=str(fmnist_root),
                     log=lambda *_: None)
    report = path.read_text()
    assert "T = 1 beats T = 4 on" in report and "mixstd_pmu_exact" in report
    assert (path.parent / "choi2023_t1_minus_t4.png").stat().st_size > 5000


@pytest.mark.slow
def test_wang2022_smoke_study(fmnist_root, tmp_path):
    path = run_study("wang2022", scale="smoke", seeds=1, output_dir=str(tmp_path), data_root=str(fmnist_root),
                     log=lambda *_: None)
    report = path.read_text()
    assert "| kd_cutmixpick |" in report and "longer training" in report and "T. stddev vs student test loss" in report
    assert (path.parent / "wang2022_tstddev_vs_loss.png").exists()


@pytest.mark.slow
def test_das2020_smoke_study(fmnist_root, tmp_path):
    path = run_study("das2020", scale="smoke", seeds=2, output_dir=str(tmp_path), data_root=str(fmnist_root),
                     log=lambda *_: None)
    report = path.read_text()
    assert "| mixup |" in report and "ECE" in report and "CD correct" in report and "Welch p" in report


def test_verdict_with_one_seed_is_untested_either_way():
    from mixdistill.studies.common import verdict, welch

    d, p = welch([80.0], [81.0])  # one seed a side: no p-value
    assert math.isnan(p)
    assert verdict(d, p, sign=1) == "NOT reproduced, untested (fewer than 2 seeds)"
    assert verdict(d, p, sign=-1) == "same direction, untested (fewer than 2 seeds)"
    assert verdict(-1.0, 0.01, sign=1) == "NOT reproduced (significant opposite effect)"
    assert verdict(-1.0, 0.5, sign=1) == "NOT reproduced"
