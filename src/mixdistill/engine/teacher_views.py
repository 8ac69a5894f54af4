"""``train.teacher_cache``: the frozen teacher's logits of every view the loader can draw, computed once and looked
up in every step after, bit for bit what the teacher would compute.

When a method mixes nothing (KD, DKD with ``augment: none``), its teacher sees the loader's view of each sample: the
crop at one of ``(2p + 1)^2`` offsets (``p`` = ``data.crop_padding``), flipped or not. That input is a function of
(sample, view) alone, so ``N`` samples have ``V`` possible teacher outputs each (V = 50 for Fashion-MNIST's 2-pixel
crops with flips). Building the table costs ``N x V`` teacher passes; a run's teacher makes ``epochs x N``. So it pays
when the runs that share it train more epochs between them than there are views: a study grid's seeds and methods
share one teacher and one dataset, and the grid runner turns ``auto`` on for such groups (studies/grid.py). A run
alone with ``auto`` uses a table that is there already, and builds one when its own epochs exceed ``V``.
torchdistill caches teacher outputs per sample for un-augmented inputs; this is the same with the augmentation
enumerated.

Bit for bit: a sample's teacher logits do not depend on the other samples of its batch, on the batch size or on the
thread count (per-sample convolutions; tests/test_teacher_views.py checks whole runs with and without, and where a
machine's kernels break it, that the check below turns the table off). Every process checks
it on its first looked-up batch, which it also runs through the teacher: a difference switches the table off for
the run, with a warning, and the run computes what it would have without it.

The table lives in ``<output_dir>/teacher_views/<key>.pt`` beside the run directories (a grid's ``runs/``), its key a
hash of everything the teacher's output depends on: the teacher's weights and its form here (folded,
compiled, int8), the training images, crop padding, flip, normalisation, precision and layout, torch and the CPU.
The runs that need it at the same time build it together, one view at a time, each view under its own lock and with
the run's own threads (a grid's 1-thread runs side by side fill the cores without crowding them; the grid case's
150,000 passes take ~5 s on 2 cores this way, against 7.3 s in one process with 2 threads and 9.5 s with 1); each
view is saved on its own, and the process that has them all first writes the table and removes them. A run that
finds every view left taken waits for those; a view whose builder died is built by the next process that asks.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mixdistill.data.loader import DeviceLoader
from mixdistill.data.transforms import crop_flip, crop_flip_views, normalize, view_parameters
from mixdistill.errors import ConfigError, LockedError
from mixdistill.files import hold_lock, save_torch
from mixdistill.machine import cpu_name
from mixdistill.methods import METHODS

FOLDER = "teacher_views"
AUTO_MAX_BYTES = 1 << 30  # auto builds no table larger than this (train.teacher_cache=true does)


def unusable(cfg) -> str | None:
    """Why a run of ``cfg`` (a RunConfig) cannot use a table of teacher views; None where it can."""
    method = METHODS.get(cfg.method.name)
    if not method.needs_teacher or cfg.model.teacher_checkpoint is None:
        return "the method has no teacher"
    if not method.teacher_sees_loader_view:
        return f"method {cfg.method.name} runs its teacher on other inputs than the loader's batch"
    if cfg.augment.name != "none":
        return f"augment {cfg.augment.name} mixes the batch the teacher sees"
    if cfg.data.loader == "streaming":
        return "data.loader streaming draws crops the table cannot enumerate"
    return None


def refused(why_not: str) -> ConfigError:
    """The error for ``train.teacher_cache=true`` on a run that cannot use a table (``why_not``: :func:`unusable`'s
    reason, or one the caller knows beyond the config, e.g. torchrun)."""
    return ConfigError(f"train.teacher_cache=true: {why_not}; set it to auto or false")


def views_drawn(padding: int, flip: bool) -> int:
    return len(crop_flip_views(padding, flip))


def table_bytes(samples: int, views: int, classes: int, precision: str) -> int:
    return samples * views * classes * (2 if precision in ("bf16", "fp16") else 4)


def pays(epochs: int, padding: int, flip: bool) -> bool:
    """Do ``epochs`` epochs of teacher passes (over all samples) cost more than building the table?"""
    return epochs > views_drawn(padding, flip)


@dataclass
class TableSource:
    """What a table is built from: the training loader's images and transform, the teacher and the runtime."""

    loader: DeviceLoader
    teacher: torch.nn.Module  # as it runs here (folded, compiled, ...)
    teacher_logits: object  # images -> logits (the distiller's, inference mode)
    autocast: object  # () -> the runtime's autocast context
    channels_last: bool
    teacher_form: str  # how the teacher runs here (folded, compiled, int8, ...)
    num_classes: int
    precision: str


def table_key(src: TableSource) -> str:
    h = hashlib.sha256()
    for name, value in src.teacher.state_dict().items():
        h.update(name.encode())
        if isinstance(value, torch.Tensor):
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            h.update(repr(value).encode())
    images = src.loader.images.cpu().contiguous()
    h.update(images.numpy().tobytes())
    h.update(repr((tuple(images.shape), src.loader.crop_padding, src.loader.flip, src.loader.mean.flatten().tolist(),
                   src.loader.std.flatten().tolist(), src.channels_last, src.precision, src.teacher_form,
                   src.num_classes, torch.__version__, cpu_name(),
                   torch.backends.cpu.get_cpu_capability(), str(src.loader.device))).encode())
    return h.hexdigest()[:24]


def build_table(src: TableSource, batch_size: int, views: list[int] | None = None) -> torch.Tensor:
    """``[N, V, classes]``: the teacher's logits of sample ``n`` in its ``v``-th view (``crop_flip_views`` order),
    each computed as the training loop would: crop/flip, normalise, layout, the runtime's autocast, in batches of
    the loop's size (the last one overlaps the one before, so that kernels that choose by batch size see the
    loop's). ``views``: only these positions of that order (``[N, len(views), classes]``)."""
    loader = src.loader
    ids = crop_flip_views(loader.crop_padding, loader.flip)
    if views is not None:
        ids = ids[views]
    n = len(loader.labels)
    table = None
    for v, view in enumerate(ids.tolist()):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            first = max(0, stop - batch_size)  # the last batch full too, overlapping: the loop's are (drop_last)
            idx = torch.arange(first, stop)
            dy, dx, flips = view_parameters(torch.full((len(idx),), view), loader.crop_padding)
            x = crop_flip(loader.images.index_select(0, idx.to(loader.device)), loader.crop_padding, dy, dx, flips)
            x = normalize(x, loader.mean, loader.std)
            if loader.channels_last or src.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with src.autocast():
                logits = src.teacher_logits(x)
            if table is None:
                table = torch.empty(n, len(ids), logits.shape[1], dtype=logits.dtype, device=logits.device)
            table[start:stop, v] = logits[start - first:]
    return table


class TeacherViews:
    """A loaded table and its lookup; checked against the teacher on its first batch."""

    def __init__(self, table: torch.Tensor, padding: int, flip: bool, path: Path):
        self.table, self.path = table, path
        self.slot = torch.full((crop_flip_views(padding, True)[-1] + 1,), -1, dtype=torch.int64)
        self.slot[crop_flip_views(padding, flip)] = torch.arange(table.shape[1])
        self.slot = self.slot.to(table.device)
        self.checked = False
        self.disabled: str | None = None  # why it is off (a failed check)

    def logits(self, images: torch.Tensor, indices: torch.Tensor, views: torch.Tensor, teacher_logits) -> torch.Tensor:
        """The teacher's logits of a batch of the loader's views (``teacher_logits`` runs the teacher: on the first
        batch, as the check)."""
        if self.disabled:
            return teacher_logits(images)
        found = self.table[indices.to(self.table.device), self.slot[views.to(self.table.device)]]
        if not self.checked:
            live = teacher_logits(images)
            self.checked = True
            if not torch.equal(live, found):
                self.disabled = (f"its logits differ from the teacher's on the first batch (max |diff| "
                                 f"{(live.float() - found.float()).abs().max().item():.3g})")
                warnings.warn(f"teacher view cache {self.path}: {self.disabled}; not using it", stacklevel=2)
                return live
        return found


def load_table(path: Path, src: TableSource, warn: bool = True) -> TeacherViews | None:
    """The table at ``path`` if it is there and whole (a damaged one: a warning unless ``warn`` is false, and
    None)."""
    if not path.exists():
        return None
    loader = src.loader
    try:
        table = torch.load(path, map_location=loader.device, weights_only=True)
        expected = (len(loader.labels), views_drawn(loader.crop_padding, loader.flip), src.num_classes)
        if not isinstance(table, torch.Tensor) or tuple(table.shape) != expected:
            raise ValueError(f"holds {getattr(table, 'shape', type(table).__name__)}, not a {list(expected)} table")
    except Exception as e:  # noqa: BLE001 - any unreadable file: train with the teacher instead
        if warn:
            warnings.warn(f"teacher view cache {path} is unreadable ({e}); training with the teacher", stacklevel=2)
        return None
    return TeacherViews(table, loader.crop_padding, loader.flip, path)


@dataclass
class Building:
    """What one process did towards a table: seconds building views, views built, seconds waiting for views other
    processes were building."""

    built_s: float = 0.0
    views_built: int = 0
    waited_s: float = 0.0


def _view_file(path: Path, v: int) -> Path:
    return path.with_name(f"{path.stem}.view{v}.pt")


def _read_view(file: Path, src: TableSource) -> torch.Tensor | None:
    try:
        part = torch.load(file, map_location=src.loader.device, weights_only=True)
    except Exception:  # noqa: BLE001 - absent or damaged: the caller builds the view
        return None
    return part if isinstance(part, torch.Tensor) and part.shape[:2] == (len(src.loader.labels), 1) else None


def build_or_wait(path: Path, src: TableSource, batch_size: int) -> tuple[TeacherViews, Building]:
    """The table at ``path``, which :func:`load_table` did not find: built together with the other processes that
    ask for it at the same time (see the module docstring), or loaded once one of them has written it. Returns the
    table and what this process did towards it."""
    count, parts, did = views_drawn(src.loader.crop_padding, src.loader.flip), {}, Building()
    for patient in (False, True):  # first every view no one is building, then wait for the others'
        for v in range(count):
            if v in parts:
                continue
            file, asked = _view_file(path, v), time.perf_counter()
            try:
                with hold_lock(file.with_suffix(".lock"), "building a teacher view", wait=patient):
                    if patient:
                        did.waited_s += time.perf_counter() - asked
                    parts[v] = _read_view(file, src)
                    if parts[v] is None:
                        whole = load_table(path, src, warn=False)  # finished meanwhile (its views removed)
                        if whole is not None:
                            return whole, did
                        started = time.perf_counter()
                        parts[v] = build_table(src, batch_size, [v])
                        save_torch(parts[v].cpu(), file)
                        did.built_s += time.perf_counter() - started
                        did.views_built += 1
            except LockedError:
                continue
    table = torch.cat([parts[v] for v in range(count)], dim=1)
    with hold_lock(path.with_suffix(".lock"), "writing a teacher view cache", wait=True):
        if load_table(path, src, warn=False) is None:
            save_torch(table.cpu(), path)
        for v in range(count):  # every process that reads a view file finds the table first from now on
            lock = _view_file(path, v).with_suffix(".lock")
            with hold_lock(lock, "removing a teacher view", wait=True):
                _view_file(path, v).unlink(missing_ok=True)
                lock.unlink(missing_ok=True)
    return TeacherViews(table, src.loader.crop_padding, src.loader.flip, path), did
