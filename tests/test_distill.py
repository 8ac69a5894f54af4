"""Offline distillers: hand-computed losses, which tensors carry gradient, a frozen teacher."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixdistill.augment import make_augment
from mixdistill.distill import StepInfo, TrainSet
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, mixstd_terms, soft_cross_entropy, std_normalized
from mixdistill.methods import METHODS


def softmax(xs):
    e = [math.exp(x) for x in xs]
    return [v / sum(e) for v in e]


# Closed forms written with torch primitives only (not mixdistill.losses), for the distiller-level checks.

def log_softmax(z):
    return z - z.logsumexp(1, keepdim=True)


def kl_batchmean(t, s):
    """KL(softmax(t) || softmax(s)), summed over classes, mean over samples."""
    log_t, log_s = log_softmax(t), log_softmax(s)
    return (log_t.exp() * (log_t - log_s)).sum(1).mean()


def hard_ce(z, y):
    return -log_softmax(z).gather(1, y[:, None]).mean()


def mixed_targets(record, y, classes=5):
    """Soft labels of a mixing record: sum_k weights[:, k] * onehot(y[sources[:, k]])."""
    return sum(record.weights[:, k:k + 1] * nn.functional.one_hot(y[record.sources[:, k]], classes).float()
               for k in range(record.sources.shape[1]))


def unbiased_std(z):
    return ((z - z.mean(1, keepdim=True)) ** 2).sum(1, keepdim=True).div(z.shape[1] - 1).sqrt()


def test_mixstd_hand_computed():
    # student [1, 2, 3]: unbiased std 1; teacher [0, 0, 3]: mean 1, unbiased var (1 + 1 + 4) / 2 = 3
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[0.0, 0.0, 3.0]])
    targets = torch.tensor([[0.5, 0.5, 0.0]])
    ce, kl = mixstd_terms(s, t, targets, eps=0.0)
    p_s = softmax([1.0, 2.0, 3.0])
    p_t = softmax([0.0, 0.0, 3.0 / math.sqrt(3.0)])
    expected_ce = -(0.5 * math.log(p_s[0]) + 0.5 * math.log(p_s[1]))
    expected_kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))  # no T^2
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert kl.item() == pytest.approx(expected_kl, rel=1e-6)


def test_mixstd_hand_computed_std_not_one():
    # Rows whose unbiased std is not 1, so the soft-label CE on raw logits differs from the one on z / std:
    # student [0, 2, 4]: mean 2, var (4 + 0 + 4) / 2 = 4, std 2   -> [0, 1, 2]
    # student [3, 0, 0]: mean 1, var (4 + 1 + 1) / 2 = 3, std √3  -> [√3, 0, 0]
    # teacher [1, 1, 4]: mean 2, var (1 + 1 + 4) / 2 = 3, std √3  -> [1, 1, 4] / √3
    # teacher [0, 0, 1/2]: mean 1/6, var (1/36 + 1/36 + 4/36) / 2 = 1/12, std 1/(2√3) -> [0, 0, √3]
    r3 = math.sqrt(3.0)
    s = torch.tensor([[0.0, 2.0, 4.0], [3.0, 0.0, 0.0]])
    t = torch.tensor([[1.0, 1.0, 4.0], [0.0, 0.0, 0.5]])
    targets = [[0.25, 0.0, 0.75], [0.0, 0.6, 0.4]]
    s_norm = [[0.0, 1.0, 2.0], [r3, 0.0, 0.0]]
    t_norm = [[1 / r3, 1 / r3, 4 / r3], [0.0, 0.0, r3]]
    expected_ce = sum(-sum(q * math.log(p) for q, p in zip(row, softmax(z)) if q)
                      for row, z in zip(targets, s_norm)) / 2
    raw_ce = sum(-sum(q * math.log(p) for q, p in zip(row, softmax(z.tolist())) if q)
                 for row, z in zip(targets, s)) / 2
    expected_kl = sum(sum(pt * math.log(pt / ps) for pt, ps in zip(softmax(zt), softmax(zs)))
                      for zt, zs in zip(t_norm, s_norm)) / 2
    assert abs(raw_ce - expected_ce) > 0.1  # the case tells the two apart
    ce, kl = mixstd_terms(s, t, torch.tensor(targets), eps=0.0)
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert kl.item() == pytest.approx(expected_kl, rel=1e-6)


def test_mixstd_is_batchmean_and_gradient_flows_through_student_std():
    torch.manual_seed(0)
    s = torch.randn(4, 6, requires_grad=True)
    t = torch.randn(4, 6)
    targets = torch.softmax(torch.randn(4, 6), 1)
    _, kl = mixstd_terms(s, t, targets)
    per_sample = [mixstd_terms(s[i:i + 1], t[i:i + 1], targets[i:i + 1])[1] for i in range(4)]
    assert kl.item() == pytest.approx(sum(x.item() for x in per_sample) / 4, rel=1e-5)
    kl.backward()
    grad_through_std = s.grad.clone()
    s.grad = None
    detached = s / s.std(1, keepdim=True, unbiased=True).detach()
    from mixdistill.losses import kl_div
    kl_div(detached, std_normalized(t), 1.0).backward()
    assert not torch.allclose(grad_through_std, s.grad), "std must carry gradient for the student"


class TinyNet(nn.Module):
    """A BN net small enough to reason about, with the zoo's interface."""

    def __init__(self, classes=5, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)
        self.feature_dim, self.num_classes = 4, classes

    def forward_features(self, x):
        m = torch.relu(self.bn(self.conv(x)))
        pooled = m.mean((2, 3))
        return self.fc(pooled), {"pooled": pooled, "maps": [m]}

    def forward(self, x):
        return self.forward_features(x)[0]


def make(name, augment=None, **params):
    cls = METHODS[name]
    d = cls(TinyNet(seed=1), TinyNet(seed=2) if cls.needs_teacher else None, cls.Params(**params))
    aug = augment if augment is not None else cls.default_augment
    d.set_augment(make_augment(aug) if isinstance(aug, str) else aug)
    return d


def info(seed=0, indices=None):
    return StepInfo(epoch=0, step=0, epochs=1, generator=torch.Generator().manual_seed(seed), indices=indices)


def batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_ce_with_mixup_equals_lambda_weighted_ce():
    x, y = batch()
    d = make("ce", "mixup")
    logits, losses, *_ = d.forward_train(x, y, info(3))
    record = make_augment("mixup")(x, y, generator=torch.Generator().manual_seed(3))
    a, b, lam = record.hard_pairs()
    ce = nn.functional.cross_entropy
    expected = (lam * ce(logits, y[a], reduction="none") + (1 - lam) * ce(logits, y[b], reduction="none")).mean()
    assert losses["ce"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_on_mixed_batch_uses_soft_labels_and_teacher_on_same_images():
    x, y = batch()
    d = make("mix_kd", temperature=1.0)
    logits, losses, *_ = d.forward_train(x, y, info(5))
    record = make_augment("mixup_two_perm")(x, y, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        t = d.teacher(record.images)
    assert losses["kd"].item() == pytest.approx(0.9 * kd_loss(logits, t, 1.0).item(), rel=1e-5)
    assert losses["ce"].item() == pytest.approx(
        0.1 * soft_cross_entropy(logits, record.soft_targets(y, 5)).item(), rel=1e-5)


@pytest.mark.parametrize("name, temperature", [("kd", None), ("kd", 2.0), ("mix_kd", None), ("mix_kd", 3.0)])
def test_kd_distiller_terms_at_temperature(name, temperature):
    # T^2 * batchmean KL(softmax(t/T) || softmax(s/T)) at T != 1 (default 4): a T ignored would give T = 1
    x, y = batch()
    d = make(name, **({} if temperature is None else {"temperature": temperature}))
    T = 4.0 if temperature is None else temperature
    logits, losses, *_ = d.forward_train(x, y, info(5))
    if name == "mix_kd":
        record = make_augment("mixup_two_perm")(x, y, generator=torch.Generator().manual_seed(5))
        images, targets = record.images, mixed_targets(record, y)
    else:
        images, targets = x, nn.functional.one_hot(y, 5).float()
    with torch.no_grad():
        s, t = d.student(images), d.teacher(images)
    assert torch.allclose(logits, s, atol=1e-6)
    expected_kd = 0.9 * T**2 * kl_batchmean(t / T, s / T)
    assert losses["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    assert abs(expected_kd.item() - 0.9 * kl_batchmean(t, s).item()) > 1e-3 * expected_kd.item()
    expected_ce = 0.1 * -(targets * log_softmax(s)).sum(1).mean()
    assert losses["ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)


@pytest.mark.parametrize("weights", [{}, {"ce_weight": 0.3, "kd_weight": 2.0}])
def test_mixstd_distiller_terms_on_the_mixed_batch(weights):
    # Both networks on the two-permutation batch, logits divided by their own unbiased std (eps 1e-7),
    # each term times its own weight (defaults 0.1 CE / 0.9 KL).
    x, y = batch()
    d = make("mixstd", **weights)
    ce_w, kd_w = weights.get("ce_weight", 0.1), weights.get("kd_weight", 0.9)
    logits, losses, *_ = d.forward_train(x, y, info(5))
    record = make_augment("mixup_two_perm")(x, y, generator=torch.Generator().manual_seed(5))
    assert (record.images - x).abs().max() > 0.1  # a real mix: the clean batch gives another teacher
    with torch.no_grad():
        s, t = d.student(record.images), d.teacher(record.images)
    assert torch.allclose(logits, s, atol=1e-6)
    std_s, std_t = unbiased_std(s), unbiased_std(t)
    assert ((std_s - 1).abs() > 0.05).all()  # raw and std-normalised logits differ
    s_n, t_n = s / (std_s + 1e-7), t / (std_t + 1e-7)
    expected_ce = -(mixed_targets(record, y) * log_softmax(s_n)).sum(1).mean()
    expected_kl = kl_batchmean(t_n, s_n)
    assert losses["ce"].item() == pytest.approx(ce_w * expected_ce.item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(kd_w * expected_kl.item(), rel=1e-5)
    # the terms are far enough apart that swapped weights cannot pass
    assert abs(ce_w * expected_ce.item() - kd_w * expected_ce.item()) > 1e-3


def test_kd_view_terms():
    x, y = batch()
    d = make("kd_view", make_augment("flip", p=1.0))  # a deterministic view: every image flipped
    d.train()
    logits, losses, *_ = d.forward_train(x, y, info())
    assert set(losses) == {"ce", "kd", "kd_view"}
    with torch.no_grad():
        t_clean, t_view = d.teacher(x), d.teacher(x.flip(3))
        s_clean, s_view = d.student(x), d.student(x.flip(3))  # train mode: each batch its own BN stats
    assert losses["ce"].item() == pytest.approx(0.1 * nn.functional.cross_entropy(s_clean, y).item(), rel=1e-5)
    assert losses["kd"].item() == pytest.approx(0.9 * kd_loss(s_clean, t_clean, 4.0).item(), rel=1e-5)
    assert losses["kd_view"].item() == pytest.approx(0.9 * kd_loss(s_view, t_view, 4.0).item(), rel=1e-5)
    assert torch.allclose(logits, s_clean, atol=1e-6)
    # the optional mixed-label CE on the view (ablation) appears only when asked for
    _, losses, *_ = make("kd_view", "cutmix", aug_ce_weight=0.5).forward_train(x, y, info())
    assert "ce_view" in losses


def test_kd_view_with_cutmix_pick_reuses_pool_teacher_logits(monkeypatch):
    x, y = batch()
    d = make("kd_view", make_augment("cutmix_pick", criterion="teacher_entropy"))
    calls = []
    original = d.teacher_logits
    monkeypatch.setattr(d, "teacher_logits", lambda images: calls.append(images.shape[0]) or original(images))
    d.forward_train(x, y, info())
    assert calls == [8], "the picked images' teacher logits must come from the pool, not a second pass"


def test_das_kd_with_fixed_inputs_passes_print_config_as_it_trains(tmp_path):
    """--print-config built the method as if the loader always cropped: das_kd's cache refused a config it trains."""
    from mixdistill.config import load_config
    from mixdistill.engine.build import check_buildable
    from mixdistill.errors import ConfigError
    from mixdistill.models import create_model

    torch.save({"model": create_model("cnn5_w16", num_classes=10, in_channels=1).state_dict(), "arch": "cnn5_w16"},
               tmp_path / "t.pt")
    base = ["method=das_kd", "data.dataset=fashion_mnist", "model.student=cnn5_w8",
            f"model.teacher_checkpoint={tmp_path / 't.pt'}", "train.device=cpu"]
    fixed = load_config(None, base + ["data.crop_padding=0", "data.flip=false"])
    check_buildable(fixed)
    with pytest.raises(ConfigError, match="needs fixed inputs"):
        check_buildable(load_config(None, base))


def test_das_kd_element_mean_is_one_over_c_of_batchmean():
    x, y = batch()
    kw = dict(cache_teacher=False)
    mean = make("das_kd", **kw).forward_train(x, y, info())[1]["kd"]
    bm = make("das_kd", kl_reduction="batchmean", **kw).forward_train(x, y, info())[1]["kd"]
    assert bm.item() == pytest.approx(5 * mean.item(), rel=1e-5)
    # and the published formula: g * T^2 * mean KL, (1 - g) * CE
    d = make("das_kd", **kw)
    logits, losses, *_ = d.forward_train(x, y, info())
    with torch.no_grad():
        t = d.teacher(x)
    p_t, logp_s = torch.softmax(t / 20, 1), torch.log_softmax(logits / 20, 1)
    elementwise = (p_t * (p_t.log() - logp_s)).mean()
    assert losses["kd"].item() == pytest.approx(0.5 * 400 * elementwise.item(), rel=1e-4)


def _trainset(x, y, augmented=False):
    idx = torch.arange(len(y))
    return TrainSet(num_samples=len(y), num_classes=5,
                    clean_batches=lambda: iter([(x[:5], y[:5], idx[:5]), (x[5:], y[5:], idx[5:])]),
                    augmented_by_loader=augmented)


def test_das_kd_caches_teacher_logits_once():
    x, y = batch()
    d = make("das_kd")
    d.prepare(_trainset(x, y))
    with torch.no_grad():
        assert torch.allclose(d.cached_logits, d.teacher(x), atol=1e-6)
    d.teacher.fc.weight.data.zero_()  # a later teacher change must not matter: the cache is used
    order = torch.tensor([3, 0, 7, 1])
    logits, losses, *_ = d.forward_train(x[order], y[order], info(indices=order))
    # a fresh distiller's teacher has the original weights: equal loss proves the cache was used
    _, uncached, *_ = make("das_kd", cache_teacher=False).forward_train(x[order], y[order], info())
    assert losses["kd"].item() == pytest.approx(uncached["kd"].item(), rel=1e-5)
    with pytest.raises(ConfigError, match="crop_padding=0"):
        make("das_kd").prepare(_trainset(x, y, augmented=True))


@pytest.mark.parametrize("params", [{}, {"gamma": 0.3}, {"gamma": 0.3, "cache_teacher": False}])
def test_das_kd_terms_hand_computed(params):
    # g * T^2 * element-mean KL at T = 20 and (1 - g) * CE, on the cached and the uncached path
    x, y = batch()
    d = make("das_kd", **params)
    g = params.get("gamma", 0.5)
    if params.get("cache_teacher", True):
        d.prepare(_trainset(x, y))
    logits, losses, *_ = d.forward_train(x, y, info(indices=torch.arange(8)))
    with torch.no_grad():
        s, t = d.student(x), d.teacher(x)
    assert losses["ce"].item() == pytest.approx((1 - g) * hard_ce(s, y).item(), rel=1e-5)
    log_t, log_s = log_softmax(t / 20), log_softmax(s / 20)
    elementwise = (log_t.exp() * (log_t - log_s)).mean()
    assert losses["kd"].item() == pytest.approx(g * 400 * elementwise.item(), rel=1e-4)


class RecordingTeacher(nn.Module):
    """Wraps a teacher and records, at every forward, (inference mode on, grad enabled, self.training,
    the wrapped net's training)."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.feature_dim, self.num_classes = net.feature_dim, net.num_classes
        self.calls = []

    def _record(self):
        self.calls.append((torch.is_inference_mode_enabled(), torch.is_grad_enabled(), self.training,
                           self.net.training))

    def forward(self, x):
        self._record()
        return self.net(x)

    def forward_features(self, x):
        self._record()
        return self.net.forward_features(x)


@pytest.mark.parametrize("name, augment, params", [
    ("kd", None, {}), ("mix_kd", None, {}), ("mixstd", None, {}), ("kd_view", None, {}),
    ("kd_view", "cutmix_pick", {}), ("das_kd", None, {}), ("das_kd", None, {"cache_teacher": False}),
    ("dkd", None, {}), ("crd", None, {"nce_k": 8}), ("crd_kd", None, {"nce_k": 8}),
    ("crd_kd_view", None, {"nce_k": 8}), ("crd_kd_view", "cutmix_pick", {"nce_k": 8}),
])
def test_teacher_forward_in_inference_mode_and_eval_mode(name, augment, params):
    # Spec: the teacher is frozen: eval() always, no autograd, its forward in torch.inference_mode().
    x, y = batch(16)
    cls = METHODS[name]
    teacher = RecordingTeacher(TinyNet(seed=2))
    d = cls(TinyNet(seed=1), teacher, cls.Params(**params))
    aug = augment or cls.default_augment
    d.set_augment(make_augment(aug) if aug else None)
    idx = torch.arange(16)
    d.prepare(TrainSet(16, 5, lambda: iter([(x, y, idx)]), False))
    d.train()  # the trainer's call: the student trains, the teacher must stay in eval mode
    d.teacher.requires_grad_(True)  # even a teacher whose weights would take gradients records none
    for step in range(2):
        _, losses, *_ = d.forward_train(x, y, StepInfo(0, step, 1, torch.Generator().manual_seed(step), indices=idx))
        sum(losses.values()).backward()
    assert teacher.calls, "the teacher was never run"
    for inference, grad, training, net_training in teacher.calls:
        assert inference, "teacher forward outside torch.inference_mode"
        assert not grad, "teacher forward with autograd enabled"
        assert not training and not net_training, "teacher forward in train mode"
    assert all(p.grad is None for p in d.teacher.parameters())


def test_augment_that_needs_a_teacher_refused_for_a_method_without_one():
    d = METHODS["ce"](TinyNet(seed=1), None, METHODS["ce"].Params())
    with pytest.raises(ConfigError, match="cutmix_pick .*teacher.*method ce"):
        d.set_augment(make_augment("cutmix_pick", criterion="student_entropy"))
    assert d.augment is None
    d.set_augment(make_augment("cutmix"))  # other augmentations are fine
    d.forward_train(*batch(), info())


ALL = ["ce", "kd", "mix_kd", "kd_view", "mixstd", "das_kd"]


@pytest.mark.parametrize("name", ALL + [n for n in ("dkd", "crd", "crd_kd") if n in METHODS])
def test_teacher_frozen_and_student_learns(name):
    x, y = batch(16)
    d = make(name, **({"cache_teacher": False} if name == "das_kd" else {}))
    if hasattr(d, "prepare"):
        idx = torch.arange(16)
        d.prepare(TrainSet(16, 5, lambda: iter([(x, y, idx)]), False))
    d.train()
    if d.teacher is not None:
        before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in d.student.state_dict().items()}
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.1)
    for step in range(3):
        _, losses, *_ = d.forward_train(x, y, StepInfo(0, step, 1, torch.Generator().manual_seed(step),
                                                   indices=torch.arange(16)))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    if d.teacher is not None:
        assert not d.teacher.training
        for k, v in d.teacher.state_dict().items():
            assert torch.equal(v, before[k]), f"teacher {k} changed"
        assert all(p.grad is None for p in d.teacher.parameters())
        assert not any(n.startswith("teacher.") for n, p in d.named_parameters()
                       if any(p is q for q in d.learnable_parameters()))
    assert any(not torch.equal(v, student_before[k]) for k, v in d.student.state_dict().items())


def test_pmu_reports_mixed_fraction():
    x, y = batch(64)
    d = make("mixstd", make_augment("pmu", p=0.5, sampling="exact"))
    out = d.forward_train(x, y, info())
    assert out.stats["mixed_fraction"] == pytest.approx(32 / 64)


@pytest.fixture(scope="module")
def cli_teacher(tmp_path_factory):
    from mixdistill.cli import main
    from mixdistill.data.synthetic import write_fashion_like

    base = tmp_path_factory.mktemp("cli")
    root = write_fashion_like(base / "data", 800, 200)
    common = [f"data.root={root}", f"output_dir={base / 'runs'}", "model.student=cnn5_w8", "optim.epochs=1",
              "train.progress=false", "train.tensorboard=false", "train.device=cpu", "data.eval_batch_size=200"]
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *common, "name=teacher", "--quiet"]) == 0
    return common, base / "runs" / "teacher" / "last.pt"


@pytest.mark.checkout
@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["method=ce", "augment=cutmix", "augment.partner=permutation"],   # das2020 CutMix teacher
    ["method=ce", "augment=mixup_two_perm"],                           # choi2023 mixup teacher
    ["method=kd", "augment=mixup"],
    ["method=mix_kd", "method.temperature=1"],
    ["method=kd_view", "augment=cutmix_pick", "augment.criterion=teacher_entropy"],
    ["method=kd_view", "augment=autoaugment"],
    ["method=mixstd", "augment=pmu", "augment.sampling=exact"],
    ["method=das_kd", "data.crop_padding=0", "data.flip=false"],
])
def test_method_runs_through_the_cli(cli_teacher, overrides):
    import json

    from mixdistill.cli import main

    common, teacher = cli_teacher
    name = "_".join(o.split("=")[1] for o in overrides[:2]).replace(".", "")
    assert main(["train", "configs/fmnist_cpu.yaml", *common, f"model.teacher_checkpoint={teacher}",
                 "data.train_subset=400", f"name={name}", *overrides, "--quiet"]) == 0
    summary = json.loads((teacher.parent.parent / name / "summary.json").read_text())
    assert summary["last_acc"] is not None and summary["method"] == overrides[0].split("=")[1]
