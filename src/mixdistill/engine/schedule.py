"""Learning-rate schedules. ``step`` is the CRD protocol (x gamma at each milestone, epoch-wise);
``epoch_factor`` k scales the epoch count and every milestone. The scheduler is stepped once per
optimiser step, so per-epoch and per-step schedules share one code path."""

from __future__ import annotations

import bisect
import math

from torch.optim.lr_scheduler import LambdaLR


def lr_factor(optim_cfg, steps_per_epoch: int):
    epochs = optim_cfg.total_epochs
    milestones = optim_cfg.scaled_milestones
    warmup_steps = optim_cfg.warmup_epochs * steps_per_epoch
    total_steps = epochs * steps_per_epoch

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        epoch = step // steps_per_epoch
        if optim_cfg.schedule == "step":
            return optim_cfg.gamma ** bisect.bisect_right(milestones, epoch)
        if optim_cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * step / total_steps))
        if optim_cfg.schedule == "onecycle":  # linear up for 25% of the run, linear down to 0
            peak = max(1, int(0.25 * total_steps))
            return (step + 1) / peak if step < peak else max(0.0, (total_steps - step) / max(1, total_steps - peak))
        return 1.0

    return factor


def build_scheduler(optimizer, optim_cfg, steps_per_epoch: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(optim_cfg, steps_per_epoch))
