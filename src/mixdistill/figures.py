"""The README's analysis figures, from real Fashion-MNIST runs (CPU).

    python -m mixdistill.figures OUTDIR [--workdir DIR] [--study DIR] [--data-root DIR]

1. Trains, or reuses, two runs of ``mixdistill demo`` (the same configs, from ``resources/demo.yaml``): the
   teacher (cnn5_w16, CE on the 60,000 training images, 3 epochs) and the seed-0 KD student (cnn5_w8, KD
   T = 4 on a 3,000-image subset, 15 epochs). ``--workdir`` is a demo output folder: given the folder of an
   earlier ``mixdistill demo --output-dir DIR``, its finished runs are reused when their configs match
   (as the demo reuses them; the teacher's thread count is part of its config, see ``--threads``).
2. Runs the ``analyze`` command (with ``--tsne``) on the teacher and on the KD student (with its teacher),
   on the full Fashion-MNIST test set: reports in ``WORKDIR/analysis/{teacher,kd_student}``. The student's
   reliability diagram and t-SNE go to ``OUTDIR/reliability_diagram.png`` and ``OUTDIR/tsne.png``.
3. Re-plots wang2022's teacher T. stddev against student test loss, one point per view (means over
   seeds), from a finished wang2022 study folder (``tstddev.json`` + ``results.jsonl``; default: the
   checkout's ``docs/results/studies/wang2022_cpu``): ``OUTDIR/tstddev_vs_student_loss.png``. Without such
   a folder (an installed copy) this figure is skipped.

Every title says what its figure shows: data, models, training sizes, and the measured numbers.
``--quick`` uses the demo's smoke-test sizes (for tests, not for figures worth showing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

from mixdistill.analysis.command import analyze
from mixdistill.analysis.teacher_stats import correlations, plot_tstddev_vs_loss

CHECKOUT_STUDY = Path(__file__).resolve().parents[2] / "docs" / "results" / "studies" / "wang2022_cpu"


def _sizes(summary: dict) -> str:
    return f"{summary['train_images']:,} train images, {summary['epochs']} epochs"


def demo_runs(work_dir: str | Path, data_root: str | None = None, quick: bool = False,
              threads: int | None = None) -> dict[str, dict]:
    """Train (or reuse) the demo's teacher and its seed-0 KD student in ``work_dir``; their grid rows by role."""
    from mixdistill.demo import demo_grid
    from mixdistill.studies.grid import require_finished, run_dir, run_grid

    runs = demo_grid(str(work_dir), 1, data_root, quick)
    teacher = runs[0]
    student = next(r for r in runs if r.labels.get("method") == "kd" and r.labels.get("seed") == 0)
    rows = require_finished(run_grid([teacher, student], work_dir, quiet=True, threads=threads, log=print))
    out = {}
    for role, run in (("teacher", teacher), ("kd_student", student)):
        row = rows[run.key]
        out[role] = {**row, "run_dir": str(run_dir(work_dir, run.key))}
    return out


def analyse_demo_runs(out_dir: Path, work_dir: Path, runs: dict[str, dict], seed: int = 0) -> dict:
    """``analyze --tsne`` on the teacher and the KD student; the student's figures copied to ``out_dir``."""
    teacher, student = runs["teacher"]["summary"], runs["kd_student"]["summary"]
    data = "Fashion-MNIST test set ({samples:,} images)"
    teacher_desc = f"teacher {teacher['student']} (CE, {_sizes(teacher)})"
    student_desc = f"KD student {student['student']} ({_sizes(student)}, seed {student['seed']})"
    metrics = {
        "teacher": analyze(runs["teacher"]["run_dir"], out=work_dir / "analysis" / "teacher", tsne=True, seed=seed,
                           titles={"reliability": f"{data}:\n{teacher_desc}\naccuracy {{accuracy:.2f}}%, "
                                                  f"ECE {{ece:.2f}}%",
                                   "tsne": f"{data}: penultimate features of the\n{teacher_desc},"
                                           f"\naccuracy {{accuracy:.2f}}%; a random subset"}),
        "kd_student": analyze(runs["kd_student"]["run_dir"], out=work_dir / "analysis" / "kd_student", tsne=True,
                              seed=seed,
                              titles={"reliability": f"{data}:\n{student_desc},\n{teacher_desc}\n"
                                                     f"accuracy {{accuracy:.2f}}%, ECE {{ece:.2f}}%",
                                      "tsne": f"{data}: penultimate features of the\n{student_desc},\n"
                                              f"teacher {teacher['student']}; accuracy {{accuracy:.2f}}%; a random subset"}),
    }
    figures = {}
    for key in ("reliability", "tsne"):
        src = Path(metrics["kd_student"]["paths"][key])
        figures[key] = Path(shutil.copyfile(src, out_dir / src.name))
    return {"metrics": metrics, "figures": figures}


def study_views(study_dir: str | Path) -> dict:
    """Per view of a finished wang2022 study: mean student test loss and mean teacher T. stddev over seeds.

    The runs are those with a T. stddev in ``tstddev.json`` (keys ``RUN_KEY/LENGTH/CHECKPOINT_MTIME``, one
    per view run; the newest entry wins if a run has several), matched to their rows in ``results.jsonl``;
    a view's name is its method's without the ``view_`` / ``kd_`` prefix."""
    study_dir = Path(study_dir)
    cache = json.loads((study_dir / "tstddev.json").read_text())
    rows = {}
    for line in (study_dir / "results.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            rows[row["key"]] = row
    stddev, lengths = {}, set()
    for key, value in cache.items():  # insertion order: the newest entry of a run comes last
        run_key, length, _mtime = key.rsplit("/", 2)
        stddev[run_key] = value
        lengths.add(length)
    views: dict[str, dict] = {}
    pairs, students, teachers = set(), set(), {}
    for run_key, value in stddev.items():
        row = rows.get(run_key)
        if row is None or "summary" not in row:
            continue  # a run no longer in the study, or one that ran again and did not finish
        labels, summary = row["labels"], row["summary"]
        name = labels["method"].removeprefix("view_").removeprefix("kd_")
        view = views.setdefault(name, {"t_stddev": [], "test_loss": [], "seeds": []})
        view["t_stddev"].append(value)
        view["test_loss"].append(summary["last_test_loss"])
        view["seeds"].append(labels.get("seed"))
        pairs.add(labels.get("pair"))
        students.add((summary["student"], summary["train_images"], summary["epochs"]))
    for row in rows.values():
        if row["labels"].get("role") == "teacher" and "summary" in row:  # a diverged run has none
            teachers[row["summary"]["student"]] = row["summary"]
    if not views:
        raise ValueError(f"{study_dir}: no run of tstddev.json is in results.jsonl")
    return {
        "views": list(views),
        "t_stddev": [statistics.fmean(v["t_stddev"]) for v in views.values()],
        "test_loss": [statistics.fmean(v["test_loss"]) for v in views.values()],
        "seeds": sorted({len(v["seeds"]) for v in views.values()}),
        "pairs": sorted(p for p in pairs if p), "students": sorted(students), "teachers": teachers,
        "lengths": sorted(lengths), "study": study_dir.name,
    }


def plot_study_views(study_dir: str | Path, path: str | Path) -> tuple[Path, dict]:
    v = study_views(study_dir)
    seeds = "/".join(str(n) for n in v["seeds"])
    pair = ", ".join(p.split("-")[1] + " of " + p.split("-")[0] if p.count("-") == 1 else p for p in v["pairs"])
    students = "; ".join(f"{n:,} images, {e} epochs" for _, n, e in v["students"])
    teacher = "; ".join(f"{name} CE, {s['train_images']:,} images, {s['epochs']} epochs"
                        for name, s in v["teachers"].items())
    length = ", ".join(f"{x[:-2]} epochs" if x.endswith("ep") else f"≥ {x} steps" for x in v["lengths"])
    r = correlations(v["t_stddev"], v["test_loss"])["pearson"][0]
    title = (f"Fashion-MNIST, {v['study']} study, {len(v['views'])} views; test loss on the full test set\n"
             f"KD students {pair} ({students})\n"
             f"teacher {teacher}\n"
             f"means over {seeds} seeds; T. stddev over {length}; Pearson r = {r:.2f}")
    return plot_tstddev_vs_loss(v["t_stddev"], v["test_loss"], v["views"], path, title=title), v


def make_examples(out_dir: str | Path, work_dir: str | Path, *, study_dir: str | Path | None = None,
                  data_root: str | None = None, quick: bool = False, threads: int | None = None,
                  seed: int = 0) -> dict[str, Path]:
    out_dir, work = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    runs = demo_runs(work, data_root, quick, threads)
    analysed = analyse_demo_runs(out_dir, work, runs, seed)
    figures = dict(analysed["figures"])
    record = {role: {"run_dir": row["run_dir"], "summary": row["summary"],
                     "accuracy": analysed["metrics"][role]["accuracy"],
                     "test_loss": analysed["metrics"][role]["test_loss"],
                     "calibration": analysed["metrics"][role]["calibration"]}
              for role, row in runs.items()}
    study = Path(study_dir) if study_dir else CHECKOUT_STUDY
    if (study / "tstddev.json").is_file():
        figures["tstddev"], record["tstddev_views"] = plot_study_views(study, out_dir / "tstddev_vs_student_loss.png")
    elif study_dir:
        raise FileNotFoundError(f"{study}: no tstddev.json (a finished wang2022 study folder has one)")
    else:
        print(f"no wang2022 study at {study} (not a source checkout?): tstddev_vs_student_loss.png skipped; "
              "pass --study DIR")
    (work / "examples.json").write_text(json.dumps(record, indent=2, default=str))
    for role, r in record.items():
        if role in runs:
            print(f"{role:10s} accuracy {r['accuracy']:.2f}%  test loss {r['test_loss']:.4f}  "
                  f"ECE {100 * r['calibration']['ece']:.2f}%")
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixdistill.figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="where the PNGs go (e.g. docs/figures)")
    parser.add_argument("--workdir", default="runs/demo",
                        help="the demo's output folder: its finished runs are reused, the rest trained there; the "
                             "analysis reports go to WORKDIR/analysis (default: runs/demo, as mixdistill demo)")
    parser.add_argument("--study", default=None,
                        help=f"a finished wang2022 study folder (default: {CHECKOUT_STUDY}, if there)")
    parser.add_argument("--data-root", default=None, help="Fashion-MNIST directory (default: as mixdistill demo)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the teacher run (default: torch's, as mixdistill demo; pass the "
                             "demo's to reuse a teacher it trained with another)")
    parser.add_argument("--quick", action="store_true", help="the demo's smoke-test sizes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE subsample")
    args = parser.parse_args(argv)
    figures = make_examples(args.out_dir, args.workdir, study_dir=args.study, data_root=args.data_root,
                            quick=args.quick, threads=args.threads, seed=args.seed)
    for path in figures.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
