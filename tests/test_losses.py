"""KD maths against hand-computed values (closed forms, not the implementation re-run)."""

import contextlib
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


def test_kd_loss_direction_is_kl_teacher_to_student():
    # An asymmetric pair at T = 2: student [0, 0] -> p_s = (1/2, 1/2); teacher [2 ln 3, 0] -> p_t = (3/4, 1/4).
    # KL(p_t || p_s) = 3/4 ln(3/2) + 1/4 ln(1/2) = 0.1308; the reverse KL(p_s || p_t) = 1/2 ln(4/3) = 0.1438.
    student = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    teacher = torch.tensor([[2 * math.log(3.0), 0.0], [1.0, -1.0]])  # second sample: identical, KL = 0
    forward = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    reverse = 0.5 * math.log(4 / 3)
    assert abs(forward - reverse) > 0.01
    assert kl_div(student, teacher, 2.0, "none").tolist() == pytest.approx([forward, 0.0], abs=1e-6)
    assert kd_loss(student, teacher, temperature=2.0).item() == pytest.approx(4.0 * forward / 2, rel=1e-6)


@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan")])
def test_a_temperature_that_is_not_positive_is_refused(temperature):
    student, teacher = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match="must be > 0"):
        kd_loss(student, teacher, temperature)
    with pytest.raises(ValueError, match="must be > 0"):
        kl_div(student, teacher, temperature)


def test_kl_reductions():
    student = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    teacher = torch.tensor([[0.0, 2.0], [1.0, 3.0]])
    assert kl_div(student, teacher, 2.0, "none").tolist() == pytest.approx([KL_ONE_PAIR, 0.0], abs=1e-6)
    assert kl_div(student, teacher, 2.0, "sum").item() == pytest.approx(KL_ONE_PAIR, rel=1e-6)
    # das2020's element-wise mean is 1/C of batchmean
    assert kl_div(student, teacher, 2.0, "mean").item() == pytest.approx(KL_ONE_PAIR / 4, rel=1e-6)


def test_kd_gradient_wrt_student_closed_form():
    # d/ds [T^2 * (1/B) sum_b KL(softmax(t_b/T) || softmax(s_b/T))] = T * (softmax(s/T) - softmax(t/T)) / B
    # (the reverse KL, a missing T^2 or a detached student all give another gradient).
    # No teacher half here: kd_loss is a pure function of two tensors and does not detach its teacher
    # argument; the spec's "teacher frozen, eval mode, no autograd" is enforced where the teacher logits
    # are made (Distiller.teacher_logits / the methods' inference_mode forwards), and is tested there:
    # tests/test_distill.py::test_teacher_forward_in_inference_mode_and_eval_mode and
    # ::test_teacher_frozen_and_student_learns. Asserting teacher.grad is None after passing
    # teacher.detach() (as this test used to) could not fail.
    g = torch.Generator().manual_seed(0)
    student = torch.randn(4, 5, generator=g, requires_grad=True)
    teacher = torch.randn(4, 5, generator=g)
    T = 4.0
    kd_loss(student, teacher, T).backward()
    with torch.no_grad():
        expected = T * (torch.softmax(student / T, 1) - torch.softmax(teacher / T, 1)) / 4
    assert student.grad is not None
    assert torch.allclose(student.grad, expected, atol=1e-7, rtol=1e-5)


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


# ------------------------------------------------------------------------------------ label smoothing

def _record(sources, weights):
    from mixdistill.augment import MixedBatch

    sources = torch.tensor(sources)
    return MixedBatch(torch.zeros(len(sources), 1, 2, 2), sources, torch.tensor(weights))


def test_label_smoothing_hand_computed():
    from mixdistill.losses import label_smoothing, mixed_cross_entropy

    # one sample, 3 classes, label 1, eps 0.3: targets (0.1, 0.8, 0.1)
    logits = torch.tensor([[1.0, 2.0, 0.5]])
    log_z = math.log(math.e**1.0 + math.e**2.0 + math.e**0.5)
    log_p = [1.0 - log_z, 2.0 - log_z, 0.5 - log_z]
    expected = -(0.1 * log_p[0] + 0.8 * log_p[1] + 0.1 * log_p[2])
    labels = torch.tensor([1])
    assert cross_entropy(logits, labels, 0.3).item() == pytest.approx(expected, rel=1e-6)
    with label_smoothing(0.3):  # what the trainer enters around every training forward
        assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)
        assert mixed_cross_entropy(logits, labels, _record([[0]], [[1.0]])).item() == pytest.approx(expected,
                                                                                                    rel=1e-6)
    assert cross_entropy(logits, labels).item() == pytest.approx(-log_p[1], rel=1e-6)  # outside: none
    # a mixed sample: sources' labels 1 and 0 with weights 0.75 / 0.25, eps 0.3 on C = 3 classes:
    # soft (0.25, 0.75, 0) -> 0.7 * soft + 0.1 = (0.275, 0.625, 0.1)
    mixed = _record([[0, 1]], [[0.75, 0.25]])
    two_labels = torch.tensor([1, 0])
    expected_mixed = -(0.275 * log_p[0] + 0.625 * log_p[1] + 0.1 * log_p[2])
    with label_smoothing(0.3):
        assert mixed_cross_entropy(logits, two_labels, mixed).item() == pytest.approx(expected_mixed, rel=1e-6)
    assert mixed_cross_entropy(logits, two_labels, mixed, smoothing=0.3).item() == pytest.approx(expected_mixed,
                                                                                                 rel=1e-6)
    with pytest.raises(ValueError, match="label smoothing"), label_smoothing(1.0):
        pass


def test_label_smoothing_zero_leaves_every_label_loss_bit_identical():
    import torch.nn.functional as F

    from mixdistill.losses import label_smoothing, mixed_cross_entropy, mixstd_terms, std_normalized

    torch.manual_seed(0)  # fp32 CPU tensors: the references are the formulas before label smoothing existed
    logits, teacher = torch.randn(6, 5), torch.randn(6, 5)
    labels = torch.randint(5, (6,))
    one = _record([[i] for i in range(6)], [[1.0]] * 6)
    two = _record([[i, (i + 1) % 6] for i in range(6)], [[0.6, 0.4]] * 6)
    soft = two.soft_targets(labels, 5)

    def soft_ce(z, targets):
        return -(targets * F.log_softmax(z, dim=1)).sum(dim=1).mean()

    reference = {
        "ce": F.cross_entropy(logits, labels),
        "mixed_one": F.cross_entropy(logits, labels[one.sources[:, 0]]),
        "mixed_two": soft_ce(logits, soft),
        "mixstd": soft_ce(std_normalized(logits), soft),
    }
    for context in (contextlib.nullcontext, lambda: label_smoothing(0.0)):  # the default, and eps 0 set explicitly
        with context():
            got = {"ce": cross_entropy(logits, labels), "mixed_one": mixed_cross_entropy(logits, labels, one),
                   "mixed_two": mixed_cross_entropy(logits, labels, two),
                   "mixstd": mixstd_terms(logits, teacher, soft)[0]}
        for name, value in reference.items():
            assert torch.equal(got[name], value), name
    assert not torch.equal(cross_entropy(logits, labels, 0.1), reference["ce"])
    assert not torch.equal(mixed_cross_entropy(logits, labels, two, 0.1), reference["mixed_two"])
