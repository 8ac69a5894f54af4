"""das2020 at full scale follows the released code (Distilling-with-VRM), and its class-discrimination finding
compares like with like: our ``as_published`` values against the paper's, which its notebook computed that way."""

from __future__ import annotations

import math

import pytest

from mixdistill.studies import get_study
from mixdistill.studies.common import load_study_config
from mixdistill.studies.das2020 import CD_ORDER_VARIANT, class_discrimination_order
from mixdistill.studies.grid import resolve, with_augment_params

# github hmassa48/Distilling-with-VRM @ 769d2127d9a29b31851132a2d3b5ab652c6830c6 (the only stored copy of
# deepandas11/Distilling-with-VRM): training_template.py:23 --lr 0.1, :24 --lr_decay 0.1, :25 --n_epochs 218,
# :26 --batch_size 128, :27 --decay 1e-4; :109-110 teachers SGD(lr=args.lr, momentum=0.9, weight_decay=args.decay);
# :216 students SGD(lr=args.lr, momentum=0.99) (no weight decay); utils/utils.py:84-102 adjust_learning_rate
# x lr_decay from 1-based epoch 60, 80, 120 (our 0-based milestones 59, 79, 119); :116/:229 epochs 1..n_epochs.
RELEASED = {
    "teacher": {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4, "nesterov": False, "epochs": 218,
                "schedule": "step", "milestones": [59, 79, 119], "gamma": 0.1},
    "student": {"lr": 0.1, "momentum": 0.99, "weight_decay": 0.0, "nesterov": False, "epochs": 218,
                "schedule": "step", "milestones": [59, 79, 119], "gamma": 0.1},
}


def test_das2020_full_recipe_is_the_released_codes(tmp_path):
    spec = load_study_config("das2020")
    full = spec["scales"]["full"]
    assert full["data"]["batch_size"] == 128 and full["cutout_size"] == 16
    assert full["teacher"]["model"]["student"] == "resnet18_cifar"
    runs = with_augment_params(get_study("das2020").grid("full", [0], tmp_path, None), full.get("augment_params", {}))
    roles = set()
    for run in runs:
        role = run.labels["role"]
        roles.add(role)
        optim = resolve(run, tmp_path).optim
        got = {key: getattr(optim, key) for key in RELEASED[role]}
        assert got == RELEASED[role], run.key
        assert optim.epoch_factor == 1 and optim.warmup_epochs == 0
    assert roles == {"teacher", "student"}


def test_das2020_cpu_and_smoke_recipes_unchanged():
    """Their results are committed: the full-scale fix must not move them."""
    scales = load_study_config("das2020")["scales"]
    assert scales["cpu"]["teacher"]["optim"] == {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4, "epochs": 80,
                                                 "schedule": "step", "milestones": [40, 60]}
    assert scales["cpu"]["student"]["optim"] == {"lr": 0.05, "momentum": 0.9, "weight_decay": 5.0e-4, "epochs": 70,
                                                 "schedule": "step", "milestones": [35, 50]}
    assert scales["smoke"]["teacher"]["optim"] == {"lr": 0.05, "epochs": 1, "schedule": "onecycle", "milestones": []}
    assert scales["smoke"]["student"]["optim"] == {"lr": 0.05, "epochs": 1, "schedule": "onecycle", "milestones": []}


def test_class_discrimination_order_ranks_the_as_published_values():
    """The two variants ordered oppositely: the finding is the as_published one (+1, the paper's order, on every
    replicate: Page's L), the correct one (-1) is only reported beside it."""
    from scipy import stats

    assert CD_ORDER_VARIANT == "as_published"
    paper = {"none": 0.161022, "mixup": 0.160580, "cutout": 0.158004, "crop_flip": 0.155214, "cutmix": 0.154048}
    order = list(paper)
    replicates = range(5)
    ours = {"as_published": {c: {r: 0.30 - 0.01 * i + 0.001 * r for r in replicates} for i, c in enumerate(order)},
            "correct": {c: {r: 0.20 + 0.01 * i for r in replicates} for i, c in enumerate(order)}}  # reversed
    effect = class_discrimination_order(paper, ours)
    assert effect.estimate == pytest.approx(1.0) and effect.n == 5
    perfect = [[5, 4, 3, 2, 1]] * 5  # every replicate in the paper's (decreasing) order
    assert effect.p == pytest.approx(2 * stats.page_trend_test([b[::-1] for b in perfect]).pvalue)
    assert effect.p < 1 / 60  # five means alone could not go below this
    assert "as_published variant" in effect.test and "correct variant, for information: mean rho = -1.000" in effect.test
    swapped = class_discrimination_order(paper, {"as_published": ours["correct"], "correct": ours["as_published"]})
    assert swapped.estimate == pytest.approx(-1.0) and "mean rho = +1.000" in swapped.test
    assert not math.isnan(effect.p)
