"""Run logging: metrics.jsonl (one line per epoch), TensorBoard scalars, a tqdm progress bar."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tqdm import tqdm


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
        # rewritten from the checkpoint's history, so a resumed run never holds an epoch twice;
        # write=False (torchrun ranks other than 0) writes no file at all
        self.metrics = open(self.run_dir / "metrics.jsonl" if write else os.devnull, "w")
        for record in history:
            self.metrics.write(json.dumps(record) + "\n")
        self.writer = None
        if tensorboard and write:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))

    def info(self, message: str):
        if not self.quiet:
            tqdm.write(message, file=sys.stderr)

    def progress(self, total: int, desc: str, enabled: bool = True) -> _Progress:
        return _Progress(total, desc, enabled and not self.quiet)

    def epoch(self, record: dict):
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        if self.writer is not None:
            for key, value in record.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(key.replace("_", "/", 1), value, record["epoch"])
            self.writer.flush()
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
        self.metrics.close()
        if self.writer is not None:
            self.writer.close()
