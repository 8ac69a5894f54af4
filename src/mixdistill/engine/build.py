"""Everything a run is built from, by its config: the data and its loaders, the teacher, the augmentation and
the method (a distiller with its student). The trainer, ``eval``, ``analyze``, the studies and the benchmark
build through here, so a run is put together one way."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mixdistill.augment import augment_params, make_augment
from mixdistill.config import RunConfig
from mixdistill.distill.base import TrainSet
from mixdistill.data import DeviceLoader, load_dataset
from mixdistill.data.datasets import DATASETS, check_two_classes, find_root, image_hw
from mixdistill.data.streaming import StreamingImageFolder
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.distributed import local_batch_size
from mixdistill.engine.logging import check_loggers
from mixdistill.engine import teacher_views
from mixdistill.engine.runtime import Runtime, resolve_runtime
from mixdistill.errors import CheckpointError, ConfigError
from mixdistill.methods import METHODS
from mixdistill.models import TOO_SMALL, create_model
from mixdistill.models.checkpoint import load_weights, names_a_file
from mixdistill.teachers import TEACHERS, load_teacher


# in-memory arrays read in about a second: a grid checks its runs' subsets against them before it trains any
SIZED_BEFORE_A_GRID = ("cifar10", "cifar100", "fashion_mnist")


def check_subset_sizes(cfg: RunConfig, num_train: int, num_test: int) -> None:
    d = cfg.data
    for key, n_images in (("train_subset", num_train), ("test_subset", num_test)):
        n = getattr(d, key)
        if n and n > n_images:
            raise ConfigError(f"data.{key}={n} exceeds the {n_images} images of {d.dataset}")


def load_data(cfg: RunConfig):
    d = cfg.data
    train = load_dataset(d.dataset, "train", root=d.root, download=d.download)
    test = load_dataset(d.dataset, "test", root=d.root, download=d.download)
    check_subset_sizes(cfg, len(train), len(test))
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
    image_size: tuple[int, int]  # (H, W) of the images the networks take
    class_names: tuple[str, ...] | None  # an image folder's class folders, in label order; None: a named dataset's
    data_root: Path  # the folder the dataset was read from (data.root, or where the search found it)


def build_loaders(cfg: RunConfig, runtime: Runtime, dist) -> Loaders:
    d, device = cfg.data, runtime.device
    batch_size = local_batch_size(d.batch_size, dist)
    if d.loader == "streaming":
        return _streaming_loaders(cfg, runtime, dist, batch_size)
    train, test = load_data(cfg)
    padding = train.spec.padding_for(d.crop_padding)
    common = dict(mean=train.spec.mean, std=train.spec.std, device=device)
    train_loader = DeviceLoader(train.images, train.labels, batch_size=batch_size, shuffle=True, drop_last=True,
                                crop_padding=padding, flip=d.flip, seed=cfg.seed, with_indices=True,
                                rank=dist.rank, world_size=dist.world_size, **common)
    test_loader = DeviceLoader(test.images, test.labels, batch_size=d.eval_batch_size, shuffle=False,
                               drop_last=False, **common)
    clean = lambda: DeviceLoader(train.images, train.labels, batch_size=d.eval_batch_size, shuffle=False,  # noqa: E731
                                 drop_last=False, with_indices=True, **common)
    return Loaders(train_loader, test_loader, clean, train.spec.num_classes, train.images.shape[1],
                   train.spec.mean, train.spec.std, len(train.labels), augmented_by_loader(cfg),
                   tuple(train.images.shape[-2:]), train.spec.class_names, train.root)


def augmented_by_loader(cfg: RunConfig) -> bool:
    """Does the run's loader crop or flip its images (a streaming loader always crops)?"""
    d = cfg.data
    return d.loader == "streaming" or DATASETS[d.dataset].padding_for(d.crop_padding) > 0 or d.flip


def _streaming_loaders(cfg: RunConfig, runtime: Runtime, dist, batch_size: int) -> Loaders:
    """Image-folder trees read by worker processes (data.loader: streaming): ImageNet-scale data."""
    d = cfg.data
    spec = DATASETS[d.dataset]
    root = find_root(d.dataset, d.root, download=False)
    size = _crop_size(cfg)
    common = dict(image_size=size, mean=spec.mean, std=spec.std, num_workers=d.num_workers, device=runtime.device,
                  channels_last=runtime.channels_last, subset_seed=d.subset_seed)
    try:
        train = StreamingImageFolder(root, "train", batch_size=batch_size, flip=d.flip, seed=cfg.seed,
                                     with_indices=True, rank=dist.rank, world_size=dist.world_size,
                                     subset=d.train_subset, **common)
    except ValueError as e:  # e.g. a subset larger than the split
        raise ConfigError(f"data: {e}") from None
    check_two_classes(train.classes, root / "train")
    if spec.num_classes is not None and train.num_classes != spec.num_classes and dist.rank == 0:  # a part of it
        warnings.warn(f"{root / 'train'} has {train.num_classes} class folders, not {d.dataset}'s "
                      f"{spec.num_classes}: the run trains and evaluates on those {train.num_classes} classes "
                      f"(data.dataset=imagefolder names a set of other classes)", stacklevel=2)
    test = streaming_eval_loader(cfg, "test", root=root, batch_size=d.eval_batch_size, device=runtime.device,
                                 channels_last=runtime.channels_last)
    clean = lambda: StreamingImageFolder(root, "train", augment=False, batch_size=d.eval_batch_size,  # noqa: E731
                                         with_indices=True, subset=d.train_subset, **common)
    return Loaders(train, test, clean, train.num_classes, train.in_channels, tuple(spec.mean), tuple(spec.std),
                   train.num_samples, True, (size, size), tuple(train.classes), root)


def _crop_size(cfg: RunConfig) -> int:
    """A streaming run's crop size: data.image_size, else its dataset's (an image folder has none)."""
    size = cfg.data.image_size or DATASETS[cfg.data.dataset].image_size
    if not isinstance(size, int):
        raise ConfigError(f"data.loader streaming: set data.image_size (the crop size) for dataset {cfg.data.dataset}")
    return size


def streaming_eval_loader(cfg: RunConfig, split: str, *, root=None, batch_size: int, device, channels_last: bool,
                          use_subset: bool = True) -> StreamingImageFolder:
    """A streaming run's ``split`` as its evaluation reads it (resized to image_size·8/7, centre crop, in order;
    ImageNet's test split is val/), from ``root`` or the run's data.root; ``use_subset``: its data.*_subset."""
    d = cfg.data
    spec = DATASETS[d.dataset]
    size = _crop_size(cfg)
    folder = find_root(d.dataset, root or d.root, download=False)
    subset = (d.test_subset if split == "test" else d.train_subset) if use_subset else None
    try:
        return StreamingImageFolder(folder, "val" if d.dataset == "imagenet" and split == "test" else split,
                                    augment=False, batch_size=batch_size, subset=subset, image_size=size,
                                    mean=spec.mean, std=spec.std, num_workers=d.num_workers, device=device,
                                    channels_last=channels_last, subset_seed=d.subset_seed)
    except ValueError as e:  # e.g. a subset larger than the split
        raise ConfigError(f"data: {e}") from None


def missing_teacher(source: str, cfg: RunConfig | None = None) -> str:
    """The error for a teacher checkpoint that is not there, with the way to get one for the run's dataset."""
    where = "" if Path(source).is_absolute() or not names_a_file(source) else (
        f" (a relative path is read from the current directory, {Path.cwd()}, as a relative output_dir is written: "
        "run the student from where you ran the teacher, or give an absolute path)")
    dataset, teacher = (cfg.data.dataset, cfg.model.teacher) if cfg is not None else (None, None)
    if dataset == "fashion_mnist":
        how = "train the teacher first (`mixdistill train configs/fmnist_cpu_teacher.yaml`)"
    elif dataset == "cifar100":
        how = ("name a pretrained CIFAR-100 teacher (`mixdistill teachers` lists them), or train one first (a "
               "method=ce run)")
    elif teacher is not None and teacher.startswith("tv_"):
        how = (f"download torchvision's ImageNet weights of {teacher.removeprefix('tv_')} (a state dict, which "
               f"{teacher} loads with torchvision's keys; the ImageNet config's comment names the file), or train "
               "one first (a method=ce run)")
    else:
        how = "train the teacher first (a method=ce run on the same data)"
    import difflib

    close = difflib.get_close_matches(source, list(TEACHERS), n=3, cutoff=0.7)
    meant = f" (benchmark teachers close to it: {', '.join(close)})" if close else ""
    return (f"teacher checkpoint '{source}' is neither a file nor a benchmark teacher name{meant}{where}: {how}, or "
            "point model.teacher_checkpoint at an existing checkpoint (a run's last.pt)")


def _check_teacher_source(cfg: RunConfig) -> None:
    """``model.teacher_checkpoint`` is a file or a benchmark teacher that fits the config: ``model.teacher`` must be
    its architecture (it picks the pair's parameters, DKD's beta, and would otherwise be ignored), and the dataset
    must have its 100 classes (CIFAR-100)."""
    source, arch = cfg.model.teacher_checkpoint, cfg.model.teacher
    if Path(source).exists():
        return
    if source not in TEACHERS:
        raise CheckpointError(missing_teacher(source, cfg))
    if arch and arch != TEACHERS[source].arch:
        raise ConfigError(f"model.teacher is '{arch}' but the benchmark teacher {source} is a "
                          f"'{TEACHERS[source].arch}': set model.teacher={TEACHERS[source].arch} or model.teacher=null")
    classes = DATASETS[cfg.data.dataset].num_classes
    if classes is not None and classes != 100:
        raise ConfigError(f"model.teacher_checkpoint {source} is a benchmark teacher, a CIFAR-100 model (100 "
                          f"classes); {cfg.data.dataset} has {classes}")


def build_teacher(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module | None:
    source = cfg.model.teacher_checkpoint
    if source is None:
        return None
    _check_teacher_source(cfg)
    if not Path(source).exists():  # a benchmark teacher
        return load_teacher(source, num_classes=num_classes)
    state = load_checkpoint(source)
    if differs := recorded_shape_difference(state, num_classes, in_channels):  # load_weights advised num_classes=
        what, recorded, here = differs
        raise ConfigError(f"the teacher {source} has {recorded} {what} but {cfg.data.dataset} here {here}: "
                          "a teacher is trained on its student's data")
    teacher = create_model(_file_teacher_arch(cfg, state), num_classes=num_classes, in_channels=in_channels)
    try:
        load_weights(teacher, state)
    except CheckpointError as err:  # a bare state dict records no classes: its classifier says them
        classes = re.search(r"checkpoint has (\d+) classes, model has (\d+)", str(err))
        if classes is None:
            raise
        raise ConfigError(f"the teacher {source} has {classes[1]} classes but {cfg.data.dataset} here "
                          f"{classes[2]}: a teacher is trained on its student's data") from None
    return teacher.eval()


def recorded_shape_difference(state: dict, num_classes: int, in_channels: int) -> tuple[str, int, int] | None:
    """The first of its classes and input channels that a checkpoint ``state`` records otherwise than the data here
    has them: ``(what, recorded, here)``; None where both agree or are not recorded."""
    for what, key, here in (("classes", "num_classes", num_classes), ("input channels", "in_channels", in_channels)):
        if state.get(key) is not None and state[key] != here:
            return what, state[key], here
    return None


def _file_teacher_arch(cfg: RunConfig, state: dict) -> str:
    """The architecture of the teacher checkpoint file ``model.teacher_checkpoint`` (read: ``state``): the one it
    records, or ``model.teacher`` where it records none; they must agree."""
    source, arch = cfg.model.teacher_checkpoint, cfg.model.teacher or state.get("arch")
    if arch is None:
        raise ConfigError(f"{source} does not record its architecture: set model.teacher to its model name")
    if cfg.model.teacher and state.get("arch") and state["arch"] != cfg.model.teacher:
        raise ConfigError(f"model.teacher is '{cfg.model.teacher}' but {source} holds a '{state['arch']}'")
    return arch


def check_teacher_form(cfg: RunConfig, distiller, device_type: str) -> None:
    """The fast/int8 teacher settings this run can take (ConfigError otherwise): int8 kernels are CPU kernels, and
    a method that reads the teacher's features needs the unfolded, float teacher."""
    train = cfg.train
    if distiller.teacher is None:
        return
    if train.int8_teacher and device_type != "cpu":
        raise ConfigError("train.int8_teacher=true is for CPU runs (the int8 kernels are CPU kernels)")
    if train.int8_teacher and train.fast_teacher is False:
        raise ConfigError("train.int8_teacher=true quantises the folded teacher, which train.fast_teacher=false turns "
                          "off: set train.fast_teacher=auto (or true), or train.int8_teacher=false")
    if distiller.reads_teacher_features and (train.fast_teacher is True or train.int8_teacher):
        raise ConfigError(f"method {cfg.method.name} reads the teacher's features, which a folded or int8 teacher "
                          f"does not expose: set train.fast_teacher=false train.int8_teacher=false")


def build_augment(cfg: RunConfig, mean, std):
    """The configured augmentation (None for ``none``), with the dataset's mean/std bound for views that work in
    pixel space (AutoAugment, crop with black padding) when the config leaves them null. The config decided
    which: a method's default augmentation was filled in when the config was validated."""
    name, params = cfg.augment.name, dict(cfg.augment.model_extra or {})
    if name == "none":  # the config decided (a method's default augmentation is filled in there)
        return None
    if "mean" in augment_params(name) and params.get("mean") is None:
        params.update(mean=tuple(mean), std=tuple(std))
    return make_augment(name, **params)


def build_distiller(cfg: RunConfig, num_classes: int, in_channels: int, mean=(0.5,), std=(0.5,),
                    teacher_builder=build_teacher, pretrained: bool | None = None):
    """``pretrained``: start a timm:/tv: student (peers) from the library's weights; None: ``model.pretrained``."""
    method_cls = METHODS.get_or_raise(cfg.method.name)
    params = cfg.method.params()
    pretrained = cfg.model.pretrained if pretrained is None else pretrained
    if getattr(method_cls, "online", False):  # a group of peers trained together, no teacher
        names = cfg.model.peers or [cfg.model.student] * params.peers
        distiller = method_cls.from_names(names, params, num_classes=num_classes, in_channels=in_channels,
                                          **({"pretrained": True} if pretrained else {}))
        distiller.student_arch = names[0]
    else:
        student = create_model(cfg.model.student, num_classes=num_classes, in_channels=in_channels,
                               pretrained=pretrained)
        teacher = teacher_builder(cfg, num_classes, in_channels) if method_cls.needs_teacher else None
        distiller = method_cls(student, teacher, params)
        distiller.student_arch = cfg.model.student
    distiller.set_augment(build_augment(cfg, mean, std))
    check_stage_maps(distiller, cfg)
    return distiller


def check_stage_maps(distiller, cfg: RunConfig) -> None:
    """A feature method that compares stage maps, given a timm:/tv: network that has none (a torchvision model
    outside the ResNet family gives pooled features only): one clear error before any data is read."""
    select = getattr(distiller, "select", None)
    without = [m for m in (distiller.student, getattr(distiller, "teacher", None))
               if m is not None and getattr(m, "has_maps", True) is False]
    if not callable(select) or not without:
        return
    try:
        picked = select({"pooled": torch.zeros(2, 1), "maps": []})
    except (IndexError, ConfigError):
        picked = []
    if not picked:
        names = ", ".join(dict.fromkeys(getattr(m, "external_name", type(m).__name__) for m in without))
        raise ConfigError(f"method {cfg.method.name} compares stage maps, which {names} does not give (torchvision "
                          "models outside the ResNet family give pooled features only): use a method that reads "
                          "pooled features (crd, pkt, rkd, cc), a timm: model or a tv: ResNet")


def stand_in_teacher(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    """A ``teacher_builder`` that loads no weights: the teacher's architecture (``model.teacher``, a benchmark
    teacher's, the one its checkpoint file records (one that records none is refused, as training refuses it),
    else, no file there yet, the student's) at fresh weights, for building a run to check it or count its work."""
    source, arch = cfg.model.teacher_checkpoint, cfg.model.teacher
    if arch is None and source is not None:
        if Path(source).exists():  # a directory too: the checkpoint reader names the files in it
            arch = _file_teacher_arch(cfg, load_checkpoint(source))  # as training takes it (it must record one)
        elif source in TEACHERS:
            arch = TEACHERS[source].arch
    return create_model(arch or cfg.model.student, num_classes=num_classes, in_channels=in_channels)


def _checked_stand_in_teacher(cfg: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    """:func:`stand_in_teacher` after :func:`build_teacher`'s checks of the teacher's source, for
    :func:`check_buildable`: called, as that is, only for a method that loads a teacher."""
    if cfg.model.teacher_checkpoint is not None:
        _check_teacher_source(cfg)
    return stand_in_teacher(cfg, num_classes, in_channels)


def check_cuda_graphs(cfg: RunConfig, runtime) -> None:
    """``train.cuda_graphs`` needs the student compiled on a CUDA device (on a CPU with compile on it was ignored
    without a word; with compile off, refused only once training started, not by ``--print-config``)."""
    if cfg.train.cuda_graphs and not (runtime.compile and runtime.device.type == "cuda"):
        raise ConfigError(f"train.cuda_graphs=true needs train.compile on a CUDA device (here: "
                          f"{runtime.device.type}, compile "
                          f"{'auto' if runtime.compile is None else 'on' if runtime.compile else 'off'})")


def check_buildable(cfg: RunConfig) -> None:
    """Build the method as training would, without reading data or weights (models on the meta device,
    the teacher as its architecture), so that ``--print-config`` rejects what training rejects."""
    check_loggers(cfg)
    runtime = resolve_runtime(cfg.train.device, cfg.train.precision, cfg.train.channels_last, cfg.train.compile)
    check_cuda_graphs(cfg, runtime)
    why_no_table = teacher_views.unusable(cfg) if cfg.train.teacher_cache is True else None
    if why_no_table:
        raise teacher_views.refused(why_no_table)
    spec = DATASETS[cfg.data.dataset]
    with torch.device("meta"):
        distiller = build_distiller(cfg, spec.num_classes or 10, spec.in_channels or 3,
                                    teacher_builder=_checked_stand_in_teacher, pretrained=False)  # nothing downloaded
        check_teacher_form(cfg, distiller, runtime.device.type)
        size = cfg.data.image_size or spec.image_size
        if size is not None:  # the methods' shape checks (FitNets' regressor, ReviewKD's levels) run in prepare
            h, w = image_hw(size)
            batch = (torch.zeros(2, spec.in_channels or 3, h, w), torch.zeros(2, dtype=torch.long),
                     torch.zeros(2, dtype=torch.long))
            check_input_size(distiller, spec.in_channels or 3, size, model_label(cfg))
            try:
                samples = cfg.data.train_subset or spec.num_train or 2
                distiller.prepare(TrainSet(num_samples=samples, num_classes=spec.num_classes or 10,
                                           clean_batches=lambda: iter([batch]),
                                           augmented_by_loader=augmented_by_loader(cfg)))
            except ConfigError:
                raise
            except Exception:  # noqa: BLE001 - what the meta device cannot run is checked when training starts
                pass


# what a network built for one input size (a ViT's patch embedding, MaxViT's windows) says of another
FIXED_SIZE = ("doesn't match model",  # timm
              "Wrong image height", "Wrong image width",  # torchvision's ViT
              "is invalid for input of size")  # a view a size does not divide (torchvision's MaxViT windows)


def check_input_size(distiller: nn.Module, in_channels: int, size, label: str) -> None:
    """A network that cannot take ``size`` images (too small for its pools or kernels: ``data.image_size=2``) is a
    ConfigError before anything trains; it was a torch traceback at the first step. One no-grad evaluation forward
    of one image, on the distiller's device (meta too), in eval mode; what else the forward raises is left alone."""
    h, w = image_hw(size)
    device = next(distiller.parameters()).device
    was_training = distiller.training
    distiller.eval()
    try:
        with torch.no_grad():
            distiller.evaluation_logits(torch.zeros(1, in_channels, h, w, device=device))
    except Exception as err:  # noqa: BLE001 - anything else (a plugin's method that needs prepare() first) is
        if any(phrase in str(err) for phrase in TOO_SMALL):  # left to training, as before
            raise ConfigError(f"{label} cannot take {h}x{w} images: they are too small for its pooling or kernels "
                              f"({str(err).splitlines()[0]})") from None
        if any(phrase in str(err) for phrase in FIXED_SIZE):
            raise ConfigError(f"{label} cannot take {h}x{w} images: it is built for one input size "
                              f"({str(err).splitlines()[0]}); choose a network that takes {h}x{w} images") from None
    finally:
        distiller.train(was_training)


def base_lr(cfg: RunConfig) -> float:
    return cfg.optim.lr_overrides.get(cfg.model.student, cfg.optim.lr)


def model_label(cfg: RunConfig) -> str:
    """The trained network(s): the student, or an online method's peers when model.peers names them."""
    online = getattr(METHODS.get_or_raise(cfg.method.name), "online", False)
    return ",".join(cfg.model.peers) if online and cfg.model.peers else cfg.model.student
