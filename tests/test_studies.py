"""Studies at smoke scale: grid, results file, report with paper and ours, rerun skips everything."""

from __future__ import annotations

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
        for run in study.grid(scale, [0, 1, 2], tmp_path, None):
            resolve(run, tmp_path)


def _smoke_report(name: str, seeds, fmnist_root, tmp_path):
    """(report path, its text) of study ``name`` at smoke scale, after the checks every report passes."""
    path = run_study(name, scale="smoke", seeds=seeds, output_dir=str(tmp_path), data_root=str(fmnist_root),
                     log=lambda *_: None)
    report = path.read_text()
    _report_checks(report)
    return path, report


def _report_checks(report: str, dataset: str = "fashion_mnist"):
    """What every report has: the gates first, a findings table with CIs, Holm p and verdicts, no CIFAR name
    presented as the run's own setting."""
    assert report.index("## Gates") < report.index("## Findings")
    assert "| finding (paper's claim) | paper | ours: effect [95% CI] | test | p | Holm p | verdict |" in report
    assert f"{dataset}" in report.splitlines()[0] and "Wall time:" in report
    assert "resnet32-cifar100" not in report.splitlines()[0]


@pytest.mark.slow
def test_shen2022_smoke_study(fmnist_root, tmp_path, capsys):
    args = ["study", "shen2022", "--scale", "smoke", "--seeds", "2", "--output-dir", str(tmp_path),
            "--data-root", str(fmnist_root)]
    assert main(args) == 0
    report = (tmp_path / "shen2022_smoke" / "report.md").read_text()
    _report_checks(report)
    assert "reconstruction of shen2022" in report and "| cutnmix |" in report and "paired t, 2 seeds" in report
    assert "dml beats a network alone" in report and "one beats a network alone" in report
    assert len(ResultsFile(tmp_path / "shen2022_smoke" / "results.jsonl").read()) == 12
    capsys.readouterr()
    assert main(args) == 0
    assert "12 of 12 runs already finished" in capsys.readouterr().out
    # other seeds: a range reuses the runs it shares with the earlier seeds and adds the rest
    assert main(args[:4] + ["--seeds", "1-2"] + args[6:]) == 0
    out = capsys.readouterr().out
    assert "6 of 12 runs already finished" in out and "over 2 seeds" in out
    rows = ResultsFile(tmp_path / "shen2022_smoke" / "results.jsonl").read()
    assert {r["labels"]["seed"] for r in rows.values()} == {0, 1, 2}


@pytest.mark.slow
def test_choi2023_smoke_study(fmnist_root, tmp_path):
    path, report = _smoke_report("choi2023", "3,7", fmnist_root, tmp_path)
    assert "T = 1 beats T = 4" in report and "mixstd_pmu_exact" in report and "mixup teachers are smoother" in report
    assert "replicates each (seeds 3, 7)" in report
    assert (path.parent / "choi2023_t1_minus_t4.png").stat().st_size > 5000


@pytest.mark.slow
def test_wang2022_smoke_study(fmnist_root, tmp_path):
    path, report = _smoke_report("wang2022", 2, fmnist_root, tmp_path)
    assert "KD beats CE" in report and "longer training" in report and "T. stddev correlates" in report
    assert "Every view ran the same 2 seeds" in report
    assert (path.parent / "wang2022_tstddev_vs_loss.png").exists()


@pytest.mark.slow
def test_das2020_smoke_study(fmnist_root, tmp_path):
    path, report = _smoke_report("das2020", 2, fmnist_root, tmp_path)
    assert "| mixup |" in report and "unaugmented teacher over-confident" in report and "as_published" in report
    assert "paired t over" in report or "paired t, 2 seeds" in report


def test_gates_withhold_verdicts(tmp_path):
    """A failed gate turns every finding resting on it into 'proxy invalid: <gate>, measured X'."""
    from mixdistill.studies.stats import Effect, Finding, Gate, findings_markdown, gates_markdown

    gate = Gate("KD beats CE", "KD − CE > 0, paired p < 0.05", "-0.40 [-1.0, +0.2], p = 0.180", False)
    finding = Finding("KD + CutMix beats KD", Effect(0.5, 0.1, 0.9, 0.01, "paired t, 5 seeds", 5, 0.02), +1,
                      "+1.58 (CIFAR-100)", gates=[gate])
    text = "\n".join(gates_markdown([gate]) + findings_markdown([finding]))
    assert "**Proxy invalid: KD beats CE, measured -0.40" in text
    assert "| no verdict: proxy invalid (KD beats CE) |" in text
