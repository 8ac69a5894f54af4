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
    assert "broadcast_buffers" not in ddp.stderr  # torch's deprecation, printed once per rank as mixdistill's warning
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


CRD_FIRST_BATCH = """
import json, sys
import torch
import torch.distributed as dist
from mixdistill.distill.crd import CRDLoss

def first_batch():
    torch.manual_seed(0)
    crd = CRDLoss(6, 5, num_samples=40, feat_dim=4, nce_k=8)
    f_s, f_t, positives = torch.randn(8, 6), torch.randn(8, 5), torch.arange(8)
    return crd, f_s, f_t, positives, crd.contrast_indices(positives)

if __name__ == "__main__":
    dist.init_process_group("gloo")
    crd, f_s, f_t, positives, idx = first_batch()
    share = slice(4 * dist.get_rank(), 4 * dist.get_rank() + 4)
    crd(f_s[share], f_t[share], positives[share], idx[share])
    with open(f"{sys.argv[1]}.{dist.get_rank()}", "w") as f:
        json.dump([crd.memory.z_student.item(), crd.memory.z_teacher.item()], f)
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_crd_normalisation_constants_are_the_whole_first_batchs_on_every_rank(tmp_path):
    """CRD's Z is its first batch's mean score times n: each rank set its own from its half of the batch; every rank
    now sets the one a single process sets from the whole batch."""
    import importlib.util

    script = tmp_path / "crd_first_batch.py"
    script.write_text(CRD_FIRST_BATCH)
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                            "--master-port", "29521", str(script), str(tmp_path / "z")],
                           capture_output=True, text=True, timeout=120)
    assert ranks.returncode == 0, ranks.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("crd_first_batch", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    crd, f_s, f_t, positives, idx = module.first_batch()
    crd(f_s, f_t, positives, idx)  # one process, the whole batch
    whole = [crd.memory.z_student.item(), crd.memory.z_teacher.item()]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"z.{rank}").read_text()) == pytest.approx(whole, rel=1e-6), rank


@pytest.mark.slow
def test_crd_memory_banks_are_one_bank_across_ranks(tmp_path):
    """Each rank wrote only its share of a batch into CRD's memory banks (146 of 200 rows moved after a 2-rank run,
    200 in one process) and drew negatives from rows the other rank had moved; every rank now writes every row."""
    from mixdistill.data.synthetic import write_fashion_like
    from mixdistill.files import save_torch
    from mixdistill.models import create_model

    root = write_fashion_like(tmp_path / "data", 256, 64)
    torch.manual_seed(0)
    teacher = save_torch({"model": create_model("cnn5_w16", 10, 1).state_dict(), "arch": "cnn5_w16"},
                         tmp_path / "teacher.pt")
    common = ["configs/fmnist_cpu.yaml", f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
              f"model.teacher_checkpoint={teacher}", "method=crd", "method.nce_k=64", "data.batch_size=32",
              "data.train_subset=null", "data.test_subset=null",
              "data.crop_padding=0", "data.flip=false", "optim.epochs=1", "optim.milestones=[]",
              "train.progress=false", "train.tensorboard=false", "train.device=cpu", "train.threads=1",
              "train.precision=fp32", "train.compile=auto"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29519", "-m", "mixdistill", "train", *common, "name=ddp"],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # compile=auto's CPU probe would run CRD's collectives on one rank while the other waits on the probe's lock
    assert "compile: no (not measured under torchrun (2 processes)" in ddp.stdout + ddp.stderr
    memory = load_checkpoint(tmp_path / "runs" / "ddp" / "last.pt")["distiller_extra"]["crd"]
    for bank in ("memory.student_bank", "memory.teacher_bank"):
        moved = (memory[bank].norm(dim=1) - 1).abs() < 1e-4  # a written row is unit-norm; an initial one is not
        assert int(moved.sum()) == 256, bank  # every training image's row, whichever rank drew it


def test_sync_bn_on_cpus_is_one_config_error():
    """train.sync_bn=true under torchrun on CPUs ended in torch's 'SyncBatchNorm layers only work with GPU modules'
    traceback on every rank."""
    from mixdistill.engine.distributed import DistContext, wrap_for_training
    from mixdistill.errors import ConfigError
    from mixdistill.models import create_model

    student = torch.nn.Module()
    student.student = create_model("cnn5_w8", 10, 1)
    with pytest.raises(ConfigError, match="train.sync_bn=true needs CUDA GPUs"):
        wrap_for_training(student, DistContext(rank=0, world_size=2), sync_bn=True)


@pytest.mark.slow
def test_ranks_given_other_configs_are_one_error(tmp_path):
    """A launcher that gave rank 1 another seed trained silently with rank 0's recorded; other epochs ended in a
    gloo traceback."""
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 128, 64)
    wrapper = tmp_path / "wrapper.py"  # rank 1 gets one more override, as a hand-written launcher might give it
    wrapper.write_text("import os, sys\nfrom mixdistill.cli import main\n"
                       "extra = ['seed=1'] if os.environ['RANK'] == '1' else []\n"
                       "sys.exit(main(sys.argv[1:] + extra))\n")
    common = ["train", "configs/fmnist_cpu_teacher.yaml", f"data.root={root}", f"output_dir={tmp_path / 'runs'}",
              "model.student=lenet5", "data.batch_size=32", "optim.epochs=1", "train.progress=false",
              "train.tensorboard=false", "train.device=cpu", "train.threads=1", "--quiet"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29521", str(wrapper), *common, "name=r"],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode != 0
    assert "mixdistill: error: rank 1 was given another config than rank 0" in ddp.stderr, ddp.stderr[-2000:]
    assert not (tmp_path / "runs" / "r" / "last.pt").exists()


@pytest.mark.slow
def test_a_per_process_batch_too_small_to_mix_is_one_error_before_training(tmp_path):
    """data.batch_size=2 on 2 processes passed the config check (the global batch); each process's one image had
    no partner for CutMix: a traceback at step 1 on every rank."""
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 64, 32)
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29523", "-m", "mixdistill", "train", "configs/fmnist_cpu_teacher.yaml",
                          f"data.root={root}", f"output_dir={tmp_path / 'runs'}", "model.student=lenet5",
                          "data.batch_size=2", "augment=cutmix", "optim.epochs=1", "train.progress=false",
                          "train.tensorboard=false", "train.device=cpu", "train.threads=1", "name=b", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode != 0
    assert ("mixdistill: error: cutmix pairs each image with another of its batch (a derangement): the per-process "
            "batch (data.batch_size / 2) of 1 has none") in ddp.stderr, ddp.stderr[-2000:]
    assert "Traceback" not in ddp.stderr.split("mixdistill: error:")[0]
    assert not (tmp_path / "runs" / "b" / "metrics.jsonl").exists()
    # said once (every rank printed it, at times run together on one line), and each rank exits 2: its gloo group
    # left to the interpreter's exit aborted it at times ("terminate called without an active exception", -6)
    assert ddp.stderr.count("mixdistill: error:") == 1, ddp.stderr[-3000:]
    assert "terminate called" not in ddp.stderr and "exitcode  : -6" not in ddp.stderr, ddp.stderr[-3000:]
    assert "exitcode  : 2" in ddp.stderr, ddp.stderr[-3000:]


@pytest.mark.slow
def test_a_loss_that_goes_bad_on_one_rank_stops_every_rank_and_the_first_says_where(tmp_path):
    """Each rank checked its own loss: rank 1's NaN stopped rank 1 alone, which a node's first rank alone prints,
    so nothing said why (rank 0 went on into a gloo error or torchrun's SIGTERM)."""
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 128, 64)
    wrapper = tmp_path / "wrapper.py"  # rank 1's total loss reads NaN at step 2; rank 0's stays finite
    wrapper.write_text("import os, sys\nfrom mixdistill.engine import trainer\nfrom mixdistill.cli import main\n"
                       "if os.environ['RANK'] == '1':\n"
                       "    make = trainer.Trainer._make_train_step\n"
                       "    def bad_at_step_2(self):\n"
                       "        step = make(self)\n"
                       "        def bad(images, labels, info):\n"
                       "            out, total = step(images, labels, info)\n"
                       "            return out, total * float('nan') if info.step == 2 else total\n"
                       "        return bad\n"
                       "    trainer.Trainer._make_train_step = bad_at_step_2\n"
                       "sys.exit(main(sys.argv[1:]))\n")
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-port", "29525", str(wrapper), "train", "configs/fmnist_cpu_teacher.yaml",
                          f"data.root={root}", f"output_dir={tmp_path / 'runs'}", "model.student=lenet5",
                          "data.batch_size=32", "optim.epochs=1", "train.progress=false", "train.tensorboard=false",
                          "train.device=cpu", "train.threads=1", "name=nan", "--quiet"],
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode != 0
    said = [line for line in ddp.stderr.splitlines() if line.startswith("mixdistill:")]
    assert said == ["mixdistill: non-finite loss at step 2 on rank 1 (term: total); stopped. No checkpoint was written "
                    "yet (it failed before the first epoch ended)"], ddp.stderr[-3000:]
    assert ddp.stderr.count("exitcode  : 1") == 2, ddp.stderr[-3000:]  # both ranks: a result, not a crash


def test_a_process_group_the_caller_made_is_left_to_it(monkeypatch):
    """train() destroyed any process group at its end: one the caller of the Python API made (mp.spawn with its own
    init_method) and still used was gone."""
    from mixdistill.engine import distributed

    destroyed = []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: destroyed.append(True))
    distributed.end_distributed()
    assert destroyed == []
    monkeypatch.setitem(distributed._owned, "group", True)  # as init_distributed sets it when it made the group
    distributed.end_distributed()
    assert destroyed == [True] and not distributed._owned["group"]
