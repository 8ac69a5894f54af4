"""``mixdistill demo``: train a teacher, then CE and KD students over a few seeds, print a table.

The sizes live in ``resources/demo.yaml``. The demo is a two-stage grid (teacher, then students), so
re-running it skips finished runs and resumes an interrupted one.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mixdistill.config import merge
from mixdistill.resources import demo_config
from mixdistill.studies.common import mean_std
from mixdistill.studies.grid import GridRun, checkpoint_of, require_finished, run_grid
from mixdistill.tables import print_table


def demo_grid(output_dir: str, seeds: int, data_root: str | None, quick: bool) -> list[GridRun]:
    spec = demo_config()
    common = merge(spec["common"], {"data": {"root": data_root}})
    teacher = merge(common, spec["teacher"])
    students = {k: v for k, v in spec["students"].items() if k != "methods"}
    if quick:
        teacher = merge(teacher, spec["quick"]["teacher"])
        students = merge(students, spec["quick"]["students"])
    runs = [GridRun("teacher", teacher, stage=0, labels={"role": "teacher"})]
    teacher_ckpt = checkpoint_of(output_dir, runs[0].key)
    for seed in range(seeds):
        for method_name, method in spec["students"]["methods"].items():
            tree = merge(merge(common, students), {"seed": seed, "method": method,
                                                   "model": {"teacher_checkpoint": teacher_ckpt}})
            runs.append(GridRun(f"{method_name}/seed{seed}", tree, stage=1,
                                labels={"role": "student", "method": method_name, "seed": seed}))
    return runs


def run_demo(output_dir: str = "runs/demo", seeds: int = 3, data_root: str | None = None, quick: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    runs = demo_grid(output_dir, seeds, data_root, quick)
    teacher_model = runs[0].config["model"]["student"]
    student_model = runs[1].config["model"]["student"]
    header = [f"[bold]mixdistill demo[/bold]: teacher {teacher_model}, students {student_model} (CE and KD, "
              f"{seeds} seeds) on Fashion-MNIST; runs in {Path(output_dir).resolve()}"]

    def log(line: str | None) -> None:  # the header once the grid holds its folder (a folder in use: its error alone)
        while header:
            console.print(header.pop(), soft_wrap=True)
        # markup=False: the grid's lines start with '[stage N]', which rich would take for a style tag and drop
        if line is not None:
            console.print(line, markup=False, soft_wrap=True)

    rows = run_grid(runs, output_dir, quiet=False, log=log)
    log(None)
    rows = require_finished(rows, "demo runs")  # the demo compares every seed of both methods
    teacher = rows["teacher"]["summary"]
    results: dict[str, list[float]] = {}
    student_images = None
    for run in runs[1:]:
        summary = rows[run.key]["summary"]
        results.setdefault(run.labels["method"], []).append(summary["last_acc"])
        student_images = summary["train_images"]

    table = Table(title="Fashion-MNIST test accuracy (%, last epoch)")
    table.add_column("model")
    table.add_column("train images", justify="right")
    table.add_column("per seed", justify="right")
    table.add_column("mean ± std" if seeds > 1 else "accuracy", justify="right")
    table.add_row(f"teacher {teacher_model} (CE)", str(teacher["train_images"]),
                  f"{teacher['last_acc']:.2f}", f"{teacher['last_acc']:.2f}")
    for method_name, accs in results.items():
        table.add_row(f"student {student_model} ({method_name.upper()})", str(student_images),
                      " ".join(f"{a:.2f}" for a in accs), mean_std(accs))  # one seed: no ±, it has no spread
    print_table(table, console)
    gain = statistics.mean(results["kd"]) - statistics.mean(results["ce"])
    wins = sum(k > c for k, c in zip(results["kd"], results["ce"]))
    verdict = (f"KD beats CE by {gain:.2f} points on the mean of {seeds} seed(s)" if gain > 0 else
               f"KD did NOT beat CE this time ({gain:+.2f} points on the mean of {seeds} seed(s))")
    console.print(f"{verdict}; KD is ahead on {wins} of {seeds} seed(s).", soft_wrap=True)  # one line in a log
    console.print(f"Every run with its config and 95% interval: mixdistill results {output_dir}", markup=False,
                  soft_wrap=True)  # a path that can be copied whole
    return 0
