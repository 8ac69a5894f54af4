"""DKD and CRD / CRD+KD: hand-computed losses, the memory bank's rules, gradients, state, the CLI."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from mixdistill.augment import MixedBatch, make_augment
from mixdistill.distill import StepInfo, TrainSet
from mixdistill.distill.crd import ContrastMemory, CRDLoss, nce_loss
from mixdistill.distill.dkd import dkd_loss, dkd_terms, warmup_factor
from mixdistill.losses import kd_loss, kl_div
from mixdistill.methods import METHODS

N_DATA = 40  # training-set size of the unit tests


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head with the zoo's ``forward_features`` / ``feature_dim`` interface."""

    def __init__(self, classes=5, width=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, classes)
        self.feature_dim, self.num_classes = width, classes

    def forward_features(self, x):
        m = torch.relu(self.bn(self.conv(x)))
        pooled = m.mean((2, 3))
        return self.fc(pooled), {"pooled": pooled, "maps": [m]}

    def forward(self, x):
        return self.forward_features(x)[0]


def train_set(n=N_DATA, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 1, 6, 6, generator=g), torch.arange(n) % classes
    batches = lambda: iter([(images[i:i + 16], labels[i:i + 16], torch.arange(i, min(i + 16, n)))  # noqa: E731
                            for i in range(0, n, 16)])
    return images, labels, TrainSet(num_samples=n, num_classes=classes, clean_batches=batches,
                                    augmented_by_loader=False)


def make(name, augment=None, data=None, **params):
    cls = METHODS[name]
    d = cls(TinyNet(seed=1), TinyNet(width=6, seed=2), cls.Params(**params))
    d.set_augment(make_augment(augment) if augment else None)
    torch.manual_seed(3)
    d.prepare(data if data is not None else train_set()[2])
    return d


def info(epoch=0, indices=None, seed=0):
    return StepInfo(epoch=epoch, step=0, epochs=40, generator=torch.Generator().manual_seed(seed), indices=indices)


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


# ------------------------------------------------------------------------------------------------ DKD

def test_dkd_hand_computed():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]]
    y = [0, 2]
    T, alpha, beta = 2.0, 1.0, 8.0
    tckd = nckd = 0.0
    for zs, zt, gt in zip(s, t, y):
        ps, pt = softmax([v / T for v in zs]), softmax([v / T for v in zt])
        tckd += kl([pt[gt], 1 - pt[gt]], [ps[gt], 1 - ps[gt]])
        rest = [c for c in range(3) if c != gt]
        nckd += kl(softmax([zt[c] / T for c in rest]), softmax([zs[c] / T for c in rest]))
    tckd, nckd = tckd * T**2 / 2, nckd * T**2 / 2
    args = torch.tensor(s), torch.tensor(t), torch.tensor(y)
    got_t, got_n = dkd_terms(*args, temperature=T)
    assert got_t.item() == pytest.approx(tckd, rel=1e-5)
    assert got_n.item() == pytest.approx(nckd, rel=1e-5)
    assert dkd_loss(*args, alpha=alpha, beta=beta, temperature=T).item() == pytest.approx(
        alpha * tckd + beta * nckd, rel=1e-5)
    # per-sample weights (the weighted mixed target, one call per source): weight 1 is the plain form
    ones_t, ones_n = dkd_terms(*args, temperature=T, sample_weights=torch.ones(2))
    assert torch.equal(ones_t, got_t) and torch.equal(ones_n, got_n)


def test_dkd_decomposes_kd():
    # Zhao et al. eq. 7, per sample at T = 1: KL(t || s) = TCKD + (1 - p_t[gt]) * NCKD
    torch.manual_seed(0)
    s, t = torch.randn(6, 7) * 3, torch.randn(6, 7) * 3
    y = torch.randint(7, (6,))
    for i in range(6):
        tckd, nckd = dkd_terms(s[i:i + 1], t[i:i + 1], y[i:i + 1], temperature=1.0)
        p_gt = torch.softmax(t[i], 0)[y[i]].item()
        assert kl_div(s[i:i + 1], t[i:i + 1]).item() == pytest.approx(tckd.item() + (1 - p_gt) * nckd.item(),
                                                                      rel=1e-4, abs=1e-6)


def test_dkd_is_finite_when_the_target_probability_rounds_to_one():
    s = torch.tensor([[200.0, 0.0, -5.0]], requires_grad=True)
    t = torch.tensor([[0.0, 3.0, 1.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


@pytest.mark.parametrize("mixed_target", ["first", "weighted"])
@pytest.mark.parametrize("epoch, factor", [(0, 1 / 20), (9, 10 / 20), (19, 1.0), (30, 1.0)])
def test_dkd_warmup(epoch, factor, mixed_target):
    # on an unmixed batch both mixed-target forms are mdistiller's DKD
    assert warmup_factor(epoch, 20) == pytest.approx(factor)
    images, labels, _ = train_set(8)
    d = make("dkd", warmup=20, mixed_target=mixed_target)
    _, losses, *_ = d.forward_train(images, labels, info(epoch))
    with torch.no_grad():
        full = dkd_loss(d.student(images), d.teacher(images), labels, 1.0, 8.0, 4.0)
    assert losses["dkd"].item() == pytest.approx(factor * full.item(), rel=1e-5)
    assert set(losses) == {"ce", "dkd"}


@pytest.mark.parametrize("params", [{}, {"ce_weight": 0.4}])
def test_dkd_ce_term_hand_computed(params):
    # ce_weight (default 1) * CE(z_s, y), with y the batch labels (no mixing)
    images, labels, _ = train_set(8)
    d = make("dkd", **params)
    logits, losses, *_ = d.forward_train(images, labels, info(epoch=3))
    with torch.no_grad():
        s = d.student(images)
    assert torch.allclose(logits, s, atol=1e-6)
    log_p = s - s.logsumexp(1, keepdim=True)
    expected = -log_p[torch.arange(8), labels].mean().item()
    assert expected > 0.1
    assert losses["ce"].item() == pytest.approx(params.get("ce_weight", 1.0) * expected, rel=1e-5)


def test_dkd_with_mixup_uses_source_zero_as_target():
    images, labels, _ = train_set(8)
    d = make("dkd", augment="mixup_two_perm", warmup=0)
    i = info(seed=5)
    _, losses, *_ = d.forward_train(images, labels, i)
    batch = make_augment("mixup_two_perm")(images, labels, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        s, t = d.student(batch.images), d.teacher(batch.images)
    expected = dkd_loss(s, t, labels[batch.sources[:, 0]], 1.0, 8.0, 4.0)
    assert losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-5)


def dkd_on_record(record, **params):
    """A DKD distiller whose augmentation returns ``record`` (a hand-built MixedBatch), and its losses on it."""
    images, labels, _ = train_set(8)
    d = make("dkd", warmup=0, **params)
    d.set_augment(lambda images, labels, generator: record)
    with torch.no_grad():
        out = d.forward_train(images, labels, info())
        s, t = d.student(record.images), d.teacher(record.images)
    return out.losses, out.stats, s, t, labels


def two_source_record(weights0):
    images, _, _ = train_set(8)
    g = torch.Generator().manual_seed(7)
    partner = torch.randperm(8, generator=g)
    w0 = torch.as_tensor(weights0, dtype=torch.float32).expand(8)
    mixed = w0[:, None, None, None] * images + (1 - w0)[:, None, None, None] * images[partner]
    return MixedBatch(mixed, torch.stack([torch.arange(8), partner], 1), torch.stack([w0, 1 - w0], 1))


def test_dkd_weighted_with_weights_one_zero_is_first():
    record = two_source_record(1.0)
    with torch.no_grad():  # fp32 CPU tensors throughout: the two forms agree bit for bit
        first, first_stats, *_ = dkd_on_record(record, mixed_target="first")
        weighted, weighted_stats, *_ = dkd_on_record(record, mixed_target="weighted")
    assert torch.equal(first["dkd"], weighted["dkd"]) and torch.equal(first["ce"], weighted["ce"])
    assert torch.equal(first_stats["tckd"], weighted_stats["tckd"])
    assert torch.equal(first_stats["nckd"], weighted_stats["nckd"])


def test_dkd_weighted_is_the_weighted_sum_of_single_label_dkd():
    # per-sample weights: L = mean_n sum_k w_nk (alpha TCKD_k(n) + beta NCKD_k(n)), each from the single-label DKD
    w0 = [0.7, 0.2, 0.5, 0.9, 0.35, 0.6, 0.05, 0.8]
    record = two_source_record(w0)
    alpha, beta, T = 0.5, 3.0, 2.0
    losses, _, s, t, labels = dkd_on_record(record, mixed_target="weighted", alpha=alpha, beta=beta, temperature=T)
    y = labels[record.sources]  # [B, 2]
    assert (y[:, 0] != y[:, 1]).any()
    expected = sum(record.weights[n, k].item() * dkd_loss(s[n:n + 1], t[n:n + 1], y[n:n + 1, k], alpha, beta,
                                                          T).item()
                   for n in range(8) for k in range(2)) / 8
    first, *_ = dkd_on_record(record, mixed_target="first", alpha=alpha, beta=beta, temperature=T)
    assert losses["dkd"].item() == pytest.approx(expected, rel=1e-5)
    assert abs(first["dkd"].item() - expected) > 1e-3  # the two forms differ on a mixed batch
    assert torch.equal(losses["ce"], first["ce"])  # the CE term is the same soft-label CE


# DKD's beta per pair, as read in github megvii-research/mdistiller @ a08d46f10d6102bd6e3f258ca5ac880b020ea259:
# configs/cifar100/dkd/res32x4_res8x4.yaml has no DKD section (-> mdistiller/engine/cfg.py:165, BETA 8.0);
# configs/cifar100/dkd/res56_res20.yaml:19 and res110_res32.yaml:19 "BETA: 2.0"; vgg13_vgg8.yaml:19,
# vgg13_mv2.yaml:19, wrn40_2_wrn_16_2.yaml:19 and wrn40_2_wrn_40_1.yaml:19 "BETA: 6.0". No CIFAR config sets
# CE_WEIGHT, ALPHA, T or WARMUP (cfg.py:163-167 defaults 1.0, 1.0, 4.0, 20).
MDISTILLER_CIFAR100_BETA = {
    ("resnet32x4", "resnet8x4"): 8.0, ("resnet32x4", "ShuffleV1"): 8.0, ("resnet32x4", "ShuffleV2"): 8.0,
    ("ResNet50", "MobileNetV2"): 8.0, ("wrn_40_2", "ShuffleV1"): 8.0,
    ("wrn_40_2", "wrn_16_2"): 6.0, ("wrn_40_2", "wrn_40_1"): 6.0, ("vgg13", "vgg8"): 6.0, ("vgg13", "MobileNetV2"): 6.0,
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0,
}


def test_dkd_beta_per_pair_as_mdistiller():
    from mixdistill.distill.dkd import DKD

    for (teacher, student), beta in MDISTILLER_CIFAR100_BETA.items():
        assert DKD.pair_params(teacher, student) == {"beta": beta}, (teacher, student)
    assert DKD.pair_params("resnet110", "resnet20") == {}  # a CRD pair without an mdistiller DKD config: default
    assert DKD.pair_params("vgg13", "mobile_half") == {"beta": 6.0}  # mdistiller's MobileNetV2 is mobile_half


@pytest.mark.checkout
@pytest.mark.parametrize("overrides, beta", [
    (["model.teacher=resnet32x4", "model.student=resnet8x4"], 8.0),
    (["model.teacher=resnet56", "model.student=resnet20"], 2.0),
    (["model.teacher=null", "model.teacher_checkpoint=resnet56", "model.student=resnet20"], 2.0),  # benchmark name
    (["model.teacher=vgg13", "model.teacher_checkpoint=x.pt", "model.student=vgg8"], 6.0),
    (["model.teacher=resnet56", "model.student=resnet20", "method.beta=8"], 8.0),  # given: wins over the pair's
    (["model.teacher=null", "model.teacher_checkpoint=t.pt", "model.student=resnet8x4"], 8.0),  # its pairs: all 8
    (["model.teacher=null", "model.teacher_checkpoint=t.pt", "model.student=resnet20", "method.beta=8"], 8.0),
    (["model.teacher=resnet110", "model.student=resnet20"], 8.0),  # no mdistiller config: the default
])
def test_dkd_run_config_takes_the_pairs_beta(overrides, beta):
    from mixdistill.config import build_config, load_config

    cfg = load_config("configs/cifar100_crd.yaml", ["method=dkd", *overrides])
    assert cfg.method.model_extra == {"ce_weight": 1.0, "alpha": 1.0, "beta": beta, "temperature": 4.0, "warmup": 20,
                                      "mixed_target": "first", "logit_stand": False}
    assert cfg.method.params().beta == beta
    again = build_config(cfg.to_dict())  # a run's saved config.yaml reads back to the same parameters
    assert again.method.model_extra == cfg.method.model_extra
    other = load_config("configs/cifar100_crd.yaml", overrides[:-1] if "method.beta=8" in overrides else overrides)
    assert "beta" not in other.method.model_extra  # kd, the file's method: no pair lookup


@pytest.mark.checkout
def test_dkd_with_a_teacher_file_and_no_architecture_asks_for_it_where_the_pair_decides_beta():
    """The file's architecture picks the pair, and the config does not read the file: wrn_40_2 -> wrn_16_2 trained
    with beta 8, mdistiller's 6, without a word."""
    from mixdistill.config import load_config
    from mixdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"method dkd takes beta per teacher-student pair \(its released configs; "
                                          r"wrn_16_2 is paired with wrn_40_2\), and the teacher t.pt is a file: set "
                                          r"model.teacher to its architecture, or give method.beta"):
        load_config("configs/cifar100_crd.yaml", ["method=dkd", "model.teacher=null", "model.teacher_checkpoint=t.pt",
                                                  "model.student=wrn_16_2"])
    # a student in no listed pair: the default, whatever the file holds
    assert load_config(None, ["method=dkd", "model.teacher_checkpoint=t.pt", "model.student=cnn5_w8"]
                       ).method.params().beta == 8.0


# ------------------------------------------------------------------------------------------------ CRD

def test_nce_loss_hand_computed():
    # two samples, one positive and two negatives each, bank of 4 rows in 2-d, fixed Z
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]])
    v = torch.tensor([[0.8, 0.6], [0.0, 1.0]])
    idx = torch.tensor([[0, 1, 3], [1, 2, 2]])
    n, T, Z = 4, 0.5, 3.0
    mem = ContrastMemory(2, n, T, 0.5)
    mem.teacher_bank.copy_(bank)
    mem.z_student.fill_(Z)
    scores, _ = mem.scores(v, v, idx)
    z = mem.z_student
    expected = 0.0
    m = 2
    for row, vec in zip(idx.tolist(), v.tolist()):
        p = [math.exp((bank[j, 0].item() * vec[0] + bank[j, 1].item() * vec[1]) / T) / Z for j in row]
        expected += math.log(p[0] / (p[0] + m / n + 1e-7))
        expected += sum(math.log((m / n) / (q + m / n + 1e-7)) for q in p[1:])
    expected = -expected / 2
    assert z.item() == Z  # a set Z is left alone
    assert scores[0, 0].item() == pytest.approx(math.exp(0.8 / T) / Z, rel=1e-6)
    assert nce_loss(scores, n).item() == pytest.approx(expected, rel=1e-6)


def test_memory_update_rule():
    mem = ContrastMemory(3, 5, 0.07, 0.25)
    before_s, before_t = mem.student_bank.clone(), mem.teacher_bank.clone()
    y = torch.tensor([4, 1])
    v_s = nn.functional.normalize(torch.randn(2, 3), dim=1)
    v_t = nn.functional.normalize(torch.randn(2, 3), dim=1)
    mem.update(v_s, v_t, y)
    for bank, before, v in ((mem.student_bank, before_s, v_s), (mem.teacher_bank, before_t, v_t)):
        expected = 0.25 * before[y] + 0.75 * v
        expected = expected / expected.norm(dim=1, keepdim=True)
        assert torch.allclose(bank[y], expected, atol=1e-6)
        untouched = torch.tensor([0, 2, 3])
        assert torch.equal(bank[untouched], before[untouched])


def test_memory_init_range():
    mem = ContrastMemory(12, 1000, 0.07, 0.5)
    stdv = 1 / math.sqrt(12 / 3)
    for bank in (mem.student_bank, mem.teacher_bank):
        assert bank.shape == (1000, 12) and bank.abs().max().item() <= stdv
        assert bank.abs().max().item() > 0.95 * stdv
    assert mem.z_student.item() == -1 and mem.z_teacher.item() == -1


def test_z_set_once_from_first_batch():
    torch.manual_seed(0)
    crd = CRDLoss(4, 6, N_DATA, feat_dim=8, nce_k=10)
    f_s, f_t, pos = torch.randn(5, 4), torch.randn(5, 6), torch.arange(5)
    idx = crd.contrast_indices(pos)
    mem = crd.memory
    teacher_bank, student_bank = mem.teacher_bank.clone(), mem.student_bank.clone()
    crd(f_s, f_t, pos, idx)
    with torch.no_grad():  # Z = mean of the first batch's exp-scores times n
        v_s, v_t = crd.embed_s(f_s), crd.embed_t(f_t)
        z_s = torch.exp(torch.bmm(teacher_bank[idx], v_s[:, :, None]) / 0.07).mean() * N_DATA
        z_t = torch.exp(torch.bmm(student_bank[idx], v_t[:, :, None]) / 0.07).mean() * N_DATA
    assert mem.z_student.item() == pytest.approx(z_s.item(), rel=1e-5)
    assert mem.z_teacher.item() == pytest.approx(z_t.item(), rel=1e-5)
    first = (mem.z_student.item(), mem.z_teacher.item())
    for _ in range(3):
        crd(torch.randn(5, 4) * 3, torch.randn(5, 6) * 3, torch.arange(5, 10))
    assert (mem.z_student.item(), mem.z_teacher.item()) == first


def test_negatives_drawn_on_device_with_positive_first():
    crd = CRDLoss(4, 6, N_DATA, feat_dim=8, nce_k=32)
    pos = torch.tensor([3, 17, 0, 39])
    torch.manual_seed(0)
    idx = crd.contrast_indices(pos)
    assert idx.shape == (4, 33) and idx.dtype == torch.long and idx.device == pos.device
    assert torch.equal(idx[:, 0], pos)
    assert idx.min() >= 0 and idx.max() < N_DATA
    torch.manual_seed(0)
    assert torch.equal(crd.contrast_indices(pos), idx), "negatives come from the global (reseeded) torch RNG"
    if torch.cuda.is_available():
        crd.cuda()
        assert crd.contrast_indices(pos.cuda()).device.type == "cuda"


def test_other_class_negatives_exclude_the_positive_class():
    labels = torch.tensor([2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
    crd = CRDLoss(4, 6, 10, feat_dim=8, nce_k=500, labels=labels)
    pos = torch.arange(10)
    idx = crd.contrast_indices(pos)
    assert torch.equal(idx[:, 0], pos)
    neg_labels = labels[idx[:, 1:]]
    assert (neg_labels != labels[pos][:, None]).all()
    for i in range(10):  # every other-class sample is drawn
        others = set((labels != labels[i]).nonzero().flatten().tolist())
        assert set(idx[i, 1:].tolist()) == others


def test_crd_other_class_prepare_reads_labels():
    images, labels, data = train_set()
    d = make("crd", data=data, negatives="other_class", nce_k=64)
    assert torch.equal(d.crd.labels, labels)
    _, losses, *_ = d.forward_train(images[:8], labels[:8], info(indices=torch.arange(8)))
    assert torch.isfinite(losses["crd"])


@pytest.mark.parametrize("name", ["crd", "crd_kd"])
def test_crd_terms_and_gradients(name):
    images, labels, _ = train_set()
    d = make(name, nce_k=16)
    logits, losses, *_ = d.forward_train(images[:8], labels[:8], info(indices=torch.arange(8, 16)))
    assert list(losses) == (["ce", "crd"] if name == "crd" else ["ce", "kd", "crd"])
    assert logits.shape == (8, 5)
    sum(losses.values()).backward()
    learnable = {id(p) for p in d.learnable_parameters()}
    for module in (d.student, d.crd.embed_s, d.crd.embed_t):
        for p in module.parameters():
            assert id(p) in learnable
            assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in d.teacher.parameters())
    assert not any(n.startswith("teacher.") for n, p in d.named_parameters() if id(p) in learnable)
    if name == "crd_kd":
        with torch.no_grad():
            expected = kd_loss(d.student(images[:8]), d.teacher(images[:8]), 4.0)
        assert losses["kd"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("augment", ["cutmix", "cutmix_pick"])
def test_crd_kd_view_is_crd_kd_on_the_clean_batch_plus_the_views_kl(augment):
    """crd_kd_view = crd_kd's CE, KD and CRD on the clean batch x (same initial state, same negatives)
    + KL_4(z_t(x') || z_s(x')) on the view, weighted like KD; the view's labels are unused."""
    images, labels, _ = train_set()
    x, y, idx = images[:8], labels[:8], torch.arange(8, 16)
    view_d, base_d = make("crd_kd_view", augment, nce_k=16), make("crd_kd", nce_k=16)
    base_d.load_state_dict(view_d.state_dict())
    torch.manual_seed(5)
    _, view_losses, *_ = view_d.forward_train(x, y, info(indices=idx, seed=7))
    torch.manual_seed(5)
    _, base_losses, *_ = base_d.forward_train(x, y, info(indices=idx))
    assert list(view_losses) == ["ce", "kd", "kd_view", "crd"]
    for term in ("ce", "kd", "crd"):
        assert view_losses[term].item() == pytest.approx(base_losses[term].item(), rel=1e-5), term
    generator = torch.Generator().manual_seed(7)
    models = {"teacher": view_d.teacher, "student": view_d.student} if augment == "cutmix_pick" else {}
    student_mode = view_d.student.training
    x_view = make_augment(augment)(x, y, generator=generator, **models).images
    view_d.student.train(student_mode)
    with torch.no_grad():
        expected = kd_loss(view_d.student(x_view), view_d.teacher(x_view), 4.0)
    assert view_losses["kd_view"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("params", [{}, {"crd_weight": 0.5, "ce_weight": 0.3}])
def test_crd_terms_hand_computed(params, monkeypatch):
    # crd = crd_weight (default 0.8) * (NCE(student embedding vs teacher bank) + NCE(teacher embedding vs
    # student bank)), the NCE written out here from the banks before the step, the embedding heads' linear
    # layers and Z set from this (first) batch; ce = ce_weight (default 1) * CE.
    images, labels, _ = train_set()
    k, n, nce_t, eps = 16, N_DATA, 0.07, 1e-7
    d = make("crd", nce_k=k, **params)
    rows, positives = torch.arange(8), torch.arange(8, 16)
    g = torch.Generator().manual_seed(11)
    idx = torch.cat([positives[:, None], torch.randint(n, (8, k), generator=g)], 1)
    seen = []
    monkeypatch.setattr(d.crd, "contrast_indices", lambda pos: seen.append(pos.clone()) or idx)
    mem = d.crd.memory
    teacher_bank, student_bank = mem.teacher_bank.clone(), mem.student_bank.clone()
    assert mem.z_student.item() == -1 and mem.z_teacher.item() == -1
    logits, losses, *_ = d.forward_train(images[rows], labels[rows], info(indices=positives))
    assert torch.equal(seen[0], positives)
    with torch.no_grad():
        s, feats_s = d.student.forward_features(images[rows])
        _, feats_t = d.teacher.forward_features(images[rows])

        def embed(linear, f):
            h = f @ linear.weight.T + linear.bias
            return h / h.norm(dim=1, keepdim=True)

        def nce(bank, v):
            e = torch.exp((bank[idx] * v[:, None, :]).sum(2) / nce_t)  # [B, K + 1]
            p = e / (e.mean() * n)  # Z from the first batch
            pn = k / n
            return -(torch.log(p[:, 0] / (p[:, 0] + pn + eps)).sum()
                     + torch.log(pn / (p[:, 1:] + pn + eps)).sum()) / 8

        v_s, v_t = embed(d.crd.embed_s.linear, feats_s["pooled"]), embed(d.crd.embed_t.linear, feats_t["pooled"])
        expected_crd = nce(teacher_bank, v_s) + nce(student_bank, v_t)
        ce = -(s - s.logsumexp(1, keepdim=True))[torch.arange(8), labels[rows]].mean()
    assert torch.allclose(logits, s, atol=1e-6)
    assert losses["crd"].item() == pytest.approx(params.get("crd_weight", 0.8) * expected_crd.item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(params.get("ce_weight", 1.0) * ce.item(), rel=1e-5)


def test_crd_with_mixup_uses_source_zero_indices():
    images, labels, _ = train_set()
    d = make("crd", augment="mixup_two_perm", nce_k=16)
    indices = torch.arange(20, 28)
    written = d.crd.memory.student_bank.clone()
    d.forward_train(images[:8], labels[:8], info(indices=indices, seed=7))
    batch = make_augment("mixup_two_perm")(images[:8], labels[:8], generator=torch.Generator().manual_seed(7))
    expected = indices[batch.sources[:, 0]]
    changed = (d.crd.memory.student_bank != written).any(1).nonzero().flatten()
    assert set(changed.tolist()) == set(expected.tolist())


def test_crd_state_round_trip():
    images, labels, data = train_set()
    d = make("crd", data=data, nce_k=16)
    d.forward_train(images[:8], labels[:8], info(indices=torch.arange(8)))
    state = d.state_dict_extra()
    assert {"embed_s.linear.weight", "embed_t.linear.bias", "memory.student_bank", "memory.teacher_bank",
            "memory.z_student", "memory.z_teacher"} <= set(state["crd"])
    fresh = make("crd", data=data, nce_k=16)
    assert fresh.crd.memory.z_student.item() == -1
    fresh.load_state_dict_extra(state)
    for key, value in d.crd.state_dict().items():
        assert torch.equal(fresh.crd.state_dict()[key], value), key


@pytest.mark.parametrize("name, params", [("dkd", {}), ("crd", {"nce_k": 16}), ("crd_kd", {"nce_k": 16})])
def test_teacher_frozen_while_training(name, params):
    images, labels, _ = train_set()
    d = make(name, **params)
    d.train()
    teacher_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in d.student.state_dict().items()}
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        rows = torch.arange(step * 8, step * 8 + 8)
        _, losses, *_ = d.forward_train(images[rows], labels[rows], info(epoch=25, indices=rows))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    assert not d.teacher.training
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), f"teacher {k} changed"
    assert any(not torch.equal(v, student_before[k]) for k, v in d.student.state_dict().items())


# --------------------------------------------------------------------------------------------- CLI

@pytest.mark.checkout
@pytest.mark.slow
def test_dkd_crd_run_through_the_cli(tmp_path):
    from mixdistill.cli import main
    from mixdistill.data.synthetic import write_fashion_like

    root = write_fashion_like(tmp_path / "data", 800, 200)
    out = tmp_path / "runs"
    common = [f"data.root={root}", f"output_dir={out}", "model.student=cnn5_w8", "optim.epochs=1",
              "train.progress=false", "train.tensorboard=false"]
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *common, "name=t", "--quiet"]) == 0
    teacher = out / "t" / "last.pt"
    for method, extra in (("dkd", []), ("crd", ["method.nce_k=256"]), ("crd_kd", ["method.nce_k=256"])):
        assert main(["train", "configs/fmnist_cpu.yaml", *common, f"model.teacher_checkpoint={teacher}",
                     "data.train_subset=null", f"method={method}", *extra, f"name={method}", "--quiet"]) == 0
        summary = json.loads((out / method / "summary.json").read_text())
        assert summary["method"] == method and summary["last_acc"] is not None
    state = torch.load(out / "crd" / "last.pt", map_location="cpu", weights_only=False)
    memory = state["distiller_extra"]["crd"]
    assert memory["memory.student_bank"].shape == (800, 128) and memory["memory.z_student"].item() > 0


def test_more_negatives_than_images_is_said():
    with pytest.warns(UserWarning, match=f"crd: method.nce_k=64 negatives per sample from {N_DATA} training images "
                                         "repeat each image about 2 times"):
        make("crd", nce_k=64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        make("crd", nce_k=N_DATA - 1)
