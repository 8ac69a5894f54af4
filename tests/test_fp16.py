"""fp16 autocast with a gradient scaler (``train.precision=fp16``, and ``auto`` on a CUDA GPU without native
bf16): the precision decision as a pure function of the device's capabilities, and the scaler's step logic
in the trainer on a CPU with ``torch.amp.GradScaler("cpu")`` standing in for CUDA's: a step with an inf gradient
is skipped and halves the scale, the schedule keeps to the batch index, the EMA does not move, and the scaler's
state goes through the checkpoint (resume)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mixdistill.config import resolve_config
from mixdistill.engine import runtime as rt
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.trainer import Trainer, advance_schedule, scaled_step
from mixdistill.errors import ConfigError

# ------------------------------------------------------------------------------------------ the decision

@pytest.mark.parametrize("requested,device,native,capability,expected", [
    ("auto", "cuda", True, (8, 0), "bf16"),     # Ampere: native bf16
    ("auto", "cuda", True, (9, 0), "bf16"),
    ("auto", "cuda", False, (7, 5), "fp16"),    # Turing: tensor cores, no bf16
    ("auto", "cuda", False, (7, 0), "fp16"),    # Volta
    ("auto", "cuda", False, (6, 1), "fp32"),    # Pascal: no tensor cores
    ("auto", "cpu", True, None, "bf16"),        # AVX512-BF16 / AMX
    ("auto", "cpu", False, None, "fp32"),       # AVX2 only
    ("fp32", "cuda", True, (8, 0), "fp32"),     # the user's word wins
    ("bf16", "cuda", False, (7, 5), "bf16"),
    ("fp16", "cuda", True, (8, 0), "fp16"),
    ("bf16", "cpu", False, None, "bf16"),
])
def test_choose_precision(requested, device, native, capability, expected):
    assert rt.choose_precision(requested, device, native_bf16=native, cuda_capability=capability) == expected


def test_fp16_is_for_cuda_only():
    with pytest.raises(ConfigError, match="train.precision=fp16 is for CUDA GPUs"):
        rt.choose_precision("fp16", "cpu", native_bf16=True)
    with pytest.raises(ConfigError, match="train.precision=fp16 is for CUDA GPUs"):
        rt.resolve_runtime("cpu", "fp16", False, False)
    with pytest.raises(ConfigError, match="train.precision=fp16 is for CUDA GPUs"):
        resolve_config(None, {"train.device": "cpu", "train.precision": "fp16"})
    assert resolve_config(None, {"train.precision": "fp16"}).train.precision == "fp16"  # device auto: decided later
    with pytest.raises(ConfigError, match="^--precision fp16 is for CUDA GPUs"):  # named where the user gave it
        rt.resolve_runtime("cpu", "fp16", False, False, device_option="--device", precision_option="--precision")


def test_native_bf16_on_cuda_is_ampere_and_later():
    assert rt.cuda_has_native_bf16((8, 0)) and rt.cuda_has_native_bf16((12, 0))
    assert not rt.cuda_has_native_bf16((7, 5)) and not rt.cuda_has_native_bf16((6, 0))


@pytest.mark.parametrize("capability,expected", [((7, 5), torch.float16), ((8, 6), torch.bfloat16), ((6, 1), None)])
def test_resolve_runtime_on_a_fake_gpu(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.version, "hip", None)
    r = rt.resolve_runtime("cuda", "auto", False, False)
    assert r.autocast_dtype is expected and r.precision == {torch.float16: "fp16", torch.bfloat16: "bf16",
                                                             None: "fp32"}[expected]
    if expected is not torch.bfloat16:
        with pytest.warns(UserWarning, match="^train.precision=bf16 on a cuda .* train.precision=auto would choose"):
            assert rt.resolve_runtime("cuda", "bf16", False, False).precision == "bf16"
        with pytest.warns(UserWarning, match="^--precision bf16 on a cuda .* --precision auto would choose"):
            rt.resolve_runtime("cuda", "bf16", False, False, precision_option="--precision")


def test_scaler_only_in_fp16():
    cpu = torch.device("cpu")
    assert rt.Runtime(cpu, None, False, False).grad_scaler() is None
    assert rt.Runtime(cpu, torch.bfloat16, False, False).grad_scaler() is None
    scaler = rt.Runtime(cpu, torch.float16, False, False).grad_scaler()
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()


def test_evaluation_precision_of_an_fp16_run_off_a_gpu():
    assert rt.evaluation_precision("fp16", "cpu") == "fp32"
    assert rt.evaluation_precision("fp16", "cuda:1") == "fp16"
    assert rt.evaluation_precision("bf16", "cpu") == "bf16"


# ----------------------------------------------------------------------------------------- the step

def _inf_grad(param: torch.Tensor):
    return param.register_hook(lambda g: torch.full_like(g, float("inf")))


def test_scaled_step_skips_an_inf_gradient_and_halves_the_scale():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    x = torch.randn(8, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped first step raises no "scheduler before optimizer" warning
        handle = _inf_grad(model.weight)
        before = [p.detach().clone() for p in model.parameters()]
        assert scaled_step(scaler, optimizer, model(x).square().mean()) is False
        handle.remove()
        advance_schedule(scheduler, False)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert scaler.get_scale() == 512.0 and optimizer.state_dict()["state"] == {}
    assert scheduler.last_epoch == 1  # the schedule follows the batch index
    optimizer.zero_grad(set_to_none=True)
    assert scaled_step(scaler, optimizer, model(x).square().mean()) is True
    advance_schedule(scheduler, True)
    assert not torch.equal(before[0], model.weight) and scaler.get_scale() == 512.0
    # the gradients the optimiser saw were unscaled
    assert model.weight.grad.abs().max() < 100


@pytest.fixture
def cpu_scaler(monkeypatch):
    """fp16's GradScaler on a CPU run (whose autocast stays fp32): the scaler logic without a GPU."""
    monkeypatch.setattr(rt.Runtime, "grad_scaler", lambda self: torch.amp.GradScaler("cpu", init_scale=1024.0))


def _cfg(fmnist_root, tmp_path, **more):
    return resolve_config(None, {
        "name": "fp16", "data.root": str(fmnist_root), "output_dir": str(tmp_path / "runs"), "data.train_subset": 64,
        "data.test_subset": 64, "data.batch_size": 32, "data.eval_batch_size": 64, "model.student": "cnn5_w8",
        "method": "ce", "optim.epochs": 2, "optim.milestones": [], "train.progress": False,
        "train.tensorboard": False, "train.device": "cpu", "train.precision": "fp32", "train.compile": False,
        "train.ema_decay": 0.9, **more})


def test_trainer_skips_the_step_the_ema_and_not_the_schedule(cpu_scaler, fmnist_root, tmp_path):
    cfg = _cfg(fmnist_root, tmp_path)
    trainer = Trainer(cfg, quiet=True)
    try:
        images, labels, indices = next(iter(trainer.train_loader))
        student = trainer.distiller.student
        trainer.step(images, labels, indices)
        assert trainer.scaler.get_scale() == 1024.0 and trainer.amp_skipped == 0
        assert int(trainer.ema.n_averaged) == 1 and trainer.scheduler.last_epoch == 1
        params = [p.detach().clone() for p in student.parameters()]
        momentum = [s["momentum_buffer"].clone() for s in trainer.optimizer.state.values()]
        handle = _inf_grad(next(student.parameters()))
        trainer.step(images, labels, indices)
        handle.remove()
        assert all(torch.equal(a, p) for a, p in zip(params, student.parameters()))  # no update
        assert all(torch.equal(a, s["momentum_buffer"]) for a, s in zip(momentum, trainer.optimizer.state.values()))
        assert trainer.scaler.get_scale() == 512.0 and trainer.amp_skipped == 1
        assert int(trainer.ema.n_averaged) == 1  # the EMA averages optimiser steps only
        assert trainer.scheduler.last_epoch == 2  # the schedule keeps to the batch index
        trainer.step(images, labels, indices)
        assert int(trainer.ema.n_averaged) == 2 and trainer.scaler.get_scale() == 512.0
        trainer._save_state(1)
        state = trainer._state(1)
        trainer._save_best(state)
    finally:
        trainer.close()
    saved = load_checkpoint(trainer.checkpoint_path)
    assert saved["scaler"]["scale"] == 512.0 and saved["scaler"]["_growth_tracker"] == 1
    assert "scaler" not in load_checkpoint(trainer.best_path)  # training state, as the optimiser's
    resumed = Trainer(cfg, resume=True, quiet=True)
    try:
        assert resumed.scaler.state_dict() == saved["scaler"]
    finally:
        resumed.close()


def test_fp16_run_records_its_scale(cpu_scaler, fmnist_root, tmp_path):
    import json

    from mixdistill.engine.trainer import train

    cfg = _cfg(fmnist_root, tmp_path, **{"optim.epochs": 1, "train.ema_decay": None})
    summary = train(cfg, quiet=True)
    assert summary["last_acc"] is not None
    record = json.loads((cfg.run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["amp_scale"] == 1024.0 and record["amp_skipped_steps"] == 0
    assert load_checkpoint(cfg.run_dir / "last.pt")["scaler"]["scale"] == 1024.0
