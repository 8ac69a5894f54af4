"""das2020 study: do mixed-sample teachers make worse (but better calibrated) students?

Grid (resources/studies/das2020.yaml): for every seed r a *replicate* of every teacher condition (seed r),
then each student architecture distilled from replicate r on un-augmented images with das2020's KD (seed r).
The factor is how the teacher was trained, so the unit of every test is the teacher replicate (students are
nested in replicates; here one student per replicate and architecture): paired t-tests across replicates.

Gates (the paper's premise, measured before any finding is judged): the unaugmented teacher is over-confident
(its ECE clearly above the mixup teacher's), the teachers compared are within about a point of accuracy (so a
student difference is not a teacher-accuracy difference), and the students reached a plateau.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from mixdistill.analysis import class_discrimination, expected_calibration_error, plot_reliability_diagram
from mixdistill.config import merge
from mixdistill.resources import reference
from mixdistill.studies.common import (by_seed, convergence_gate, load_study_config, plot_effects, plot_intervals,
                                       scale_config, test_outputs, timing_markdown)
from mixdistill.studies.grid import GridRun
from mixdistill.studies.stats import (Effect, Finding, Gate, findings_markdown, fmt_mean_ci, fmt_p, gates_markdown,
                                      holm, paired, rank_correlation)

NAME = "das2020"
ECE_BINS = 10
MIXED = ("mixup", "cutmix")  # the mixed-sample teachers of the paper's claim
# the class-discrimination variant compared with the paper's CD values: the published notebook's (its quirks
# included, analysis/discrimination.py), so that ours and the paper's are computed alike
CD_ORDER_VARIANT = "as_published"


def grid(scale: str, seeds: list[int], study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge({"data": sc["data"], "train": sc.get("train", {})},
                 {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for condition, extra in spec["conditions"].items():
        extra = copy.deepcopy(extra)
        if extra["augment"]["name"] == "cutout":
            extra["augment"]["size"] = sc["cutout_size"]
        for r in seeds:
            tree = merge(merge(merge(base, sc["teacher"]), extra), {"method": {"name": "ce"}, "seed": r})
            runs.append(GridRun(f"teacher/{condition}/r{r}", tree, stage=0,
                                labels={"role": "teacher", "condition": condition, "seed": r}))
    only = sc.get("student_conditions", {})  # student -> the teacher conditions it learns from (default: all)
    for condition in spec["conditions"]:
        for student in sc.get("students", spec["students"]):
            if condition not in only.get(student, spec["conditions"]):
                continue
            for r in seeds:
                ckpt = str(study_dir / "runs" / f"teacher__{condition}__r{r}" / "last.pt")
                tree = merge(merge(merge(base, sc["student"]), sc.get("student_overrides", {}).get(student, {})), {
                    "seed": r, "method": spec["student_method"], "augment": {"name": "none"},
                    "data": {"crop_padding": 0, "flip": False},  # students see un-augmented images
                    "model": {"student": student, "teacher_checkpoint": ckpt}})
                runs.append(GridRun(f"student/{condition}/{student}/r{r}", tree, stage=1,
                                    labels={"role": "student", "condition": condition, "student": student,
                                            "seed": r}))
    return runs


def _metrics(study_dir: Path, key: str, data_root) -> dict:
    probs, _, labels = test_outputs(study_dir / "runs" / key.replace("/", "__"), data_root)
    out = {"ece": float(expected_calibration_error(probs, labels, bins=ECE_BINS))}
    if key.startswith("teacher/") and key.endswith("/r0"):
        condition = key.split("/")[1]
        plot_reliability_diagram(probs, labels, study_dir / f"das2020_reliability_teacher_{condition}.png", ECE_BINS,
                                 title=f"Teacher trained with {condition} (replicate 0)")
    for variant in ("correct", "as_published"):
        out[f"cd_{variant}"] = float(class_discrimination(probs, labels, variant=variant)["cd"])
    return out


def class_discrimination_order(paper_cd: dict[str, float], ours_cd: dict[str, dict[str, float]]) -> Effect:
    """The class-discrimination finding's effect: Spearman rho between the paper's CD per teacher condition and
    ours in the ``as_published`` variant, the one das2020's notebook computed and so the one its numbers are (like
    with like). The ``correct`` variant's rho is written beside it in the test column, for information only (it
    decides nothing). ``paper_cd``: condition -> the paper's CD; ``ours_cd``: variant -> condition -> our mean CD."""
    conditions = list(paper_cd)
    paper = [paper_cd[c] for c in conditions]
    correct = rank_correlation(paper, [ours_cd["correct"][c] for c in conditions]).estimate
    return rank_correlation(paper, [ours_cd[CD_ORDER_VARIANT][c] for c in conditions],
                            f"mean CD per teacher condition, {CD_ORDER_VARIANT} variant as the paper's notebook; "
                            f"correct variant, for information: rho = {correct:+.3f}")


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference(NAME)
    gates_cfg = sc.get("gates", {"ece_margin": 0.01, "accuracy_within": 1.0})
    conditions = list(spec["conditions"])
    students = sc.get("students", spec["students"])
    metrics = {key: _metrics(study_dir, key, data_root) for key in rows}

    def values(field: str, **labels) -> dict[int, float]:
        """replicate -> the value of the matching runs (accuracy from the summary, the rest measured)."""
        if field == "acc":
            return by_seed(rows, "last_acc", **labels)
        return {r["labels"]["seed"]: metrics[r["key"]][field] for r in rows.values()
                if all(r["labels"].get(k) == v for k, v in labels.items())}

    dataset = next(iter(rows.values()))["summary"]["dataset"]
    replicates = sorted(values("acc", role="teacher", condition="none"))
    paper_ds = ref["dataset"].upper().replace("CIFAR", "CIFAR-")
    lines = [f"# das2020 study ({scale} scale, {dataset})", "",
             f"Teachers ({sc['teacher']['model']['student']}) trained under each condition, {len(replicates)} "
             f"replicates each (seeds {', '.join(map(str, replicates))}); students {', '.join(students)} distilled "
             f"from each replicate on un-augmented images with das2020's KD (T = 20, g = 0.5). Top-1 % and ECE "
             f"({ECE_BINS} bins, as das2020) on the {dataset} test set, last epoch. The paper's numbers are "
             f"{paper_ds} (ResNet-18 teacher, LeNet-5 and AlexNet students) and appear only as the direction and "
             f"size of each claim.", ""]
    lines += timing_markdown(study_dir, rows)

    # ---- gates
    teacher_ece = {c: values("ece", role="teacher", condition=c) for c in conditions}
    teacher_acc = {c: values("acc", role="teacher", condition=c) for c in conditions}
    over = paired(teacher_ece["none"], teacher_ece["mixup"])
    gate_over = Gate("unaugmented teacher over-confident",
                     f"teacher ECE(none) − ECE(mixup) ≥ {gates_cfg['ece_margin']} and p < 0.05 (paired over replicates)",
                     f"{over.estimate:+.4f} {over.interval(4)}, p = {fmt_p(over.p)}",
                     over.estimate >= gates_cfg["ece_margin"] and over.p < 0.05)
    gaps = {m: paired(teacher_acc[m], teacher_acc["none"]).estimate for m in MIXED}
    # one-sided: a mixed teacher that is *worse* would explain worse students by itself; a better one (the
    # paper's CutMix teacher is 10 points better) only makes "worse students" the stronger claim
    gate_acc = Gate("mixed teachers not less accurate",
                    f"acc(mixed) − acc(none) ≥ −{gates_cfg['accuracy_within']} point for the mixup and cutmix teachers "
                    f"(mean over replicates)", ", ".join(f"{m} {d:+.2f}" for m, d in gaps.items()),
                    all(d >= -gates_cfg["accuracy_within"] for d in gaps.values()))
    gate_conv = {s: convergence_gate(rows, study_dir, role="student", student=s) for s in students}
    gates = [gate_over, gate_acc, *gate_conv.values()]
    lines += gates_markdown(gates)

    # ---- tables
    lines += ["## Teachers and students per teacher condition", "",
              "Mean [95% CI] over replicates.", "",
              "| teacher trained with | teacher acc | teacher ECE | "
              + " | ".join(f"{s} acc | {s} ECE" for s in students) + " |", "|---|---|---|" + "---|---|" * len(students)]
    for c in conditions:
        cells = [c, fmt_mean_ci(list(teacher_acc[c].values())), fmt_mean_ci(list(teacher_ece[c].values()), 4)]
        for s in students:
            cells += [fmt_mean_ci(list(values("acc", role="student", condition=c, student=s).values())),
                      fmt_mean_ci(list(values("ece", role="student", condition=c, student=s).values()), 4)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Class discrimination of the students (softmax outputs, ×100)", "",
              "| teacher | " + " | ".join(f"{s} correct | {s} as_published" for s in students) + " |",
              "|---|" + "---|---|" * len(students)]
    for c in conditions:
        cells = [c]
        for s in students:
            for variant in ("correct", "as_published"):
                cells.append(fmt_mean_ci([100 * v for v in values(f"cd_{variant}", role="student", condition=c,
                                                                   student=s).values()]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", (f"The paper's CD values were computed by its notebook, i.e. in the `{CD_ORDER_VARIANT}` variant: "
                   f"the class-discrimination finding ranks our `{CD_ORDER_VARIANT}` values against them; `correct` "
                   "is shown for information."), ""]

    # ---- findings
    paper_students = {s: ("AlexNet" if "alexnet" in s else "LeNet") for s in students}
    column = {"LeNet": 1, "AlexNet": 2}
    findings = []
    for s in students:
        col = column[paper_students[s]]
        base_acc = values("acc", role="student", condition="none", student=s)
        base_ece = values("ece", role="student", condition="none", student=s)
        for m in MIXED:
            p_acc = ref["rows"][m][col] - ref["rows"]["none"][col]
            p_ece = ref["rows"][m][col + 3] - ref["rows"]["none"][col + 3]
            findings.append(Finding(
                f"{s} students of the {m} teacher are worse", paired(values("acc", role="student", condition=m,
                                                                            student=s), base_acc),
                -1, f"{p_acc:+.2f} ({paper_ds}, {paper_students[s]})", gates=[gate_over, gate_acc, gate_conv[s]]))
            findings.append(Finding(
                f"{s} students of the {m} teacher are better calibrated",
                paired(values("ece", role="student", condition=m, student=s), base_ece),
                -1, f"{p_ece:+.3f} ECE ({paper_ds}, {paper_students[s]})", unit="ECE",
                gates=[gate_over, gate_acc, gate_conv[s]]))
    ranked = [c for c in conditions if c in ref["class_discrimination"]]
    first = students[0]
    ours_cd = {variant: {c: statistics.fmean(values(f"cd_{variant}", role="student", condition=c,
                                                    student=first).values()) for c in ranked}
               for variant in ("correct", "as_published")}
    findings.append(Finding(
        f"{first} students' class discrimination follows the paper's order of teachers "
        f"({' > '.join(sorted(ranked, key=lambda c: -ref['class_discrimination'][c]['cd']))})",
        class_discrimination_order({c: ref["class_discrimination"][c]["cd"] for c in ranked}, ours_cd),
        +1, f"order of {len(ranked)} CD values ({paper_ds}, LeNet)", unit="r", gates=[gate_conv[first]]))
    holm([f.effect for f in findings])
    lines += findings_markdown(findings)

    # ---- figures
    lines += ["## Figures", ""]
    plot_effects(findings, study_dir / "das2020_effects.png", f"das2020 findings ({dataset})")
    lines += ["![effects](das2020_effects.png)", ""]
    plot_intervals({c: list(teacher_ece[c].values()) for c in conditions}, study_dir / "das2020_teacher_ece.png",
                   f"Teacher ECE by training condition ({dataset})", ylabel="ECE (10 bins)")
    lines += ["![teacher ECE](das2020_teacher_ece.png)", ""]
    for s in students:
        name = f"das2020_students_{s}.png"
        plot_intervals({c: list(values("acc", role="student", condition=c, student=s).values()) for c in conditions},
                       study_dir / name, f"{s} students by their teacher's training condition ({dataset})")
        lines += [f"![{s} students]({name})", ""]
    lines += [f"![teacher {c}](das2020_reliability_teacher_{c}.png)" for c in conditions]
    return "\n".join(lines) + "\n"
