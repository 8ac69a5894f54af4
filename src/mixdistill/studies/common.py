"""Shared pieces of the paper studies: the study config files, reference numbers, statistics."""

from __future__ import annotations

import copy
import statistics
from contextvars import ContextVar
from pathlib import Path

from mixdistill.analysis.plots import new_figure, save_figure
from mixdistill.data import DeviceLoader
from mixdistill.engine.run import METRICS, SUMMARY, open_run
from mixdistill.engine.runtime import cpu_has_native_bf16
from mixdistill.errors import ConfigError
from mixdistill.files import append_text
from mixdistill.machine import available_cpus, cpu_name
from mixdistill.resources import study_config
from mixdistill.studies.grid import run_dir
from mixdistill.studies.stats import Gate, counted, mean_ci


def load_study_config(name: str) -> dict:
    """resources/studies/NAME.yaml: the study's grid and scales, as data (a copy: callers may change it)."""
    return copy.deepcopy(study_config(name))


def scale_config(spec: dict, scale: str) -> dict:
    if scale not in spec["scales"]:
        raise ConfigError(f"unknown scale '{scale}'; this study has: {', '.join(spec['scales'])}")
    return spec["scales"][scale]


def mean_std(values, digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def replicates_text(seeds: list[int]) -> str:
    """'3 replicates each (seeds 0, 1, 2)'; '1 replicate each (seed 0)'."""
    return f"{counted(len(seeds), 'replicate')} each (seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))})"


def select(rows: dict, **labels) -> list[dict]:
    """The result rows whose labels match every ``labels`` item."""
    return [r for r in rows.values() if all(r["labels"].get(k) == v for k, v in labels.items())]


def by_seed(rows: dict, field: str = "last_acc", **labels) -> dict[int, float]:
    """seed -> ``summary[field]`` of the matching rows."""
    return {r["labels"]["seed"]: r["summary"][field] for r in select(rows, **labels)}


def plateau(run_dir: str | Path, window: int = 5) -> dict | None:
    """How much a finished run still moved over the last quarter of its schedule: the change of train
    accuracy (points) between the mean of the ``window`` epochs ending at 3/4 of the epochs and the mean of the
    last ``window`` epochs (one epoch's train accuracy on a small subset moves about a point from epoch to epoch at
    a constant learning rate, so single epochs would measure that noise), and the relative change of test loss
    (10k test images: no such noise) between the last evaluation at or before the 3/4 mark (one epoch of slack)
    and the last. None when the run has no evaluation there or at its end."""
    import json

    path = Path(run_dir) / METRICS
    history = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    if not history:
        return None
    last = history[-1]
    quarter = max(1, round(0.75 * last["epoch"]))
    evaluated = [h for h in history if "test_loss" in h and h["epoch"] <= quarter + 1]
    if not evaluated or "test_loss" not in last:
        return None
    mark = max(evaluated, key=lambda h: h["epoch"])

    def train_acc(upto: int) -> float:
        epochs = [h["train_acc"] for h in history if upto - window < h["epoch"] <= upto]
        return sum(epochs) / len(epochs)

    return {"train_acc_change": train_acc(last["epoch"]) - train_acc(quarter),
            "test_loss_change": (last["test_loss"] - mark["test_loss"]) / mark["test_loss"],
            "steps": last["step"], "from_epoch": mark["epoch"], "to_epoch": last["epoch"], "window": window}


def convergence_gate(rows: dict, study_dir: Path, max_acc: float = 1.0, max_loss: float = 0.02,
                     min_steps: int = 1000, window: int = 5, **labels):
    """Gate: the matching runs had at least ``min_steps`` SGD steps, and over the last quarter of their
    schedule their train accuracy moved less than ``max_acc`` points and their test loss less than
    ``max_loss`` (relative), median over runs."""
    matching = select(rows, **labels)
    moves = [plateau(run_dir(study_dir, r["key"]), window) for r in matching]
    moves = [m for m in moves if m is not None]
    what = ", ".join(f"{k}={v}" for k, v in labels.items()) or "every run"
    condition = (f"{what}: at least {min_steps} SGD steps; over the last quarter train accuracy (mean of {window} "
                 f"epochs) moves < {max_acc} point and test loss < {100 * max_loss:.0f}% (median over runs)")
    if not matching:  # every such run diverged or was not run: nothing measured, so untested, not failed
        return Gate(f"converged ({what})", condition, "no run finished", None)
    if not moves:
        return Gate(f"converged ({what})", condition, "no evaluation in the last quarter", False)
    acc = statistics.median(abs(m["train_acc_change"]) for m in moves)
    loss = statistics.median(abs(m["test_loss_change"]) for m in moves)
    steps = min(m["steps"] for m in moves)
    measured = f"{steps} steps; train acc {acc:.2f} points, test loss {100 * loss:.1f}% over epochs " \
               f"{moves[0]['from_epoch']}-{moves[0]['to_epoch']}"
    return Gate(f"converged ({what})", condition, measured, steps >= min_steps and acc < max_acc and loss < max_loss)


def test_logits(run_dir: str | Path, data_root: str | None = None):
    """(logits [N, C], penultimate features [N, D], labels [N]) of a finished run's final model on its test set
    (CPU, fp32)."""
    from mixdistill.analysis.command import collect_outputs

    opened = open_run(run_dir)
    split = opened.split("test", data_root)
    loader = DeviceLoader(split.images, split.labels, batch_size=1000, mean=split.spec.mean, std=split.spec.std,
                          shuffle=False, drop_last=False)
    outputs = collect_outputs(opened.model(), loader)
    return outputs["logits"], outputs["features"], split.labels


def test_outputs(run_dir: str | Path, data_root: str | None = None):
    """(softmax probabilities [N, C], penultimate features [N, D], labels [N]) of a finished run's final model
    on its test set (CPU, fp32)."""
    import torch

    logits, feats, labels = test_logits(run_dir, data_root)
    return torch.softmax(logits, 1), feats, labels


def plot_intervals(groups: dict[str, list[float]], path: str | Path, title: str,
                   ylabel: str = "test top-1 %", reference: tuple[str, float] | None = None) -> Path:
    """Mean and 95% t-interval per group, every seed as a faint dot; the axis spans the data (points and
    intervals need no zero baseline). ``reference``: (label, value) drawn as a dashed line."""
    import numpy as np


    names = list(groups)
    fig = new_figure(max(4.5, 1.0 + 0.7 * len(names)), 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for i, name in enumerate(names):
        values = np.asarray([v for v in groups[name] if v is not None], dtype=float)
        if len(values) == 0:  # every run of it diverged (the report lists them): say so where its point would be
            ax.annotate("no run\nfinished", (i, 0.5), xycoords=("data", "axes fraction"), ha="center", va="center",
                        fontsize=7, color="0.4")
            continue
        ax.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, s=9, color="0.6",
                   zorder=2)
        mean, low, high = mean_ci(list(values))
        if np.isfinite(low):
            ax.errorbar(i, mean, yerr=[[mean - low], [high - mean]], fmt="o", color="C0", capsize=4, zorder=3)
        else:
            ax.plot(i, mean, "o", color="C0", zorder=3)
    if reference:
        ax.axhline(reference[1], color="black", linestyle="--", linewidth=1, label=reference[0])
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title + "\n(mean and 95% CI over seeds; grey: each seed)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


OUTCOME_COLORS = {"reproduced": "C2", "inconclusive": "C1", "contrary": "C3", "none": "0.5"}


def plot_effects(findings, path: str | Path, title: str) -> Path:
    """Forest plot: each finding's effect and 95% CI (not Holm-adjusted; the colour is the verdict, which is) in
    its unit, a zero line, the paper's direction marked (an arrow towards the side the paper claims, or "paper: no
    effect"); one panel per unit. Long claims wrap."""
    import textwrap

    units = list(dict.fromkeys(f.unit for f in findings))
    labels = {id(f): textwrap.fill(f.claim, 62) for f in findings}
    lines = sum(labels[id(f)].count("\n") + 1 for f in findings)
    fig = new_figure(7.5, 1.0 + 0.3 * lines + 0.12 * len(findings) + 0.5 * len(units))
    heights = [sum(labels[id(f)].count("\n") + 1.4 for f in findings if f.unit == u) for u in units]
    grid = fig.add_gridspec(len(units), 1, height_ratios=heights, hspace=0.6)
    for k, unit in enumerate(units):
        ax = fig.add_subplot(grid[k])
        rows = [f for f in findings if f.unit == unit]
        for i, f in enumerate(reversed(rows)):
            e = f.effect
            color = OUTCOME_COLORS[f.outcome]
            if e.low == e.low:  # not NaN
                ax.plot([e.low, e.high], [i, i], color=color, linewidth=2)
            ax.plot(e.estimate, i, "o", color=color)
            text, right = ("paper: no effect", True) if f.no_effect_claim else (
                ("paper →", True) if f.sign > 0 else ("← paper", False))
            ax.annotate(text, (0, i + 0.3), xytext=(4 if right else -4, 0), textcoords="offset points",
                        ha="left" if right else "right", va="center", fontsize=6, color="0.4")
        ax.axvline(0, color="black", linewidth=0.8)
        # room beside the zero line for its "paper" labels on the side they are written (effects all on the other
        # side put the line at the panel's edge, and the label past the figure's)
        low, high = ax.get_xlim()
        room = 0.15 * (high - low)
        right = [f.no_effect_claim or f.sign > 0 for f in rows]
        ax.set_xlim(min(low, -room) if not all(right) else low, max(high, room) if any(right) else high)
        ax.set_yticks(range(len(rows)), [labels[id(f)] for f in reversed(rows)], fontsize=7)
        ax.set_ylim(-0.6, len(rows) - 0.2)
        ax.set_xlabel({"points": "effect (points of top-1 %)", "ECE": "effect (ECE)",
                       "r": "correlation (Pearson r or Spearman ρ, as the finding's test says)"}.get(unit, unit),
                      fontsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title + "\n95% CI, unadjusted; colour: the verdict (Holm-adjusted): green reproduced,\norange not "
                         "significant either way, red significantly against the claim, grey no verdict (a gate failed)",
                 fontsize=8)
    return save_figure(fig, path)


# the --jobs of the invocation writing a report (None: as many as the cores hold): a report that computes side by
# side (wang2022's T. stddev) takes no more workers than the user gave the grid
REPORT_JOBS: ContextVar[int | None] = ContextVar("report_jobs", default=None)


def record_timing(study_dir: Path, trained: int, wall_s: float, jobs_note: str) -> None:
    """Add this invocation's wall time and machine to STUDY/timing.jsonl (the report sums them)."""
    import json
    import time as _time

    import torch


    append_text(study_dir / "timing.jsonl", json.dumps({
        "finished": _time.strftime("%Y-%m-%d %H:%M:%S"), "runs_trained": trained, "wall_s": round(wall_s, 1),
        "cpu": cpu_name(), "cores": available_cpus(),
        "capability": torch.backends.cpu.get_cpu_capability(), "native_bf16": cpu_has_native_bf16(),
        "torch": torch.__version__, "executor": jobs_note}) + "\n")


def _current_invocations(entries: list[dict], study_dir: Path, rows: dict) -> dict[int, int]:
    """entry index -> how many of ``rows`` it trained: a run belongs to the first invocation that finished
    after its summary.json was written (runs superseded since, set aside, no longer count)."""
    import time as _time

    ends = [_time.mktime(_time.strptime(e["finished"], "%Y-%m-%d %H:%M:%S")) + 1 for e in entries]
    starts = [end - e["wall_s"] - 2 for end, e in zip(ends, entries)]
    counts: dict[int, int] = {}
    for key in rows:
        summary = run_dir(study_dir, key) / SUMMARY
        if not summary.exists():
            continue
        written = summary.stat().st_mtime
        i = next((i for i, end in enumerate(ends) if end >= written), None)
        if i is None or written < starts[i]:
            i = -1  # written outside the recorded invocations: by one interrupted (or still running): no time
        counts[i] = counts.get(i, 0) + 1
    return counts


def timing_markdown(study_dir: Path, rows: dict | None = None) -> list[str]:
    """The wall time and machine of the invocations that trained the runs in ``rows`` (all that trained any
    run when ``rows`` is None)."""
    import json

    path = study_dir / "timing.jsonl"
    entries = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    entries = [e for e in entries if e["runs_trained"]]
    counts = ({i: e["runs_trained"] for i, e in enumerate(entries)} if rows is None
              else _current_invocations(entries, study_dir, rows))
    unrecorded = counts.pop(-1, 0)
    entries = [e for i, e in enumerate(entries) if i in counts]
    if not entries and unrecorded:
        return [f"Wall time: not recorded ({unrecorded} run(s) of this report were trained by an invocation that was "
                "interrupted or is still running, which records no time).", ""]
    if not entries:
        return ["Wall time: not recorded (every run was reused).", ""]
    total = sum(e["wall_s"] for e in entries)
    machines = sorted({f"{e['cpu']} ({e['cores']} cores, {e['capability']}, "
                       f"{'native bf16' if e['native_bf16'] else 'no native bf16'}), torch {e['torch']}" for e in entries})
    executors = list(dict.fromkeys(e["executor"] for e in entries))  # each once: "local, 1 thread(s) ..." repeated
    line = (f"Wall time: {total / 60:.1f} min to train {sum(counts.values())} runs in "
            f"{len(entries)} invocation(s) ({'; '.join(executors)}), on {'; '.join(machines)}.")
    if len(entries) > 1:  # an invocation's wall time also paid for runs replaced since: say what each trained
        used = [n for i, n in sorted(counts.items())]
        line += " By invocation: " + "; ".join(
            f"{e['finished']}, {e['wall_s'] / 60:.1f} min, trained {e['runs_trained']} runs, {n} of them in this report"
            for e, n in zip(entries, used)) + "."
    if unrecorded:
        line += (f" {unrecorded} run(s) of this report were written outside these invocations (by one that was "
                 "interrupted or is still running, which records no time).")
    return [line, ""]
