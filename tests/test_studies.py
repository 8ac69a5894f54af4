"""Studies at smoke scale: grid, results file, report with paper and ours, rerun skips everything."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from mixdistill.cli import main
from mixdistill.errors import ConfigError, IncompleteStudyError, UnknownNameError
from mixdistill.studies import get_study, run_study, study_runs
from mixdistill.studies.common import load_study_config, replicates_text
from mixdistill.studies.stats import counted
from mixdistill.studies.grid import ResultsFile


def test_unknown_study_and_scale(tmp_path, capsys):
    with pytest.raises(UnknownNameError, match="das2020"):
        get_study("das2021")
    from mixdistill.cli import main

    for extra in ([], ["--plan"]):  # --plan read the study's config file first: "study config not found"
        assert main(["study", "wang2023", *extra, "--output-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == ["mixdistill: error: unknown study 'wang2023'. Did you mean: wang2022, das2020, shen2022? "
                       "Valid names: choi2023, das2020, shen2022, wang2022"], err
    with pytest.raises(ConfigError, match="scale"):
        run_study("shen2022", scale="huge", output_dir=str(tmp_path), log=lambda *_: None)


@pytest.mark.parametrize("name", ["choi2023", "das2020", "shen2022", "wang2022"])
def test_every_scale_resolves_to_valid_configs(name, tmp_path):
    from mixdistill.studies.grid import resolve

    for scale in load_study_config(name)["scales"]:
        for run in study_runs(name, scale, [0, 1, 2], tmp_path):
            resolve(run, tmp_path)


def test_wang2022_full_grids_follow_the_released_scripts(tmp_path):
    """The nine views on the nine pairs of S_test_loss_different_DA_*.sh, T. stddev over 10 frozen epochs, the
    released rand_bbox, Tiny ImageNet views only."""
    spec = load_study_config("wang2022")
    released = {("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "vgg8"), ("resnet56", "resnet20"), ("resnet56", "ShuffleV2"),
                ("resnet32x4", "resnet8x4"), ("resnet32x4", "ShuffleV2"), ("vgg13", "vgg8"), ("vgg13", "MobileNetV2"),
                ("ResNet50", "vgg8")}
    for scale in ("full", "full_tinyimagenet"):
        sc = spec["scales"][scale]
        assert {tuple(p) for p in sc["view_pairs"]} == released and sc["tstddev_epochs"] == 10
        runs = study_runs("wang2022", scale, [0], tmp_path)
        views = {r.labels["pair"] for r in runs if r.labels.get("method") == "view_identity"}
        assert views == {f"{t}-{s}" for t, s in released}
        for run in runs:
            augment = run.config.get("augment") or {}
            if augment.get("name") in ("cutmix", "cutmix_pick"):
                assert augment["box_rounding"] == "released", run.key
        tiny = {r.labels.get("method") for r in runs if r.labels["role"] == "student"}
        if scale == "full_tinyimagenet":
            assert all(m.startswith("view_") or m in spec["views"].values() for m in tiny)
            assert {r.config["data"]["dataset"] for r in runs} == {"tiny_imagenet"}
        else:
            assert {"ce", "kd", "kd_long", "crd_cutmixpick_long"} <= tiny


def _smoke_report(name: str, seeds, fmnist_root, tmp_path, scale: str = "smoke", threads: int | None = None):
    """(report path, its text) of study ``name`` at a smoke scale, after the checks every report passes."""
    path = run_study(name, scale=scale, seeds=seeds, output_dir=str(tmp_path), data_root=str(fmnist_root),
                     threads=threads, log=lambda *_: None)
    report = path.read_text()
    _report_checks(report)
    return path, report


def _report_checks(report: str, dataset: str = "fashion_mnist"):
    """What every report has: the gates first, a findings table with CIs, Holm p and verdicts, no CIFAR name
    presented as the run's own setting."""
    assert report.index("## Gates") < report.index("## Findings")
    # then the tables they rest on (das2020 and choi2023 printed theirs between the gates and the findings)
    sections = [line for line in report.splitlines() if line.startswith("## ")]
    assert sections.index("## Findings") == sections.index(next(s for s in sections if s.startswith("## Gates"))) + 1
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
    # the augmentation without the online part: a network alone with CutMix, and the mixed methods against it
    assert "| ce_cutmix (one network alone, CutMix) |" in report
    assert "Against one network alone trained with CutMix" in report and "online_cutmix " in report
    rows = ResultsFile(tmp_path / "shen2022_smoke" / "results.jsonl").read()
    assert len(rows) == 14 and rows["ce_cutmix/seed0"]["config"]["augment"]["name"] == "cutmix"
    capsys.readouterr()
    assert main(args) == 0
    assert "14 of 14 runs already finished" in capsys.readouterr().out
    # a row cut short is read back from its folder, one run re-run: timing.jsonl counts the one trained (a count by
    # lines missed it once adding a row moved the damaged line away)
    study = tmp_path / "shen2022_smoke"
    text = (study / "results.jsonl").read_text()
    last = json.loads(text.splitlines()[-1])["key"]
    (study / "results.jsonl").write_text(text[:-30])
    again = next(key for key in rows if key != last)
    assert main(args + ["--rerun", again]) == 0
    assert f"read back {last}" in capsys.readouterr().out
    timing = json.loads((study / "timing.jsonl").read_text().splitlines()[-1])
    from mixdistill.config import DEFAULT_THREADS

    # the runs' own thread count (it read "default", and the runs recorded a number)
    assert timing["runs_trained"] == 1
    assert timing["executor"] == f"local, {DEFAULT_THREADS} thread(s) per run, jobs auto"
    # other seeds: a range reuses the runs it shares with the earlier seeds and adds the rest
    assert main(args[:4] + ["--seeds", "1-2"] + args[6:]) == 0
    out = capsys.readouterr().out
    assert "7 of 14 runs already finished" in out and "over 2 seeds" in out
    rows = ResultsFile(tmp_path / "shen2022_smoke" / "results.jsonl").read()
    assert {r["labels"]["seed"] for r in rows.values()} == {0, 1, 2}


@pytest.mark.slow
def test_report_only_reports_the_finished_runs_and_trains_nothing(fmnist_root, tmp_path, capsys, monkeypatch):
    from mixdistill.config import DEFAULT_THREADS
    from mixdistill.studies import grid as grid_module

    args = ["study", "shen2022", "--scale", "smoke", "--output-dir", str(tmp_path), "--data-root", str(fmnist_root)]
    study = tmp_path / "shen2022_smoke"
    assert main(args + ["--report-only"]) == 1  # nothing has run: one line, nothing written
    assert "has no finished run yet" in capsys.readouterr().err and not study.exists()
    assert main([*args[:-1], str(tmp_path / "nowhere"), "--seeds", "1"]) == 2  # bad input: its one line alone
    assert capsys.readouterr().out == "" and not study.exists()
    assert main([args[0], "SHEN2022", *args[2:], "--seeds", "1"]) == 0  # a paper's name as it is written
    assert "note: one seed: every paired test over seeds will read n/a" in capsys.readouterr().out
    # a report that stops with a user error is that error's one line (it became an UnboundLocalError traceback)
    from mixdistill.studies import shen2022

    def stops(*_):
        raise ConfigError("the report stops here")

    with monkeypatch.context() as patched:
        patched.setattr(shen2022, "report", stops)
        assert main(args + ["--report-only"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == "mixdistill: error: the report stops here"
    full = (study / "report.md").read_text()
    def trained():  # what training writes (the report and its figures are written again, by design)
        return {p: p.stat().st_mtime_ns for p in [*study.glob("runs/**/*"), study / "results.jsonl",
                                                   study / "timing.jsonl"] if p.is_file()}

    capsys.readouterr()
    # the grid's own seeds and threads, given or not
    for same in ([], ["--seeds", "1"], ["--seeds", "0-0"], ["--threads", str(DEFAULT_THREADS)]):
        assert main(args + same + ["--report-only"]) == 0, same
        assert (study / "report.md").read_text() == full, "the same runs: the same report"
    # other seeds, threads or data than the grid's: refused in one line, its report kept as it was
    for other in (["--seeds", "2"], ["--threads", "3"], ["--data-root", str(tmp_path)]):
        capsys.readouterr()
        assert main(args[:-2] + other + ["--report-only"]) == 2, other
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "reports the grid last started in" in err[0] and other[0] in err[0], err
        assert (study / "report.md").read_text() == full
    # a grid of 2 seeds stopped before its seed 1 ran: --report-only reports that grid, seed 1 not run yet
    execute = grid_module.execute

    def stop_at_seed1(run, *rest, **kwargs):
        if run.key.endswith("seed1"):
            raise KeyboardInterrupt
        return execute(run, *rest, **kwargs)

    monkeypatch.setattr(grid_module, "execute", stop_at_seed1)
    assert main(args + ["--seeds", "2", "--jobs", "1"]) == 130
    files = trained()
    capsys.readouterr()
    assert main(args + ["--report-only"]) == 1  # seed 1 has not run: listed, not trained
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7 of 14 runs did not finish (7 not run yet)" in err[0], err
    report = (study / "report.md").read_text()
    _report_checks(report)
    assert "| dml/seed1 | not run yet | no finished run with this config yet |" in report
    assert trained() == files
    assert not (study / "runs" / "dml__seed1").exists()


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
    assert "Every view ran the same 2 seeds" in report and "Students of each pair; 1 epoch (long" in report
    assert (path.parent / "wang2022_tstddev_vs_loss.png").exists()
    assert "The p values in the figure's legend are each coefficient's own, unadjusted" in report
    # the teacher row is the teacher's own run, not its students' evaluation of their (folded, bf16) copy of it
    from mixdistill.studies import wang2022

    rows = ResultsFile(path.parent / "results.jsonl").read()
    teacher = rows["teacher/cnn5_w8"]["summary"]["last_acc"]
    assert f"| teacher | {teacher:.2f} | - |" in report
    for row in rows.values():
        if row["summary"].get("teacher_acc") is not None:
            row["summary"]["teacher_acc"] = teacher - 0.01
    assert f"| teacher | {teacher:.2f} | - |" in wang2022.report(rows, path.parent, "smoke")


@pytest.mark.slow
def test_wang2022_views_on_several_pairs_over_epochs(fmnist_root, tmp_path, monkeypatch):
    """... and their T. stddev computed side by side in worker processes: this process never computes one."""
    from mixdistill import machine
    from mixdistill.studies import wang2022

    monkeypatch.setattr(machine, "available_cpus", lambda: 2)  # room for two of the 1-thread runs

    def not_here(*args):
        raise AssertionError("T. stddev computed in the study's own process")

    monkeypatch.setattr(wang2022, "teacher_statistics", not_here)  # here only: spawned workers import it afresh
    path, report = _smoke_report("wang2022", 2, fmnist_root, tmp_path, scale="smoke_views", threads=1)
    for pair in ("cnn5_w8-cnn5_w8", "cnn5_w8-lenet5"):
        assert f"## The nine views on {pair}" in report
        assert (path.parent / f"wang2022_tstddev_vs_loss_{pair}.png").stat().st_size > 5000
        assert f"{pair}: teacher T. stddev correlates with student test loss" in report
    assert "CutMixPick, 3 epochs)" in report and "## cnn5_w8" not in report  # no CE/KD tables: views only
    # the two claims are judged over the view pairs; each pair's own is descriptive
    assert "| over the 2 view pairs: student test loss follows the paper's order of the nine views |" in report
    assert "Page's L, 2 pairs × 9 views (each pair's view means)" in report
    assert "t over the Fisher z of 2 pairs (Pearson r each)" in report
    assert "Holm-adjusted across the 2 findings" in report
    assert "| cnn5_w8-lenet5: teacher T. stddev correlates with student test loss |" in report.split(
        "## Each pair on its own")[1]
    rows = ResultsFile(path.parent / "results.jsonl").read()
    cutmix = [r for r in rows.values() if r["config"]["augment"]["name"] in ("cutmix", "cutmix_pick")]
    assert cutmix and all(r["config"]["augment"]["box_rounding"] == "released" for r in cutmix)
    cached = json.loads((path.parent / "tstddev.json").read_text())
    assert len(cached) == 2 * 9 * 2 and all("/3ep/" in key for key in cached)  # pairs x views x seeds, by epochs
    monkeypatch.undo()  # a worker's value is the one this process computes for the same run
    run_key = "student/cnn5_w8-lenet5/kd_cutmix/seed1"
    here = wang2022._t_stddev(path.parent, run_key, str(fmnist_root), 100, 3)
    assert cached[wang2022._t_stddev_key(path.parent, run_key, 100, 3)] == pytest.approx(here, rel=1e-6)


@pytest.mark.slow
def test_wang2022_claims_over_several_pairs_are_judged_over_the_pairs(fmnist_root, tmp_path):
    """At full scale (seven pairs) a claim is one finding over the pairs, not one per pair in a Holm family of 74:
    each pair's mean paired difference is a unit, tested with a one-sample t over the pairs; the pairs' own effects
    are descriptive. Checked against the results file by hand."""
    import statistics

    path, report = _smoke_report("wang2022", 2, fmnist_root, tmp_path, scale="smoke_pairs")
    rows = ResultsFile(path.parent / "results.jsonl").read().values()

    def acc(pair, method):
        return {r["labels"]["seed"]: r["summary"]["last_acc"] for r in rows
                if r["labels"].get("pair") == pair and r["labels"].get("method") == method}

    pairs = ["cnn5_w8-cnn5_w8", "cnn5_w8-lenet5", "lenet5-cnn5_w8"]
    means = [statistics.fmean(acc(p, "kd_cutmix")[s] - acc(p, "kd")[s] for s in (0, 1)) for p in pairs]
    line = next(x for x in report.splitlines() if x.startswith("| over 3 pairs: KD+CutMix (kd_cutmix) beats KD |"))
    assert f"| {statistics.fmean(means):+.2f} points [" in line
    assert "| +1.13, mean over the paper's 7 pairs (CIFAR-100) |" in line  # KD+CutMix − KD, the paper's 7 pairs
    assert "one-sample t over 3 pairs (each pair's mean paired difference)" in line
    assert "Holm-adjusted across the 9 findings" in report  # 7 claims over the pairs + the views on the first pair
    for gate in ("KD beats CE over 3 pairs", "converged (method=kd) on every pair",
                 "converged (method=ce) on every pair"):
        assert f"| {gate} |" in report
    assert "TOST within ±0.65 over 3 pairs: 90% CI [" in report
    described = report.split("## Each pair on its own")[1]
    assert all(f"| {p}: KD+CutMix (kd_cutmix) beats KD |" in described for p in pairs)


@pytest.mark.slow
def test_shen2022_claims_over_several_settings_are_judged_over_the_settings(fmnist_root, tmp_path):
    """At full scale (six settings) each claim is one finding over the settings (one-sample t of each setting's mean
    paired difference), on premise gates over the settings; each setting's own effects are descriptive."""
    import statistics

    path, report = _smoke_report("shen2022", 2, fmnist_root, tmp_path, scale="smoke_settings")
    rows = ResultsFile(path.parent / "results.jsonl").read().values()
    settings = ["cnn5_w8-fashion_mnist", "cnn5_w16-fashion_mnist", "cnn5_w32-fashion_mnist"]

    def peer(setting, method):
        return {r["labels"]["seed"]: r["summary"]["last_acc_mean_peer"] for r in rows
                if r["labels"]["setting"] == setting and r["labels"]["method"] == method}

    means = [statistics.fmean(peer(s, "cutnmix")[i] - peer(s, "dml")[i] for i in (0, 1)) for s in settings]
    line = next(x for x in report.splitlines()
                if x.startswith("| over 3 settings: Cut^nMix (reconstructed) mean peer beats dml |"))
    assert f"| {statistics.fmean(means):+.2f} points [" in line
    assert "one-sample t over 3 settings (each setting's mean paired difference)" in line
    assert "Holm-adjusted across the 4 findings" in report
    assert "| dml beats a network alone over 3 settings |" in report
    assert "| converged (method=ce) on every setting |" in report
    assert "| cnn5_w16-fashion_mnist: converged (method=ce) |" in report
    described = report.split("## Each setting on its own")[1].split("## cnn5_w8")[0]
    assert all(f"| {s}: dml beats a network alone |" in described for s in settings)


@pytest.mark.slow
def test_das2020_smoke_study(fmnist_root, tmp_path, monkeypatch):
    from mixdistill.studies import das2020

    drawn = {}
    plot = das2020.plot_intervals
    monkeypatch.setattr(das2020, "plot_intervals", lambda groups, path, *a, **k: (
        drawn.__setitem__(Path(path).name, list(groups)), plot(groups, path, *a, **k))[1])
    path, report = _smoke_report("das2020", 2, fmnist_root, tmp_path)
    # each student's figure has the teacher conditions it learns from: no "no run finished" for a gap by design
    assert drawn["das2020_students_alexnet_cifar_w025.png"] == ["none", "mixup", "cutmix"]
    assert drawn["das2020_students_lenet5.png"] == list(load_study_config("das2020")["conditions"])
    assert "| mixup |" in report and "unaugmented teacher over-confident" in report and "as_published" in report
    assert "2 replicates each (seeds 0, 1)" in report
    assert "paired t over" in report or "paired t, 2 seeds" in report
    # the class-discrimination finding ranks the as_published values (the paper's notebook), correct beside them
    assert "as_published variant as the paper's notebook; correct variant, for information: mean rho =" in report


@pytest.mark.slow
@pytest.mark.parametrize("name, diverging", [
    ("das2020", ["teacher/none/r0", "student/cutmix/lenet5/r1"]),  # a teacher replicate and a student
    ("wang2022", ["student/cnn5_w8-cnn5_w8/kd_cutmix/seed1"]),  # a run that is also one of the nine views
    ("das2020", ["teacher/mixup/r0", "teacher/mixup/r1"]),  # a whole teacher condition: its effects have no estimate
])
def test_a_study_with_diverging_runs_reports_the_rest_and_lists_them(name, diverging, fmnist_root, tmp_path,
                                                                     monkeypatch, capsys):
    """Runs made to diverge for real (lr 1e30: NaN at the first step): the study trains everything else, writes
    its report on the runs that finished with a section listing the others (a diverged teacher's students not
    run), and exits 1 with one line; invoked again it trains nothing and says the same."""
    module = get_study(name)
    grid = module.grid

    def with_diverging_runs(*args, **kwargs):
        runs = grid(*args, **kwargs)
        assert set(diverging) <= {r.key for r in runs}
        for run in runs:
            if run.key in diverging:
                run.config.setdefault("optim", {})["lr"] = 1e30
        return runs

    monkeypatch.setattr(module, "grid", with_diverging_runs)
    args = ["study", name, "--scale", "smoke", "--seeds", "2", "--output-dir", str(tmp_path), "--data-root",
            str(fmnist_root), "--jobs", "1"]
    for invocation in range(2):
        assert main(args) == 1
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mixdistill: ") and "did not finish" in lines[0], err
        report = (tmp_path / f"{name}_smoke" / "report.md").read_text()
        _report_checks(report)
        section = report[report.index("## Runs that did not finish"):report.index("## Gates")]
        for key in diverging:
            assert f"| {key} | diverged | non-finite loss at step" in section
    rows = ResultsFile(tmp_path / f"{name}_smoke" / "results.jsonl").read()
    assert {k for k, r in rows.items() if r.get("status")} == set(diverging)
    assert "runs already finished with this config" in out  # the second invocation trained nothing
    assert not re.search(r"[+-]nan\b", report), "an effect with no estimate reads n/a"
    if name == "das2020" and "teacher/mixup/r0" in diverging:
        assert "mixup n/a" in report and "![teacher mixup]" not in report  # the accuracy gate; no diagram drawn
    elif name == "das2020":
        assert "| student/none/lenet5/r0 | not run | its teacher's run teacher/none/r0 did not finish |" in section
        assert "4 of 30 runs did not finish (2 diverged, 2 not run)" in lines[0]
        assert "2 replicates each (seeds 0, 1)" in report
        # the unaugmented teachers' reliability diagram: from replicate 1, the first that finished
        assert "![teacher none](das2020_reliability_teacher_none.png)" in report
        assert (tmp_path / "das2020_smoke" / "das2020_reliability_teacher_none.png").stat().st_size > 5000
    else:
        assert "compared on the 1 seed that finished under every view (seed 1 left out" in report
        assert "| kd_cutmix | " in report and "paired t, 1 seed" in report


def test_gates_withhold_verdicts(tmp_path):
    """A failed gate turns every finding resting on it into 'proxy invalid: <gate>, measured X'."""
    from mixdistill.studies.stats import Effect, Finding, Gate, findings_markdown, gates_markdown

    gate = Gate("KD beats CE", "KD − CE > 0, paired p < 0.05", "-0.40 [-1.0, +0.2], p = 0.180", False)
    finding = Finding("KD + CutMix beats KD", Effect(0.5, 0.1, 0.9, 0.01, "paired t, 5 seeds", 5, 0.02), +1,
                      "+1.58 (CIFAR-100)", gates=[gate])
    text = "\n".join(gates_markdown([gate]) + findings_markdown([finding]))
    assert "**Proxy invalid: KD beats CE, measured -0.40" in text
    assert "| no verdict: proxy invalid (KD beats CE) |" in text


def test_wall_time_counts_only_the_invocations_that_trained_the_current_runs(tmp_path):
    import os
    import time

    from mixdistill.studies.common import timing_markdown

    def entry(finished, n, wall):
        return json.dumps({"finished": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(finished)),
                           "runs_trained": n, "wall_s": wall, "cpu": "X", "cores": 2, "capability": "AVX2",
                           "native_bf16": False, "torch": "t", "executor": "local"})

    now = time.time()
    (tmp_path / "timing.jsonl").write_text(entry(now - 1000, 2, 600.0) + "\n" + entry(now - 10, 2, 120.0) + "\n")
    for key, written in (("a/seed0", now - 1500), ("b/seed0", now - 60), ("c/seed0", now - 30)):
        run = tmp_path / "runs" / key.replace("/", "__")
        run.mkdir(parents=True)
        (run / "summary.json").write_text("{}")
        os.utime(run / "summary.json", (written, written))
    both = timing_markdown(tmp_path, {"a/seed0": {}, "b/seed0": {}})[0]
    assert "12.0 min to train 2 runs in 2 invocation(s)" in both
    assert "10.0 min, trained 2 runs, 1 of them in this report" in both  # the other was replaced since
    assert "2.0 min, trained 2 runs, 1 of them in this report" in both
    # a/seed0's run was set aside and trained again by the second invocation: only that one counts
    (tmp_path / "runs" / "a__seed0" / "summary.json").touch()
    os.utime(tmp_path / "runs" / "a__seed0" / "summary.json", (now - 20, now - 20))
    assert "2.0 min to train 3 runs in 1 invocation(s)" in timing_markdown(
        tmp_path, {"a/seed0": {}, "b/seed0": {}, "c/seed0": {}})[0]
    assert "12.0 min to train 4 runs" in timing_markdown(tmp_path)[0]
    # a run written between the two recorded invocations (by an interrupted one) is counted apart
    os.utime(tmp_path / "runs" / "b__seed0" / "summary.json", (now - 400, now - 400))
    line = timing_markdown(tmp_path, {"a/seed0": {}, "b/seed0": {}, "c/seed0": {}})[0]
    assert "2.0 min to train 2 runs in 1 invocation(s)" in line and "1 run(s) of this report were written outside" in line
    # an interrupted first invocation recorded nothing: its runs were read as reused
    (tmp_path / "timing.jsonl").unlink()
    assert timing_markdown(tmp_path, {"a/seed0": {}, "b/seed0": {}})[0] == (
        "Wall time: not recorded (2 run(s) of this report were trained by an invocation that was interrupted or is "
        "still running, which records no time).")


@pytest.mark.slow
def test_shen2022_extra_methods_and_ablations(fmnist_root, tmp_path):
    path, report = _smoke_report("shen2022", 2, fmnist_root, tmp_path, scale="smoke_extra")
    for m in ("okddip", "pcl"):
        assert f"| {m} |" in report and f"{m} beats a network alone" in report
        assert f"Cut^nMix (reconstructed) mean peer beats {m}" in report
    for m in ("cutnmix_n1", "cutnmix_n3", "cutnmix_no_feature", "cutnmix_ema", "cutnmix_half_mixed"):
        assert f"| {m} | " in report
    rows = ResultsFile(path.parent / "results.jsonl").read()
    cfg = {r["labels"]["method"]: r["config"] for r in rows.values()}
    assert cfg["cutnmix_n3"]["augment"]["n"] == 3 and cfg["cutnmix_half_mixed"]["augment"]["prob"] == 0.5
    assert cfg["cutnmix_ema"]["method"]["teacher"] == "ema" and cfg["cutnmix_no_feature"]["method"]["feature_weight"] == 0
    assert all(c["method"]["ramp_epochs"] == 1 for m, c in cfg.items() if m.startswith("cutnmix"))


def test_plan_lists_every_run_with_its_compute(tmp_path, capsys):
    from mixdistill.models import count_macs, create_model

    args = ["study", "shen2022", "--scale", "smoke", "--seeds", "2", "--plan", "--output-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "14 runs (plan only, nothing trained)" in out and not (tmp_path / "shen2022_smoke").exists()
    # ce: one cnn5_w8 on 300 images for 1 epoch and one evaluation of 200 test images. A step is a forward, and a
    # backward that computes both gradients of every layer but the input's of the first convolution (8 filters
    # of 3x3 over a 28x28 grey image); an evaluation is a forward. FLOPs = 2 x MACs.
    macs = count_macs(create_model("cnn5_w8", num_classes=10, in_channels=1), (1, 1, 28, 28))
    first_input_grad = 8 * 9 * 28 * 28
    row = next(line for line in out.splitlines() if line.startswith("| ce/seed0 |"))
    ce_run = 2 * (300 * (3 * macs - first_input_grad) + 200 * macs) / 1e15
    assert row.split("|")[10].strip() == f"{ce_run:.3g}"
    # the summary by stage, method and augmentation (the loader's random crop and flip are augmentation too)
    assert f"| 0 | ce | none; loader: crop, flip | 2 | {2 * ce_run:.3g} |" in out
    assert "| dml/seed0 | 0 | fashion_mnist | cnn5_w8+cnn5_w8+cnn5_w8 | - |" in out
    total = next(line for line in out.splitlines() if line.startswith("**Total: "))  # a smoke plan's sliver of one
    assert " 0.0 " not in total and "e-" in total.split(" PFLOPs")[0] and "GPU-hours" in total
    assert main(["study", "das2020", "--scale", "full", "--seeds", "1", "--plan", "--plan-tflops", "40",
                 "--output-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| student/cutmix/lenet5/r0 | 1 | cifar10 | lenet5 | resnet18_cifar | das_kd | none | 218 | " in out
    # the crop/flip teacher is not "none"
    assert "| teacher/none/r0 | 0 | cifar10 | resnet18_cifar | - | ce | none | 218 |" in out
    assert "| teacher/crop_flip/r0 | 0 | cifar10 | resnet18_cifar | - | ce | none; loader: crop, flip | 218 |" in out
    assert "GPU-hours at 40 TFLOP/s" in out
    assert main(["study", "wang2022", "--scale", "full", "--plan", "--plan-tflops", "0"]) == 2


def test_an_interrupted_plan_does_not_promise_to_resume_runs(monkeypatch, capsys):
    import mixdistill.studies.plan as plan

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(plan, "plan_study", interrupted)
    assert main(["study", "choi2023", "--scale", "full", "--plan"]) == 130
    assert capsys.readouterr().err.endswith("mixdistill: interrupted (--plan trains and writes nothing)\n")


def test_plan_counts_what_each_method_runs():
    """The plan's FLOPs come from the method's own step, so they follow its structure exactly: kd_view runs the
    student and the teacher on two batches, a teacher-logit cache costs one teacher pass before training, ONE's
    branches share one trunk pass, an EMA teacher adds one forward per peer, and PCL's branches on per-peer views
    cost what separate networks cost."""
    from mixdistill.config import load_config
    from mixdistill.models import count_macs, create_model
    from mixdistill.online.branches import split_trunk_branch
    from mixdistill.studies.plan import run_work

    def work(*overrides):
        cfg = load_config(None, ["data.dataset=fashion_mnist", "model.student=cnn5_w8", *overrides])
        return run_work(cfg.model_dump_json())

    def train_flops(*overrides):
        return work(*overrides).train

    shape = (1, 1, 28, 28)
    student = count_macs(create_model("cnn5_w8", num_classes=10, in_channels=1), shape)
    teacher = count_macs(create_model("cnn5_w16", num_classes=10, in_channels=1), shape)
    first_input_grad = 8 * 9 * 28 * 28
    learns = 2 * (3 * student - first_input_grad)  # forward + backward of one cnn5_w8
    kd = ["model.teacher_checkpoint=t.pt", "model.teacher=cnn5_w16"]
    assert train_flops("method=ce") == learns
    assert train_flops("method=kd", *kd) == learns + 2 * teacher
    assert train_flops("method=kd_view", "augment=identity", *kd) == 2 * (learns + 2 * teacher)
    assert train_flops("method=dml") == 3 * learns
    # das2020's KD caches the teacher's logits before training: one teacher forward per training image, once
    cached = work("method=das_kd", "method.cache_teacher=true", "data.crop_padding=0", "data.flip=false", *kd)
    assert (cached.train, cached.prepare_per_image, cached.prepare_once) == (learns, 2 * teacher, 0)
    assert work("method=das_kd", "method.cache_teacher=false", *kd).prepare_per_image == 0
    trunk, _, channels = split_trunk_branch(create_model("cnn5_w8", num_classes=10, in_channels=1))
    shared = count_macs(trunk, shape)
    gate = channels * 3  # Linear(trunk channels, 3 peers)
    one = 2 * (3 * (shared + 3 * (student - shared) + gate) - first_input_grad)
    assert train_flops("method=one") == one < 3 * learns
    assert train_flops("method=cutnmix", "method.teacher=ema") - train_flops("method=cutnmix") == 3 * 2 * student
    assert train_flops("method=cutnmix", "augment.n=5") == train_flops("method=cutnmix")  # 5 partners: 6 images
    assert train_flops("method=pcl") < train_flops("method=pcl", "method.peer_form=networks") == train_flops(
        "method=pcl", "method.views=per_peer", "augment=flip")


def test_plan_refuses_a_dataset_of_unknown_size_in_one_line(tmp_path):
    from mixdistill.errors import ConfigError
    from mixdistill.studies import study_runs
    from mixdistill.studies.plan import plan_rows

    run = study_runs("shen2022", "smoke", [0], tmp_path, None)[0]
    run.config["data"] = {**run.config["data"], "dataset": "imagefolder", "root": str(tmp_path)}
    with pytest.raises(ConfigError, match="dataset 'imagefolder' has no known number of images; it knows cifar10"):
        plan_rows([run], tmp_path)


def test_plan_counts_every_method():
    """Every registered method's step can be counted (what --plan does for any grid), and each costs at least
    its student's forward and backward; what a method warns of the plan's few stand-in images (CRD: 16384 negatives
    from 4 images) is not printed as if it were said of the run."""
    import warnings

    import mixdistill
    from mixdistill.config import load_config
    from mixdistill.methods import METHODS
    from mixdistill.studies.plan import run_work

    ce = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name in ["ce", *sorted(set(METHODS) - {"ce"})]:
            overrides = ["data.dataset=fashion_mnist", "model.student=cnn5_w8", f"method={name}", "seed=11"]
            if getattr(METHODS.get_or_raise(name), "needs_teacher", False):
                overrides += ["model.teacher_checkpoint=t.pt", "model.teacher=cnn5_w16"]
            if name == "das_kd":  # its teacher-logit cache needs fixed inputs
                overrides += ["data.crop_padding=0", "data.flip=false"]
            work = run_work(load_config(None, overrides).model_dump_json())
            ce = ce or work.train
            assert work.train >= ce and work.evaluation > 0, name
    package = str(Path(mixdistill.__file__).parent)
    assert [str(w.message) for w in caught if w.filename.startswith(package)] == []


@pytest.mark.slow
def test_choi2023_two_by_two_sweeps_and_benchmark_pairs(fmnist_root, tmp_path):
    path, report = _smoke_report("choi2023", 2, fmnist_root, tmp_path, scale="smoke_extra")
    assert "## Teacher × student on the first pair (cnn5_w8 → cnn5_w8)" in report
    assert "| mixstd_pmu_p050 | pmu (p 0.5, sampling replacement) |" in report
    assert "| mixstd_alpha020 | mixup_two_perm (alpha 0.2) |" in report
    assert "## The benchmark's vanilla teachers (the released code's setting)" in report
    rows = ResultsFile(path.parent / "results.jsonl").read()
    pmu = rows["student/benchmark_mixstd_pmu/cnn5_w8/cnn5_w8/r1"]["config"]
    assert pmu["augment"] == {**pmu["augment"], "name": "pmu", "p": 0.9, "sampling": "replacement"}
    assert pmu["model"]["teacher_checkpoint"].endswith("teacher__vanilla__cnn5_w8__r1/last.pt")
    full = get_study("choi2023").grid("full", [0], tmp_path, None)
    bench = {r.key: r.config["model"]["teacher_checkpoint"] for r in full if "benchmark_" in r.key}
    assert bench["student/benchmark_mixstd_pmu/resnet110/resnet32/r0"] == "resnet110" and len(bench) == 7 * 3


@pytest.mark.slow
def test_das2020_shifted_sets_and_human_labels(fmnist_root, tmp_path):
    """smoke_shifted: a CIFAR-10.1 style pair and human soft labels written into the data root are evaluated for
    every teacher and student (numbers recomputed here from a checkpoint), a missing CINIC-10 gets its "Not
    evaluated" line, and the per-run results are cached in STUDY/shifted.json for the next rendering."""
    import shutil

    import numpy as np
    import torch

    from mixdistill.analysis.data import human_label_kl
    from mixdistill.data import DeviceLoader, load_dataset
    from mixdistill.engine.run import open_run
    from mixdistill.studies.stats import fmt_mean_ci

    root = tmp_path / "data"  # a data root of its own: the Fashion-MNIST files plus the shifted sets
    shutil.copytree(fmnist_root, root)
    (root / "shifted").mkdir()
    test = load_dataset("fashion_mnist", "test", root=root)
    rng = np.random.default_rng(0)
    images = test.images[:150, 0].numpy().astype(np.int16) + rng.integers(-40, 41, (150, 28, 28))  # shifted: noise
    images = np.clip(images, 0, 255).astype(np.uint8)
    labels = test.labels[:150].numpy()
    np.save(root / "shifted" / "fake10.1_data.npy", images)
    np.save(root / "shifted" / "fake10.1_labels.npy", labels)
    run_test = test.subset(200, seed=0)  # the runs' test set: data.test_subset 200, subset_seed 0
    human = np.full((200, 10), 0.3 / 9)
    human[np.arange(200), run_test.labels.numpy()] = 0.7
    np.save(root / "shifted" / "human-probs.npy", human)

    path, report = _smoke_report("das2020", 2, root, tmp_path, scale="smoke_shifted")
    section = report[report.index("## Shifted test sets and human labels"):report.index("## Figures")]
    assert f"Not evaluated: cinic10 not found at {root / 'CINIC-10'} (download CINIC-10.tar.gz" in section
    assert "### CIFAR-10.1 (`cifar10_1`: fake10.1_data.npy), top-1 %" in section
    assert "### CIFAR-10H (`human_labels`: human-probs.npy), mean KL(human ‖ model)" in section

    def recomputed(key: str) -> tuple[float, float]:
        """(top-1 % on the fake CIFAR-10.1 pair, KL(human || model) on the run's test set) of one run."""
        opened = open_run(path.parent / "runs" / key.replace("/", "__"))
        model = opened.model()
        out = []
        for x, y in ((torch.from_numpy(images)[:, None], torch.from_numpy(labels)), (run_test.images, run_test.labels)):
            loader = DeviceLoader(x, y, batch_size=64, mean=(0.2860,), std=(0.3530,), shuffle=False, drop_last=False)
            with torch.inference_mode():
                out.append(torch.cat([model(b) for b, _ in loader]).double())
        acc = 100.0 * float((out[0].argmax(1) == torch.from_numpy(labels)).double().mean())
        return acc, human_label_kl(torch.softmax(out[1], 1), torch.from_numpy(human))

    tables = section.split("### ")
    accs, kls = zip(*(recomputed(f"teacher/mixup/r{r}") for r in (0, 1)))
    students = [recomputed(f"student/none/lenet5/r{r}")[0] for r in (0, 1)]
    row = next(line for line in tables[1].splitlines() if line.startswith("| mixup |")).split(" | ")
    assert row[1] == fmt_mean_ci(list(accs))
    none_row = next(line for line in tables[1].splitlines() if line.startswith("| none |")).split(" | ")
    assert none_row[2] == fmt_mean_ci(students)
    kl_row = next(line for line in tables[2].splitlines() if line.startswith("| mixup |")).split(" | ")
    assert kl_row[1] == fmt_mean_ci(list(kls), 4)

    # cached: a re-rendered report reads shifted.json (a planted value shows), evaluating nothing again
    cache = json.loads((path.parent / "shifted.json").read_text())
    assert len(cache) == 6 * 2 + 6 * 2 * 2  # every teacher and student, keyed by run and checkpoint time
    for key, entry in cache.items():
        assert set(entry) == {"cifar10_1", "human_labels"}, key
        if key.startswith("teacher/mixup/"):
            entry["cifar10_1"]["acc"] = 12.345
    (path.parent / "shifted.json").write_text(json.dumps(cache))
    rows = ResultsFile(path.parent / "results.jsonl").read()
    again = get_study("das2020").report(rows, path.parent, "smoke_shifted", str(root))
    assert f"| mixup | {fmt_mean_ci([12.345, 12.345])} |" in again


@pytest.mark.checkout
@pytest.mark.parametrize("name", ["choi2023", "das2020", "shen2022", "wang2022"])
def test_committed_cpu_results_were_made_by_todays_cpu_grid(name, monkeypatch):
    """docs/results/studies/NAME_cpu/results.jsonl holds, for every run of `mixdistill study NAME --scale cpu`
    (5 seeds), a row made with the very config the grid gives today: an edited grid file or a changed default
    fails here until the study is run again and its results committed."""
    from mixdistill.studies import study_runs
    from mixdistill.studies.common import load_study_config, scale_config
    from mixdistill.studies.grid import ResultsFile, _row_difference, resolve, with_threads

    repo = Path(__file__).resolve().parents[1]
    committed = repo / "docs" / "results" / "studies" / f"{name}_cpu" / "results.jsonl"
    monkeypatch.chdir(repo)  # the rows' paths are relative to the repository root, where the study ran
    study_dir = Path("runs/studies") / f"{name}_cpu"
    threads = scale_config(load_study_config(name), "cpu").get("threads_per_run")
    runs = with_threads(study_runs(name, "cpu", [0, 1, 2, 3, 4], study_dir), threads)
    rows = ResultsFile(committed).read()
    stale = [r.key for r in runs if r.key not in rows or _row_difference(rows[r.key], resolve(r, study_dir))]
    assert not stale, f"{len(stale)} of {len(runs)} runs differ from the committed results, e.g. {stale[:3]}"


def test_the_replicate_count_reads_right_for_one_seed():
    assert replicates_text([0]) == "1 replicate each (seed 0)"
    assert replicates_text([3, 7]) == "2 replicates each (seeds 3, 7)"
    assert counted(1, "seed") == "1 seed" and counted(5, "epoch") == "5 epochs" and counted(0, "run") == "0 runs"


@pytest.mark.parametrize("extra, env, fragment", [
    (["--address", "ray://x:10001"], {}, "--address is for --executor ray"),
    (["--gpus-per-run", "1", "--address", "a"], {}, "--address and --gpus-per-run are for --executor ray"),
    (["--executor", "ray", "--jobs", "2"], {}, "--jobs is for the local executor"),
    ([], {"WORLD_SIZE": "2"}, "not under torchrun"),
    (["--report-only", "--rerun", "ce/*", "--jobs", "2"], {}, "--report-only trains nothing, so --rerun would do "
                                                               "nothing: leave it out"),  # --jobs: its report's workers
    (["--plan", "--jobs", "7", "--threads", "3", "--rerun", "x*"], {},  # accepted and ignored
     "--plan counts the grid's work and runs nothing, so --rerun and --jobs and --threads would do nothing"),
    (["--plan", "--report-only"], {}, "--plan counts the grid's work and runs nothing, so --report-only"),
])
def test_study_options_that_would_do_nothing_are_one_line(extra, env, fragment, tmp_path, capsys, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["study", "shen2022", "--scale", "smoke", "--seeds", "1", "--output-dir", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixdistill: error: ") and fragment in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # before anything is written


def test_report_only_refuses_a_damaged_grid_record_in_one_line(tmp_path):
    study = tmp_path / "shen2022_smoke"
    study.mkdir()
    (study / "results.jsonl").write_text("")
    (study / "grid.json").write_text('{"seeds": [0, 1]')  # cut short (by hand: the grid writes it atomically)
    with pytest.raises(ConfigError, match=r"--report-only: cannot read .*grid\.json.*running the study again"):
        run_study("shen2022", scale="smoke", output_dir=str(tmp_path), report_only=True, log=lambda *_: None)
    assert (study / "grid.json").read_text() == '{"seeds": [0, 1]'


def test_report_only_takes_the_grids_threads_over_the_scales_default(tmp_path, monkeypatch):
    """The scale's threads_per_run (1 at every cpu scale) counted as a --threads given, so a study started with
    --threads 2 could not be reported by a bare --report-only; the seeds may come in any order."""
    from mixdistill.studies import common

    scale_config = common.scale_config
    monkeypatch.setattr(common, "scale_config", lambda spec, scale: {**scale_config(spec, scale), "threads_per_run": 1})
    study = tmp_path / "shen2022_smoke"
    study.mkdir()
    (study / "results.jsonl").write_text("")
    (study / "grid.json").write_text(json.dumps({"seeds": [0, 1], "threads": 2, "data_root": None}))
    for seeds in (None, "1,0"):  # nothing finished: the report's own error, not a refusal of the threads or seeds
        with pytest.raises(IncompleteStudyError, match="none of the 14 runs finished"):
            run_study("shen2022", scale="smoke", seeds=seeds, output_dir=str(tmp_path), report_only=True,
                      log=lambda *_: None)


def test_report_only_takes_a_data_root_naming_the_folder_the_grid_found_by_default(tmp_path, fmnist_root):
    """A grid run without --data-root recorded none; --report-only --data-root naming the same folder was refused."""
    from mixdistill.studies import _found_in

    study = tmp_path / "shen2022_smoke"
    study.mkdir()
    (study / "results.jsonl").write_text("")
    found = _found_in("fashion_mnist", str(fmnist_root))  # as the default search found it, say
    (study / "grid.json").write_text(json.dumps({"seeds": [0, 1], "threads": 1, "data_root": None,
                                                 "dataset": "fashion_mnist", "data_found_in": found}))
    with pytest.raises(IncompleteStudyError, match="none of the 14 runs finished"):  # the report's own error
        run_study("shen2022", scale="smoke", data_root=str(fmnist_root), output_dir=str(tmp_path), report_only=True,
                  log=lambda *_: None)
    shutil.copytree(fmnist_root, tmp_path / "copy")
    with pytest.raises(ConfigError, match="data root default\\); --data-root .*copy would report other runs"):
        run_study("shen2022", scale="smoke", data_root=str(tmp_path / "copy"), output_dir=str(tmp_path),
                  report_only=True, log=lambda *_: None)
    # a grid.json of before 2026-12-05 (or one whose first run downloaded the data): only its own root is taken
    (study / "grid.json").write_text(json.dumps({"seeds": [0, 1], "threads": 1, "data_root": str(fmnist_root)}))
    with pytest.raises(ConfigError, match="--data-root .*copy would report other runs"):
        run_study("shen2022", scale="smoke", data_root=str(tmp_path / "copy"), output_dir=str(tmp_path),
                  report_only=True, log=lambda *_: None)
    with pytest.raises(IncompleteStudyError, match="none of the 14 runs finished"):
        run_study("shen2022", scale="smoke", data_root=f"{fmnist_root}/", output_dir=str(tmp_path),
                  report_only=True, log=lambda *_: None)


def test_wang2022_t_stddev_takes_no_more_workers_than_the_jobs_given(tmp_path, monkeypatch):
    """Its report computed T. stddev in as many workers as the cores hold, whatever --jobs the grid was given."""
    from mixdistill.machine import available_cpus  # noqa: F401 - patched where read
    from mixdistill.studies import common, grid as grid_module, wang2022

    pools = []

    class Pool:
        def __init__(self, workers):
            pools.append(workers)

        def __enter__(self):
            raise RuntimeError("stop here")  # what the workers would compute is not this test's

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(grid_module, "worker_pool", Pool)
    monkeypatch.setattr("mixdistill.machine.available_cpus", lambda: 4)
    monkeypatch.setattr(wang2022, "_t_stddev_key", lambda study_dir, run_key, *_: run_key)
    rows = {k: {"config": {"train": {"threads": 1}}} for k in ("a", "b", "c")}
    token = common.REPORT_JOBS.set(1)
    try:
        wang2022._fill_t_stddev_cache(tmp_path, rows, list(rows), None, 30, None)  # --jobs 1: in this process
    finally:
        common.REPORT_JOBS.reset(token)
    assert pools == []
    with pytest.raises(RuntimeError, match="stop here"):
        wang2022._fill_t_stddev_cache(tmp_path, rows, list(rows), None, 30, None)
    assert pools == [3]  # no --jobs: as many as the cores hold, at most one per run
