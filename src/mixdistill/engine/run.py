"""The run directory as one place: its layout, its lock, its saved config (what changed since, setting an old
run aside), and a finished run opened by path (:func:`open_run`) with its validated config, its model, its
teacher and its data. Every command that reads a run (eval, analyze, the studies, the teachers) goes through
here; every file a run writes goes through :mod:`mixdistill.files`.

Layout of ``OUTPUT_DIR/NAME``: ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per epoch),
``last.pt`` (the checkpoint), ``best.pt`` (the best evaluated epoch's weights), ``summary.json`` (written when the
run finishes), ``tensorboard/`` (and, as ``train.loggers`` asks, ``metrics.csv``, ``wandb/``), and ``.lock``
(``.lock.holder`` names the process holding it).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mixdistill.config import RunConfig, stored_config
from mixdistill.data import DeviceLoader, load_dataset
from mixdistill.data.datasets import Split
from mixdistill.engine.build import build_distiller, build_teacher, streaming_eval_loader
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.errors import CheckpointError, ConfigError, UnknownNameError
from mixdistill.files import hold_lock, remove_orphans
from mixdistill.methods import METHODS
from mixdistill.models import MODELS, create_model
from mixdistill.models.checkpoint import load_weights
from mixdistill.schema import load_yaml

CONFIG, METRICS, CHECKPOINT, SUMMARY, LOCK = "config.yaml", "metrics.jsonl", "last.pt", "summary.json", ".lock"
BEST = "best.pt"  # the best evaluated epoch by train.best_metric (not resumable)
DIVERGED = "diverged.json"  # written where a run stopped on a NaN/inf loss or weights; removed when it starts again
# config keys that may differ between a run and its resumption (they do not change the result; ``name`` and
# ``output_dir``: the run's folder renamed or moved)
RESUME_FREE_KEYS = {"train.progress", "train.log_every", "train.tensorboard", "train.loggers", "data.root",
                    "data.num_workers", "name", "output_dir", "train.best_metric", "train.teacher_cache"}
# the same file, named relatively once and absolutely once, is the same; so is one inside output_dir at the same
# place in it, where the folder was moved with its teacher (a study's folder)
PATH_KEYS = {"model.teacher_checkpoint"}


def config_difference(a: dict, b: dict, prefix: str = "", _outputs: tuple = ()) -> list[str]:
    """``key: old -> new`` for every key of two config trees that differs (resume-free keys left out)."""
    outputs = _outputs or (a.get("output_dir"), b.get("output_dir"))
    diffs = []
    for key in sorted(set(a) | set(b)):
        path = f"{prefix}{key}"
        if path in RESUME_FREE_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if path in PATH_KEYS and va and vb and _same_file(va, vb, *outputs):
            continue
        if isinstance(va, dict) and isinstance(vb, dict):
            diffs += config_difference(va, vb, path + ".", outputs)
        elif va != vb:
            diffs.append(f"{path}: {va!r} -> {vb!r}")
    return diffs


def _same_file(a: str, b: str, output_a: str | None, output_b: str | None) -> bool:
    a, b = os.path.abspath(a), os.path.abspath(b)
    if a == b:
        return True
    inside = [os.path.relpath(path, os.path.abspath(out)) if out else ".."
              for path, out in ((a, output_a), (b, output_b))]
    return not inside[0].startswith("..") and inside[0] == inside[1]


def stored_config_difference(tree: dict, cfg: RunConfig) -> list[str]:
    """How ``cfg`` differs from a config tree stored earlier (a run's config.yaml, a results row), read through
    today's schema first, so an option added since at its behaviour-keeping default is no difference. A tree that
    no longer validates counts as different."""
    try:
        stored = stored_config(tree).to_dict()
    except Exception as err:  # written by an older mixdistill whose schema differs
        return [f"saved config no longer valid ({type(err).__name__})"]
    return config_difference(stored, cfg.to_dict())


def saved_config_difference(cfg: RunConfig) -> list[str] | None:
    """How ``cfg`` differs from the config saved in its run directory (``[]``: the same run; ``None``: nothing
    saved there)."""
    path = cfg.run_dir / CONFIG
    if not path.exists():
        return None
    try:
        tree = load_yaml(path.read_text())
    except Exception as err:  # noqa: BLE001 - damaged: a difference (the folder is set aside, never deleted)
        return [f"saved {CONFIG} unreadable ({type(err).__name__})"]
    return stored_config_difference(tree, cfg)


def read_summary(run_dir: Path) -> dict | None:
    """A run's ``summary.json`` (written when it finished); None where it is missing or damaged."""
    try:
        summary = json.loads((Path(run_dir) / SUMMARY).read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) else None


def set_aside(run_dir: Path) -> Path:
    """Rename a run directory out of the way (never delete: nothing already written is lost)."""
    n = 1
    while (target := run_dir.with_name(f"{run_dir.name}.superseded{n}")).exists():
        n += 1
    run_dir.rename(target)
    return target


@contextlib.contextmanager
def claim(run_dir: Path, what: str) -> Iterator[None]:
    """Hold ``run_dir``'s lock for the body (a second run into it stops with one line naming the holder), after
    removing the temporary files an interrupted write left there. A directory this call created and the body
    left empty is removed again, and the output folders made for it, so a run that fails before writing anything
    leaves nothing behind."""
    made = [d for d in [run_dir, *run_dir.parents] if not d.exists()]  # run_dir first, then the folders above it
    held = False
    try:
        with hold_lock(run_dir / LOCK, what):
            held = True
            remove_orphans(run_dir)
            yield
    finally:
        if made and held:  # not where another process holds it: the folder is that one's
            _remove_if_only_lock(run_dir)
            for folder in made[1:]:
                with contextlib.suppress(OSError):  # not empty: another run's, or this one's files
                    folder.rmdir()


def _remove_if_only_lock(run_dir: Path) -> None:
    try:
        if all(p.name.startswith(LOCK) for p in run_dir.iterdir()):
            for p in run_dir.iterdir():
                p.unlink()
            run_dir.rmdir()
    except OSError:
        pass


# ------------------------------------------------------------------------------------------- list runs

@dataclass
class RunRecord:
    """A run directory as a listing reads it, without loading a checkpoint."""

    path: Path
    config: dict  # read through today's schema where it still validates (defaults added since filled in)
    summary: dict | None  # None until the run finishes
    last_epoch: int | None  # the last epoch metrics.jsonl logged
    config_error: str | None = None  # why config.yaml does not validate here (then ``config`` is as it was written)


def find_runs(root: str | Path, unreadable: list[Path] | None = None) -> list[RunRecord]:
    """Every run directory at or below ``root`` (a directory holding ``config.yaml``; ones set aside as
    ``NAME.supersededN`` left out), in path order; those whose ``config.yaml`` cannot be read are added to
    ``unreadable`` (where given) instead."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory" if root.exists() else f"no such directory: {root}")
    dirs = [root] if (root / CONFIG).is_file() else _folders_with_config(root)
    records = []
    for d in dirs:
        if ".superseded" in d.name:
            continue
        try:
            tree = load_yaml((d / CONFIG).read_text())
        except Exception:  # noqa: BLE001 - not a run's config (or damaged): not a run directory
            tree = None
        if not isinstance(tree, dict):
            if unreadable is not None:
                unreadable.append(d)
            continue
        cfg, error = validated_config(tree)
        if cfg is None and not (d / METRICS).is_file():  # another tool's config.yaml (W&B's files/config.yaml)
            continue
        records.append(RunRecord(d, tree if cfg is None else cfg.to_dict(), read_summary(d),
                                 _last_logged_epoch(d / METRICS), error))
    return records


def _last_logged_epoch(metrics: Path) -> int | None:
    """The epoch of metrics.jsonl's last readable line (a line cut short by a killed write is passed over)."""
    try:
        lines = metrics.read_text().splitlines()
    except (OSError, ValueError):
        return None
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            return record["epoch"]
    return None


def _folders_with_config(root: Path) -> list[Path]:
    """The folders at or below ``root`` that hold a config.yaml, symbolic links to folders followed (a folder of
    links to the runs being compared), each real folder once; not below a run's folder (config.yaml and
    metrics.jsonl: what it holds, its wandb/ files and analysis/ among them, are no runs)."""
    found, seen = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree, or a second link to one folder
            subfolders[:] = []
            continue
        seen.add(real)
        if CONFIG in files:
            found.append(Path(folder))
            if METRICS in files:
                subfolders[:] = []
    return sorted(found)


# ------------------------------------------------------------------------------------------- open a run

@dataclass
class FinishedRun:
    """A checkpoint and, where it was written by mixdistill, the validated config of its run."""

    checkpoint: Path
    state: dict
    cfg: RunConfig | None  # None: a foreign checkpoint ({'model': state_dict}, e.g. RepDistiller's)
    config_error: str | None = None  # why a saved config did not validate (an older mixdistill's schema)

    def missing_dataset(self, how: str) -> ConfigError:
        """The error for a command that needs the run's dataset where its config gives none (``how``: what to pass
        instead)."""
        if self.config_error:
            return ConfigError(f"{self.checkpoint}: its saved config does not validate here ({self.config_error}), so "
                               f"its dataset is not known: pass {how}")
        return ConfigError(f"{self.checkpoint} does not record its dataset: pass {how}")

    @property
    def arch(self) -> str | None:
        return self.state.get("arch") or (self.cfg.model.student if self.cfg else None)

    def online_network_note(self) -> str | None:
        """For an online run, which of its networks the checkpoint's ``model`` is, by the name its metrics carry
        (``peer0``; OKDDip's leader, the last peer, in its branch form): its own metric is not the run's
        ``test_acc``, the mean peer. None for an offline run or a foreign checkpoint."""
        method = METHODS.get(self.cfg.method.name) if self.cfg else None
        if not getattr(method, "online", False):
            return None
        params = self.cfg.method.params()
        peers = len(self.cfg.model.peers or []) or params.peers
        branches = getattr(params, "peer_form", None) == "branches"
        network = f"peer{getattr(method, 'whole_peer', 0) % peers if branches else 0}"
        return (f"the checkpoint's model is {network} of {self.cfg.method.name}'s {peers} networks (the run's "
                f"test_acc is their mean: compare last_acc_{network} in its summary)")

    def unfinished_note(self) -> str | None:
        """For a run's ``last.pt`` written before its last epoch: which epoch it holds, and why the run stopped
        (diverged, as its diverged.json says; else interrupted or still training). None otherwise."""
        epoch, total = self.state.get("epoch"), self.cfg.optim.total_epochs if self.cfg else None
        if self.checkpoint.name != CHECKPOINT or epoch is None or total is None or epoch >= total:
            return None
        why = ("it diverged (diverged.json), so the same config stops there again" if
               (self.checkpoint.parent / DIVERGED).exists() else
               "it was interrupted, or is still training: --resume continues it")
        return f"the checkpoint is epoch {epoch} of {total}: {why}"

    def split(self, name: str = "test", root: str | None = None, use_subset: bool = True) -> Split:
        """The run's dataset split (its ``data.test_subset`` / ``train_subset`` applied), read from ``root`` or the
        run's own ``data.root``."""
        if self.cfg is None:
            raise self.missing_dataset("one (--data on the command line; in Python, "
                                       "mixdistill.data.load_dataset(NAME, split))")
        d = self.cfg.data
        if d.loader == "streaming":  # ImageNet 'does not fit in memory'; an image folder's sizes differ
            raise ConfigError(f"{self.checkpoint}: a streaming run's split is not held in memory; test_loader() "
                              "streams it as the run evaluated it")
        split = load_dataset(d.dataset, name, root=root or d.root)
        subset = d.test_subset if name == "test" else d.train_subset
        return split.subset(subset, seed=d.subset_seed) if subset and use_subset else split

    def model(self, arch: str | None = None, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
        """The run's final network, weights loaded, in eval mode (``arch`` etc. for a checkpoint that does not
        record them)."""
        recorded = self.state.get("arch")
        # a name this library gave or knows: another one is a slip, named as such (its weights would not load); a
        # foreign file may name its network its own way (PyTorch's ImageNet example: 'resnet18'), and arch wins
        known = self.cfg is not None or "format" in self.state or recorded in MODELS
        if arch and recorded and arch != recorded and known:
            raise ConfigError(f"{self.checkpoint} holds a '{recorded}', not a '{arch}': leave the architecture out "
                              "(--arch; arch= in Python), the checkpoint records it")
        arch = arch or self.arch
        if arch is None:
            raise ConfigError(f"{self.checkpoint} does not record its architecture: pass it (--arch; arch= in Python)")
        num_classes = num_classes or self.state.get("num_classes")
        in_channels = in_channels or self.state.get("in_channels")
        if num_classes is None or in_channels is None:
            raise ConfigError(f"{self.checkpoint} does not record its classes and channels: pass num_classes and "
                              "in_channels (the commands take them from --data)")
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
        load_weights(model, self.state)
        return model.eval()

    def online_method(self, why: str = "outputs by name (peer1, ensemble, ...) are an online run's"):
        """The method class of an online run whose outputs can be scored by name; a ConfigError beginning with
        ``why`` for any other checkpoint."""
        method = METHODS.get(self.cfg.method.name) if self.cfg else None
        if not getattr(method, "online", False):
            if self.config_error:  # a config it holds does not validate here (a plugin's method, not loaded)
                raise ConfigError(f"{why}; {self.checkpoint}: its saved config does not validate here "
                                  f"({self.config_error})")
            what = f"a {self.cfg.method.name} run, one network" if self.cfg else "a checkpoint without its run's config"
            raise ConfigError(f"{why}; {self.checkpoint} is {what}")
        if self.state.get("weights") == "ema":
            raise ConfigError(f"{self.checkpoint} holds the EMA's weights in peer 0's place (chosen by an EMA metric): "
                              f"its outputs by name are the run's {CHECKPOINT}'s")
        return method

    def online_networks(self, num_classes: int | None = None, in_channels: int | None = None):
        """An online run's whole group (every peer, and what its method adds: OKDDip's leader, PCL's temporal means),
        weights loaded, in eval mode; its ``evaluation_logits(images)`` gives every output by the name its metrics
        carry (``peer1``, ``ensemble``, ...)."""
        self.online_method()
        distiller = build_distiller(self.cfg, num_classes or self.state["num_classes"],
                                    in_channels or self.state["in_channels"], pretrained=False)
        distiller.student.load_state_dict(self.state["model"])
        distiller.load_state_dict_extra(self.state.get("distiller_extra", {}))
        return distiller.eval()

    def teacher(self) -> nn.Module | None:
        """The run's teacher as its config names it (a checkpoint file or a benchmark teacher), or None."""
        if self.cfg is None:
            return None
        return build_teacher(self.cfg, self.state["num_classes"], self.state["in_channels"])

    def test_loader(self, root: str | None = None, batch_size: int = 1000, device: str | torch.device = "cpu"):
        """The run's test split (its ``data.test_subset`` applied) as an in-order loader with its normalisation; a
        streaming run's as its evaluation streamed it (resize, centre crop)."""
        if self.cfg is not None and self.cfg.data.loader == "streaming":
            return streaming_eval_loader(self.cfg, "test", root=root, batch_size=batch_size, device=device,
                                         channels_last=False)
        split = self.split("test", root)
        return DeviceLoader(split.images, split.labels, batch_size=batch_size, mean=split.spec.mean,
                            std=split.spec.std, shuffle=False, drop_last=False, device=device)


def open_run(path: str | Path | dict) -> FinishedRun:
    """A run directory (its ``last.pt``), a checkpoint file or the summary ``train`` returned (its ``run_dir``),
    opened: the one way every command reads a run."""
    if isinstance(path, dict):
        if "run_dir" not in path:
            raise ConfigError("a dict run must be the summary mixdistill.train returned (with run_dir)")
        path = path["run_dir"]
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"open_run: a run directory, a checkpoint file or the summary train returned, got "
                          f"{type(path).__name__}")
    path = Path(path).expanduser()
    if path.is_dir():
        if not (path / CHECKPOINT).is_file():
            if (path / CONFIG).is_file():
                raise CheckpointError(f"{path} is a run stopped before its first checkpoint (no {CHECKPOINT} yet): "
                                      "nothing to open; train it (the same command again starts it)")
            raise CheckpointError(f"{path} is a directory without {CHECKPOINT}: pass a run directory or a checkpoint")
        path = path / CHECKPOINT
    state = load_checkpoint(path)
    cfg, error = validated_config(state["config"]) if isinstance(state.get("config"), dict) else (None, None)
    return FinishedRun(path, state, cfg, error)


def validated_config(tree: dict) -> tuple[RunConfig | None, str | None]:
    """A run's saved config read through today's schema, or None and why it does not validate here (an older
    mixdistill's schema, a hand edit, or a plugin's method, augmentation or model whose plugin is not loaded)."""
    try:
        return stored_config(tree), None
    except UnknownNameError as err:  # a method, augmentation or model (its note says so): a plugin's, not loaded here?
        return None, f"unknown {err.kind} '{err.name}': {err.note}" if err.note else str(err)
    except Exception as err:  # noqa: BLE001 - written by an older mixdistill whose schema differs
        return None, str(err).splitlines()[0] if str(err) else type(err).__name__
