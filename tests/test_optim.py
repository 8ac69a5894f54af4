"""mixdistill.optim.SGD: torch.optim.SGD's floats and state dicts, without importing torch._dynamo."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from mixdistill.optim import SGD, sgd_kernel


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))


def _train(net: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad()


def _same_state(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    return all(torch.equal(a["state"][k]["momentum_buffer"], b["state"][k]["momentum_buffer"]) for k in a["state"])


@pytest.mark.parametrize("kw", [dict(momentum=0.9, weight_decay=5e-4, nesterov=True, foreach=True),
                                dict(momentum=0.9, weight_decay=1e-4, dampening=0.1, foreach=False),
                                dict(momentum=0.0, weight_decay=0.0)])
def test_sgd_steps_like_torch_sgd_bit_for_bit_and_saves_the_same_state(kw):
    ours, theirs = _net(0), _net(0)
    opt_ours, opt_theirs = SGD(ours.parameters(), lr=0.1, **kw), torch.optim.SGD(theirs.parameters(), lr=0.1, **kw)
    _train(ours, opt_ours, 5, seed=1)
    _train(theirs, opt_theirs, 5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    assert all(p.grad is None for p in ours.parameters())
    assert _same_state(opt_ours.state_dict(), opt_theirs.state_dict())
    # each loads the other's state and goes on as the other would
    resumed_ours, resumed_theirs = _net(2), _net(2)
    resumed_ours.load_state_dict(theirs.state_dict())
    resumed_theirs.load_state_dict(ours.state_dict())
    swapped_ours = SGD(resumed_ours.parameters(), lr=0.5, **kw)
    swapped_theirs = torch.optim.SGD(resumed_theirs.parameters(), lr=0.5, **kw)
    swapped_ours.load_state_dict(copy.deepcopy(opt_theirs.state_dict()))  # a copy, as from a checkpoint: loading
    swapped_theirs.load_state_dict(copy.deepcopy(opt_ours.state_dict()))  # keeps the momentum tensors it is given
    assert swapped_ours.param_groups[0]["lr"] == 0.1
    for net, opt in ((resumed_ours, swapped_ours), (resumed_theirs, swapped_theirs), (theirs, opt_theirs)):
        _train(net, opt, 3, seed=3)
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in
               zip(resumed_ours.state_dict().values(), resumed_theirs.state_dict().values(),
                   theirs.state_dict().values()))


def test_an_eager_kd_run_in_a_fresh_process_never_imports_torch_dynamo(tiny_run_overrides, tmp_path):
    """What a grid's worker pays before its first step: no torch._dynamo (1-2 s), neither for the optimiser nor for
    the compile decision (train.compile=auto, a run too short to probe)."""
    script = tmp_path / "run.py"
    script.write_text(f"""
import sys
import torch
from mixdistill.config import load_config
from mixdistill.engine.trainer import train
from mixdistill.files import save_torch
from mixdistill.models import create_model

teacher = save_torch({{"model": create_model("cnn5_w16", 10, 1).state_dict(), "arch": "cnn5_w16"}},
                     {str(tmp_path / 'teacher.pt')!r})
overrides = {tiny_run_overrides!r} + ["name=kd", "method.name=kd", "optim.epochs=1", "train.compile=auto",
                                      f"model.teacher_checkpoint={{teacher}}"]
summary = train(load_config(None, overrides), quiet=True)
assert summary["last_acc"] is not None
print("dynamo imported:", "torch._dynamo" in sys.modules)
""")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dynamo imported: False" in done.stdout


def test_the_fused_kernel_of_cuda_graphs_runs_steps_by_the_same_rule():
    """train.cuda_graphs picks SGD's fused kernel (one launch); elsewhere the foreach kernels. Same update rule: the
    weights after a few steps agree to rounding (checked on the CPU's fused kernel; the CUDA one is the same rule)."""
    kw = dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True)
    foreach_net, fused_net = _net(0), _net(0)
    foreach_opt = SGD(foreach_net.parameters(), **kw, **sgd_kernel(False))
    fused_opt = SGD(fused_net.parameters(), **kw, **sgd_kernel(True))
    assert (foreach_opt.param_groups[0]["foreach"], fused_opt.param_groups[0]["fused"]) == (True, True)
    _train(foreach_net, foreach_opt, 5, seed=1)
    _train(fused_net, fused_opt, 5, seed=1)
    for a, b in zip(foreach_net.state_dict().values(), fused_net.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_resumed_run_uses_its_own_sgd_kernel_not_the_checkpoints(tiny_run_overrides, interrupt_at):
    """A checkpoint of a train.cuda_graphs run on a GPU records fused=True in its optimiser groups; resumed where
    that option is off (here: a CPU) the run steps with the foreach kernels it would have started with."""
    from mixdistill.config import load_config
    from mixdistill.engine.checkpoint import load_checkpoint, save_atomic
    from mixdistill.engine.trainer import Trainer, train

    cfg = load_config(None, tiny_run_overrides + ["name=fused", "optim.epochs=2"])
    with interrupt_at(1):  # stopped after epoch 1's checkpoint
        train(cfg, quiet=True)
    state = load_checkpoint(cfg.run_dir / "last.pt")
    for group in state["optimizer"]["param_groups"]:
        group.update(foreach=False, fused=True)
    save_atomic(state, cfg.run_dir / "last.pt")
    trainer = Trainer(cfg, resume=True, quiet=True)
    try:
        assert all(g["foreach"] is True and g["fused"] is None for g in trainer.optimizer.param_groups)
    finally:
        trainer.close()


def test_fp16s_scaler_keeps_the_foreach_kernel_so_a_skipped_step_is_seen():
    """Under fp16's GradScaler a fused optimiser skips an inf step inside its kernel, so ``scaled_step`` (an
    optimiser step hook) cannot see the skip; train.cuda_graphs therefore fuses SGD only without the scaler."""
    from mixdistill.engine.trainer import scaled_step

    assert sgd_kernel(True, scaled=True) == sgd_kernel(False) == {"foreach": True, "fused": None}
    assert sgd_kernel(True)["fused"] is True
    seen = {}
    for name, kernel in (("foreach", sgd_kernel(True, scaled=True)), ("fused", sgd_kernel(True))):
        net = _net(0)
        before = [p.detach().clone() for p in net.parameters()]
        opt = SGD(net.parameters(), lr=0.1, momentum=0.9, **kernel)
        loss = net(torch.randn(2, 3, 8, 8)).sum() * float("inf")
        seen[name] = scaled_step(torch.amp.GradScaler("cpu"), opt, loss)
        assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())), name  # both skipped it
    assert seen == {"foreach": False, "fused": True}  # only the foreach step's skip is seen
