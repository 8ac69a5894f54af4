"""``mixdistill study NAME --plan``: every run of a grid with its key, epochs and an estimate of its compute,
without training anything.

The compute of a run is counted, not modelled: the run's own method is built and its ``prepare`` (a teacher-logit
cache, a FitNets hint stage), one training step (``forward_train``, then the backward of the summed losses) and one
evaluation (``evaluation_logits``) are run under
``torch.utils.flop_counter`` on ``PLAN_BATCH`` random images of the dataset's shape, on the CPU, with the teacher's
architecture at random weights. So whatever a method runs is counted as it runs it: a kd_view student's two passes,
CutMixPick's scored pool, branches sharing one trunk pass (ONE, OKDDip, PCL), mean or EMA teachers, and a backward
only where something learns. (The meta device would compute nothing, but its batch norm runs as Python
decompositions under the counter, slower than the CPU at this batch, and some steps read values.) Runs that differ
only in their seed share one count: about half a second per distinct run, a few for the largest networks. FLOPs
per run = epochs x training images x the step's FLOPs per image + evaluations x test images x the evaluation's +
``prepare``'s (see :class:`RunWork`). GPU-hours divide by an effective rate (default ``DEFAULT_TFLOPS``); small
CIFAR networks reach a small fraction of a GPU's peak, so the rate is stated with the estimate and can be changed
(``--plan-tflops``).
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from mixdistill.config import RunConfig, build_config
from mixdistill.data.datasets import DATASETS
from mixdistill.distill.base import StepInfo, TrainSet
from mixdistill.engine.build import augmented_by_loader, build_distiller, stand_in_teacher
from mixdistill.errors import ConfigError
from mixdistill.registry import METHODS
from mixdistill.teachers import TEACHERS

DEFAULT_TFLOPS = 20.0  # effective (not peak) bf16 TFLOP/s of one data-centre GPU on CIFAR-size networks
PLAN_BATCH = 4  # the counted step's batch (more for Cut^nMix with n > 3 partners); FLOPs per image do not depend on it


def _teacher_arch(cfg, arch_of_run: dict[str, str]) -> str | None:
    source = cfg.model.teacher_checkpoint
    if source is None:
        return None
    if cfg.model.teacher:
        return cfg.model.teacher
    if source in TEACHERS:
        return source
    return arch_of_run.get(Path(source).parent.name)  # a teacher trained earlier in the same grid


@dataclass(frozen=True)
class RunWork:
    """FLOPs of a run's parts: per training image of a step, per test image of an evaluation, and before training
    (``prepare``: a teacher-logit cache, a FitNets hint stage, probes) per training image and once."""

    train: float
    evaluation: float
    prepare_per_image: float
    prepare_once: float

    def total(self, epochs: int, train_images: int, evaluations: int, test_images: int) -> float:
        return (epochs * train_images * self.train + evaluations * test_images * self.evaluation
                + train_images * self.prepare_per_image + self.prepare_once)


@functools.lru_cache(maxsize=None)
def run_work(cfg_json: str) -> RunWork:
    """The :class:`RunWork` of a run's config (as JSON, a cache key), counted on ``PLAN_BATCH`` images; the teacher
    is ``model.teacher``'s architecture at fresh weights."""
    cfg = RunConfig.model_validate_json(cfg_json)
    spec = DATASETS[cfg.data.dataset]
    classes, channels, size = spec.num_classes, spec.in_channels, cfg.data.image_size or spec.image_size
    b = max(PLAN_BATCH, (cfg.augment.model_extra or {}).get("n", 0) + 1)  # Cut^nMix: n partners besides the base
    labels, indices = torch.arange(b) % classes, torch.arange(b)
    info = StepInfo(epoch=0, step=0, epochs=cfg.optim.total_epochs, generator=torch.Generator().manual_seed(0),
                    indices=indices)
    with torch.random.fork_rng():  # initialisation, prepare() and dropout draw here, not from the caller's state
        torch.manual_seed(0)
        distiller = build_distiller(cfg, classes, channels, teacher_builder=stand_in_teacher, pretrained=False)
        images = torch.rand(b, channels, size, size)

        def prepare(batches: int) -> int:  # prepare() over a training set of `batches` clean batches
            data = TrainSet(num_samples=b, num_classes=classes,
                            clean_batches=lambda: iter([(images, labels, indices)] * batches),
                            augmented_by_loader=augmented_by_loader(cfg))
            # what a method warns of this stand-in set of b images (CRD's negatives) is not said of the run's data
            with FlopCounterMode(display=False) as counter, warnings.catch_warnings():
                warnings.simplefilter("ignore")
                distiller.prepare(data)
            return counter.get_total_flops()

        once = prepare(1)  # prepare() is linear in the batches it reads: two counts give both parts
        per_batch = prepare(2) - once if once else 0
        distiller.train()
        with FlopCounterMode(display=False) as train:
            out = distiller.forward_train(images, labels, info)
            sum(out.losses.values()).backward()
        distiller.eval()
        with torch.no_grad(), FlopCounterMode(display=False) as evaluation:
            distiller.evaluation_logits(images)
    return RunWork(train.get_total_flops() / b, evaluation.get_total_flops() / b, per_batch / b, once - per_batch)


def plan_rows(runs, study_dir: Path) -> list[dict]:
    """One row per run: key, stage, dataset, networks, epochs, training images, estimated PFLOPs."""
    cfgs = [(run, build_config({**run.config, "output_dir": str(study_dir / "runs"), "name": run.run_name()}))
            for run in runs]
    arch_of_run = {run.run_name(): cfg.model.student for run, cfg in cfgs}
    rows = []
    for run, cfg in cfgs:
        d = cfg.data
        spec = DATASETS[d.dataset]  # its published split sizes
        train_n, test_n = spec.num_train, spec.num_test
        if train_n is None or test_n is None:
            fixed = ", ".join(name for name, known in DATASETS.items() if known.num_train and known.num_test)
            raise ConfigError(f"--plan: dataset '{d.dataset}' has no known number of images; it knows {fixed}")
        train_n = min(train_n, d.train_subset or train_n)
        test_n = min(test_n, d.test_subset or test_n)
        method = METHODS.get_or_raise(cfg.method.name)
        if getattr(method, "online", False):
            learners = cfg.model.peers or [cfg.model.student] * cfg.method.params().peers
        else:
            learners = [cfg.model.student]
        teacher = _teacher_arch(cfg, arch_of_run) if getattr(method, "needs_teacher", False) else None
        # one count for the runs that differ in their seed (and so in their teacher's path) only
        model = {"teacher_checkpoint": cfg.model.teacher_checkpoint and "teacher"}
        if teacher:
            model["teacher"] = teacher  # the architecture of a teacher the grid trains
        same_work = cfg.model_copy(update={"seed": 0, "name": "plan", "output_dir": "plan",
                                           "model": cfg.model.model_copy(update=model)})
        epochs = cfg.optim.total_epochs
        evals = -(-epochs // max(1, cfg.train.eval_every))
        flops = run_work(same_work.model_dump_json()).total(epochs, train_n, evals, test_n)
        rows.append({"key": run.key, "stage": run.stage, "dataset": d.dataset, "networks": "+".join(learners),
                     "teacher": teacher or "-", "method": cfg.method.name, "augment": augment_label(cfg),
                     "epochs": epochs, "train_images": train_n, "pflops": flops / 1e15})
    return rows



def augment_label(cfg) -> str:
    """The augmentation a run trains with: ``augment.name`` and what the loader does before it
    (``cutmix; loader: crop, flip``)."""
    by_loader = [name for name, on in (("crop", DATASETS[cfg.data.dataset].padding_for(cfg.data.crop_padding) > 0),
                                       ("flip", cfg.data.flip)) if on]
    return f"{cfg.augment.name}; loader: {', '.join(by_loader)}" if by_loader else cfg.augment.name


def _amount(x: float) -> str:
    """``127.3``, ``4.6``, and two significant digits below 1 (``0.0023``, where ``.1f`` said 0.0)."""
    return f"{x:,.1f}" if x >= 1 else f"{x:.2g}"

def plan_markdown(name: str, scale: str, rows: list[dict], tflops: float = DEFAULT_TFLOPS) -> str:
    total = sum(r["pflops"] for r in rows)
    hours = lambda pflops: pflops * 1e15 / (tflops * 1e12) / 3600  # noqa: E731
    lines = [f"# {name} at --scale {scale}: {len(rows)} runs (plan only, nothing trained)", "",
             f"Compute: the FLOPs of one training step of each run's method (forward and backward, as "
             f"torch.utils.flop_counter counts them) per training image and epoch, plus the evaluations and what "
             f"the method does before training (a teacher-logit cache, a hint stage). "
             f"GPU-hours at an effective {tflops:g} TFLOP/s (set with --plan-tflops).", "",
             "| run | stage | dataset | networks | teacher | method | augment | epochs | images | PFLOPs | GPU-h |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['key']} | {r['stage']} | {r['dataset']} | {r['networks']} | {r['teacher']} | {r['method']} | "
              f"{r['augment']} | {r['epochs']} | {r['train_images']} | {r['pflops']:.3g} | {hours(r['pflops']):.3g} |"
              for r in rows]
    by_method: dict[tuple, list[dict]] = {}
    for r in rows:
        by_method.setdefault((r["stage"], r["method"], r["augment"]), []).append(r)
    lines += ["", "By stage, method and augmentation (what leaving a part out saves):", "",
              "| stage | method | augment | runs | PFLOPs | GPU-h |", "|---|---|---|---|---|---|"]
    for (stage, method, augment), group in by_method.items():
        pflops = sum(r["pflops"] for r in group)
        lines.append(f"| {stage} | {method} | {augment} | {len(group)} | {pflops:.3g} | {hours(pflops):.3g} |")
    lines += ["", f"**Total: {_amount(total)} PFLOPs, about {_amount(hours(total))} GPU-hours at {tflops:g} TFLOP/s.**"]
    return "\n".join(lines) + "\n"


def plan_study(name: str, *, scale: str, seeds, output_dir: str = "runs/studies", data_root=None,
               tflops: float = DEFAULT_TFLOPS) -> str:
    from mixdistill.studies import study_runs

    name = name.lower() if isinstance(name, str) else name  # DAS2020, as the papers are cited
    study_dir = Path(output_dir).expanduser() / f"{name}_{scale}"
    runs = study_runs(name, scale, seeds, study_dir, data_root)
    return plan_markdown(name, scale, plan_rows(runs, study_dir), tflops)
