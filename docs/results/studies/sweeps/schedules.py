"""Schedule sweep behind the CPU grids' convergence gate: re-train runs of a finished study with the variant's
overrides and print each run's final accuracy and how much it still moved over the last quarter (the gate's own
measure, ``mixdistill.studies.common.plateau``: train accuracy as 5-epoch means, test loss relative).

    python docs/results/studies/sweeps/schedules.py [VARIANT ...]     # default: every variant below

A variant's runs start from the run directories of a study finished with its earlier grid (3,000-image
choi2023 students and wang2022 students under onecycle: runs/studies/STUDY/runs/KEY/config.yaml, so a student
keeps its teacher checkpoint); the re-trained runs land in runs/sweeps/schedules/VARIANT/, and a finished one is
only read again. Two 1-thread runs side by side. What it printed: schedules_output.txt.
"""
import json
import multiprocessing as mp
import sys
from pathlib import Path

import yaml

CHOI = [f"student__{m}__cnn5_w16__cnn5_w8__r{s}" for s in (0, 1, 2) for m in ("ce", "kd_vanilla")]
STEP = {"optim.schedule": "step", "optim.warmup_epochs": 2, "train.eval_every": 5}
VARIANTS = {  # name: (study, runs, overrides of the earlier grid's config)
    "choiA": ("choi2023_cpu", CHOI[:4] + [f"student__mix_kd_T{t}__cnn5_w16__cnn5_w8__r{s}" for s in (0, 1) for t in (4, 1)],
              {"optim.schedule": "step", "optim.milestones": [22, 30]}),
    "choiB": ("choi2023_cpu", CHOI + [f"student__{m}__cnn5_w16__cnn5_w8__r{s}" for s in (3, 4) for m in ("ce", "kd_vanilla")],
              {**STEP, "optim.milestones": [26, 32]}),
    "choiD": ("choi2023_cpu", CHOI, {**STEP, "optim.milestones": [22, 30]}),
    "choiE": ("choi2023_cpu", CHOI, {**STEP, "optim.milestones": [26, 32], "optim.lr": 0.05}),
    "choiF": ("choi2023_cpu", CHOI, {**STEP, "optim.milestones": [36, 43], "optim.epochs": 60}),
    "choiG": ("choi2023_cpu", CHOI, {**STEP, "optim.milestones": [35, 48], "optim.epochs": 69, "optim.lr": 0.05,
                                     "data.train_subset": 1000, "data.batch_size": 64, "train.eval_every": 13}),
    "wangA": ("wang2022_cpu", [f"student__cnn5_w16-cnn5_w8__{m}__seed{s}" for s in (0, 1) for m in ("ce", "kd", "kd_cutmixpick")],
              {"optim.schedule": "step", "optim.milestones": [33, 45], "optim.warmup_epochs": 2}),
}


def one(args):
    src, out, overrides = args
    import torch
    torch.set_num_threads(1)
    import mixdistill
    from mixdistill.studies.common import plateau
    if not (out / "summary.json").exists():  # a finished run is only read again
        cfg = yaml.safe_load((Path(src) / "config.yaml").read_text())
        cfg["output_dir"], cfg["name"] = str(out.parent), out.name
        mixdistill.train(cfg, dict(overrides), quiet=True)
    summary = json.loads((out / "summary.json").read_text())
    return out.name, summary["last_acc"], plateau(out)


if __name__ == "__main__":
    for variant in sys.argv[1:] or list(VARIANTS):
        study, runs, overrides = VARIANTS[variant]
        print(f"{variant}: {study} with {json.dumps(overrides)}", flush=True)
        out = Path("runs/sweeps/schedules") / variant
        jobs = [(Path("runs/studies") / study / "runs" / r, out / r, overrides) for r in runs]
        with mp.get_context("spawn").Pool(2) as pool:
            for name, acc, p in pool.imap(one, jobs):
                print(f"  {name}: acc {acc:.2f}, train acc {p['train_acc_change']:+.2f} points, test loss "
                      f"{100 * p['test_loss_change']:+.1f}% over epochs {p['from_epoch']}-{p['to_epoch']}, "
                      f"{p['steps']} steps", flush=True)
