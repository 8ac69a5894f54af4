"""The distiller contract (after mdistiller): a small nn.Module whose ``forward_train`` returns the
student logits and a dict of named loss terms. The trainer sums the terms and knows nothing else
about the method; the method knows nothing about loops, logging or devices.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import nn

from mixdistill.augment import MixedBatch
from mixdistill.errors import ConfigError
from mixdistill.schema import Schema


def clean_batch(images: torch.Tensor) -> MixedBatch:
    """The identity record: every row its own single source, weight 1."""
    rows = torch.arange(images.shape[0], device=images.device)[:, None]
    return MixedBatch(images, rows, torch.ones(rows.shape, device=images.device))


@dataclass(frozen=True)
class StepInfo:
    """Where the trainer is (an input: methods read it, never write it); ramp-ups and random mixing need it."""

    epoch: int  # 0-based
    step: int  # global optimiser step, 0-based
    epochs: int  # total epochs of the run
    generator: torch.Generator  # CPU generator for this step's random parameters, reseeded every epoch
    indices: torch.Tensor | None = None  # dataset indices of the batch's samples
    views: torch.Tensor | None = None  # the loader's crop/flip view of each sample (engine/teacher_views)


class StepOutput(NamedTuple):
    """What ``forward_train`` returns: the logits train accuracy is scored on, the named loss terms the trainer
    sums, the labels those logits are scored against (None: the batch's own) and scalars the trainer averages
    per epoch and logs as ``stat_*``. Build it with :func:`step_output`."""

    logits: torch.Tensor
    losses: dict
    labels: torch.Tensor | None = None
    stats: dict | None = None


def step_output(logits: torch.Tensor, losses: dict, labels: torch.Tensor, batch: MixedBatch | None = None, *,
                logits_of_batch: bool = True, stats: dict | None = None) -> StepOutput:
    """``batch``: the (possibly mixed) batch of the step. With ``logits_of_batch`` the logits were computed on it,
    and accuracy is scored against each sample's dominant source; otherwise they are the clean batch's. The
    batch's own scalars (PMU's realised mixed fraction) join ``stats``."""
    stats = dict(stats or {})
    if batch is not None and "mixed_fraction" in batch.info:
        stats["mixed_fraction"] = batch.info["mixed_fraction"]
    scored = batch.dominant_labels(labels) if batch is not None and logits_of_batch else None
    return StepOutput(logits, losses, scored, stats)


def check_mixed_batch(batch, images: torch.Tensor, name: str) -> None:
    """Is ``batch`` the record :class:`MixedBatch` documents for input ``images``? Checked on an augmentation's first
    batch (one host sync): a plugin's record with rows out of step, sources out of the batch or weights that do
    not sum to 1 trained silently wrong or failed as an IndexError in a loss."""
    def wrong(what: str):
        return ConfigError(f"augmentation {name} returned {what} (mixdistill.augment.MixedBatch documents the "
                           "record; see the built-in ones)")

    if not isinstance(batch, MixedBatch):
        raise wrong(f"a {type(batch).__name__}, not a MixedBatch")
    out, sources, weights = batch.images, batch.sources, batch.weights
    if not all(isinstance(t, torch.Tensor) for t in (out, sources, weights)):
        raise wrong("a MixedBatch whose images, sources and weights are not all tensors")
    if out.ndim != 4 or out.shape[1] != images.shape[1]:
        raise wrong(f"images of shape {list(out.shape)} for an input batch of {list(images.shape)} (the same "
                    "channels, [B, C, H, W])")
    if sources.ndim != 2 or sources.shape[0] != out.shape[0] or sources.shape[1] < 1 or sources.is_floating_point():
        raise wrong(f"sources of shape {list(sources.shape)} and dtype {sources.dtype} for {out.shape[0]} images "
                    "(integer rows of the input batch, [B, K])")
    if weights.shape != sources.shape or not weights.is_floating_point():
        raise wrong(f"weights of shape {list(weights.shape)} and dtype {weights.dtype} beside sources of "
                    f"{list(sources.shape)} (floats, one per source)")
    if bool(((sources < 0) | (sources >= images.shape[0])).any()):
        raise wrong(f"sources outside the input batch's rows 0..{images.shape[0] - 1}")
    sums = weights.float().sum(1)  # a 16-bit weight holds 3 significant digits
    tolerance = 1e-2 if weights.element_size() < 4 else 1e-3
    if not bool(torch.allclose(sums, torch.ones_like(sums), atol=tolerance)) or bool((weights < 0).any()):
        raise wrong(f"weights ({weights.dtype}) that are negative or do not sum to 1 per image")


def check_step_output(out, labels: torch.Tensor, method: str) -> None:
    """Is ``out`` what ``forward_train`` must return (:class:`StepOutput`: logits for the scored labels, named scalar
    losses of which one trains something)? Checked on a run's first step (shapes only, no host sync): a plugin's
    None, vector loss or short logits failed as a traceback inside the trainer."""
    def wrong(what: str):
        return ConfigError(f"method {method}: forward_train returned {what} (build it with "
                           "mixdistill.distill.step_output; see the built-in methods)")

    if not isinstance(out, StepOutput):
        raise wrong(f"a {type(out).__name__}, not a StepOutput")
    if not isinstance(out.losses, dict) or not out.losses:
        raise wrong("no named loss terms (losses must be a non-empty dict of scalar tensors)")
    for key, loss in out.losses.items():
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise wrong(f"the loss term {key!r} as {type(loss).__name__} of shape "
                        f"{list(getattr(loss, 'shape', []))} (each term is a scalar tensor)")
    if torch.is_grad_enabled() and not any(loss.requires_grad for loss in out.losses.values()):
        raise wrong("loss terms of which none depends on a trained parameter (detached or computed without grad)")
    scored = labels if out.labels is None else out.labels
    if not isinstance(out.logits, torch.Tensor) or out.logits.ndim != 2 or out.logits.shape[0] != scored.shape[0]:
        raise wrong(f"logits of shape {list(getattr(out.logits, 'shape', []))} for {scored.shape[0]} scored labels "
                    "([B, classes])")


@dataclass
class TrainSet:
    """What a method may learn about the training data before training starts (``Distiller.prepare``)."""

    num_samples: int
    num_classes: int
    clean_batches: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]
    augmented_by_loader: bool  # does the loader crop/flip? (then inputs are not fixed across epochs)


class MethodParams(Schema):
    """Base for each distiller's hyper-parameters (validated from the config's ``method`` section)."""


class Distiller(nn.Module):
    Params: ClassVar[type[MethodParams]] = MethodParams
    needs_teacher: ClassVar[bool] = True
    reads_teacher_features: ClassVar[bool] = False  # True: the teacher must keep forward_features (no folding)
    # the augmentation the method is defined with: a config that leaves ``augment`` unset gets it, and
    # ``augment: none`` is refused for such a method (config validation says which it needs)
    default_augment: ClassVar[str | None] = None
    source: ClassVar[str] = ""  # the paper the method comes from, one line (``mixdistill methods`` lists it)
    # True: without an augmentation the teacher's only input is the loader's batch, through mix() and
    # batch_teacher_logits(), so a table of its logits per view (engine/teacher_views) can stand in for it
    teacher_sees_loader_view: ClassVar[bool] = False
    augment: Callable | None = None  # a bound mixdistill.augment function, set by the trainer
    teacher_views = None  # engine.teacher_views.TeacherViews, set by the trainer when train.teacher_cache is on

    def __init__(self, student: nn.Module, teacher: nn.Module | None, params: MethodParams):
        super().__init__()
        self.student = student
        self.teacher = teacher
        self.params = params
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher is frozen: BatchNorm statistics never move
        return self

    @classmethod
    def check_config(cls, cfg) -> None:
        """Raise ValueError for a RunConfig this method cannot train (checked when the config is
        validated, so --print-config rejects it as training would). Most methods accept any."""

    def set_augment(self, augment: Callable | None) -> None:
        target = getattr(augment, "func", augment)
        wants_models = augment is not None and "teacher" in inspect.signature(target).parameters
        if wants_models and self.teacher is None:  # fail at build time, not at the first step
            name = getattr(target, "__name__", repr(target))
            method = getattr(type(self), "registry_name", type(self).__name__)
            raise ConfigError(f"augmentation {name} scores the pool with the teacher; method {method} has none "
                              "— use a distillation method (e.g. kd_view) or another augmentation")
        self.augment = augment
        self._augment_wants_models = wants_models
        self._augment_checked = False

    def mix(self, images: torch.Tensor, labels: torch.Tensor, info: StepInfo) -> MixedBatch:
        """The configured augmentation's record for this batch (the identity record when there is none)."""
        if self.augment is None:
            batch = clean_batch(images)
            if self.teacher_views is not None and info.views is not None:
                batch.teacher_logits = self.teacher_views.logits(images, info.indices, info.views, self.teacher_logits)
            return batch
        models = {"teacher": self.teacher, "student": self.student} if self._augment_wants_models else {}
        batch = self.augment(images, labels, generator=info.generator, **models)
        if not self._augment_checked:  # a plugin's mistakes said here, not as a traceback in a method or a loss
            check_mixed_batch(batch, images, getattr(getattr(self.augment, "func", self.augment), "__name__",
                                                     repr(self.augment)))
            self._augment_checked = True
        return batch

    def evaluation_logits(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named logits the trainer evaluates every epoch (online methods: every peer and the ensemble)."""
        return {"student": self.student(images)}

    def compile_targets(self) -> list[nn.Module]:
        """Modules ``torch.compile`` applies to (in place, so state-dict keys do not change)."""
        return [self.student]

    def after_step(self) -> None:
        """Called after every optimiser step (EMA updates)."""

    def prepare(self, data: TrainSet) -> None:
        """Called once before the optimiser is built: create data-sized state (memory banks, caches)."""

    def learnable_parameters(self):
        """Everything the optimiser updates: the student plus any method-owned modules."""
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.")]

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher forward in inference mode; the result is an ordinary tensor usable in the loss."""
        with torch.inference_mode():
            logits = self.teacher(images)
        return logits.clone()

    def batch_teacher_logits(self, batch: MixedBatch) -> torch.Tensor:
        """The teacher's logits of a (mixed) batch: those the augmentation computed already (CutMixPick's pool
        logits of the picked images), else one teacher pass over its images."""
        return batch.teacher_logits if batch.teacher_logits is not None else self.teacher_logits(batch.images)

    def forward_train(self, images: torch.Tensor, labels: torch.Tensor, info: StepInfo) -> StepOutput:
        """The step's :class:`StepOutput` (student logits and named loss terms; see :func:`step_output`)."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.student(images)

    def state_dict_extra(self) -> dict:
        """Method-owned learnable modules (besides student and teacher) to checkpoint."""
        return {name: module.state_dict() for name, module in self.named_children()
                if name not in ("student", "teacher")}

    def load_state_dict_extra(self, state: dict) -> None:
        for name, module_state in state.items():
            getattr(self, name).load_state_dict(module_state)
