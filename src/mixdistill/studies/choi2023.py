"""choi2023 study (MIX-KD): with mixup-trained teachers, does T = 1 beat T = 4? MIXSTD, and FMU vs PMU.

Grid (resources/studies/choi2023.yaml): for every seed r a replicate of each teacher (vanilla and mixup-trained,
seed r); students of seed r learn from replicate r. The teacher's training is the factor, so every test pairs
replicates (students nested in them). On every (mixup teacher, student) pair: Mix-S at T = 4 and T = 1; on the
first pair also CE alone, plain KD and MIXSTD from the vanilla teacher (as the released code runs MIXSTD), and
MIXSTD with FMU and with PMU (both sampling modes) from the mixup teacher.

Gates: KD from a vanilla teacher beats CE (there is distillation to improve), and mixup-trained teachers are
measurably smoother than vanilla ones (higher output entropy, smaller logit std: choi2023's mechanism).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mixdistill.analysis.plots import new_figure, save_figure
from mixdistill.analysis.smoothness import logit_std, output_entropy
from mixdistill.config import merge
from mixdistill.resources import reference
from mixdistill.studies.common import (by_seed, convergence_gate, load_study_config, plot_effects, plot_intervals,
                                       replicates_text, scale_config, test_logits, timing_markdown)
from mixdistill.studies.grid import GridRun, checkpoint_of, run_dir
from mixdistill.studies.stats import (adjust, holds, ALPHA, Finding, Gate, counted, findings_markdown, fmt_mean_ci,
                                      fmt_p, gates_markdown, p_text, paired, signed)

NAME = "choi2023"


def first_pair(sc) -> tuple[str, str]:
    """(teacher, student) of the KD / MIXSTD comparisons: the scale's ``first_pair``, else the first of each list."""
    return tuple(sc.get("first_pair") or (sc["teachers"][0], sc["students"][0]))


def _ckpt(study_dir: Path, condition: str, teacher: str, r: int) -> str:
    return checkpoint_of(study_dir, f"teacher/{condition}/{teacher}/r{r}")


def grid(scale: str, seeds: list[int], study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge(sc["base"], {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for teacher in sc["teachers"]:
        for condition, extra in spec["teacher_conditions"].items():
            for r in seeds:
                runs.append(GridRun(f"teacher/{condition}/{teacher}/r{r}",
                                    merge(merge(merge(base, sc.get("teacher", {})), extra),
                                          {"model": {"student": teacher}, "seed": r}), stage=0,
                                    labels={"role": "teacher", "condition": condition, "teacher": teacher, "seed": r}))
    student_base = merge(base, sc["student"])
    jobs = [(name, "mixup", t, s, extra) for t in sc["teachers"] for s in sc["students"]
            for name, extra in spec["pair_methods"].items()]
    t0, s0 = first_pair(sc)
    first = {**spec["first_pair_methods"],
             **{m: spec["first_pair_extra_methods"][m] for m in sc.get("first_pair_extra", [])}}
    jobs += [(name, extra.get("teacher"), t0, s0, {k: v for k, v in extra.items() if k != "teacher"})
             for name, extra in first.items()]
    jobs += [(f"benchmark_{name}", "benchmark", t, s, extra) for t, s in sc.get("benchmark_pairs", [])
             for name, extra in spec["benchmark_methods"].items()]
    for name, condition, teacher, student, extra in jobs:
        for r in seeds:
            model = {"student": student}
            if condition == "benchmark":  # the benchmark's published teacher (tests: the grid's vanilla replicate)
                grid_teacher = sc.get("benchmark_teachers") == "grid"
                model["teacher_checkpoint"] = _ckpt(study_dir, "vanilla", teacher, r) if grid_teacher else teacher
            elif condition is not None:
                model["teacher_checkpoint"] = _ckpt(study_dir, condition, teacher, r)
            runs.append(GridRun(f"student/{name}/{teacher}/{student}/r{r}", merge(merge(student_base, extra),
                                                                               {"seed": r, "model": model}),
                                stage=1, labels={"role": "student", "method": name, "teacher": teacher,
                                                 "student": student, "seed": r}))
    return runs


def _smoothness(study_dir: Path, key: str, data_root) -> dict:
    logits, _, _ = test_logits(run_dir(study_dir, key), data_root)
    return {"entropy": float(output_entropy(logits).mean()), "logit_std": float(logit_std(logits).mean())}


def _heatmap(effects: dict, teachers, students, path: Path) -> None:
    """T = 1 minus T = 4 per (mixup teacher, student), descriptive: the paired mean difference, its 95% CI and a
    star where that pair's own p < ALPHA (unadjusted; the finding is the mean over the pairs)."""
    import numpy as np

    grid = np.array([[effects[(t, s)].estimate for s in students] for t in teachers])
    finite = np.abs(grid[np.isfinite(grid)])  # a pair none of whose runs finished has no estimate
    bound = max(0.5, float(finite.max()) if finite.size else 0.0)
    fig = new_figure(max(5.0, 2.6 + 1.6 * len(students)), max(3.2, 1.6 + 1.0 * len(teachers)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(grid, cmap="RdBu", vmin=-bound, vmax=bound)
    ax.set_xticks(range(len(students)), students)
    ax.set_yticks(range(len(teachers)), [f"{t} (mixup)" for t in teachers])
    ax.set_xlabel("student")
    ax.set_ylabel("teacher")
    for i, t in enumerate(teachers):
        for j, s in enumerate(students):
            e = effects[(t, s)]
            star = "*" if e.p < ALPHA else ""
            ax.text(j, i, f"{signed(e.estimate)}{star}\n{e.interval()}", ha="center", va="center", fontsize=7,
                    color="white" if abs(e.estimate) > 0.6 * bound else "black")
    ax.set_title("Mix-S top-1: T = 1 minus T = 4 (points; 95% CI; * the pair's own p < 0.05, unadjusted)",
                 fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_figure(fig, path)


def _versus(acc, a: dict, b: dict) -> str:
    """``mean [CI]`` of ``a`` and its paired difference to ``b``."""
    e = paired(acc(**a), acc(**b))
    return f"{fmt_mean_ci(list(acc(**a).values()))} | {e.text()}"


def _extra_tables(spec, sc, acc, t0, s0) -> list[str]:
    """The scale's 2x2, sweeps and benchmark pairs: descriptive tables (paired differences with CIs), outside
    the findings and their Holm correction."""
    lines = []
    fp = {"teacher": t0, "student": s0}
    extra = sc.get("first_pair_extra", [])
    if "kd_mixup_teacher" in extra:
        cell = {(c, s): m for m, c, s in (("kd_vanilla", "vanilla", "plain"), ("mixstd_vanilla", "vanilla", "mixup"),
                                          ("kd_mixup_teacher", "mixup", "plain"), ("mixstd_fmu", "mixup", "mixup"))}
        lines += ["", f"## Teacher × student on the first pair ({t0} → {s0})", "",
                  "Rows: how the teacher was trained; columns: the student learns by plain KD or with mixup (MIXSTD, "
                  "FMU). Top-1 mean [95% CI]; the last column is mixup − plain for the student, paired by seed.", "",
                  "| teacher | student plain KD | student with mixup (MIXSTD) | mixup − plain [95% CI] |",
                  "|---|---|---|---|"]
        for c in ("vanilla", "mixup"):
            plain, mixed = cell[(c, "plain")], cell[(c, "mixup")]
            e = paired(acc(method=mixed, **fp), acc(method=plain, **fp))
            lines.append(f"| {c} | {fmt_mean_ci(list(acc(method=plain, **fp).values()))} | "
                         f"{fmt_mean_ci(list(acc(method=mixed, **fp).values()))} | {e.text()} |")
    sweeps = [m for m in extra if m.startswith("mixstd_")]
    if sweeps:  # with the two settings every scale runs: p = 0.9 (PMU, as released) and alpha 1.0 (FMU)
        sweeps = ["mixstd_pmu_p090", "mixstd_vanilla", *sweeps]
        lines += ["", f"## MIXSTD sweeps from the vanilla teacher ({t0} → {s0})", "",
                  "| run | augmentation | top-1 | paired vs KD from the vanilla teacher [95% CI] |", "|---|---|---|---|"]
        for m in sweeps:
            aug = {**spec["first_pair_methods"], **spec["first_pair_extra_methods"]}[m]["augment"]
            what = ", ".join(f"{k} {v}" for k, v in aug.items() if k != "name")
            lines.append(f"| {m} | {aug['name']}{f' ({what})' if what else ''} | "
                         f"{_versus(acc, {'method': m, **fp}, {'method': 'kd_vanilla', **fp})} |")
    pairs = sc.get("benchmark_pairs", [])
    if pairs:
        lines += ["", "## The benchmark's vanilla teachers (the released code's setting)", "",
                  "| teacher → student | KD | MIXSTD (PMU, p = 0.9) | − KD [95% CI] | MIXSTD (FMU) | − KD [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for t, s in pairs:
            kd = {"method": "benchmark_kd", "teacher": t, "student": s}
            lines.append(f"| {t} → {s} | {fmt_mean_ci(list(acc(**kd).values()))} | "
                         f"{_versus(acc, {**kd, 'method': 'benchmark_mixstd_pmu'}, kd)} | "
                         f"{_versus(acc, {**kd, 'method': 'benchmark_mixstd_fmu'}, kd)} |")
    return lines + ([""] if lines else [])


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference(NAME)
    teachers, students = sc["teachers"], sc["students"]
    t0, s0 = first_pair(sc)
    dataset = next(iter(rows.values()))["summary"]["dataset"]
    paper_ds = ref["dataset"].upper().replace("CIFAR", "CIFAR-")

    def acc(**labels) -> dict[int, float]:
        return by_seed(rows, "last_acc", **labels)

    smooth = {r["key"]: _smoothness(study_dir, r["key"], data_root) for r in rows.values()
              if r["labels"]["role"] == "teacher"}

    def teacher_stat(field, condition, teacher) -> dict[int, float]:
        return {r["labels"]["seed"]: smooth[r["key"]][field] for r in rows.values()
                if r["labels"]["role"] == "teacher" and r["labels"]["condition"] == condition
                and r["labels"]["teacher"] == teacher}

    replicates = sorted(acc(role="teacher"))  # a replicate counts where any of its teachers finished
    lines = [f"# choi2023 study ({scale} scale, {dataset})", "",
             f"Teachers {', '.join(teachers)} trained plainly (vanilla) and with choi2023's two-permutation mixup, "
             f"{replicates_text(replicates)}; students "
             f"{', '.join(students)} of seed r learn from replicate r. Top-1 % on the {dataset} test set, last epoch. "
             f"The paper's results are {paper_ds} (read off a figure) and appear only as the direction of each claim.",
             ""]
    lines += timing_markdown(study_dir, rows)

    # ---- gates
    kd_vs_ce = paired(acc(method="kd_vanilla", teacher=t0, student=s0), acc(method="ce", teacher=t0, student=s0))
    gate_kd = Gate("KD from a vanilla teacher beats CE", f"{t0} → {s0}: KD − CE > 0, paired p < 0.05",
                   f"{kd_vs_ce.text()}, {p_text(kd_vs_ce.p)}",
                   holds(kd_vs_ce.estimate > 0 and kd_vs_ce.p < 0.05, kd_vs_ce))
    smoother = {t: (paired(teacher_stat("entropy", "mixup", t), teacher_stat("entropy", "vanilla", t)),
                    paired(teacher_stat("logit_std", "mixup", t), teacher_stat("logit_std", "vanilla", t)))
                for t in teachers}
    gate_smooth = Gate("mixup teachers are smoother",
                       "for every teacher: test-set output entropy higher and logit std lower for the mixup-trained "
                       "replicates, paired p < 0.05 each",
                       "; ".join(f"{t}: entropy {signed(h.estimate, 3)} nats ({p_text(h.p)}), logit std "
                                 f"{signed(s.estimate)} ({p_text(s.p)})" for t, (h, s) in smoother.items()),
                       holds(all(h.estimate > 0 and h.p < 0.05 and s.estimate < 0 and s.p < 0.05
                                 for h, s in smoother.values()), *(e for pair in smoother.values() for e in pair)))
    gate_conv = convergence_gate(rows, study_dir, role="student")
    lines += gates_markdown([gate_kd, gate_smooth, gate_conv])

    # ---- teachers (their tables after the findings: a report reads gates, findings, then what they rest on)
    tables = ["## Teachers", "", "Mean [95% CI] over replicates; entropy and logit std on the test set.", "",
               "| teacher | condition | top-1 | output entropy (nats) | logit std |", "|---|---|---|---|---|"]
    for t in teachers:
        for c in spec["teacher_conditions"]:
            tables.append(f"| {t} | {c} | {fmt_mean_ci(list(acc(role='teacher', condition=c, teacher=t).values()))} | "
                          f"{fmt_mean_ci(list(teacher_stat('entropy', c, t).values()), 3)} | "
                          f"{fmt_mean_ci(list(teacher_stat('logit_std', c, t).values()))} |")

    # ---- findings
    pair_effects = {(t, s): paired(acc(method="mix_kd_T1", teacher=t, student=s),
                                   acc(method="mix_kd_T4", teacher=t, student=s))
                    for t in teachers for s in students}
    gates = [gate_kd, gate_smooth, gate_conv]
    # the paper's claim is about the pairs together ("most pairs"): one finding, each seed's mean over the pairs
    # (every pair's seed r learns from teacher replicate r), paired over seeds; the pairs one by one are descriptive
    pair_mean = {}
    for temperature in ("T1", "T4"):
        per_pair = [acc(method=f"mix_kd_{temperature}", teacher=t, student=s) for t, s in pair_effects]
        seeds = set.intersection(*(set(v) for v in per_pair)) if per_pair else set()
        pair_mean[temperature] = {r: statistics.fmean(v[r] for v in per_pair) for r in seeds}
    pooled = paired(pair_mean["T1"], pair_mean["T4"])
    pooled.test += f", each the mean over {len(pair_effects)} pairs"
    findings = [Finding(f"Mix-S from mixup teachers: T = 1 beats T = 4 (mean over the {len(pair_effects)} "
                        "teacher → student pairs)", pooled, +1, f"T = 1 better on most pairs ({paper_ds}, figure)",
                        gates=gates)]
    fp = {"teacher": t0, "student": s0}
    comparisons = [
        ("mixstd_fmu", "mix_kd_T4", "MIXSTD (FMU) beats Mix-S at T = 4", "MIXSTD improves on fixed-T KD"),
        ("mixstd_pmu_p090", "kd_vanilla", "MIXSTD (PMU, p = 0.9, as released) beats KD from the vanilla teacher",
         "MIXSTD improves KD (released code, vanilla teachers)"),
        ("mixstd_pmu_replacement", "mixstd_fmu", "PMU (p = 0.9) beats FMU with MIXSTD, both from the mixup teacher",
         "partial mixup is better than full"),
    ]
    for a, b, claim, paper in comparisons:  # first-pair methods, run at every scale: an arm with no finished run
        findings.append(Finding(f"{t0} → {s0}: {claim}", paired(acc(method=a, **fp), acc(method=b, **fp)), +1,
                                f"{paper} ({paper_ds})", gates=gates))  # is untested, not left out of Holm
    adjust(findings)
    tables += ["", "## Mix-S students of mixup-trained teachers: T = 1 vs T = 4", "",
               "Each pair on its own, descriptive (paired over seeds, p unadjusted): the finding is their mean, below.",
               "", "| mixup teacher → student | T = 4 | T = 1 | T1 − T4 [95% CI] | p |", "|---|---|---|---|---|"]
    for (t, s), e in pair_effects.items():
        tables.append(f"| {t} → {s} | {fmt_mean_ci(list(acc(method='mix_kd_T4', teacher=t, student=s).values()))} | "
                      f"{fmt_mean_ci(list(acc(method='mix_kd_T1', teacher=t, student=s).values()))} | "
                      f"{e.text()} | {fmt_p(e.p)} |")
    tables.append(f"| mean over the {counted(len(pair_effects), 'pair')} | "
                  f"{fmt_mean_ci(list(pair_mean['T4'].values()))} | {fmt_mean_ci(list(pair_mean['T1'].values()))} | "
                  f"{pooled.text()} | {fmt_p(pooled.p)} |")
    _heatmap(pair_effects, teachers, students, study_dir / "choi2023_t1_minus_t4.png")
    tables += ["", "![T=1 minus T=4](choi2023_t1_minus_t4.png)", "", f"## First pair ({t0} → {s0})", "",
               "Mean [95% CI] over replicates.", "", "| student method | teacher | top-1 |", "|---|---|---|"]
    first_methods = ["ce", "kd_vanilla", "mixstd_pmu_p090", "mixstd_vanilla", "mix_kd_T4", "mix_kd_T1", "mixstd_fmu",
                     "mixstd_pmu_replacement", "mixstd_pmu_exact"]
    first_methods = [m for m in first_methods if acc(method=m, **fp)]
    teacher_of = {**{m: "mixup" for m in spec["pair_methods"]},
                  **{m: e.get("teacher") or "-" for m, e in spec["first_pair_methods"].items()}}
    for m in first_methods:
        tables.append(f"| {m} | {teacher_of.get(m, '-')} | {fmt_mean_ci(list(acc(method=m, **fp).values()))} |")
    plot_intervals({m: list(acc(method=m, **fp).values()) for m in first_methods}, study_dir / "choi2023_first_pair.png",
                   f"{t0} → {s0} students ({dataset})")
    tables += ["", "![first pair](choi2023_first_pair.png)", "",
               "PMU's realised mixed fraction per epoch is in each run's metrics.jsonl (`stat_mixed_fraction`): about "
               "exp(-0.9) = 0.41 with `replacement`, round(0.1·B)/B with `exact`.", ""]
    tables += _extra_tables(spec, sc, acc, t0, s0)
    lines += findings_markdown(findings)
    plot_effects(findings, study_dir / "choi2023_effects.png", f"choi2023 findings ({dataset})")
    lines += ["![effects](choi2023_effects.png)", ""] + tables
    return "\n".join(lines).rstrip("\n") + "\n"
