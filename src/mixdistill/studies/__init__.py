"""One study per paper: its grid (src/mixdistill/resources/studies/NAME.yaml), run by the grid runner, and its report."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

from mixdistill.errors import IncompleteStudyError, MixdistillError, UnknownNameError
from mixdistill.files import hold_lock, write_text

STUDIES = {"choi2023": "mixdistill.studies.choi2023", "das2020": "mixdistill.studies.das2020",
           "shen2022": "mixdistill.studies.shen2022", "wang2022": "mixdistill.studies.wang2022"}


def get_study(name: str):
    if name not in STUDIES:
        raise UnknownNameError("study", name, STUDIES)
    return importlib.import_module(STUDIES[name])


def study_runs(name: str, scale: str, seeds: list[int], study_dir: Path, data_root: str | None = None):
    """The runs of study ``name`` at ``scale``, with the scale's ``augment_params`` given to every run that takes
    them: what ``run_study`` trains and ``--plan`` lists."""
    from mixdistill.studies.common import load_study_config, scale_config
    from mixdistill.studies.grid import with_augment_params

    study = get_study(name)  # an unknown name: "did you mean", before its config is looked for
    sc = scale_config(load_study_config(name), scale)
    return with_augment_params(study.grid(scale, seeds, study_dir, data_root), sc.get("augment_params", {}))


def run_study(name: str, *, scale: str = "cpu", seeds: int | str | list[int] | None = None,
              output_dir: str = "runs/studies", executor: str = "local", address: str | None = None,
              data_root: str | None = None, gpus_per_run: float | None = None, rerun: list[str] = (),
              threads: int | None = None, jobs: int | None = None, report_only: bool = False, log=print) -> Path:
    """``seeds``: a count (5: seeds 0..4; the default), a range ("10-14"), a list ("3,7,9" or [3, 7, 9]).
    ``threads``: torch threads per run (default: the scale's ``threads_per_run``, else torch's default);
    ``jobs``: runs side by side with the local executor (default: as many as the cores hold).
    ``report_only``: the report of the runs finished so far, training nothing (a grid running in the same folder
    goes on); the others are listed as not run yet. It reports the grid last started in the folder (its seeds,
    threads and data root, which ``seeds``, ``threads`` and ``data_root`` may repeat but not change)."""
    from mixdistill.config import DEFAULT_THREADS
    from mixdistill.studies.common import REPORT_JOBS, load_study_config, record_timing, scale_config
    from mixdistill.studies.grid import REPORT_LOCK, ResultsFile, current_rows, finished, run_grid
    from mixdistill.studies.stats import parse_seeds

    name = name.lower() if isinstance(name, str) else name  # DAS2020, as the papers are cited
    study = get_study(name)
    sc = scale_config(load_study_config(name), scale)
    study_dir = Path(output_dir).expanduser() / f"{name}_{scale}"
    if executor == "ray":  # workers run in other directories (or on other nodes sharing the filesystem)
        study_dir = study_dir.resolve()
    seeds = None if seeds is None else parse_seeds(seeds)
    if report_only:  # the scale's threads_per_run is no --threads given: the grid may have run with others
        seeds, threads, data_root = reported_grid(study_dir, seeds, threads, data_root, sc.get("threads_per_run"))
    else:
        seeds, threads = seeds or parse_seeds(5), threads or sc.get("threads_per_run")
    runs = study_runs(name, scale, seeds, study_dir, data_root)
    for run in runs:  # the Ray resource request of each run
        run.num_gpus = (1 if scale == "full" else 0) if gpus_per_run is None else gpus_per_run
    results = study_dir / "results.jsonl"
    if report_only:
        if not results.exists():
            raise IncompleteStudyError(f"--report-only: {study_dir} has no finished run yet (no results.jsonl)")
        rows = current_rows(runs, study_dir, threads)
    else:
        rows_before = len(ResultsFile(results).rows())  # rows, not lines: the grid sets damaged lines aside
        started = time.perf_counter()
        dataset = runs[0].config["data"]["dataset"] if runs else None
        record = {"seeds": seeds, "threads": threads or DEFAULT_THREADS, "data_root": data_root,
                  "dataset": dataset, "data_found_in": _found_in(dataset, data_root)}
        one_seed = ("note: one seed: every paired test over seeds will read n/a (untested) in the report, and the "
                    "gates and findings resting on one with it; --seeds 2 or more tests them")  # before it trains
        rows = run_grid(runs, study_dir, executor=executor, address=address, rerun=rerun, threads=threads, jobs=jobs,
                        record=record, note=one_seed if len(seeds) == 1 else None, log=log)
        appended = ResultsFile(results).rows()[rows_before:]
        trained = sum(not row.get("reused") for row in appended)  # a row read back from its folder: not trained
        record_timing(study_dir, trained, time.perf_counter() - started,
                      f"{executor}, {threads or DEFAULT_THREADS} thread(s) per run"
                      + (f", {jobs} jobs" if jobs else ", jobs auto" if executor == "local" else ""))
    unfinished = {key: row for key, row in rows.items() if not finished(row)}
    if len(unfinished) == len(rows):
        hint = (" (its runs may have been made by an earlier version or with other options)" if report_only else "")
        raise IncompleteStudyError(f"none of the {len(rows)} runs finished ({_why(unfinished)}){hint}; no report "
                                   "written (an earlier one, if any, is left as it was)")
    # one report writer at a time, and a grid starting meanwhile does not take its temporary files for orphans
    jobs_set = REPORT_JOBS.set(jobs)
    try:
        with hold_lock(study_dir / REPORT_LOCK, "writing the report", wait=True):
            text = study.report({key: row for key, row in rows.items() if key not in unfinished}, study_dir, scale,
                                data_root)
            path = write_text(study_dir / "report.md", with_unfinished_runs(text, unfinished, len(rows)))
    finally:
        REPORT_JOBS.reset(jobs_set)
    log(f"report written to {path}")
    if unfinished:
        raise IncompleteStudyError(f"{len(unfinished)} of {len(rows)} runs did not finish ({_why(unfinished)}); the "
                                   f"report leaves them out and lists them: {path}")
    return path


def reported_grid(study_dir: Path, seeds: list[int] | None, threads: int | None, data_root: str | None,
                  scale_threads: int | None = None):
    """--report-only's seeds, threads per run and data root: those of the grid last started in ``study_dir`` (its
    ``grid.json``), which the ones given may repeat (seeds in any order); another value would report other runs, and
    that report would replace the grid's. A folder from before grids recorded them: the ones given (seeds: 5,
    threads: the scale's ``scale_threads``)."""
    from mixdistill.errors import ConfigError
    from mixdistill.studies.grid import GRID_RECORD

    path = study_dir / GRID_RECORD
    if not path.exists():
        return (seeds or list(range(5))), threads or scale_threads, data_root
    try:
        record = json.loads(path.read_text())
        grid = record["seeds"], record["threads"], record["data_root"]
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ConfigError(f"--report-only: cannot read {path} ({type(err).__name__}: {err}); running the study "
                          "again writes it") from None
    asked = {"--seeds": (seeds and sorted(seeds), sorted(grid[0]), seeds and ",".join(map(str, seeds))),
             "--threads": (threads, grid[1], threads)}
    changed = [f"{flag} {shown}" for flag, (given, recorded, shown) in asked.items()
               if given is not None and given != recorded]
    # --data-root may name the grid's own, or the folder the grid's dataset was found in (its data root's, or the
    # default search's, as grid.json records it since 2026-12-05)
    found = record.get("data_found_in")
    if data_root is not None and not (
            (grid[2] is not None and _absolute(data_root) == _absolute(grid[2]))
            or (found is not None and _found_in(record.get("dataset"), data_root) == found)):
        changed.append(f"--data-root {data_root}")
    if changed:
        seeds_text = ",".join(map(str, grid[0]))
        raise ConfigError(f"--report-only reports the grid last started in {study_dir} (seeds {seeds_text}, "
                          f"{grid[1]} thread(s) per run, data root {grid[2] or 'default'}); "
                          f"{' and '.join(changed)} would report other runs over its report: leave "
                          f"{'it' if len(changed) == 1 else 'them'} out, or run the study with "
                          f"{'it' if len(changed) == 1 else 'them'} (finished runs are reused)")
    return grid


def _found_in(dataset: str | None, data_root: str | None) -> str | None:
    """The folder ``dataset``'s files are read from, with ``data_root`` (None: the default search), or None where
    they are not there (yet: the first run downloads them)."""
    if dataset is None:
        return None
    from mixdistill.data.datasets import find_root

    try:
        return _absolute(str(find_root(dataset, data_root, download=False)))
    except MixdistillError:
        return None


def _absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))


def _why(unfinished: dict) -> str:
    """'2 diverged, 5 not run'."""
    counts: dict[str, int] = {}
    for row in unfinished.values():
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return ", ".join(f"{n} {status}" for status, n in counts.items())


def with_unfinished_runs(text: str, unfinished: dict, total: int) -> str:
    """The report ``text`` with a section before its gates listing the runs that did not finish (each with why),
    which its tables, tests and figures leave out."""
    if not unfinished:
        return text
    lines = [f"## Runs that did not finish: {len(unfinished)} of {total}", "",
             "Every table, test and figure below leaves them out: a paired comparison counts the seeds where both of "
             "its arms finished (its test column says how many), a gate or finding with no run left has no verdict. "
             "A diverged run (its loss or weights became NaN or infinite) diverges again with the same config and "
             "seed, so the study does not retry it; `--rerun PATTERN` runs it again, and a changed config does.", "",
             "| run | status | why |", "|---|---|---|"]
    lines += [f"| {key} | {row['status']} | {row['error'].replace('|', '/')} |" for key, row in unfinished.items()]
    section = "\n".join(lines) + "\n\n"
    at = text.find("\n## ")
    return text + "\n" + section if at < 0 else text[:at + 1] + section + text[at + 1:]
