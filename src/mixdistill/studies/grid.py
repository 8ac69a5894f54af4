"""Run a grid of training runs (seeds x methods x pairs) locally or as Ray tasks.

Every finished run appends one row (with its resolved config) to ``results.jsonl`` in the study directory;
the file is rewritten atomically (temp file + rename, under a lock), so it is never half-written. Re-running
a grid skips runs whose row was made with the same config, re-runs those whose config changed since (their
old run directory is renamed aside, not deleted) and those named by ``rerun`` patterns, resumes a run killed
midway from its last checkpoint, and retries a run that crashed. Runs are grouped in stages: stage k starts
after stage k-1 finished (teachers before students).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from mixdistill.augment.registry import AUGMENTATIONS
from mixdistill.config import DEFAULT_THREADS, build_config, merge
from mixdistill.engine.run import (
    saved_config_difference,
    set_aside,
    stored_config_difference,
)
from mixdistill.engine.trainer import train_or_reuse
from mixdistill.errors import MixdistillError
from mixdistill.files import hold_lock, write_text


@dataclass
class GridRun:
    key: str  # unique within the study, e.g. "teacher/mixup/seed0"
    config: dict  # a config tree; output_dir and name are set by the grid
    stage: int = 0
    labels: dict = field(default_factory=dict)  # what the report groups by
    num_gpus: float = 0

    def run_name(self) -> str:
        return self.key.replace("/", "__")


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")

    def read(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return {row["key"]: row for row in rows}

    def append(self, row: dict) -> None:
        with hold_lock(self.lock_path, "adding a result", wait=True):
            text = self.path.read_text() if self.path.exists() else ""
            write_text(self.path, text + json.dumps(row) + "\n")


def resolve(run: GridRun, study_dir: Path):
    tree = {**run.config, "output_dir": str(study_dir / "runs"), "name": run.run_name()}
    return build_config(tree)


def execute(run: GridRun, study_dir: str, retries: int = 1, quiet: bool = True) -> dict:
    """Train (or reuse / resume) one run; a crash is retried from its last checkpoint."""
    cfg = resolve(run, Path(study_dir))
    for attempt in range(retries + 1):
        try:
            summary = train_or_reuse(cfg, quiet=quiet)
            return {"key": run.key, "labels": run.labels, "stage": run.stage, "summary": summary,
                    "attempts": attempt + 1, "config": cfg.to_dict()}
        except MixdistillError:
            raise  # bad input: retrying cannot help
        except Exception:
            if attempt == retries:
                raise


def with_threads(runs: list[GridRun], threads: int | None) -> list[GridRun]:
    """Every run's ``train.threads`` made explicit (a run's own value, else ``threads``, else torch's default
    here), so that a run is the same computation whichever executor runs it and wherever its config is
    resolved (a Ray worker's torch default is 1 thread)."""
    out = []
    for run in runs:
        if (run.config.get("train") or {}).get("threads") is None:
            run = dataclasses.replace(run, config=merge(run.config, {"train": {"threads": threads or DEFAULT_THREADS}}))
        out.append(run)
    return out


def with_augment_params(runs: list[GridRun], params: dict) -> list[GridRun]:
    """A scale's ``augment_params`` (e.g. ``box_rounding: released``) given to every run whose augmentation
    (its own, or its method's default) takes them and does not set them itself."""
    if not params:
        return runs
    out = []
    for run in runs:
        own = run.config.get("augment") or {}
        name = build_config(run.config).augment.name
        takes = inspect.signature(AUGMENTATIONS[name]).parameters if name in AUGMENTATIONS else {}
        extra = {k: v for k, v in params.items() if k in takes and k not in own}
        if extra:
            run = dataclasses.replace(run, config=merge(run.config, {"augment": {"name": name, **extra}}))
        out.append(run)
    return out


def auto_jobs(runs: list[GridRun]) -> int:
    """Runs side by side on this machine: as many as its cores hold at the runs' thread count."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max((r.config.get("train") or {}).get("threads") or 1 for r in runs) if runs else 1
    return max(1, cores // threads)


def _row_matches(row: dict, cfg) -> bool:
    """Was ``row`` made by a run with config ``cfg``? Rows written before rows carried their config are
    checked against the run directory, which must still hold that very run (its summary) with ``cfg``. The row's
    config is read through today's schema first, so an option added since, at a default that keeps the old
    behaviour, is no difference."""
    if "config" in row:
        return not stored_config_difference(row["config"], cfg)
    summary = cfg.run_dir / "summary.json"
    return (saved_config_difference(cfg) == [] and summary.exists()
            and json.loads(summary.read_text()) == row["summary"])


def run_grid(runs: list[GridRun], study_dir: str | Path, *, executor: str = "local", address: str | None = None,
             retries: int = 1, quiet: bool = True, rerun: list[str] = (), threads: int | None = None,
             jobs: int | None = None, log=print) -> dict[str, dict]:
    """Run what is not finished yet; ``rerun``: fnmatch patterns of keys to run again (e.g. ``cutnmix/*``).

    ``threads``: torch threads of each run that does not set ``train.threads`` (default: torch's default in
    this process). ``jobs``: runs side by side with the local executor (default: as many as the cores hold
    at that thread count); a Ray task asks for as many CPUs as its run has threads."""
    runs = with_threads(runs, threads)
    study_dir = Path(study_dir)
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("grid keys must be unique")
    configs = {run.key: resolve(run, study_dir) for run in runs}  # validate every config before any work starts
    unmatched = [p for p in rerun if not any(fnmatch.fnmatchcase(k, p) for k in keys)]
    if unmatched:
        raise MixdistillError(f"--rerun {', '.join(unmatched)} matches no run of this grid; keys look like {keys[0]}")
    results = ResultsFile(study_dir / "results.jsonl")
    done = results.read()
    again: dict[str, str] = {}  # key -> why it runs again

    def _trains_anew(key: str) -> bool:  # a teacher that runs again, or runs with no finished run to reuse
        return key in again or (key not in done and not (configs[key].run_dir / "summary.json").exists())

    for run in sorted(runs, key=lambda r: r.stage):
        cfg = configs[run.key]
        teacher_dir = Path(cfg.model.teacher_checkpoint).parent if cfg.model.teacher_checkpoint else None
        if run.key not in done:
            continue
        if any(fnmatch.fnmatchcase(run.key, p) for p in rerun):
            again[run.key] = "re-running as asked"
        elif not _row_matches(done[run.key], cfg):
            again[run.key] = "finished with a different config; re-running it"
        elif teacher_dir is not None and any(configs[k].run_dir == teacher_dir and _trains_anew(k) for k in keys):
            again[run.key] = "its teacher is trained anew; re-running it"
    for key, why in again.items():
        del done[key]
        moved = f"; old run moved to {set_aside(configs[key].run_dir)}" if configs[key].run_dir.exists() else ""
        log(f"{key}: {why}{moved}")
    skipped = sum(r.key in done for r in runs)
    if skipped:
        log(f"{skipped} of {len(runs)} runs already finished with this config; skipping them")
    for stage in sorted({r.stage for r in runs}):
        todo = [r for r in runs if r.stage == stage and r.key not in done]
        if not todo:
            continue
        if executor == "local":
            for row in _run_local(todo, study_dir, retries, quiet, jobs or auto_jobs(todo), stage, log):
                results.append(row)
                done[row["key"]] = row
        elif executor == "ray":
            for row in _run_ray(todo, study_dir, address, retries, quiet, log):
                results.append(row)
                done[row["key"]] = row
        else:
            raise MixdistillError(f"unknown executor '{executor}' (local, ray)")
    return {k: done[k] for k in keys}


def exit_with_parent(parent: int, every_s: float = 1.0) -> None:
    """Worker initialiser: end this worker when the study process that started it is gone. A study killed by a
    signal it cannot clean up after (``kill``, SIGKILL) would otherwise leave its workers training on, writing
    into run directories a later invocation owns; a run stopped this way resumes from its last checkpoint."""
    import threading
    import time

    def watch():
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


def _run_local(todo, study_dir, retries, quiet, jobs, stage, log):
    """One run after another in this process (jobs=1), or ``jobs`` worker processes side by side."""
    jobs = min(jobs, len(todo))
    if jobs <= 1:
        for i, run in enumerate(todo):
            log(f"[stage {stage}] {i + 1}/{len(todo)} {run.key}")
            yield execute(run, str(study_dir), retries, quiet)
        return
    import concurrent.futures
    import multiprocessing

    log(f"[stage {stage}] {len(todo)} runs, {jobs} side by side")
    pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=exit_with_parent, initargs=(os.getpid(),))
    try:
        pending = {pool.submit(execute, run, str(study_dir), retries, quiet): run for run in todo}
        for n, future in enumerate(concurrent.futures.as_completed(pending), 1):
            log(f"[stage {stage}] {n}/{len(todo)} finished {pending[future].key}")
            yield future.result()  # a run's MixdistillError (bad input) stops the grid here, as in one process
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_ray(todo, study_dir, address, retries, quiet, log):
    try:
        import ray
    except ImportError:
        raise MixdistillError("--executor ray needs Ray: pip install 'mixdistill[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": os.cpu_count()}))
    remote = ray.remote(execute)
    pending = {remote.options(num_cpus=run.config["train"]["threads"], num_gpus=run.num_gpus, max_retries=0)
               .remote(run, str(study_dir), retries, quiet): run for run in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            try:
                row = ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, MixdistillError):
                    raise err.cause from None
                raise
            log(f"[ray] finished {run.key}")
            yield row
    finally:
        if started_here:
            ray.shutdown()
