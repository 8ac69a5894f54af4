"""KD maths against hand-computed values (closed forms, not the implementation re-run)."""

import math

import pytest
import torch

from mixdistill.losses import cross_entropy, kd_loss, kl_div, soft_cross_entropy

# student [2, 0] vs teacher [0, 2] at T = 2: scaled logits differ by log-odds 1, so
# KL(p_t || p_s) = (sigmoid(1) - sigmoid(-1)) * 1 = tanh(1/2)
KL_ONE_PAIR = math.tanh(0.5)


def test_kd_loss_hand_computed():
    student = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 3.0]])  # second sample: identical logits, KL = 0
    expected = 4.0 * (KL_ONE_PAIR + 0.0) / 2  # T^2 * batchmean
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(expected, rel=1e-6)


def test_kl_reductions():
    student = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    assert kl_div(student, teacher, 2.0, "none").tolist() == pytest.approx([KL_ONE_PAIR, 0.0], abs=1e-6)
    assert kl_div(student, teacher, 2.0, "sum").item() == pytest.approx(KL_ONE_PAIR, rel=1e-6)
    # das2020's element-wise mean is 1/C of batchmean
    assert kl_div(student, teacher, 2.0, "mean").item() == pytest.approx(KL_ONE_PAIR / 4, rel=1e-6)


def test_kd_gradient_flows_to_student_only():
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    kd_loss(student, teacher.detach(), 4.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None


def test_kd_zero_when_equal_and_fp32_under_bf16_inputs():
    logits = torch.randn(3, 7).to(torch.bfloat16)
    out = kd_loss(logits, logits, 4.0)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(0.0, abs=1e-6)


def test_cross_entropy_and_soft_cross_entropy_agree_on_one_hot():
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    expected = -math.log(math.exp(2.0) / (math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    assert cross_entropy(logits, torch.tensor([1])).item() == pytest.approx(expected, rel=1e-6)
    assert soft_cross_entropy(logits, torch.tensor([[0.0, 1.0, 0.0]])).item() == pytest.approx(expected, rel=1e-6)
    # a 50/50 soft target is the mean of the two hard CEs
    half = soft_cross_entropy(logits, torch.tensor([[0.5, 0.5, 0.0]])).item()
    ce0 = cross_entropy(logits, torch.tensor([0])).item()
    assert half == pytest.approx(0.5 * (ce0 + expected), rel=1e-6)
