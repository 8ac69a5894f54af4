"""The study statistics: paired and Welch intervals, teacher-level tests, Holm, correlations, verdicts, seeds."""

from __future__ import annotations

import math

import pytest

from mixdistill.errors import ConfigError
from mixdistill.studies.stats import (Effect, Finding, Gate, correlation, equivalence, findings_markdown, holm,
                                      mean_ci, paired, parse_seeds, welch)


def test_paired_matches_the_hand_computed_t_interval():
    a = {0: 86.0, 1: 87.0, 2: 85.5, 3: 86.5, 4: 87.5}
    b = {0: 85.0, 1: 86.5, 2: 85.0, 3: 85.0, 4: 86.0, 9: 50.0}  # seed 9 has no partner: left out
    e = paired(a, b)
    diffs = [1.0, 0.5, 0.5, 1.5, 1.5]
    mean, sd = 1.0, math.sqrt(sum((d - 1.0) ** 2 for d in diffs) / 4)  # 0.5
    t = mean / (sd / math.sqrt(5))  # 4.472
    assert e.n == 5 and e.estimate == pytest.approx(mean)
    assert e.high - e.estimate == pytest.approx(2.7764451 * sd / math.sqrt(5), rel=1e-6)  # t(0.975, 4)
    assert e.p == pytest.approx(0.011056, rel=1e-3)  # 2 * (1 - T4(4.472))
    assert t == pytest.approx(4.4721, rel=1e-4)
    # unpaired, the same numbers are not significant: pairing is what the design buys
    assert welch(list(a.values()), list(b.values())[:5]).p > 0.05


def test_a_seed_whose_value_is_not_finite_is_left_out_and_the_test_says_so():
    a = {0: 86.0, 1: 87.0, 2: 85.5, 3: 86.5, 4: 87.5, 5: math.nan}
    b = {0: 85.0, 1: 86.5, 2: 85.0, 3: 85.0, 4: 86.0, 5: 80.0}
    e, clean = paired(a, b), paired({s: v for s, v in a.items() if s != 5}, b)
    assert (e.n, e.estimate, e.low, e.high, e.p) == (clean.n, clean.estimate, clean.low, clean.high, clean.p)
    assert e.test == "paired t, 5 seeds (1 seed left out: not a finite value)"
    tost = equivalence(a, b, 2.0)
    assert tost.n == 5 and tost.p == equivalence({s: v for s, v in a.items() if s != 5}, b, 2.0).p
    w = welch(list(a.values()), [float("inf")] + list(b.values()))
    assert w.test == "Welch t, 5 vs 6 (2 left out: not a finite value)" and math.isfinite(w.p)
    assert mean_ci([1.0, math.nan, 3.0]) == mean_ci([1.0, 3.0])


def test_welch_interval_uses_the_satterthwaite_degrees_of_freedom():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0, 10.0]
    e = welch(a, b)
    va, vb = (5 / 3) / 4, 10 / 5  # sample variances / n
    dof = (va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 4)
    from scipy import stats

    assert e.estimate == pytest.approx(2.5 - 6.0)
    assert e.high - e.estimate == pytest.approx(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))
    assert e.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)


def test_holm_matches_the_step_down_by_hand():
    effects = [Effect(1, 0, 2, p, "t", 5) for p in (0.01, 0.04, 0.03, 0.20)]
    holm(effects)
    # sorted 0.01, 0.03, 0.04, 0.20 -> x4, x3, x2, x1 with running max: 0.04, 0.09, 0.09, 0.20
    assert [e.p_holm for e in effects] == pytest.approx([0.04, 0.09, 0.09, 0.20])
    untested = Effect(1, math.nan, math.nan, math.nan, "t", 1)
    holm([untested])
    assert math.isnan(untested.p_holm)


def test_correlation_interval_and_mean_ci():
    e = correlation([1, 2, 3, 4, 5, 6], [1.1, 1.9, 3.2, 3.9, 5.1, 5.8])
    assert e.estimate > 0.99 and e.low < e.estimate < e.high <= 1 and e.p < 0.001
    m, low, high = mean_ci([1.0, 2.0, 3.0])
    assert m == 2.0 and high - m == pytest.approx(4.302653 * 1 / math.sqrt(3), rel=1e-6)


def test_verdicts_follow_gates_direction_and_holm():
    good = Effect(1.0, 0.5, 1.5, 0.001, "t", 5, p_holm=0.004)
    gate_ok, gate_bad = Gate("KD beats CE", "> 0", "+0.9", True), Gate("KD beats CE", "> 0", "-0.4", False)
    assert Finding("x", good, +1, "paper", gates=[gate_ok]).verdict == "reproduced"
    assert Finding("x", good, +1, "paper", gates=[gate_bad]).verdict == "no verdict: proxy invalid (KD beats CE)"
    assert Finding("x", good, -1, "paper").verdict == "NOT reproduced: significant opposite effect"
    weak = Effect(1.0, -0.5, 2.5, 0.02, "t", 5, p_holm=0.08)  # significant alone, not after Holm
    assert Finding("x", weak, +1, "paper").verdict == "same direction, not significant"
    assert Finding("x", weak, -1, "paper").verdict == "not reproduced (opposite direction, not significant)"
    assert [Finding("x", e, sign, "paper").outcome for e, sign in ((good, +1), (weak, +1), (weak, -1), (good, -1))] == [
        "reproduced", "inconclusive", "inconclusive", "contrary"]
    assert Finding("x", good, +1, "paper", gates=[gate_bad]).outcome == "none"


def test_a_claim_of_no_effect_is_judged_on_its_own_p_outside_holm():
    from mixdistill.studies.stats import adjust

    # raw p 0.02: significant alone; Holm across three findings would raise it to 0.06 and keep the claim
    null = Finding("CE does not gain", Effect(0.5, 0.1, 0.9, 0.02, "t", 5), +1, "no gain", no_effect_claim=True)
    claims = [Finding(f"claim {i}", Effect(1.0, 0.5, 1.5, p, "t", 5), +1, "paper") for i, p in enumerate((0.01, 0.03))]
    adjust([null, *claims])
    assert math.isnan(null.effect.p_holm) and null.p == 0.02
    assert null.verdict == "NOT reproduced (a significant effect where the paper claims none)"
    assert [c.effect.p_holm for c in claims] == pytest.approx([0.02, 0.03])  # a family of two, not three
    other_way = Finding("x", Effect(-0.5, -0.9, -0.1, 0.02, "t", 5), +1, "no gain", no_effect_claim=True)
    assert other_way.verdict == "not contradicted (a significant effect, the other way)"
    weak = Finding("x", Effect(0.5, -0.1, 1.1, 0.2, "t", 5), +1, "no gain", no_effect_claim=True)
    assert weak.verdict.startswith("not contradicted (no significant effect")


def test_the_findings_header_names_the_holm_family_the_adjustment_used():
    """A finding without a p (one seed, no spread, runs missing) is outside Holm's family: the header said the
    family was all the claims, which made the adjustment read stricter than it was."""
    from mixdistill.studies.stats import adjust

    claims = [Finding(f"claim {i}", Effect(1.0, 0.5, 1.5, p, "t", 5), +1, "paper")
              for i, p in enumerate((0.01, 0.03, math.nan))]
    adjust(claims)
    assert [c.effect.p_holm for c in claims[:2]] == pytest.approx([0.02, 0.03])  # a family of two
    text = " ".join(findings_markdown(claims))
    assert "Holm-adjusted across the 2 findings of this study that claim an effect and have a p (the other 1 have " \
           "none" in text
    adjust(claims[:2])
    assert "Holm-adjusted across the 2 findings of this study that claim an effect;" in \
        " ".join(findings_markdown(claims[:2]))


def test_equivalence_is_two_one_sided_paired_t_tests_and_its_90_percent_interval():
    """TOST by hand: p is the larger of the two one-sided t-test p values against -margin and +margin; the verdict
    of a claim of no effect is reproduced only when that p is below 0.05, which is when the 90% CI lies inside."""
    from scipy import stats as sps

    from mixdistill.studies.stats import equivalence

    a, b = {0: 85.1, 1: 85.4, 2: 84.9, 3: 85.3, 4: 85.0}, {0: 85.0, 1: 85.1, 2: 85.0, 3: 85.0, 4: 84.9}
    d = [a[s] - b[s] for s in a]
    mean, se = sum(d) / 5, (sum((x - sum(d) / 5) ** 2 for x in d) / 4) ** 0.5 / 5 ** 0.5
    for margin in (0.5, 0.2):
        p_lower = 1 - sps.t.cdf((mean + margin) / se, 4)  # H0: mean difference <= -margin
        p_upper = sps.t.cdf((mean - margin) / se, 4)  # H0: mean difference >= +margin
        q = equivalence(a, b, margin)
        assert q.p == pytest.approx(max(p_lower, p_upper), rel=1e-9) and q.margin == margin
        half = sps.t.ppf(0.95, 4) * se
        assert (q.low, q.high) == pytest.approx((mean - half, mean + half))
        assert (q.p < 0.05) == (-margin < q.low and q.high < margin)
    no_gain = paired(a, b)  # +0.14, p 0.13: no significant effect
    assert no_gain.p > 0.05
    shown = Finding("CE does not gain", no_gain, +1, "no gain", no_effect_claim=True,
                    equivalence=equivalence(a, b, 0.5))
    assert shown.verdict.startswith("reproduced (no significant effect, within ±0.50: TOST p")
    assert shown.outcome == "reproduced"
    wide = Finding("CE does not gain", no_gain, +1, "no gain", no_effect_claim=True,
                   equivalence=equivalence(a, b, 0.2))
    assert wide.verdict.startswith("not contradicted, not shown (no significant effect, but not shown within ±0.20")
    assert wide.outcome == "inconclusive"
    assert "paired TOST within ±0.20, 5 seeds: 90% CI [" in "\n".join(findings_markdown([wide]))
    # a significant gain smaller than the margin is the "no gain" the paper means; one that may exceed it is not
    small = {s: v + d for (s, v), d in zip(b.items(), (0.10, 0.12, 0.09, 0.11, 0.10))}
    assert paired(small, b).p < 0.05
    assert Finding("x", paired(small, b), +1, "no gain", no_effect_claim=True,
                   equivalence=equivalence(small, b, 0.5)).verdict.startswith(
        "reproduced (a significant but smaller effect, within ±0.50")
    assert Finding("x", paired(small, b), +1, "no gain", no_effect_claim=True,
                   equivalence=equivalence(small, b, 0.1)).verdict == (
        "NOT reproduced (a significant effect where the paper claims none)")


def test_claims_over_units_by_hand():
    """over_units: one-sample t of the units' estimates; mean_correlation: t over Fisher z, back-transformed;
    all_hold: fails where one fails, untested where none fails and one is untested."""
    from scipy import stats as sps

    from mixdistill.studies.stats import all_hold, mean_correlation, over_units

    effects = {p: Effect(d, math.nan, math.nan, math.nan, "t", 2) for p, d in (("a", 0.5), ("b", 1.0), ("c", 0.3))}
    effects["d"] = Effect(math.nan, math.nan, math.nan, math.nan, "t", 0)  # no seed ran both: left out
    pooled = over_units(effects)
    t = sps.ttest_1samp([0.5, 1.0, 0.3], 0.0)
    assert pooled.estimate == pytest.approx(0.6) and pooled.p == pytest.approx(t.pvalue) and pooled.n == 3
    half = sps.t.ppf(0.975, 2) * sps.tstd([0.5, 1.0, 0.3]) / 3 ** 0.5
    assert (pooled.low, pooled.high) == pytest.approx((0.6 - half, 0.6 + half))
    rs = {p: Effect(r, math.nan, math.nan, math.nan, "Pearson", 9) for p, r in (("a", 0.9), ("b", 0.5), ("c", 0.7))}
    z = [math.atanh(r) for r in (0.9, 0.5, 0.7)]
    mean = mean_correlation(rs)
    assert mean.estimate == pytest.approx(math.tanh(sum(z) / 3))
    assert mean.p == pytest.approx(sps.ttest_1samp(z, 0.0).pvalue) and mean.low < mean.estimate < mean.high
    ok, bad, unknown = Gate("x", "", "", True), Gate("y", "", "", False), Gate("z", "", "", None)
    assert all_hold("all", [ok, ok]).passed is True and all_hold("all", [ok, unknown]).passed is None
    both = all_hold("all", [ok, bad, unknown])
    assert both.passed is False and both.measured == "1 of 3 hold; fails: y; untested: z"


def test_identical_differences_on_every_seed_are_untestable_not_p_zero():
    e = paired({0: 1.0, 1: 2.0}, {0: 0.5, 1: 1.5})
    assert e.estimate == 0.5 and math.isnan(e.p) and e.interval() == "n/a" and "no spread" in e.test
    assert Finding("x", e, +1, "paper").verdict == "untested (no spread between units)"
    assert math.isnan(welch([1.0, 1.0], [2.0, 2.0]).p)
    one = paired({0: 1.0}, {0: 0.5})
    assert Finding("x", one, +1, "paper").verdict == "untested (fewer than 2 units)"


def test_p_near_alpha_is_printed_with_the_digit_that_decides_it():
    from mixdistill.studies.stats import fmt_p

    assert fmt_p(0.0498) == "0.0498" and fmt_p(0.0502) == "0.0502" and fmt_p(0.047) == "0.047"
    assert fmt_p(0.0004) == "< 0.001" and fmt_p(math.nan) == "n/a"


def test_exact_spearman_p_counts_every_order_up_to_nine_points():
    import itertools

    from scipy import stats

    from mixdistill.studies.stats import rank_correlation

    x, y = [1, 2, 3, 4, 5, 6, 7], [2, 1, 3, 5, 4, 7, 6]  # by brute force through scipy's rho, over the 7! orders
    rho = float(stats.spearmanr(x, y).statistic)
    rhos = [float(stats.spearmanr(x, perm).statistic) for perm in itertools.permutations(y)]
    e = rank_correlation(x, y)
    assert e.estimate == pytest.approx(rho) and "exact p" in e.test
    assert e.interval() == "(rank test: no CI)"  # the findings table says why there is none, not "n/a"
    assert e.p == pytest.approx(sum(abs(r) >= abs(rho) - 1e-9 for r in rhos) / len(rhos))
    nine = rank_correlation([1, 2, 3, 4, 5, 6, 7, 8, 9], [2, 1, 3, 5, 4, 6, 9, 7, 8])
    assert "exact p" in nine.test and nine.p > stats.spearmanr(range(9), [2, 1, 3, 5, 4, 6, 9, 7, 8]).pvalue
    assert rank_correlation([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]).p == pytest.approx(2 / 120)  # the order and its reverse
    assert "exact p" not in rank_correlation(list(range(10)), list(range(10))).test


def test_ordered_trend_is_pages_test_over_replicates():
    from scipy import stats

    from mixdistill.studies.stats import ordered_trend

    expected = [0.5, 0.4, 0.3, 0.2, 0.1]  # the paper's values: decreasing across the five conditions
    blocks = [[5.0, 4.0, 3.0, 2.0, 1.0], [5.1, 3.9, 3.2, 1.8, 1.1], [4.0, 5.0, 3.0, 2.0, 1.0],
              [5.0, 4.0, 2.0, 3.0, 1.0], [5.0, 4.0, 3.0, 1.0, 2.0]]
    e = ordered_trend(expected, blocks)
    one_sided = stats.page_trend_test([b[::-1] for b in blocks]).pvalue  # increasing in the reversed order
    assert e.p == pytest.approx(2 * one_sided) and e.p < 1 / 60  # below what five means can reach
    assert e.estimate == pytest.approx((2 * 1.0 + 3 * 0.9) / 5)  # two blocks in order, three with one swap (rho 0.9)
    assert e.n == 5 and "Page's L, 5 replicates × 5 conditions" in e.test
    reversed_blocks = [b[::-1] for b in blocks]
    assert ordered_trend(expected, reversed_blocks).estimate < 0
    assert ordered_trend(expected, reversed_blocks).p == pytest.approx(e.p)
    assert math.isnan(ordered_trend(expected, blocks[:1]).p)


@pytest.mark.parametrize("text, seeds", [("5", [0, 1, 2, 3, 4]), ("10-14", [10, 11, 12, 13, 14]),
                                         ("3,7,9", [3, 7, 9]), (" 2 ", [0, 1]), ("4-4", [4]), ("3,", [3]),
                                         ("3, 7", [3, 7])])
def test_seed_syntax(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["0", "-1", "5-3", "a", "1,1", "3,-2", "1-2-3", ",", str(2**64),
                                  "1,,2", "\u0663", "1e2", "0x10"])  # int() took '1,,2' as 1,2 and Arabic-Indic 3
def test_bad_seed_syntax_is_one_clear_error(text):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(text)


def test_a_descending_range_of_seeds_says_so():
    with pytest.raises(ConfigError, match="--seeds '5-3': a range goes up, first to last \\(3-5\\)"):
        parse_seeds("5-3")


@pytest.mark.parametrize("text", ["1001", "0-1000", "5-99999999999", "1000000000000000"])
def test_more_seeds_than_a_grid_can_hold_is_refused_before_listing_them(text):
    with pytest.raises(ConfigError, match="at most 1000 seeds"):
        parse_seeds(text)


def test_a_list_of_seeds_is_checked_like_the_text():
    assert parse_seeds([3, 7, 9]) == parse_seeds("3,7,9") == [3, 7, 9]
    for bad in ([1, 1], [-2], [], [1.5], [True]):
        with pytest.raises(ConfigError, match="seeds"):
            parse_seeds(bad)


def test_published_difference_is_welch_from_the_papers_means_and_stds():
    from scipy import stats

    from mixdistill.studies.stats import fmt_p, published_difference

    # wang2022, wrn_40_2 -> wrn_16_2: KD + CutMix 75.34 (0.19) vs KD 74.92 (0.28), 3 runs each
    va, vb = 0.19 ** 2 / 3, 0.28 ** 2 / 3
    t = 0.42 / math.sqrt(va + vb)
    dof = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    p = 2 * stats.t.sf(t, dof)
    assert 0.10 < p < 0.11
    assert published_difference((75.34, 0.19), (74.92, 0.28)) == \
        f"+0.42, p {fmt_p(p)} (our Welch test on its mean ± std, 3 runs each)"


def test_every_published_number_has_a_source():
    from mixdistill.resources import reference

    for name in ("wang2022", "crd_benchmark", "das2020", "choi2023", "online_benchmark"):
        assert len(reference(name)["source"]) > 60, name


def _history(run_dir, epochs, train_acc, test_loss_at):
    import json
    run_dir.mkdir(parents=True)
    rows = []
    for e in range(1, epochs + 1):
        row = {"epoch": e, "step": 10 * e, "train_acc": train_acc(e)}
        if e in test_loss_at:
            row["test_loss"] = test_loss_at[e]
        rows.append(json.dumps(row))
    (run_dir / "metrics.jsonl").write_text("\n".join(rows) + "\n")


def test_plateau_compares_five_epoch_means_of_train_accuracy_and_the_quarter_evaluation(tmp_path):
    from mixdistill.studies.common import plateau
    # 40 epochs: the quarter mark is epoch 30; train accuracy alternates +-1 around a level that rises by
    # 0.1 a epoch, so single epochs 30 and 40 differ by 1 + 2 = 3 while the 5-epoch means differ by exactly 1.0
    _history(tmp_path / "run", 40, lambda e: 80 + 0.1 * e + (1 if e % 2 else -1),
             {10: 0.60, 20: 0.50, 31: 0.40, 40: 0.38})
    p = plateau(tmp_path / "run")
    # mean of epochs 26..30 vs 36..40: the alternation leaves +0.2 in each (three odd, two even), so 1.0 apart
    assert p["train_acc_change"] == pytest.approx(1.0)
    assert p["from_epoch"] == 31 and p["to_epoch"] == 40  # the evaluation one epoch after the mark counts
    assert p["test_loss_change"] == pytest.approx((0.38 - 0.40) / 0.40)
    assert p["steps"] == 400
    _history(tmp_path / "late", 40, lambda e: 80.0, {33: 0.4, 40: 0.4})
    assert plateau(tmp_path / "late") is None  # no evaluation at the mark: nothing to compare


def test_convergence_gate_is_the_median_over_runs(tmp_path):
    from mixdistill.studies.common import convergence_gate
    rows = {}
    for i, loss_end in enumerate([0.41, 0.45, 0.409]):  # relative moves 2.5%, 12.5%, 2.25%: median 2.5%
        _history(tmp_path / "runs" / f"s__r{i}", 100, lambda e: 90.0, {75: 0.40, 100: loss_end})
        rows[f"s/r{i}"] = {"key": f"s/r{i}", "labels": {"role": "student"}}
    gate = convergence_gate(rows, tmp_path, role="student")
    assert not gate.passed and "test loss 2.5%" in gate.measured and "1000 steps" in gate.measured
    assert convergence_gate(rows, tmp_path, max_loss=0.03, role="student").passed
    assert not convergence_gate(rows, tmp_path, max_loss=0.03, min_steps=1001, role="student").passed


def test_a_gate_resting_on_an_untestable_effect_is_untested_not_failed():
    from mixdistill.studies.stats import gates_markdown, holds

    one_seed = paired({0: 86.0}, {0: 84.0})
    assert holds(one_seed.estimate > 0 and one_seed.p < 0.05, one_seed) is None
    tested = paired({0: 86.0, 1: 87.0, 2: 86.5}, {0: 84.0, 1: 84.5, 2: 85.0})
    assert holds(tested.estimate > 0 and tested.p < 0.05, tested) is True
    gate = Gate("KD beats CE", "> 0", "+2.00, p = n/a", None)
    finding = Finding("x", Effect(1.0, 0.5, 1.5, 0.001, "t", 5, p_holm=0.004), +1, "paper", gates=[gate])
    assert finding.verdict == "no verdict: precondition untested (KD beats CE)" and finding.outcome == "none"
    failed = Gate("converged", "plateau", "moving", False)
    assert Finding("x", finding.effect, +1, "paper", gates=[gate, failed]).verdict == \
        "no verdict: proxy invalid (converged)"
    text = "\n".join(gates_markdown([gate]))
    assert "| untested (fewer than 2 seeds, no spread, or no run finished) |" in text and "Proxy invalid" not in text


def test_p_text_reads_as_a_sentence():
    from mixdistill.studies.stats import p_text

    assert p_text(0.0001) == "p < 0.001"  # the gates printed "p = < 0.001"
    assert p_text(0.0123) == "p = 0.012" and p_text(0.0498) == "p = 0.0498"


def test_an_effect_that_rounds_to_zero_gets_the_decimals_that_show_it():
    """das2020 printed '-0.000 ECE [-0.000, -0.000]' beside p 0.021."""
    assert Effect(-0.00031, -0.00052, -0.00011, 0.021, "t", 3).text(3, " ECE") == "-0.0003 ECE [-0.0005, -0.0001]"
    assert Effect(0.42, -0.1, 0.94, 0.1, "t", 3).text() == "+0.42 [-0.10, +0.94]"  # as before where it shows
    assert Effect(0.0, 0.0, 0.0, math.nan, "t", 3).text() == "+0.00 [+0.00, +0.00]"  # exactly none: no more digits
    assert Effect(1e-17, -1e-17, 3e-17, math.nan, "t", 3).text() == "+0.00 [-0.00, +0.00]"  # rounding noise: none


def test_seeds_moved_by_one_amount_are_untested_though_float_differences_are_not_exactly_equal():
    """85.13 - 84.83 and 84.21 - 83.91 differ in the last bits: the stdev read 1e-15, not 0, and p 5e-56 with a
    zero-width interval (a sign −1 claim then read "significant opposite effect"; a no-effect claim "reproduced")."""
    from mixdistill.studies.stats import equivalence, rank_correlation

    a = {0: 85.13, 1: 84.21, 2: 86.07, 3: 85.55, 4: 84.9}
    b = {0: 84.83, 1: 83.91, 2: 85.77, 3: 85.25, 4: 84.6}
    assert len({a[s] - b[s] for s in a}) > 1  # not equal as floats
    e = paired(a, b)
    assert e.estimate == pytest.approx(0.3) and math.isnan(e.p) and math.isnan(e.low)
    assert e.test.endswith("no spread between seeds")
    assert math.isnan(equivalence(a, b, margin=0.5).p)
    # a real spread of a hundredth of a point is still tested
    b[4] = 84.61
    assert paired(a, b).p < 1e-6
    # a rank correlation with one side constant ranks nothing: untested, not p = 1
    r = rank_correlation([3.0, 2.0, 1.0, 4.0], [0.38] * 4)
    assert math.isnan(r.p) and r.test.endswith("one side constant")
