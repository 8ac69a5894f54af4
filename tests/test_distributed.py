"""torchrun with 2 gloo processes on CPU matches one process with the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from mixdistill.engine.checkpoint import load_checkpoint


@pytest.mark.checkout
@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path, precision, tolerance):
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 512, 128)
    # lenet5 has no BatchNorm (per-rank batch statistics would differ from full-batch ones) and no
    # crop/flip (each rank draws its own augmentation stream), so the two runs see the same maths
    common = ["configs/fmnist_cpu_teacher.yaml", f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
              "model.student=lenet5", "data.batch_size=64", "data.crop_padding=0", "data.flip=false",
              "optim.epochs=2", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
              "train.threads=1", f"train.precision={precision}", "--quiet"]
    single = subprocess.run([sys.executable, "-m", "mixdistill", "train", *common, "name=single"],
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29517", "-m", "mixdistill", "train", *common, "name=ddp"],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert ddp.stdout.count("results") == 1  # one table, rank 0's (the other rank evaluated nothing)
    runs = tmp_path / "runs"
    a = [json.loads(x) for x in (runs / "single" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (runs / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], **tolerance)
        # a rounding difference may flip the argmax of a near-tie: at most 2 of 512 images in bf16
        assert rb["train_acc"] == pytest.approx(ra["train_acc"], abs=0 if precision == "fp32" else 0.4)
    wa = load_checkpoint(runs / "single" / "last.pt")["model"]
    wb = load_checkpoint(runs / "ddp" / "last.pt")["model"]
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=tolerance["rel"], atol=tolerance["abs"]), key
    # rank 0 alone wrote the run directory
    # (and released its lock: the lock file stays, the holder note is gone)
    assert sorted(p.name for p in (runs / "ddp").iterdir()) == [".lock", "best.pt", "config.yaml", "last.pt",
                                                               "metrics.jsonl", "summary.json"]
    summary = json.loads((runs / "ddp" / "summary.json").read_text())
    assert summary["environment"]["processes"] == 2 and summary["best_checkpoint"]["epoch"] in (1, 2)
