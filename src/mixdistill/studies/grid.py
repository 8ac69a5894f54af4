"""Run a grid of training runs (seeds x methods x pairs) locally or as Ray tasks.

Every finished run appends one row (with its resolved config) to ``results.jsonl`` in the study directory;
the file is rewritten atomically (temp file + rename, under a lock), so it is never half-written. Re-running
a grid skips runs whose row was made with the same config, re-runs those whose config changed since (their
old run directory is renamed aside, not deleted) and those named by ``rerun`` patterns, resumes a run killed
midway from its last checkpoint, and retries a run that crashed. Runs are grouped in stages (teachers in stage 0,
their students in stage 1): a run that distils from a teacher of the grid starts once that teacher has finished, so
a student that needs no teacher (a CE baseline) trains beside the teachers, and the students of a finished teacher
beside those still training.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from mixdistill.augment.registry import AUGMENTATIONS
from mixdistill.config import DEFAULT_THREADS, build_config, merge
from mixdistill.data.datasets import DATASETS, ENV_WARNING, check_root_exists, load_dataset
from mixdistill.engine import teacher_views
from mixdistill.engine.build import SIZED_BEFORE_A_GRID, check_subset_sizes
from mixdistill.engine.run import (
    CHECKPOINT,
    DIVERGED,
    read_summary,
    saved_config_difference,
    set_aside,
    stored_config_difference,
)
from mixdistill.engine.trainer import keeps_final_weights, reusable_summary, train_or_reuse
from mixdistill.errors import ConfigError, IncompleteStudyError, MixdistillError, NonFiniteLossError, one_line
from mixdistill.files import append_text, hold_lock, remove_orphans, write_json, write_text
from mixdistill.machine import available_cpus
from mixdistill.methods import METHODS
from mixdistill.studies.stats import counted


@dataclass
class GridRun:
    key: str  # unique within the study, e.g. "teacher/mixup/seed0"
    config: dict  # a config tree; output_dir and name are set by the grid
    stage: int = 0
    labels: dict = field(default_factory=dict)  # what the report groups by
    num_gpus: float = 0

    def run_name(self) -> str:
        return self.key.replace("/", "__")


GRID_LOCK = "grid.lock"  # held by the process running a grid in that folder
REPORT_LOCK = "report.lock"  # held while a report is written (a grid's end, --report-only beside a running grid)
GRID_RECORD = "grid.json"  # what the grid last started in the folder was asked (a study: seeds, threads, data root)


def run_dir(study_dir: str | Path, key: str) -> Path:
    """The directory the grid gives run ``key`` in ``study_dir``."""
    return Path(study_dir) / "runs" / GridRun(key, {}).run_name()


def checkpoint_of(study_dir: str | Path, key: str) -> str:
    """The checkpoint run ``key`` of the grid in ``study_dir`` leaves (its students' ``model.teacher_checkpoint``)."""
    return str(run_dir(study_dir, key) / CHECKPOINT)


class ResultsFile:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.lock_path = self.path.with_suffix(".lock")

    @property
    def damaged_path(self) -> Path:
        return self.path.with_name(self.path.name + ".damaged")

    def read(self) -> dict[str, dict]:
        """The last row of each key. A line that is not a row (an append cut short by a crash before appends were
        atomic, a hand edit) is passed over: its run is found finished in its folder and its row written again."""
        return {row["key"]: row for row in self.rows()}

    def rows(self) -> list[dict]:
        """Every row, in the order they were added (lines that are not rows passed over)."""
        if not self.path.exists():
            return []
        return [row for line in self.path.read_text().splitlines() if (row := _parsed_row(line)) is not None]

    def append(self, row: dict) -> None:
        with hold_lock(self.lock_path, "adding a result", wait=True):
            text = self.path.read_text() if self.path.exists() else ""
            write_text(self.path, text + ("\n" if text and not text.endswith("\n") else "") + json.dumps(row) + "\n")

    def set_aside_damaged(self) -> None:
        """Move the lines that are not rows to ``results.jsonl.damaged`` (kept, not lost), so that the file is one
        JSON row a line for the tools that read it (``pandas.read_json(lines=True)``); a grid does it once as it
        starts, its own appends being whole rows."""
        with hold_lock(self.lock_path, "setting damaged lines aside", wait=True):
            lines = self.path.read_text().splitlines() if self.path.exists() else []
            rows = [line for line in lines if _parsed_row(line) is not None]
            damaged = [line for line in lines if line.strip() and _parsed_row(line) is None]
            if damaged:
                append_text(self.damaged_path, "".join(line + "\n" for line in damaged))
                write_text(self.path, "".join(line + "\n" for line in rows))


def _parsed_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and "key" in row else None


def resolve(run: GridRun, study_dir: Path):
    tree = {**run.config, "output_dir": str(study_dir / "runs"), "name": run.run_name()}
    return build_config(tree)


def _row(run: GridRun, **fields) -> dict:
    """A row of ``results.jsonl`` (or one the grid reports without writing it) for ``run``."""
    return {"key": run.key, "labels": run.labels, "stage": run.stage, **fields}


def _finished_row(run: GridRun, cfg, summary: dict, attempts: int = 1, reused: bool = False) -> dict:
    """The row of a finished run (``reused``: read back from its folder, nothing trained)."""
    return _row(run, summary=summary, attempts=attempts, config=cfg.to_dict(), **({"reused": True} if reused else {}))


def finished(row: dict) -> bool:
    """Did the run of ``row`` finish (it has a summary)? Not where it diverged or could not run (``status``)."""
    return "status" not in row


def require_finished(rows: dict[str, dict], what: str = "runs") -> dict[str, dict]:
    """``rows`` if every run finished; else one line naming each that did not and why (for callers that need
    them all: the demo, the benchmark's grid)."""
    unfinished = [f"{key} ({row['status']}: {row['error']})" for key, row in rows.items() if not finished(row)]
    if unfinished:
        raise IncompleteStudyError(f"{len(unfinished)} of {len(rows)} {what} did not finish: {'; '.join(unfinished)}")
    return rows


def execute(run: GridRun, study_dir: str, retries: int = 1, quiet: bool = True) -> dict:
    """Train (or reuse / resume) one run; a crash is retried from its last checkpoint. A run whose loss or weights
    became NaN/inf gets a row saying so (``status: diverged``; the same seed diverges again, so retrying cannot
    help), and the grid goes on without it."""
    cfg = resolve(run, Path(study_dir))
    for attempt in range(retries + 1):
        try:
            summary, reused = train_or_reuse(cfg, quiet=quiet)
            # reused: finished there already (its row was lost or damaged), read back, nothing trained
            return _finished_row(run, cfg, summary, attempt + 1, reused)
        except NonFiniteLossError as err:
            return _row(run, status="diverged", error=one_line(err), attempts=attempt + 1, config=cfg.to_dict())
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


def with_teacher_views(runs: list[GridRun], study_dir: Path) -> list[GridRun]:
    """``train.teacher_cache: auto`` made ``true`` in the runs that share one table of teacher views (the same
    teacher, data and runtime; engine/teacher_views.py) where their epochs between them exceed its views and the
    table fits in ``AUTO_MAX_BYTES``: they build it together, then look their teacher's logits up in it.
    Seeds share it: the table holds every view of every image. The results are the same bits either way."""
    groups: dict[str, list[int]] = {}
    cfgs = {}
    for i, run in enumerate(runs):
        if (run.config.get("train") or {}).get("teacher_cache", "auto") != "auto":
            continue
        cfg = cfgs[i] = resolve(run, study_dir)
        if teacher_views.unusable(cfg):
            continue
        t = cfg.train
        group = json.dumps([cfg.model.teacher_checkpoint, cfg.data.model_dump(), t.device, t.precision,
                            t.channels_last, t.compile, t.fast_teacher, t.int8_teacher, t.threads], default=str)
        groups.setdefault(group, []).append(i)
    out = list(runs)
    for members in groups.values():
        cfg = cfgs[members[0]]
        spec = DATASETS[cfg.data.dataset]
        images = cfg.data.train_subset or spec.num_train
        padding = spec.padding_for(cfg.data.crop_padding)
        epochs = sum(cfgs[i].optim.total_epochs for i in members)
        views = teacher_views.views_drawn(padding, cfg.data.flip)
        if (len(members) < 2 or images is None or spec.num_classes is None
                or not teacher_views.pays(epochs, padding, cfg.data.flip)
                or teacher_views.table_bytes(images, views, spec.num_classes, "fp32") > teacher_views.AUTO_MAX_BYTES):
            continue
        for i in members:
            out[i] = dataclasses.replace(runs[i], config=merge(runs[i].config, {"train": {"teacher_cache": True}}))
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


def _threads(run: GridRun) -> int:
    return (run.config.get("train") or {}).get("threads") or 1


def _holds_row(row: dict, cfg) -> bool:
    """Does ``cfg``'s run directory still hold the run ``row`` reports (a finished run: its summary and its
    checkpoint; a diverged one: the mark the trainer left when it stopped)? Not where a re-run set it aside and was
    interrupted, where it was removed, or where it ran again since."""
    if row.get("status") == "diverged":
        return (cfg.run_dir / DIVERGED).exists() and read_summary(cfg.run_dir) is None
    return finished(row) and read_summary(cfg.run_dir) == row.get("summary") and (cfg.run_dir / CHECKPOINT).exists()


def _row_difference(row: dict, cfg) -> list[str]:
    """How the config ``row`` was made with differs from ``cfg`` (``[]``: the same run). Rows written before rows
    carried their config are checked against the run directory's saved config. The row's config is read through
    today's schema first, so an option added since, at a default that keeps the old behaviour, is no
    difference."""
    if "config" in row:
        return stored_config_difference(row["config"], cfg)
    return saved_config_difference(cfg) or []


def _resolved(runs: list[GridRun], study_dir: Path, threads: int | None):
    """The runs as the grid runs them (thread counts explicit, shared teacher tables), each one's resolved config,
    and what each needs (:func:`dependencies`)."""
    runs = with_teacher_views(with_threads(runs, threads), study_dir)
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):
        raise ValueError("grid keys must be unique")
    configs = {run.key: resolve(run, study_dir) for run in runs}
    return runs, configs, dependencies(runs, configs, _run_dirs(configs))


@dataclass
class _Plan:
    """What a grid keeps and what it sets aside, decided before anything trains; a run in neither trains (a run
    killed midway is resumed)."""
    kept: dict[str, dict] = field(default_factory=dict)  # key -> its row: the run its folder holds, still current
    reusable: dict[str, dict] = field(default_factory=dict)  # key -> summary: finished and current, its row lost
    again: dict[str, str] = field(default_factory=dict)  # key -> why its folder is set aside and it trains anew


def _plan(runs: list[GridRun], configs: dict, rows: dict[str, dict], needs: dict[str, set[str]],
          rerun=()) -> _Plan:
    """How ``run_grid`` treats each run given ``results.jsonl``'s ``rows`` and :func:`dependencies`' ``needs``
    (``current_rows`` reads the same plan). A run is current where its folder holds a finished (or diverged) run of
    today's config, not named by ``rerun``, and the run it distils from keeps its weights: a teacher trained anew
    takes its students' folders with it, rows or not, since they were made with another teacher (one resumed
    after its last epoch, as where only its summary was lost, keeps them). A finished run whose row was lost is read
    back from its folder (``train_or_reuse``) on the same terms."""
    plan, teachers = _Plan(), set().union(*needs.values())
    same_weights = set()  # runs whose weights stay as they are: their students are still theirs
    for run in sorted(runs, key=lambda r: r.stage):  # a teacher before its students
        key, cfg = run.key, configs[run.key]
        row = rows.get(key)
        row = row if row is not None and _holds_row(row, cfg) else None
        summary = reusable_summary(cfg) if row is None else None
        if any(t not in same_weights for t in needs[key]):
            if cfg.run_dir.exists():
                plan.again[key] = "its teacher is trained anew; re-running it"
            continue
        if row is None and summary is None:  # never ran, or killed midway: it trains (train_or_reuse resumes it)
            if key in teachers and keeps_final_weights(cfg):
                same_weights.add(key)
            continue
        if any(fnmatch.fnmatchcase(key, p) for p in rerun):
            plan.again[key] = "re-running as asked"
        elif row is not None and (diff := _row_difference(row, cfg)):
            plan.again[key] = (f"finished with a different config ({'; '.join(diff[:3])}"
                               f"{'; ...' if len(diff) > 3 else ''}); re-running it")
        else:
            if row is not None:
                plan.kept[key] = row
            else:
                plan.reusable[key] = summary
            same_weights.add(key)
    return plan


def _check_subset_sizes(configs: dict) -> None:
    """A subset larger than its dataset's files stopped a grid at the first run asking it, after the stages before
    it had trained: the runs to train (``{key: config}``) are checked first, where the dataset is read in about a
    second."""
    sizes: dict[tuple, tuple[int, int]] = {}
    for key, cfg in configs.items():
        d = cfg.data
        if (d.train_subset or d.test_subset) and d.dataset in SIZED_BEFORE_A_GRID:
            where = (d.dataset, d.root, d.download)
            if where not in sizes:
                sizes[where] = tuple(len(load_dataset(d.dataset, split, root=d.root, download=d.download))
                                     for split in ("train", "test"))
            try:
                check_subset_sizes(cfg, *sizes[where])
            except ConfigError as err:
                raise ConfigError(f"run {key}: {err}") from None


def run_grid(runs: list[GridRun], study_dir: str | Path, *, executor: str = "local", address: str | None = None,
             retries: int = 1, quiet: bool = True, rerun: list[str] = (), threads: int | None = None,
             jobs: int | None = None, record: dict | None = None, note: str | None = None,
             log=print) -> dict[str, dict]:
    """Run what is not finished yet; ``rerun``: fnmatch patterns of keys to run again (e.g. ``cutnmix/*``).
    ``record``: written to ``STUDY/grid.json`` once this grid holds the folder (a study records its seeds, threads
    and data root there: the grid ``--report-only`` reports). ``note``: logged once the grid's input is checked (so
    that bad input is its one line alone), before any run starts.

    ``threads``: torch threads of each run that does not set ``train.threads`` (default: torch's default in
    this process). ``jobs``: runs side by side with the local executor (default: as many as the cores hold
    at that thread count); a Ray task asks for as many CPUs as its run has threads."""
    study_dir = Path(study_dir)
    runs, configs, needs = _resolved(runs, study_dir, threads)  # every config validated before any work starts
    keys = [r.key for r in runs]
    for dataset, root in sorted({(c.data.dataset, str(c.data.root)) for c in configs.values() if c.data.root}):
        check_root_exists(dataset, root)  # before the folder, its lock and runs/ are made
    unmatched = [p for p in rerun if not any(fnmatch.fnmatchcase(k, p) for k in keys)]
    if unmatched:
        raise MixdistillError(f"--rerun {', '.join(unmatched)} matches no run of this grid; keys look like {keys[0]}")
    # one invocation at a time per folder: a second one would re-run or set aside the runs the first is training
    with hold_lock(study_dir / GRID_LOCK, f"running a grid of {len(runs)} runs"):
        with hold_lock(study_dir / REPORT_LOCK, "removing what interrupted writes left", wait=True):
            remove_orphans(study_dir)  # what interrupted writes of results.jsonl or a report left, not a live one's
        if record is not None:
            write_json(study_dir / GRID_RECORD, record)
        results = ResultsFile(study_dir / "results.jsonl")
        results.set_aside_damaged()
        plan = _plan(runs, configs, results.read(), needs, rerun)
        for key, why in plan.again.items():
            moved = f"; old run moved to {set_aside(configs[key].run_dir)}" if configs[key].run_dir.exists() else ""
            log(f"{key}: {why}{moved}")
        done = dict(plan.kept)  # the runs plan.reusable names are read back by execute (train_or_reuse)
        skipped = sum(r.key in done for r in runs)
        if skipped:
            log(f"{skipped} of {len(runs)} runs already finished with this config; skipping them")
        if plan.reusable:
            log(f"no row in {results.path.name} (lost or damaged) for {counted(len(plan.reusable), 'run')} finished "
                "in the run folders: reading them back, not training them")
        # stable: grid order within a stage
        todo = sorted((r for r in runs if r.key not in done), key=lambda r: r.stage)
        _check_subset_sizes({r.key: configs[r.key] for r in todo})  # before its first stage trains
        if note:
            log(note)
        failed = {key for key, row in done.items() if not finished(row)}  # diverged in an earlier invocation
        if executor == "local":
            new_rows = _run_local(todo, needs, failed, study_dir, retries, quiet, jobs, log)
        elif executor == "ray":
            new_rows = _run_ray(todo, needs, failed, study_dir, address, retries, quiet, log) if todo else []
        else:
            raise MixdistillError(f"unknown executor '{executor}' (local, ray)")
        for row in new_rows:
            if row.get("status") != NOT_RUN:  # a run never started leaves no row: it runs once its teacher does
                results.append(row)
            done[row["key"]] = row
        return {k: done[k] for k in keys}


NOT_YET = "not run yet"  # --report-only: a run with no finished row for today's config


def current_rows(runs: list[GridRun], study_dir: str | Path, threads: int | None = None) -> dict[str, dict]:
    """What ``run_grid`` would reuse now (its :func:`_plan`), trained and written nothing: each current run's row (a
    finished run whose row was lost: read back from its folder); the others a row saying they have not run yet (or,
    a diverged teacher's students, that they will not)."""
    study_dir = Path(study_dir)
    runs, configs, needs = _resolved(runs, study_dir, threads)
    plan, out = _plan(runs, configs, ResultsFile(study_dir / "results.jsonl").read(), needs), {}
    for run in sorted(runs, key=lambda r: r.stage):  # a teacher before its students
        not_run = sorted(t for t in needs[run.key] if out[t].get("status") in ("diverged", NOT_RUN))
        if run.key in plan.kept:
            out[run.key] = plan.kept[run.key]
        elif run.key in plan.reusable:
            out[run.key] = _finished_row(run, configs[run.key], plan.reusable[run.key], reused=True)
        elif not_run:
            out[run.key] = _row(run, status=NOT_RUN, error=f"its teacher's run {', '.join(not_run)} did not finish")
        else:
            out[run.key] = _row(run, status=NOT_YET, error="no finished run with this config yet")
    return {run.key: out[run.key] for run in runs}


def worker_pool(workers: int):
    """A pool of ``workers`` spawned processes (a fresh interpreter each: torch's threads are not forked) that end
    when this process does (``exit_with_parent``)."""
    import concurrent.futures
    import multiprocessing

    return concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                                  initializer=start_worker, initargs=(os.getpid(),))


def start_worker(parent: int) -> None:
    """Worker initialiser: :func:`exit_with_parent`, and a worker that is done (the pool shut down) ends at once
    instead of tearing its interpreter down module by module (about a second with torch loaded, which the pool's
    shutdown, and so the grid, would wait for): its runs' files are written and closed by then; standard output,
    standard error and ``logging`` are flushed first."""
    import atexit
    import warnings

    exit_with_parent(parent)
    warnings.filterwarnings("ignore", message=re.escape(ENV_WARNING))  # the grid's own process said it once
    atexit.register(_end_now)  # atexit runs the last registered first: the handlers of later imports run before it


def _end_now() -> None:
    import logging
    import sys

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


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


def _run_dirs(configs: dict) -> dict[Path, str]:
    """Each run's directory (absolute) -> its key."""
    return {Path(os.path.abspath(cfg.run_dir)): key for key, cfg in configs.items()}


def _teacher_run(cfg, run_dirs: dict[Path, str]) -> str | None:
    """The key of the grid run whose directory holds ``cfg``'s teacher checkpoint, if there is one."""
    ckpt = cfg.model.teacher_checkpoint
    return run_dirs.get(Path(os.path.abspath(ckpt)).parent) if ckpt else None


def _teacher_used(cfg, run_dirs: dict[Path, str]) -> str | None:
    """The key of the grid run ``cfg`` distils from: its teacher's run where its method loads a teacher (a CE
    baseline given the same teacher path, as the studies give every student of a pair, does not load it)."""
    return _teacher_run(cfg, run_dirs) if getattr(METHODS.get_or_raise(cfg.method.name), "needs_teacher",
                                                  False) else None


def dependencies(runs: list[GridRun], configs: dict, run_dirs: dict[Path, str]) -> dict[str, set[str]]:
    """For each run, the runs it needs: the one it distils from (:func:`_teacher_used`; ``run_dirs``:
    ``_run_dirs(configs)``), which must be of an earlier stage (it has to finish before its students start)."""
    stage = {r.key: r.stage for r in runs}
    needs = {}
    for run in runs:
        teacher = _teacher_used(configs[run.key], run_dirs)
        if teacher is not None and stage[teacher] >= run.stage:
            raise ValueError(f"grid run {run.key} (stage {run.stage}) distils from run {teacher} (stage "
                             f"{stage[teacher]}): a teacher's stage must come before its students'")
        needs[run.key] = {teacher} if teacher is not None else set()
    return needs


NOT_RUN = "not run"  # the status of a run whose teacher did not finish (never persisted)


def _in_dependency_order(todo, needs, fits, submit, wait_one, log, failed=(), starts=None):
    """Start runs in order (earlier stages first, then grid order) once the runs they need have finished and
    ``fits(run, running)`` says there is room beside the runs running; a run that waits for room is not overtaken
    by later ones (one that waits for its teacher is). Yields each run's row as it ends. ``submit(run)`` returns a
    handle, ``wait_one(handles)`` the handle of one finished run and its row (raising the run's error).
    A run that needs one that did not finish (it diverged, or is in ``failed``) is not started: its row says why
    (``status: not run``), and the runs that need it in turn follow. ``starts``: a line as each run starts too,
    ``"counted"`` (one run at a time: its number is the one it ends with) or ``"running"`` (side by side: how many
    run, it included)."""
    waiting, unfinished, running, failed = list(todo), {r.key for r in todo}, {}, set(failed)
    n = 0
    while waiting or running:
        for run in list(waiting):
            if needs[run.key] & failed:
                waiting.remove(run)
                unfinished.discard(run.key)
                failed.add(run.key)
                n += 1
                why = f"its teacher's run {', '.join(sorted(needs[run.key] & failed))} did not finish"
                log(f"[stage {run.stage}] {n}/{len(todo)} not run {run.key}: {why}")
                yield _row(run, status=NOT_RUN, error=why)
                continue
            if needs[run.key] & unfinished:
                continue
            if running and not fits(run, list(running.values())):
                break
            waiting.remove(run)
            if starts == "counted":
                log(f"[stage {run.stage}] {n + len(running) + 1}/{len(todo)} {run.key}")
            elif starts == "running":
                log(f"[stage {run.stage}] started {run.key} ({len(running) + 1} running)")
            running[submit(run)] = run
        if not running:
            continue
        handle, row = wait_one(list(running))
        run = running.pop(handle)
        unfinished.discard(run.key)
        n += 1
        if finished(row):
            log(f"[stage {run.stage}] {n}/{len(todo)} {'read back' if row.get('reused') else 'finished'} {run.key}")
        else:
            failed.add(run.key)
            log(f"[stage {run.stage}] {n}/{len(todo)} {row['status']} {run.key}: {row['error']}")
        yield row


def _run_local(todo, needs, failed, study_dir, retries, quiet, jobs, log):
    """Runs side by side in worker processes: ``jobs`` at a time, or (``jobs`` None) as many as the cores hold at
    their thread counts. One after another in this process when only one fits at a time."""
    cores = available_cpus()
    workers = min(len(todo), jobs or max(1, cores // min((_threads(r) for r in todo), default=1)))
    if workers <= 1:
        rows = {}

        def run_here(run):
            rows[run.key] = execute(run, str(study_dir), retries, quiet)
            return run.key

        yield from _in_dependency_order(todo, needs, lambda run, running: not running, run_here,
                                        lambda keys: (keys[0], rows.pop(keys[0])), log, failed, starts="counted")
        return
    import concurrent.futures

    def fits(run, running):
        if jobs:
            return len(running) < jobs
        return sum(_threads(r) for r in running) + _threads(run) <= cores

    def wait_one(futures):
        finished, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_COMPLETED)
        future = next(f for f in futures if f in finished)  # the earliest submitted of those finished
        return future, future.result()  # a run's MixdistillError (bad input) stops the grid here, as in one process

    log(f"{len(todo)} runs, " + (f"{jobs} side by side" if jobs else f"side by side on {cores} cores by their threads"))
    busiest = sum(sorted((_threads(r) for r in todo), reverse=True)[:workers])
    if jobs and busiest > cores:  # torch threads contending for cores slow every run down many times over
        widest = max(_threads(r) for r in todo)
        fits = (f"--jobs {cores // widest} fits them" if widest <= cores else
                f"one run alone asks for {widest}: lower --threads (or train.threads) to {cores} or fewer")
        log(f"note: {workers} runs side by side ask for up to {busiest} threads on {cores} cores: each runs slower "
            f"than alone; {fits}")
    pool = worker_pool(workers)
    try:
        yield from _in_dependency_order(todo, needs, fits,
                                        lambda run: _submit(pool, execute, run, str(study_dir), retries, quiet),
                                        wait_one, log, failed, starts="running")
    except BaseException:  # Ctrl-C or a run's error: the runs still going stop now (each resumes from its checkpoint)
        _terminate_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _terminate_workers(pool, wait_s: float = 30.0) -> None:
    """Stop a process pool's workers now and wait until they have ended (so that none still holds its run's lock
    or writes when the grid's error is raised): ``terminate_workers`` where Python has it (3.14; it no longer
    lets the pool's ``shutdown`` wait for them), else each process of the pool's private table."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    if hasattr(pool, "terminate_workers"):
        pool.terminate_workers()
    else:
        for process in processes:
            process.terminate()
    for process in processes:
        process.join(wait_s)


def _submit(pool, *call):
    """``pool.submit(*call)`` with SIGINT blocked in this thread: the workers it starts inherit the mask (across
    exec), so a Ctrl-C reaches this process alone, which stops them, instead of each worker printing a traceback
    from wherever it was, often importing torch. A Ctrl-C or SIGTERM meanwhile (delivered through the pool's other
    threads) is held until the submit is done, then handled as it would have been: raised inside it, it cut a
    worker's start-up data short (EOFError there). (SIGTERM is not blocked: the pool stops its workers with it.)"""
    import signal
    import threading

    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return pool.submit(*call)
    held = []
    handlers = {sig: signal.signal(sig, lambda sig, _: held.append(sig)) for sig in (signal.SIGINT, signal.SIGTERM)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return pool.submit(*call)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for sig, handler in handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        if held:
            signal.raise_signal(held[0])  # its own handler now: KeyboardInterrupt, Terminated, or the default


def _check_ray_address(address: str | None) -> None:
    """A HOST:PORT (or ray://HOST:PORT) where nothing listens: ray.init retried it for minutes, in C++ code that
    SIGTERM could not stop."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise MixdistillError(f"--address {address}: give the head node's HOST:PORT (e.g. 10.0.0.5:6379), "
                              "ray://HOST:PORT, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as err:
        raise MixdistillError(f"--address {address}: no Ray cluster answers there ({err.strerror or err}); is "
                              "`ray start --head` running on it?") from None


def _check_ray_resources(todo, nodes: list[dict], address: str | None) -> None:
    """A run asking more CPUs or GPUs than any one node has (a task runs on one node) would wait for them forever,
    saying nothing. ``nodes``: ``ray.nodes()``."""
    where = f"the largest node of the Ray cluster at {address}" if address else "this machine's Ray instance"
    alive = [node.get("Resources", {}) for node in nodes if node.get("Alive")]
    for run in todo:
        for kind, asked in (("CPU", run.config["train"]["threads"]), ("GPU", run.num_gpus or 0)):
            most = max((resources.get(kind, 0) for resources in alive), default=0)
            if asked > most:
                option = "--threads (or train.threads)" if kind == "CPU" else "--gpus-per-run"
                raise MixdistillError(f"run {run.key} asks for {asked} {kind}s and {where} has {most:g}: it would "
                                      f"never start; lower {option}")


def _run_ray(todo, needs, failed, study_dir, address, retries, quiet, log):
    import signal
    import threading

    try:
        import ray
    except ImportError:
        raise MixdistillError("--executor ray needs Ray: pip install 'mixdistill[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        _check_ray_address(address)
        before = signal.getsignal(signal.SIGTERM)
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": available_cpus()}))
        if before is not None and threading.current_thread() is threading.main_thread():
            # ray.init installs its own, which dumped its C++ stack and exited 15: SIGTERM stops the study as Ctrl-C
            signal.signal(signal.SIGTERM, before)  # does (the CLI's), and the finally below shuts Ray down
    try:
        _check_ray_resources(todo, ray.nodes(), address)
    except MixdistillError:
        if started_here:
            ray.shutdown()
        raise
    remote = ray.remote(execute)

    def submit(run):
        return remote.options(num_cpus=run.config["train"]["threads"], num_gpus=run.num_gpus,
                              max_retries=0).remote(run, str(study_dir), retries, quiet)

    def wait_one(refs):
        ready, _ = ray.wait(refs, num_returns=1)
        try:
            return ready[0], ray.get(ready[0])
        except ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, MixdistillError):
                raise err.cause from None
            raise

    try:  # every run whose teacher is done is submitted at once: Ray packs them by the CPUs they ask for
        yield from _in_dependency_order(todo, needs, lambda run, running: True, submit, wait_one, log, failed)
    finally:
        if started_here:
            ray.shutdown()
