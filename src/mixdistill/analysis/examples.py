"""Example figures of the analysis module from tiny real runs (CPU, a few minutes on 2 cores).

    python -m mixdistill.analysis.examples OUTDIR [--workdir DIR] [--epochs 2]

1. Writes a synthetic Fashion-MNIST lookalike (2,000 train / 500 test images).
2. Trains a teacher (cnn5_w8, CE) and, for each of several views, a student with wang2022's KD + view
   (``kd_view``) from that teacher.
3. For each view measures the teacher's T. stddev on the training set under that view (the student
   frozen) and plots it against the student's test loss: ``OUTDIR/tstddev_vs_student_loss.png``.
4. Runs the ``analyze`` command on the CutMix student (with its teacher and a t-SNE):
   ``OUTDIR/reliability_diagram.png``, ``OUTDIR/tsne.png`` (its full report stays in the work folder).

The numbers mean little at this scale (two epochs, synthetic data); the figures show what the module
draws. ``docs/figures/`` holds the output of this script.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from mixdistill.analysis.command import analyze
from mixdistill.analysis.teacher_stats import plot_tstddev_vs_loss, teacher_statistics
from mixdistill.augment import augment_params, make_augment
from mixdistill.config import load_config
from mixdistill.data import DeviceLoader, load_dataset
from mixdistill.data.synthetic import write_fashion_like
from mixdistill.engine.run import open_run
from mixdistill.engine.trainer import train

VIEWS = ["identity", "flip", "crop_flip", "cutout", "mixup", "cutmix", "cutmix_pick"]
VIEW_PARAMS = {"cutout": {"size": 8}, "cutmix_pick": {"criterion": "teacher_entropy"}}
CONFIGS = Path(__file__).resolve().parents[3] / "configs"

# the two configs this script starts from, for when it runs outside a source checkout
_FALLBACK = {
    "fmnist_cpu_teacher.yaml": """name: fmnist_teacher_cnn5_w32
seed: 0
data: {dataset: fashion_mnist, batch_size: 128, eval_batch_size: 1000, crop_padding: 2, flip: true}
model: {student: cnn5_w32}
method: {name: ce}
optim: {lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, epochs: 4, schedule: onecycle, milestones: []}
""",
    "fmnist_cpu.yaml": """name: fmnist_kd_cnn5_w8
seed: 0
data: {dataset: fashion_mnist, train_subset: 10000, batch_size: 128, eval_batch_size: 1000, crop_padding: 2, flip: true}
model: {student: cnn5_w8, teacher_checkpoint: runs/fmnist_teacher_cnn5_w32/last.pt}
method: {name: kd, temperature: 4.0, ce_weight: 0.1, kd_weight: 0.9}
optim: {lr: 0.1, momentum: 0.9, weight_decay: 5.0e-4, epochs: 10, schedule: onecycle, milestones: []}
""",
}


def _config(name: str, work: Path) -> str:
    path = CONFIGS / name
    if path.is_file():
        return str(path)
    path = work / name
    path.write_text(_FALLBACK[name])
    return str(path)


def _train(config: str, overrides: list[str]) -> None:
    train(load_config(config, overrides), quiet=True)


def make_examples(out_dir: str | Path, work_dir: str | Path, epochs: int = 2, seed: int = 0) -> dict[str, Path]:


    out_dir, work = Path(out_dir), Path(work_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    data_root = write_fashion_like(work / "data", 2000, 500, seed=seed)
    runs = work / "runs"
    common = [f"data.root={data_root}", f"output_dir={runs}", "model.student=cnn5_w8", f"optim.epochs={epochs}",
              "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.precision=fp32",
              "data.batch_size=64", "data.eval_batch_size=500", f"seed={seed}"]

    teacher_dir = runs / "teacher"
    if not (teacher_dir / "summary.json").exists():
        _train(_config("fmnist_cpu_teacher.yaml", work), [*common, "name=teacher"])
    teacher_ckpt = teacher_dir / "last.pt"

    def build(ckpt: Path):
        return open_run(ckpt).model()

    teacher = build(teacher_ckpt)
    train = load_dataset("fashion_mnist", "train", root=data_root)
    spec = train.spec
    names, stds, losses = [], [], []
    for view in VIEWS:
        run = runs / f"student_{view}"
        if not (run / "summary.json").exists():
            _train(_config("fmnist_cpu.yaml", work),
                   [*common, f"name=student_{view}", "method.name=kd_view", f"augment.name={view}",
                    f"model.teacher_checkpoint={teacher_ckpt}", "data.train_subset=null",
                    *(f"augment.{k}={v}" for k, v in VIEW_PARAMS.get(view, {}).items())])
        summary = json.loads((run / "summary.json").read_text())
        params = dict(VIEW_PARAMS.get(view, {}))
        if "mean" in augment_params(view):
            params.update(mean=spec.mean, std=spec.std)
        augment = None if view == "identity" else make_augment(view, **params)
        loader = DeviceLoader(train.images, train.labels, batch_size=64, mean=spec.mean, std=spec.std,
                              shuffle=True, drop_last=True, crop_padding=spec.crop_padding, flip=True, seed=seed)
        stats = teacher_statistics(teacher, loader, augment, student=build(run / "last.pt"), epochs=epochs, seed=seed)
        names.append(view)
        stds.append(stats["t_stddev"])
        losses.append(summary["last_test_loss"])
        aug_entropy = stats["entropy_augmented"] or float("nan")
        print(f"{view:12s} T. stddev {stats['t_stddev']:.6f}  teacher entropy orig {stats['entropy_original']:.4f} "
              f"aug {aug_entropy:.4f}  student test loss {summary['last_test_loss']:.4f}  "
              f"acc {summary['last_acc']:.2f}")

    figures = {
        "tstddev": plot_tstddev_vs_loss(
            stds, losses, names, out_dir / "tstddev_vs_student_loss.png",
            title=f"T. stddev vs student test loss (cnn5_w8 -> cnn5_w8, {epochs} epochs, synthetic data)"),
    }
    result = analyze(runs / "student_cutmix", out=work / "analysis", tsne=True, seed=seed, fgsm=[0.0, 0.02],
                     pgd=[0.02], pgd_steps=5)
    for key in ("reliability", "tsne"):
        src = Path(result["paths"][key])
        figures[key] = Path(shutil.copyfile(src, out_dir / src.name))
    (work / "tstddev_points.json").write_text(json.dumps(
        {"views": names, "t_stddev": stds, "student_test_loss": losses}, indent=2))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mixdistill.analysis.examples", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", help="where the PNGs go (e.g. docs/figures)")
    parser.add_argument("--workdir", default=None,
                        help="keep data, runs and the full report here (default: a temp dir)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.workdir:
        figures = make_examples(args.out_dir, args.workdir, args.epochs, args.seed)
    else:
        with tempfile.TemporaryDirectory(prefix="mixdistill-examples-") as tmp:
            figures = make_examples(args.out_dir, tmp, args.epochs, args.seed)
    for path in figures.values():
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
