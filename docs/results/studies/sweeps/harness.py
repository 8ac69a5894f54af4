"""Sweep harness: run a list of (key, config) with run_grid, then summarise acc / ECE / logit stats."""
import json, statistics, sys, time
from pathlib import Path
from mixdistill.studies.grid import GridRun, run_grid
from mixdistill.demo import merge

ROOT = "/usr/share/datasets/fashion-mnist"

def base(**extra):
    b = {"data": {"dataset": "fashion_mnist", "root": ROOT, "batch_size": 128, "eval_batch_size": 1000},
         "train": {"progress": False, "tensorboard": False}}
    return merge(b, extra)

def run(runs, folder, log=print):
    t = time.time()
    rows = run_grid([GridRun(k, c, stage=s) for k, c, s in runs], folder, threads=1, log=lambda *a: None)
    log(f"  ({len(runs)} runs in {time.time() - t:.0f} s)")
    return rows

def ece_of(folder, key, bins=10):
    from mixdistill.studies.common import test_outputs
    from mixdistill.analysis import expected_calibration_error
    probs, feats, labels = test_outputs(Path(folder) / "runs" / key.replace("/", "__"))
    return float(expected_calibration_error(probs, labels, bins=bins)), probs

def ms(v):
    v = [x for x in v if x is not None]
    if len(v) < 2: return f"{v[0]:.3f}" if v else "-"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}"
