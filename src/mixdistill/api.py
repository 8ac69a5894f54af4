"""The Python API, exported lazily by ``mixdistill`` itself: ``train``, ``evaluate``, ``open_run``,
``register_method``, ``register_augment`` (README: "Python API"). Each does what the command of the same name
does; errors are :class:`~mixdistill.errors.MixdistillError` exceptions carrying the message the command line
would print."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mixdistill.augment.registry import register_augment, unregister_augment
from mixdistill.config import RunConfig, resolve_config
from mixdistill.engine.run import FinishedRun, open_run
from mixdistill.errors import ConfigError
from mixdistill.methods import register_method, unregister_method

__all__ = ["evaluate", "open_run", "register_augment", "register_method", "train", "unregister_augment",
           "unregister_method"]


def train(config: str | Path | dict | RunConfig | None = None, overrides: dict[str, Any] | None = None, /, *,
          resume: bool = False, quiet: bool = False, **more: Any) -> dict:
    """Train one run, as ``mixdistill train`` does, and return its summary (what ``summary.json`` holds) with
    ``run_dir``, the run directory, added.

    ``config``: a YAML config file's path, a config tree (dict, as the YAML would hold it) or None (the
    defaults). Overrides are dotted config keys with Python values, given as a dict, as keyword arguments, or
    both (the keywords win): ``train("configs/fmnist_cpu.yaml", {"optim.epochs": 2}, seed=1)``; a switch of
    ``method`` or ``augment`` applies first, as on the command line. ``resume``: continue the run in the
    config's run directory (``--resume``); ``quiet``: no log lines or progress bar.
    """
    from collections.abc import Mapping

    from mixdistill.engine.trainer import train as train_run

    for name, flag in (("resume", resume), ("quiet", quiet)):
        if not isinstance(flag, bool):  # "no" would be truthy
            raise ConfigError(f"train: {name} is True or False, got {flag!r}")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise ConfigError(f"train: overrides are a dict of dotted keys and Python values ({{'optim.epochs': 2}}), "
                          f"got {type(overrides).__name__} (key=value strings are the command line's)")
    if isinstance(config, Mapping) and {"run_dir", "last_acc"} <= config.keys():  # what train returned
        raise ConfigError("train: got a run's summary (what train returns), not a config: pass the run's "
                          f"config file, {str(Path(config['run_dir']) / 'config.yaml')!r} (resume=True to continue "
                          "the run)")
    cfg = resolve_config(config, {**(overrides or {}), **more})
    summary = train_run(cfg, resume=resume, quiet=quiet)
    return {**summary, "run_dir": str(cfg.run_dir.resolve())}


def evaluate(run: str | Path | dict | FinishedRun, data: str | None = None, *, root: str | Path | None = None,
             split: str = "test", device: str = "auto", precision: str | None = None, batch_size: int = 512,
             arch: str | None = None, output: str | None = None) -> dict:
    """Top-1 (``acc``), top-5 (``top5``: None below 5 classes) and mean cross-entropy (``loss``) of a run's
    network on a dataset split, as ``mixdistill eval`` computes them: ``{"acc", "top5", "loss", "images",
    "precision"}``.

    ``output``: of an online run, the output to score by the name its metrics carry (``peer1``, ``ensemble``,
    OKDDip's ``leader``, PCL's ``temporal_mean0``; the checkpoint's ``model`` alone is peer 0), added to the result
    as ``output``; ``"all"``: every output, as ``{"outputs": {name: {"acc", "top5", "loss"}}, "images",
    "precision"}``.

    ``run``: a run directory (its ``last.pt``), a checkpoint file (``best.pt``, a ``{'model': state_dict}``
    file), a summary :func:`train` returned, or an opened run. ``data``: a dataset name (default: the one the run
    trained on; a foreign checkpoint needs it, and ``arch``); ``root``: its directory (default: the run's
    ``data.root``, else where data is looked for). The whole split is evaluated (not the run's
    ``data.test_subset``), in the precision the run trained in (a checkpoint that records no run: fp32) unless
    ``precision`` says otherwise.
    """
    from mixdistill.errors import require_at_least

    if not isinstance(run, (str, Path, dict, FinishedRun)):
        raise ConfigError(f"evaluate: run is a run directory, a checkpoint file, the summary train returned or an "
                          f"opened run; got {type(run).__name__}")
    if not isinstance(batch_size, int) or isinstance(batch_size, bool):
        raise ConfigError(f"batch_size: an integer, got {batch_size!r}")
    require_at_least("batch_size", batch_size, 1)
    if split not in ("train", "test"):
        raise ConfigError(f"split: 'train' or 'test', got {split!r}")
    if output is not None and not isinstance(output, str):
        raise ConfigError(f"output: an output's name (peer1, ensemble, ...) or 'all', got {output!r}")
    opened = run if isinstance(run, FinishedRun) else open_run(run)
    return evaluate_opened(opened, data, root=root, split=split, device=device, precision=precision,
                           batch_size=batch_size, arch=arch, output=output)


def evaluate_opened(opened: FinishedRun, data: str | None, *, root, split: str, device: str, precision: str | None,
                    batch_size: int, arch: str | None, options: dict[str, str] | None = None,
                    output: str | None = None) -> dict:
    """:func:`evaluate` of an opened run (the caller has checked the arguments' types and ranges); ``options``: what
    the error messages call the arguments (``mixdistill eval`` passes its flags: ``{"data": "--data", ...}``)."""
    import torch

    from mixdistill.data.datasets import check_class_names
    from mixdistill.engine.build import streaming_eval_loader
    from mixdistill.engine.evaluate import evaluate as evaluate_model, evaluate_many
    from mixdistill.engine.runtime import evaluation_precision, resolve_runtime

    name = {"data": "data=NAME", "arch": "arch=NAME", "device": "device", "precision": "precision",
            "output": "output=NAME", **(options or {})}
    cfg = opened.cfg
    if output is not None:  # before any data is read
        _check_output(opened, output, arch, name)
    dataset = data or (cfg.data.dataset if cfg else None)
    if dataset is None:  # both at once where both are missing (a foreign checkpoint)
        raise opened.missing_dataset(name["data"] + ("" if arch or opened.arch else f" and {name['arch']}"))
    root = str(root) if root is not None else None
    # a checkpoint that records no run (RepDistiller's, an export) is scored in fp32, as its authors scored it
    runtime = resolve_runtime(device, precision or (evaluation_precision(cfg.train.precision, device)
                                                    if cfg else "fp32"), device_option=name["device"],
                              precision_option=name["precision"] if precision else "train.precision")
    if cfg is not None and dataset == cfg.data.dataset and cfg.data.loader == "streaming":
        # as the run evaluated itself: resized and centre-cropped by the decoding workers (its images do not fit in
        # memory, and an image folder's have sizes of their own)
        loader = streaming_eval_loader(cfg, split, root=root, batch_size=batch_size, device=runtime.device,
                                       channels_last=runtime.channels_last, use_subset=False)
        check_class_names(opened.state.get("class_names"), loader.classes, f"{dataset} ({split})")
        num_classes, in_channels, images = loader.num_classes, loader.in_channels, loader.num_samples
    else:
        loader, num_classes, in_channels = _memory_eval_loader(opened, dataset, split, root, batch_size,
                                                               runtime.device, name["data"])
        images = len(loader.labels)
    if output is not None:
        group = opened.online_networks(num_classes, in_channels).to(runtime.device)
        if runtime.channels_last:
            group.to(memory_format=torch.channels_last)
        scored = evaluate_many(group, group.evaluation_logits, loader, runtime)
        if output == "all":
            return {"outputs": scored, "images": images, "precision": runtime.precision}
        if output not in scored:  # a plugin's method that does not name its outputs
            raise ConfigError(f"{name['output']} {output}: {opened.cfg.method.name} evaluates {', '.join(scored)}")
        return {**scored[output], "output": output, "images": images, "precision": runtime.precision}
    model = opened.model(arch, num_classes, in_channels).to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    return {**evaluate_model(model, loader, runtime), "images": images, "precision": runtime.precision}


def _check_output(opened: FinishedRun, output: str, arch: str | None, name: dict[str, str]) -> None:
    """An output an online run's method names (or 'all'), before the data is read."""
    from mixdistill.config import names_its_outputs

    cfg = opened.cfg
    method = opened.online_method(f"{name['output']} names one output of an online run")
    if arch is not None:
        raise ConfigError(f"{name['arch']} is for a checkpoint that does not record its network; an online run "
                          f"records its peers: leave it out beside {name['output']}")
    if output != "all" and names_its_outputs(method):
        names = method.evaluation_names(cfg.method.params())
        if output not in names:
            raise ConfigError(f"{name['output']} {output}: {cfg.method.name} with {cfg.method.params().peers} peers "
                              f"evaluates {', '.join(names)} (or all)")


def _memory_eval_loader(opened: FinishedRun, dataset: str, split: str, root, batch_size: int, device, option: str):
    """:func:`evaluate_opened`'s loader of a split held in memory (a dataset name, or a path as analyze's --data
    takes), checked against the network, and the network's classes and channels."""
    from mixdistill.analysis.data import check_compatible, load_eval_set, split_eval_set
    from mixdistill.data import DATASETS, DeviceLoader, load_dataset

    cfg = opened.cfg
    if dataset not in DATASETS:  # a path, as analyze's --data takes: a CIFAR-10.1 style .npy pair, an image folder
        if cfg is None:
            raise ConfigError(f"{option} {dataset}: not a dataset name ({', '.join(DATASETS)}); a path is "
                              "normalised as the run's own dataset, which this checkpoint does not record")
        if split != "test":
            raise ConfigError(f"{option} {dataset}: a path is one set, evaluated as the test split")
        eval_set, data_spec = load_eval_set(dataset), None
    else:
        read = (opened.split(split, root=root, use_subset=False) if cfg is not None and dataset == cfg.data.dataset
                else load_dataset(dataset, split, root=root))
        eval_set, data_spec = split_eval_set(read, f"{dataset} ({split})"), read.spec
    # the network's own classes and channels where the checkpoint records them: another dataset's images are one
    # clear error (they were a shape mismatch of the first layer's weights)
    num_classes = opened.state.get("num_classes") or data_spec.num_classes
    in_channels = opened.state.get("in_channels") or eval_set.images.shape[1]
    # the network's own input: the normalisation it trained with (another dataset's gave other numbers than
    # analyze's for the same images) and, where its dataset fixes it, its image size
    other = cfg is not None and dataset != cfg.data.dataset
    trained = DATASETS[cfg.data.dataset] if other else data_spec
    image_size = (cfg.data.image_size or trained.image_size) if other else None
    check_compatible(eval_set, in_channels, num_classes, image_size, opened.state.get("class_names"))
    loader = DeviceLoader(eval_set.images, eval_set.labels, batch_size=batch_size, mean=trained.mean,
                          std=trained.std, shuffle=False, drop_last=False, device=device)
    return loader, num_classes, in_channels
