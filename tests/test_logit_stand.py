"""``method.logit_stand`` (kd, mix_kd, dkd): Sun et al.'s logit standardisation (CVPR 2024), by hand and against the
released functions (github.com/sunshangquan/logit-standardization-KD, mdistiller/distillers/KD.py and DKD.py,
re-typed below) on the same tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixdistill.config import load_config
from mixdistill.distill import StepInfo
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, logit_standardized
from mixdistill.methods import METHODS


# -- the released code's functions, as released (LOGIT_STAND on) ---------------------------------------------------

def released_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def released_kd_loss(logits_student_in, logits_teacher_in, temperature):
    logits_student, logits_teacher = released_normalize(logits_student_in), released_normalize(logits_teacher_in)
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    return F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean() * temperature**2


def released_dkd_loss(logits_student_in, logits_teacher_in, target, alpha, beta, temperature):
    logits_student, logits_teacher = released_normalize(logits_student_in), released_normalize(logits_teacher_in)
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t):
        return torch.cat([(t * gt_mask).sum(dim=1, keepdims=True), (t * other_mask).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1))
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1))
    tckd = F.kl_div(torch.log(pred_student), pred_teacher, reduction="sum") * temperature**2 / target.shape[0]
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * temperature**2 / target.shape[0]
    return alpha * tckd + beta * nckd


def _logits(seed, n=6, classes=5):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, classes, generator=g), 5 * torch.randn(n, classes, generator=g) + 2


# -- tests -----------------------------------------------------------------------------------------------------------

def test_logit_stand_kd_hand_computed():
    s, t, T = [1.0, 2.0, 3.0, 6.0], [0.0, 1.0, 0.0, 3.0], 2.0

    def z(xs):
        mean = sum(xs) / len(xs)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))  # unbiased, as torch.std
        return [(x - mean) / (std + 1e-7) for x in xs]

    def softmax(xs):
        e = [math.exp(x / T) for x in xs]
        return [v / sum(e) for v in e]

    p_s, p_t = softmax(z(s)), softmax(z(t))
    expected = T**2 * sum(b * math.log(b / a) for a, b in zip(p_s, p_t))
    got = kd_loss(torch.tensor([s]), torch.tensor([t]), T, logit_stand=True)
    assert got.item() == pytest.approx(expected, rel=3e-5)  # fp32 (7e-6 here); the released formula in fp64: 1e-14
    assert kd_loss(torch.tensor([s]), torch.tensor([t]), T).item() != pytest.approx(expected, rel=1e-2)  # on


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logit_stand_is_the_released_normalize_and_kd_loss(seed):
    s, t = _logits(seed)
    assert torch.equal(logit_standardized(s), released_normalize(s))
    for T in (1.0, 2.0, 4.0):
        assert kd_loss(s, t, T, logit_stand=True).item() == pytest.approx(released_kd_loss(s, t, T).item(), rel=1e-6)


def test_logit_stand_kd_ignores_each_samples_shift_and_scale():
    s, t = _logits(3)
    g = torch.Generator().manual_seed(4)
    scale_s, scale_t = torch.rand(6, 1, generator=g) * 5 + 0.1, torch.rand(6, 1, generator=g) * 5 + 0.1
    shift_s, shift_t = torch.randn(6, 1, generator=g) * 10, torch.randn(6, 1, generator=g) * 10
    moved = (scale_s * s + shift_s, scale_t * t + shift_t)
    assert kd_loss(*moved, 2.0, logit_stand=True).item() == pytest.approx(kd_loss(s, t, 2.0, logit_stand=True).item(),
                                                                          rel=1e-5)
    assert kd_loss(*moved, 2.0).item() != pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-2)


class TinyNet(torch.nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.conv, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Linear(4, 5)
        self.feature_dim, self.num_classes = 4, 5

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def _method(name, **params):
    cls = METHODS[name]
    d = cls(TinyNet(seed=1), TinyNet(seed=2), cls.Params(**params))
    d.set_augment(None)
    return d


def _step(d, epoch=0):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)
    info = StepInfo(epoch=epoch, step=0, epochs=1, generator=torch.Generator().manual_seed(0))
    logits, losses, *_ = d.forward_train(x, y, info)
    with torch.no_grad():
        teacher = d.teacher(x)
    return logits, teacher, y, losses


def test_kd_method_standardizes_the_kd_term_only():
    logits, teacher, y, losses = _step(_method("kd", logit_stand=True, temperature=2.0, kd_weight=9.0))
    assert losses["kd"].item() == pytest.approx(9.0 * released_kd_loss(logits, teacher, 2.0).item(), rel=1e-6)
    assert losses["ce"].item() == pytest.approx(0.1 * F.cross_entropy(logits, y).item(), rel=1e-6)  # raw logits
    _, _, _, plain = _step(_method("kd", temperature=2.0, kd_weight=9.0))
    assert plain["kd"].item() == pytest.approx(9.0 * kd_loss(logits, teacher, 2.0).item(), rel=1e-6)
    assert plain["kd"].item() != pytest.approx(losses["kd"].item(), rel=1e-2)


@pytest.mark.parametrize("epoch", [0, 30])
def test_dkd_method_with_logit_stand_is_the_released_dkd(epoch):
    logits, teacher, y, losses = _step(_method("dkd", logit_stand=True, temperature=2.0, beta=8.0), epoch)
    ramp = min((epoch + 1) / 20, 1.0)
    expected = ramp * released_dkd_loss(logits, teacher, y, 1.0, 8.0, 2.0)
    assert losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_logit_stand_is_a_parameter_of_kd_and_dkd_only():
    teacher = ["model.teacher_checkpoint=resnet32x4"]
    assert load_config(None, ["method=kd", "method.logit_stand=true", *teacher]).method.logit_stand is True
    assert load_config(None, ["method=mix_kd", *teacher]).method.logit_stand is False
    assert load_config(None, ["method=dkd", "method.logit_stand=true", *teacher]).method.logit_stand is True
    with pytest.raises(ConfigError, match="logit_stand"):
        load_config(None, ["method=mixstd", "method.logit_stand=true", *teacher])
