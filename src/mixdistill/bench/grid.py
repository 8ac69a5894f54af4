"""``mixdistill bench --cases grid``: runs per hour of a study-scale grid, the project's grid runner with its
defaults against the same grid one run at a time with the defaults this project had before it ran runs
side by side.

The grid: ``--grid-runs`` KD runs (cnn5_w16 teacher -> cnn5_w8 student, the CPU-scale studies' pair; one per
seed) on a 3,000-image class-stratified subset of synthetic 28x28 Fashion-MNIST-shaped data in the real IDX
format, batch 128, ``--grid-epochs`` epochs (45: 1,035 SGD steps, the CPU studies' minimum), evaluated at the
end. The teacher has random weights (speed does not depend on them).

* **one_at_a_time**: ``run_grid`` with ``jobs=1`` (in this process), ``train.threads`` = torch's default here
  (all cores), ``train.compile=false``, ``train.channels_last`` on only with bf16, ``train.teacher_cache=false``:
  the earlier defaults.
* **grid**: ``run_grid`` with the defaults: 1 thread per run (the CPU-scale studies' ``threads_per_run``), as
  many runs side by side as the cores hold, ``train.compile=auto``, ``train.channels_last=auto``,
  ``train.teacher_cache=auto`` (which the grid runner turns on for these runs: they share one teacher; the table is
  built in every round, in its fresh folder, and counted; the report keeps, per round, the seconds the runs spent on
  it: ``table_s``).

Each round runs both in a fresh folder, in alternating order (load drift hits both alike); the ratio is the
median over rounds of the per-round ratio of runs per hour.

Each round also times (last, or first in the reversed rounds) **alone_1thread**: one run of the grid, with the
grid's defaults and 1 thread, alone on the machine. ``min(cores, runs)`` such runs side by side that did not slow
each other down would give the **ceiling** ``min(cores, runs) x (one_at_a_time's seconds per run) /
(alone_1thread's seconds)``: what running side by side can give here at these step times (a run alone does not
build a teacher table, so the grid's shared one can take it past this ceiling). grid / ceiling is how
much of it the grid runner gets (runs side by side share caches and memory bandwidth; the pool's start-up and the
runs' set-up are in it too).

Before the rounds one short run of one_at_a_time and of grid warms the caches both would have in a real grid
(the dataset files' page cache; for ``grid`` and alone_1thread the compile decision of this kind of run and
inductor's cache, measured once per machine, as a study pays it once).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

from mixdistill.config import DEFAULT_THREADS
from mixdistill.data.synthetic import write_fashion_like
from mixdistill.engine.runtime import resolve_runtime
from mixdistill.files import save_torch
from mixdistill.machine import available_cpus
from mixdistill.models import create_model
from mixdistill.studies.grid import GridRun, require_finished, run_grid

TEACHER, STUDENT = "cnn5_w16", "cnn5_w8"
TRAIN_IMAGES, BATCH_SIZE = 3000, 128
STEPS_PER_EPOCH = TRAIN_IMAGES // BATCH_SIZE


def _runs(data_root: Path, teacher_ckpt: Path, n: int, epochs: int, variant: str, precision: str) -> list[GridRun]:
    train = {"progress": False, "tensorboard": False, "device": "cpu", "eval_every": epochs, "precision": precision}
    if variant == "one_at_a_time":
        bf16 = resolve_runtime("cpu", precision, False, False).precision == "bf16"
        train.update(threads=DEFAULT_THREADS, compile=False, channels_last=bf16,  # the earlier rule
                     teacher_cache=False)
    tree = {"data": {"dataset": "fashion_mnist", "root": str(data_root), "train_subset": TRAIN_IMAGES,
                     "batch_size": BATCH_SIZE,
                     "eval_batch_size": 1000, "download": False},
            "model": {"student": STUDENT, "teacher_checkpoint": str(teacher_ckpt)},
            "method": {"name": "kd"},
            "optim": {"lr": 0.1, "epochs": epochs, "schedule": "onecycle", "milestones": []},
            "train": train}
    return [GridRun(f"kd/seed{seed}", {**tree, "seed": seed}) for seed in range(n)]


def _time_grid(variant: str, data_root: Path, ckpt: Path, n: int, epochs: int, folder: Path, precision: str,
               rows_out: list | None = None) -> float:
    """Seconds ``run_grid`` takes for the grid's ``n`` runs ``variant``'s way; their rows go to ``rows_out``."""
    threads = None if variant == "one_at_a_time" else 1
    jobs = None if variant == "grid" else 1
    started = time.perf_counter()
    rows = require_finished(run_grid(_runs(data_root, ckpt, n, epochs, variant, precision), folder, threads=threads,
                                     jobs=jobs, log=lambda *_: None))
    elapsed = time.perf_counter() - started
    assert len(rows) == n and all(r["summary"]["last_acc"] is not None for r in rows.values())
    if rows_out is not None:
        rows_out += rows.values()
    return elapsed


def table_seconds(rows) -> float:
    """Seconds of a grid spent on its shared teacher table: the longest any of its runs spent building views or
    waiting for them (the runs that build it do so side by side; 0 when no run used one)."""
    reports = [r["summary"].get("teacher_views") or {} for r in rows]
    return max((t.get("built_s", 0.0) + t.get("waited_s", 0.0) for t in reports), default=0.0)


def grid_inputs(tmp: Path, seed: int) -> tuple[Path, Path]:
    """The grid case's data (synthetic Fashion-MNIST-shaped IDX files) and its random-weight teacher checkpoint."""
    data_root = write_fashion_like(tmp / "fmnist", n_train=6000, n_test=1000, seed=seed)
    torch.manual_seed(seed)
    ckpt = save_torch({"model": create_model(TEACHER, 10, 1).state_dict(), "arch": TEACHER}, tmp / "teacher.pt")
    return data_root, ckpt


def time_kd_run_both_ways(ways: dict[str, Callable[[], None]], rounds: int, epochs: int, threads: int = 1,
                          precision: str = "bf16") -> str:
    """Time one run of the grid case (eager: ``train.compile=false``, with ``threads`` threads, through
    ``run_grid`` in this process) under two settings in alternating rounds; ``ways`` maps each setting's name
    (the reference first) to a callable that switches to it. Stops unless both ways end with the same test accuracy
    and test loss; returns the line that says how long each took."""
    ref, new = ways
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data_root, ckpt = grid_inputs(tmp, 0)
        seconds: dict[str, list[float]] = {ref: [], new: []}
        ends: dict[str, tuple] = {}
        for r in range(rounds):
            for way in ((new, ref) if r % 2 == 0 else (ref, new)):
                ways[way]()
                runs = _runs(data_root, ckpt, 1, epochs, "grid", precision)
                runs[0].config["train"]["compile"] = False
                started = time.perf_counter()
                row = require_finished(run_grid(runs, tmp / f"r{r}_{way}", threads=threads, jobs=1,
                                                log=lambda *_: None))[runs[0].key]
                seconds[way].append(time.perf_counter() - started)
                ends.setdefault(way, (row["summary"]["last_acc"], row["summary"]["last_test_loss"]))
    if ends[ref] != ends[new]:
        raise SystemExit(f"whole KD runs differ: {ref} {ends[ref]}, {new} {ends[new]}")
    a, b = statistics.median(seconds[ref]), statistics.median(seconds[new])
    per_round = " / ".join(f"{x:.1f}-{y:.1f}" for x, y in zip(seconds[ref], seconds[new]))
    return (f"whole KD run ({epochs * STEPS_PER_EPOCH:,} steps, {threads} thread(s), eager), {rounds} rounds: "
            f"{ref} {a:.1f} s, {new} {b:.1f} s (per round: {per_round}): x{a / b:.2f}; same test accuracy "
            f"({ends[new][0]}) and test loss ({ends[new][1]:.6f}) both ways")


def time_kd_run_with_and_without(switch: str, rounds: int, epochs: int, threads: int = 1) -> str:
    """:func:`time_kd_run_both_ways` with the environment variable ``switch`` (a C kernel's) at 0 ("ATen") and at 1
    ("ours"); it is unset afterwards."""
    def way(value: str):
        return lambda: os.environ.__setitem__(switch, value)

    try:
        return time_kd_run_both_ways({"ATen": way("0"), "ours": way("1")}, rounds, epochs, threads)
    finally:
        os.environ.pop(switch, None)


def grid_case(args, tmp: Path) -> dict:
    """Time both ways of running the grid, and one run alone; returns the report's ``grid`` entry."""
    n, epochs, rounds = args.grid_runs, args.grid_epochs, args.grid_rounds
    data_root, ckpt = grid_inputs(tmp, args.seed)
    for variant in ("one_at_a_time", "grid"):  # warm-up: one short run each (and the compile decision)
        _time_grid(variant, data_root, ckpt, 1, epochs, tmp / f"warmup_{variant}", args.precision)
    seconds: dict[str, list[float]] = {"one_at_a_time": [], "grid": [], "alone_1thread": []}
    table_s = []
    for r in range(rounds):
        order = ("one_at_a_time", "grid", "alone_1thread")
        order = order if r % 2 == 0 else order[::-1]
        for variant in order:
            runs, rows = (1 if variant == "alone_1thread" else n), []
            with tempfile.TemporaryDirectory(dir=tmp) as folder:
                seconds[variant].append(_time_grid(variant, data_root, ckpt, runs, epochs, Path(folder),
                                                   args.precision, rows))
            if variant == "grid":
                table_s.append(round(table_seconds(rows), 2))
        print(f"[bench] grid round {r + 1}: " + ", ".join(f"{v} {seconds[v][-1]:.1f} s" for v in seconds), flush=True)
    ratios = [a / b for a, b in zip(seconds["one_at_a_time"], seconds["grid"])]
    cores = available_cpus()
    side_by_side = min(cores, n)  # 1-thread runs the grid can run at once
    ceilings = [side_by_side * a / n / b for a, b in zip(seconds["one_at_a_time"], seconds["alone_1thread"])]
    per_hour = {v: 3600 * (1 if v == "alone_1thread" else n) / statistics.median(s) for v, s in seconds.items()}
    return {"runs": n, "epochs": epochs, "precision": args.precision, "steps_per_run": epochs * STEPS_PER_EPOCH,
            "rounds": rounds, "pair": f"{TEACHER} -> {STUDENT}", "cores": cores, "side_by_side": side_by_side,
            "seconds": seconds, "runs_per_hour": per_hour, "table_s": table_s,
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "ceiling": statistics.median(ceilings), "ceiling_range": [min(ceilings), max(ceilings)]}


def grid_markdown(g: dict) -> list[str]:
    return ["", f"### Grid: runs per hour ({g['runs']} KD runs {g['pair']}, {g['steps_per_run']} steps each, "
                f"{g['rounds']} rounds)", "",
            "| way | seconds per grid (per round) | runs / hour |", "|---|---|---|",
            *[f"| {v} | {' / '.join(f'{s:.1f}' for s in g['seconds'][v])} | {g['runs_per_hour'][v]:.0f} |"
              for v in ("one_at_a_time", "grid")], "",
            f"grid / one_at_a_time: **{g['ratio']:.2f}x** runs per hour (median of the per-round ratios; range "
            f"{g['ratio_range'][0]:.2f}-{g['ratio_range'][1]:.2f}x).", *_ceiling_lines(g), *_table_lines(g)]


def _table_lines(g: dict) -> list[str]:
    if "table_s" not in g:  # a report from before the table's seconds were kept
        return []
    return ["", f"Of each grid, its runs' shared teacher table (`train.teacher_cache`; the longest any run spent "
                f"building views or waiting for them): {' / '.join(f'{s:.1f}' for s in g['table_s'])} s."]


def _ceiling_lines(g: dict) -> list[str]:
    if "ceiling" not in g:  # a report from before the ceiling was measured
        return []
    return ["", f"One run alone with the grid's defaults and 1 thread: "
                f"{' / '.join(f'{s:.1f}' for s in g['seconds']['alone_1thread'])} s. Ceiling of running side by side "
                f"here ({g['side_by_side']} such runs at once, none slowing another): **{g['ceiling']:.2f}x** (range "
            f"{g['ceiling_range'][0]:.2f}-{g['ceiling_range'][1]:.2f}x); the grid runner got "
            f"{g['ratio'] / g['ceiling']:.0%} of it."]
