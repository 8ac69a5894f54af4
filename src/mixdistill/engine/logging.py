"""Run logging: metrics.jsonl (one line per epoch), TensorBoard scalars, a tqdm progress bar."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tqdm import tqdm

from mixdistill.files import append_text, write_error, write_text


class _Progress:
    def __init__(self, total: int, desc: str, enabled: bool):
        self.bar = tqdm(total=total, desc=desc, disable=not enabled, leave=False, file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        self.n = 0

    def update(self, n: int, **postfix):
        self.bar.update(n - self.n)
        self.n = n
        self.bar.set_postfix({k: (f"{v:.3f}" if k == "loss" else f"{v:.0f}") for k, v in postfix.items()},
                             refresh=False)

    def close(self):
        self.bar.close()


class RunLogger:
    def __init__(self, run_dir: Path, *, history: list[dict] = (), tensorboard: bool = True, quiet: bool = False,
                 write: bool = True):
        self.run_dir = Path(run_dir)
        self.quiet = quiet
        # metrics.jsonl is rewritten whole from the checkpoint's history (so a resumed run never holds an
        # epoch twice, and a failed write leaves the old file as it was), then appended to, one line per
        # epoch; write=False (torchrun ranks other than 0) writes no file at all
        self.metrics = self.run_dir / "metrics.jsonl" if write else None
        if self.metrics is not None:
            write_text(self.metrics, "".join(json.dumps(record) + "\n" for record in history))
        self.writer = None
        if tensorboard and write:
            from torch.utils.tensorboard import SummaryWriter

            try:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None

    def info(self, message: str):
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def progress(self, total: int, desc: str, enabled: bool = True) -> _Progress:
        return _Progress(total, desc, enabled and not self.quiet)

    def epoch(self, record: dict):
        if self.metrics is not None:
            append_text(self.metrics, json.dumps(record) + "\n")
        if self.writer is not None:
            try:
                for key, value in record.items():
                    if key != "epoch" and isinstance(value, (int, float)):
                        self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
                self.writer.flush()
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None
        parts = [f"epoch {record['epoch']}", f"loss {record.get('train_loss', float('nan')):.4f}",
                 f"train {record['train_acc']:.2f}%"]
        if "test_acc_ensemble" in record:
            parts.append(f"test peers mean {record['test_acc']:.2f}% best {record['test_acc_best_peer']:.2f}% "
                         f"ensemble {record['test_acc_ensemble']:.2f}%")
        elif "test_acc" in record:
            parts.append(f"test {record['test_acc']:.2f}%")
        parts.append(f"{record['images_per_s']:.0f} img/s")
        self.info(" | ".join(parts))

    def close(self):
        if self.writer is not None:
            writer, self.writer = self.writer, None
            try:
                writer.close()
            except OSError as err:
                raise write_error(self.run_dir / "tensorboard", err) from None
