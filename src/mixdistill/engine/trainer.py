"""The training loop. Method-agnostic: a distiller returns (logits, {term: loss}); this file sums the
terms, steps the optimiser and the schedule, evaluates, logs and checkpoints.

Hot-path rules (airbench-style): data already on the device, augmentation batched there, metrics
accumulated in device tensors and read once per ``log_every`` steps, no ``.item()`` per step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mixdistill.config import RunConfig, build_config
from mixdistill.data import DeviceLoader, load_dataset
from mixdistill.distill import DISTILLERS, StepInfo, TrainSet
from mixdistill.engine.compile import (CompileDecision, compile_in_place, decide_cpu_compile, probe, probe_key,
                                       record_warm_compile)
from mixdistill.engine.checkpoint import FORMAT, load_checkpoint, non_finite_tensors, save_atomic
from mixdistill.engine.distributed import init_distributed, local_batch_size, wrap_for_training
from mixdistill.engine.runtime import Runtime, resolve_runtime, seed_epoch
from mixdistill.engine.schedule import build_scheduler
from mixdistill.errors import CheckpointError, ConfigError, MixdistillError, NonFiniteLossError
from mixdistill.files import hold_lock, remove_orphans, write_json, write_yaml
from mixdistill.models import create_model
from mixdistill.models.checkpoint import load_weights
from mixdistill.provenance import reconstruction_notes

# config keys that may differ between a run and its resumption (they do not change the result)
PATH_KEYS = {"model.teacher_checkpoint"}
LOCK_NAME = ".lock"  # the run directory's lock (and LOCK_NAME.holder: who holds it)
RESUME_FREE_KEYS = {"train.progress", "train.log_every", "train.tensorboard", "train.threads", "data.root",
                    "data.num_workers", "output_dir"}


# --------------------------------------------------------------------------------------------- build

def load_data(cfg: RunConfig):
    d = cfg.data
    train = load_dataset(d.dataset, "train", root=d.root, download=d.download)
    test = load_dataset(d.dataset, "test", root=d.root, download=d.download)
    for key, split in (("train_subset", train), ("test_subset", test)):
        n = getattr(d, key)
        if n and n > len(split):
            raise ConfigError(f"data.{key}={n} exceeds the {len(split)} images of {d.dataset}")
    if d.train_subset:
        train = train.subset(d.train_subset, seed=d.subset_seed)
    if d.test_subset:
        test = test.subset(d.test_subset, seed=d.subset_seed)
    return train, test


@dataclass
class Loaders:
    """The training, test and (on demand) clean training loaders, and what the models need to know."""

    train: object  # DeviceLoader | StreamingImageFolder, yielding (images, labels, indices)
    test: object  # yielding (images, labels)
    clean: Callable[[], object]  # un-augmented training batches in order, with indices (built when called)
    num_classes: int
    in_channels: int
    mean: tuple
    std: tuple
    num_train: int
    augmented_by_loader: bool


def build_loaders(cfg: RunConfig, runtime: Runtime, dist) -> Loaders:
    d, device = cfg.data, runtime.device
    batch_size = local_batch_size(d.batch_size, dist)
    if d.loader == "streaming":
        return _streaming_loaders(cfg, runtime, dist, batch_size)
    train, test = load_data(cfg)
    padding = train.spec.crop_padding if d.crop_padding is None else d.crop_padding
    common = dict(mean=train.spec.mean, std=train.spec.std, device=device)
    train_loader = DeviceLoader(train.images, train.labels, batch_size=batch_size, shuffle=True, drop_last=True,
                                crop_padding=padding, flip=d.flip, seed=cfg.seed, with_indices=True,
                                rank=dist.rank, world_size=dist.world_size, **common)
    test_loader = DeviceLoader(test.images, test.labels, batch_size=d.eval_batch_size, shuffle=False,
                               drop_last=False, **common)
    clean = lambda: DeviceLoader(train.images, train.labels, batch_size=d.eval_batch_size, shuffle=False,  # noqa: E731
                                 drop_last=False, with_indices=True, **common)
    return Loaders(train_loader, test_loader, clean, train.spec.num_classes, train.images.shape[1],
                   train.spec.mean, train.spec.std, len(train.labels), padding > 0 or d.flip)


def _streaming_loaders(cfg: RunConfig, runtime: Runtime, dist, batch_size: int) -> Loaders:
    """Image-folder trees read by worker processes (data.loader: streaming): ImageNet-scale data."""
    from mixdistill.data.datasets import DATASETS, find_root
    from mixdistill.data.streaming import StreamingImageFolder

    d = cfg.data
    spec = DATASETS[d.dataset]
    root = find_root(d.dataset, d.root, download=False)
    size = d.image_size or spec.image_size
    if not isinstance(size, int):
        raise ConfigError(f"data.loader streaming: set data.image_size (the crop size) for dataset {d.dataset}")
    common = dict(image_size=size, mean=spec.mean, std=spec.std, num_workers=d.num_workers, device=runtime.device,
                  channels_last=runtime.channels_last, subset_seed=d.subset_seed)
    try:
        train = StreamingImageFolder(root, "train", batch_size=batch_size, flip=d.flip, seed=cfg.seed,
                                     with_indices=True, rank=dist.rank, world_size=dist.world_size,
                                     subset=d.train_subset, **common)
        test = StreamingImageFolder(root, "val" if d.dataset == "imagenet" else "test", augment=False,
                                    batch_size=d.eval_batch_size, subset=d.test_subset, **common)
    except ValueError as e:  # e.g. a subset larger than the split
        raise ConfigError(f"data: {e}") from None
    clean = lambda: StreamingImageFolder(root, "train", augment=False, batch_size=d.eval_batch_size,  # noqa: E731
                                         with_indices=True, subset=d.train_subset, **common)
    return Loaders(train, test, clean, train.num_classes, train.in_channels, tuple(spec.mean), tuple(spec.std),
                   train.num_samples, True)


def missing_teacher(source: str) -> str:
    return (f"teacher checkpoint '{source}' is neither a file nor a benchmark teacher name: train the teacher "
            f"first (for the Fashion-MNIST configs: `mixdistill train configs/fmnist_cpu_teacher.yaml`), point "
            f"model.teacher_checkpoint at an existing last.pt, or name a pretrained CIFAR-100 teacher "
            f"(`mixdistill teachers` lists them)")


def build_teacher(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module | None:
    source = cfg.model.teacher_checkpoint
    if source is None:
        return None
    if not Path(source).exists():
        from mixdistill.teachers import TEACHERS, load_teacher

        if source in TEACHERS:
            return load_teacher(source, num_classes=num_classes)
        raise CheckpointError(missing_teacher(source))
    state = load_checkpoint(source)
    arch = cfg.model.teacher or state.get("arch")
    if arch is None:
        raise ConfigError(f"{source} does not record its architecture: set model.teacher to its model name")
    if cfg.model.teacher and state.get("arch") and state["arch"] != cfg.model.teacher:
        raise ConfigError(f"model.teacher is '{cfg.model.teacher}' but {source} holds a '{state['arch']}'")
    teacher = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    load_weights(teacher, state)
    return teacher.eval()


def build_augment(cfg: RunConfig, method_cls, mean, std):
    """The configured augmentation (or the method's default), with the dataset's mean/std bound for
    views that work in pixel space (AutoAugment, crop with black padding) when the config leaves them null."""
    from mixdistill.augment import augment_params, make_augment

    name, params = cfg.augment.name, dict(cfg.augment.model_extra or {})
    if name == "none":
        if method_cls.default_augment is None:
            return None
        name, params = method_cls.default_augment, {}
    if "mean" in augment_params(name) and params.get("mean") is None:
        params.update(mean=tuple(mean), std=tuple(std))
    return make_augment(name, **params)


def build_distiller(cfg: RunConfig, num_classes: int, in_channels: int, mean=(0.5,), std=(0.5,),
                    teacher_builder=build_teacher):
    method_cls = DISTILLERS.get_or_raise(cfg.method.name)
    params = cfg.method.params()
    if getattr(method_cls, "online", False):  # a group of peers trained together, no teacher
        names = cfg.model.peers or [cfg.model.student] * params.peers
        distiller = method_cls.from_names(names, params, num_classes=num_classes, in_channels=in_channels)
        distiller.student_arch = names[0]
    else:
        student = create_model(cfg.model.student, num_classes=num_classes, in_channels=in_channels)
        teacher = teacher_builder(cfg, num_classes, in_channels) if method_cls.needs_teacher else None
        distiller = method_cls(student, teacher, params)
        distiller.student_arch = cfg.model.student
    distiller.set_augment(build_augment(cfg, method_cls, mean, std))
    return distiller


def check_buildable(cfg: RunConfig) -> None:
    """Build the method as training would, without reading data or weights (models on the meta device,
    the teacher as its architecture), so that ``--print-config`` rejects what training rejects."""
    from mixdistill.data.datasets import DATASETS
    from mixdistill.teachers import TEACHERS

    source = cfg.model.teacher_checkpoint
    if source is not None and not Path(source).exists() and source not in TEACHERS:
        raise CheckpointError(missing_teacher(source))
    spec = DATASETS[cfg.data.dataset]

    def stand_in_teacher(cfg, num_classes, in_channels):
        return create_model(cfg.model.teacher or cfg.model.student, num_classes=num_classes, in_channels=in_channels)

    with torch.device("meta"):
        build_distiller(cfg, spec.num_classes or 10, spec.in_channels or 3, teacher_builder=stand_in_teacher)


def base_lr(cfg: RunConfig) -> float:
    return cfg.optim.lr_overrides.get(cfg.model.student, cfg.optim.lr)


# ------------------------------------------------------------------------------------------ evaluate

@torch.no_grad()
def evaluate_many(module: nn.Module, forward, loader: DeviceLoader, runtime: Runtime) -> dict[str, dict]:
    """Top-1 and mean CE of every named output of ``forward(images) -> {name: logits}`` in one pass."""
    was_training = module.training
    module.eval()
    correct: dict[str, torch.Tensor] = {}
    loss_sum: dict[str, torch.Tensor] = {}
    count = 0
    with torch.inference_mode():
        for images, labels in loader:
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with runtime.autocast():
                outputs = forward(images)
            for name, logits in outputs.items():
                logits = logits.float()
                loss_sum[name] = loss_sum.get(name, 0) + nn.functional.cross_entropy(logits, labels, reduction="sum")
                correct[name] = correct.get(name, 0) + (logits.argmax(1) == labels).sum()
            count += labels.numel()
    module.train(was_training)
    return {name: {"acc": 100.0 * correct[name].item() / count, "loss": loss_sum[name].item() / count}
            for name in correct}


def evaluate(model: nn.Module, loader: DeviceLoader, runtime: Runtime) -> dict:
    return evaluate_many(model, lambda x: {"model": model(x)}, loader, runtime)["model"]


def eval_record(results: dict[str, dict]) -> dict:
    """Per-epoch test metrics. One output: test_acc/test_loss. Peers (online methods): every peer, the
    ensemble, best and mean peer; test_acc is then the mean peer accuracy."""
    if set(results) == {"student"}:
        return {"test_acc": results["student"]["acc"], "test_loss": results["student"]["loss"]}
    record = {}
    for name, r in results.items():
        record[f"test_acc_{name}"], record[f"test_loss_{name}"] = r["acc"], r["loss"]
    peers = [r for name, r in results.items() if name.startswith("peer")]
    if peers:
        record["test_acc_best_peer"] = max(r["acc"] for r in peers)
        record["test_acc_mean_peer"] = sum(r["acc"] for r in peers) / len(peers)
        record["test_acc"] = record["test_acc_mean_peer"]
        record["test_loss"] = sum(r["loss"] for r in peers) / len(peers)
    return record


# ----------------------------------------------------------------------------------------- the loop

class Trainer:
    def __init__(self, cfg: RunConfig, *, resume: bool = False, quiet: bool = False,
                 compile_steps: int | None = None):
        """``compile_steps``: the schedule length a CPU ``train.compile=auto`` decision assumes (default: this
        run's; the benchmark passes the length of the protocol it stands for)."""
        self.cfg = cfg
        self.compile_steps = compile_steps
        self.run_dir = cfg.run_dir
        self.resume = resume
        self.quiet = quiet
        self.checkpoint_path = self.run_dir / "last.pt"
        self._lock = contextlib.ExitStack()
        try:
            self._claim_run_dir()
            self._build(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: RunConfig, resume: bool):
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.dist = init_distributed(cfg.train.device)
        device = cfg.train.device
        if self.dist.enabled and torch.cuda.is_available() and device in ("auto", "cuda"):
            device = f"cuda:{self.dist.local_rank}"
        self.runtime = resolve_runtime(device, cfg.train.precision, cfg.train.channels_last, cfg.train.compile)
        data = build_loaders(cfg, self.runtime, self.dist)
        self.num_classes, self.in_channels = data.num_classes, data.in_channels
        self.train_images = data.num_train
        self.train_loader, self.test_loader = data.train, data.test
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} exceeds the {data.num_train} training images")
        torch.manual_seed(cfg.seed)  # model initialisation
        self.distiller = build_distiller(cfg, self.num_classes, self.in_channels, data.mean,
                                         data.std).to(self.runtime.device)
        self.teacher_report = self._accelerate_teacher(data)
        self.distiller.prepare(TrainSet(num_samples=data.num_train, num_classes=self.num_classes,
                                        clean_batches=lambda: iter(data.clean()),
                                        augmented_by_loader=data.augmented_by_loader))
        self.distiller.to(self.runtime.device)
        if self.runtime.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.distiller.learnable_parameters(), lr=base_lr(cfg),
                                         momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                                         nesterov=cfg.optim.nesterov, foreach=True)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, len(self.train_loader))
        self.start_epoch, self.step = 0, 0
        self.history: list[dict] = []
        self._resumed_compile = None
        if resume:
            self._load_state()
        self.compile_decision = self._decide_compile()
        self.train_module = wrap_for_training(self.distiller, self.dist, cfg.train.sync_bn)
        self.train_step = self._make_train_step()

    def _accelerate_teacher(self, data):
        """Swap the frozen teacher for a folded / channels_last / compiled (or int8) copy computing the same
        logits (engine/fast.py). Returns the report, or None when nothing was done."""
        train, distiller = self.cfg.train, self.distiller
        if distiller.teacher is None:
            return None
        if train.int8_teacher and self.runtime.device.type != "cpu":
            raise ConfigError("train.int8_teacher=true is for CPU runs (the int8 kernels are CPU kernels)")
        wanted = train.fast_teacher if train.fast_teacher != "auto" else not distiller.reads_teacher_features
        if distiller.reads_teacher_features and (train.fast_teacher is True or train.int8_teacher):
            raise ConfigError(f"method {self.cfg.method.name} reads the teacher's features, which a folded or "
                              f"int8 teacher does not expose: set train.fast_teacher=false train.int8_teacher=false")
        if not (wanted or train.int8_teacher):
            return None
        from mixdistill.engine.fast import accelerate_teacher

        calibration = None
        if train.int8_teacher:
            calibration = [x for x, _, _ in itertools.islice(data.clean(), 4)]
        return accelerate_teacher(distiller, self.runtime, compile=self.runtime.compile,
                                  int8=train.int8_teacher, calibration=calibration)

    def _decide_compile(self) -> CompileDecision:
        """Settle train.compile=auto on a CPU (engine/compile.py); compile the fast teacher if it says so."""
        runtime, cfg = self.runtime, self.cfg
        self._probe_key = None
        if runtime.compile is not None:
            return CompileDecision(runtime.compile, f"train.compile={cfg.train.compile}")
        if self._resumed_compile is not None:
            decision = CompileDecision(self._resumed_compile, "as the run was started (from its checkpoint)")
        else:
            images, labels, indices = next(iter(self.train_loader))
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            total = self.compile_steps or cfg.optim.total_epochs * len(self.train_loader)
            self._probe_key = probe_key(cfg, self.distiller, tuple(images.shape), runtime)
            decision = decide_cpu_compile(self._probe_key, total,
                                          lambda: probe(self.distiller, (images, labels, indices), runtime))
        self.runtime = dataclasses.replace(runtime, compile=decision.compile)
        teacher = self.distiller.teacher
        if decision.compile and hasattr(teacher, "compile_net") and teacher.compile_net() and self.teacher_report:
            self.teacher_report.compiled = True
        return decision

    # -- run directory and resumption -------------------------------------------------------------
    def _claim_run_dir(self):
        """Lock the run directory for the life of the run (a second run into it stops, naming the holder),
        then check that it holds no finished or resumable run unless resuming. Rank 0 alone owns it."""
        if int(os.environ.get("RANK", "0")) != 0:
            return
        created = not self.run_dir.exists()
        lock_path = self.run_dir / LOCK_NAME
        try:
            self._lock.enter_context(hold_lock(lock_path, f"training {self.cfg.name}"))
        except BaseException:
            if created:
                _remove_empty_run_dir(self.run_dir)
            raise
        if created:  # a run that fails before writing anything leaves no empty directory behind
            self._lock.callback(_remove_empty_run_dir, self.run_dir)
        remove_orphans(self.run_dir)
        has_run = self.checkpoint_path.exists() or (self.run_dir / "summary.json").exists()
        if self.resume and not self.checkpoint_path.exists():
            raise MixdistillError(f"--resume: no checkpoint at {self.checkpoint_path}")
        if not self.resume and has_run:
            raise MixdistillError(f"{self.run_dir} already holds a run; pass --resume to continue it, or choose "
                                  f"another name= or output_dir= (nothing was overwritten)")

    def close(self):
        """Release the run directory (also done at the end of ``fit``)."""
        self._lock.close()

    def _load_state(self):
        state = load_checkpoint(self.checkpoint_path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a mixdistill training checkpoint")
        diff = config_difference(build_config(state["config"]).to_dict(), self.cfg.to_dict())
        if diff:
            raise ConfigError(f"--resume: the config differs from the one {self.run_dir} was started with: "
                              + "; ".join(diff))
        self.distiller.student.load_state_dict(state["model"])
        self.distiller.load_state_dict_extra(state.get("distiller_extra", {}))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.history = json.loads(state["history"])
        self._resumed_compile = state.get("compile")
        torch.set_rng_state(state["rng"]["torch"])

    def _save_state(self, epoch: int):
        state = {
            "format": FORMAT,
            "arch": self.distiller.student_arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "model": self.distiller.student.state_dict(),
            "distiller_extra": self.distiller.state_dict_extra(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": self.step,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.cfg.to_dict(),
            "history": json.dumps(self.history),
            "compile": self.runtime.compile,
        }
        bad = non_finite_tensors({"model": state["model"], "distiller_extra": state["distiller_extra"],
                                  "optimizer": state["optimizer"]["state"]})
        if bad:
            kept = (f"the last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path.exists()
                    else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite weights or buffers after epoch {epoch} "
                                     f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); not saved, "
                                     f"stopped; {kept}")
        save_atomic(state, self.checkpoint_path)

    # -- one step -------------------------------------------------------------------------------------
    def _make_train_step(self):
        distiller, optimizer, scheduler, runtime = self.distiller, self.optimizer, self.scheduler, self.runtime
        train_module = self.train_module
        if runtime.compile:
            mode = "reduce-overhead" if self.cfg.train.cuda_graphs and runtime.device.type == "cuda" else None
            for module in distiller.compile_targets():
                compile_in_place(module, mode)
        elif self.cfg.train.cuda_graphs:
            raise ConfigError("train.cuda_graphs=true needs train.compile on a CUDA device")

        def train_step(images, labels, info):
            with runtime.autocast():
                logits, losses = train_module(images, labels, info)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            optimizer.step()
            scheduler.step()
            distiller.after_step()
            return logits, losses, total

        return train_step

    # -- epochs ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        epochs = cfg.optim.total_epochs
        try:
            return self._fit(cfg, main, epochs)
        finally:
            self.close()

    def _fit(self, cfg: RunConfig, main: bool, epochs: int) -> dict:
        from mixdistill.engine.logging import RunLogger

        if main:
            write_yaml(self.run_dir / "config.yaml", cfg.to_dict())
        logger = RunLogger(self.run_dir, history=self.history, tensorboard=cfg.train.tensorboard,
                           quiet=self.quiet or not main, write=main)
        logger.info(f"run {self.run_dir}: {cfg.method.name} student={model_label(cfg)} "
                    f"teacher={cfg.model.teacher_checkpoint or '-'}; {self.runtime.describe()}; "
                    f"{len(self.train_loader)} steps/epoch, {epochs} epochs"
                    + (f"; resuming at epoch {self.start_epoch + 1}" if self.start_epoch else ""))
        augment = getattr(self.distiller.augment, "func", self.distiller.augment)
        if cfg.augment.name == "none" and augment is not None:
            logger.info(f"augment: none in the config, so {cfg.method.name}'s default {augment.__name__} is used")
        if base_lr(cfg) != cfg.optim.lr:
            logger.info(f"lr {base_lr(cfg)} for {cfg.model.student} from optim.lr_overrides, not optim.lr "
                        f"{cfg.optim.lr} (set optim.lr_overrides={{}} to use optim.lr)")
        for note in reconstruction_notes(cfg.to_dict()):
            logger.info(f"note: {note}")
        decision = self.compile_decision
        what = ("every peer's" if getattr(self.distiller, "online", False) else "the student's") + \
            " forward and forward_features" + (", the fast teacher" if getattr(self.teacher_report, "compiled", False)
                                               else "")
        logger.info(f"compile: {'yes, ' + what if decision.compile else 'no'} ({decision.reason})")
        if self.teacher_report is not None:
            r = self.teacher_report
            logger.info(f"fast teacher: {r.folded_pairs} conv+bn pairs folded, channels_last={r.channels_last}, "
                        f"compiled={r.compiled}, int8={r.int8}"
                        + (f"; int8 vs fp32 teacher top-1 agreement {r.agreement['top1_agreement_pct']:.2f}% on "
                           f"{r.agreement['images']} training images, max |logit diff| "
                           f"{r.agreement['max_abs_logit_diff']:.3f}" if r.agreement else ""))
        teacher_eval = None
        if self.distiller.teacher is not None and main:
            teacher_eval = evaluate(self.distiller.teacher, self.test_loader, self.runtime)
            logger.info(f"teacher test accuracy {teacher_eval['acc']:.2f}%")
        try:
            for epoch in range(self.start_epoch, epochs):
                record = self._train_epoch(epoch, epochs, logger)
                if main and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs):
                    record.update(eval_record(evaluate_many(self.distiller, self.distiller.evaluation_logits,
                                                            self.test_loader, self.runtime)))
                self.history.append(record)
                logger.epoch(record)
                if self._probe_key and self.compile_decision.compile and epoch == self.start_epoch + 1:
                    first, second = self.history[-2]["epoch_time_s"], record["epoch_time_s"]
                    record_warm_compile(self._probe_key, max(0.0, first - second))
                if main and ((epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == epochs):
                    self._save_state(epoch + 1)
                self.dist.barrier()
        finally:
            logger.close()
        summary = summarize(self.history, cfg, teacher_eval)
        summary["train_images"] = self.train_images
        summary["compiled"] = self.runtime.compile
        if main:
            write_json(self.run_dir / "summary.json", summary)
        if self.dist.enabled:
            torch.distributed.destroy_process_group()
        return summary

    def _train_epoch(self, epoch: int, epochs: int, logger) -> dict:
        cfg, runtime = self.cfg, self.runtime
        generator = seed_epoch(cfg.seed, epoch)
        self.train_loader.set_epoch(epoch)
        self.distiller.train()
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=runtime.device, dtype=torch.long)
        bad_step = torch.full((), -1, device=runtime.device, dtype=torch.long)
        bad_terms: dict[str, torch.Tensor] = {}
        lr = self.optimizer.param_groups[0]["lr"]  # the epoch's lr (the schedule moves on during it)
        seen, started = 0, time.perf_counter()
        progress = logger.progress(len(self.train_loader), f"epoch {epoch + 1}/{epochs}",
                                   enabled=cfg.train.progress)
        stats: dict[str, torch.Tensor | float] = {}
        for i, (images, labels, indices) in enumerate(self.train_loader):
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            info = StepInfo(epoch=epoch, step=self.step, epochs=epochs, generator=generator, indices=indices)
            logits, losses, total = self.train_step(images, labels, info)
            with torch.no_grad():
                for name, value in losses.items():
                    value = value.detach().float()
                    sums[name] = sums.get(name, 0) + value
                    finite = torch.isfinite(value)
                    first = bad_terms.get(name, torch.full_like(bad_step, -1))
                    bad_terms[name] = torch.where(~finite & (first < 0), self.step, first)
                total = total.detach().float()
                sums["loss"] = sums.get("loss", 0) + total
                bad_step = torch.where(~torch.isfinite(total) & (bad_step < 0), self.step, bad_step)
                targets = labels if info.train_labels is None else info.train_labels
                if logits.shape[0] == targets.shape[0]:
                    correct += (logits.argmax(1) == targets).sum()
                for name, value in info.stats.items():
                    stats[name] = stats.get(name, 0) + (value.detach().float() if torch.is_tensor(value) else value)
            seen += labels.numel()
            self.step += 1
            if (i + 1) % cfg.train.log_every == 0 or i + 1 == len(self.train_loader):
                self._raise_if_nonfinite(bad_step, bad_terms)
                rate = seen / (time.perf_counter() - started)
                progress.update(i + 1, loss=(sums["loss"] / (i + 1)).item(), images_per_s=rate)
        progress.close()
        n = len(self.train_loader)
        if self.dist.enabled:  # epoch metrics over all ranks (one small all-reduce per epoch)
            n *= self.dist.world_size
            sums = {k: self.dist.sum_(v.clone()) for k, v in sums.items()}
            correct = self.dist.sum_(correct.clone())
            seen = int(self.dist.sum_(torch.tensor(seen, device=runtime.device)).item())
        elapsed = time.perf_counter() - started
        record = {"epoch": epoch + 1, "step": self.step, "lr": lr,
                  "train_acc": 100.0 * correct.item() / seen, "images_per_s": seen / elapsed,
                  "epoch_time_s": elapsed}
        record.update({f"train_{k}": (v / n).item() for k, v in sums.items()})
        record.update({f"stat_{k}": float(v / n) for k, v in stats.items()})
        return record

    def _raise_if_nonfinite(self, bad_step, bad_terms):
        if bad_step.item() >= 0:
            terms = [name for name, s in bad_terms.items() if s.item() == bad_step.item()] or ["total"]
            kept = (f"The last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path.exists()
                    else "No checkpoint was written yet (it failed before the first epoch ended)")
            raise NonFiniteLossError(
                f"non-finite loss at step {bad_step.item()} (term: {', '.join(terms)}); stopped. {kept}")


# ------------------------------------------------------------------------------------------ helpers

def model_label(cfg: RunConfig) -> str:
    """The trained network(s): the student, or an online method's peers when model.peers names them."""
    online = getattr(DISTILLERS.get_or_raise(cfg.method.name), "online", False)
    return ",".join(cfg.model.peers) if online and cfg.model.peers else cfg.model.student


def summarize(history: list[dict], cfg: RunConfig, teacher_eval: dict | None) -> dict:
    evaluated = [h for h in history if "test_acc" in h]
    last = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda h: h["test_acc"]) if evaluated else {}
    return {
        "name": cfg.name, "method": cfg.method.name,
        "student": model_label(cfg),
        "teacher": cfg.model.teacher_checkpoint, "seed": cfg.seed, "dataset": cfg.data.dataset,
        "epochs": cfg.optim.total_epochs,
        "last_acc": last.get("test_acc"), "best_acc": best.get("test_acc"), "best_epoch": best.get("epoch"),
        "last_test_loss": last.get("test_loss"),
        "teacher_acc": teacher_eval["acc"] if teacher_eval else None,
        **{f"last_{k.removeprefix('test_')}": v for k, v in last.items() if k.startswith("test_acc_")},
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "notes": reconstruction_notes(cfg.to_dict()),
    }


def config_difference(a: dict, b: dict, prefix: str = "") -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if path in RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if path in PATH_KEYS and va and vb and os.path.abspath(va) == os.path.abspath(vb):
            continue  # the same file, named relative to this directory once and absolutely once
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_difference(va, vb, path + ".")
        elif va != vb:
            diffs.append(f"{path}: {va!r} -> {vb!r}")
    return diffs


def _remove_empty_run_dir(run_dir: Path) -> None:
    """Remove a run directory this run created if it holds nothing but its lock files."""
    try:
        if all(p.name.startswith(LOCK_NAME) for p in run_dir.iterdir()):
            for p in run_dir.iterdir():
                p.unlink()
            run_dir.rmdir()
    except OSError:
        pass


def train(cfg: RunConfig, *, resume: bool = False, quiet: bool = False) -> dict:
    return Trainer(cfg, resume=resume, quiet=quiet).fit()


def saved_config_difference(cfg: RunConfig) -> list[str] | None:
    """How ``cfg`` differs from the config saved in its run directory (``[]``: the same run; ``None``: nothing
    saved there). A saved config that no longer validates counts as different."""
    import yaml

    path = cfg.run_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        saved = build_config(yaml.safe_load(path.read_text())).to_dict()
    except Exception as err:  # written by an older mixdistill whose schema differs
        return [f"saved config no longer valid ({type(err).__name__})"]
    return config_difference(saved, cfg.to_dict())


def set_aside(run_dir: Path) -> Path:
    """Rename a run directory out of the way (never delete: nothing already written is lost)."""
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.superseded{n}")).exists():
        n += 1
    run_dir.rename(target)
    return target


def train_or_reuse(cfg: RunConfig, *, quiet: bool = False, log=print) -> dict:
    """Finished run → its summary; a run killed midway → resumed; otherwise a fresh run. Used by the
    demo and the studies so that re-running them skips finished work and loses nothing. A run directory
    whose saved config differs from ``cfg`` is set aside (renamed) and the run trained afresh."""
    diff = saved_config_difference(cfg)
    if diff:
        old = set_aside(cfg.run_dir)
        log(f"{cfg.run_dir.name}: config changed since it ran ({'; '.join(diff[:3])}"
            f"{'; ...' if len(diff) > 3 else ''}); old run moved to {old}, training afresh")
    summary_path = cfg.run_dir / "summary.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    return train(cfg, resume=(cfg.run_dir / "last.pt").exists(), quiet=quiet)
