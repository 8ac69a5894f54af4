"""mixdistill.analysis: every measure against brute-force or hand-computed values, and the analyze command
end to end on a tiny trained run."""

from __future__ import annotations

import argparse
import json
import shutil
import warnings
import math
import time

import numpy as np
import pytest
import torch

from mixdistill.analysis import (TStddev, adversarial_accuracy, agreement, calibration, class_discrimination,
                                 correlations, discrimination, expected_calibration_error, fgsm, human_label_kl,
                                 load_eval_set, load_human_labels, logit_std, maximum_calibration_error,
                                 negative_log_likelihood, output_entropy, pgd, read_cifar10_1, reliability_bins,
                                 t_stddev, teacher_statistics)
from mixdistill.errors import CheckpointError, ConfigError, DataError, UnknownNameError


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread. On a busy 2-core machine PyTorch's spinning thread pool made
    these tests 10-100x slower (measured: the attack-ordering test 31 s with 2 threads, 0.24 s with 1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# ------------------------------------------------------------------------------ class discrimination


def _notebook_cd(preds: np.ndarray, labels: np.ndarray):
    """das2020's discrim.ipynb, transcribed loop for loop (O(N^2))."""
    z = 0.5 * (preds - np.mean(preds, 0)) / np.std(preds, 0)
    bucket: dict[int, list] = {}
    for i in range(len(z)):
        bucket.setdefault(int(labels[i]), []).append(z[i])

    def cos(a, b):
        return np.dot(a, b) / (np.sqrt(a.dot(a)) * np.sqrt(b.dot(b)))

    def intra(b):
        s = 0
        for i in range(len(b) - 1):
            for j in range(i, len(b)):
                s += cos(b[i], b[j])
        return s / (len(b) * (len(b) - 1)) * 2

    def inter(b1, b2):
        s = 0
        for i in range(len(b1)):
            for j in range(i + 1, len(b2)):
                s += cos(b1[i], b2[j])
        return s / (len(b1) * len(b2))

    C = len(bucket)
    term1 = sum(intra(bucket[c]) for c in bucket) / C
    term2 = 0
    for i in range(C - 1):
        for j in range(i + 1, C):
            term2 += inter(bucket[i], bucket[j])
    term2 = term2 / (C * (C - 1)) * 2
    return (term1 - term2) / preds.shape[1] ** 0.5, term1, term2


def _pairwise_correct_cd(preds: np.ndarray, labels: np.ndarray):
    """The definition read literally: mean cosine over distinct pairs in a class, over all cross pairs."""
    z = 0.5 * (preds - preds.mean(0)) / preds.std(0)
    u = z / np.linalg.norm(z, axis=1, keepdims=True)
    classes = sorted(set(labels.tolist()))
    intra = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        vals = [u[i] @ u[j] for i in idx for j in idx if i != j]
        intra.append(np.mean(vals))
    inter = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ia, ib = np.flatnonzero(labels == classes[a]), np.flatnonzero(labels == classes[b])
            inter.append(np.mean([u[i] @ u[j] for i in ia for j in ib]))
    return (np.mean(intra) - np.mean(inter)) / preds.shape[1] ** 0.5, np.mean(intra), np.mean(inter)


def _random_problem(seed, n=80, d=6, c=4):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    labels[:c] = np.arange(c)  # every class present
    labels[rng.permutation(n)[:2]] = c - 1  # unbalanced
    preds = rng.dirichlet(np.ones(d) * 0.7, size=n)  # softmax-like rows
    return preds, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cd_as_published_matches_notebook_loops(seed):
    preds, labels = _random_problem(seed)
    want_cd, want_intra, want_inter = _notebook_cd(preds, labels)
    r = class_discrimination(preds, labels, variant="as_published")
    assert r["cd"] == pytest.approx(want_cd, rel=1e-10, abs=1e-12)
    assert r["intra"] == pytest.approx(want_intra, rel=1e-10)
    assert r["inter"] == pytest.approx(want_inter, rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cd_correct_matches_pairwise_loops(seed):
    preds, labels = _random_problem(seed)
    want_cd, want_intra, want_inter = _pairwise_correct_cd(preds, labels)
    r = class_discrimination(torch.from_numpy(preds).float(), torch.from_numpy(labels), variant="correct")
    assert r["cd"] == pytest.approx(want_cd, rel=1e-5, abs=1e-7)
    assert r["intra"] == pytest.approx(want_intra, rel=1e-5)
    assert r["inter"] == pytest.approx(want_inter, rel=1e-5, abs=1e-7)
    assert r["dim"] == preds.shape[1] and r["classes"] == 4


def test_cd_as_published_blocked_computation(monkeypatch):
    """The memory-bounded blocks of positions give the same inter term as one block."""
    preds, labels = _random_problem(5, n=120, d=5, c=6)
    whole = class_discrimination(preds, labels, variant="as_published")
    monkeypatch.setattr(discrimination, "_BLOCK_ELEMENTS", 6 * 5 * 3)  # 3 positions per block
    blocked = class_discrimination(preds, labels, variant="as_published")
    assert blocked["inter"] == pytest.approx(whole["inter"], rel=1e-12, abs=1e-15)
    assert blocked["inter"] == pytest.approx(_notebook_cd(preds, labels)[2], rel=1e-10, abs=1e-12)


def test_cd_published_intra_is_correct_plus_two_over_n():
    preds, labels = _random_problem(3)
    a = class_discrimination(preds, labels, "correct")
    b = class_discrimination(preds, labels, "as_published")
    n = torch.bincount(torch.from_numpy(labels)).double()
    torch.testing.assert_close(b["intra_per_class"], a["intra_per_class"] + 2 / n)


def test_cd_label_order_and_constant_dimension():
    preds, labels = _random_problem(4)
    preds = np.concatenate([preds, np.full((len(preds), 1), 0.3)], 1)  # a dimension with std 0
    r = class_discrimination(preds, labels + 10)  # labels need not start at 0
    assert math.isfinite(r["cd"])
    ref = _pairwise_correct_cd(preds[:, :-1], labels)  # the constant dimension contributes nothing...
    assert r["intra"] == pytest.approx(ref[1], rel=1e-10)
    assert r["cd"] == pytest.approx(ref[0] * math.sqrt(6) / math.sqrt(7), rel=1e-10)  # ...but counts in D
    with pytest.raises(ValueError, match="variant"):
        class_discrimination(preds, labels, variant="typo")


def test_cd_separable_classes_score_higher():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(500) % 5
    centers = torch.randn(5, 16, generator=g) * 3
    tight = centers[labels] + 0.1 * torch.randn(500, 16, generator=g)
    loose = centers[labels] + 3.0 * torch.randn(500, 16, generator=g)
    assert class_discrimination(tight, labels)["cd"] > class_discrimination(loose, labels)["cd"] > 0


def test_cd_timing_10000_by_100():
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(torch.randn(10_000, 100, generator=g), 1)
    y = torch.randint(0, 100, (10_000,), generator=g)
    times = {}
    for variant in ("correct", "as_published"):
        start = time.perf_counter()
        class_discrimination(x, y, variant=variant)
        times[variant] = time.perf_counter() - start
    print(f"class discrimination, 10,000 x 100, 100 classes: {times}")
    assert max(times.values()) < 5.0


# ------------------------------------------------------------------------------------- calibration


def test_ece_mce_nll_hand_computed():
    # 5 bins (0, .2], (.2, .4], (.4, .6], (.6, .8], (.8, 1]
    probs = torch.tensor([[0.9, 0.1], [0.85, 0.15], [0.3, 0.7], [0.45, 0.55], [0.5, 0.5]])
    labels = torch.tensor([0, 1, 1, 0, 0])
    # confidences .9 .85 .7 .55 .5 ; predictions 0 0 1 1 0 ; correct 1 0 1 0 1
    # bin (.8,1]: 2 samples, acc .5, conf .875 -> gap .375
    # bin (.6,.8]: 1 sample,  acc 1,  conf .7   -> gap .3
    # bin (.4,.6]: 2 samples, acc .5, conf .525 -> gap .025
    ece = 2 / 5 * 0.375 + 1 / 5 * 0.3 + 2 / 5 * 0.025
    assert expected_calibration_error(probs, labels, bins=5) == pytest.approx(ece)
    assert maximum_calibration_error(probs, labels, bins=5) == pytest.approx(0.375)
    nll = -(math.log(0.9) + math.log(0.15) + math.log(0.7) + math.log(0.45) + math.log(0.5)) / 5
    assert negative_log_likelihood(probs, labels) == pytest.approx(nll)
    c = calibration(probs, labels, bins=5)
    assert c["ece"] == pytest.approx(ece) and c["accuracy"] == pytest.approx(0.6)
    r = reliability_bins(probs, labels, bins=5)
    assert r["count"].tolist() == [0, 0, 2, 1, 2]
    # logits, or labels outside the classes, are refused rather than scored
    with pytest.raises(ValueError, match="softmax the logits first"):
        expected_calibration_error(torch.tensor([[2.0, -1.0], [0.5, 0.3]]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1, got 0\.\.2"):
        expected_calibration_error(probs, torch.tensor([0, 1, 2, 0, 0]))
    expected_calibration_error(torch.softmax(torch.randn(64, 10).bfloat16(), 1), torch.zeros(64))  # bf16 rows


def test_ece_bins_are_right_closed():
    probs = torch.tensor([[0.2, 0.2, 0.2, 0.2, 0.2], [0.4, 0.3, 0.3, 0.0, 0.0]], dtype=torch.float64)
    r = reliability_bins(probs, torch.tensor([0, 1]), bins=5)
    assert r["count"].tolist() == [1, 1, 0, 0, 0]  # 0.2 in (0, .2], 0.4 in (.2, .4]
    assert expected_calibration_error(torch.eye(3), torch.arange(3)) == 0.0  # confident and right
    # a confidence on an edge in the probabilities' own precision closes its bin in every dtype (float32(0.2) is
    # above the float64 edge 0.2 and fell into (0.2, 0.4])
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        assert reliability_bins(probs.to(dtype), torch.tensor([0, 1]), bins=5)["count"].tolist() == [1, 1, 0, 0, 0]
    close = [[0.4000000001, 0.3999999999, 0.2]]  # a list is read as float64, as Python's floats are
    assert reliability_bins(close, [0], bins=5)["count"].tolist() == [0, 0, 1, 0, 0]
    probs = torch.tensor([[0.6, 0.4]] * 3 + [[0.9, 0.1]])
    assert expected_calibration_error(probs, torch.tensor([0, 1, 1, 0]), bins=5) == pytest.approx(0.225, abs=1e-7)


def test_reliability_diagram_png(tmp_path):
    from mixdistill.analysis import plot_reliability_diagram

    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(2 * torch.randn(300, 10, generator=g), 1)
    labels = torch.randint(0, 10, (300,), generator=g)
    path = plot_reliability_diagram(probs, labels, tmp_path / "r.png", bins=15)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------- teacher stats


def test_t_stddev_hand_made_sequence():
    # 2 steps per group; each step has an "original" and an "augmented" batch
    steps = [
        [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])],  # group 0
        [torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0]])],  # group 0
        [torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]])],  # group 1
        [torch.tensor([[0.5, 0.5]]), torch.tensor([[0.5, 0.5]])],  # group 1
        [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]])],  # group 2
        [torch.tensor([[0.2, 0.8]]), torch.tensor([[0.2, 0.8]])],  # group 2
        [torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 0.0]])],  # incomplete: dropped
    ]
    r = t_stddev(steps, steps_per_group=2)
    # group means: rows of group 0 = 5 rows -> class 0: (1+0+1+1+1)/5 = .8 ; group 1: .5 ; group 2: .1
    means0 = torch.tensor([0.8, 0.5, 0.1], dtype=torch.float64)
    assert r["groups"] == 3
    torch.testing.assert_close(r["group_means"][:, 0], means0)
    std0 = float(means0.std())  # unbiased, as torch.std in the released code
    std1 = float((1 - means0).std())
    assert r["t_stddev"] == pytest.approx((std0 + std1) / 2)
    assert r["t_stddev"] == pytest.approx(np.std([0.8, 0.5, 0.1], ddof=1))
    acc = TStddev(steps_per_group=5)
    acc.add(torch.ones(1, 3) / 3)
    acc.end_step()
    assert math.isnan(acc.value())  # no group yet


class _Fixed(torch.nn.Module):
    """A 'teacher' whose logits are a fixed linear map of the mean pixel."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([2.0, -1.0, 0.5]))

    def forward(self, x):
        return x.mean((1, 2, 3))[:, None] * self.w


def test_teacher_statistics_matches_manual():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4, 1, 3, 3, generator=g), torch.zeros(4, dtype=torch.long)) for _ in range(12)]
    teacher = _Fixed()

    def negate(images, labels, *, generator):  # a deterministic "view"
        from mixdistill.augment import MixedBatch

        rows = torch.arange(len(images))[:, None]
        return MixedBatch(-images, rows, torch.ones(rows.shape))

    r = teacher_statistics(teacher, batches, negate, steps_per_group=5)
    assert r["steps"] == 12 and r["groups"] == 2
    with torch.no_grad():
        steps = [[torch.softmax(teacher(x), 1), torch.softmax(teacher(-x), 1)] for x, _ in batches]
    assert r["t_stddev"] == pytest.approx(t_stddev(steps, 5)["t_stddev"], rel=1e-6)
    ent = lambda p: float(-(p * p.log()).sum(1).mean())  # noqa: E731
    assert r["entropy_original"] == pytest.approx(ent(torch.cat([s[0] for s in steps])), rel=1e-5)
    assert r["entropy_augmented"] == pytest.approx(ent(torch.cat([s[1] for s in steps])), rel=1e-5)
    plain = teacher_statistics(teacher, batches, None)
    assert plain["entropy_augmented"] is None and plain["groups"] == 2
    # the teacher runs in eval mode (a dropout left on would draw a new teacher every step) and is put back
    dropping = torch.nn.Sequential(torch.nn.Dropout(0.5), _Fixed()).train()
    r = teacher_statistics(dropping, batches, negate, steps_per_group=5)
    assert r["t_stddev"] == pytest.approx(t_stddev(steps, 5)["t_stddev"], rel=1e-6) and dropping.training


def test_correlations_and_scatter(tmp_path):
    from mixdistill.analysis import plot_tstddev_vs_loss

    x, y = [0.1, 0.2, 0.3, 0.4], [1.0, 1.5, 1.7, 3.0]
    c = correlations(x, y)
    assert c["spearman"][0] == pytest.approx(1.0) and c["kendall"][0] == pytest.approx(1.0)
    assert c["pearson"][0] == pytest.approx(np.corrcoef(x, y)[0, 1])
    path = plot_tstddev_vs_loss(x, y, ["a", "b", "c", "d"], tmp_path / "s.png")
    assert path.stat().st_size > 1000
    # Spearman's p at few points is exact, as the studies' rank test gives it (the figure's legend printed scipy's
    # t approximation, 0.0053 where the report said 0.0083); by brute force over the 7! orders
    import itertools

    from scipy import stats

    x, y = [1, 2, 3, 4, 5, 6, 7], [2, 1, 3, 5, 4, 7, 6]
    rho = float(stats.spearmanr(x, y).statistic)
    rhos = [float(stats.spearmanr(x, perm).statistic) for perm in itertools.permutations(y)]
    assert correlations(x, y)["spearman"] == pytest.approx((rho, sum(abs(r) >= abs(rho) - 1e-9 for r in rhos) / 5040))


# ------------------------------------------------------------------------------------- smoothness


def test_smoothness_measures():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(logit_std(logits), torch.tensor([0.0, float(np.std([1, 2, 3, 4], ddof=1))],
                                                               dtype=torch.float64))
    assert output_entropy(logits)[0].item() == pytest.approx(math.log(4))
    same = agreement(logits, logits)
    assert same["top1_agreement"] == 1.0 and same["kl"] == pytest.approx(0.0, abs=1e-12)
    other = agreement(torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]]))
    pt = torch.softmax(torch.tensor([0.0, 2.0]), 0)
    ps = torch.softmax(torch.tensor([2.0, 0.0]), 0)
    assert other["top1_agreement"] == 0.0
    assert other["kl"] == pytest.approx(float((pt * (pt.log() - ps.log())).sum()))
    # an asymmetric pair: KL(p_t || p_s) differs from KL(p_s || p_t), so the direction is checked
    s_logits, t_logits = torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]])
    ps, pt = torch.softmax(s_logits[0], 0), torch.softmax(t_logits[0], 0)
    forward, reverse = float((pt * (pt / ps).log()).sum()), float((ps * (ps / pt).log()).sum())
    assert abs(forward - reverse) > 0.1
    assert agreement(s_logits, t_logits)["kl"] == pytest.approx(forward)
    ps4, pt4 = torch.softmax(s_logits[0].double() / 4, 0), torch.softmax(t_logits[0].double() / 4, 0)  # T = 4, no T^2
    assert agreement(s_logits, t_logits, temperature=4.0)["kl"] == pytest.approx(float((pt4 * (pt4 / ps4).log()).sum()))


def test_tsne_plot(tmp_path):
    from mixdistill.analysis import plot_tsne, tsne_embedding

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(120) % 3
    feats = torch.randn(3, 8, generator=g)[labels] * 4 + torch.randn(120, 8, generator=g)
    emb, sub, idx = tsne_embedding(feats, labels, n=60, seed=0)
    assert emb.shape == (60, 2) and len(sub) == 60 and torch.equal(labels[idx], torch.from_numpy(sub))
    assert plot_tsne(emb, sub, tmp_path / "t.png", class_names=["a", "b", "c"]).stat().st_size > 1000


# ------------------------------------------------------------------------------------- robustness

MEAN, STD = (0.5,), (0.25,)


def _trained_linear():
    """A 2-class linear model on separable normalised 1x4x4 images, trained for a few hundred steps."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 2
    pixels = (0.5 + 0.08 * (2 * labels[:, None, None, None] - 1)
              + 0.05 * torch.randn(200, 1, 4, 4, generator=g)).clamp(0, 1)
    x = (pixels - MEAN[0]) / STD[0]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), labels).backward()
        opt.step()
    return model.eval(), x, labels


def test_fgsm_pgd_eps_zero_and_bounds():
    model, x, y = _trained_linear()
    assert torch.equal(fgsm(model, x, y, 0.0, mean=MEAN, std=STD), x)
    assert torch.equal(pgd(model, x, y, 0.0, mean=MEAN, std=STD), x)
    for adv in (fgsm(model, x, y, 0.05, mean=MEAN, std=STD), pgd(model, x, y, 0.05, mean=MEAN, std=STD, steps=7)):
        pix, pix0 = adv * STD[0] + MEAN[0], x * STD[0] + MEAN[0]
        assert float(pix.min()) >= -1e-6 and float(pix.max()) <= 1 + 1e-6
        assert float((pix - pix0).abs().max()) <= 0.05 + 1e-6


def test_adversarial_accuracy_ordering():
    model, x, y = _trained_linear()
    batches = [(x[i:i + 50], y[i:i + 50]) for i in range(0, 200, 50)]
    clean = float((model(x).argmax(1) == y).double().mean()) * 100
    assert clean > 95
    zero = adversarial_accuracy(model, batches, attack="fgsm", eps=0.0, mean=MEAN, std=STD)
    assert zero["accuracy"] == pytest.approx(clean) and zero["clean_accuracy"] == pytest.approx(clean)
    pgd_zero = adversarial_accuracy(model, batches, attack="pgd", eps=0.0, mean=MEAN, std=STD)
    assert pgd_zero["accuracy"] == pytest.approx(clean)
    f_acc = [adversarial_accuracy(model, batches, attack="fgsm", eps=e, mean=MEAN, std=STD)["accuracy"]
             for e in (0.0, 0.02, 0.05, 0.1, 0.2)]
    p_acc = [adversarial_accuracy(model, batches, attack="pgd", eps=e, mean=MEAN, std=STD, steps=10)["accuracy"]
             for e in (0.0, 0.02, 0.05, 0.1, 0.2)]
    print("FGSM", f_acc, "PGD", p_acc)
    assert all(a >= b for a, b in zip(f_acc, f_acc[1:]))
    assert all(a >= b for a, b in zip(p_acc, p_acc[1:]))
    assert all(p <= f for p, f in zip(p_acc, f_acc))
    assert f_acc[-1] < clean


# ---------------------------------------------------------------------------- human labels, data


def test_human_label_kl_and_shape_error(tmp_path):
    probs = torch.tensor([[0.5, 0.5], [0.9, 0.1]])
    human = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    want = (math.log(1 / 0.5) + 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)) / 2
    assert human_label_kl(probs, human) == pytest.approx(want)
    f = tmp_path / "h.npy"
    np.save(f, human.numpy())
    assert load_human_labels(f, 2, 2).shape == (2, 2)
    with pytest.raises(DataError, match=r"shape \[2, 2\].*needs \[10000, 10\]"):
        load_human_labels(f, 10000, 10)
    np.save(f, np.array([[3.0, 1.0], [2.0, 2.0]]))
    with pytest.raises(DataError, match="summing to 1"):
        load_human_labels(f, 2, 2)
    with pytest.raises(DataError, match="not found"):
        load_human_labels(tmp_path / "missing.npy", 2, 2)


def test_cifar10_1_reader(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    np.save(tmp_path / "cifar10.1_v6_data.npy", images)
    np.save(tmp_path / "cifar10.1_v6_labels.npy", labels)
    x, y = read_cifar10_1(tmp_path / "cifar10.1_v6_data.npy")
    assert x.dtype == torch.uint8 and x.shape == (7, 3, 32, 32)
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2)) and y.tolist() == labels.tolist()
    by_dir = load_eval_set(str(tmp_path))
    by_labels_file = load_eval_set(str(tmp_path / "cifar10.1_v6_labels.npy"))
    assert torch.equal(by_dir.images, x) and torch.equal(by_labels_file.labels, y)
    np.save(tmp_path / "cifar10.1_v6_labels.npy", labels[:5])
    with pytest.raises(DataError, match="expected 7 labels"):
        read_cifar10_1(tmp_path)
    np.save(tmp_path / "bad_data.npy", images.astype(np.float32))
    np.save(tmp_path / "bad_labels.npy", labels)
    with pytest.raises(DataError, match="uint8"):
        read_cifar10_1(tmp_path / "bad_data.npy")
    with pytest.raises(DataError, match="neither a dataset name"):
        load_eval_set(str(tmp_path / "nothing"))
    from mixdistill.data.synthetic import write_fashion_like

    idx = write_fashion_like(tmp_path / "fm", n_train=20, n_test=10)  # a named dataset's folder: the way to read it
    with pytest.raises(DataError, match=rf"it holds fashion_mnist: give --data fashion_mnist --data-root {idx}\)$"):
        load_eval_set(str(idx))


def test_image_folder_eval_set(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for c, name in enumerate(["airplane", "automobile"]):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(np.full((8, 8, 3), 40 * c + i, np.uint8)).save(tmp_path / split / name / f"{i}.png")
    s = load_eval_set(str(tmp_path))
    assert s.images.shape == (4, 3, 8, 8) and s.labels.tolist() == [0, 0, 1, 1]
    flat = load_eval_set(str(tmp_path / "test"))  # a plain folder of class folders
    assert torch.equal(flat.images, s.images)


# ------------------------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A CE teacher and a KD student from it, one epoch each on 800 synthetic images."""
    from mixdistill.cli import main
    from mixdistill.data.synthetic import write_fashion_like

    base = tmp_path_factory.mktemp("analysis_runs")
    root = write_fashion_like(base / "data", n_train=800, n_test=200)
    common = [f"data.root={root}", f"output_dir={base / 'runs'}", "data.batch_size=64", "data.eval_batch_size=200",
              "model.student=cnn5_w8", "optim.schedule=onecycle", "optim.milestones=[]", "optim.lr=0.05",
              "optim.epochs=1", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
              "train.precision=fp32", "train.threads=1", "--quiet"]
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", "name=teacher", *common]) == 0
    teacher = base / "runs" / "teacher" / "last.pt"
    assert main(["train", "configs/fmnist_cpu.yaml", "name=student", f"model.teacher_checkpoint={teacher}",
                 "data.train_subset=null", *common]) == 0
    return {"root": root, "student": base / "runs" / "student", "teacher": teacher}


def test_analyze_arguments_defaults():
    args = _parse("runs/x")
    assert (args.target, args.device, args.bins, args.pgd_steps, args.tsne_samples) == ("runs/x", "auto", 15, 10, 2000)
    assert args.fgsm is None and args.pgd is None and args.normalize == "train" and not args.tsne
    args = _parse("r", "--fgsm", "0", "0.03", "--pgd", "0.03", "--pgd-steps", "20")
    assert args.fgsm == [0.0, 0.03] and args.pgd == [0.03] and args.pgd_steps == 20


def _parse(*argv):
    from mixdistill.analysis.command import add_analyze_arguments

    return add_analyze_arguments(argparse.ArgumentParser()).parse_args([str(a) for a in argv])


@pytest.mark.checkout
def test_analyze_end_to_end(tiny_runs, tmp_path, capsys):
    from mixdistill.analysis.command import analyze_main

    run = tiny_runs["student"]
    human = torch.softmax(torch.randn(200, 10), 1).double().numpy()
    np.save(tmp_path / "human.npy", human)
    rc = analyze_main(_parse(run, "--tsne", "--tsne-samples", 80, "--fgsm", 0, 0.05, "--pgd", 0.05,
                             "--pgd-steps", 3, "--human-labels", tmp_path / "human.npy", "--quiet"))
    assert rc == 0
    out = run / "analysis"
    report = (out / "report.md").read_text()
    for png in ("reliability_diagram.png", "tsne.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG" and png in report
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["class_discrimination"]) == {"softmax/correct", "softmax/as_published",
                                              "features/correct", "features/as_published"}
    assert "agreement" in m["smoothness"] and "teacher" in m  # the run's teacher checkpoint exists
    fgsm0 = next(r for r in m["robustness"] if r["attack"] == "fgsm" and r["eps"] == 0)
    assert fgsm0["accuracy"] == pytest.approx(m["accuracy"])
    assert m["human_labels"]["kl"] > 0
    summary = json.loads((run / "summary.json").read_text())
    assert m["accuracy"] == pytest.approx(summary["last_acc"])
    assert m["test_loss"] == pytest.approx(summary["last_test_loss"], rel=1e-4)
    for section in ("Class discrimination", "Smoothness", "Robustness", "human soft labels", "t-SNE"):
        assert section in report
    assert str(out / "report.md") in capsys.readouterr().out
    assert analyze_main(_parse(run, "--quiet")) == 0  # again without t-SNE: no figure of the earlier analysis left
    assert not (out / "tsne.png").exists() and "t-SNE" not in (out / "report.md").read_text()


@pytest.mark.checkout
def test_analyze_says_it_computes_in_fp32_where_the_run_evaluated_itself_otherwise(tiny_runs, tmp_path):
    from mixdistill.analysis.command import analyze_main
    from mixdistill.engine.checkpoint import load_checkpoint, save_atomic

    fp32 = tiny_runs["student"]  # trained in fp32: its accuracy is the summary's, and nothing is said
    assert analyze_main(_parse(fp32, "--out", tmp_path / "a", "--quiet", "--no-teacher")) == 0
    assert "Computed in fp32" not in (tmp_path / "a" / "report.md").read_text()
    bf16 = tmp_path / "bf16_run"
    shutil.copytree(fp32, bf16, ignore=shutil.ignore_patterns("analysis"))
    state = load_checkpoint(bf16 / "last.pt")
    state["config"]["train"]["precision"] = "bf16"  # as a run trained with bf16 autocast records it
    save_atomic(state, bf16 / "last.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 is emulated on an AVX2-only CPU: the resolver warns
        assert analyze_main(_parse(bf16, "--out", tmp_path / "b", "--quiet", "--no-teacher")) == 0
    assert "Computed in fp32; the run evaluated itself in bf16" in (tmp_path / "b" / "report.md").read_text()


def test_a_run_whose_config_does_not_validate_here_is_analysed_saying_so(tiny_runs, tmp_path):
    """A plugin's run opened without its plugin: analysed as a foreign checkpoint (whole split, no teacher), which
    the report's Notes now say (they said nothing)."""
    from mixdistill.analysis.command import analyze_main
    from mixdistill.engine.checkpoint import load_checkpoint, save_atomic

    state = load_checkpoint(tiny_runs["student"] / "last.pt")
    state["config"]["method"]["name"] = "plugin_method_not_loaded"
    save_atomic(state, tmp_path / "plugin.pt")
    assert analyze_main(_parse(tmp_path / "plugin.pt", "--dataset", "fashion_mnist", "--data-root",
                               tiny_runs["root"], "--out", tmp_path / "out", "--quiet")) == 0
    report = (tmp_path / "out" / "report.md").read_text()
    assert "saved config does not validate here (unknown method 'plugin_method_not_loaded'" in report


def test_analyze_refuses_no_teacher_beside_a_teacher(tmp_path):
    """--no-teacher with --teacher dropped the teacher without a word; refused before the run is opened."""
    from mixdistill.analysis.command import analyze_main

    with pytest.raises(ConfigError, match="--no-teacher skips the teacher that --teacher names"):
        analyze_main(_parse(tmp_path / "nowhere", "--no-teacher", "--teacher", tmp_path / "t.pt", "--quiet"))


def test_analyze_human_labels_shape_error(tiny_runs, tmp_path):
    from mixdistill.analysis.command import analyze_main

    np.save(tmp_path / "h.npy", np.full((10000, 10), 0.1))
    with pytest.raises(DataError, match=r"\[10000, 10\].*\[200, 10\]"):
        analyze_main(_parse(tiny_runs["student"], "--human-labels", tmp_path / "h.npy", "--out", tmp_path / "o",
                            "--quiet"))


@pytest.mark.checkout
def test_a_runs_test_subset_is_analysed_and_takes_its_rows_of_the_human_labels(tiny_runs, tmp_path, capsys):
    """A run with data.test_subset is analysed on its subset, also where --data names its own dataset; a human-label
    file of the whole test split is read in the split's order and the subset's rows taken from it (one-hot labels
    of the true classes make KL(human || model) the NLL exactly where the rows are the subset's own)."""
    from mixdistill.analysis.command import analyze, analyze_main
    from mixdistill.cli import main
    from mixdistill.data import load_dataset

    assert main(["train", "configs/fmnist_cpu_teacher.yaml", "name=subset_run", f"data.root={tiny_runs['root']}",
                 f"output_dir={tmp_path}", "data.train_subset=200", "data.test_subset=100",  # of the 200 test images
                 "model.student=cnn5_w8", "optim.schedule=constant", "optim.epochs=1", "train.progress=false",
                 "train.tensorboard=false", "train.device=cpu", "train.precision=fp32", "--quiet"]) == 0
    run = tmp_path / "subset_run"
    labels = load_dataset("fashion_mnist", "test", root=tiny_runs["root"]).labels
    np.save(tmp_path / "human.npy", np.eye(10)[labels.numpy()])
    m = analyze(run, out=tmp_path / "a", human_labels=tmp_path / "human.npy", no_teacher=True)
    assert m["samples"] == 100
    assert m["human_labels"]["kl"] == pytest.approx(m["calibration"]["nll"], rel=1e-6)
    assert analyze(run, data="fashion_mnist", out=tmp_path / "b", no_teacher=True)["samples"] == 100
    assert analyze(run, out=tmp_path / "c", no_teacher=True, full_test_set=True)["samples"] == 200
    np.save(tmp_path / "rows_of_subset.npy", np.eye(10)[labels[:100].numpy()])
    with pytest.raises(DataError, match=r"have shape \[100, 10\] but the evaluation set needs \[200, 10\]"):
        analyze(run, out=tmp_path / "d", human_labels=tmp_path / "rows_of_subset.npy", no_teacher=True)
    # T. stddev of too few steps is "-" in the report, and a note says why (200 images make 1 or 2 steps)
    stats = analyze(run, out=tmp_path / "f", teacher=str(tiny_runs["teacher"]), teacher_stats="cutmix")
    assert stats["teacher_stats"]["groups"] < 2 and math.isnan(stats["teacher_stats"]["t_stddev"])
    assert any("T. stddev needs two groups of 5 training steps" in note for note in stats["notes"])
    # the report's notes are printed under the table too
    assert analyze_main(_parse(run, "--out", tmp_path / "e", "--no-teacher")) == 0
    assert "note: The run's data.test_subset = 100 (seed 0) is used" in capsys.readouterr().out


@pytest.mark.checkout
def test_analyze_shifted_npy_set_and_checkpoint_file(tiny_runs, tmp_path):
    """--data with a CIFAR-10.1 style pair made from the test set gives the test-set numbers; a checkpoint
    file works as well as a run directory; a missing teacher is a note, not an error."""
    from mixdistill.analysis.command import analyze
    from mixdistill.data import load_dataset

    test = load_dataset("fashion_mnist", "test", root=tiny_runs["root"])
    np.save(tmp_path / "shift_data.npy", test.images[:, 0].numpy())  # [N, 28, 28] grayscale
    np.save(tmp_path / "shift_labels.npy", test.labels.numpy())
    ckpt = tiny_runs["student"] / "last.pt"
    plain = analyze(ckpt, out=tmp_path / "plain", no_teacher=True)
    shifted = analyze(ckpt, data=str(tmp_path / "shift_data.npy"), out=tmp_path / "shifted", no_teacher=True)
    assert shifted["eval_set"] == "shift" and shifted["samples"] == 200
    assert shifted["accuracy"] == pytest.approx(plain["accuracy"])
    assert shifted["class_discrimination"]["softmax/correct"]["cd"] == pytest.approx(
        plain["class_discrimination"]["softmax/correct"]["cd"])
    assert "teacher" not in plain and (tmp_path / "plain" / "report.md").is_file()
    # without --out, another evaluation set writes beside the run's own analysis/ (it replaced its report)
    run = tmp_path / "run"
    (run / "analysis").mkdir(parents=True)
    shutil.copy(ckpt, run / "last.pt")
    (run / "analysis" / "report.md").write_text("the run's own")
    analyze(run / "last.pt", data=str(tmp_path / "shift_data.npy"), no_teacher=True)
    assert (run / "analysis" / "report.md").read_text() == "the run's own"
    assert (run / "analysis_shift" / "report.md").is_file()
    own = analyze(ckpt, data=str(tmp_path), out=tmp_path / "own", no_teacher=True, normalize="data")
    pixels = test.images.double() / 255
    assert own["normalization"]["mean"][0] == pytest.approx(float(pixels.mean()))
    assert own["normalization"]["std"][0] == pytest.approx(float(pixels.std(correction=0)))
    assert "mean / std of the evaluation set" in (tmp_path / "own" / "report.md").read_text()
    with pytest.raises(CheckpointError, match="teacher checkpoint not found"):
        analyze(ckpt, out=tmp_path / "x", teacher=str(tmp_path / "nope.pt"))
    torch.save({"model": torch.load(tiny_runs["teacher"], weights_only=True)["model"]}, tmp_path / "bare.pt")
    with pytest.raises(ConfigError, match="does not record its architecture: pass --teacher-arch MODEL"):
        analyze(ckpt, out=tmp_path / "x", teacher=str(tmp_path / "bare.pt"))  # asked for: not a quiet note
    with pytest.raises(CheckpointError, match="no such run directory"):
        analyze(tmp_path / "missing_run")
    with pytest.raises(ConfigError, match="--dataset cifar10: .* records its training set, fashion_mnist"):
        analyze(ckpt, out=tmp_path / "x", dataset="cifar10")  # it went looking for CIFAR-10's files
    with pytest.raises(UnknownNameError, match="cutmix"):
        analyze(ckpt, out=tmp_path / "x", teacher_stats="cutmixx")
    with pytest.raises(ConfigError, match="needs a teacher"):
        analyze(ckpt, out=tmp_path / "x", teacher_stats="cutmix", no_teacher=True)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        analyze(ckpt, out=tmp_path / "x", fgsm=[2.0])


@pytest.mark.checkout
def test_analyze_teacher_stats(tiny_runs, tmp_path):
    from mixdistill.analysis.command import analyze

    m = analyze(tiny_runs["student"], out=tmp_path, teacher_stats="cutmix")
    t = m["teacher_stats"]
    assert t["view"] == "cutmix" and t["steps"] == 12 and t["groups"] == 2
    assert t["t_stddev"] > 0 and t["entropy_augmented"] is not None
    assert "Teacher statistics (wang2022)" in (tmp_path / "report.md").read_text()


def test_the_reports_test_loss_is_the_cross_entropy_not_the_clamped_nll(tiny_runs, tmp_path):
    """A confidently wrong model's loss: the report and the console table printed the calibration NLL, whose
    probabilities are clamped at 1e-12 (at most 27.6 nats an image: 24.87 where eval said 2.4e31)."""
    from mixdistill.analysis.command import analyze
    from mixdistill.engine.checkpoint import load_checkpoint

    state = load_checkpoint(tiny_runs["student"] / "last.pt")
    last = [k for k in state["model"] if k.endswith("weight")][-1]  # the classifier: logits in the thousands
    state["model"][last] = state["model"][last] * 1e4
    torch.save(state, tmp_path / "confident.pt")
    m = analyze(tmp_path / "confident.pt", out=tmp_path / "out", no_teacher=True)
    assert m["test_loss"] > 100 > 27.7 > m["calibration"]["nll"]
    row = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines()
               if line.startswith(f"| {m['arch']} |"))
    assert float(row.split("|")[3]) == pytest.approx(m["test_loss"], rel=1e-3), row
