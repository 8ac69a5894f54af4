"""The statistics of the study reports: effects with 95% confidence intervals and the test that fits the
design, Holm's correction across a study's findings, gates (the paper's preconditions) and verdicts.

Designs:

* **paired** (:func:`paired`): both conditions ran the same seeds, and a seed fixes the initialisation and the
  data order, so the per-seed differences are what varies: paired t-test, t-interval of the mean difference.
* **unpaired** (:func:`welch`): Welch's t-test and the Welch-Satterthwaite interval.
* **correlation** (:func:`correlation`): Pearson r with its Fisher-z interval and p.

Tests come from scipy; Holm's step-down adjustment from statsmodels.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass, field

from mixdistill.errors import ConfigError

ALPHA = 0.05
RANK_TESTS = ("Spearman", "Page's L")  # tests of an order: an estimate (mean rho) and p, no confidence interval


@dataclass
class Effect:
    estimate: float  # a mean difference (a - b), or r
    low: float  # 95% confidence interval
    high: float
    p: float  # two-sided
    test: str  # what was tested, with its n
    n: int  # the number of units the test counts (pairs, replicates, points)
    p_holm: float = math.nan  # set by holm()
    margin: float = math.nan  # an equivalence test's margin (:func:`equivalence`)

    def interval(self, digits: int = 2) -> str:
        if math.isnan(self.low):
            return "(rank test: no CI)" if self.test.startswith(RANK_TESTS) else "n/a"
        return f"[{self.low:+.{digits}f}, {self.high:+.{digits}f}]"

    def text(self, digits: int = 2, unit: str = "") -> str:
        """'+0.42 points [-0.10, +0.94]'; 'n/a' where there is no estimate (no seed ran both conditions). An effect
        whose estimate rounds to zero at ``digits`` gets the decimals that show it (up to 8): '-0.0003 ECE
        [-0.0005, -0.0001]', not '-0.000 ECE [-0.001, -0.000]'."""
        if math.isnan(self.estimate):
            return "n/a"
        while 0.5e-8 <= abs(self.estimate) < 0.5 * 10 ** -digits:  # below that, floating-point noise: zero
            digits += 1
        return f"{signed(self.estimate, digits)}{unit} {self.interval(digits)}"


def _nan_effect(estimate: float, test: str, n: int) -> Effect:
    return Effect(estimate, math.nan, math.nan, math.nan, test, n)


def _no_spread(values: list[float]) -> bool:
    """Are ``values`` (two or more) equal up to floating-point rounding? Differences of accuracies that all moved
    by one amount are not exactly equal as floats (a stdev of 1e-15, not 0), and a t-test would scale by that."""
    return statistics.stdev(values) <= 1e-9 * max(1.0, max(abs(v) for v in values))


def _finite(x) -> bool:
    return x is not None and math.isfinite(x)


def _common_seeds(a: dict, b: dict) -> tuple[list, str]:
    """The seeds both ``a`` and ``b`` have a finite value for, and a note naming how many were left out for a
    value that is not (a NaN metric would otherwise stop ``statistics.stdev`` or turn every number NaN)."""
    both = sorted(set(a) & set(b))
    seeds = [s for s in both if _finite(a[s]) and _finite(b[s])]
    left_out = len(both) - len(seeds)
    return seeds, (f" ({counted(left_out, 'seed')} left out: not a finite value)" if left_out else "")


def paired(a: dict, b: dict) -> Effect:
    """``a - b`` over the seeds both have a finite value for (dicts seed -> value): paired t-test and
    t-interval."""
    from scipy import stats

    seeds, left_out = _common_seeds(a, b)
    diffs = [a[s] - b[s] for s in seeds]
    test = f"paired t, {counted(len(seeds), 'seed')}{left_out}"
    if not diffs:
        return _nan_effect(math.nan, test, 0)
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return _nan_effect(mean, test, len(diffs))
    sd = statistics.stdev(diffs)
    if _no_spread(diffs):  # every seed moved by the same amount (coarse accuracy steps): nothing to scale by
        return _nan_effect(mean, test + ", no spread between seeds", len(diffs))
    half = stats.t.ppf(1 - ALPHA / 2, len(diffs) - 1) * sd / math.sqrt(len(diffs))
    p = float(stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds]).pvalue)
    return Effect(mean, mean - half, mean + half, p, test, len(diffs))


def equivalence(a: dict, b: dict, margin: float) -> Effect:
    """Is ``a - b`` within ±``margin``, over the seeds both have? Two one-sided paired t-tests (TOST, statsmodels'
    ``ttost_paired``): p is the larger one-sided p, small where the difference is shown to lie inside the margin;
    the interval is the 90% t-interval of the mean difference, which lies inside ±margin exactly when p < 0.05."""
    import numpy as np
    from scipy import stats
    from statsmodels.stats.weightstats import ttost_paired

    seeds, left_out = _common_seeds(a, b)
    diffs = [a[s] - b[s] for s in seeds]
    test = f"paired TOST within ±{margin:.2f}, {counted(len(seeds), 'seed')}{left_out}"
    if len(diffs) < 2 or _no_spread(diffs):
        effect = _nan_effect(statistics.fmean(diffs) if diffs else math.nan, test, len(diffs))
        effect.margin = margin
        return effect
    mean = statistics.fmean(diffs)
    half = stats.t.ppf(1 - ALPHA, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    p = float(ttost_paired(np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds]), -margin, margin)[0])
    return Effect(mean, mean - half, mean + half, p, test, len(diffs), margin=margin)


def welch(a: list[float], b: list[float]) -> Effect:
    """``mean(a) - mean(b)`` for unpaired samples: Welch's t-test and the Welch-Satterthwaite interval."""
    from scipy import stats

    given = len(a) + len(b)
    a, b = [v for v in a if _finite(v)], [v for v in b if _finite(v)]
    left_out = given - len(a) - len(b)
    test = f"Welch t, {len(a)} vs {len(b)}" + (f" ({left_out} left out: not a finite value)" if left_out else "")
    if not a or not b:
        return _nan_effect(math.nan, test, 0)
    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return _nan_effect(diff, test, min(len(a), len(b)))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    if va + vb == 0:
        return _nan_effect(diff, test + ", no spread within either", min(len(a), len(b)))
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(1 - ALPHA / 2, dof) * math.sqrt(va + vb)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue)
    return Effect(diff, diff - half, diff + half, p, test, min(len(a), len(b)))


def published_difference(a: tuple[float, float], b: tuple[float, float], runs: int = 3) -> str:
    """A paper's own significance for ``a - b`` from its published (mean, std) of ``runs`` runs each: Welch's
    t-test from the summary statistics, e.g. "+0.42, p 0.11 (our Welch test on its mean ± std, 3 runs each)": the
    paper printed no p, so the p is ours."""
    from scipy import stats

    (ma, sa), (mb, sb) = a, b
    p = float(stats.ttest_ind_from_stats(ma, sa, runs, mb, sb, runs, equal_var=False).pvalue)
    return f"{ma - mb:+.2f}, p {fmt_p(p)} (our Welch test on its mean ± std, {runs} runs each)"


def correlation(x: list[float], y: list[float], what: str = "") -> Effect:
    """Pearson r of ``x`` and ``y`` with its 95% Fisher-z interval and p."""
    from scipy import stats

    test = f"Pearson, {len(x)} points" + (f" ({what})" if what else "")
    if len(x) < 3:
        return _nan_effect(math.nan, test, len(x))
    result = stats.pearsonr(x, y)
    ci = result.confidence_interval(0.95) if len(x) > 3 else (math.nan, math.nan)
    return Effect(float(result.statistic), float(ci[0]), float(ci[1]), float(result.pvalue), test, len(x))


def rank_correlation(x: list[float], y: list[float], what: str = "") -> Effect:
    """Spearman rho of ``x`` and ``y``; p exact (two-sided, over every order of ``y``) up to
    ``EXACT_RANK_POINTS`` points, else scipy's t approximation (analysis.teacher_stats.spearman); no interval."""
    from mixdistill.analysis.teacher_stats import EXACT_RANK_POINTS, spearman

    test = f"Spearman, {len(x)} points" + (f" ({what})" if what else "")
    if len(x) < 3:
        return _nan_effect(math.nan, test, len(x))
    if len(set(x)) == 1 or len(set(y)) == 1:  # a constant ranks nothing (its rho is NaN; the exact p read 1)
        return _nan_effect(math.nan, test + ", one side constant", len(x))
    rho, p = spearman(x, y)
    return Effect(rho, math.nan, math.nan, p, test + (", exact p" if len(x) <= EXACT_RANK_POINTS else ""), len(x))


def ordered_trend(expected: list[float], blocks: list[list[float]], what: str = "") -> Effect:
    """Whether each block's values (a replicate: one value per condition, in the order of ``expected``) follow the
    order of ``expected``: Page's L test over the blocks (the replicate-level test of an ordered alternative; a
    rank correlation of the conditions' means throws the replicates away, and five means cannot reach p < 1/60),
    two-sided as twice the smaller one-sided p. The estimate is the blocks' mean Spearman rho with ``expected``.
    The p is scipy's ``page_trend_test`` (method auto): exact for small designs (das2020's 5 × 5), else its normal
    approximation (wang2022's nine views); both assume blocks without ties, which tied blocks (midranks) only
    approximate: for the exact null, conservatively in the cases checked."""
    import numpy as np
    from scipy import stats

    test = (f"Page's L, {counted(len(blocks), 'replicate')} × {len(expected)} conditions"
            + (f" ({what})" if what else ""))
    usable = [b for b in blocks if len(set(b)) > 1]  # a block of equal values ranks nothing
    if len(usable) < 2 or len(expected) < 3:
        return _nan_effect(math.nan, test, len(usable))
    data = np.asarray(usable, dtype=float)[:, np.argsort(expected)]  # columns in the expected increasing order
    up, down = stats.page_trend_test(data).pvalue, stats.page_trend_test(data[:, ::-1]).pvalue
    rho = statistics.fmean(float(stats.spearmanr(expected, b).statistic) for b in usable)
    return Effect(rho, math.nan, math.nan, min(1.0, 2 * float(min(up, down))), test, len(usable))


def over_units(effects: dict[str, Effect], unit: str = "pair") -> Effect:
    """One effect from several units' own (each a pair of architectures, with its own paired effect over seeds):
    the mean of their estimates, one-sample t over the units (a unit without an estimate is left out). The
    claim "X beats Y" across architectures is then tested with the architectures as the sample, as a paper's
    table of pairs reads; each unit's effect stays in the report as descriptive."""
    estimates = {k: e.estimate for k, e in effects.items() if not math.isnan(e.estimate)}
    effect = paired(estimates, {k: 0.0 for k in estimates})
    effect.test = (f"one-sample t over {counted(len(estimates), unit)} (each {unit}'s mean paired difference)"
                   + (", no spread between them" if "no spread" in effect.test else ""))
    return effect


def equivalence_over_units(effects: dict[str, Effect], margin: float, unit: str = "pair") -> Effect:
    """:func:`equivalence` of the units' estimates (as :func:`over_units`) with zero."""
    estimates = {k: e.estimate for k, e in effects.items() if not math.isnan(e.estimate)}
    effect = equivalence(estimates, {k: 0.0 for k in estimates}, margin)
    effect.test = f"TOST within ±{margin:.2f} over {counted(len(estimates), unit)}"
    return effect


def _fisher_z(r: float) -> float:
    """atanh(r), with |r| held below 0.995 (z 3.0) so that one perfect correlation does not outweigh the rest."""
    return math.atanh(max(-0.995, min(0.995, r)))


def mean_correlation(effects: dict[str, Effect], unit: str = "pair") -> Effect:
    """Several units' Pearson r as one: the mean of their Fisher z, one-sample t over the units, the estimate and
    95% interval back-transformed (tanh)."""
    from scipy import stats

    z = [_fisher_z(e.estimate) for e in effects.values() if not math.isnan(e.estimate)]
    test = f"t over the Fisher z of {counted(len(z), unit)} (Pearson r each)"
    if len(z) < 2 or statistics.stdev(z) == 0:
        return _nan_effect(math.tanh(statistics.fmean(z)) if z else math.nan, test, len(z))
    mean, se = statistics.fmean(z), statistics.stdev(z) / math.sqrt(len(z))
    half = stats.t.ppf(1 - ALPHA / 2, len(z) - 1) * se
    p = float(stats.ttest_1samp(z, 0.0).pvalue)
    return Effect(math.tanh(mean), math.tanh(mean - half), math.tanh(mean + half), p, test, len(z))


def all_hold(name: str, gates: list[Gate]) -> Gate:
    """One gate from several (a condition on every pair): holds where each does; untested where none fails and
    one is untested."""
    failed = [g.name for g in gates if g.passed is False]
    untested = [g.name for g in gates if g.passed is None]
    passed = False if failed else None if untested or not gates else True
    measured = (f"{len(gates) - len(failed) - len(untested)} of {len(gates)} hold"
                + (f"; fails: {'; '.join(failed)}" if failed else "")
                + (f"; untested: {'; '.join(untested)}" if untested else ""))
    return Gate(name, "every one of them holds (each in the rows above)", measured, passed)


def holm(effects: list[Effect]) -> None:
    """Holm's step-down adjustment across ``effects`` (those without a p keep NaN)."""
    from statsmodels.stats.multitest import multipletests

    tested = [e for e in effects if not math.isnan(e.p)]
    if not tested:
        return
    adjusted = multipletests([e.p for e in tested], alpha=ALPHA, method="holm")[1]
    for e, p in zip(tested, adjusted):
        e.p_holm = float(p)


# ----------------------------------------------------------------------------------------- gates, findings

@dataclass
class Gate:
    """A precondition of a paper's finding, measured at this scale."""

    name: str
    condition: str  # what must hold
    measured: str  # what we measured
    passed: bool | None  # None: untested (a test it rests on had fewer than 2 units or no spread: see holds)


def holds(condition: bool, *effects: Effect) -> bool | None:
    """A gate's outcome: ``condition``, or None (untested) where an effect it rests on has no p."""
    return None if any(math.isnan(e.p) for e in effects) else bool(condition)


@dataclass
class Finding:
    """A paper's claim, our effect for it, and the verdict (given only where every gate it needs holds)."""

    claim: str
    effect: Effect
    sign: int  # the paper's direction: +1 (a > b) or -1
    paper: str  # the paper's number, labelled with its dataset
    unit: str = "points"
    gates: list[Gate] = field(default_factory=list)
    no_effect_claim: bool = False  # the paper claims there is no effect (CE does not gain from longer training)
    equivalence: Effect | None = None  # a claim of no effect: the TOST within its margin (:func:`equivalence`)

    def effect_text(self) -> str:
        """The effect cell of a findings table: three decimals for ECE and r, the unit after points."""
        return self.effect.text(3 if self.unit in ("ECE", "r") else 2, "" if self.unit == "r" else f" {self.unit}")

    @property
    def failed_gates(self) -> list[Gate]:
        """The gates that do not hold: failed, or untested."""
        return [g for g in self.gates if g.passed is not True]

    @property
    def p(self) -> float:
        """The p the verdict rests on: Holm-adjusted where the claim is an effect (see :func:`adjust`)."""
        e = self.effect
        return e.p if self.no_effect_claim or math.isnan(e.p_holm) else e.p_holm

    @property
    def verdict(self) -> str:
        failed = [g.name for g in self.failed_gates if g.passed is False]
        untested = [g.name for g in self.failed_gates if g.passed is None]
        if failed:  # the gates table says what was measured
            return "no verdict: proxy invalid (" + "; ".join(failed) + ")"
        if untested:
            return "no verdict: precondition untested (" + "; ".join(untested) + ")"
        e, p = self.effect, self.p
        if math.isnan(p):
            return "untested (" + ("fewer than 2 units" if e.n < 2 else "no spread between units") + ")"
        if self.no_effect_claim:
            q = self.equivalence
            if q is not None and q.p < ALPHA:  # shown within the margin: an effect too small to be the one claimed
                small = "a significant but smaller effect" if p < ALPHA else "no significant effect"
                return f"reproduced ({small}, within ±{q.margin:.2f}: TOST p {fmt_p(q.p)})"
            if p < ALPHA:
                if e.estimate * self.sign > 0:
                    return "NOT reproduced (a significant effect where the paper claims none)"
                return "not contradicted (a significant effect, the other way)"
            if q is None or math.isnan(q.p):
                return "not contradicted (no significant effect; that does not show there is none)"
            return (f"not contradicted, not shown (no significant effect, but not shown within ±{q.margin:.2f}: "
                    f"TOST p {fmt_p(q.p)})")
        if e.estimate * self.sign > 0:
            return "reproduced" if p < ALPHA else "same direction, not significant"
        return ("NOT reproduced: significant opposite effect" if p < ALPHA
                else "not reproduced (opposite direction, not significant)")

    @property
    def outcome(self) -> str:
        """The verdict in one word, for colours: reproduced, inconclusive (not significant either way, or not
        contradicted), contrary (a significant effect against the claim) or none (a gate failed)."""
        if self.failed_gates:
            return "none"
        verdict = self.verdict
        if verdict.startswith("reproduced"):
            return "reproduced"
        return "contrary" if verdict.startswith("NOT reproduced") else "inconclusive"


def adjust(findings: list[Finding]) -> None:
    """Holm across a study's findings that claim an effect. A claim of *no* effect keeps its own p: raising it
    would make the claim easier to keep, the opposite of what a correction is for."""
    holm([f.effect for f in findings if not f.no_effect_claim])


def signed(x: float, digits: int = 2) -> str:
    """'+0.42'; 'n/a' for NaN (no unit had both conditions: every run of one diverged)."""
    return "n/a" if math.isnan(x) else f"{x:+.{digits}f}"


def p_text(p: float) -> str:
    """'p = 0.012', 'p < 0.001' (not 'p = < 0.001')."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def fmt_p(p: float) -> str:
    """Three decimals; four near α, where three would round across it (0.0498 is not "0.050")."""
    if math.isnan(p):
        return "n/a"
    if p < 0.001:
        return "< 0.001"
    return f"{p:.4f}" if abs(p - ALPHA) < 0.0005 else f"{p:.3f}"


def gates_markdown(gates: list[Gate]) -> list[str]:
    lines = ["## Gates: the papers' preconditions at this scale", "",
             "A finding gets a verdict only where every gate it rests on holds.", "",
             "| gate | must hold | measured | holds |", "|---|---|---|---|"]
    shown = {True: "yes", False: "**no**", None: "untested (fewer than 2 seeds, no spread, or no run finished)"}
    lines += [f"| {g.name} | {g.condition} | {g.measured} | {shown[g.passed]} |" for g in gates]
    failed = [g for g in gates if g.passed is False]
    if failed:
        lines += [""] + [f"**Proxy invalid: {g.name}, measured {g.measured}.** The findings resting on it get no "
                         f"verdict." for g in failed]
    if any(g.passed is None for g in gates):
        lines += ["", "A gate that could not be tested holds nothing up: the findings resting on it get no verdict."]
    return lines + [""]


def findings_markdown(findings: list[Finding]) -> list[str]:
    claims = sum(not f.no_effect_claim for f in findings)
    tested = sum(not f.no_effect_claim and not math.isnan(f.effect.p) for f in findings)
    none = len(findings) - claims
    family = (f"the {claims} findings of this study that claim an effect" if tested == claims else
              f"the {tested} findings of this study that claim an effect and have a p (the other {claims - tested} "
              "have none: too few finished seeds, or no spread between them; with all of them the family would "
              "be larger and the adjustment stricter)")
    lines = ["## Findings", "",
             f"Effect = ours, with its 95% confidence interval; p two-sided; Holm-adjusted across {family}; "
             f"verdict at α = {ALPHA} on the Holm-adjusted p"
             + (f". The {none} claim(s) of no effect are judged on their own p (no Holm: adjusting would make a "
                "claim of no effect easier to keep); one is reproduced only where, besides, two one-sided tests "
                "(TOST) show the difference within the margin the test column states, i.e. its 90% CI lies inside "
                "it" if none else "") + ". \"Not reproduced\" without capitals: "
             "the estimate points the other way but is not significant; \"NOT reproduced\": significantly so.", "",
             "| finding (paper's claim) | paper | ours: effect [95% CI] | test | p | Holm p | verdict |",
             "|---|---|---|---|---|---|---|"]
    for f in findings:
        lines.append(f"| {f.claim} | {f.paper} | {f.effect_text()} | "
                     f"{f.effect.test}{_equivalence_text(f)} | {fmt_p(f.effect.p)} | {fmt_p(f.effect.p_holm)} | "
                     f"{f.verdict} |")
    return lines + [""]


def _equivalence_text(f: Finding) -> str:
    """The test column's addition for a claim of no effect: '; paired TOST within ±0.76, 5 seeds: 90% CI [..]'."""
    q = f.equivalence
    return "" if q is None else f"; {q.test}: 90% CI {q.interval()}"


def finding_over_units(claim: str, own: dict[str, Finding], over: dict[int, Gate], unit: str = "pair",
                       paper: str | None = None, margin: float | None = None) -> Finding:
    """One finding of ``claim`` from the units' own (``own``: unit -> its finding): its effect over the units
    (:func:`over_units`), resting on the gates over the units that stand for the gates the units' findings rest on
    (``over``: id of a unit's gate -> its gate over the units); a claim of no effect with its TOST over the units
    within ``margin``."""
    first = next(iter(own.values()))
    effects = {k: f.effect for k, f in own.items()}
    effect = over_units(effects, unit)  # the units with an estimate
    gates: list[Gate] = []
    for g in first.gates:
        if all(over[id(g)] is not o for o in gates):
            gates.append(over[id(g)])
    tost = equivalence_over_units(effects, margin, unit) if first.no_effect_claim and margin is not None else None
    return Finding(f"over {counted(effect.n, unit)}: {claim}", effect, first.sign, paper or first.paper, first.unit,
                   gates, first.no_effect_claim, tost)


def each_unit_markdown(described: list[Finding], unit: str = "pair") -> list[str]:
    """The units' own findings (each pair's, each setting's) where the claims are judged over the units:
    descriptive, p unadjusted."""
    if not described:
        return []
    lines = [f"## Each {unit} on its own", "",
             f"Descriptive: each {unit}'s effect over its seeds, p unadjusted; the findings above judge each claim "
             f"over the {unit}s.", "", "| finding | effect [95% CI] | test | p |", "|---|---|---|---|"]
    lines += [f"| {f.claim} | {f.effect_text()} | {f.effect.test} | {fmt_p(f.effect.p)} |" for f in described]
    return lines + [""]


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% t-interval (NaN bounds with fewer than 2 values)."""
    from scipy import stats

    values = [v for v in values if _finite(v)]
    if not values:
        return math.nan, math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = stats.t.ppf(1 - ALPHA / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def counted(n: int, noun: str) -> str:
    """'1 seed', '5 seeds'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def fmt_mean_ci(values: list[float], digits: int = 2) -> str:
    mean, low, high = mean_ci(values)
    return mean_ci_text(None if math.isnan(mean) else mean, None if math.isnan(low) else (low, high), digits)


def mean_ci_text(mean: float | None, ci: tuple[float, float] | None, digits: int = 2) -> str:
    """``84.97 [84.68, 85.26]``; the mean alone without an interval, ``-`` without a mean."""
    if mean is None:
        return "-"
    return f"{mean:.{digits}f}" if ci is None else f"{mean:.{digits}f} [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


# ----------------------------------------------------------------------------------------------- seeds

MAX_SEEDS = 1000  # per invocation: a grid of more runs than this is a typo, and its plan alone would take hours
MAX_SEED = 2**64 - 1  # torch.manual_seed's largest


def parse_seeds(seeds: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """``5`` -> seeds 0..4; ``10-14`` -> 10..14; ``3,7,9`` (or ``[3, 7, 9]``) -> those. One clear error for
    anything else, and for more than ``MAX_SEEDS`` seeds."""
    if isinstance(seeds, (list, tuple)):
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ConfigError(f"seeds {list(seeds)!r}: give whole numbers")
        text, chosen = ",".join(map(str, seeds)), list(seeds)
    else:
        text = str(seeds).strip()
        chosen = _seeds_from_text(text)
    if not chosen:
        raise ConfigError("--seeds: give at least one seed")
    _check_seed_count(text, len(chosen))
    if any(not 0 <= s <= MAX_SEED for s in chosen) or len(set(chosen)) != len(chosen):
        raise ConfigError(f"--seeds '{text}': seeds must be distinct, non-negative and below 2**64")
    return chosen


SEEDS_TEXT = re.compile(r"-?\d+|\d+-\d+|\d+(?: *, *\d+)* *,?", re.ASCII)  # 5 | 10-14 | 3,7,9 (3, = the seed 3)


def _seeds_from_text(text: str) -> list[int]:
    if not SEEDS_TEXT.fullmatch(text):  # int() took '1,,2' as 1,2 and an Arabic-Indic '٣' as 3
        raise ConfigError(f"--seeds '{text}': give a count (5), a range (10-14) or a list (3,7,9)")
    try:
        if "," in text:
            return [int(s) for s in text.split(",") if s.strip()]
        if "-" in text.lstrip("-"):
            first, last = (int(s) for s in text.split("-", 1))
            if last < first:
                raise ConfigError(f"--seeds '{text}': a range goes up, first to last ({last}-{first})")
            _check_seed_count(text, last - first + 1)
            return list(range(first, last + 1))
        count = int(text)
    except ValueError:
        raise ConfigError(f"--seeds '{text}': give a count (5), a range (10-14) or a list (3,7,9)") from None
    if count < 1:
        raise ConfigError(f"--seeds must be at least 1 (got {count})")
    _check_seed_count(text, count)
    return list(range(count))


def _check_seed_count(text: str, count: int) -> None:
    if count > MAX_SEEDS:
        raise ConfigError(f"--seeds '{text}': at most {MAX_SEEDS} seeds per invocation (got {count}); "
                          "run more as further ranges (e.g. 1000-1999) into the same output directory")
