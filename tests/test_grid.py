"""The grid runner: stages, skip finished, retry crashed, atomic results, Ray executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mixdistill.errors import ConfigError, WriteError
from mixdistill.studies import grid as grid_module
from mixdistill.studies.grid import GridRun, ResultsFile, run_grid


def tiny_grid(fmnist_root, seeds=2):
    base = {"data": {"root": str(fmnist_root), "batch_size": 64, "eval_batch_size": 200},
            "model": {"student": "cnn5_w8"},
            "optim": {"epochs": 1, "schedule": "onecycle", "milestones": [], "lr": 0.05},
            "train": {"progress": False, "tensorboard": False, "device": "cpu"}}
    runs = [GridRun("teacher", {**base, "method": {"name": "ce"}}, stage=0)]
    for seed in range(seeds):
        runs.append(GridRun(f"kd/seed{seed}", {**base, "seed": seed, "method": {"name": "kd"},
                                               "model": {"student": "cnn5_w8",
                                                         "teacher_checkpoint": "STUDY/runs/teacher/last.pt"}},
                            stage=1, labels={"seed": seed}))
    return runs


def with_study_dir(runs, study_dir):
    for run in runs:
        ckpt = run.config["model"].get("teacher_checkpoint")
        if ckpt:
            run.config["model"]["teacher_checkpoint"] = ckpt.replace("STUDY", str(study_dir))
    return runs


class Killed(BaseException):
    """Like SIGINT/SIGKILL of the study process: not an Exception, so nothing retries it."""


def test_stages_skip_and_resume_after_a_kill(fmnist_root, tmp_path, monkeypatch):
    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    original = grid_module.execute
    calls = []

    def dies_on_second_student(run, *args, **kwargs):
        calls.append(run.key)
        if run.key == "kd/seed1":
            raise Killed  # the whole study is killed here
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", dies_on_second_student)
    try:
        run_grid(runs, study, jobs=1, log=lambda *_: None)
        raise AssertionError("the grid should have been killed")
    except Killed:
        pass
    assert calls == ["teacher", "kd/seed0", "kd/seed1"]  # the teacher stage ran first
    assert set(ResultsFile(study / "results.jsonl").read()) == {"teacher", "kd/seed0"}

    calls.clear()

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", counting)
    rows = run_grid(runs, study, jobs=1, log=lambda *_: None)
    assert calls == ["kd/seed1"], "finished runs must be skipped"
    assert set(rows) == {"teacher", "kd/seed0", "kd/seed1"}
    assert rows["kd/seed1"]["labels"] == {"seed": 1} and rows["kd/seed1"]["summary"]["last_acc"] is not None


def test_changed_config_and_rerun_patterns_run_again_and_keep_the_old_run(fmnist_root, tmp_path, monkeypatch):
    import copy

    from mixdistill.engine.run import set_aside
    from mixdistill.errors import MixdistillError

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    original, calls, logged = grid_module.execute, [], []

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", counting)
    changed = copy.deepcopy(runs)
    changed[1].config["method"] = {"name": "kd", "temperature": 2.0}
    rows = run_grid(changed, study, jobs=1, log=logged.append)
    assert calls == ["kd/seed0"], "only the run whose config changed runs again"
    assert rows["kd/seed0"]["config"]["method"]["temperature"] == 2.0
    assert any("different config" in line for line in logged)
    assert (study / "runs" / "kd__seed0.superseded1" / "summary.json").exists(), "the old run is kept aside"

    calls.clear()
    run_grid(changed, study, rerun=["teach*"], jobs=1, log=lambda *_: None)
    assert calls == ["teacher", "kd/seed0"], "a re-run teacher's students run again"
    assert (study / "runs" / "teacher.superseded1" / "last.pt").exists()
    calls.clear()
    run_grid(changed, study, jobs=1, log=lambda *_: None)
    assert calls == []
    # a teacher whose row and run are gone is trained anew, and its students follow
    results_path = study / "results.jsonl"
    results_path.write_text("".join(line + "\n" for line in results_path.read_text().splitlines()
                                    if json.loads(line)["key"] != "teacher"))
    set_aside(study / "runs" / "teacher")
    run_grid(changed, study, jobs=1, log=lambda *_: None)
    assert calls == ["teacher", "kd/seed0"]
    with pytest.raises(MixdistillError, match="matches no run"):
        run_grid(changed, study, rerun=["nothing/*"], jobs=1, log=lambda *_: None)


def test_a_rerun_interrupted_after_setting_runs_aside_is_finished_next_time(fmnist_root, tmp_path, monkeypatch):
    """A re-run sets the old runs aside before it trains; their rows stay in results.jsonl until the new rows come.
    Interrupted there, the next invocation must not take those rows for finished runs (it skipped the students,
    reported the old teacher's numbers and left their folders only as .superseded copies)."""
    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    original, calls = grid_module.execute, []

    def killed_at(key):
        def execute(run, *args, **kwargs):
            calls.append(run.key)
            if run.key == key:
                raise Killed
            return original(run, *args, **kwargs)
        return execute

    for stop_at, trained_next in (("kd/seed0", ["kd/seed0"]), ("teacher", ["teacher", "kd/seed0"])):
        monkeypatch.setattr(grid_module, "execute", killed_at(stop_at))
        with pytest.raises(Killed):
            run_grid(runs, study, rerun=["teacher"], jobs=1, log=lambda *_: None)
        assert not (study / "runs" / stop_at.replace("/", "__")).exists()  # set aside, its old row still there
        calls.clear()
        monkeypatch.setattr(grid_module, "execute", killed_at(None))
        rows = run_grid(runs, study, jobs=1, log=lambda *_: None)
        assert calls == trained_next
        for key, row in rows.items():  # every row is the run its folder holds
            folder = study / "runs" / key.replace("/", "__")
            assert row["summary"] == json.loads((folder / "summary.json").read_text())
        calls.clear()


def test_a_moved_study_folder_and_damaged_rows_train_nothing_again(fmnist_root, tmp_path, monkeypatch):
    """The teacher's path moves with the folder (the same place in it is the same file), and a row cut short or a
    damaged summary is found again from the run's own folder."""
    import shutil

    study = tmp_path / "study"
    run_grid(with_study_dir(tiny_grid(fmnist_root), study), study, jobs=1, log=lambda *_: None)
    moved = tmp_path / "moved"
    shutil.move(study, moved)
    before = {p.name: (p / "summary.json").read_text() for p in (moved / "runs").iterdir()}
    results = moved / "results.jsonl"
    cut_short = results.read_text()[:-40]
    results.write_text(cut_short)  # the last row cut short
    (moved / "runs" / "kd__seed0" / "summary.json").write_text("")
    (moved / ".results.jsonl.x.mdtmp").write_text("partial")  # an interrupted write's temporary file
    original, calls, logged = grid_module.execute, [], []

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", counting)
    rows = run_grid(with_study_dir(tiny_grid(fmnist_root), moved), moved, jobs=1, log=logged.append)
    assert not any("different config" in line or "moved to" in line for line in logged), logged
    assert calls == ["kd/seed0", "kd/seed1"]  # looked up again from their folders: reused, not retrained
    assert rows["kd/seed1"].get("reused") and not rows["kd/seed0"].get("reused")  # its summary had to be rewritten
    after = {p.name: (p / "summary.json").read_text() for p in (moved / "runs").iterdir()}
    assert after["teacher"] == before["teacher"] and after["kd__seed1"] == before["kd__seed1"]
    assert json.loads(after["kd__seed0"])["last_acc"] == json.loads(before["kd__seed0"])["last_acc"]
    assert set(rows) == {"teacher", "kd/seed0", "kd/seed1"} and not list((moved / "runs").glob("*.superseded*"))
    assert not (moved / ".results.jsonl.x.mdtmp").exists()
    # the line cut short is kept beside the file, not in it: every line of results.jsonl is a row again (it stayed,
    # and pandas.read_json(lines=True) failed on it); the log says the run was read back, not that it finished
    assert [json.loads(line)["key"] for line in results.read_text().splitlines()] == [
        "teacher", "kd/seed0", "kd/seed0", "kd/seed1"]  # kd/seed0's summary was damaged: its row written again
    assert (moved / "results.jsonl.damaged").read_text() == cut_short.splitlines()[-1] + "\n"
    assert "no row in results.jsonl (lost or damaged) for 1 run finished in the run folders: reading them back, " \
           "not training them" in logged
    assert any(line.endswith("read back kd/seed1") for line in logged), logged


def test_an_unfinished_run_with_a_damaged_checkpoint_is_set_aside_and_trained_afresh(fmnist_root, tmp_path,
                                                                                       capsys):
    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    kd = study / "runs" / "kd__seed0"
    (kd / "summary.json").unlink()  # as killed before it finished, its checkpoint then damaged
    (kd / "last.pt").write_bytes(b"not a checkpoint")
    rows = run_grid(runs, study, jobs=1, log=lambda *_: None)
    said = capsys.readouterr().out  # the run's own line (train_or_reuse)
    assert "kd__seed0: its last.pt cannot be read" in said and "training afresh" in said
    assert (study / "runs" / "kd__seed0.superseded1" / "last.pt").read_bytes() == b"not a checkpoint"
    assert rows["kd/seed0"]["summary"] == json.loads((kd / "summary.json").read_text())


def test_a_second_grid_in_a_folder_in_use_stops_before_touching_a_run(fmnist_root, tmp_path):
    import copy
    import os

    from mixdistill.errors import LockedError
    from mixdistill.files import hold_lock

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    def files():  # but the lock's own (its file and the note naming its holder)
        return sorted(p.relative_to(study) for p in study.rglob("*") if not p.name.startswith(grid_module.GRID_LOCK))

    before = files()
    changed = copy.deepcopy(runs)
    changed[1].config["method"] = {"name": "kd", "temperature": 2.0}  # would set kd/seed0 aside and train it again
    with hold_lock(study / grid_module.GRID_LOCK, "running a grid of 2 runs"):  # as another invocation holds it
        with pytest.raises(LockedError, match=rf"^{study} is in use by pid {os.getpid()} .*running a grid of 2 runs"):
            run_grid(changed, study, jobs=1, log=lambda *_: None)
        assert files() == before
    assert run_grid(changed, study, jobs=1, log=lambda *_: None)["kd/seed0"]["config"]["method"]["temperature"] == 2.0


def test_a_grid_starting_while_a_report_is_written_leaves_the_report_writers_files(fmnist_root, tmp_path):
    """A report (--report-only beside a running study, or a study's end) is written under report.lock; a grid that
    starts meanwhile removes what interrupted writes left only once the writer is done, not its live temporary
    file. An orphan is still removed."""
    import threading
    import time

    from mixdistill.files import TMP_SUFFIX, hold_lock

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    study.mkdir()
    live, seen = study / f".report.md.1{TMP_SUFFIX}", []
    holding = threading.Event()

    def writer():
        with hold_lock(study / grid_module.REPORT_LOCK, "writing the report", wait=True):
            live.write_text("half a report")
            holding.set()
            time.sleep(1.5)
            seen.append(live.exists())  # still there: the grid did not take it for an orphan
            live.unlink()  # (renamed into place)

    thread = threading.Thread(target=writer)
    thread.start()
    holding.wait(10)
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    thread.join(10)
    assert seen == [True]
    orphan = study / f".report.md.2{TMP_SUFFIX}"
    orphan.write_text("left by a killed writer")
    run_grid(runs, study, jobs=1, log=lambda *_: None)
    assert not orphan.exists()


def test_a_row_counts_only_where_its_folder_still_holds_the_run_it_reports(fmnist_root, tmp_path):
    import yaml

    from mixdistill.studies.grid import _holds_row, _row_difference, resolve

    cfg = resolve(tiny_grid(fmnist_root)[0], tmp_path)
    row = {"key": "teacher", "summary": {"last_acc": 80.0}}  # an older results.jsonl row: no "config"
    assert not _holds_row(row, cfg), "set aside by a re-run that was interrupted, or removed"
    cfg.run_dir.mkdir(parents=True)
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (cfg.run_dir / "last.pt").write_bytes(b"")
    assert not _holds_row(row, cfg), "a newer run with the same config, not finished: the row is stale"
    (cfg.run_dir / "summary.json").write_text(json.dumps({"last_acc": 79.0}))
    assert not _holds_row(row, cfg), "a different run finished there"
    (cfg.run_dir / "summary.json").write_text("{")
    assert not _holds_row(row, cfg), "a damaged summary"
    (cfg.run_dir / "summary.json").write_text(json.dumps(row["summary"]))
    assert _holds_row(row, cfg) and _row_difference(row, cfg) == []
    (cfg.run_dir / "last.pt").unlink()
    assert not _holds_row(row, cfg), "finished, but its students, eval and analyze need its checkpoint"
    (cfg.run_dir / "config.yaml").write_text(yaml.safe_dump({**cfg.to_dict(), "seed": 5}))
    assert _row_difference(row, cfg) == ["seed: 5 -> 0"]


def test_a_run_starts_once_the_runs_it_needs_have_finished(tmp_path):
    """Stages are dependencies, not barriers: a stage-1 run that needs no teacher of the grid starts beside the
    teacher; a student starts only after its teacher finished, never more runs at once than the slots."""
    from mixdistill.studies.grid import _in_dependency_order, dependencies, resolve

    base = {"model": {"student": "cnn5_w8"}, "method": {"name": "ce"}}
    model = {"student": "cnn5_w8", "teacher_checkpoint": str(tmp_path / "runs" / "teacher" / "last.pt")}
    kd = {"model": model, "method": {"name": "kd"}}
    ce = {"model": model, "method": {"name": "ce"}}  # given the teacher's path, as the studies do; CE never loads it
    runs = [GridRun("teacher", base, stage=0), GridRun("kd/0", kd, stage=1), GridRun("ce", ce, stage=1),
            GridRun("kd/1", kd, stage=1)]
    configs = {r.key: resolve(r, tmp_path) for r in runs}
    needs = dependencies(runs, configs, grid_module._run_dirs(configs))
    assert needs == {"teacher": set(), "kd/0": {"teacher"}, "ce": set(), "kd/1": {"teacher"}}

    started, running, finished = [], [], []
    finishing = iter(["ce", "teacher", "kd/1", "kd/0"])

    def submit(run):
        assert needs[run.key] <= set(finished), f"{run.key} started before {needs[run.key]} finished"
        started.append(run.key)
        running.append(run.key)
        assert len(running) <= 2
        return run.key

    def wait_one(handles):
        key = next(finishing)
        assert key in handles and sorted(handles) == sorted(running)
        running.remove(key)
        finished.append(key)
        return key, {"key": key}

    rows = list(_in_dependency_order(runs, needs, lambda run, running: len(running) < 2, submit, wait_one,
                                     log=lambda *_: None))
    assert started == ["teacher", "ce", "kd/0", "kd/1"]  # the CE run beside the teacher; no student before it
    assert [r["key"] for r in rows] == ["ce", "teacher", "kd/1", "kd/0"]


@pytest.mark.slow
def test_side_by_side_grid_trains_a_teacherless_run_beside_the_teacher(fmnist_root, tmp_path):
    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    runs.append(GridRun("ce/seed0", {**runs[1].config, "seed": 0, "method": {"name": "ce"}}, stage=1))
    rows = run_grid(runs, study, jobs=2, threads=1, log=lambda *_: None)
    assert set(rows) == {"teacher", "kd/seed0", "kd/seed1", "ce/seed0"}
    assert all(r["summary"]["last_acc"] is not None for r in rows.values())
    teacher = study / "runs" / "teacher" / "last.pt"
    assert all(r["config"]["model"]["teacher_checkpoint"] == str(teacher) for k, r in rows.items() if "kd" in k)


def test_crashed_run_is_retried(fmnist_root, tmp_path, monkeypatch):
    original = grid_module.train_or_reuse
    attempts = []

    def flaky(cfg, **kwargs):
        attempts.append(cfg.name)
        if len(attempts) == 1:
            raise RuntimeError("simulated crash (e.g. a lost worker)")
        return original(cfg, **kwargs)

    monkeypatch.setattr(grid_module, "train_or_reuse", flaky)
    rows = run_grid(tiny_grid(fmnist_root)[:1], tmp_path / "s", log=lambda *_: None)
    assert attempts == ["teacher", "teacher"] and rows["teacher"]["attempts"] == 2


def test_bad_config_fails_before_any_work(fmnist_root, tmp_path):
    runs = tiny_grid(fmnist_root)
    runs[-1].config = {**runs[-1].config, "optim": {"epochs": "many"}}
    with pytest.raises(ConfigError, match="optim.epochs"):
        run_grid(runs, tmp_path / "s", log=lambda *_: None)
    assert not (tmp_path / "s" / "results.jsonl").exists() and not (tmp_path / "s" / "runs").exists()


def test_results_append_is_atomic(tmp_path, monkeypatch):
    results = ResultsFile(tmp_path / "results.jsonl")
    results.append({"key": "a", "summary": {}})
    before = results.path.read_text()

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr(grid_module.os, "replace", crash)
    with pytest.raises(WriteError, match="results.jsonl: disk full"):
        results.append({"key": "b", "summary": {}})
    monkeypatch.undo()
    assert results.path.read_text() == before
    assert not list(tmp_path.glob(".*.mdtmp")), "a temporary file was left behind"
    assert [json.loads(x)["key"] for x in before.splitlines()] == ["a"]


@pytest.mark.slow
def test_ray_executor_runs_the_grid(fmnist_root, tmp_path):
    pytest.importorskip("ray")
    study = tmp_path / "ray_study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    rows = run_grid(runs, study, executor="ray", log=lambda *_: None)
    assert set(rows) == {"teacher", "kd/seed0", "kd/seed1"}
    assert all(r["summary"]["last_acc"] is not None for r in rows.values())
    assert len(ResultsFile(study / "results.jsonl").read()) == 3
    # a teacher that diverges in a Ray task: a row saying so, its students not started
    diverging = with_study_dir(tiny_grid(fmnist_root), tmp_path / "diverging")
    diverging[0].config["optim"] = {**diverging[0].config["optim"], "lr": 1e30}
    rows = run_grid(diverging, tmp_path / "diverging", executor="ray", log=lambda *_: None)
    assert [rows[k]["status"] for k in ("teacher", "kd/seed0", "kd/seed1")] == ["diverged", "not run", "not run"]


def test_jobs_asking_more_threads_than_cores_say_so(fmnist_root, tmp_path, monkeypatch):
    """--jobs 2 --threads 2 on 2 cores ran four torch threads on two cores without a word."""
    monkeypatch.setattr(grid_module, "available_cpus", lambda: 2)
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), tmp_path / "study")
    logged = []
    run_grid(runs, tmp_path / "study", jobs=2, threads=2, log=logged.append)
    assert "note: 2 runs side by side ask for up to 4 threads on 2 cores: each runs slower than alone; --jobs 1 " \
           "fits them" in logged
    logged.clear()
    run_grid(with_study_dir(tiny_grid(fmnist_root, seeds=1), tmp_path / "fits"), tmp_path / "fits", jobs=2, threads=1,
             log=logged.append)
    assert not any(line.startswith("note:") for line in logged)
    monkeypatch.setattr(grid_module, "available_cpus", lambda: 1)  # one run's threads alone outnumber the cores
    run_grid(with_study_dir(tiny_grid(fmnist_root, seeds=1), tmp_path / "wide"), tmp_path / "wide", jobs=2, threads=2,
             log=logged.append)
    assert any("one run alone asks for 2: lower --threads (or train.threads) to 1 or fewer" in line for line in logged)


def test_a_ray_address_where_nothing_listens_is_one_error_at_once():
    """ray.init retried 127.0.0.1:1 for minutes, in C++ code SIGTERM could not stop."""
    import socket
    import time

    from mixdistill.errors import MixdistillError
    from mixdistill.studies.grid import _check_ray_address

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # closed again: nothing listens on it
    started = time.monotonic()
    for address in (f"127.0.0.1:{free}", f"ray://127.0.0.1:{free}"):
        with pytest.raises(MixdistillError, match=f"--address {address}: no Ray cluster answers there"):
            _check_ray_address(address)
    assert time.monotonic() - started < 10
    with pytest.raises(MixdistillError, match="give the head node's HOST:PORT"):
        _check_ray_address("headnode")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        _check_ray_address(f"127.0.0.1:{sock.getsockname()[1]}")  # something answers: ray.init's to judge
    _check_ray_address(None), _check_ray_address("auto")


@pytest.mark.slow
def test_a_ray_run_asking_more_cpus_than_the_cluster_has_is_refused_not_left_waiting(fmnist_root, tmp_path):
    """Ray kept such a task pending forever, and log_to_driver=False hid its warning: the study said nothing."""
    pytest.importorskip("ray")
    from mixdistill.errors import MixdistillError
    from mixdistill.machine import available_cpus

    study = tmp_path / "ray_study"
    runs = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)
    with pytest.raises(MixdistillError, match=rf"run teacher asks for {available_cpus() + 1} CPUs and this machine's "
                                              rf"Ray instance has {available_cpus()}: it would never start"):
        run_grid(runs, study, executor="ray", threads=available_cpus() + 1, log=lambda *_: None)
    import ray

    assert not ray.is_initialized()  # shut down again
    # a task runs on one node: two 8-CPU nodes do not hold a 12-thread run (the cluster's total did)
    from mixdistill.studies.grid import _check_ray_resources

    nodes = [{"Alive": True, "Resources": {"CPU": 8.0}}, {"Alive": True, "Resources": {"CPU": 8.0}},
             {"Alive": False, "Resources": {"CPU": 64.0}}]
    big = with_study_dir(tiny_grid(fmnist_root, seeds=1), study)[0]
    big.config["train"]["threads"] = 12
    with pytest.raises(MixdistillError, match="asks for 12 CPUs and the largest node of the Ray cluster at h:1 has 8"):
        _check_ray_resources([big], nodes, "h:1")
    big.config["train"]["threads"] = 8
    _check_ray_resources([big], nodes, "h:1")
    assert not (study / "runs").exists() or not list((study / "runs").iterdir())


def test_a_row_from_before_an_option_existed_matches_at_that_options_default(fmnist_root, tmp_path):
    from mixdistill.studies.grid import _row_difference, resolve

    cfg = resolve(tiny_grid(fmnist_root)[0], tmp_path)
    then = cfg.to_dict()
    del then["train"]["label_smoothing"]  # a row written before train.label_smoothing existed
    assert _row_difference({"key": "teacher", "config": then, "summary": {}}, cfg) == []
    then["train"]["label_smoothing"] = 0.1
    assert _row_difference({"key": "teacher", "config": then, "summary": {}}, cfg) == [
        "train.label_smoothing: 0.1 -> 0.0"]
    then["train"]["no_such_option"] = 1
    assert _row_difference({"key": "teacher", "config": then, "summary": {}}, cfg)


def test_side_by_side_workers_end_when_the_study_process_is_killed(tmp_path):
    """``kill -9`` of a study must not leave its workers training into run directories."""
    import os
    import pathlib
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import concurrent.futures, multiprocessing, os, sys, time\n"
        "from mixdistill.studies.grid import exit_with_parent\n"
        "def work(_):\n"
        "    print(os.getpid(), flush=True)\n"
        "    time.sleep(60)\n"
        "if __name__ == '__main__':\n"
        "    pool = concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn'),\n"
        "        initializer=exit_with_parent, initargs=(os.getpid(), 0.1))\n"
        "    pool.submit(work, 0)\n"
        "    time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline())
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    stat = pathlib.Path(f"/proc/{worker}/stat")
    while time.monotonic() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            return
        if stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return  # exited; its new parent has not reaped it yet
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    raise AssertionError("the worker outlived its killed study process")


@pytest.mark.checkout
@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_ctrl_c_of_a_grid_is_one_line_and_stops_its_workers(how, fmnist_root, tmp_path):
    """Ctrl-C (SIGINT to the terminal's process group) while the workers start: the grid's process says it was
    interrupted and stops its workers; no worker prints a traceback from wherever it was (importing torch).
    SIGTERM to the grid's process alone (kill, timeout, a scheduler) does the same (it ended the process silently
    and left the workers to exit_with_parent's next look)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "log.txt"
    with open(out, "w") as log:
        demo = subprocess.Popen([sys.executable, "-m", "mixdistill", "demo", "--quick", "--seeds", "2", "--data-root",
                                 str(fmnist_root), "--output-dir", str(tmp_path / "demo")], stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while "side by side" not in out.read_text() and demo.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    if how == "ctrl_c":
        os.killpg(demo.pid, signal.SIGINT)  # the workers are being spawned now
    else:
        os.kill(demo.pid, signal.SIGTERM)
    assert demo.wait(timeout=60) == (130 if how == "ctrl_c" else 143), out.read_text()
    text = out.read_text()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Terminated" not in text
    assert text.endswith(f"mixdistill: {'interrupted' if how == 'ctrl_c' else 'terminated'} (the same command again "
                         "keeps the finished runs and resumes the others)\n")

    def in_session():  # the demo's processes: their session is the demo's pid
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == demo.pid and fields[0] != "Z":
                found.append(stat.parent.name)
        return found

    deadline = time.monotonic() + 15
    while in_session() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not in_session(), "a worker outlived the interrupted grid"


def test_a_finished_worker_ends_at_once_with_its_output_and_logs_written(tmp_path):
    """A pool worker skips the interpreter's teardown when the pool shuts down (an exit handler registered before
    the pool's is not run), but not what it printed or logged (unflushed), and it ends with status 0."""
    import subprocess
    import sys

    script = tmp_path / "parent.py"
    log = tmp_path / "worker.log"
    script.write_text(
        "import logging, sys\n"
        "from mixdistill.studies.grid import worker_pool\n"
        "import atexit\n"
        "if __name__ == '__mp_main__':  # in the worker, before the pool's initialiser runs\n"
        f"    atexit.register(lambda: open({str(tmp_path / 'torn_down')!r}, 'w').close())\n"
        "def work(path):\n"
        "    import torch\n"
        "    logger = logging.getLogger('worker')\n"
        "    logger.addHandler(logging.FileHandler(path))\n"
        "    logger.warning('logged by the worker')\n"
        "    sys.stdout.write('printed by the worker;')\n"
        "    return 7\n"
        "if __name__ == '__main__':\n"
        "    pool = worker_pool(1)\n"
        f"    assert pool.submit(work, {str(log)!r}).result() == 7\n"
        "    workers = list(pool._processes.values())\n"
        "    pool.shutdown(wait=True)\n"
        "    print('exit codes', [w.exitcode for w in workers])\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "printed by the worker;" in done.stdout and "exit codes [0]" in done.stdout
    assert log.read_text() == "logged by the worker\n"
    assert not (tmp_path / "torn_down").exists()


def test_runs_side_by_side_only_as_many_as_the_cpu_quota_allows(tmp_path, monkeypatch):
    """A container whose quota is one CPU runs the grid one run at a time in this process, whatever the
    affinity mask shows (a process pool could not call the stand-in ``execute`` below)."""
    monkeypatch.setattr(grid_module, "available_cpus", lambda: 1)
    ran = []

    def execute(run, study_dir, retries, quiet):
        ran.append(run.key)
        return {"key": run.key, "labels": {}, "stage": run.stage, "summary": {"last_acc": 1.0}, "attempts": 1,
                "config": {}}

    monkeypatch.setattr(grid_module, "execute", execute)
    base = {"train": {"threads": 1}}
    runs = [GridRun(f"ce/seed{s}", {**base, "seed": s, "method": {"name": "ce"}}) for s in range(3)]
    rows = list(grid_module._run_local(runs, {r.key: set() for r in runs}, set(), tmp_path, 0, True, None,
                                       lambda *_: None))
    assert ran == ["ce/seed0", "ce/seed1", "ce/seed2"] and len(rows) == 3


def test_a_failing_grid_stops_the_pools_workers_at_once():
    """A run's error or Ctrl-C stops the runs still going (each resumes from its checkpoint): the public
    ``terminate_workers`` where Python has it, the pool's processes otherwise."""
    import concurrent.futures
    import time

    class Public:
        terminated = False

        def terminate_workers(self):
            self.terminated = True

    public = Public()
    grid_module._terminate_workers(public)
    assert public.terminated
    pool = concurrent.futures.ProcessPoolExecutor(1)
    try:
        pool.submit(time.sleep, 60)
        time.sleep(0.5)
        workers = list(pool._processes.values())
        started = time.monotonic()
        grid_module._terminate_workers(pool)
        # ended, not only told to: the pool's own thread may reap a worker first, and until it has recorded the exit
        # status, exitcode reads None here (os.waitpid's ECHILD); it reads the status within moments, not 60 s
        while any(w.exitcode is None for w in workers) and time.monotonic() - started < 10:
            time.sleep(0.05)
        assert workers and all(w.exitcode is not None for w in workers)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


@pytest.mark.slow
def test_current_rows_are_what_the_grid_would_reuse(fmnist_root, tmp_path):
    """--report-only's rows: a finished run counts while its folder and config are today's and its teacher's run is
    too; a student of a teacher whose config changed is not run yet (the grid would train both again)."""
    import copy

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    runs.append(GridRun("ce/seed0", {**copy.deepcopy(runs[1].config), "seed": 0, "method": {"name": "ce"}}, stage=1))
    done = run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    assert grid_module.current_rows(runs, study, threads=1) == done
    assert {r.get("status") for r in grid_module.current_rows(runs, study).values()} == {"not run yet"}  # threads
    changed = copy.deepcopy(runs)
    changed[0].config["optim"] = {**changed[0].config["optim"], "lr": 0.01}
    now = grid_module.current_rows(changed, study, threads=1)
    assert [now[k].get("status") for k in ("teacher", "kd/seed0", "kd/seed1")] == ["not run yet"] * 3
    assert now["ce/seed0"] == done["ce/seed0"]  # it does not distil from the teacher


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])  # one after another in this process; side by side in worker processes
def test_a_diverging_run_gets_a_row_and_the_grid_goes_on_without_it(jobs, fmnist_root, tmp_path):
    """A run whose loss becomes NaN is a result of its config and seed (it diverges again), not a crash: its row says
    so, the runs that need it (students of a diverged teacher) are not started, the others train, and the next
    invocation trains nothing again; once its config changes, it and its students run."""
    import copy

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    runs.append(GridRun("ce/seed0", {**copy.deepcopy(runs[1].config), "seed": 0, "method": {"name": "ce"}}, stage=1))
    diverging = copy.deepcopy(runs)
    diverging[0].config["optim"] = {**diverging[0].config["optim"], "lr": 1e30}
    logged = []
    rows = run_grid(diverging, study, jobs=jobs, threads=1, log=logged.append)
    assert rows["teacher"]["status"] == "diverged" and "non-finite" in rows["teacher"]["error"]
    assert "summary" not in rows["teacher"]
    assert [rows[k]["status"] for k in ("kd/seed0", "kd/seed1")] == ["not run", "not run"]
    assert "its teacher's run teacher did not finish" in rows["kd/seed0"]["error"]
    assert rows["ce/seed0"]["summary"]["last_acc"] is not None
    assert not (study / "runs" / "kd__seed0").exists(), "a student of a diverged teacher must not start"
    assert any("diverged teacher: non-finite" in line for line in logged)
    # a line as each run starts: one at a time its number, side by side how many run (the teacher and the CE student)
    started = ["[stage 0] 1/4 teacher", "[stage 1] 4/4 ce/seed0"] if jobs == 1 else [
        "[stage 0] started teacher (1 running)", "[stage 1] started ce/seed0 (2 running)"]
    assert [line for line in logged if line in started] == started, logged
    assert set(ResultsFile(study / "results.jsonl").read()) == {"teacher", "ce/seed0"}, "not-run students: no row"

    logged.clear()
    rows = run_grid(diverging, study, jobs=jobs, threads=1, log=logged.append)
    assert any("2 of 4 runs already finished" in line for line in logged), logged
    assert rows["teacher"]["status"] == "diverged" and rows["kd/seed1"]["status"] == "not run"
    mark = json.loads((study / "runs" / "teacher" / "diverged.json").read_text())
    assert "non-finite loss at step 1" in mark["error"]
    now = grid_module.current_rows(diverging, study, threads=1)  # what --report-only reads: as the grid says
    assert [now[k].get("status") for k in ("teacher", "kd/seed0", "ce/seed0")] == ["diverged", "not run", None]
    from mixdistill.results import collect, run_rows

    columns, listed = run_rows(collect([study / "runs"]))
    status = {Path(row[0]).name: row[columns.index("status")] for row in listed}
    assert status == {"teacher": "diverged after epoch 0/1", "ce__seed0": "done"}  # `mixdistill results` says so

    if jobs == 1:  # a re-run of the diverged teacher killed once its new folder exists: that folder is no diverged run
        original = grid_module.execute

        def killed_once_started(run, *args, **kwargs):
            grid_module.resolve(run, study).run_dir.mkdir(parents=True)
            raise Killed

        grid_module.execute = killed_once_started
        try:
            with pytest.raises(Killed):
                run_grid(diverging, study, rerun=["teacher"], jobs=1, threads=1, log=lambda *_: None)
        finally:
            grid_module.execute = original
        logged.clear()
        rows = run_grid(diverging, study, jobs=1, threads=1, log=logged.append)
        assert "[stage 0] 1/3 teacher" in logged and rows["teacher"]["status"] == "diverged", "\n".join(logged)

    # the teacher's lr fixed: it and its students train
    rows = run_grid(runs, study, jobs=jobs, threads=1, log=lambda *_: None)
    assert all(grid_module.finished(row) for row in rows.values())
    assert (study / "runs" / "teacher.superseded1" / "metrics.jsonl").exists(), "the diverged run is kept aside"


def _drop_rows(study, *keys):
    path = study / "results.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("".join(line + "\n" for line in lines if json.loads(line)["key"] not in keys))


def test_a_student_is_trained_anew_with_its_teacher_even_where_its_row_is_lost(fmnist_root, tmp_path, monkeypatch):
    """A teacher that trains anew takes its students' folders with it, also those with no row to go by (the row was
    lost, or the run was killed before it finished): they were made with the old teacher, so reusing or resuming
    them would report a student of a teacher that is no longer there."""
    import copy

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    _drop_rows(study, "kd/seed0", "kd/seed1")  # kd/seed0 finished, its row lost; kd/seed1 as killed before its end
    (study / "runs" / "kd__seed1" / "summary.json").unlink()
    changed = copy.deepcopy(runs)
    changed[0].config["optim"] = {**changed[0].config["optim"], "lr": 0.01}
    original, calls, logged = grid_module.execute, [], []

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", counting)
    rows = run_grid(changed, study, jobs=1, threads=1, log=logged.append)
    assert calls == ["teacher", "kd/seed0", "kd/seed1"]
    assert not rows["kd/seed0"].get("reused"), "a student of the old teacher was reported as this teacher's"
    for key in ("kd/seed0", "kd/seed1"):
        folder = key.replace("/", "__")
        assert any(line.startswith(f"{key}: its teacher is trained anew") for line in logged), logged
        assert (study / "runs" / f"{folder}.superseded1").is_dir(), "the old student is kept aside"
        summary = json.loads((study / "runs" / folder / "summary.json").read_text())
        assert rows[key]["summary"] == summary and summary["epochs"] == 1


def test_current_rows_read_a_finished_run_whose_row_was_lost_as_the_grid_would(fmnist_root, tmp_path):
    """--report-only and the grid decide with one function: a finished run whose row was lost is read back from its
    folder (the grid reuses it: nothing trains), and its students count."""
    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    done = run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    _drop_rows(study, "teacher")
    now = grid_module.current_rows(runs, study, threads=1)
    assert now["teacher"]["summary"] == done["teacher"]["summary"] and now["teacher"]["reused"]
    assert now["kd/seed0"] == done["kd/seed0"] and now["kd/seed1"] == done["kd/seed1"]
    again = run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    assert again == now, "the grid reads back what --report-only showed, and trains nothing"


def test_a_teacher_resumed_after_its_last_epoch_keeps_its_students(fmnist_root, tmp_path, monkeypatch):
    """A teacher whose summary was lost is resumed from its last checkpoint: after its last epoch that changes no
    weight, so its students stay; one whose checkpoint is from before its end trains on, so its students go."""
    import torch

    from mixdistill.engine.checkpoint import save_atomic

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    done = run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    original, calls, logged = grid_module.execute, [], []

    def counting(run, *args, **kwargs):
        calls.append(run.key)
        return original(run, *args, **kwargs)

    monkeypatch.setattr(grid_module, "execute", counting)
    teacher = study / "runs" / "teacher"
    (teacher / "summary.json").write_text("")  # damaged
    rows = run_grid(runs, study, jobs=1, threads=1, log=logged.append)
    assert calls == ["teacher"] and not list((study / "runs").glob("*.superseded*")), logged
    assert rows["kd/seed0"] == done["kd/seed0"] and rows["teacher"]["summary"]["last_acc"] == \
        done["teacher"]["summary"]["last_acc"]
    calls.clear()
    _drop_rows(study, "teacher")
    (teacher / "summary.json").unlink()
    state = torch.load(teacher / "last.pt", weights_only=True)
    state["epoch"] = 0  # as killed before its one epoch ended
    save_atomic(state, teacher / "last.pt")
    rows = run_grid(runs, study, jobs=1, threads=1, log=logged.append)
    assert calls == ["teacher", "kd/seed0", "kd/seed1"]
    assert (study / "runs" / "kd__seed0.superseded1").is_dir() and (study / "runs" / "kd__seed1.superseded1").is_dir()


def test_a_teacher_staged_with_its_students_is_refused(fmnist_root, tmp_path):
    """Stages order the runs: a student staged with (or before) the run it distils from would start before that
    run finished."""
    import dataclasses

    study = tmp_path / "study"
    runs = with_study_dir(tiny_grid(fmnist_root), study)
    runs[0] = dataclasses.replace(runs[0], stage=1)
    with pytest.raises(ValueError, match=r"grid run kd/seed0 \(stage 1\) distils from run teacher \(stage 1\)"):
        run_grid(runs, study, jobs=1, threads=1, log=lambda *_: None)
    assert not study.exists(), "refused before anything is written"


def test_report_only_beside_a_running_grid_computes_t_stddev_in_its_own_process(tmp_path, monkeypatch):
    """wang2022's report fills its T. stddev table side by side in worker processes; beside a grid another process
    runs in the folder (--report-only), those workers would take the grid's cores: it computes them in turn."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import mixdistill.machine
    from mixdistill.files import held_elsewhere, hold_lock
    from mixdistill.studies import wang2022

    study = tmp_path / "study"
    keys = ["student/a/v/seed0", "student/a/v/seed1"]
    for key in keys:
        folder = grid_module.run_dir(study, key)
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"")
    rows = {key: {"config": {"train": {"threads": 1}}} for key in keys}
    monkeypatch.setattr(mixdistill.machine, "available_cpus", lambda: 2)

    class PoolStarted(Exception):
        pass

    def no_pool(workers):
        raise PoolStarted(workers)

    monkeypatch.setattr(grid_module, "worker_pool", no_pool)
    lock = study / grid_module.GRID_LOCK
    assert not held_elsewhere(lock)
    with pytest.raises(PoolStarted):  # nobody else in the folder: side by side
        wang2022._fill_t_stddev_cache(study, rows, keys, None, 10, None)
    with hold_lock(lock, "running a grid"):
        assert not held_elsewhere(lock), "this process's own lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from mixdistill.files import hold_lock\n"
                               f"with hold_lock({str(lock)!r}, 'running a grid'):\n print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert held_elsewhere(lock)
        wang2022._fill_t_stddev_cache(study, rows, keys, None, 10, None)  # no pool: each computed in turn later
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # as a grid killed without releasing: its holder file stays
        holder.wait()
    time.sleep(0.1)
    assert (study / "grid.lock.holder").exists() and not held_elsewhere(lock), "a dead holder holds nothing"


@pytest.mark.slow
def test_sigterm_of_a_ray_study_stops_it_as_ctrl_c_does(fmnist_root, tmp_path):
    """ray.init replaced the CLI's SIGTERM handler with Ray's: a study on the Ray executor, sent SIGTERM, dumped Ray's
    C++ stack and exited 15 without its one line."""
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("ray")
    out = tmp_path / "log.txt"
    with open(out, "w") as log:
        study = subprocess.Popen([sys.executable, "-m", "mixdistill", "study", "shen2022", "--scale", "smoke",
                                  "--seeds", "2", "--threads", "1", "--executor", "ray", "--data-root",
                                  str(fmnist_root), "--output-dir", str(tmp_path / "st")], stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 180
    while not list((tmp_path / "st").glob("*/runs/*/config.yaml")) and study.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.05)  # a run has started: Ray is up, its tasks are running
    os.kill(study.pid, signal.SIGTERM)
    assert study.wait(timeout=120) == 143, out.read_text()[-3000:]
    text = out.read_text()
    assert "SIGTERM received" not in text and "Traceback" not in text, text[-3000:]
    assert text.rstrip().endswith("(the same command again keeps the finished runs and resumes the others)"), text
