"""``mixdistill demo``: train a teacher, then CE and KD students over a few seeds, print a table.

The sizes live in ``resources/demo.yaml``. Re-running the demo reuses finished runs.
"""

from __future__ import annotations

import copy
import statistics
from importlib import resources
from pathlib import Path

import yaml

from mixdistill.config import build_config


def _merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def demo_configs(output_dir: str, seeds: int, data_root: str | None, quick: bool):
    spec = yaml.safe_load(resources.files("mixdistill").joinpath("resources/demo.yaml").read_text())
    common = _merge(spec["common"], {"output_dir": str(output_dir), "data": {"root": data_root}})
    teacher = _merge(common, spec["teacher"])
    students = {k: v for k, v in spec["students"].items() if k != "methods"}
    if quick:
        teacher = _merge(teacher, spec["quick"]["teacher"])
        students = _merge(students, spec["quick"]["students"])
    teacher_cfg = build_config(teacher)
    runs = []
    for seed in range(seeds):
        for method_name, method in spec["students"]["methods"].items():
            tree = _merge(_merge(common, students), {
                "name": f"{method_name}_seed{seed}", "seed": seed, "method": method,
                "model": {"teacher_checkpoint": str(teacher_cfg.run_dir / "last.pt")}})
            runs.append((method_name, build_config(tree)))
    return teacher_cfg, runs


def run_demo(output_dir: str = "runs/demo", seeds: int = 3, data_root: str | None = None, quick: bool = False) -> int:
    from rich.console import Console
    from rich.table import Table

    from mixdistill.engine.trainer import train_or_reuse

    console = Console()
    teacher_cfg, runs = demo_configs(output_dir, seeds, data_root, quick)
    console.print(f"[bold]mixdistill demo[/bold]: teacher {teacher_cfg.model.student}, "
                  f"students {runs[0][1].model.student} (CE and KD, {seeds} seeds) on Fashion-MNIST; "
                  f"runs in {Path(output_dir).resolve()}")
    teacher = train_or_reuse(teacher_cfg)
    results: dict[str, list[float]] = {}
    for method_name, cfg in runs:
        summary = train_or_reuse(cfg)
        results.setdefault(method_name, []).append(summary["last_acc"])
        student_images = summary["train_images"]

    table = Table(title="Fashion-MNIST test accuracy (%, last epoch)")
    table.add_column("model")
    table.add_column("train images", justify="right")
    table.add_column("per seed", justify="right")
    table.add_column("mean ± std", justify="right")
    table.add_row(f"teacher {teacher_cfg.model.student} (CE)", str(teacher["train_images"]),
                  f"{teacher['last_acc']:.2f}", f"{teacher['last_acc']:.2f}")
    for method_name, accs in results.items():
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        table.add_row(f"student {runs[0][1].model.student} ({method_name.upper()})", str(student_images),
                      " ".join(f"{a:.2f}" for a in accs), f"{statistics.mean(accs):.2f} ± {std:.2f}")
    console.print(table)
    gain = statistics.mean(results["kd"]) - statistics.mean(results["ce"])
    wins = sum(k > c for k, c in zip(results["kd"], results["ce"]))
    verdict = (f"KD beats CE by {gain:.2f} points on the mean of {seeds} seed(s)" if gain > 0 else
               f"KD did NOT beat CE this time ({gain:+.2f} points on the mean of {seeds} seed(s))")
    console.print(f"{verdict}; KD is ahead on {wins} of {seeds} seed(s).")
    return 0
