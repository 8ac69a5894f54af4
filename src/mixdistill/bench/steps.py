"""``mixdistill bench``: the project's training step against a plain reference loop, in one process.

Both loops train on the same synthetic CIFAR-100-shaped data (``write_cifar_like``: real pickle format,
32x32 RGB, 100 classes), with the same model pair, batch size and seed:

* **reference**: written the standard way (RepDistiller's ``train_distill``): torchvision's ``CIFAR100``
  Dataset with per-sample PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
  Normalize) in a ``torch.utils.data.DataLoader`` with ``num_workers`` = the machine's CPU count (persistent
  workers, so epoch restarts are not timed), fp32, NCHW, teacher in eval mode under ``torch.no_grad()``,
  ``loss.item()`` per step, SGD. The mixing methods are done the plain way on top of it (see ``_ref_*``).
  On CUDA ``cudnn.benchmark`` is on for both loops, as RepDistiller sets it.
* **project**: a real :class:`~mixdistill.engine.trainer.Trainer` built from a config (the CRD protocol with
  overrides) and timed through ``Trainer.train_epoch``: device-resident uint8 data, batched on-device
  crop/flip/normalise, the trainer's own precision / layout / compile choices (``resolve_runtime``).
* **project** is the trainer as configured by default, which includes the fast teacher
  (``train.fast_teacher``: Conv+BN folded, channels_last teacher, compiled with the student when compile is
  on; :mod:`mixdistill.engine.fast`). The other project-side variants change one setting each:
  ``eager_teacher`` (``train.fast_teacher=false``: what the fast teacher buys), ``int8`` (CPU:
  ``train.int8_teacher=true``), ``compile`` (CPU, where compile is off by default: ``train.compile=true``,
  the student and the folded teacher compiled), ``int8_compile`` (CPU: both), ``cuda_graphs`` (CUDA:
  ``train.cuda_graphs=true``: the student compiled with ``mode="reduce-overhead"``, the fast teacher replayed as a
  CUDA graph, SGD's fused kernel; until 2026-12-04 the last two were the bench-only ``cuda_graphs_all``).

Timing: after warm-up, ``rounds`` rounds; in each round every loop runs ``steps`` steps (one epoch of the
project's loader), in a rotating order, so background load hits all loops alike. Reported: the median
images/s over rounds; the speed-up is the median over rounds of the per-round ratio (each round's loops ran
back to back), with the per-round range and the ratio of the medians beside it. Teachers have random
weights: speed does not depend on them (the accuracy check lives in ``benchmarks/accuracy_check.py``).

Work: before warm-up, one step of the reference and of every project loop that runs uncompiled in fp32 is
counted with ``torch.utils.flop_counter`` (forward and backward convolutions and matmuls). The report gives
FLOPs per image, whether the project's loops do exactly the reference's work, the FLOP rate each loop
reached, and KD+CutMixPick's work over KD's and KD+CutMix's: what a step-time ratio comes to at one rate.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixdistill.bench.grid import grid_case, grid_markdown
from mixdistill.config import load_config
from mixdistill.data.readers import read_cifar100
from mixdistill.data.synthetic import write_cifar_like
from mixdistill.engine.runtime import cpu_has_native_bf16, resolve_device, resolve_runtime, seed_epoch, torch_threads
from mixdistill.engine.trainer import Trainer
from mixdistill.errors import ConfigError, refuse_under_torchrun, require_at_least
from mixdistill.files import check_writable, make_dir, save_torch, write_json, write_text
from mixdistill.machine import available_cpus, cpu_name
from mixdistill.models import create_model

CASES = {  # name -> (label, config overrides)
    "kd": ("KD", ["method=kd"]),
    "kd_cutmix": ("KD+CutMix", ["method=kd_view", "augment=cutmix"]),
    "kd_cutmixpick": ("KD+CutMixPick", ["method=kd_view", "augment=cutmix_pick"]),
    "mixstd": ("MIXSTD", ["method=mixstd", "augment=mixup_two_perm"]),
    "dml": ("DML (3 peers)", ["method=dml", "method.peers=3"]),
}
DEFAULT_OUT = "runs/bench"  # a scratch folder: a later bench replaces its files; a folder given keeps them
DEFAULT_PAIRS, QUICK_PAIR = "resnet32x4-resnet8x4,wrn_40_2-wrn_16_2", "cnn5_w16-cnn5_w8"
PAIRS = {  # name -> (teacher, student)
    "resnet32x4-resnet8x4": ("resnet32x4", "resnet8x4"),
    "wrn_40_2-wrn_16_2": ("wrn_40_2", "wrn_16_2"),
    "cnn5_w16-cnn5_w8": ("cnn5_w16", "cnn5_w8"),  # --quick
}
VARIANTS = ("project", "eager_teacher", "int8", "compile", "int8_compile", "cuda_graphs")
VARIANT_OVERRIDES = {"project": [], "eager_teacher": ["train.fast_teacher=false"],
                     "int8": ["train.int8_teacher=true"], "compile": ["train.compile=true"],
                     "int8_compile": ["train.int8_teacher=true", "train.compile=true"],
                     "cuda_graphs": ["train.cuda_graphs=true"]}
TEACHER_VARIANTS = ("eager_teacher", "int8", "int8_compile")  # skipped for online methods (no teacher)
CPU_VARIANTS = ("int8", "compile", "int8_compile")  # compile: on CUDA the default already compiles
MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)  # CIFAR-100 (as RepDistiller)
NUM_CLASSES = 100


# ------------------------------------------------------------------------------------------- options

def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (cuda when available)")
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, from {', '.join(CASES)}, and grid (runs per hour of a study-scale grid: "
                        "the grid runner's defaults against one run at a time; minutes, so not in the default)")
    p.add_argument("--grid-runs", type=int, default=4, help="grid case: runs in the grid")
    p.add_argument("--grid-epochs", type=int, default=None,
                   help="grid case: epochs of each run, 23 steps each (default: 45; --quick: 1). The grid case times "
                        "the grid runner's own thread counts and defaults: --threads, --compile, --channels-last and "
                        "--pairs are the throughput cases'")
    p.add_argument("--grid-rounds", type=int, default=None,
                   help="grid case: rounds, in alternating order (default: 2; --quick: 1)")
    p.add_argument("--pairs", default=None,
                   help=f"comma-separated teacher-student pairs, from {', '.join(PAIRS)} (default: "
                        f"{DEFAULT_PAIRS}; --quick: {QUICK_PAIR})")
    p.add_argument("--variants", default="auto",
                   help="project-side loops to time besides the reference: project (the trainer as configured), "
                        "eager_teacher (train.fast_teacher=false), int8, compile, int8_compile (CPU), cuda_graphs "
                        "(CUDA); auto = project,eager_teacher plus int8,compile on CPU, cuda_graphs "
                        "on CUDA")
    p.add_argument("--batch-size", type=int, default=64, help="images per step, both loops")
    p.add_argument("--steps", type=int, default=None, help="timed steps per round (default: 2 CPU, 100 CUDA)")
    p.add_argument("--rounds", type=int, default=None,
                   help="interleaved timing rounds (default: 9 CPU, 3 CUDA); the ratio is the median of the "
                        "per-round ratios")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per loop (default: 2 CPU, 20 CUDA)")
    p.add_argument("--num-workers", type=int, default=None, help="reference DataLoader workers (default: CPU count)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--precision", default="auto", help="the project's train.precision (auto: bf16 where native)")
    p.add_argument("--compile", default="auto", help="the project's train.compile: auto | true | false")
    p.add_argument("--channels-last", default="auto", help="the project's train.channels_last: auto | true | false")
    p.add_argument("--time-budget", type=float, default=None,
                   help="seconds; cases not started within it are reported as not measured")
    p.add_argument("--out", default=None, help="directory for bench_<TAG>.json / .md (default: runs/bench, whose "
                   "files a later bench replaces; the committed results live in docs/results)")
    p.add_argument("--tag", default=None, help="file name suffix: letters, digits, '.', '_', '-' (default: the device "
                                               "kind, cpu or cuda; --quick: quick_cpu, quick_cuda)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the bench_<TAG>.json / .md an earlier bench wrote in the --out given (refused "
                        "without it)")
    p.add_argument("--quick", action="store_true", help="tiny models and steps (smoke test, seconds)")
    p.add_argument("--seed", type=int, default=0, help="weights, data and order of both loops")


# ---------------------------------------------------------------------------------------------- data

def write_bench_data(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Synthetic CIFAR-100 in the real pickle layout (train, test)."""
    return write_cifar_like(root, 100, n_train=n_train, n_test=n_test, seed=seed)


def reference_dataset(root: Path, train: bool = True):
    """torchvision's CIFAR100 class (its per-sample ``__getitem__``: ``Image.fromarray`` + transform) over the
    same pickle files, with RepDistiller's train transforms. Only the loading differs: torchvision checks the
    real archive's MD5 sums and expects Python-2 pickles, so the arrays are read here as the project's
    reader reads them."""
    import torchvision
    from torchvision import transforms


    class SyntheticCIFAR100(torchvision.datasets.CIFAR100):
        def __init__(self, root, train, transform):
            torchvision.datasets.VisionDataset.__init__(self, str(root), transform=transform)
            self.train = train
            images, labels = read_cifar100(root, "train" if train else "test")
            self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # HWC uint8, as torchvision keeps it
            self.targets = labels.tolist()
            self.classes = [f"class_{i}" for i in range(100)]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    tf = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return SyntheticCIFAR100(root, train, tf)


# ------------------------------------------------------------------------------------ reference loop

def _kl_t(logit_s, logit_t, T=4.0):
    """RepDistiller's DistillKL: KL(softmax(t/T) || softmax(s/T)) * T^2, batch mean."""
    p_s = F.log_softmax(logit_s / T, dim=1)
    p_t = F.softmax(logit_t / T, dim=1)
    return F.kl_div(p_s, p_t, reduction="sum") * T**2 / logit_s.shape[0]


def _rand_bbox(size, lam):
    """The CutMix reference code's box (clovaai/CutMix-PyTorch)."""
    W, H = size[2], size[3]
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(W * cut_rat), int(H * cut_rat)
    cx, cy = np.random.randint(W), np.random.randint(H)
    return (np.clip(cx - cut_w // 2, 0, W), np.clip(cy - cut_h // 2, 0, H),
            np.clip(cx + cut_w // 2, 0, W), np.clip(cy + cut_h // 2, 0, H))


def _cutmix_plain(x):
    lam = np.random.beta(1.0, 1.0)
    index = torch.randperm(x.shape[0], device=x.device)
    bbx1, bby1, bbx2, bby2 = _rand_bbox(x.size(), lam)
    out = x.clone()
    out[:, :, bbx1:bbx2, bby1:bby2] = x[index, :, bbx1:bbx2, bby1:bby2]
    return out


class ReferenceLoop:
    """The standard way (RepDistiller ``train_distill`` and the methods' released code), one step at a time."""

    def __init__(self, case: str, teacher_arch: str, student_arch: str, loader, device: torch.device, seed: int):
        self.case, self.device, self.loader = case, device, loader
        torch.manual_seed(seed)
        np.random.seed(seed)
        if case == "dml":
            self.peers = [create_model(student_arch, NUM_CLASSES).to(device).train() for _ in range(3)]
            self.optims = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
                           for m in self.peers]
            self.teacher = None
        else:
            self.student = create_model(student_arch, NUM_CLASSES).to(device).train()
            self.teacher = create_model(teacher_arch, NUM_CLASSES).to(device).eval()
            self.optim = torch.optim.SGD(self.student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        self._it = None
        self.last_loss = float("nan")

    def _next(self):
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)

    def step(self):
        x, y = self._next()
        x, y = x.to(self.device), y.to(self.device)  # RepDistiller: input.cuda(), no pinned memory
        loss = getattr(self, f"_step_{self.case}")(x, y)
        self.last_loss = loss.item()  # RepDistiller: losses.update(loss.item(), input.size(0))

    def _sgd(self, loss):
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return loss

    def _step_kd(self, x, y):
        logit_s = self.student(x)
        with torch.no_grad():
            logit_t = self.teacher(x)
        return self._sgd(0.1 * F.cross_entropy(logit_s, y) + 0.9 * _kl_t(logit_s, logit_t))

    def _step_kd_cutmix(self, x, y):  # wang2022: KD on the clean batch + KD on a CutMix view
        x_aug = _cutmix_plain(x)
        logit_s, logit_s_aug = self.student(x), self.student(x_aug)
        with torch.no_grad():
            logit_t, logit_t_aug = self.teacher(x), self.teacher(x_aug)
        loss = 0.1 * F.cross_entropy(logit_s, y) + 0.9 * _kl_t(logit_s, logit_t) + 0.9 * _kl_t(logit_s_aug, logit_t_aug)
        return self._sgd(loss)

    def _step_kd_cutmixpick(self, x, y):  # pool of 2 CutMix runs, keep the B with the largest KL
        b = x.shape[0]
        pool = torch.cat([_cutmix_plain(x), _cutmix_plain(x)])
        with torch.no_grad():
            t_pool = self.teacher(pool)
            self.student.eval()
            s_pool = self.student(pool)
            self.student.train()
            log_pt, log_ps = F.log_softmax(t_pool / 4, 1), F.log_softmax(s_pool / 4, 1)
            keep = torch.topk((log_pt.exp() * (log_pt - log_ps)).sum(1), b).indices
            logit_t = self.teacher(x)
        x_aug, logit_t_aug = pool[keep], t_pool[keep]
        logit_s, logit_s_aug = self.student(x), self.student(x_aug)
        loss = 0.1 * F.cross_entropy(logit_s, y) + 0.9 * _kl_t(logit_s, logit_t) + 0.9 * _kl_t(logit_s_aug, logit_t_aug)
        return self._sgd(loss)

    def _step_mixstd(self, x, y):  # choi2023: two-permutation per-sample mixup, std-normalised logits
        b = x.shape[0]
        lam = torch.from_numpy(np.random.beta(1.0, 1.0, b)).float().to(self.device)
        i1, i2 = torch.randperm(b, device=self.device), torch.randperm(b, device=self.device)
        lam4 = lam.view(b, 1, 1, 1)
        x_mix = lam4 * x[i1] + (1 - lam4) * x[i2]
        logit_s = self.student(x_mix)
        with torch.no_grad():
            logit_t = self.teacher(x_mix)
        s = logit_s / logit_s.std(1, keepdim=True)
        t = logit_t / logit_t.std(1, keepdim=True)
        log_ps = F.log_softmax(s, 1)
        ce = (-(lam * log_ps.gather(1, y[i1, None])[:, 0]) - (1 - lam) * log_ps.gather(1, y[i2, None])[:, 0]).mean()
        kl = F.kl_div(log_ps, F.softmax(t, 1), reduction="batchmean")
        return self._sgd(0.1 * ce + 0.9 * kl)

    def _step_dml(self, x, y):  # Zhang et al.'s loop: one optimiser and one backward per peer
        outs = [m(x) for m in self.peers]
        total = 0.0
        for i, (opt, out) in enumerate(zip(self.optims, outs)):
            kl = sum(F.kl_div(F.log_softmax(out, 1), F.softmax(o.detach(), 1), reduction="batchmean")
                     for j, o in enumerate(outs) if j != i) / (len(outs) - 1)
            loss = F.cross_entropy(out, y) + kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            total = total + loss.detach()
        return total


# -------------------------------------------------------------------------------------- project loop

class ProjectLoop:
    """A real Trainer from a config (CRD protocol + overrides), timed one epoch (= ``steps`` steps) at a time."""

    def __init__(self, case: str, variant: str, teacher_arch: str, student_arch: str, *, data_root: Path,
                 teacher_ckpt: Path | None, run_root: Path, batch_size: int, device: str, args, seed: int):
        overrides = [
            f"name=bench_{case}_{variant}", f"output_dir={run_root}", f"seed={seed}",
            "data.dataset=cifar100", f"data.root={data_root}", f"data.batch_size={batch_size}",
            "data.eval_batch_size=500", "data.crop_padding=4", "data.flip=true", "data.download=false",
            f"model.student={student_arch}",
            "optim.lr=0.05", "optim.momentum=0.9", "optim.weight_decay=5e-4", "optim.epochs=240",
            "optim.schedule=step", "optim.milestones=[150,180,210]",
            f"train.device={device}", f"train.precision={args.precision}", f"train.compile={args.compile}",
            f"train.channels_last={args.channels_last}", "train.progress=false", "train.tensorboard=false",
            "train.log_every=50",
        ] + list(CASES[case][1]) + VARIANT_OVERRIDES[variant]
        if case != "dml":
            overrides += [f"model.teacher={teacher_arch}", f"model.teacher_checkpoint={teacher_ckpt}",
                          "method.temperature=4.0", "method.ce_weight=0.1", "method.kd_weight=0.9"]
            if case == "mixstd":
                overrides = [o for o in overrides if not o.startswith("method.temperature")]
        if variant in CPU_VARIANTS and device != "cpu":
            raise ValueError(f"{variant} is a CPU variant")
        if variant.startswith("cuda_graphs") and not device.startswith("cuda"):
            raise ValueError(f"{variant} is a CUDA variant")
        self.case, self.variant = case, variant
        self.cfg = load_config(None, overrides)
        self.overrides = overrides
        # train.compile=auto on a CPU decides for the run the bench stands for: the CRD protocol, 240 epochs of
        # 50,000 images (the bench's own epochs are a few steps); --quick runs decide for their own length
        protocol_steps = None if args.quick else 240 * (50_000 // batch_size)
        self.trainer = Trainer(self.cfg, quiet=True, compile_steps=protocol_steps)
        self.runtime = self.trainer.runtime
        report = self.trainer.teacher_report
        self.teacher_report = report.to_dict() if report is not None else None
        self.epoch = 0
        self.last_record: dict = {}

    def warmup(self, steps: int):
        tr = self.trainer
        tr.distiller.train()
        g = seed_epoch(self.cfg.seed, 10_000)  # warm-up draws of its own, not the timed epochs'
        for x, y, idx in _take(tr.train_loader, steps):
            tr.step(x, y, idx, generator=g)
        _sync(self.runtime.device)

    def run_round(self) -> tuple[int, float]:
        """One epoch through the trainer's own loop; returns (images, seconds)."""
        _sync(self.runtime.device)
        started = time.perf_counter()
        record = self.trainer.train_epoch(self.epoch)
        _sync(self.runtime.device)
        elapsed = time.perf_counter() - started
        self.epoch += 1
        self.last_record = record
        return len(self.trainer.train_loader) * self.cfg.data.batch_size, elapsed

    @property
    def last_loss(self) -> float:
        return float(self.last_record.get("train_loss", float("nan")))


def _take(loader, n):
    for i, batch in enumerate(loader):
        if i >= n:
            return
        yield batch


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------- helpers

def make_teacher_checkpoint(arch: str, path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = create_model(arch, NUM_CLASSES)
    save_torch({"model": model.state_dict(), "arch": arch}, path)
    return path


def machine_info(device: torch.device, num_workers: int) -> dict:
    info = {
        "device": str(device), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_name(), "cpu_count": available_cpus(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(), "torch_threads": torch.get_num_threads(),
        "reference_num_workers": num_workers,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return info


def _loadavg() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _median(xs):
    return statistics.median(xs) if xs else float("nan")


@dataclass
class LoopResult:
    images_per_s: list[float] = field(default_factory=list)
    images_per_cpu_s: list[float] = field(default_factory=list)  # images / CPU seconds of this process
    last_loss: float = float("nan")
    error: str | None = None
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        out = {"images_per_s": _median(self.images_per_s), "rounds_images_per_s": [round(v, 2) for v in self.images_per_s],
               "images_per_cpu_s": _median(self.images_per_cpu_s),
               "rounds_images_per_cpu_s": [round(v, 2) for v in self.images_per_cpu_s],
               "last_loss": self.last_loss, "loss_finite": math.isfinite(self.last_loss)}
        if self.error:
            out["error"] = self.error
        out.update(self.extra)
        return out


# ------------------------------------------------------------------------------------------- a case

def run_case(case, pair, variants, *, device, data_root, ckpt, run_root, ref_loader, args, steps, warmup, rounds):
    teacher_arch, student_arch = PAIRS[pair]
    loops: dict[str, object] = {}
    results: dict[str, LoopResult] = {}
    results["reference"] = LoopResult()
    loops["reference"] = ReferenceLoop(case, teacher_arch, student_arch, ref_loader, device, args.seed)
    for v in variants:
        if case == "dml" and v in TEACHER_VARIANTS:
            continue  # no teacher: identical to project
        results[v] = LoopResult()
        try:
            loops[v] = ProjectLoop(case, v, teacher_arch, student_arch, data_root=data_root, teacher_ckpt=ckpt,
                                   run_root=run_root, batch_size=args.batch_size, device=str(device), args=args,
                                   seed=args.seed)
            if loops[v].teacher_report:
                results[v].extra["teacher"] = loops[v].teacher_report
            results[v].extra["runtime"] = loops[v].runtime.describe()
            results[v].extra["precision"] = loops[v].runtime.precision
        except Exception as e:  # a variant that cannot be built is reported, not fatal
            results[v].error = f"{type(e).__name__}: {e}"
            loops.pop(v, None)
    # the work of one step, before warm-up (compiled or int8 loops run ops the counter cannot see)
    flops = {}
    for name, loop in list(loops.items()):
        if name != "reference" and (loop.runtime.compile or loop.trainer.cfg.train.int8_teacher):
            continue
        try:
            flops[name] = step_flops(loop.step if name == "reference" else lambda: loop.warmup(1)) / args.batch_size
        except Exception as e:
            results[name].extra["flops_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    # warm-up (compiles happen here)
    for name, loop in list(loops.items()):
        t0 = time.perf_counter()
        try:
            if name == "reference":
                for _ in range(warmup):
                    loop.step()
                _sync(device)
            else:
                loop.warmup(warmup)
                if device.type == "cuda":
                    loop.run_round()  # one untimed epoch through the trainer's loop (its first metric kernels)
        except Exception as e:
            results[name].error = f"warm-up failed: {type(e).__name__}: {str(e).splitlines()[0][:300]}"
            _close(loops.pop(name))
            continue
        results[name].extra["warmup_s"] = round(time.perf_counter() - t0, 2)
    names = list(loops)
    load_before = _loadavg()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
        for name in order:
            loop = loops[name]
            try:
                c0 = time.process_time()
                if name == "reference":
                    _sync(device)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        loop.step()
                    _sync(device)
                    n, dt = steps * args.batch_size, time.perf_counter() - t0
                else:
                    n, dt = loop.run_round()
                results[name].images_per_s.append(n / dt)
                results[name].images_per_cpu_s.append(n / max(time.process_time() - c0, 1e-9))
                results[name].last_loss = loop.last_loss
            except Exception as e:
                results[name].error = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                _close(loops.pop(name))
                names.remove(name)
    for name, loop in loops.items():
        teacher = getattr(getattr(getattr(loop, "trainer", None), "distiller", None), "teacher", None)
        if getattr(teacher, "compile_error", None):
            results[name].extra["teacher_compile_error"] = teacher.compile_error
    summaries = {k: v.summary() for k, v in results.items()}
    out = {"case": case, "label": CASES[case][0], "pair": pair, "teacher": None if case == "dml" else teacher_arch,
           "student": student_arch, "loops": summaries,
           "load_average_1min": [load_before, _loadavg()], "flops_per_image": flops,
           "gflop_per_s": {k: flops.get(k, flops.get("reference", 0.0)) * summaries[k]["images_per_s"] / 1e9
                           for k in results if results[k].images_per_s and flops.get("reference")}}
    ref = results["reference"]
    out["ratio"], out["ratio_range"] = {}, {}
    out["ratio_of_medians"], out["ratio_cpu_time"] = {}, {}
    for k, v in results.items():
        if k == "reference" or not v.images_per_s or not ref.images_per_s:
            continue
        # paired: each round's ratio compares loops that ran back to back under the same background load
        per_round = [a / b for a, b in zip(v.images_per_s, ref.images_per_s)]
        out["ratio"][k] = _median(per_round)
        out["ratio_range"][k] = [min(per_round), max(per_round)]
        out["ratio_of_medians"][k] = _median(v.images_per_s) / _median(ref.images_per_s)
        out["ratio_cpu_time"][k] = _median([a / b for a, b in zip(v.images_per_cpu_s, ref.images_per_cpu_s)])
    for loop in loops.values():
        _close(loop)
    return out


def _close(loop) -> None:
    """Release a project loop's run folder now (its lock; a later loop of the same name, as the sync check's, would
    find it taken while compiled graphs keep the trainer alive) rather than whenever it is collected."""
    trainer = getattr(loop, "trainer", None)
    if trainer is not None:
        trainer.close()


def machine_peak(device: torch.device, precisions: list[str], repeats: int = 5) -> dict:
    """GFLOP/s this device reaches on the dense kernels the ResNets are made of, per precision, at the bench's
    thread count: a 3x3 convolution (64 -> 64 channels, batch 64, 32x32, the resnet32x4 body's first stage; in
    channels_last on a CPU, NCHW on CUDA) forward, and a 2048x2048 matmul; the faster of the two, best of
    ``repeats`` timings. A step cannot run its counted work faster than this, so peak / the reference's rate
    bounds the speed-up any loop doing the reference's work in that precision can reach. A half precision on a
    CPU without native bf16 times the convolution only: its matmul has no vectorised kernel there (a 2048x2048
    bf16 product took 65 s on a 2-core AVX2 EPYC, against 0.55 s for the convolution)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    out = {}
    for precision in precisions:
        dtype = dtypes[precision]
        x = torch.randn(64, 64, 32, 32, device=device, dtype=dtype)
        w = torch.randn(64, 64, 3, 3, device=device, dtype=dtype)
        if device.type == "cpu":
            x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        kernels = {"conv3x3": lambda: F.conv2d(x, w, padding=1)}
        if device.type != "cpu" or dtype == torch.float32 or cpu_has_native_bf16():
            a = torch.randn(2048, 2048, device=device, dtype=dtype)
            kernels["matmul"] = lambda: a @ a
        rates = {}
        with torch.no_grad():
            for name, kernel in kernels.items():
                flops = step_flops(kernel)  # counted as the steps' work is
                best = math.inf
                for _ in range(repeats):
                    _sync(device)
                    t0 = time.perf_counter()
                    for _ in range(3):
                        kernel()
                    _sync(device)
                    best = min(best, (time.perf_counter() - t0) / 3)
                rates[name] = flops / best / 1e9
        out[precision] = {"gflop_per_s": max(rates.values()), "threads": torch.get_num_threads(),
                          **{f"{k}_gflop_per_s": v for k, v in rates.items()}}
    return out


def step_flops(step) -> float:
    """Floating-point operations of one call of ``step`` (forward and backward convolutions and matmuls, as
    ``torch.utils.flop_counter`` counts them; element-wise ops and the optimizer are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def sync_check(device, data_root, ckpt, run_root, args) -> dict:
    """CUDA only: count the host-device synchronisations of the project's hot loop (loader + train_step, KD)
    with ``torch.cuda.set_sync_debug_mode('warn')`` over a few steps after warm-up."""
    pair = args.pairs.split(",")[0]
    loop = ProjectLoop("kd", "project", *PAIRS[pair], data_root=data_root, teacher_ckpt=ckpt, run_root=run_root,
                       batch_size=args.batch_size, device=str(device), args=args, seed=args.seed)
    try:
        loop.warmup(3)
        tr = loop.trainer
        it = iter(tr.train_loader)
        next(it)  # the iterator's one-off index copy
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for _ in range(3):
                    x, y, idx = next(it)
                    tr.step(x, y, idx)
        finally:
            torch.cuda.set_sync_debug_mode(0)
    finally:
        _close(loop)
    msgs = [str(w.message).splitlines()[0][:200] for w in caught if "synchroniz" in str(w.message).lower()]
    return {"steps": 3, "synchronizations": len(msgs), "messages": sorted(set(msgs))[:5]}


# -------------------------------------------------------------------------------------------- report

def to_markdown(report: dict) -> str:
    if not report["results"] and report.get("grid"):  # the grid case alone
        m = report["machine"]
        return "\n".join([f"### {m['cpu']} ({m['cpu_count']} cores, {m['cpu_capability']}, native bf16: "
                          f"{m['cpu_native_bf16']}), torch {m['torch']}"] + grid_markdown(report["grid"])) + "\n"
    m = report["machine"]
    dev = m.get("gpu") or f"{m['cpu']} ({m['cpu_count']} cores, {m['cpu_capability']}, native bf16: {m['cpu_native_bf16']})"
    variants = [v for v in VARIANTS if any(v in r["loops"] for r in report["results"])]
    lines = [f"### Throughput, {report['settings']['device']}: {dev}", "",
             f"batch {report['settings']['batch_size']}, {report['settings']['steps']} steps x "
             f"{report['settings']['rounds']} interleaved rounds after {report['settings']['warmup']} warm-up steps; "
             f"images/s (median over rounds); x = median over rounds of the ratio to the reference loop timed in "
             f"the same round "
             f"(DataLoader workers: {m['reference_num_workers']}; torch {m['torch']}). "
             f"Project runtime: {report.get('project_runtime', '?')}.", ""]
    head = "| case | teacher → student | reference | " + " | ".join(f"{v} | x" for v in variants) + " |"
    lines += [head, "|" + "---|" * (3 + 2 * len(variants))]
    for r in report["results"]:
        pair = f"{r['teacher']} → {r['student']}" if r["teacher"] else f"3 x {r['student']}"
        cells = [r["label"], pair, _fmt_rate(r["loops"].get("reference"))]
        for v in variants:
            loop = r["loops"].get(v)
            cells += [_fmt_rate(loop), f"**{r['ratio'][v]:.2f}x**" if v in r.get("ratio", {}) else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    for r in report.get("not_measured", []):  # the grid case has no pair
        label = CASES[r["case"]][0] if r["case"] in CASES else r["case"]
        lines.append(f"| {label} | {r.get('pair', '-')} | not measured ({r['why']}) |" + " |" * (2 * len(variants)))
    if report["settings"]["device"] == "cpu" and report["results"]:
        loads = [v for r in report["results"] for v in r.get("load_average_1min", []) if v is not None]
        if loads:
            lines += ["", f"Load average (1 min) during the runs: {min(loads):.1f}–{max(loads):.1f} on {m['cpu_count']} "
                          f"cores. The benchmark itself accounts for about {m.get('torch_threads', m['cpu_count'])} "
                          f"(torch threads) plus the "
                          f"reference's DataLoader workers; a higher figure means other jobs shared the machine and "
                          f"absolute images/s are depressed (the ratios compare loops timed back to back)."]
        lines += ["", "Ratio by process CPU time (images per CPU-second of this process, median over rounds of the "
                      "per-round ratio; insensitive to time-slicing by other jobs; excludes the reference's DataLoader "
                      "worker processes): " + "; ".join(
                          f"{r['label']} {r['pair']}: " + ", ".join(f"{k} {v:.2f}x" for k, v in r.get("ratio_cpu_time", {}).items())
                          for r in report["results"])]
    cost = report.get("pick_cost")
    if cost:
        lines += ["", "KD+CutMixPick step time relative to (same loop): " + "; ".join(
            f"{p}: " + ", ".join(f"{k} {v:.2f}x" for k, v in d.items()) for p, d in cost.items())]
    lines += work_lines(report, variants)
    errors = [(r["label"], r["pair"], k, v["error"]) for r in report["results"] for k, v in r["loops"].items()
              if v.get("error")]
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{a} {b} {c}: {d}" for a, b, c, d in errors)]
    if report.get("sync_check"):
        s = report["sync_check"]
        lines += ["", f"Host synchronisations in the project's hot loop: not counted ({s['error']})" if "error" in s
                  else f"Host synchronisations in the project's hot loop (KD, {s['steps']} steps, "
                       f"cuda sync debug mode): {s['synchronizations']}"]
    if report.get("grid"):
        lines += grid_markdown(report["grid"])
    for note in report.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def work_lines(report: dict, variants: list[str]) -> list[str]:
    """Markdown: each case's FLOPs per image, the rate each loop reached, and KD+CutMixPick's work ratio."""
    lines: list[str] = []
    work = [r for r in report["results"] if r.get("flops_per_image")]
    if work:
        rated = [k for k in ["reference", *variants] if any(k in r.get("gflop_per_s", {}) for r in work)]
        lines += ["", "Work per image: forward + backward convolutions and matmuls of one step, counted by "
                      "`torch.utils.flop_counter` (element-wise ops and SGD not counted), for the reference and for "
                      "the project's loops that run uncompiled and without an int8 teacher (in fp32 or bf16 alike: "
                      "operations are counted, whatever their precision); and the rate each loop reached at that "
                      "count (int8 and compiled loops at the reference's count).", "",
                  "| case | pair | GFLOP/image (reference) | same in project's loops | "
                  + " | ".join(f"{k} GFLOP/s" for k in rated) + " |",
                  "|" + "---|" * (4 + len(rated))]
        for r in work:
            f = r["flops_per_image"]
            ref = f.get("reference")
            same = ref and all(abs(v - ref) <= 1e-6 * ref for v in f.values())
            counted = "yes" if same else "no: " + ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f.items())
            rates = [f"{r['gflop_per_s'][k]:.0f}" if k in r.get("gflop_per_s", {}) else "-" for k in rated]
            lines.append(f"| {r['label']} | {r['pair']} | {(ref or 0) / 1e9:.3g} | {counted} | "
                         + " | ".join(rates) + " |")
    peak = report.get("machine_peak")
    if peak and work:
        project = report.get("project_precision", "fp32")
        ceilings = [f"{r['label']} {r['pair']} {peak[project]['gflop_per_s'] / r['gflop_per_s']['reference']:.2f}x"
                    for r in work if project in peak and r.get("gflop_per_s", {}).get("reference")]
        lines += ["", "Machine peak, measured in this run (dense 3x3 convolution or matmul, the faster; "
                      f"{next(iter(peak.values()))['threads']} threads): " + ", ".join(
                          f"{k} {v['gflop_per_s']:.0f} GFLOP/s" for k, v in peak.items())
                  + f". A loop doing the reference's counted work entirely at the {project} peak would reach "
                    f"peak / the reference's rate: " + "; ".join(ceilings) + ". Only less work (an int8 teacher) "
                    "or a faster unit than the one measured here (AMX where this CPU lacks it, a GPU) goes past "
                    "that."]
    pick = {k: d for k, d in report.get("pick_work", {}).items() if d}
    if pick:
        lines += ["", "KD+CutMixPick work per image relative to (same loop; the step-time ratio if both steps ran at "
                      "one FLOP rate): " + "; ".join(f"{p}: " + ", ".join(f"{k} {v:.2f}x" for k, v in d.items())
                                             for p, d in pick.items())]
    return lines


def _fmt_rate(loop) -> str:
    if loop is None:
        return "-"
    if loop.get("error") and not loop["rounds_images_per_s"]:
        return "failed"
    return f"{loop['images_per_s']:.0f}" if loop["images_per_s"] >= 100 else f"{loop['images_per_s']:.1f}"


# ---------------------------------------------------------------------------------------------- main

def bench_main(args) -> int:
    with torch_threads(None):  # _bench sets --threads once it is checked; restored here
        return _bench(args)


def _bench(args) -> int:
    refuse_under_torchrun("bench", "bench times one process's loops")  # each rank timed them into the same files
    device = resolve_device(args.device, "bench --device")
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    if not cases:
        raise ConfigError(f"bench: --cases names no case (choose from {', '.join([*CASES, 'grid'])})")
    grid = "grid" in cases
    cases = [c for c in cases if c != "grid"]
    pairs = [p.strip() for p in (args.pairs or (QUICK_PAIR if args.quick else DEFAULT_PAIRS)).split(",") if p.strip()]
    if cases and not pairs:
        raise ConfigError(f"bench: --pairs names no pair (choose from {', '.join(PAIRS)})")
    for option, minimum in (("batch_size", 1), ("steps", 1), ("rounds", 1), ("warmup", 0), ("grid_runs", 1),
                            ("grid_epochs", 1), ("grid_rounds", 1), ("threads", 1), ("num_workers", 0)):
        require_at_least(f"bench: --{option.replace('_', '-')}", getattr(args, option), minimum)
    for c in cases:
        if c not in CASES:
            raise ConfigError(f"bench: unknown case '{c}' (choose from {', '.join([*CASES, 'grid'])})")
    for p in pairs:
        if p not in PAIRS:
            raise ConfigError(f"bench: unknown pair '{p}' (choose from {', '.join(PAIRS)})")
    if args.variants == "auto":
        variants = ["project", "eager_teacher"] + (["int8", "compile"] if device.type == "cpu" else ["cuda_graphs"])
    else:
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        for v in variants:
            if v not in VARIANTS:
                raise ConfigError(f"bench: unknown variant '{v}' (choose from {', '.join(VARIANTS)})")
    # the project's options, checked before any loop is timed (a bad one was a "failed" column after minutes)
    try:
        options = load_config(None, [f"train.device={device.type}", f"train.precision={args.precision}",
                                     f"train.compile={args.compile}", f"train.channels_last={args.channels_last}"])
    except ConfigError as err:
        raise ConfigError(f"bench: --precision, --compile and --channels-last are the project's train.* options: "
                          f"{err}") from None
    resolve_runtime(device.type, options.train.precision, options.train.channels_last, options.train.compile,
                    device_option="bench --device", precision_option="bench --precision")
    args.grid_epochs = args.grid_epochs or (1 if args.quick else 45)
    args.grid_rounds = args.grid_rounds or (1 if args.quick else 2)
    out_dir = Path(args.out or DEFAULT_OUT)
    tag = args.tag or ("quick_" if args.quick else "") + device.type
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]*", tag):  # a path in it wrote beside --out
        raise ConfigError(f"bench: --tag {tag!r} is a file name suffix: letters, digits, '.', '_', '-'")
    outputs = [out_dir / f"bench_{tag}.json", out_dir / f"bench_{tag}.md"]
    if args.out is not None and not args.overwrite and any(path.exists() for path in outputs):
        raise ConfigError(f"bench: {next(p for p in outputs if p.exists())} holds an earlier bench's results: pass "
                          "--overwrite to replace them, or another --tag or --out")
    make_dir(out_dir)
    check_writable(out_dir)  # before minutes of timing, not after the first case
    cuda = device.type == "cuda"
    steps = args.steps or (2 if args.quick else (100 if cuda else 2))  # CPU: short rounds, many of them
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else (20 if cuda else 2))
    rounds = args.rounds or (2 if args.quick else (3 if cuda else 9))
    if args.threads:
        torch.set_num_threads(args.threads)
    num_workers = args.num_workers if args.num_workers is not None else available_cpus()
    if cuda:
        torch.backends.cudnn.benchmark = True  # as RepDistiller's train_student.py (both loops)
    started = time.perf_counter()
    report = {"settings": {"device": device.type, "batch_size": args.batch_size, "steps": steps, "rounds": rounds,
                           "warmup": warmup, "cases": cases, "pairs": pairs, "variants": variants,
                           "precision": args.precision, "compile": args.compile, "channels_last": args.channels_last,
                           "seed": args.seed, "quick": args.quick},
              "machine": machine_info(device, num_workers), "results": [], "not_measured": [], "notes": []}
    if rounds < 3 and cases:
        report["notes"].append(f"{rounds} timing round{'s' if rounds > 1 else ''}: each ratio is the median of that "
                               "many per-round ratios, which one busy moment moves; 3 or more (the defaults: 9 on a "
                               "CPU, 3 on CUDA) steady it.")

    def save():
        report["elapsed_s"] = round(time.perf_counter() - started, 1)
        write_json(outputs[0], report)
        write_text(outputs[1], to_markdown(report))

    with tempfile.TemporaryDirectory(prefix="mixdistill-bench-") as tmp:
        tmp = Path(tmp)
        n_train = steps * args.batch_size  # one project epoch = one timing round
        write_bench_data(tmp / "data", n_train=n_train, n_test=max(args.batch_size, 500), seed=args.seed)
        ref_ds = reference_dataset(tmp / "data")
        ref_loader = torch.utils.data.DataLoader(ref_ds, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                                 num_workers=num_workers, persistent_workers=num_workers > 0)
        for pair in pairs:
            teacher_arch, _ = PAIRS[pair]
            ckpt = make_teacher_checkpoint(teacher_arch, tmp / f"{teacher_arch}.pt", args.seed)
            for case in cases:
                if args.time_budget and time.perf_counter() - started > args.time_budget:
                    report["not_measured"].append({"case": case, "pair": pair, "why": "time budget"})
                    save()
                    continue
                print(f"[bench] {device.type} {pair} {case} ...", flush=True)
                res = run_case(case, pair, variants, device=device, data_root=tmp / "data", ckpt=ckpt,
                               run_root=tmp / "runs", ref_loader=ref_loader, args=args, steps=steps,
                               warmup=warmup, rounds=rounds)
                report["results"].append(res)
                if "project_runtime" not in report and "project" in res["loops"]:
                    report["project_runtime"] = res["loops"]["project"].get("runtime")
                print("   " + ", ".join(f"{k} {v['images_per_s']:.1f} img/s" for k, v in res["loops"].items())
                      + " | against the reference: " + ", ".join(f"{k} {v:.2f}x" for k, v in res["ratio"].items()),
                      flush=True)
                save()
        if report["results"] and not args.quick:
            precision = next((r["loops"]["project"].get("precision") for r in report["results"]
                              if "project" in r["loops"]), None) or "fp32"
            report["project_precision"] = precision
            report["machine_peak"] = machine_peak(device, sorted({"fp32", precision}))
        report["pick_cost"] = pick_cost(report["results"])
        report["pick_work"] = pick_work(report["results"])
        if grid:
            if device.type != "cpu":
                report["not_measured"].append({"case": "grid", "why": "the grid case is a CPU case"})
            elif args.time_budget and time.perf_counter() - started > args.time_budget:
                report["not_measured"].append({"case": "grid", "why": "time budget"})
            else:
                print("[bench] grid ...", flush=True)
                report["grid"] = grid_case(args, tmp)
            save()
        if cuda and not args.quick:
            try:
                report["sync_check"] = sync_check(device, tmp / "data", tmp / f"{PAIRS[pairs[0]][0]}.pt",
                                                  tmp / "runs", args)
            except Exception as e:
                report["sync_check"] = {"steps": 0, "synchronizations": -1, "error": f"{type(e).__name__}: {e}"}
        save()
    print(to_markdown(report))
    print(f"wrote {outputs[0]} and {outputs[1]}", flush=True)
    return 0


def _pick_against_bases(results: list[dict], ratio) -> dict:
    """``{"PAIR vs KD" | "PAIR vs KD+CutMix": ratio(pick_result, base_result)}`` for each pair with both cases."""
    by = {(r["pair"], r["case"]): r for r in results}
    return {f"{pair} vs {CASES[base][0]}": ratio(r, by[(pair, base)])
            for (pair, case), r in by.items() if case == "kd_cutmixpick"
            for base in ("kd", "kd_cutmix") if (pair, base) in by}


def pick_cost(results: list[dict]) -> dict:
    """Per pair and loop: KD+CutMixPick step time over the KD step time and over the KD+CutMix step time
    (from the median images/s of each case; cases are timed at different moments, so this is noisier than
    the in-round ratios)."""
    def time_ratio(pick, base):
        return {loop: base["loops"][loop]["images_per_s"] / v["images_per_s"] for loop, v in pick["loops"].items()
                if loop in base["loops"] and v["rounds_images_per_s"] and base["loops"][loop]["rounds_images_per_s"]}

    return _pick_against_bases(results, time_ratio)


def pick_work(results: list[dict]) -> dict:
    """Per pair and counted loop: KD+CutMixPick's FLOPs per image over KD's and over KD+CutMix's: the
    step-time ratio if both steps ran at one FLOP rate (only less work or a higher rate can lower it)."""
    def work_ratio(pick, base):
        other = base.get("flops_per_image", {})
        return {k: v / other[k] for k, v in pick.get("flops_per_image", {}).items() if other.get(k)}

    return _pick_against_bases(results, work_ratio)


def main(argv=None) -> int:  # python -m mixdistill.bench
    p = argparse.ArgumentParser(prog="mixdistill bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_bench_arguments(p)
    return bench_main(p.parse_args(argv))


