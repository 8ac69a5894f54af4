"""Run configuration: YAML validated by a pydantic schema before any work starts.

A config is data. ``load_config(path, overrides)`` reads the YAML, applies dotted ``key=value``
overrides (values parsed as YAML), and validates everything, including the chosen method's own
parameters, so a typo fails with a message naming the key before a single tensor is allocated.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, TypeAdapter, ValidationError,
                      field_validator, model_validator)

from mixdistill.augment import augment_uses_teacher, resolve_augment_params
from mixdistill.augment.mix import cut_n_mix_batch_error
from mixdistill.data.datasets import DATASETS
from mixdistill.errors import ConfigError, MixdistillError, UnknownNameError
from mixdistill.machine import DEVICE_NAMES, is_device_name
from mixdistill.methods import METHODS
from mixdistill.models import check_model_name, is_external
from mixdistill.models.checkpoint import names_a_file
from mixdistill.schema import Schema, load_yaml

# torch's intra-op thread count when mixdistill was imported: what train.threads=null resolves to
DEFAULT_THREADS = torch.get_num_threads()


class Section(Schema):
    pass


def expand_home(path: str) -> str:
    """``~/x`` as the shell reads it (output_dir=~/runs made a folder named '~' in the current directory; a
    teacher_checkpoint was looked for there); the resolved config records the expanded path."""
    return os.path.expanduser(path) if path.startswith("~") else path


PathText = Annotated[str, AfterValidator(expand_home)]  # a path in a config: output_dir, data.root, teacher_checkpoint


class DataConfig(Section):
    dataset: str = "fashion_mnist"
    # PathText's expansion after min_length: the other order reported "at least 1 item after validation" for ""
    root: Annotated[str, Field(min_length=1), AfterValidator(expand_home)] | None = Field(
        None, description="data directory (relative: from the current directory; unset: MIXDISTILL_DATA, the Debian "
                          "path, download)")
    train_subset: int | None = Field(None, gt=0, description="class-stratified subset of the training set")
    test_subset: int | None = Field(None, gt=0)
    subset_seed: int = Field(0, ge=0)
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    crop_padding: int | None = Field(None, ge=0, description="random-crop padding; null = the dataset's default")
    flip: bool = True
    download: bool = True
    loader: Literal["memory", "streaming"] = Field(
        "memory", description="memory: the whole uint8 dataset on the device; streaming: worker processes decode "
        "image files per batch (ImageNet; image-folder datasets only)")
    image_size: int | None = Field(None, gt=0, le=4096, description="streaming: train crop / eval centre crop, at "
                                   "most 4096 (100000 filled the machine's memory); null = the dataset's (imagenet: "
                                   "224; an image folder has none: set it)")
    num_workers: int | None = Field(None, ge=0, description="streaming: decoding processes; null = min(8, the CPUs "
                                    "this process may use)")

    @model_validator(mode="after")
    def _check_loader(self):
        if self.loader == "memory" and self.dataset == "imagenet":
            raise ValueError("dataset imagenet does not fit in memory: set data.loader: streaming")
        if self.loader == "streaming" and self.dataset not in STREAMING_DATASETS:
            raise ValueError(f"data.loader streaming reads image-folder trees ({', '.join(STREAMING_DATASETS)}), "
                             f"not {self.dataset}")
        if self.loader == "memory" and self.image_size is not None:
            raise ValueError(f"data.image_size={self.image_size} is for data.loader=streaming (its crop size); the "
                             "memory loader keeps the dataset's images as they are: unset it")
        if self.loader == "memory" and self.num_workers is not None:  # accepted and recorded, doing nothing
            raise ValueError(f"data.num_workers={self.num_workers} is for data.loader=streaming (its decoding "
                             "processes); the memory loader has the dataset on the device and no workers: unset it")
        if self.loader == "streaming" and self.crop_padding is not None:  # as data.num_workers the other way
            raise ValueError(f"data.crop_padding={self.crop_padding} is the memory loader's random crop of padded "
                             "images; data.loader=streaming crops with RandomResizedCrop to data.image_size: unset it "
                             "(data.crop_padding=null)")
        return self


STREAMING_DATASETS = ("imagenet", "imagefolder")


class ModelConfig(Section):
    student: str = "resnet8x4"
    teacher: str | None = None
    teacher_checkpoint: PathText | None = Field(
        None, description="a checkpoint file ({'model': state_dict}; relative: from the current directory) or a "
                          "benchmark teacher name")
    peers: list[str] | None = Field(
        None, description="online methods: one model name per peer (default: method.peers copies of student); the "
                          "first is recorded as model.student")
    pretrained: bool = Field(
        False, description="timm:NAME / tv:NAME students and peers start from the library's pretrained weights "
                           "(downloaded where the network allows); false: fresh weights, nothing downloaded. The "
                           "teacher's weights always come from model.teacher_checkpoint")


class MethodConfig(BaseModel):
    """``name`` picks the distiller; every other key is that distiller's parameter. After validation the
    section holds every parameter, defaults included, so a run's config.yaml records what it used."""

    model_config = ConfigDict(extra="allow")
    name: str = "ce"
    # the parameters the config gave (the rest are defaults): a per-pair value (DKD's beta) replaces only defaults
    _given: frozenset = PrivateAttr(default_factory=frozenset)

    @model_validator(mode="after")
    def _validate_params(self):
        cls = METHODS.get_or_raise(self.name)
        self._given = frozenset(self.model_extra or {})
        resolved = cls.Params(**(self.model_extra or {})).model_dump(mode="json")
        self.model_extra.clear()
        self.model_extra.update(resolved)
        return self

    def params(self):
        return METHODS[self.name].Params(**(self.model_extra or {}))


class AugmentConfig(BaseModel):
    """Batched on-device augmentation applied by the method (``name`` from mixdistill.augment, or
    ``none``); every other key is a parameter of that augmentation. After validation the section holds
    every parameter, defaults included (``mean``/``std``: null = the dataset's, bound when training)."""

    model_config = ConfigDict(extra="allow")
    name: str = "none"

    @model_validator(mode="after")
    def _validate_params(self):
        if self.name != "none":
            resolved = resolve_augment_params(self.name, **(self.model_extra or {}))
            self.model_extra.clear()
            self.model_extra.update(resolved)
        elif self.model_extra:
            raise ValueError(f"augment 'none' takes no parameters, got {', '.join(self.model_extra)} (name the "
                             f"augmentation too: augment=mixup augment.{next(iter(self.model_extra))}=...)")
        return self


class OptimConfig(Section):
    lr: float = Field(0.05, gt=0)
    lr_overrides: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=lambda: {"mobile_half": 0.01, "MobileNetV2": 0.01, "ShuffleV1": 0.01, "ShuffleV2": 0.01},
        description="student name -> lr (the protocol uses 0.01 for MobileNetV2 and ShuffleNets)")
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = Field(False, description="Nesterov momentum (needs momentum > 0)")
    weight_decay: float = Field(5e-4, ge=0)
    epochs: int = Field(240, gt=0)
    schedule: Literal["step", "onecycle", "cosine", "constant"] = "step"
    milestones: list[int] = Field(default_factory=lambda: [150, 180, 210])
    gamma: float = Field(0.1, gt=0)
    epoch_factor: int = Field(1, gt=0, description="scales epochs and every milestone (longer schedules)")
    warmup_epochs: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _check_nesterov(self):
        if self.nesterov and self.momentum == 0:  # torch's SGD raised it when training started, a traceback
            raise ValueError("optim.nesterov=true needs a momentum: set optim.momentum > 0 (e.g. 0.9)")
        return self

    @model_validator(mode="after")
    def _check_milestones(self):
        if any(m <= 0 or m >= self.epochs for m in self.milestones) and self.schedule == "step":
            others = "optim.schedule=constant / onecycle / cosine"
            if self.epochs < 2:
                raise ValueError(f"optim.milestones {self.milestones}: optim.epochs={self.epochs} leaves no room for a "
                                 f"step schedule's decay: set {others}")
            raise ValueError(f"optim.milestones {self.milestones} must lie strictly inside 1..{self.epochs - 1} for "
                             f"optim.epochs={self.epochs}: set optim.milestones too (e.g. [{self.epochs // 2}]), or "
                             f"{others}")
        return self

    @property
    def total_epochs(self) -> int:
        return self.epochs * self.epoch_factor

    @property
    def scaled_milestones(self) -> list[int]:
        return [m * self.epoch_factor for m in self.milestones]


# what train.best_metric may name: a per-epoch test metric (metrics.jsonl); a suffix names one output of an
# online method (test_acc_ensemble, test_acc_peer0, test_acc_best_peer, ...)
BEST_METRIC = re.compile(r"test_(acc|top5|loss)(_[A-Za-z0-9_]+)?")


def augment_batch_error(cfg: "RunConfig", batch: int, batch_name: str) -> str | None:
    """Why ``cfg``'s augmentation cannot mix a batch of ``batch`` images (``batch_name``: where that size comes
    from, for the message), or None: a derangement partner needs another image of the batch, Cut^nMix n others."""
    name, extra = cfg.augment.name, cfg.augment.model_extra or {}
    deranged = name == "cutmix_pick" or (name == "cutmix" and extra.get("partner") == "derangement")
    if deranged and batch < 2:
        return (f"{name} pairs each image with another of its batch (a derangement): {batch_name}{batch} has none"
                + ("; or augment.partner=permutation" if name == "cutmix" else ""))
    if name == "cut_n_mix":
        return cut_n_mix_batch_error(extra["n"], extra["partner"], batch, batch_name)
    return None


def names_its_outputs(method_cls) -> bool:
    """An online method whose ``evaluation_names`` is as derived as its ``evaluation_logits`` (a plugin that
    overrides only the outputs is checked when it evaluates)."""
    def owner(attr):
        return next((k for k in method_cls.__mro__ if attr in vars(k)), None)

    names, logits = owner("evaluation_names"), owner("evaluation_logits")
    return names is not None and logits is not None and issubclass(names, logits)


def metric_lower_is_better(metric: str) -> bool:
    return "loss" in metric


class TrainConfig(Section):
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not is_device_name(value):
            raise ValueError(f"'{value}' is not a device this trainer runs on ({DEVICE_NAMES})")
        return value

    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto = bf16 autocast where the hardware does bf16 natively, fp16 autocast with a "
                            "gradient scaler on a CUDA GPU without it (compute capability 7.x), fp32 otherwise; "
                            "fp16: CUDA only")
    channels_last: bool | Literal["auto"] = Field("auto", description="true | false | auto (on)")
    compile: bool | Literal["auto"] = Field(
        "auto", description="torch.compile the student: true | false | auto (CUDA; a CPU where it repays)")
    cuda_graphs: bool = Field(False, description="CUDA graphs: the student compiled with mode=reduce-overhead, the "
                                                 "fast teacher replayed as a graph, SGD's fused kernel (needs compile "
                                                 "on CUDA; measured for KD only; not for online methods)")
    fast_teacher: bool | Literal["auto"] = Field(
        "auto", description="fold the frozen teacher's Conv+BN pairs and run it channels_last (compiled when "
                            "compile is on); auto = on unless the method reads teacher features (CRD)")
    int8_teacher: bool = Field(False, description="CPU only: int8-quantised teacher (its top-1 agreement with "
                                                  "the fp32 teacher is logged)")
    teacher_cache: bool | Literal["auto"] = Field(
        "auto", description="look the teacher's logits up in a table of every crop/flip view of every training "
        "image (engine/teacher_views.py; the same bits as running it), for methods whose teacher sees only the "
        "loader's batch (kd, dkd without augment); auto = use one that is there, build one when the run's epochs "
        "exceed the views (a study grid: the epochs of all runs that share it); true = always (the runs that need it "
        "at once build it together, a view each at a time); false = never")

    @field_validator("channels_last", "compile", "fast_teacher", "teacher_cache", mode="before")
    @classmethod
    def _true_false_or_auto(cls, value):
        """One line for a bad value (pydantic named each member of the union: 'train.compile.bool: ...;
        train.compile.literal['auto']: ...'); the spellings a plain true/false option takes (off, yes) as there."""
        if isinstance(value, bool) or value == "auto":
            return value
        try:
            return TypeAdapter(bool).validate_python(value)
        except ValidationError:
            raise ValueError(f"expected true, false or auto, got {value!r}") from None
    eval_every: int = Field(1, gt=0)
    checkpoint_every: int = Field(1, gt=0)
    log_every: int = Field(50, gt=0, description="steps between reads of the on-device metrics")
    tensorboard: bool = Field(True, description="TensorBoard scalars in tensorboard/; false = tensorboard left out "
                                                "of train.loggers")
    progress: bool = Field(True, description="a progress bar while an epoch runs, where stderr is an interactive "
                                             "terminal (elsewhere: one line per epoch only)")
    loggers: list[Literal["jsonl", "tensorboard", "csv", "wandb"]] = Field(
        default_factory=lambda: ["jsonl", "tensorboard"],
        description="where the per-epoch metrics go: jsonl (metrics.jsonl, always written), tensorboard, csv "
                    "(metrics.csv, one row per evaluation), wandb (Weights & Biases: pip install wandb)")
    threads: int | None = Field(None, gt=0, description="torch CPU threads; null = torch's default for this process "
                                                     "(recorded resolved: results depend on it)")
    sync_bn: bool = Field(False, description="synchronised BatchNorm across torchrun processes")
    best_metric: str | None = Field(
        "test_acc", description="the evaluated metric whose best epoch best.pt keeps (test_acc, test_top5, "
        "test_loss; online: also test_acc_ensemble, test_acc_best_peer, ...; with ema_decay: test_acc_ema, ...; "
        "*loss*: lower is better); null: no best.pt")
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="keep an exponential moving average of the student (weights and BatchNorm "
        "buffers), updated after every optimiser step with this decay (e.g. 0.999), evaluated each epoch as "
        "test_acc_ema and saved in last.pt; null: off")
    label_smoothing: float = Field(
        0.0, ge=0, lt=1, description="eps of the CE terms against the labels: targets (1 - eps) * y + eps / C, y the "
        "one-hot or mixed labels; 0: none")

    @field_validator("best_metric")
    @classmethod
    def _check_best_metric(cls, value: str | None) -> str | None:
        if value is not None and not BEST_METRIC.fullmatch(value):
            raise ValueError(f"'{value}' is not an evaluated metric (test_acc, test_top5, test_loss, or for an "
                             f"online method test_acc_NAME / test_top5_NAME / test_loss_NAME)")
        return value

    @model_validator(mode="after")
    def _check_fp16_device(self):
        if self.precision == "fp16" and self.device == "cpu":
            raise ValueError("train.precision=fp16 is for CUDA GPUs (fp16 autocast with a gradient scaler); on a cpu "
                             "use auto, fp32 or bf16")
        return self

    @model_validator(mode="after")
    def _resolve_threads(self):
        if self.threads is None:
            self.threads = DEFAULT_THREADS
        return self

    @model_validator(mode="after")
    def _resolve_loggers(self):
        """metrics.jsonl is always written (the run's record); tensorboard=false and a loggers list without
        tensorboard mean the same, and the resolved config says so in both keys."""
        loggers = list(dict.fromkeys(["jsonl", *self.loggers]))
        if not self.tensorboard and "tensorboard" in loggers:
            loggers.remove("tensorboard")
        self.loggers, self.tensorboard = loggers, "tensorboard" in loggers
        return self


class RunConfig(Section):
    name: str = "run"
    seed: int = Field(0, ge=0, le=2**64 - 1)  # torch.manual_seed's range
    output_dir: PathText = Field("runs", description="the run lives in output_dir/name (relative: from the current "
                                                "directory, not the config file's)")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @field_validator("name", mode="before")
    @classmethod
    def _number_as_text(cls, value):
        """``name=123`` parses as a number: a folder name all the same. ``name=true`` (or false) parses as a YAML
        boolean, which could be a folder name only by guessing its spelling: refused, saying so. ``name=`` is null."""
        if isinstance(value, bool):
            raise ValueError(f"reads as the YAML boolean {str(value).lower()} (true and false are booleans): quote "
                             "it, e.g. name=\"'true'\", or choose another name")
        if value is None:
            raise ValueError("give the run a name (name= is empty); it is the run's folder in output_dir")
        return str(value) if isinstance(value, int) else value

    @field_validator("name")
    @classmethod
    def _one_folder(cls, value: str) -> str:
        """The run's folder in output_dir: "" would be output_dir itself (hiding the runs below it from
        ``results``), "../x" or "/x" a folder outside it."""
        if value in ("", ".", "..") or any(c in value for c in "/\\\0"):
            raise ValueError(f"name {value!r} is the run's folder in output_dir: one folder name, not empty and "
                             "without '/', '\\' or '..' (set output_dir for where the run goes)")
        if ".superseded" in value:  # how a set-aside run's folder is named: listings leave those out
            raise ValueError(f"name {value!r}: '.superseded' marks a run set aside, which results leaves out")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_augment(cls, tree):
        """An augment section without a name gets the method's default (mix_kd/mixstd: two-permutation
        mixup, kd_view: cutmix, cutnmix: cut_n_mix ...), so the resolved config shows what runs."""
        if not isinstance(tree, dict):
            return tree
        tree = named_sections(tree)
        augment = tree.get("augment") or {}
        method = tree.get("method") or {}
        if isinstance(augment, dict) and "name" not in augment and isinstance(method, dict):
            method_cls = METHODS.get(method.get("name", "ce"))
            default = getattr(method_cls, "default_augment", None)
            tree = {**tree, "augment": {"name": default or "none", **augment}}
        return tree

    @model_validator(mode="after")
    def _pair_params(self):
        """A method whose released configs set parameters per teacher-student pair (DKD: mdistiller's beta) takes
        the pair's values for the parameters this config leaves unset. The teacher is ``model.teacher``, else a
        benchmark teacher named by ``model.teacher_checkpoint`` (a checkpoint file matches no pair: set
        ``model.teacher`` to look its pair up)."""
        method_cls = METHODS.get(self.method.name)
        lookup = getattr(method_cls, "pair_params", None)
        if lookup is not None:
            teacher = self.model.teacher or self.model.teacher_checkpoint
            for key, value in lookup(teacher, self.model.student).items():
                if key not in self.method._given:
                    self.method.model_extra[key] = value
            self.method.params()  # the pair's values pass the method's own validation
            paired = method_cls.paired_teachers(self.model.student)
            source = self.model.teacher_checkpoint
            if paired and self.model.teacher is None and source and (names_a_file(source) or Path(source).is_file()):
                defaults = method_cls.Params.model_fields
                keys = sorted({k for t in paired for k, v in lookup(t, self.model.student).items()
                               if v != defaults[k].default} - self.method._given)
                if keys:  # the file's architecture decides the pair, and the config layer does not read it
                    raise ValueError(
                        f"method {self.method.name} takes {', '.join(keys)} per teacher-student pair (its released "
                        f"configs; {self.model.student} is paired with {', '.join(paired)}), and the teacher "
                        f"{source} is a file: set model.teacher to its architecture, or give "
                        f"{', '.join(f'method.{k}' for k in keys)}")
        return self

    @model_validator(mode="after")
    def _check_combination(self):
        """What training would reject from the config alone, so that --print-config rejects it too."""
        if self.data.dataset not in DATASETS:
            raise UnknownNameError("dataset", self.data.dataset, DATASETS)
        method_cls = METHODS[self.method.name]
        channels, extra = DATASETS[self.data.dataset].in_channels, self.augment.model_extra or {}
        widths = {len(extra[k]) for k in ("mean", "std") if extra.get(k) is not None} - {1}
        if channels and widths - {channels}:  # a shape error mid-run
            raise ValueError(f"augment.mean and augment.std give {max(widths)} values; {self.data.dataset} images "
                             f"have {channels} channel{'s' if channels > 1 else ''}: one value each (or one for all)")
        for key in ("student", "teacher"):
            name = getattr(self.model, key)
            if name is not None:
                check_model_name(name, f"model (model.{key})")
        for name in self.model.peers or []:
            check_model_name(name, "model (model.peers)")
        if self.train.cuda_graphs and getattr(method_cls, "online", False):
            raise ValueError(f"train.cuda_graphs=true: not for online methods ('{self.method.name}' evaluates its "
                             "peers one after another and reads each one's logits after the next one's CUDA graph "
                             "has replayed, which overwrites them); it is measured for KD")
        if self.model.peers and not getattr(method_cls, "online", False):
            online = sorted(name for name, cls in METHODS.items() if getattr(cls, "online", False))
            raise ValueError(f"model.peers names the peers of an online method ({', '.join(online)}); method "
                             f"'{self.method.name}' trains one student, model.student: unset model.peers "
                             "(model.peers=null)")
        if self.model.peers and "peers" in (self.method.model_extra or {}):  # an online method's peer count
            if "peers" in self.method._given and self.method.model_extra["peers"] != len(self.model.peers):
                raise ValueError(f"method.peers is {self.method.model_extra['peers']} but model.peers names "
                                 f"{len(self.model.peers)} models: set one (model.peers decides when method.peers is "
                                 "unset)")
            self.method.model_extra["peers"] = len(self.model.peers)  # recorded as trained
            try:
                self.method.params()  # the count passes the method's own bounds (a traceback otherwise, at build)
            except ValidationError as err:
                first = err.errors()[0]
                raise ValueError(f"model.peers names {len(self.model.peers)} model(s), method.peers: "
                                 f"{first['msg']}") from None
        if self.model.peers and getattr(method_cls, "online", False):
            # peers[0] is the student (the checkpoint's model, optim.lr_overrides' key): recorded as trained
            self.model.student = self.model.peers[0]
        if self.model.pretrained:
            trained = (self.model.peers or [self.model.student]) if getattr(method_cls, "online", False) \
                else [self.model.student]
            zoo = [name for name in trained if not is_external(name)]
            if zoo:
                raise ValueError(f"model.pretrained=true loads timm or torchvision weights; {', '.join(zoo)} is the "
                                 "zoo's own model (use timm:NAME or tv:NAME, or set model.pretrained=false)")
        if method_cls.needs_teacher and not self.model.teacher_checkpoint:
            raise ValueError(f"method '{self.method.name}' needs a teacher: set model.teacher_checkpoint")
        if self.train.int8_teacher and not method_cls.needs_teacher:  # accepted and recorded, doing nothing
            raise ValueError(f"train.int8_teacher=true quantises the teacher; method {self.method.name} has none: "
                             "unset it")
        if self.augment.name != "none" and augment_uses_teacher(self.augment.name) and not method_cls.needs_teacher:
            raise ValueError(f"augmentation {self.augment.name} scores the pool with the teacher; method "
                             f"{self.method.name} has none — use a distillation method (e.g. kd_view) or another "
                             "augmentation")
        too_small = augment_batch_error(self, self.data.batch_size, "data.batch_size=")
        if too_small:  # a traceback at the first step (torchrun's per-process batch: checked where it is known)
            raise ValueError(too_small)
        if method_cls.default_augment and self.augment.name == "none":
            raise ValueError(f"method '{self.method.name}' trains on an augmented batch: set augment (its default is "
                             f"{method_cls.default_augment}), or leave augment unset to get that default "
                             "(augment={} on the command line)")
        best = self.train.best_metric
        suffix = BEST_METRIC.fullmatch(best).group(2) if best is not None else None
        if suffix == "_ema":
            if self.train.ema_decay is None:
                raise ValueError(f"train.best_metric {best} names the student EMA, which is off: set train.ema_decay")
        elif suffix and not getattr(method_cls, "online", False):
            raise ValueError(f"train.best_metric {best} names one output of an online method; method "
                             f"{self.method.name} has one (test_acc, test_top5 or test_loss"
                             "; with train.ema_decay also test_acc_ema, test_top5_ema, test_loss_ema)")
        elif suffix and names_its_outputs(method_cls):  # found after the first epoch's evaluation otherwise
            names = method_cls.evaluation_names(self.method.params())
            if suffix[1:] not in names and best not in ("test_acc_best_peer", "test_acc_mean_peer"):
                raise ValueError(f"train.best_metric {best} is not evaluated by {self.method.name} with "
                                 f"{self.method.params().peers} peers: its outputs are {', '.join(names)} "
                                 "(test_acc_NAME, test_top5_NAME, test_loss_NAME), besides test_acc_best_peer, "
                                 "test_acc_mean_peer, and test_acc, test_top5, test_loss (the peers' mean)")
        method_cls.check_config(self)
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def merge(base: dict, extra: dict) -> dict:
    """A copy of config tree ``base`` with ``extra`` merged in, section by section (``extra`` wins)."""
    out = copy.deepcopy(base)
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(tree: dict, dotted_key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict. Assigning a scalar to a section that has a ``name`` (method,
    augment) switches that section to the new name with default parameters."""
    keys = dotted_key.split(".")
    if len(keys) > 1:
        tree.update(named_sections(tree))  # a file's `method: kd`, before a dotted key sets one of its parameters
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted_key}': '{key}' is not a section")
        node = child
    last = keys[-1]
    if len(keys) == 1 and last in _NAMED_SECTIONS and not isinstance(value, dict):
        node[last] = {"name": value}
    else:
        node[last] = value


_NAMED_SECTIONS = {"method", "augment"}


def named_sections(tree: dict) -> dict:
    """``method: kd`` / ``augment: none`` (a file's tree, the API's) as ``{name: ...}``, what ``method=kd`` sets on
    the command line (:func:`set_dotted` does the same before a dotted key sets one of its parameters)."""
    return {**tree, **{key: {"name": tree[key]} for key in _NAMED_SECTIONS if isinstance(tree.get(key), str)}}


NAME_KEYS = ("model.student", "model.teacher")  # a network's name, which timm:NAME / tv:NAME write with a colon


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``key=value`` pairs, values parsed as YAML. A method or augmentation switch (``method=kd``) comes
    first, whatever its place on the command line, so that ``method.temperature=1 method=kd`` keeps the
    temperature (the switch resets the parameters the config file gave, not those given beside it)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override '{item}' names no key: write key=value, e.g. optim.epochs=3")
        if "" in key.strip().split("."):
            raise ConfigError(f"override '{item}': the key '{key.strip()}' has an empty part (keys look like "
                              "optim.epochs)")
        try:
            value = load_yaml(raw) if raw != "" else None
        except yaml.YAMLError as err:
            if raw.lstrip()[:1] in ("[", "{"):  # meant as a list or a section, not as text
                raise ConfigError(f"override {item}: not a valid YAML list or mapping: "
                                  f"{yaml_error_line(err)}") from None
            value = raw
        if isinstance(value, dict) and key.strip() in NAME_KEYS and not raw.lstrip().startswith("{"):
            value = raw.strip()  # `model.student=timm:` is a name cut short, not a YAML mapping {timm: null}
        if key.strip() == "method" and isinstance(value, dict) and value and "name" not in value:
            first = next(iter(value))  # it replaced the section with ce's, and was refused as "ce takes no parameters"
            raise ConfigError(f"override {item} replaces the whole method section and names no method: give "
                              f"method={{name: NAME, {first}: ...}}, or set one parameter with method.{first}=...")
        parsed.append((key.strip(), value))
    return switches_first(parsed)


def switches_first(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Overrides in the order they apply: method and augmentation switches first (a name, or a whole section:
    ``augment={}``, ``method={name: kd}``), in the order given, so the last of them wins; the rest as given. A key
    given before a section that replaces it (``optim.epochs=3 optim={lr: 0.2}``) is refused: the section would drop
    it without a word."""
    def is_switch(kv):
        return kv[0] in _NAMED_SECTIONS

    for i, (key, value) in enumerate(pairs):  # as given: a section moved first must not keep a key it came after
        if key in _NAMED_SECTIONS and not isinstance(value, dict):
            continue  # a name: it resets the file's parameters, not those given beside it, whatever their order
        dropped = [earlier for earlier, _ in pairs[:i] if isinstance(earlier, str) and isinstance(key, str)
                   and earlier.startswith(key + ".")]  # not a text key (the API's): refused as one later
        if dropped:
            raise ConfigError(f"override {dropped[0]} comes before {key}, which replaces the whole {key} section "
                              f"and would drop it: give {dropped[0]} after {key} (or inside it)")
    return [kv for kv in pairs if is_switch(kv)] + [kv for kv in pairs if not is_switch(kv)]


def yaml_error_line(err: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else problem


def schema_fields(model: type[BaseModel] | None = None, prefix: str = ""):
    """(dotted key, pydantic field) for every key of the run config's schema, sections walked into."""
    for name, field in (model or RunConfig).model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from schema_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield prefix + name, field


def config_keys(method: str | None = None) -> list[str]:
    """Every dotted key a config takes (with ``method``'s parameters when it names a registered method)."""
    keys = [key for key, _ in schema_fields()]
    if method in METHODS:
        keys += [f"method.{k}" for k in METHODS[method].Params.model_fields]
    return keys


def _close_keys(key: str, keys: list[str]) -> list[str]:
    """Keys an unknown dotted key may have meant: close spellings, and the same name in another section."""
    import difflib

    close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8)
    leaf = key.rsplit(".", 1)[-1]
    return (close + [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k not in close])[:3]


def _format_validation_error(err: ValidationError, keys: list[str] = (), method: str | None = None) -> str:
    parts, stray = [], []  # stray: unknown method parameters with no close spelling
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"] if x not in ("__root__",))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            param = loc.removeprefix("method.") if loc.startswith("method.") else None
            # another method's parameter was left by method.name=OTHER: a close spelling would mislead
            owners = [n for n, m in METHODS.items() if param in m.Params.model_fields] if param else []
            close = _close_keys(loc, keys) if keys and not owners else []
            msg = "unknown key" + (f" (did you mean {' or '.join(close)}?)" if close else "")
            if not close and param:
                stray.append(param)
        parts.append(f"{loc}: {msg}" if loc else msg)
    if stray and method:
        params = [k.removeprefix("method.") for k in keys if k.startswith("method.") and k != "method.name"]
        hint = f"method {method} takes {', '.join(params) or 'no parameters'}"
        if any(k in m.Params.model_fields for m in METHODS.values() for k in stray):  # left by method.name=OTHER
            hint += f" (method={method}, unlike method.name={method}, starts the section afresh)"
        parts.append(hint)
    return "invalid config: " + "; ".join(parts)


def build_config(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as err:
        # pydantic wraps errors raised inside validators; surface ours (unknown names) unwrapped
        for e in err.errors():
            inner = (e.get("ctx") or {}).get("error")
            if isinstance(inner, MixdistillError):
                raise inner from None
            if isinstance(inner, ValidationError):  # a method's own Params failed
                sub = _format_validation_error(inner).removeprefix("invalid config: ")
                raise ConfigError(f"invalid config: method ({tree.get('method', {}).get('name')}): {sub}") from None
        method = tree.get("method", {}).get("name", "ce") if isinstance(tree.get("method"), dict) else None
        raise ConfigError(_format_validation_error(err, config_keys(method), method)) from None


def stored_config(tree: dict) -> RunConfig:
    """A config a run stored (its config.yaml, its checkpoint, a study's results row), read through today's schema.
    What an older mixdistill accepted and ignored, and today's refuses, is dropped, so such a run still resumes,
    opens and compares as the run it was: ``model.peers`` beside a method that trains one student (ignored until
    2026-12-04); ``data.num_workers`` with the memory loader and ``train.int8_teacher`` for a method with no teacher
    (until 2026-12-05); ``data.crop_padding`` with the streaming loader, and pcl's ``views: per_peer`` with no
    augmentation, which drew one view for all (also until 2026-12-05). And what it trained keeps meaning what it did:
    an online run that named ``model.peers`` beside another ``model.student`` took its lr from the student's
    ``optim.lr_overrides`` entry, where today ``model.peers[0]``'s decides: that lr is kept as peers[0]'s entry.
    ``augment.std`` without ``augment.mean`` (until 2026-12-05) was replaced by the dataset's, as the mean: dropped."""
    model, method, data, train = (tree.get(key) for key in ("model", "method", "data", "train"))
    name = method.get("name", "ce") if isinstance(method, dict) else method
    cls = METHODS.get(name) if isinstance(name, str) else None
    if (isinstance(model, dict) and model.get("peers") and getattr(cls, "online", False)
            and model.get("student", ModelConfig().student) != model["peers"][0]):
        optim = tree.get("optim") if isinstance(tree.get("optim"), dict) else {}
        overrides = dict(optim.get("lr_overrides", OptimConfig().lr_overrides) or {})
        lr = optim.get("lr", OptimConfig().lr)
        trained = overrides.get(model.get("student", ModelConfig().student), lr)
        overrides.pop(model["peers"][0], None)
        if trained != lr:
            overrides[model["peers"][0]] = trained
        tree = {**tree, "optim": {**optim, "lr_overrides": overrides}}
    augment = tree.get("augment")
    if isinstance(augment, dict) and augment.get("mean") is None and augment.get("std") is not None:
        tree = {**tree, "augment": {**augment, "std": None}}  # it was replaced by the dataset's with the mean
    if (getattr(cls, "online", False) and name == "pcl" and isinstance(method, dict)
            and method.get("views") == "per_peer" and (tree.get("augment") or {}).get("name", "none") == "none"):
        tree = {**tree, "method": {**method, "views": "shared"}}
    if isinstance(model, dict) and model.get("peers") and cls is not None and not getattr(cls, "online", False):
        tree = {**tree, "model": {**model, "peers": None}}
    if (isinstance(data, dict) and data.get("num_workers") is not None
            and data.get("loader", "memory") == "memory"):
        tree = {**tree, "data": {**data, "num_workers": None}}
    if isinstance(data, dict) and data.get("crop_padding") is not None and data.get("loader") == "streaming":
        tree = {**tree, "data": {**tree["data"], "crop_padding": None}}
    if isinstance(train, dict) and train.get("int8_teacher") and cls is not None and not cls.needs_teacher:
        tree = {**tree, "train": {**train, "int8_teacher": False}}
    return build_config(tree)


def read_config_file(path: str | Path) -> dict:
    """A YAML config file's tree (not yet validated)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder: name a YAML file (configs/ holds examples)")
    if not path.is_file():
        hint = (" (the first argument is a YAML config file, e.g. configs/fmnist_cpu.yaml; key=value overrides "
                "follow it)") if "=" in path.name else ""
        raise ConfigError(f"config file not found: {path}{hint}")
    try:
        tree = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise ConfigError(f"config {path} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {yaml_error_line(err)}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    return tree


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    tree: dict = read_config_file(path) if path is not None else {}
    for key, value in parse_overrides(list(overrides)):
        set_dotted(tree, key, value)
    return build_config(tree)


def resolve_config(config: str | Path | dict | RunConfig | None = None,
                   overrides: dict[str, Any] | None = None) -> RunConfig:
    """The Python API's config: ``config`` is a YAML file's path, a config tree (dict), a RunConfig or None (the
    defaults); ``overrides`` maps dotted keys to Python values (``{"optim.epochs": 2, "method": "kd"}``), applied
    as ``key=value`` overrides are (a method or augmentation switch first)."""
    if isinstance(config, RunConfig):
        tree = config.to_dict()
    elif isinstance(config, dict):
        tree = copy.deepcopy(config)
    elif isinstance(config, (str, os.PathLike)):
        tree = read_config_file(config)
    elif config is None:
        tree = {}
    else:
        raise ConfigError(f"config: expected a YAML file's path, a dict or None, got {type(config).__name__}")
    for key, value in switches_first(list((overrides or {}).items())):
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override key {key!r}: expected a dotted config key such as 'optim.epochs'")
        set_dotted(tree, key, copy.deepcopy(value))
    try:
        return build_config(tree)
    except ConfigError as err:
        strings = [f"{k}={v!r}" for k, v in (overrides or {}).items()
                   if isinstance(v, str) and v.strip()[:1] in ("[", "{") and k in str(err)]
        if not strings:
            raise
        raise ConfigError(f"{err} (the Python API takes Python values, not the command line's YAML text: "
                          f"{', '.join(strings)} is a string)") from None


def describe_options() -> str:
    """Every config key with its default, for ``--help``."""
    lines = []
    for key, field in schema_fields():
        default = field.get_default(call_default_factory=True)
        desc = f"  ({field.description})" if field.description else ""
        lines.append(f"  {key}={default!r}{desc}")
    lines.append("  method.<param>=...  (the chosen method's parameters: `mixdistill methods` lists them with "
                 "their defaults)")
    lines.append("  augment.<param>=...  (the chosen augmentation's parameters: `mixdistill augments` lists them "
                 "with their defaults)")
    return "\n".join(lines)
