"""``mixdistill study NAME --plan``: every run of a grid with its key, epochs and an estimate of its compute,
without training anything.

The estimate counts multiply-accumulates of one forward pass per image from the model zoo (``count_macs``
at the dataset's image size) and charges, per training image and epoch, 3 forward passes' worth of FLOPs for
every network that learns (forward + backward ≈ 3 forwards) and 1 for every frozen teacher pass, plus one
forward per test image and evaluation. FLOPs = 2 x MACs. GPU-hours divide by an effective rate (default
``DEFAULT_TFLOPS``); small CIFAR networks reach a small fraction of a GPU's peak, so the rate is stated with
the estimate and can be changed (``--plan-tflops``).
"""

from __future__ import annotations

import functools
from pathlib import Path

from mixdistill.config import build_config
from mixdistill.data.datasets import DATASETS
from mixdistill.models import count_macs, create_meta_model
from mixdistill.registry import METHODS
from mixdistill.teachers import TEACHERS

DEFAULT_TFLOPS = 20.0  # effective (not peak) bf16 TFLOP/s of one data-centre GPU on CIFAR-size networks
# Images per split of the datasets a study grid names (the published sizes); classes, channels and image size
# come from the dataset's spec.
DATASET_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "fashion_mnist": (60_000, 10_000),
                 "tiny_imagenet": (100_000, 10_000)}


@functools.lru_cache(maxsize=None)
def forward_macs(arch: str, num_classes: int, channels: int, size: int) -> int:
    model = create_meta_model(arch, num_classes=num_classes, in_channels=channels)
    return count_macs(model, (1, channels, size, size))


def _teacher_arch(cfg, arch_of_run: dict[str, str]) -> str | None:
    source = cfg.model.teacher_checkpoint
    if source is None:
        return None
    if cfg.model.teacher:
        return cfg.model.teacher
    if source in TEACHERS:
        return source
    return arch_of_run.get(Path(source).parent.name)  # a teacher trained earlier in the same grid


def _teacher_passes(cfg) -> int:
    """Frozen-teacher forward passes per training image: one per view the method feeds it (kd_view: the clean
    and the augmented batch; CutMixPick scores a pool of n_runs x B images)."""
    if cfg.augment.name == "cutmix_pick":
        return 1 + (cfg.augment.model_extra or {}).get("n_runs", 2)
    return 2 if "view" in cfg.method.name else 1


def plan_rows(runs, study_dir: Path) -> list[dict]:
    """One row per run: key, stage, dataset, networks, epochs, training images, estimated PFLOPs."""
    cfgs = [(run, build_config({**run.config, "output_dir": str(study_dir / "runs"), "name": run.run_name()}))
            for run in runs]
    arch_of_run = {run.run_name(): cfg.model.student for run, cfg in cfgs}
    rows = []
    for run, cfg in cfgs:
        d = cfg.data
        train_n, test_n = DATASET_SIZES.get(d.dataset, (None, None))
        if train_n is None:
            raise ValueError(f"--plan: no image count for dataset '{d.dataset}'")
        train_n = min(train_n, d.train_subset or train_n)
        test_n = min(test_n, d.test_subset or test_n)
        spec = DATASETS[d.dataset]
        channels, size, classes = spec.in_channels, spec.image_size, spec.num_classes
        method = METHODS.get_or_raise(cfg.method.name)
        if getattr(method, "online", False):
            learners = cfg.model.peers or [cfg.model.student] * cfg.method.params().peers
        else:
            learners = [cfg.model.student]
        teacher = _teacher_arch(cfg, arch_of_run) if getattr(method, "needs_teacher", False) else None
        macs = sum(forward_macs(a, classes, channels, size) for a in learners)
        per_image = 3 * macs + (_teacher_passes(cfg) * forward_macs(teacher, classes, channels, size) if teacher else 0)
        epochs = cfg.optim.total_epochs
        evals = -(-epochs // max(1, cfg.train.eval_every))
        flops = 2 * (epochs * train_n * per_image + evals * test_n * macs)
        rows.append({"key": run.key, "stage": run.stage, "dataset": d.dataset, "networks": "+".join(learners),
                     "teacher": teacher or "-", "method": cfg.method.name, "augment": cfg.augment.name,
                     "epochs": epochs, "train_images": train_n, "pflops": flops / 1e15})
    return rows


def plan_markdown(name: str, scale: str, rows: list[dict], tflops: float = DEFAULT_TFLOPS) -> str:
    total = sum(r["pflops"] for r in rows)
    hours = lambda pflops: pflops * 1e15 / (tflops * 1e12) / 3600  # noqa: E731
    lines = [f"# {name} at --scale {scale}: {len(rows)} runs (plan only, nothing trained)", "",
             f"Compute: forward MACs from the model zoo x (3 per learning network + 1 per frozen-teacher pass) per "
             f"training image and epoch, plus the evaluations; FLOPs = 2 x MACs. GPU-hours at an effective "
             f"{tflops:g} TFLOP/s (set with --plan-tflops).", "",
             "| run | stage | dataset | networks | teacher | method | augment | epochs | images | PFLOPs | GPU-h |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['key']} | {r['stage']} | {r['dataset']} | {r['networks']} | {r['teacher']} | {r['method']} | "
              f"{r['augment']} | {r['epochs']} | {r['train_images']} | {r['pflops']:.3g} | {hours(r['pflops']):.3g} |"
              for r in rows]
    lines += ["", f"**Total: {total:.1f} PFLOPs, about {hours(total):.1f} GPU-hours at {tflops:g} TFLOP/s.**"]
    return "\n".join(lines) + "\n"


def plan_study(name: str, *, scale: str, seeds, output_dir: str = "runs/studies", data_root=None,
               tflops: float = DEFAULT_TFLOPS) -> str:
    from mixdistill.studies import study_runs

    study_dir = Path(output_dir).expanduser() / f"{name}_{scale}"
    runs = study_runs(name, scale, seeds, study_dir, data_root)
    return plan_markdown(name, scale, plan_rows(runs, study_dir), tflops)
