"""``mixdistill results DIR...``: a table of the runs below some directories, the seeds of one config pooled.

Runs are grouped by their config with ``seed``, ``name``, ``output_dir`` and the keys that do not change a result
(the resume-free keys: paths, logging, the teacher cache) left out, so ``seed=1 name=kd_seed1`` and
``seed=2 name=kd_seed2`` fall into one row. The first column names what differs between the rows (what a sweep
varied), written as the overrides that set it (``method=kd method.temperature=4``); then the accuracies over the
row's finished runs: the mean last-epoch top-1 (the number a run reports; ``--metric`` picks another number of
``summary.json``, e.g. an online method's ``last_acc_ensemble``) with its 95% t-interval and standard deviation,
the mean best top-1 and top-5. A run without ``summary.json`` is counted as unfinished, with the last
epoch it logged, and left out of the means.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections import Counter
from pathlib import Path

from mixdistill.config import metric_lower_is_better
from mixdistill.engine.run import DIVERGED, RESUME_FREE_KEYS, SUMMARY, RunRecord, find_runs
from mixdistill.errors import ConfigError
from mixdistill.files import write_text
from mixdistill.studies.stats import counted, mean_ci, mean_ci_text
from mixdistill.tables import print_table

NOT_GROUPED = {"seed", "name", "output_dir"} | RESUME_FREE_KEYS


def flat(tree: dict, prefix: str = "") -> dict[str, object]:
    """A config tree as ``{dotted key: value}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def run_settings(record: RunRecord) -> dict[str, object]:
    """The flat config of ``record`` and ``processes``, its torchrun world size (from its summary; 1 until it
    finishes): its floats depend on it (each rank draws and normalises its own share; ``--resume`` refuses another
    count), yet config.yaml does not hold it."""
    environment = (record.summary or {}).get("environment")
    processes = environment.get("processes") if isinstance(environment, dict) else None
    return {**flat(record.config), "processes": processes if isinstance(processes, int) and processes > 1 else 1}


def group_key(record: RunRecord) -> str:
    return json.dumps({k: v for k, v in run_settings(record).items() if k not in NOT_GROUPED}, sort_keys=True,
                      default=str)


def varying_keys(configs: list[dict[str, object]], leave_out: set[str]) -> list[str]:
    """The dotted keys that take more than one value among the configs that have them, the method and the
    augmentation first, then in config order. A method's (an augmentation's) parameter varies only where runs of
    one method (augmentation) differ in it: KD's ce_weight 0.1 and DKD's 1.0 are each method's default, not a
    difference between the rows."""
    keys = list(dict.fromkeys(["method.name", "augment.name"] + [k for c in configs for k in c]))
    return [k for k in keys if k not in leave_out and _varies(configs, k)]


def _varies(configs: list[dict[str, object]], key: str) -> bool:
    section = key.split(".", 1)[0]
    owner = f"{section}.name" if section in ("method", "augment") and key != f"{section}.name" else None
    values: dict[object, set[str]] = {}
    for c in configs:
        if key in c:
            values.setdefault(c.get(owner) if owner else None, set()).add(json.dumps(c[key], default=str))
    return any(len(v) > 1 for v in values.values())


def _value(v) -> str:
    return v if isinstance(v, str) else json.dumps(v)


def settings(config: dict[str, object], keys: list[str]) -> str:
    """``keys`` of a flat config as the overrides that set them (``method=kd model.student=cnn5_w8``; a section's
    ``name`` as the section's switch); unset (None) keys left out."""
    return " ".join(f"{k.removesuffix('.name')}={_value(config[k])}" for k in keys if config.get(k) is not None)


def _real(v) -> bool:
    """A number a summary may be averaged over: not None, a string or a bool that a damaged file holds, not NaN."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _number(v, digits: int = 2) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, (int, float)) and not isinstance(v, bool) else repr(v)


def _fmean(values) -> float | None:
    values = [v for v in values if _real(v)]
    return statistics.fmean(values) if values else None


def _epochs(record: RunRecord) -> str:
    """An unfinished run's status: 'epoch 3/15' (killed, or still running), 'diverged after epoch 3/15', 'epoch 15/15,
    summary.json damaged' (finished, but its summary cannot be read: `train --resume` writes it again)."""
    optim = record.config.get("optim", {})
    total = optim.get("epochs", 0) * optim.get("epoch_factor", 1)
    diverged = "diverged after " if (record.path / DIVERGED).exists() else ""
    damaged = ", summary.json damaged" if (record.path / SUMMARY).exists() else ""
    return f"{diverged}epoch {record.last_epoch or 0}/{total}{damaged}"


def _status(record: RunRecord) -> str:
    return "done" if record.summary is not None else _epochs(record)


def collect(roots: list[str | Path], unreadable: list[Path] | None = None) -> list[RunRecord]:
    records, seen = [], set()
    for root in roots:
        for record in find_runs(root, unreadable):
            if record.path.resolve() not in seen:
                seen.add(record.path.resolve())
                records.append(record)
    if not records:
        raise ConfigError(f"no run directories (a folder with config.yaml) below {', '.join(map(str, roots))}")
    return records


def best_first(metric: str):
    """A sort key for (row, value) pairs: the best value first (lowest for a loss), rows without one last."""
    sign = 1 if metric_lower_is_better(metric) else -1
    return lambda pair: (pair[1] is None, 0 if pair[1] is None else sign * pair[1])


def _digits(metric: str) -> int:
    return 4 if metric_lower_is_better(metric) else 2  # a loss near 0.3 needs more than a percentage


def _header(metric: str) -> str:
    return "last top-1 %" if metric == "last_acc" else metric


def summary_numbers(records: list[RunRecord]) -> list[str]:
    """The numbers the runs' summaries hold (``last_acc``, ``best_acc``, ``last_acc_ensemble``, ...), in order."""
    return list(dict.fromkeys(k for r in records for k, v in (r.summary or {}).items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "seed"))


def records_with(roots: list[str | Path], metric: str, option: str = "--metric",
                 unreadable: list[Path] | None = None) -> list[RunRecord]:
    """The runs below ``roots`` (default ``runs``), once at least one of them has finished with a ``metric`` in its
    summary (none finished yet: no check); ``option`` names the argument in the error; folders whose config.yaml
    cannot be read are added to ``unreadable``."""
    records = collect(list(roots) or ["runs"], unreadable)
    if any(r.summary for r in records) and metric not in summary_numbers(records):
        raise ConfigError(f"{option} {metric}: no finished run's summary.json holds it; they hold "
                          f"{', '.join(summary_numbers(records)) or 'nothing yet'}")
    return records


def groups(records: list[RunRecord], sort: str = "path", metric: str = "last_acc") -> list[dict]:
    """One dict per config, seeds pooled (what a row of the table shows, as numbers): ``config`` (the overrides
    that set what differs between the groups, "" when nothing does), ``differs`` (those keys and values),
    ``run_dirs``, ``seeds``, ``finished`` and ``unfinished`` (counts), ``metric``, ``values`` (the finished runs'
    ``metric``, in run order), ``repeated_seeds`` (seeds more than one of them ran), ``mean`` with ``ci`` (its 95%
    t-interval) and ``std`` (both None below two values, or where a seed repeats: not independent replicates), and
    the means of ``best_acc`` and ``last_top5``. ``sort="acc"``: the best mean first (the lowest for a loss)."""
    by_config: dict[str, list[RunRecord]] = {}
    for record in records:
        by_config.setdefault(group_key(record), []).append(record)
    configs = [run_settings(g[0]) for g in by_config.values()]
    keys = varying_keys(configs, NOT_GROUPED)
    out = []
    for config, runs in zip(configs, by_config.values()):
        done = [r.summary for r in runs if r.summary is not None]
        values = [s[metric] for s in done if _real(s.get(metric))]
        counted = Counter(r.config.get("seed") for r in runs if r.summary and _real(r.summary.get(metric)))
        repeated = sorted((seed for seed, n in counted.items() if n > 1), key=str)
        mean, low, high = mean_ci(values)
        out.append({"config": settings(config, keys), "differs": {k: config.get(k) for k in keys},
                    "run_dirs": [str(r.path) for r in runs], "seeds": [r.config.get("seed") for r in runs],
                    "finished": len(done), "unfinished": len(runs) - len(done), "metric": metric, "values": values,
                    "without": len(done) - len(values),  # finished, their summary holding no number for metric
                    "repeated_seeds": repeated, "mean": mean if values else None,
                    "ci": None if math.isnan(low) or repeated else (float(low), float(high)),
                    "std": statistics.stdev(values) if len(values) > 1 and not repeated else None,
                    "best_acc": _fmean(s.get("best_acc") for s in done),
                    "last_top5": _fmean(s.get("last_top5") for s in done)})
    if sort == "acc":
        out.sort(key=lambda g: best_first(metric)((g, g["mean"])))
    return out


def _mean_ci_cell(group: dict, digits: int) -> str:
    """``84.97 [84.68, 85.26]``; no interval where a seed repeats: runs of one seed are not independent replicates
    (the same seed run twice, e.g. under two names)."""
    if group["mean"] is not None and group["repeated_seeds"]:
        return (f"{group['mean']:.{digits}f} (no CI: seed {', '.join(map(str, group['repeated_seeds']))} in more "
                f"than one run)")
    return mean_ci_text(group["mean"], group["ci"], digits)


def group_rows(records: list[RunRecord], sort: str = "path", metric: str = "last_acc"
               ) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): :func:`groups` as the table shows them."""
    found = groups(records, sort, metric)
    differs = bool(found and found[0]["differs"])
    rows = [([g["config"]] if differs else []) +
            [f"{g['finished']}" + (f" ({g['without']} without a {g['metric']})" if g["without"] else "")
             + (f" (+{g['unfinished']} unfinished)" if g["unfinished"] else ""),
             ",".join(str(seed) for seed in g["seeds"]), _mean_ci_cell(g, _digits(metric)),
             _number(g["std"], _digits(metric)), _number(g["best_acc"]), _number(g["last_top5"])] for g in found]
    columns = (["config (what differs)"] if differs else []) + ["runs", "seeds", f"{_header(metric)} [95% CI]", "std",
                                                                "best top-1 %", "top-5 %"]
    return columns, rows


def collect_results(*dirs: str | Path, metric: str = "last_acc", sort: str = "path") -> list[dict]:
    """``mixdistill results DIR...`` as data: :func:`groups` of the runs below ``dirs`` (default ``runs``).
    Bad input (no run below them, a ``metric`` no summary holds) raises the ConfigError the command prints."""
    if sort not in ("path", "acc"):
        raise ConfigError(f"sort must be 'path' or 'acc', got {sort!r}")
    dirs = tuple(d for item in dirs for d in (item if isinstance(item, (list, tuple)) else [item]))  # a list too
    bad = [d for d in dirs if not isinstance(d, (str, Path))]
    if bad:
        raise ConfigError(f"collect_results takes folders (str or Path), got {type(bad[0]).__name__}")
    return groups(records_with(dirs, metric, "metric"), sort, metric)


def run_rows(records: list[RunRecord], sort: str = "path", metric: str = "last_acc"
             ) -> tuple[list[str], list[list[str]]]:
    """(columns, rows): one row per run; ``metric``: the summary number shown (and sorted by)."""
    configs = [run_settings(r) for r in records]
    keys = varying_keys(configs, NOT_GROUPED)
    rows = []
    for record, config in zip(records, configs):
        s = record.summary or {}
        best = "-" if s.get("best_acc") is None else f"{s['best_acc']:.2f} ({s.get('best_epoch')})"
        rows.append(([str(record.path)] + ([settings(config, keys)] if keys else []) +
                     [_value(config.get("seed")), _number(s.get(metric), _digits(metric)), best,
                      _number(s.get("last_top5")), _number(s.get("train_time_s"), 0),
                      _status(record)],
                     s.get(metric)))
    if sort == "acc":
        rows.sort(key=best_first(metric))
    columns = ["run"] + (["config (what differs)"] if keys else []) + ["seed", _header(metric),
                                                                      "best top-1 % (epoch)", "top-5 %", "time s",
                                                                      "status"]
    return columns, [row for row, _ in rows]


def csv_text(records: list[RunRecord]) -> str:
    """Every run as a CSV row: its directory, whether it finished and its status as the per-run table says it (e.g.
    'diverged after epoch 3/15'), every config key, every number its summary holds (``last_acc``,
    ``best_acc``, an online method's ``last_acc_ensemble``, ...; empty until it finishes)."""
    configs = [run_settings(r) for r in records]
    keys = list(dict.fromkeys(k for c in configs for k in c))
    fields = summary_numbers(records)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run_dir", "finished", "status", "last_epoch"] + keys + fields)
    for record, config in zip(records, configs):
        s = record.summary or {}
        writer.writerow([str(record.path), record.summary is not None, _status(record), record.last_epoch] +
                        [json.dumps(config.get(k)) if isinstance(config.get(k), (list, dict)) else config.get(k)
                         for k in keys] + [s.get(f) for f in fields])
    return out.getvalue()


def results_command(roots: list[str], per_run: bool = False, sort: str = "path", csv_path: str | None = None,
                    metric: str = "last_acc") -> int:
    from rich.table import Table

    unreadable: list[Path] = []
    records = records_with(roots, metric, unreadable=unreadable)
    columns, rows = (run_rows if per_run else group_rows)(records, sort, metric)
    written = write_text(Path(csv_path), csv_text(records)) if csv_path else None  # a path it cannot write: one line
    finished = sum(r.summary is not None for r in records)
    table = Table(title=f"{counted(len(records), 'run')} ({finished} finished) below {', '.join(roots or ['runs'])}")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console = print_table(table, markup=False)
    if unreadable:
        console.print(f"note: left out {counted(len(unreadable), 'folder')} whose config.yaml cannot be read: "
                      + ", ".join(map(str, unreadable[:3])) + (", ..." if len(unreadable) > 3 else ""),
                      markup=False, soft_wrap=True)
    as_written = [r for r in records if r.config_error]
    if as_written:
        one = len(as_written) == 1
        console.print(f"note: {counted(len(as_written), 'run')} listed as "
                      f"{'its config.yaml reads' if one else 'their config.yaml files read'}, which "
                      f"{'does' if one else 'do'} not validate here: "
                      + "; ".join(f"{r.path} ({r.config_error})" for r in as_written[:3])
                      + ("; ..." if len(as_written) > 3 else ""), markup=False, soft_wrap=True)
    if written:
        console.print(f"wrote {written}", markup=False, soft_wrap=True)
    return 0
