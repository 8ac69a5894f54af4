"""Tests of mixdistill.augment: property tests (hypothesis) and hand-computed checks."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mixdistill.augment import (AUGMENTATIONS, MixedBatch, cut_n_mix, cutmix, cutmix_pick, cutout, derangement,
                                draw_boxes, make_augment, mixup, mixup_two_perm, pmu, sample_beta)
from mixdistill.augment.mix import BOX_ROUNDINGS, box_area_fraction
from mixdistill.errors import ConfigError, UnknownNameError

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)
FAST = settings(max_examples=25, deadline=None)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def batch(b=8, c=3, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(10_000 + seed)
    return torch.randn(b, c, h, w, generator=g), torch.randint(0, 5, (b,), generator=g)


def labelled(b, c=1, h=12, w=10):
    """Image i is filled with the value i: every output pixel tells which source it came from."""
    return torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, c, h, w).clone()


def tiny_net(bn=False, seed=0):
    torch.manual_seed(seed)
    layers = [torch.nn.Conv2d(3, 4, 1)] + ([torch.nn.BatchNorm2d(4)] if bn else [])
    return torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64, 7))


def call(name, images, labels, generator, teacher=None, student=None):
    """Call augmentation ``name`` with the parameters it needs."""
    if name == "autoaugment":
        return make_augment(name, mean=MEAN, std=STD)(images, labels, generator=generator)
    if name == "cutmix_pick":
        return make_augment(name)(images, labels, generator=generator, teacher=teacher, student=student)
    return make_augment(name)(images, labels, generator=generator)


NAMES = sorted(AUGMENTATIONS)
# A few variants beyond the defaults.
VARIANTS = [
    (mixup, dict(per_sample=True)),
    (mixup, dict(alpha=0.2)),
    (pmu, dict(sampling="exact")),
    (pmu, dict(p=0.5)),
    (cutmix, dict(per_sample_boxes=True)),
    (cutmix, dict(partner="permutation")),
    (cut_n_mix, dict(n=3, per_sample_boxes=True)),
    (cutout, dict(shared_mask=True, size=5)),
]


def check_record(rec: MixedBatch, images, labels, num_classes=5):
    b = images.shape[0]
    assert rec.images.shape == images.shape and rec.images.dtype == images.dtype
    assert rec.sources.dtype == torch.long and rec.sources.shape[0] == b
    assert rec.weights.shape == rec.sources.shape
    assert int(rec.sources.min()) >= 0 and int(rec.sources.max()) < b
    assert bool((rec.weights >= 0).all()) and bool((rec.weights <= 1).all())
    torch.testing.assert_close(rec.weights.sum(1), torch.ones(b), atol=1e-6, rtol=0)
    soft = rec.soft_targets(labels, num_classes)
    assert soft.shape == (b, num_classes)
    torch.testing.assert_close(soft.sum(1), torch.ones(b), atol=1e-6, rtol=0)
    if rec.boxes is not None:
        assert rec.boxes.shape[0] == b and rec.boxes.shape[2] == 4


# ------------------------------------------------------------------------------------- every augmentation


@FAST
@given(name=st.sampled_from(NAMES), b=st.integers(2, 9), seed=st.integers(0, 2**31))
def test_every_augmentation_gives_valid_record_and_leaves_input_unchanged(name, b, seed):
    images, labels = batch(b, seed=seed % 97)
    before = images.clone(), labels.clone()
    t, s = tiny_net(), tiny_net(bn=True, seed=1)
    if name == "cut_n_mix" and b < 3:  # two different partners besides the base need three images
        with pytest.raises(ConfigError):
            call(name, images, labels, gen(seed))
        return
    rec = call(name, images, labels, gen(seed), teacher=t, student=s)
    check_record(rec, images, labels)
    assert torch.equal(images, before[0]) and torch.equal(labels, before[1])
    assert rec.images.data_ptr() != images.data_ptr()


@FAST
@given(variant=st.sampled_from(range(len(VARIANTS))), b=st.integers(2, 9), seed=st.integers(0, 2**31))
def test_variants_give_valid_record_and_leave_input_unchanged(variant, b, seed):
    fn, params = VARIANTS[variant]
    images, labels = batch(b, seed=seed % 97)
    before = images.clone()
    if fn is cut_n_mix and b <= params["n"]:
        with pytest.raises(ConfigError):
            fn(images, labels, generator=gen(seed), **params)
        return
    rec = fn(images, labels, generator=gen(seed), **params)
    check_record(rec, images, labels)
    assert torch.equal(images, before)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "identity"])
def test_determinism_under_seed(name):
    images, labels = batch(16, h=32, w=32)
    t, s = tiny_net(), tiny_net(bn=True, seed=1)
    a = call(name, images, labels, gen(5), teacher=t, student=s)
    b = call(name, images, labels, gen(5), teacher=t, student=s)
    c = call(name, images, labels, gen(6), teacher=t, student=s)
    for field in ("images", "sources", "weights", "boxes", "teacher_logits"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or torch.equal(x, y), field
    assert not torch.equal(a.images, c.images)


def test_global_rng_untouched():
    images, labels = batch(4, h=32, w=32)
    t, s = tiny_net(), tiny_net(seed=1)
    state = torch.get_rng_state()
    for name in NAMES:
        call(name, images, labels, gen(0), teacher=t, student=s)
        assert torch.equal(torch.get_rng_state(), state), name


def test_requires_cpu_generator():
    images, labels = batch(4)
    with pytest.raises(ValueError):
        mixup(images, labels, generator=None)


# ----------------------------------------------------------------------------------------------- record


def test_soft_targets_and_hard_pairs_hand_example():
    rec = MixedBatch(
        images=torch.zeros(3, 1, 2, 2),
        sources=torch.tensor([[0, 1], [2, 2], [1, 0]]),
        weights=torch.tensor([[0.3, 0.7], [0.5, 0.5], [1.0, 0.0]]),
    )
    labels = torch.tensor([2, 0, 1])
    expected = torch.tensor([[0.7, 0.0, 0.3], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(rec.soft_targets(labels, 3), expected)
    a, b, lam = rec.hard_pairs()
    assert a.tolist() == [0, 2, 1] and b.tolist() == [1, 2, 0]
    torch.testing.assert_close(lam, torch.tensor([0.3, 0.5, 1.0]))
    three = MixedBatch(rec.images, torch.zeros(3, 3, dtype=torch.long), torch.full((3, 3), 1 / 3))
    with pytest.raises(ValueError):
        three.hard_pairs()


# ------------------------------------------------------------------------------------------------ helpers


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 300), seed=st.integers(0, 2**31))
def test_derangement_is_permutation_without_fixed_point(n, seed):
    d = derangement(n, gen(seed))
    assert sorted(d.tolist()) == list(range(n))
    assert not bool((d == torch.arange(n)).any())


def test_derangement_is_uniform_not_only_cyclic():
    # Of the 9 derangements of 4 elements, 3 are products of two 2-cycles (Sattolo never gives them).
    g = gen(0)
    draws = [tuple(derangement(4, g).tolist()) for _ in range(1800)]
    assert len(set(draws)) == 9
    two_two = sum(all(d[d[i]] == i for i in range(4)) for d in draws) / len(draws)
    assert abs(two_two - 1 / 3) < 0.05


def test_derangement_of_one_raises():
    with pytest.raises(ValueError):
        derangement(1, gen(0))


# ----------------------------------------------------------------------------------------------- mixup


def test_mixup_batch_lam_matches_record():
    images, labels = batch(9)
    rec = mixup(images, labels, generator=gen(3))
    lam = rec.info["lam"]
    assert 0 < lam < 1
    assert rec.sources[:, 0].tolist() == list(range(9))
    assert sorted(rec.sources[:, 1].tolist()) == list(range(9))
    torch.testing.assert_close(rec.weights[:, 0], torch.full((9,), lam))
    expected = lam * images + (1 - lam) * images[rec.sources[:, 1]]
    torch.testing.assert_close(rec.images, expected)
    a, b, lam_t = rec.hard_pairs()
    assert torch.equal(a, rec.sources[:, 0]) and torch.equal(b, rec.sources[:, 1])


@FAST
@given(seed=st.integers(0, 2**31), name=st.sampled_from(["mixup_two_perm", "pmu", "mixup_per_sample"]))
def test_two_source_output_recomputed_from_record(seed, name):
    images, labels = batch(12)
    if name == "mixup_per_sample":
        rec = mixup(images, labels, generator=gen(seed), per_sample=True)
    else:
        rec = AUGMENTATIONS[name](images, labels, generator=gen(seed))
    lam = rec.weights[:, 0].view(-1, 1, 1, 1)
    expected = lam * images[rec.sources[:, 0]] + (1 - lam) * images[rec.sources[:, 1]]
    torch.testing.assert_close(rec.images, expected)
    for k in range(2):
        assert sorted(rec.sources[:, k].tolist()) == list(range(12))


def test_two_perm_uses_two_independent_permutations_and_per_sample_lam():
    images, labels = batch(32)
    rec = mixup_two_perm(images, labels, generator=gen(0))
    assert not torch.equal(rec.sources[:, 0], torch.arange(32))
    assert not torch.equal(rec.sources[:, 0], rec.sources[:, 1])
    assert len(set(rec.weights[:, 0].tolist())) == 32


def test_pmu_replacement_mixed_fraction_is_about_exp_minus_p():
    images, labels = batch(64, h=2, w=2)
    g = gen(0)
    fracs = []
    for _ in range(400):
        rec = pmu(images, labels, generator=g, p=0.9)
        mixed = float((rec.weights[:, 0] < 1).double().mean())
        assert rec.info["mixed_fraction"] == pytest.approx(mixed)
        fracs.append(mixed)
    mean = float(np.mean(fracs))
    assert abs(mean - (63 / 64) ** 57) < 0.01  # exact expectation, floor(64*0.9) = 57 draws
    assert abs(mean - math.exp(-0.9)) < 0.015
    assert abs(mean - 0.1) > 0.2  # far from the paper's "10% mixed"


@pytest.mark.parametrize("b,p", [(64, 0.9), (64, 0.5), (10, 0.75), (10, 0.33), (7, 0.0), (7, 1.0)])
def test_pmu_exact_mixes_round_1_minus_p_b(b, p):
    images, labels = batch(b, h=2, w=2)
    for seed in range(5):
        rec = pmu(images, labels, generator=gen(seed), p=p, sampling="exact")
        n_mixed = int((rec.weights[:, 0] < 1).sum())
        assert n_mixed == round((1 - p) * b)
        assert rec.info["mixed_fraction"] == pytest.approx(round((1 - p) * b) / b)


# ---------------------------------------------------------------------------------------------- cutmix


@FAST
@given(seed=st.integers(0, 2**31), per_sample=st.booleans(), h=st.integers(3, 20), w=st.integers(3, 20))
def test_cutmix_lam_is_exact_unmasked_fraction(seed, per_sample, h, w):
    # Base all zeros, partner all ones (a derangement of 2 swaps them): the zeros left are lam.
    images = torch.stack([torch.zeros(2, h, w), torch.ones(2, h, w)])
    rec = cutmix(images, torch.tensor([0, 1]), generator=gen(seed), per_sample_boxes=per_sample)
    assert rec.sources[:, 1].tolist() == [1, 0]
    zero_frac = float((rec.images[0] == 0).double().mean())
    assert rec.weights[0, 0].item() == pytest.approx(zero_frac, abs=1e-6)
    one_frac = float((rec.images[1] == 1).double().mean())
    assert rec.weights[1, 0].item() == pytest.approx(one_frac, abs=1e-6)
    if not per_sample:
        assert rec.info["lam"] == pytest.approx(zero_frac)


@FAST
@given(seed=st.integers(0, 2**31), per_sample=st.booleans(), partner=st.sampled_from(["derangement", "permutation"]))
def test_cutmix_box_pixels_come_from_partner(seed, per_sample, partner):
    b, h, w = 6, 12, 10
    images = labelled(b, c=2, h=h, w=w)
    rec = cutmix(images, torch.arange(b), generator=gen(seed), per_sample_boxes=per_sample, partner=partner)
    if partner == "derangement":
        assert not bool((rec.sources[:, 1] == torch.arange(b)).any())
    for i in range(b):
        y1, x1, y2, x2 = rec.boxes[i, 0].tolist()
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y1:y2, x1:x2] = True
        out = rec.images[i]
        assert bool((out[:, inside] == rec.sources[i, 1]).all())
        assert bool((out[:, ~inside] == i).all())
        assert rec.weights[i, 0].item() == pytest.approx(1 - inside.double().mean().item())
    if not per_sample:
        assert bool((rec.boxes == rec.boxes[0]).all())


def test_cutmix_box_side_is_sqrt_one_minus_lam_before_clipping():
    lam = torch.tensor([0.75, 0.19, 0.0, 1.0] * 50, dtype=torch.float64)
    boxes = draw_boxes(lam, 64, 48, gen(0))
    full_h = torch.floor(64 * torch.sqrt(1 - lam)).long()
    full_w = torch.floor(48 * torch.sqrt(1 - lam)).long()
    hs, ws = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert bool((hs <= full_h).all()) and bool((ws <= full_w).all())
    interior_y = (boxes[:, 0] > 0) & (boxes[:, 2] < 64)
    interior_x = (boxes[:, 1] > 0) & (boxes[:, 3] < 48)
    assert bool((hs[interior_y] == full_h[interior_y]).all()) and bool((ws[interior_x] == full_w[interior_x]).all())
    assert int(interior_y[lam == 0.75].sum()) > 0  # the check above is not vacuous
    assert full_h[0] == 32 and full_w[0] == 24
    assert bool((hs[lam == 1.0] == 0).all())  # lam = 1: empty box


# ------------------------------------------------------------------------------------------- cut_n_mix


def _owner_from_boxes(boxes, h, w):
    """Reference: which paste (0 = base) shows at each pixel, by painting the boxes in order."""
    owner = np.zeros((h, w), dtype=np.int64)
    for j, (y1, x1, y2, x2) in enumerate(boxes.tolist(), start=1):
        owner[y1:y2, x1:x2] = j
    return owner


@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("per_sample", [False, True])
def test_cut_n_mix_weights_are_visible_areas(n, per_sample):
    b, h, w = 7, 12, 10
    images = labelled(b, c=3, h=h, w=w)
    for seed in range(10):
        rec = cut_n_mix(images, torch.arange(b), generator=gen(seed), n=n, per_sample_boxes=per_sample)
        assert rec.sources.shape == (b, n + 1) and rec.boxes.shape == (b, n, 4)
        assert rec.sources[:, 0].tolist() == list(range(b))
        # n different partner images per sample, none of them the base
        assert all(len(set(row.tolist())) == n + 1 for row in rec.sources)
        # Pixel counts per source image, from the labelled construction.
        counts = torch.stack([(rec.images[:, 0] == v).double().mean((1, 2)) for v in range(b)], dim=1)
        torch.testing.assert_close(rec.soft_targets(torch.arange(b), b).double(), counts, atol=1e-6, rtol=0)
        # Each paste's own weight, from painting its boxes in order.
        for i in range(b):
            owner = _owner_from_boxes(rec.boxes[i], h, w)
            for k in range(n + 1):
                assert rec.weights[i, k].item() == pytest.approx((owner == k).mean(), abs=1e-6)
            assert bool((rec.images[i, 0] == rec.sources[i][torch.from_numpy(owner)].float()).all())


def test_cut_n_mix_needs_a_batch_with_enough_partners():
    images, labels = batch(3)
    with pytest.raises(ConfigError, match="at least 4"):
        cut_n_mix(images, labels, generator=gen(0), n=3)
    rec = cut_n_mix(images, labels, generator=gen(0), n=2)  # the two other images, in some order
    assert all(sorted(row.tolist()) == [0, 1, 2] for row in rec.sources)
    rec = cut_n_mix(images, labels, generator=gen(0), n=3, partner="permutation")  # partners may include the base
    assert all(sorted(row[1:].tolist()) == [0, 1, 2] for row in rec.sources)


@pytest.mark.parametrize("per_sample", [False, True])
def test_cut_n_mix_with_one_box_equals_cutmix(per_sample):
    images, labels = batch(8, h=16, w=16)
    for seed in range(10):
        a = cutmix(images, labels, generator=gen(seed), per_sample_boxes=per_sample)
        b = cut_n_mix(images, labels, generator=gen(seed), n=1, per_sample_boxes=per_sample)
        assert torch.equal(a.images, b.images)
        assert torch.equal(a.sources, b.sources)
        assert torch.equal(a.boxes, b.boxes)
        torch.testing.assert_close(a.weights, b.weights, atol=1e-6, rtol=0)


def test_cut_n_mix_later_boxes_cover_earlier_ones():
    # Find a draw where the second box overlaps the first and check the overlap shows partner 2.
    b, h, w = 5, 16, 16
    images = labelled(b, h=h, w=w)
    found = False
    for seed in range(50):
        rec = cut_n_mix(images, torch.arange(b), generator=gen(seed), n=2)
        (ay1, ax1, ay2, ax2), (by1, bx1, by2, bx2) = rec.boxes[0].tolist()
        oy1, oy2, ox1, ox2 = max(ay1, by1), min(ay2, by2), max(ax1, bx1), min(ax2, bx2)
        if oy1 < oy2 and ox1 < ox2 and rec.sources[0, 1] != rec.sources[0, 2]:
            found = True
            assert bool((rec.images[:, 0, oy1:oy2, ox1:ox2] == rec.sources[:, 2].view(-1, 1, 1).float()).all())
    assert found


# ----------------------------------------------------------------------------------------------- cutout


@FAST
@given(seed=st.integers(0, 2**31), size=st.integers(1, 12), shared=st.booleans())
def test_cutout_hole_size_and_zero_fill(seed, size, shared):
    b, h, w = 6, 16, 14
    images = torch.ones(b, 3, h, w)
    rec = cutout(images, torch.zeros(b, dtype=torch.long), generator=gen(seed), size=size, shared_mask=shared)
    for i in range(b):
        y1, x1, y2, x2 = rec.boxes[i, 0].tolist()
        assert 0 <= y1 <= y2 <= h and 0 <= x1 <= x2 <= w
        assert y2 - y1 <= size and x2 - x1 <= size
        if y1 > 0 and y2 < h:
            assert y2 - y1 == size
        if x1 > 0 and x2 < w:
            assert x2 - x1 == size
        zeros = rec.images[i] == 0
        assert int(zeros.sum()) == 3 * (y2 - y1) * (x2 - x1)
        assert bool(zeros[:, y1:y2, x1:x2].all())
    assert torch.equal(rec.weights, torch.ones(b, 1))
    if shared:
        assert bool((rec.boxes == rec.boxes[0]).all())


def test_cutout_per_sample_holes_differ():
    rec = cutout(torch.ones(16, 1, 32, 32), torch.zeros(16, dtype=torch.long), generator=gen(0))
    assert len({tuple(bx) for bx in rec.boxes[:, 0].tolist()}) > 1
    # An unclipped hole of the default size 8 exists.
    sides = (rec.boxes[:, 0, 2] - rec.boxes[:, 0, 0]).tolist()
    assert 8 in sides


# --------------------------------------------------------------------------------------- flip, crop_flip


def test_flip_per_sample():
    images, labels = batch(16)
    rec = AUGMENTATIONS["flip"](images, labels, generator=gen(0))
    flipped = rec.info["flipped"]
    assert 0 < int(flipped.sum()) < 16
    for i in range(16):
        assert torch.equal(rec.images[i], images[i].flip(-1) if flipped[i] else images[i])


def test_crop_flip_pads_with_zero_or_black():
    images = torch.full((8, 3, 12, 12), 0.25)
    out = AUGMENTATIONS["crop_flip"](images, None, generator=gen(1), padding=4).images
    assert set(out.unique().tolist()) <= {0.0, 0.25}
    assert bool((out == 0).any())
    out = AUGMENTATIONS["crop_flip"](images, None, generator=gen(1), padding=4, mean=MEAN, std=STD).images
    black = (-torch.tensor(MEAN) / torch.tensor(STD)).view(1, 3, 1, 1)
    is_black = torch.isclose(out, black.expand_as(out), atol=1e-5)
    assert bool((is_black | torch.isclose(out, torch.tensor(0.25), atol=1e-5)).all())
    assert bool(is_black.any())


# ----------------------------------------------------------------------------------------- autoaugment


def test_autoaugment_shape_dtype_determinism():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (6, 3, 16, 16), generator=g, dtype=torch.uint8)
    m, s = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (u8.float() / 255 - m) / s
    labels = torch.zeros(6, dtype=torch.long)
    a = AUGMENTATIONS["autoaugment"](images, labels, generator=gen(0), mean=MEAN, std=STD)
    b = AUGMENTATIONS["autoaugment"](images, labels, generator=gen(0), mean=MEAN, std=STD)
    c = AUGMENTATIONS["autoaugment"](images, labels, generator=gen(1), mean=MEAN, std=STD)
    assert a.images.shape == images.shape and a.images.dtype == images.dtype
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert not torch.equal(a.images, images)
    # Output is still a normalized uint8 image: de-normalizing gives integers in [0, 255].
    back = (a.images * s + m) * 255
    torch.testing.assert_close(back, back.round().clamp(0, 255), atol=1e-3, rtol=0)


# ---------------------------------------------------------------------------------------- cutmix_pick


def _reference_scores(criterion, t_logits, s_logits):
    if criterion == "kl":
        return F.kl_div(F.log_softmax(s_logits / 4, 1), F.softmax(t_logits / 4, 1), reduction="none").sum(1)
    logits = t_logits if criterion == "teacher_entropy" else s_logits
    return torch.distributions.Categorical(logits=logits).entropy()


@pytest.mark.parametrize("criterion", ["kl", "teacher_entropy", "student_entropy"])
@pytest.mark.parametrize("student_train_mode", [False, True])
def test_cutmix_pick_keeps_highest_scores(criterion, student_train_mode):
    b = 10
    images, labels = batch(b, h=8, w=8)
    teacher, student = tiny_net(bn=True, seed=0), tiny_net(bn=True, seed=1)
    teacher.eval()
    student.train()
    # Give BN non-trivial running stats so that train / eval scoring differ.
    with torch.no_grad():
        for _ in range(3):
            student(images * 3 + 1)
    ref_student = copy.deepcopy(student)
    state = copy.deepcopy(student.state_dict())

    rec = cutmix_pick(
        images, labels, generator=gen(7), teacher=teacher, student=student, criterion=criterion, n_runs=3,
        student_train_mode=student_train_mode,
    )

    # Independent pool: three CutMix runs from a generator in the same state.
    g = gen(7)
    runs = [cutmix(images, labels, generator=g) for _ in range(3)]
    pool = torch.cat([r.images for r in runs])
    with torch.no_grad():
        t_logits = teacher(pool)
        ref_student.train(student_train_mode)
        s_logits = ref_student(pool)
    scores = _reference_scores(criterion, t_logits, s_logits)
    expected = set(torch.argsort(scores, descending=True)[:b].tolist())

    assert set(rec.info["pool_index"].tolist()) == expected
    assert torch.equal(rec.images, pool[sorted(expected)])
    torch.testing.assert_close(rec.info["scores"], scores[sorted(expected)], atol=1e-5, rtol=1e-4)
    assert float(rec.info["scores"].min()) >= float(scores.sort(descending=True).values[b - 1]) - 1e-6
    pool_sources = torch.cat([r.sources for r in runs])
    assert torch.equal(rec.sources, pool_sources[sorted(expected)])
    check_record(rec, images, labels)
    with torch.no_grad():
        torch.testing.assert_close(rec.teacher_logits, teacher(rec.images))
    assert not rec.teacher_logits.is_inference()
    (rec.teacher_logits * 2).sum()  # usable as an ordinary tensor

    # Modes restored; BN statistics change only when scoring in train mode (and not for teacher_entropy,
    # where the student is not run).
    assert student.training and not teacher.training
    changed = any(not torch.equal(v, student.state_dict()[k]) for k, v in state.items())
    assert changed == (student_train_mode and criterion != "teacher_entropy")
    if changed:  # exactly as one train-mode forward of the pool
        for k, v in ref_student.state_dict().items():
            torch.testing.assert_close(student.state_dict()[k], v)


def test_cutmix_pick_train_mode_scoring_with_dropout_is_deterministic():
    images, labels = batch(8, h=8, w=8)
    teacher = tiny_net(seed=0).eval()
    student = torch.nn.Sequential(tiny_net(seed=1), torch.nn.Dropout(0.5))
    state = torch.get_rng_state()
    picks = [cutmix_pick(images, labels, generator=gen(3), teacher=teacher, student=student,
                         student_train_mode=True).info["pool_index"] for _ in range(3)]
    assert all(torch.equal(p, picks[0]) for p in picks)
    assert torch.equal(torch.get_rng_state(), state)


def test_defaults_are_the_specs_decisions():
    from mixdistill.augment import augment_params

    assert augment_params("cutmix_pick") | {} == {**augment_params("cutmix_pick"), "criterion": "kl", "n_runs": 2,
                                                  "student_train_mode": False, "alpha": 1.0}
    assert augment_params("mixup")["alpha"] == 1.0 and augment_params("cutmix")["alpha"] == 1.0
    assert augment_params("cut_n_mix")["n"] == 2 and augment_params("pmu")["sampling"] == "replacement"
    assert augment_params("cutout")["shared_mask"] is False


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_beta_samples_follow_beta_alpha_alpha(alpha):
    lam = sample_beta(alpha, (40_000,), gen(0))
    assert float(lam.mean()) == pytest.approx(0.5, abs=0.01)
    assert float(lam.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.03)  # Var Beta(a, a)


def test_mixup_per_sample_draws_one_lam_per_sample():
    images, labels = batch(32)
    lam = mixup(images, labels, generator=gen(0), per_sample=True).weights[:, 0]
    assert len(set(lam.tolist())) == 32
    lam = mixup(images, labels, generator=gen(0)).weights[:, 0]
    assert len(set(lam.tolist())) == 1


def test_cutmix_box_centre_is_uniform_and_clipped():
    # side 10 in a 20 x 20 image: y1 = clip(cy - 5), y2 = clip(cy + 5), cy uniform on 0..19
    boxes = draw_boxes(torch.full((20_000,), 0.75), 20, 20, gen(0))
    y1, y2 = boxes[:, 0], boxes[:, 2]
    assert float((y1 == 0).double().mean()) == pytest.approx(6 / 20, abs=0.015)  # cy <= 5
    assert float((y2 == 20).double().mean()) == pytest.approx(5 / 20, abs=0.015)  # cy >= 15
    assert set((y2 - y1).tolist()) == set(range(5, 11))  # clipped sides 5..9, whole side 10


def _released_rand_bbox(h, w, lam, cy, cx):
    """The released rand_bbox (CutMix, Good-DA-in-KD utils.py, Distilling-with-VRM), given its centre draw."""
    cut_rat = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * cut_rat), int(w * cut_rat)
    return (np.clip(cy - cut_h // 2, 0, h), np.clip(cx - cut_w // 2, 0, w),
            np.clip(cy + cut_h // 2, 0, h), np.clip(cx + cut_w // 2, 0, w))


def test_released_box_rounding_is_the_released_rand_bbox():
    lam = sample_beta(1.0, (500,), gen(3)).double()
    boxes = draw_boxes(lam, 32, 28, gen(4), rounding="released")
    g = gen(4)  # the same centre draws: cy then cx
    cy, cx = torch.randint(32, (500,), generator=g), torch.randint(28, (500,), generator=g)
    expected = [_released_rand_bbox(32, 28, float(lam[i]), int(cy[i]), int(cx[i])) for i in range(500)]
    assert boxes.tolist() == [list(map(int, e)) for e in expected]


def test_released_rounding_keeps_more_of_the_base_image_than_exact():
    lam = sample_beta(1.0, (20_000,), gen(0))
    weight = {r: 1 - box_area_fraction(draw_boxes(lam, 32, 32, gen(1), rounding=r), 32, 32) for r in BOX_ROUNDINGS}
    assert bool((weight["released"] >= weight["exact"]).all())
    assert 0.005 < float((weight["released"] - weight["exact"]).mean()) < 0.02  # about 0.699 vs 0.688


@pytest.mark.parametrize("name", ["cutmix", "cut_n_mix"])
def test_box_rounding_reaches_the_augmentation_and_weights_stay_the_visible_fraction(name):
    images, labels = batch(8, h=15, w=15)
    fn = make_augment(name, box_rounding="released")
    rec = fn(images, labels, generator=gen(2))
    owner_area = rec.weights[:, 1:].sum(1)
    assert bool((rec.weights.sum(1) - 1).abs().lt(1e-6).all())
    if name == "cutmix":  # one box: its clipped area is the partner's weight
        assert torch.allclose(owner_area.double(), box_area_fraction(rec.boxes[:, 0], 15, 15))
    with pytest.raises(ConfigError, match="box_rounding"):
        make_augment(name, box_rounding="floor")


def test_cutmix_pick_restores_each_submodule_mode():
    images, labels = batch(6, h=8, w=8)
    teacher, student = tiny_net(bn=True), tiny_net(bn=True, seed=1)
    teacher.train()  # even a teacher left in train mode is scored in eval mode and restored
    student.eval()
    student[1].train()  # a mixed-mode student
    t_state = copy.deepcopy(teacher.state_dict())
    rec = cutmix_pick(images, labels, generator=gen(0), teacher=teacher, student=student, student_train_mode=True)
    assert teacher.training and all(m.training for m in teacher.modules())
    assert not student.training and student[1].training and not student[0].training
    for k, v in t_state.items():
        assert torch.equal(teacher.state_dict()[k], v)
    teacher.eval()
    with torch.no_grad():
        torch.testing.assert_close(rec.teacher_logits, teacher(rec.images))


# -------------------------------------------------------------------------------------------- registry


def test_make_augment_errors_and_binding():
    with pytest.raises(UnknownNameError) as e:
        make_augment("cutmixx")
    assert "cutmix" in str(e.value)
    with pytest.raises(ConfigError, match="'beta'"):
        make_augment("mixup", beta=1.0)
    with pytest.raises(ConfigError, match="generator"):
        make_augment("mixup", generator=gen(0))
    with pytest.raises(ConfigError, match="sampling"):
        make_augment("pmu", sampling="exactly")
    with pytest.raises(ConfigError, match="criterion"):
        make_augment("cutmix_pick", criterion="entropy")
    images, labels = batch(8)
    fn = make_augment("pmu", p=0.5, sampling="exact")
    a = fn(images, labels, generator=gen(2))
    b = pmu(images, labels, generator=gen(2), p=0.5, sampling="exact")
    assert torch.equal(a.images, b.images) and a.info["mixed_fraction"] == 0.5


# ----------------------------------------------------------------------------------------------- device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n in NAMES if n != "autoaugment"])
def test_cuda_matches_cpu_without_host_sync(name):
    images, labels = batch(16, h=32, w=32)
    teacher, student = tiny_net(), tiny_net(seed=1)
    cpu = call(name, images, labels, gen(3), teacher=teacher, student=student)
    teacher.cuda(), student.cuda()
    x, y = images.cuda(), labels.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        dev = call(name, x, y, gen(3), teacher=teacher, student=student)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert dev.images.is_cuda and dev.sources.is_cuda and dev.weights.is_cuda
    torch.testing.assert_close(dev.images.cpu(), cpu.images, atol=1e-5, rtol=1e-5)
    assert torch.equal(dev.sources.cpu(), cpu.sources)
    torch.testing.assert_close(dev.weights.cpu(), cpu.weights)
    torch.testing.assert_close(dev.soft_targets(y, 5).cpu(), cpu.soft_targets(labels, 5))


def test_cut_n_mix_mixing_probability():
    images, labels = batch(8, h=12, w=12)
    never = cut_n_mix(images, labels, generator=gen(0), prob=0.0)
    assert never.sources.shape == (8, 1) and torch.equal(never.images, images)
    always = cut_n_mix(images, labels, generator=gen(0), prob=1.0)
    assert torch.equal(always.images, cut_n_mix(images, labels, generator=gen(0)).images)  # no extra draw at 1
    g = gen(1)
    mixed = [cut_n_mix(images, labels, generator=g, prob=0.5).sources.shape[1] > 1 for _ in range(400)]
    assert 0.42 < sum(mixed) / 400 < 0.58


def test_the_specs_names_of_the_box_roundings_are_taken_for_ours():
    """methods.md section 6 calls them correct and as_published; configs record exact and released (the committed
    study rows do)."""
    from mixdistill.config import load_config

    for spec, ours in (("correct", "exact"), ("as_published", "released")):
        cfg = load_config(None, ["augment=cutmix", f"augment.box_rounding={spec}"])
        assert cfg.augment.model_extra["box_rounding"] == ours
