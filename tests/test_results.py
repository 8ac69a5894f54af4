"""``mixdistill results``: real runs on disk, grouped over seeds, against numbers computed here from their files."""

import csv
import json
import shutil
import statistics

import pytest

from mixdistill.cli import main
from mixdistill.config import load_config
from mixdistill.engine.trainer import train
from mixdistill.results import collect, group_rows, run_rows, varying_keys


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory, request):
    """Three finished CE runs (seeds 0 and 1 without augmentation, seed 0 with mixup), one run killed after its
    first epoch (no summary.json) and one set aside as superseded."""
    fmnist_root = request.getfixturevalue("fmnist_root")
    root = tmp_path_factory.mktemp("results") / "runs"
    base = [f"data.root={fmnist_root}", f"output_dir={root}", "data.batch_size=64", "data.eval_batch_size=200",
            "model.student=cnn5_w8", "optim.schedule=onecycle", "optim.milestones=[]", "optim.lr=0.05",
            "optim.epochs=2", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
            "train.precision=fp32", "data.train_subset=300", "data.test_subset=200", "method=ce"]
    for name, extra in (("ce_s0", ["seed=0"]), ("ce_s1", ["seed=1"]), ("mixup_s0", ["seed=0", "augment=mixup"]),
                        ("ce_s2", ["seed=2"])):
        train(load_config(None, base + [f"name={name}"] + extra), quiet=True)
    killed = root / "ce_s2"  # as a run killed after epoch 1 leaves it: no summary, one metrics line
    (killed / "summary.json").unlink()
    lines = (killed / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text(lines[0] + "\n")
    shutil.copytree(root / "ce_s1", root / "ce_s1.superseded1")
    return root


def _summary(root, name):
    return json.loads((root / name / "summary.json").read_text())


def test_a_finished_run_whose_summary_is_damaged_says_so(runs_root, tmp_path):
    """It read as a run killed after its last epoch, with nothing saying why."""
    shutil.copytree(runs_root / "ce_s0", tmp_path / "runs" / "ce_s0")
    (tmp_path / "runs" / "ce_s0" / "summary.json").write_text("{")
    _, rows = run_rows(collect([tmp_path / "runs"]))
    assert rows[0][-1] == "epoch 2/2, summary.json damaged"


def test_seeds_of_one_config_are_pooled(runs_root):
    columns, rows = group_rows(collect([runs_root]))
    assert columns == ["config (what differs)", "runs", "seeds", "last top-1 % [95% CI]", "std", "best top-1 %",
                       "top-5 %"]
    by_config = {row[0]: row for row in rows}
    assert set(by_config) == {"augment=none", "augment=mixup"}  # only what differs; the superseded copy left out
    ce = by_config["augment=none"]
    accs = [_summary(runs_root, n)["last_acc"] for n in ("ce_s0", "ce_s1")]
    assert ce[1:3] == ["2 (+1 unfinished)", "0,1,2"]
    assert ce[3].startswith(f"{statistics.fmean(accs):.2f} [") and ce[4] == f"{statistics.stdev(accs):.2f}"
    best = [_summary(runs_root, n)["best_acc"] for n in ("ce_s0", "ce_s1")]
    assert ce[5] == f"{statistics.fmean(best):.2f}"
    mixup = by_config["augment=mixup"]
    assert mixup[1:5] == ["1", "0", f"{_summary(runs_root, 'mixup_s0')['last_acc']:.2f}", "-"]  # no spread of one


def test_per_run_rows_say_which_finished(runs_root):
    columns, rows = run_rows(collect([runs_root]), sort="acc")
    assert columns[:3] == ["run", "config (what differs)", "seed"] and columns[-1] == "status"
    status = {row[0].rsplit("/", 1)[-1]: row[-1] for row in rows}
    assert status == {"ce_s0": "done", "ce_s1": "done", "mixup_s0": "done", "ce_s2": "epoch 1/2"}
    accs = [float(row[3]) for row in rows if row[3] != "-"]
    assert accs == sorted(accs, reverse=True) and rows[-1][3] == "-"  # best first, the unfinished run last
    s0 = _summary(runs_root, "ce_s0")
    row = next(r for r in rows if r[0].endswith("ce_s0"))
    assert row[4] == f"{s0['best_acc']:.2f} ({s0['best_epoch']})"


def test_command_prints_the_table_and_writes_every_run_to_csv(runs_root, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per row
    assert main(["results", str(runs_root), "--csv", str(tmp_path / "runs.csv")]) == 0
    out = capsys.readouterr().out
    assert f"4 runs (3 finished) below {runs_root}" in out and "2 (+1 unfinished)" in out
    with open(tmp_path / "runs.csv") as f:
        table = {row["name"]: row for row in csv.DictReader(f)}
    assert set(table) == {"ce_s0", "ce_s1", "mixup_s0", "ce_s2"}
    assert float(table["ce_s1"]["last_acc"]) == _summary(runs_root, "ce_s1")["last_acc"]
    assert table["ce_s2"]["finished"] == "False" and table["ce_s2"]["last_acc"] == ""
    assert table["ce_s2"]["status"] == "epoch 1/2" and table["ce_s0"]["status"] == "done"  # as the per-run table
    s0 = _summary(runs_root, "ce_s0")
    assert {k: float(table["ce_s0"][k]) for k in ("best_acc", "last_top5", "train_time_s", "epochs")} == \
        {k: s0[k] for k in ("best_acc", "last_top5", "train_time_s", "epochs")}
    assert table["mixup_s0"]["augment.name"] == "mixup" and table["ce_s0"]["optim.milestones"] == "[]"
    # a --csv path it cannot write is one line, before the table (it printed the table, then failed)
    assert main(["results", str(runs_root), "--csv", "/proc/self/no/such/x.csv"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured
    # a folder's name (a trailing slash) wrote a file named like the folder
    assert main(["results", str(runs_root), "--csv", f"{tmp_path / 'out'}/"]) == 2
    assert "names a folder" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_no_runs_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for args, message in ((["results", str(tmp_path / "empty")], "no run directories (a folder with config.yaml)"),
                          (["results", str(tmp_path / "nope")], "no such directory"),
                          (["results", __file__], "is not a directory")):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_another_summary_number_is_averaged_and_a_loss_sorts_lowest_first(runs_root, capsys):
    records = collect([runs_root])
    columns, rows = group_rows(records, sort="acc", metric="last_test_loss")
    assert "last_test_loss [95% CI]" in columns
    losses = {n: _summary(runs_root, n)["last_test_loss"] for n in ("ce_s0", "ce_s1", "mixup_s0")}
    ce, mixup = statistics.fmean([losses["ce_s0"], losses["ce_s1"]]), losses["mixup_s0"]
    assert [row[0] for row in rows] == (["augment=none", "augment=mixup"] if ce < mixup else
                                        ["augment=mixup", "augment=none"])
    assert next(r for r in rows if r[0] == "augment=mixup")[3] == f"{mixup:.4f}"  # a loss keeps 4 digits
    assert main(["results", str(runs_root), "--metric", "last_accc"]) == 2
    err = capsys.readouterr().err
    assert "--metric last_accc: no finished run's summary.json holds it; they hold epochs, last_acc," in err


def test_the_api_returns_the_groups_as_numbers(runs_root):
    from scipy import stats

    import mixdistill
    from mixdistill.errors import ConfigError

    found = mixdistill.collect_results(runs_root, sort="acc")
    means = [g["mean"] for g in found]
    assert len(found) == 2 and means == sorted(means, reverse=True)  # the best mean first
    ce = next(g for g in found if g["differs"] == {"augment.name": "none"})
    accs = [_summary(runs_root, n)["last_acc"] for n in ("ce_s0", "ce_s1")]
    half = stats.t.ppf(0.975, 1) * statistics.stdev(accs) / 2 ** 0.5
    assert ce["values"] == accs and ce["mean"] == pytest.approx(statistics.fmean(accs), abs=1e-12)
    assert ce["ci"] == pytest.approx((statistics.fmean(accs) - half, statistics.fmean(accs) + half), abs=1e-9)
    assert type(ce["ci"][0]) is float and ce["std"] == pytest.approx(statistics.stdev(accs), abs=1e-12)
    assert (ce["finished"], ce["unfinished"], ce["seeds"]) == (2, 1, [0, 1, 2])
    assert [p.rsplit("/", 1)[-1] for p in ce["run_dirs"]] == ["ce_s0", "ce_s1", "ce_s2"]
    assert ce["best_acc"] == pytest.approx(statistics.fmean(_summary(runs_root, n)["best_acc"] for n in ("ce_s0",
                                                                                                          "ce_s1")))
    mixup = next(g for g in found if g["config"] == "augment=mixup")
    assert mixup["ci"] is None and mixup["std"] is None and mixup["values"] == [_summary(runs_root, "mixup_s0")[
        "last_acc"]]
    loss = mixdistill.collect_results(runs_root, metric="last_test_loss")
    assert {g["config"]: g["values"] for g in loss}["augment=mixup"] == [_summary(runs_root, "mixup_s0")[
        "last_test_loss"]]
    with pytest.raises(ConfigError, match="^metric last_accc: no finished run's summary.json holds it"):
        mixdistill.collect_results(runs_root, metric="last_accc")
    with pytest.raises(ConfigError, match="sort must be 'path' or 'acc'"):
        mixdistill.collect_results(runs_root, sort="best")


def test_a_seed_run_twice_is_not_two_replicates(runs_root, tmp_path):
    """The same config and seed under two names (a re-run, a copy): pooled into the mean, but no interval or spread,
    which would count one seed's run as independent evidence twice."""
    import mixdistill

    root = tmp_path / "runs"
    shutil.copytree(runs_root, root)
    shutil.copytree(root / "ce_s0", root / "ce_s0_again")
    ce = next(g for g in mixdistill.collect_results(root) if g["config"] == "augment=none")
    accs = [_summary(root, n)["last_acc"] for n in ("ce_s0", "ce_s0_again", "ce_s1")]
    assert ce["seeds"] == [0, 0, 1, 2] and ce["repeated_seeds"] == [0] and ce["values"] == accs
    assert ce["ci"] is None and ce["std"] is None and ce["mean"] == pytest.approx(statistics.fmean(accs))
    row = {r[0]: r for r in group_rows(collect([root]))[1]}["augment=none"]
    assert row[3] == f"{statistics.fmean(accs):.2f} (no CI: seed 0 in more than one run)" and row[4] == "-"
    (root / "ce_s0_again" / "summary.json").unlink()  # unfinished: not counted, so no repeat among the values
    ce = next(g for g in mixdistill.collect_results(root) if g["config"] == "augment=none")
    assert ce["repeated_seeds"] == [] and ce["ci"] is not None


def test_runs_on_another_number_of_processes_are_another_config(runs_root, tmp_path):
    """A torchrun run of 2 processes and a 1-process run of one config were pooled as two runs of seed 0 (its
    floats depend on the process count, which config.yaml does not hold)."""
    root = tmp_path / "runs"
    for name in ("ce_s0", "ce_s1"):
        shutil.copytree(runs_root / name, root / name)
    shutil.copytree(runs_root / "ce_s0", root / "ce_s0_ddp")
    summary = _summary(root, "ce_s0_ddp")
    summary["environment"]["processes"] = 2
    (root / "ce_s0_ddp" / "summary.json").write_text(json.dumps(summary))
    _, rows = group_rows(collect([root]))
    assert [(row[0], row[1], row[2]) for row in rows] == [("processes=1", "2", "0,1"), ("processes=2", "1", "0")]
    columns, runs = run_rows(collect([root]))
    assert [row[1] for row in runs] == ["processes=1", "processes=2", "processes=1"]  # path order


def test_a_methods_parameter_differs_only_between_runs_of_that_method():
    """KD's ce_weight 0.1 against DKD's 1.0 is each method's default, not what a sweep varied; KD's temperature 1
    against 4 is."""
    kd = {"method.name": "kd", "method.ce_weight": 0.1, "method.temperature": 4.0, "augment.name": "mixup",
          "augment.alpha": 1.0}
    dkd = {"method.name": "dkd", "method.ce_weight": 1.0, "method.temperature": 4.0, "augment.name": "cutmix",
           "augment.alpha": 0.2}
    assert varying_keys([kd, dkd], set()) == ["method.name", "augment.name"]
    assert varying_keys([kd, dkd, {**kd, "method.temperature": 1.0}], set()) == [
        "method.name", "augment.name", "method.temperature"]
    assert varying_keys([kd, {**kd, "augment.alpha": 0.4}], set()) == ["augment.alpha"]


def test_a_folder_whose_config_cannot_be_read_is_named_not_silently_dropped(runs_root, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "ce_s0", root / "ce_s0")
    shutil.copytree(runs_root / "ce_s1", root / "damaged")
    (root / "damaged" / "config.yaml").write_text("data: [unclosed\n")
    assert main(["results", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 run (1 finished)" in out
    assert f"note: left out 1 folder whose config.yaml cannot be read: {root / 'damaged'}" in out


def test_a_config_this_version_does_not_accept_is_listed_as_written_and_said(runs_root, tmp_path, capsys):
    """An older version's (or an edited) config.yaml is listed as it reads, and the note under the table says so: it
    was listed beside the others with nothing to tell its settings apart."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "ce_s0", root / "ce_s0")
    shutil.copytree(runs_root / "ce_s1", root / "edited")
    text = (root / "edited" / "config.yaml").read_text()
    (root / "edited" / "config.yaml").write_text(text.replace("\n  epochs: ", "\n  epochs: three #", 1))
    assert main(["results", str(root), "--per-run"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 runs (2 finished)" in out
    assert (f"note: 1 run listed as its config.yaml reads, which does not validate here: {root / 'edited'} (invalid "
            f"config: optim.epochs:") in out
    assert main(["results", str(root / "ce_s0")]) == 0
    assert "listed as" not in capsys.readouterr().out
    shutil.copytree(root / "edited", root / "edited2")
    assert main(["results", str(root)]) == 0
    assert "note: 2 runs listed as their config.yaml files read, which do not validate here: " in " ".join(
        capsys.readouterr().out.split())
    # a dataset no plugin can register is not blamed on one
    from mixdistill.engine.run import validated_config

    cfg, error = validated_config({"data": {"dataset": "imagenet_foo"}})
    assert cfg is None and "unknown dataset 'imagenet_foo'" in error and "plugin" not in error
    assert "a plugin's?" in validated_config({"method": {"name": "my_kd"}})[1]


def test_a_damaged_last_line_of_metrics_jsonl_keeps_the_epochs_before_it(runs_root, tmp_path):
    """metrics.jsonl is appended to: a write cut short leaves a partial last line, and the run read as epoch 0."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "ce_s0", root / "ce_s0")
    metrics = root / "ce_s0" / "metrics.jsonl"
    epochs = len(metrics.read_text().splitlines())
    with metrics.open("a") as f:
        f.write('{"epoch": ' + str(epochs + 1) + ', "train_lo')
    assert collect([root])[0].last_epoch == epochs


def test_other_tools_config_files_are_no_runs(runs_root, tmp_path, capsys):
    """W&B writes runs/NAME/wandb/run-*/files/config.yaml into every run that logs to it, and a folder may hold
    another tool's config.yaml: neither is a run (they were counted as unfinished runs with seed null)."""
    root = tmp_path / "runs"
    shutil.copytree(runs_root / "ce_s0", root / "ce_s0")
    wandb_files = root / "ce_s0" / "wandb" / "run-20261204_1-abc" / "files"
    wandb_files.mkdir(parents=True)
    (wandb_files / "config.yaml").write_text("_wandb:\n  value:\n    cli_version: 0.19.0\nseed:\n  value: 0\n")
    (root / "xyz_settings").mkdir()
    (root / "xyz_settings" / "config.yaml").write_text("foo: 1\n")
    assert main(["results", str(root), "--per-run"]) == 0
    out = capsys.readouterr().out
    assert "1 run (1 finished)" in out and "run-20261204_1-abc" not in out and "xyz_settings" not in out


def test_runs_linked_into_a_folder_are_found_once(runs_root, tmp_path, capsys):
    """A folder of symbolic links to the runs being compared is a folder of runs; a link back up the tree or a
    second link to one run does not count it twice."""
    linked = tmp_path / "compare"
    linked.mkdir()
    (linked / "a").symlink_to(runs_root / "ce_s0", target_is_directory=True)
    (linked / "b").symlink_to(runs_root / "mixup_s0", target_is_directory=True)
    (linked / "again").symlink_to(runs_root / "ce_s0", target_is_directory=True)
    (linked / "loop").symlink_to(linked, target_is_directory=True)
    assert main(["results", str(linked), "--per-run"]) == 0
    out = capsys.readouterr().out
    assert f"2 runs (2 finished) below {linked}" in out


@pytest.mark.parametrize("bad", [float("nan"), "NaN", None])
def test_a_summary_number_that_is_not_one_is_left_out_and_said(runs_root, tmp_path, capsys, bad):
    """"last_acc": NaN or "NaN" in a summary.json ended the table in a traceback; null was averaged as if the run
    had a number (a row of 2 runs whose mean covered 1)."""
    for name in ("ce_s0", "ce_s1"):
        shutil.copytree(runs_root / name, tmp_path / "runs" / name)
    damaged = _summary(tmp_path / "runs", "ce_s1")
    damaged["last_acc"] = bad
    (tmp_path / "runs" / "ce_s1" / "summary.json").write_text(json.dumps(damaged))
    _, rows = group_rows(collect([tmp_path / "runs"]))
    assert rows[0][0] == "2 (1 without a last_acc)"
    assert rows[0][2] == f"{_summary(tmp_path / 'runs', 'ce_s0')['last_acc']:.2f}" and rows[0][3] == "-"
    for extra in ([], ["--per-run"], ["--csv", str(tmp_path / "r.csv")]):
        assert main(["results", str(tmp_path / "runs"), *extra]) == 0, extra
    capsys.readouterr()
