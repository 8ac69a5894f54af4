"""Run logging: metrics.jsonl (one line per epoch, always: the run's record), and the sinks ``train.loggers``
adds (TensorBoard scalars, metrics.csv, Weights & Biases); on the console, a rich progress bar where stderr is
an interactive terminal and one plain line per epoch everywhere (no carriage returns in a CI log)."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path

from mixdistill.errors import ConfigError
from mixdistill.files import append_text, write_error, write_text

CSV = "metrics.csv"


def interactive() -> bool:
    """Is the console (stderr, where the log and the progress bar go) an interactive terminal?"""
    stream = sys.stderr
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a replaced or closed stream
        return False


class _NoProgress:
    def update(self, n: int, **postfix):
        pass

    def close(self):
        pass


class _Progress:
    """A transient rich progress bar on stderr (only on an interactive terminal)."""

    def __init__(self, total: int, desc: str, on_close):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.on_close = on_close

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeRemainingColumn(), TextColumn("{task.fields[postfix]}"),
                            console=Console(stderr=True), transient=True, refresh_per_second=2)
        self.task = self.bar.add_task(desc, total=total, postfix="")
        self.bar.start()

    def update(self, n: int, **postfix):
        text = " ".join(f"{k}={v:.3f}" if k == "loss" else f"{k}={v:.0f}" for k, v in postfix.items())
        self.bar.update(self.task, completed=n, postfix=text)

    def print(self, message: str):
        self.bar.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def close(self):
        self.bar.stop()
        self.on_close()


def _is_evaluation(record: dict) -> bool:
    return any(key.startswith("test_") for key in record)


class _CsvLog:
    """metrics.csv: one row per evaluated epoch. Its columns are those of the first evaluated epoch (a key that
    appears later is left out; one missing later is left empty). Rewritten whole from the checkpoint's history
    when the logger opens (as metrics.jsonl), then appended to, one row per evaluation."""

    def __init__(self, path: Path, history):
        self.path, self.columns = path, None
        rows = [record for record in history if _is_evaluation(record)]
        if rows:
            self.columns = list(rows[0])
        write_text(path, "".join(self._line(row, header=i == 0) for i, row in enumerate(rows)))

    def _line(self, record: dict, header: bool = False) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=self.columns, extrasaction="ignore", restval="", lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerow(record)
        return out.getvalue()

    def epoch(self, record: dict):
        if not _is_evaluation(record):
            return
        header = self.columns is None
        if header:
            self.columns = list(record)
        append_text(self.path, self._line(record, header=header))


def check_loggers(cfg) -> None:
    """What ``train.loggers`` needs is installed (ConfigError otherwise): checked before a run writes anything."""
    if "wandb" in cfg.train.loggers:
        _import_wandb()


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise ConfigError("train.loggers includes wandb, which is not installed: pip install wandb "
                          "(or pip install 'mixdistill[wandb]')") from None
    return wandb


class _WandbLog:
    """A Weights & Biases run (``pip install wandb``), its files under the run directory (``wandb/``); offline
    when WANDB_MODE=offline. A resumed run logs to a new W&B run (the epochs after the resume)."""

    def __init__(self, run_dir: Path, config: dict | None):
        self.wandb = wandb = _import_wandb()
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "mixdistill"), name=run_dir.name,
                              dir=str(run_dir), config=config or {}, mode=os.environ.get("WANDB_MODE") or None)

    def epoch(self, record: dict):
        self.run.log({k: v for k, v in record.items() if k != "epoch" and isinstance(v, (int, float))},
                     step=record["epoch"])

    def close(self):
        self.run.finish()


class RunLogger:
    def __init__(self, run_dir: Path, *, history: list[dict] = (), tensorboard: bool = True, quiet: bool = False,
                 write: bool = True, loggers=("jsonl", "tensorboard"), config: dict | None = None):
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        self.live: _Progress | None = None
        loggers = set(loggers) | {"jsonl"}
        # metrics.jsonl is rewritten whole from the checkpoint's history (so a resumed run never holds an
        # epoch twice, and a failed write leaves the old file as it was), then appended to, one line per
        # epoch; write=False (torchrun ranks other than 0) writes no file at all
        self.metrics = self.run_dir / "metrics.jsonl" if write else None
        if self.metrics is not None:
            write_text(self.metrics, "".join(json.dumps(record) + "\n" for record in history))
        self.csv = _CsvLog(self.run_dir / CSV, history) if write and "csv" in loggers else None
        self.writer = None
        if tensorboard and "tensorboard" in loggers and write:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed (or restarted) run's new event file hides the earlier files' epochs from its first one on
            # (TensorBoard's purge on a session start): epochs logged after the last checkpoint by a run killed
            # before the checkpoint's write, or by a run started again, would otherwise show twice
            first_epoch = history[-1]["epoch"] + 1 if history else 1
            try:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"), purge_step=first_epoch)
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None
        self.wandb = _WandbLog(self.run_dir, config) if write and "wandb" in loggers else None

    def info(self, message: str):
        if self.quiet:
            return
        if self.live is not None:
            self.live.print(message)
        else:
            print(message, file=sys.stderr, flush=True)

    def progress(self, total: int, desc: str, enabled: bool = True):
        """A progress bar for one epoch: only where stderr is an interactive terminal (elsewhere the one line
        per epoch that ``epoch`` prints is the whole console log)."""
        if not enabled or self.quiet or not interactive():
            return _NoProgress()
        self.live = _Progress(total, desc, on_close=lambda: setattr(self, "live", None))
        return self.live

    def epoch(self, record: dict):
        if self.metrics is not None:
            append_text(self.metrics, json.dumps(record) + "\n")
        if self.csv is not None:
            self.csv.epoch(record)
        if self.writer is not None:
            try:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
                self.writer.flush()
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None
        if self.wandb is not None:
            self.wandb.epoch(record)
        parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.4f}",
                 f"train {record['train_acc']:.2f}%"]
        if "test_acc_ensemble" in record:
            parts.append(f"test peers mean {record['test_acc']:.2f}% best {record['test_acc_best_peer']:.2f}% "
                         f"ensemble {record['test_acc_ensemble']:.2f}%")
        elif "test_acc" in record:
            parts.append(f"test {record['test_acc']:.2f}%")
        parts.append(f"{record['images_per_s']:.0f} img/s")
        if "epoch_time_s" in record:
            parts.append(f"{record['epoch_time_s']:.1f} s")
        self.info(" | ".join(parts))

    def close(self):
        wandb, self.wandb = self.wandb, None
        if wandb is not None:
            wandb.close()
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None
