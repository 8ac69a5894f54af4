"""Runs per hour of ``mixdistill bench``'s grid case against the code the speed issue was filed on.

The speed issue asks for the study-scale grid at >= 2x "the runs/hour of one-at-a-time default runs". The bench's
grid case reads that as today's code with the earlier defaults (its ``one_at_a_time``). This script measures the
other reading too: the same runs one at a time on the code of the day the issue was filed (commit ``FILED_ON``,
2026-11-23, the last before the issue's work; its committed AVX2 figure, 1.20x, is the one the issue quotes), with
that code's own defaults (all cores, no compile on a CPU, channels-last with bf16) and its own grid runner.

Each round times, in alternating order, each in a fresh folder:

* **filed_day**: the grid's runs one at a time, in a subprocess importing the filed-day ``src/`` (extracted with
  ``git archive`` from this repository's history) through its own ``studies.grid.run_grid``;
* **one_at_a_time** and **grid**: exactly as ``mixdistill bench --cases grid`` times them (``bench.grid``).

Every way is timed from the grid runner's call to its return (the subprocess's Python start-up and imports are not
counted; the grid's worker processes' are, as in the bench). One short run of each way first warms the page cache
and, for ``grid``, the compile decision. The ratios are medians over rounds of the per-round ratios of runs per
hour. Writes ``grid_filed_day_<tag>.json/.md`` (not ``bench_*``: these rows come from two versions of the code).

    PYTHONPATH=src python benchmarks/grid_filed_day.py [--rounds 3] [--runs 4] [--epochs 45] --tag cpu_KIND \\
        [--out docs/results]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from mixdistill.bench.grid import STEPS_PER_EPOCH, _runs, _time_grid, grid_inputs
from mixdistill.files import write_json, write_text
from mixdistill.machine import available_cpus, cpu_name

FILED_ON = "9d7e51f"
REPO = Path(__file__).resolve().parent.parent
WAYS = ("filed_day", "one_at_a_time", "grid")

# Runs under the filed-day code: its run_grid over the given (key, config) pairs, one at a time in this process.
_FILED_DAY_RUNNER = """
import json, sys, time
from mixdistill.studies.grid import GridRun, run_grid
runs = [GridRun(key, config) for key, config in json.load(open(sys.argv[1]))]
started = time.perf_counter()
rows = run_grid(runs, sys.argv[2], log=lambda *_: None)
seconds = time.perf_counter() - started
assert len(rows) == len(runs) and all(r["summary"]["last_acc"] is not None for r in rows.values())
print(json.dumps({"seconds": seconds}))
"""


def _filed_day_src(tmp: Path) -> Path:
    archive = tmp / "filed_day.tar"
    subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", "-o", str(archive), FILED_ON, "src"],
                   check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "filed_day", filter="data")
    return tmp / "filed_day" / "src"


def _time_filed_day(src: Path, data_root: Path, ckpt: Path, n: int, epochs: int, folder: Path, precision: str,
                    ) -> float:
    # today's bench config without the train keys the grid leaves to defaults: the filed-day code's defaults apply
    runs = [(run.key, run.config) for run in _runs(data_root, ckpt, n, epochs, "grid", precision)]
    folder.mkdir(parents=True)
    (folder / "runs.json").write_text(json.dumps(runs))
    env = {**os.environ, "PYTHONPATH": str(src)}
    out = subprocess.run([sys.executable, "-c", _FILED_DAY_RUNNER, str(folder / "runs.json"), str(folder / "grid")],
                         env=env, cwd=folder, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def measure(rounds: int, n: int, epochs: int, precision: str, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = _filed_day_src(tmp)
        data_root, ckpt = grid_inputs(tmp, seed)

        def time_way(way: str, runs: int, folder: Path) -> float:
            if way == "filed_day":
                return _time_filed_day(src, data_root, ckpt, runs, epochs, folder, precision)
            return _time_grid(way, data_root, ckpt, runs, epochs, folder, precision)

        for way in WAYS:
            time_way(way, 1, tmp / f"warmup_{way}")
        seconds: dict[str, list[float]] = {way: [] for way in WAYS}
        for r in range(rounds):
            for way in (WAYS if r % 2 == 0 else WAYS[::-1]):
                seconds[way].append(time_way(way, n, tmp / f"round{r}_{way}"))
            print(f"[grid_filed_day] round {r + 1}: " + ", ".join(f"{w} {seconds[w][-1]:.1f} s" for w in WAYS),
                  flush=True)
    ratios = {ref: [a / b for a, b in zip(seconds[ref], seconds["grid"])] for ref in ("filed_day", "one_at_a_time")}
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu_name(), "cores": available_cpus(), "torch": torch.__version__, "filed_on": FILED_ON,
            "code": commit, "runs": n, "epochs": epochs, "steps_per_run": epochs * STEPS_PER_EPOCH,
            "precision": precision, "rounds": rounds, "seconds": seconds,
            "runs_per_hour": {w: 3600 * n / statistics.median(s) for w, s in seconds.items()},
            "ratio": {ref: statistics.median(v) for ref, v in ratios.items()},
            "ratio_range": {ref: [min(v), max(v)] for ref, v in ratios.items()}}


def markdown(g: dict) -> str:
    rows = {"filed_day": f"one at a time, code of {g['filed_on']} (the issue's day) with its defaults",
            "one_at_a_time": f"one at a time, code of {g['code']} with the earlier defaults (the bench's reference)",
            "grid": f"grid runner, code of {g['code']} with its defaults"}
    lines = [f"### {g['cpu']} ({g['cores']} cores), torch {g['torch']}", "",
             f"Grid: {g['runs']} KD runs cnn5_w16 -> cnn5_w8, {g['steps_per_run']:,} steps each, {g['precision']}, "
             f"{g['rounds']} rounds", "",
             "| way | seconds per grid (per round) | runs / hour |", "|---|---|---|",
             *[f"| {rows[w]} | {' / '.join(f'{s:.1f}' for s in g['seconds'][w])} | {g['runs_per_hour'][w]:.0f} |"
               for w in WAYS], ""]
    for ref in ("filed_day", "one_at_a_time"):
        lo, hi = g["ratio_range"][ref]
        lines.append(f"grid / {ref}: **{g['ratio'][ref]:.2f}x** runs per hour (median of the per-round ratios; "
                     f"range {lo:.2f}-{hi:.2f}x).")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=45)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tag", required=True)
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results")
    args = parser.parse_args()
    if min(args.rounds, args.runs, args.epochs) < 1:
        raise SystemExit("--rounds, --runs and --epochs must be at least 1")
    started = time.perf_counter()
    report = measure(args.rounds, args.runs, args.epochs, args.precision, args.seed)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out / f"grid_filed_day_{args.tag}.json", report)
    text = markdown(report)
    write_text(args.out / f"grid_filed_day_{args.tag}.md", text)
    print(text)


if __name__ == "__main__":
    main()
