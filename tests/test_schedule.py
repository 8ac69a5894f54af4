import pytest
import torch

from mixdistill.config import load_config
from mixdistill.engine.build import base_lr
from mixdistill.engine.schedule import build_scheduler


def lrs_per_epoch(cfg, steps_per_epoch=3):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr(cfg))
    sched = build_scheduler(opt, cfg.optim, steps_per_epoch)
    out = []
    for _ in range(cfg.optim.total_epochs):
        out.append(opt.param_groups[0]["lr"])
        for _ in range(steps_per_epoch):
            opt.step()
            sched.step()
    return out


def test_crd_step_schedule():
    lrs = lrs_per_epoch(load_config(None, []))
    assert len(lrs) == 240
    assert lrs[149] == pytest.approx(0.05) and lrs[150] == pytest.approx(0.005)
    assert lrs[180] == pytest.approx(0.0005) and lrs[210] == pytest.approx(0.00005)


def test_epoch_factor_scales_decays():
    lrs = lrs_per_epoch(load_config(None, ["optim.epoch_factor=2"]))
    assert len(lrs) == 480
    assert lrs[299] == pytest.approx(0.05) and lrs[300] == pytest.approx(0.005) and lrs[420] == pytest.approx(5e-5)


@pytest.mark.parametrize("student", ["mobile_half", "ShuffleV1", "ShuffleV2"])
def test_small_student_lr(student):
    assert base_lr(load_config(None, [f"model.student={student}"])) == 0.01
    assert base_lr(load_config(None, ["model.student=resnet8x4"])) == 0.05


def test_onecycle_peaks_and_ends_near_zero():
    cfg = load_config(None, ["optim.schedule=onecycle", "optim.epochs=4", "optim.milestones=[]", "optim.lr=0.1"])
    lrs = lrs_per_epoch(cfg, steps_per_epoch=10)
    assert max(lrs) <= 0.1 + 1e-9 and lrs[0] < 0.05 and lrs[-1] < 0.05


def test_onecycle_survives_a_one_step_run():
    """A run of a single optimiser step (peak == total_steps == 1) must not divide by zero when the
    scheduler is stepped after it."""
    from mixdistill.engine.schedule import lr_factor

    cfg = load_config(None, ["optim.schedule=onecycle", "optim.epochs=1", "optim.milestones=[]"])
    f = lr_factor(cfg.optim, steps_per_epoch=1)
    assert f(0) == 1.0 and f(1) == 0.0
