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
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mixdistill.config import RunConfig, augment_batch_error, metric_lower_is_better, stored_config
from mixdistill.data.datasets import check_class_names
from mixdistill.distill import StepInfo, StepOutput, TrainSet
from mixdistill.distill.base import check_step_output
from mixdistill.engine import run, small_bn, small_conv, small_pool, teacher_views
from mixdistill.engine.build import (base_lr, build_distiller, build_loaders, check_cuda_graphs, check_input_size,
                                     check_teacher_form, model_label, recorded_shape_difference)
from mixdistill.engine.checkpoint import BEST_FORMAT, FORMAT, load_checkpoint, non_finite_tensors, save_atomic
from mixdistill.engine.compile import (CompileDecision, compile_in_place, decide_cpu_compile, probe, probe_key,
                                       record_warm_compile)
from mixdistill.engine.distributed import (check_same_config, end_distributed, init_distributed, local_batch_size,
                                            wrap_for_training)
from mixdistill.engine.evaluate import eval_record, evaluate, evaluate_many
from mixdistill.engine.fast import accelerate_teacher
from mixdistill.engine.logging import RunLogger, check_loggers
from mixdistill.engine.runtime import environment, resolve_runtime, seed_epoch
from mixdistill.engine.schedule import build_scheduler
from mixdistill.errors import CheckpointError, ConfigError, MixdistillError, NonFiniteLossError
from mixdistill.files import write_json, write_yaml
from mixdistill.losses import label_smoothing
from mixdistill.machine import available_cpus
from mixdistill.methods import METHODS
from mixdistill.online.cutmix_online import sigmoid_rampup
from mixdistill.optim import SGD, sgd_kernel
from mixdistill.provenance import reconstruction_notes

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
        self.checkpoint_path = self.run_dir / run.CHECKPOINT
        self.best_path = self.run_dir / run.BEST
        self._lock = contextlib.ExitStack()
        check_loggers(cfg)  # before the run directory gets anything: a missing wandb left a run there
        try:
            self._claim_run_dir()
            self._build(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _build(self, cfg: RunConfig, resume: bool):
        if cfg.train.threads:
            if cfg.train.threads > available_cpus():  # 99 on 2 cores ran some 600 times slower, without a word
                warnings.warn(f"train.threads={cfg.train.threads} is more than the {available_cpus()} CPU(s) this "
                              "process may use: its threads take turns, and the run slows down many times over",
                              stacklevel=2)
            torch.set_num_threads(cfg.train.threads)
        self.dist = init_distributed(cfg.train.device)
        check_same_config(cfg.to_dict(), self.dist)
        device = cfg.train.device
        if self.dist.enabled and torch.cuda.is_available() and device in ("auto", "cuda"):
            device = f"cuda:{self.dist.local_rank}"
        self.runtime = resolve_runtime(device, cfg.train.precision, cfg.train.channels_last, cfg.train.compile)
        check_cuda_graphs(cfg, self.runtime)  # before the data is read and a CPU's compile probe runs
        if self.dist.world_size > 1:  # each process mixes its own share of the batch
            too_small = augment_batch_error(cfg, local_batch_size(cfg.data.batch_size, self.dist),
                                            f"the per-process batch (data.batch_size / {self.dist.world_size}) of ")
            if too_small:
                raise ConfigError(too_small)
        self.scaler = self.runtime.grad_scaler()  # fp16 only: loss scaling (its state is in the checkpoints)
        self.amp_skipped = 0  # optimiser steps the scaler skipped (inf/nan gradients), this process
        data = build_loaders(cfg, self.runtime, self.dist)
        self.num_classes, self.in_channels = data.num_classes, data.in_channels
        self.class_names = data.class_names
        self.train_images, self.data_root = data.num_train, data.data_root
        self.train_loader, self.test_loader = data.train, data.test
        if len(self.train_loader) == 0:
            raise ConfigError(f"data.batch_size {cfg.data.batch_size} exceeds the {data.num_train} training images")
        torch.manual_seed(cfg.seed)  # model initialisation
        self.distiller = build_distiller(cfg, self.num_classes, self.in_channels, data.mean,
                                         data.std).to(self.runtime.device)
        check_input_size(self.distiller, self.in_channels, data.image_size, model_label(cfg))
        self.teacher_report = self._accelerate_teacher(data)
        self.distiller.prepare(TrainSet(num_samples=data.num_train, num_classes=self.num_classes,
                                        clean_batches=lambda: iter(data.clean()),
                                        augmented_by_loader=data.augmented_by_loader))
        self.distiller.to(self.runtime.device)
        if self.runtime.channels_last:
            self.distiller.to(memory_format=torch.channels_last)
        self.teacher_views_report = None  # train.teacher_cache, set up when fit starts
        self.small_bn_layers = 0  # BatchNorms run by engine/small_bn.c (channels-last bf16 on the CPU)
        self.small_pool_layers = 0  # 2x2 max-pools run by engine/small_pool.c (the same)
        self.small_conv_layers = 0  # grey-scale first layers run by engine/small_conv.c (the same)
        if self.runtime.device.type == "cpu" and self.runtime.precision == "bf16" and self.runtime.channels_last:
            self.small_bn_layers = small_bn.use_small_channel_batchnorm(self.distiller)
            compiled_teacher = self.distiller.teacher if getattr(self.teacher_report, "compiled", False) else None
            self.small_pool_layers = small_pool.use_small_max_pool(self.distiller, leave=compiled_teacher)
            self.small_conv_layers = small_conv.use_small_first_conv(self.distiller, leave=compiled_teacher)
        self.optimizer = SGD(self.distiller.learnable_parameters(), lr=base_lr(cfg),
                             momentum=cfg.optim.momentum, weight_decay=cfg.optim.weight_decay,
                             nesterov=cfg.optim.nesterov, **self._sgd_kernel)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, len(self.train_loader))
        self.ema = self._make_ema()
        self.start_epoch, self.step_count = 0, 0
        self.history: list[dict] = []
        self._resumed_compile = None
        self.best_saved = None  # what best.pt holds ({"metric", "value", "epoch"}), as of the last checkpoint
        if resume:
            self._load_state()
        # the best evaluated epoch so far, from the checkpoint's history: a resumed run replaces best.pt only with a
        # better epoch (by the current train.best_metric, which may differ from the one the run started with)
        self.best = best_so_far(self.history, cfg.train.best_metric)
        if cfg.train.best_metric and "top5" in cfg.train.best_metric and self.num_classes < 5:
            raise ConfigError(f"train.best_metric {cfg.train.best_metric}: top-5 accuracy needs at least 5 classes "
                              f"(this dataset has {self.num_classes})")
        self.compile_decision = self._decide_compile()
        self.train_module = wrap_for_training(self.distiller, self.dist, cfg.train.sync_bn)
        self.train_step = self._make_train_step()

    def _make_ema(self) -> AveragedModel | None:
        """``train.ema_decay``: an exponential moving average of the student, weights and BatchNorm buffers
        (``use_buffers``), updated after every optimiser step; the first update copies the student. It is
        evaluated beside the student (``test_acc_ema``) and saved in the checkpoints (``ema``)."""
        decay = self.cfg.train.ema_decay
        if decay is None:
            return None
        ema = AveragedModel(self.distiller.student, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
        ema.requires_grad_(False)
        return ema.eval()

    def _accelerate_teacher(self, data):
        """Swap the frozen teacher for a folded / channels_last / compiled (or int8) copy computing the same
        logits (engine/fast.py). Returns the report, or None when nothing was done."""
        train, distiller = self.cfg.train, self.distiller
        if distiller.teacher is None:
            return None
        check_teacher_form(self.cfg, distiller, self.runtime.device.type)
        wanted = train.fast_teacher if train.fast_teacher != "auto" else not distiller.reads_teacher_features
        if not (wanted or train.int8_teacher):
            return None
        calibration = None
        if train.int8_teacher:
            calibration = [x for x, _, _ in itertools.islice(data.clean(), 4)]
        return accelerate_teacher(distiller, self.runtime, compile=self.runtime.compile,
                                  cuda_graphs=self._cuda_graphs and bool(self.runtime.compile),
                                  int8=train.int8_teacher, calibration=calibration)

    @property
    def _cuda_graphs(self) -> bool:
        """train.cuda_graphs on a CUDA device: the student and the fast teacher replay CUDA graphs and SGD runs
        as one fused kernel (without fp16's scaler; on an H200 the bench's variant that did this first went from
        311 kernel launches per KD step to 61)."""
        return bool(self.cfg.train.cuda_graphs) and self.runtime.device.type == "cuda"

    @property
    def _sgd_kernel(self) -> dict:
        return sgd_kernel(self._cuda_graphs, scaled=self.scaler is not None)

    def _decide_compile(self) -> CompileDecision:
        """Settle train.compile=auto on a CPU (engine/compile.py); compile the fast teacher if it says so."""
        runtime, cfg = self.runtime, self.cfg
        self._probe_key = None
        if runtime.compile is not None:
            return CompileDecision(runtime.compile, f"train.compile={cfg.train.compile}")
        if self._resumed_compile is not None:
            decision = CompileDecision(self._resumed_compile, "as the run was started (from its checkpoint)")
        elif self.dist.enabled:  # one rank would measure while the others wait on the probe's lock, not in the
            # collectives its steps make (CRD's): they would wait on each other until gloo's timeout
            decision = CompileDecision(False, f"not measured under torchrun ({self.dist.world_size} processes); "
                                              "train.compile=true compiles")
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
        """Lock the run directory for the life of the run (engine/run.py), then check that it holds no finished or
        resumable run unless resuming. Rank 0 alone owns it."""
        if int(os.environ.get("RANK", "0")) != 0:
            return
        self._lock.enter_context(run.claim(self.run_dir, f"training {self.cfg.name}"))
        has_run = self.checkpoint_path.exists() or (self.run_dir / run.SUMMARY).exists()
        # a run stopped before its first checkpoint left these: nothing to resume, but not to overwrite unasked
        started = any((self.run_dir / name).exists() for name in (run.CONFIG, run.METRICS, run.BEST))
        if not self.checkpoint_path.exists() and (self.run_dir / run.SUMMARY).exists():
            raise MixdistillError(f"{self.run_dir} holds a finished run ({run.SUMMARY}) whose {run.CHECKPOINT} is "
                                  f"gone, so there is nothing to resume: choose another name= or output_dir=, or move "
                                  f"that folder away (nothing was overwritten)")
        if self.resume and not self.checkpoint_path.exists():
            raise MixdistillError(f"--resume (resume=True in Python): no checkpoint at {self.checkpoint_path}" + (
                " (the run there stopped before its first one: run without resuming to start it again)"
                if started else ""))
        if not self.resume and has_run:
            raise MixdistillError(f"{self.run_dir} already holds a run; pass --resume (resume=True in Python) to "
                                  f"continue it, or choose another name= or output_dir= (nothing was overwritten)")
        if not self.resume and started:  # the same run is started again; another one is refused
            diff = run.saved_config_difference(self.cfg)
            if diff is None or diff:
                raise MixdistillError(
                    f"{self.run_dir} holds a run stopped before its first checkpoint, with another config ("
                    + ("; ".join(diff[:3]) if diff else f"no {run.CONFIG}") + "): choose another name= or "
                    "output_dir=, or move that folder away (nothing was overwritten)")

    def close(self):
        """Release the run directory (also done at the end of ``fit``)."""
        self._lock.close()

    def _load_state(self):
        state = load_checkpoint(self.checkpoint_path)
        if state.get("format") != FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not a mixdistill training checkpoint")
        diff = run.config_difference(stored_config(state["config"]).to_dict(), self.cfg.to_dict())
        if diff:
            raise ConfigError(f"--resume (resume=True in Python): the config differs from the one {self.run_dir} "
                              "was started with: " + "; ".join(diff))
        if state.get("world_size", self.dist.world_size) != self.dist.world_size:  # a rank's share of each batch
            raise ConfigError(f"--resume (resume=True in Python): {self.run_dir} was started on "
                              f"{state['world_size']} process(es), this is {self.dist.world_size}: a rank's share of "
                              f"each batch, and the run's floats, depend on it (torchrun --nproc-per-node "
                              f"{state['world_size']}{'' if state['world_size'] > 1 else ', or no torchrun'})")
        if differs := recorded_shape_difference(state, self.num_classes, self.in_channels):  # the same config, other
            what, then, now = differs  # files (a class folder added)
            raise ConfigError(f"--resume (resume=True in Python): the data has {now} {what} but {self.run_dir} was "
                              f"started on data with {then}: its files changed since")
        check_class_names(state.get("class_names"), self.class_names,
                          f"--resume (resume=True in Python): the data of {self.run_dir} changed since it started")
        self.distiller.student.load_state_dict(state["model"])
        self.distiller.load_state_dict_extra(state.get("distiller_extra", {}))
        if self.ema is not None:  # train.ema_decay is part of the config --resume compares, so the state is there
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:  # the kernel is this run's choice, not the checkpoint's
            group.update(self._sgd_kernel)
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):  # absent: the run started where auto chose no fp16
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.step_count = state["epoch"], state["step"]
        self.history = json.loads(state["history"])
        self._resumed_compile = state.get("compile")
        self.best_saved = state.get("best")
        torch.set_rng_state(state["rng"]["torch"])

    def _state(self, epoch: int) -> dict:
        """The checkpoint after ``epoch`` epochs, its weights, buffers and optimiser state checked finite."""
        state = {
            "format": FORMAT,
            "arch": self.distiller.student_arch,
            "num_classes": self.num_classes,
            "in_channels": self.in_channels,
            "world_size": self.dist.world_size,
            "class_names": list(self.class_names) if self.class_names else None,
            "model": self.distiller.student.state_dict(),
            "distiller_extra": self.distiller.state_dict_extra(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "step": self.step_count,
            "rng": {"torch": torch.get_rng_state()},
            "config": self.cfg.to_dict(),
            "history": json.dumps(self.history),
            "compile": self.runtime.compile,
            "best": self.best_saved,
        }
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()  # the averaged student ("module.*") and its update count
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()  # loss scale and growth tracker: plain numbers
        bad = non_finite_tensors({"model": state["model"], "distiller_extra": state["distiller_extra"],
                                  "optimizer": state["optimizer"]["state"], "ema": state.get("ema", {})})
        if bad:
            kept = (f"the last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path.exists()
                    else "no checkpoint was written yet")
            raise NonFiniteLossError(f"non-finite weights or buffers after epoch {epoch} "
                                     f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); not saved, "
                                     f"stopped; {kept}")
        return state

    def _save_state(self, epoch: int, state: dict | None = None):
        save_atomic(state if state is not None else self._state(epoch), self.checkpoint_path)

    def _save_best(self, state: dict):
        """best.pt: the checkpoint of the best epoch so far by ``train.best_metric``, without the optimiser,
        scheduler and RNG state (it is for evaluating and distilling from, not for resuming). Chosen by an EMA metric
        (``test_acc_ema``), its ``model`` is the EMA's weights, the network that scored it (``weights: ema``): eval,
        analyze and a student distilling from it scored or used the live student's."""
        kept = {k: v for k, v in state.items() if k not in ("optimizer", "scheduler", "rng", "scaler")}
        if self.cfg.train.best_metric.endswith("_ema"):
            kept["model"] = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
            kept["weights"] = "ema"
        save_atomic({**kept, "format": BEST_FORMAT}, self.best_path)

    # -- one step -------------------------------------------------------------------------------------
    def _make_train_step(self):
        distiller, optimizer, scheduler, runtime = self.distiller, self.optimizer, self.scheduler, self.runtime
        train_module, ema, smoothing = self.train_module, self.ema, self.cfg.train.label_smoothing
        if runtime.compile:
            mode = "reduce-overhead" if self.cfg.train.cuda_graphs else None
            for module in distiller.compile_targets():
                compile_in_place(module, mode)

        scaler, trainer = self.scaler, self
        method, checked = self.cfg.method.name, False

        def train_step(images, labels, info) -> tuple[StepOutput, torch.Tensor]:
            nonlocal checked
            with runtime.autocast(), label_smoothing(smoothing):
                out = train_module(images, labels, info)
            if not checked:  # a plugin's None, vector loss or short logits named at its first step (shapes only)
                check_step_output(out, labels, method)
                checked = True
            total = sum(out.losses.values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is None:
                total.backward()
                optimizer.step()
                stepped = True
            else:
                stepped = scaled_step(scaler, optimizer, total)
                trainer.amp_skipped += not stepped
            advance_schedule(scheduler, stepped)
            if stepped:  # EMAs average optimiser steps: a skipped step leaves them as they are
                distiller.after_step()
                if ema is not None:
                    ema.update_parameters(distiller.student)
            return out, total

        return train_step

    def step(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None, *,
             epoch: int = 0, generator: torch.Generator | None = None) -> StepOutput:
        """One optimiser step on a batch the caller gives (the benchmark and the profiler time this): the method's
        forward, backward, SGD, the schedule; nothing is logged or checked. ``generator``: the step's random
        parameters (default: the epoch's, as training would draw them)."""
        if self.runtime.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        generator = generator if generator is not None else seed_epoch(self.cfg.seed, epoch)
        info = StepInfo(epoch=epoch, step=self.step_count, epochs=self.cfg.optim.total_epochs, generator=generator,
                        indices=indices)
        out, _ = self.train_step(images, labels, info)
        self.step_count += 1
        return out

    def train_epoch(self, epoch: int, logger=None) -> dict:
        """Train one epoch (0-based) and return its record (losses per term, train accuracy, images/s): what
        ``fit`` does per epoch, without evaluating, logging to files or checkpointing."""
        return self._train_epoch(epoch, self.cfg.optim.total_epochs, logger or _SilentLogger())

    # -- epochs ---------------------------------------------------------------------------------------
    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        epochs = cfg.optim.total_epochs
        try:
            return self._fit(cfg, main, epochs)
        except NonFiniteLossError as err:
            if main:  # what a grid reads to tell this run's folder from one that was merely interrupted
                write_json(self.run_dir / run.DIVERGED, {"error": str(err), "steps_run": self.step_count})
            raise
        finally:
            self.close()

    def _fit(self, cfg: RunConfig, main: bool, epochs: int) -> dict:
        if main:
            (self.run_dir / run.DIVERGED).unlink(missing_ok=True)  # resumed, or running again: not diverged yet
            write_yaml(self.run_dir / run.CONFIG, cfg.to_dict())
        logger = RunLogger(self.run_dir, history=self.history, tensorboard=cfg.train.tensorboard,
                           quiet=self.quiet or not main, write=main, loggers=cfg.train.loggers,
                           config=cfg.to_dict())
        logger.info(f"run {self.run_dir}: {cfg.method.name} augment={cfg.augment.name} student={model_label(cfg)} "
                    f"teacher={self._teacher_label()}; {self.runtime.describe()}; "
                    f"{len(self.train_loader)} steps/epoch, {epochs} epochs"
                    + (f"; resuming at epoch {self.start_epoch + 1}" if self.start_epoch else ""))
        if base_lr(cfg) != cfg.optim.lr:
            logger.info(f"lr {base_lr(cfg)} for {cfg.model.student} from optim.lr_overrides, not optim.lr "
                        f"{cfg.optim.lr} (set optim.lr_overrides={{}} to use optim.lr)")
        for note in reconstruction_notes(cfg.to_dict()):
            logger.info(f"note: {note}")
        ramp = getattr(self.distiller.params, "ramp_epochs", None)
        if ramp and ramp > epochs:  # the defaults (80) are the papers' 300-epoch runs'
            logger.info(f"note: method.ramp_epochs {ramp:g} is past the run's {epochs} epochs: the distillation "
                        f"weight exp(-5 (1 - t/{ramp:g})^2) reaches {sigmoid_rampup(epochs - 1, ramp):.3f} of its full "
                        "value in the last epoch (set method.ramp_epochs to the run's length to ramp within it)")
        if main and cfg.train.best_metric is None and self.best_saved and self.best_path.exists():
            b = self.best_saved
            logger.info(f"note: train.best_metric is null: {run.BEST} (epoch {b['epoch']}, {b['metric']} "
                        f"{b['value']:g}, from before the resume) is kept as it is and not replaced")
        decision = self.compile_decision
        what = ("every peer's" if getattr(self.distiller, "online", False) else "the student's") + \
            " forward and forward_features" + (", the fast teacher" if getattr(self.teacher_report, "compiled", False)
                                               else "")
        logger.info(f"compile: {'yes, ' + what if decision.compile else 'no'} ({decision.reason})")
        if self.runtime.device.type == "cpu" and self.runtime.precision == "bf16" and self.runtime.channels_last:
            logger.info(f"small-channel BatchNorm (engine/small_bn.c): {small_bn.status()}, "
                        f"{self.small_bn_layers} layers; 2x2 max-pool (engine/small_pool.c): {small_pool.status()}, "
                        f"{self.small_pool_layers} layers; first-layer conv (engine/small_conv.c): "
                        f"{small_conv.status()}, {self.small_conv_layers} layers")
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
            r, how = self.teacher_report, []
            if r is not None:
                how += [f"{r.folded_pairs} conv+bn folded"] + (["int8"] if r.int8 else [])
            if self.runtime.precision != "fp32":
                how.append(self.runtime.precision)
            logger.info(f"teacher test accuracy {teacher_eval['acc']:.2f}%"
                        + (f" (the teacher as this run computes it: {', '.join(how)}; its own run's evaluation may "
                           f"differ in the last digits)" if how else ""))
            source = cfg.model.teacher_checkpoint
            if Path(source).is_file() and (note := run.open_run(source).online_network_note()):
                logger.info(f"note: teacher {source}: {note}")  # an online run's: one of its networks
        self._start_teacher_views(logger)
        try:
            for epoch in range(self.start_epoch, epochs):
                record = self._train_epoch(epoch, epochs, logger)
                if main and ((epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == epochs):
                    record.update(eval_record(evaluate_many(self.distiller, self.distiller.evaluation_logits,
                                                            self.test_loader, self.runtime)))
                    if self.ema is not None:
                        record.update(ema_record(evaluate(self.ema, self.test_loader, self.runtime)))
                self.history.append(record)
                logger.epoch(record)
                improved = main and self._improves_best(record)
                if improved:
                    self.best_saved = dict(self.best)  # recorded in this epoch's checkpoints (best.pt and last.pt)
                if self._probe_key and self.compile_decision.compile and epoch == self.start_epoch + 1:
                    first, second = self.history[-2]["epoch_time_s"], record["epoch_time_s"]
                    record_warm_compile(self._probe_key, max(0.0, first - second))
                due = main and ((epoch + 1) % cfg.train.checkpoint_every == 0 or epoch + 1 == epochs)
                state = self._state(epoch + 1) if improved or due else None
                if improved:  # before last.pt: a run killed between the two re-runs this epoch on --resume
                    self._save_best(state)
                if due:
                    self._save_state(epoch + 1, state)
                self.dist.barrier()
        finally:
            logger.close()
        summary = summarize(self.history, cfg, teacher_eval)
        summary["train_images"], summary["data_root"] = self.train_images, str(self.data_root.resolve())
        summary["compiled"] = self.runtime.compile
        views = self.distiller.teacher_views
        if views is not None and views.disabled:
            self.teacher_views_report["off"] = views.disabled
        summary["teacher_views"] = self.teacher_views_report
        # what best.pt holds; None without one (train.best_metric null; a run resumed from a checkpoint older than
        # best.pt whose best epoch was never beaten since)
        summary["best_checkpoint"] = ({"file": run.BEST, **self.best_saved}
                                      if self.best_saved and main and self.best_path.exists() else None)
        summary["environment"] = environment(self.runtime, world_size=self.dist.world_size)
        if main:
            write_json(self.run_dir / run.SUMMARY, summary)
        return summary

    def _train_epoch(self, epoch: int, epochs: int, logger) -> dict:
        cfg, runtime = self.cfg, self.runtime
        views_on = self.distiller.teacher_views is not None
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
        skipped_before = self.amp_skipped
        for i, (images, labels, indices) in enumerate(self.train_loader):
            if runtime.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            info = StepInfo(epoch=epoch, step=self.step_count, epochs=epochs, generator=generator, indices=indices,
                            views=self.train_loader.views if views_on else None)
            out, total = self.train_step(images, labels, info)
            with torch.no_grad():
                for name, value in out.losses.items():
                    value = value.detach().float()
                    sums[name] = sums.get(name, 0) + value
                    finite = torch.isfinite(value)
                    first = bad_terms.get(name, torch.full_like(bad_step, -1))
                    bad_terms[name] = torch.where(~finite & (first < 0), self.step_count, first)
                total = total.detach().float()
                sums["loss"] = sums.get("loss", 0) + total
                bad_step = torch.where(~torch.isfinite(total) & (bad_step < 0), self.step_count, bad_step)
                correct += (out.logits.argmax(1) == (labels if out.labels is None else out.labels)).sum()
                for name, value in (out.stats or {}).items():
                    stats[name] = stats.get(name, 0) + (value.detach().float() if torch.is_tensor(value) else value)
            seen += labels.numel()
            self.step_count += 1
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
        record = {"epoch": epoch + 1, "step": self.step_count, "lr": lr,
                  "train_acc": 100.0 * correct.item() / seen, "images_per_s": seen / elapsed,
                  "epoch_time_s": elapsed}
        record.update({f"train_{k}": (v / n).item() for k, v in sums.items()})
        record.update({f"stat_{k}": float(v / n) for k, v in stats.items()})
        if self.scaler is not None:  # fp16: the loss scale at the epoch's end, and the steps skipped in it
            record.update(amp_scale=self.scaler.get_scale(), amp_skipped_steps=self.amp_skipped - skipped_before)
        return record

    # -- the teacher's table of views (engine/teacher_views.py) --------------------------------------------
    def _teacher_label(self) -> str:
        """The start line's teacher: its checkpoint, or why a given one is not used (an online method, CE)."""
        source = self.cfg.model.teacher_checkpoint
        if source is None:
            return "-"
        return source if self.distiller.teacher is not None else f"- (model.teacher_checkpoint {source} is not " \
                                                                  f"used by {self.cfg.method.name})"

    def _views_source(self) -> teacher_views.TableSource:
        """What this run's table of teacher views is built from (engine/teacher_views.py)."""
        r = self.teacher_report
        form = (f"{type(self.distiller.teacher).__name__}; folded {r.folded_pairs}, compiled {r.compiled}, "
                f"int8 {r.int8}" if r is not None else type(self.distiller.teacher).__name__)
        return teacher_views.TableSource(self.train_loader, self.distiller.teacher, self.distiller.teacher_logits,
                                         self.runtime.autocast, self.runtime.channels_last, form, self.num_classes,
                                         self.runtime.precision)

    def _start_teacher_views(self, logger) -> None:
        """train.teacher_cache: use the table of the teacher's logits per view if it is there, else build it when it
        pays (or train.teacher_cache=true), or wait for the process that is building it."""
        setting = self.cfg.train.teacher_cache
        if setting is False:
            return
        why_not = teacher_views.unusable(self.cfg) or ("torchrun processes" if self.dist.enabled else None)
        if why_not:
            if setting is True:
                raise teacher_views.refused(why_not)
            return
        src = self._views_source()
        loader = self.train_loader
        n, views = len(loader.labels), teacher_views.views_drawn(loader.crop_padding, loader.flip)
        path = Path(self.cfg.output_dir) / teacher_views.FOLDER / f"{teacher_views.table_key(src)}.pt"
        table, did = teacher_views.load_table(path, src), teacher_views.Building()
        if table is None:
            epochs = self.cfg.optim.total_epochs - self.start_epoch
            size = teacher_views.table_bytes(n, views, self.num_classes, self.runtime.precision)
            if setting == "auto" and not teacher_views.pays(epochs, loader.crop_padding, loader.flip):
                logger.info(f"teacher view cache: off ({epochs} epochs of teacher passes cost less than building "
                            f"{views} views x {n} images)")
                return
            if setting == "auto" and size > teacher_views.AUTO_MAX_BYTES:
                logger.info(f"teacher view cache: off (its {views} views x {n} images would take {size >> 20} MiB, "
                            f"above the {teacher_views.AUTO_MAX_BYTES >> 20} MiB auto builds; "
                            f"train.teacher_cache=true builds it)")
                return
            logger.info(f"teacher view cache: building {views} views x {n} images ({views * n:,} teacher passes, "
                        f"as many as {views} epochs make) beside the runs that share it ...")
            table, did = teacher_views.build_or_wait(path, src, self.cfg.data.batch_size)
        self.distiller.teacher_views = table
        self.teacher_views_report = {"file": str(path), "views": views, "images": n,
                                     "views_built": did.views_built, "built_s": round(did.built_s, 2),
                                     "waited_s": round(did.waited_s, 2)}
        if did.views_built == views:
            how = f"built in {did.built_s:.1f} s"
        elif did.views_built:
            how = (f"built {did.views_built} of its views in {did.built_s:.1f} s beside other runs, waited "
                   f"{did.waited_s:.1f} s")
        elif did.waited_s >= 0.1:
            how = f"built by other runs, waited {did.waited_s:.1f} s"
        else:
            how = "loaded"
        logger.info(f"teacher view cache: {path} ({how}; {views} views x {n} images); its first batch is checked "
                    f"against the teacher")

    def _improves_best(self, record: dict) -> bool:
        """Does this epoch's evaluation beat the best so far by ``train.best_metric``? (Updates it if so.)"""
        metric = self.cfg.train.best_metric
        if metric is None or not any(k.startswith("test_") for k in record):
            return False
        if metric not in record:
            evaluated = ", ".join(k for k in record if k.startswith("test_"))
            raise ConfigError(f"train.best_metric {metric} is not among this run's evaluated metrics ({evaluated})")
        if not _better(record[metric], self.best and self.best["value"], metric):
            return False
        self.best = {"metric": metric, "value": record[metric], "epoch": record["epoch"]}
        return True

    def _raise_if_nonfinite(self, bad_step, bad_terms):
        """Stop at a non-finite loss; under torchrun every rank stops together, at the earliest rank's step, so that
        the rank that prints (a node's first) says it, not a rank whose share of the batch alone went bad."""
        step = int(bad_step.item())
        terms = ([name for name, s in bad_terms.items() if s.item() == step] or ["total"]) if step >= 0 else []
        where = ""
        if self.dist.enabled and self.dist.sum_((bad_step >= 0).to(torch.int64)).item():
            everyone: list = [None] * self.dist.world_size
            torch.distributed.all_gather_object(everyone, (step, terms))
            rank, (step, terms) = min(((r, x) for r, x in enumerate(everyone) if x[0] >= 0), key=lambda rx: rx[1][0])
            where = f" on rank {rank}"
        if step >= 0:
            kept = (f"The last good checkpoint is kept at {self.checkpoint_path}" if self.checkpoint_path.exists()
                    else "No checkpoint was written yet (it failed before the first epoch ended)")
            raise NonFiniteLossError(f"non-finite loss at step {step}{where} (term: {', '.join(terms)}); stopped. "
                                     f"{kept}")


# ------------------------------------------------------------------------------------------ helpers

def scaled_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    """fp16's backward and optimiser step through a ``GradScaler``: backward of the scaled loss, ``scaler.step``
    (which unscales the gradients and skips the step when any is inf or NaN), ``scaler.update`` (the scale halves
    after a skipped step, grows after ``growth_interval`` clean ones). Returns whether the optimiser stepped.

    Known without another host sync: an optimiser step post-hook tells (the scaler reads its inf check on the host
    anyway for an unfused optimiser, as the trainer's SGD is). The trainer clips no gradients; a clip would go
    between ``scaler.unscale_(optimizer)`` and ``scaler.step``."""
    stepped = []
    handle = optimizer.register_step_post_hook(lambda *args: stepped.append(True))
    try:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
    finally:
        handle.remove()
    scaler.update()
    return bool(stepped)


def advance_schedule(scheduler, stepped: bool) -> None:
    """Step the LR schedule once per batch, stepped or skipped: the schedule is a function of the batch index
    (epoch milestones, a cosine over the run's steps), so a batch whose update the fp16 scaler skipped is a lost
    update, not a shift of the schedule. (PyTorch's warning about a schedule stepped before the optimiser,
    which a skipped first step raises, is silenced for that case.)"""
    if stepped:
        scheduler.step()
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        scheduler.step()


def _better(value: float, best: float | None, metric: str) -> bool:
    """Strictly better (ties keep the earlier epoch); NaN never is."""
    if value != value:
        return False
    if best is None:
        return True
    return value < best if metric_lower_is_better(metric) else value > best


def best_so_far(history: list[dict], metric: str | None) -> dict | None:
    """The best evaluated epoch of ``history`` by ``metric`` (``{"metric", "value", "epoch"}``), or None: what a
    resumed run compares its next evaluations with, so best.pt is never replaced by a worse epoch."""
    best = None
    for record in history:
        if metric is not None and metric in record and _better(record[metric], best and best["value"], metric):
            best = {"metric": metric, "value": record[metric], "epoch": record["epoch"]}
    return best


def ema_record(result: dict) -> dict:
    """The student EMA's test metrics (``evaluate``'s result) under the ``_ema`` suffix."""
    record = {"test_acc_ema": result["acc"], "test_loss_ema": result["loss"]}
    if result.get("top5") is not None:
        record["test_top5_ema"] = result["top5"]
    return record


def summarize(history: list[dict], cfg: RunConfig, teacher_eval: dict | None) -> dict:
    evaluated = [h for h in history if "test_acc" in h]
    last = evaluated[-1] if evaluated else {}
    best = max(evaluated, key=lambda h: h["test_acc"]) if evaluated else {}
    return {
        "name": cfg.name, "method": cfg.method.name,
        "student": model_label(cfg),
        # the teacher the run learnt from: none for a method that loads none (a CE baseline given its pair's path)
        "teacher": cfg.model.teacher_checkpoint if METHODS[cfg.method.name].needs_teacher else None,
        "seed": cfg.seed, "dataset": cfg.data.dataset,
        "epochs": cfg.optim.total_epochs,
        "last_acc": last.get("test_acc"), "best_acc": best.get("test_acc"), "best_epoch": best.get("epoch"),
        "last_top5": last.get("test_top5"), "last_test_loss": last.get("test_loss"),
        "teacher_acc": teacher_eval["acc"] if teacher_eval else None,
        **{f"last_{k.removeprefix('test_')}": v for k, v in last.items() if k.startswith("test_acc_")},
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "notes": reconstruction_notes(cfg.to_dict()),
    }


def train(cfg: RunConfig, *, resume: bool = False, quiet: bool = False) -> dict:
    """Train the run ``cfg`` names and return its summary. ``resume`` on a run that finished with this config, in
    this folder, returns its summary as it stands: nothing is built, evaluated or written (a renamed folder's run
    is resumed, which records its new name)."""
    if resume:
        summary = run.read_summary(cfg.run_dir)
        if (summary is not None and summary.get("name") == cfg.name and (cfg.run_dir / run.CHECKPOINT).exists()
                and run.saved_config_difference(cfg) == []):
            if not quiet and int(os.environ.get("RANK", "0")) == 0:  # under torchrun: once, not once a process
                print(f"{cfg.run_dir} finished all {summary.get('epochs', cfg.optim.epochs)} epochs: nothing to "
                      "resume (its summary follows)", file=sys.stderr, flush=True)
            return summary
    try:
        return Trainer(cfg, resume=resume, quiet=quiet).fit()
    finally:  # done or stopped by an error (torn down at exit, gloo's threads aborted the process: SIGABRT)
        end_distributed()


def train_or_reuse(cfg: RunConfig, *, quiet: bool = False, log=print) -> tuple[dict, bool]:
    """Finished run → its summary; a run killed midway → resumed; otherwise a fresh run. Used by the
    demo and the studies so that re-running them skips finished work and loses nothing. A run directory that
    cannot be reused or resumed (:func:`_why_set_aside`) is set aside (renamed) and the run trained afresh.
    Returns the summary and whether it was reused (nothing trained)."""
    summary = run.read_summary(cfg.run_dir)
    why = _why_set_aside(cfg, summary)
    if why:
        old = run.set_aside(cfg.run_dir)
        log(f"{cfg.run_dir.name}: {why}; old run moved to {old}, training afresh")
        summary = None
    if summary is not None:
        return summary, True
    resume = (cfg.run_dir / run.CHECKPOINT).exists()
    return train(cfg, resume=resume, quiet=quiet), False  # a damaged summary.json is written again


def reusable_summary(cfg: RunConfig) -> dict | None:
    """The summary :func:`train_or_reuse` would return without training anything (a finished run of this config in
    its folder), else None."""
    summary = run.read_summary(cfg.run_dir)
    return summary if summary is not None and _why_set_aside(cfg, summary) is None else None


def keeps_final_weights(cfg: RunConfig) -> bool:
    """Does the folder of ``cfg`` hold its run's final weights, to be reused or resumed as they are: finished, or
    killed after its last epoch's checkpoint (resuming it only evaluates and writes the summary)? The runs that
    distil from it are still its students then."""
    checkpoint, summary = cfg.run_dir / run.CHECKPOINT, run.read_summary(cfg.run_dir)
    if summary is not None:
        return checkpoint.exists() and _why_set_aside(cfg, summary) is None
    if not checkpoint.exists() or run.saved_config_difference(cfg):  # _why_set_aside's other reasons, the
        return False  # checkpoint read once below (an unreadable one is its last)
    try:
        return load_checkpoint(checkpoint).get("epoch", 0) >= cfg.optim.total_epochs
    except CheckpointError:
        return False


def _why_set_aside(cfg: RunConfig, summary: dict | None) -> str | None:
    """Why the run directory of ``cfg`` (whose readable summary is ``summary``) can be neither reused nor resumed:
    another config; finished without the checkpoint its readers (students, eval, analyze) need; unfinished with a
    checkpoint that cannot be read (a grid would fail on it at every invocation). None: reuse or resume it."""
    diff = run.saved_config_difference(cfg)
    if diff:
        return f"config changed since it ran ({'; '.join(diff[:3])}{'; ...' if len(diff) > 3 else ''})"
    checkpoint = cfg.run_dir / run.CHECKPOINT
    if not checkpoint.exists():
        return f"its {run.CHECKPOINT} is missing" if (cfg.run_dir / run.SUMMARY).exists() else None
    if summary is None:
        try:
            load_checkpoint(checkpoint)
        except CheckpointError as err:
            return f"its {checkpoint.name} cannot be read ({err})"
    return None


class _SilentLogger:
    """A logger for ``train_epoch`` outside ``fit``: no progress bar, no lines."""

    def progress(self, *args, **kwargs):
        return self

    def info(self, *args, **kwargs):
        pass

    def update(self, *args, **kwargs):
        pass

    def close(self):
        pass
