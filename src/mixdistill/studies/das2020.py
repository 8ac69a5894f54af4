"""das2020 study: do mixed-sample teachers make worse (but better calibrated) students?

Grid (src/mixdistill/resources/studies/das2020.yaml): one teacher per augmentation condition (stage 0), then each student
architecture distilled from each teacher on un-augmented images with das2020's KD, for every seed
(stage 1). Report: teacher and student accuracy and ECE (10 bins, as das2020) per condition, the
students' class discrimination (both variants), paper values beside ours, and for each finding a
verdict with the numbers and a Welch t-test across seeds.
"""

from __future__ import annotations

import copy
import statistics
from pathlib import Path

from mixdistill.demo import merge
from mixdistill.studies.common import (fmt_p, load_study_config, mean_std, plot_accuracy_bars, reference, scale_config,
                                       test_outputs, verdict, welch)
from mixdistill.studies.grid import GridRun

NAME = "das2020"
ECE_BINS = 10
NOISY_STD = 3.0  # points of seed std above which a student's verdicts get a caveat


def grid(scale: str, seeds: int, study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge({"data": sc["data"], "train": sc.get("train", {})},
                 {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for condition, extra in spec["conditions"].items():
        extra = copy.deepcopy(extra)
        if extra["augment"]["name"] == "cutout":
            extra["augment"]["size"] = sc["cutout_size"]
        tree = merge(merge(merge(base, sc["teacher"]), extra), {"method": {"name": "ce"}, "seed": 0})
        runs.append(GridRun(f"teacher/{condition}", tree, stage=0, labels={"role": "teacher", "condition": condition}))
    for condition in spec["conditions"]:
        ckpt = str(study_dir / "runs" / f"teacher__{condition}" / "last.pt")
        for student in sc.get("students", spec["students"]):
            for seed in range(seeds):
                tree = merge(merge(base, sc["student"]), {
                    "seed": seed, "method": spec["student_method"], "augment": {"name": "none"},
                    "data": {"crop_padding": 0, "flip": False},  # students see un-augmented images
                    "model": {"student": student, "teacher_checkpoint": ckpt}})
                runs.append(GridRun(f"student/{condition}/{student}/seed{seed}", tree, stage=1,
                                    labels={"role": "student", "condition": condition, "student": student,
                                            "seed": seed}))
    return runs


def _metrics(study_dir: Path, key: str, data_root) -> dict:
    from mixdistill.analysis import class_discrimination, expected_calibration_error, plot_reliability_diagram

    probs, _, labels = test_outputs(study_dir / "runs" / key.replace("/", "__"), data_root)
    out = {"ece": float(expected_calibration_error(probs, labels, bins=ECE_BINS))}
    if key.startswith("teacher/"):
        condition = key.split("/", 1)[1]
        plot_reliability_diagram(probs, labels, study_dir / f"das2020_reliability_teacher_{condition}.png", ECE_BINS,
                                 title=f"Teacher trained with {condition}")
    for variant in ("correct", "as_published"):
        out[f"cd_{variant}"] = float(class_discrimination(probs, labels, variant=variant)["cd"])
    return out


def _num(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else str(v)


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    ref = reference(NAME)
    conditions = list(spec["conditions"])
    students = scale_config(spec, scale).get("students", spec["students"])
    metrics = {key: _metrics(study_dir, key, data_root) for key in rows}

    def student_values(condition, student, field):
        out = []
        for key, row in rows.items():
            lab = row["labels"]
            if lab["role"] == "student" and lab["condition"] == condition and lab["student"] == student:
                out.append(row["summary"]["last_acc"] if field == "acc" else metrics[key][field])
        return out

    lines = [f"# das2020 study ({scale} scale)", "",
             f"Dataset: {rows['teacher/none']['summary']['dataset']}; paper: CIFAR-10, ResNet-18 teacher, "
             f"LeNet-5 and AlexNet students. Seeds per student: "
             f"{len(student_values(conditions[0], students[0], 'acc'))}. Accuracies are last-epoch top-1 %; "
             f"ECE uses {ECE_BINS} bins as das2020.", "",
             "## Accuracy and calibration per teacher condition", "",
             "| teacher trained with | teacher acc (ours / paper) | teacher ECE (ours / paper) | "
             + " | ".join(f"{s} acc (ours / paper) | {s} ECE (ours / paper)" for s in students) + " |",
             "|---|---|---|" + "---|---|" * len(students)]
    for c in conditions:
        paper = ref["rows"].get(c, ["-"] * 6)  # choi2023's mixup_fmu teacher is not in das2020's table
        t = rows[f"teacher/{c}"]
        cells = [c, f"{t['summary']['last_acc']:.2f} / {_num(paper[0])}",
                 f"{metrics[f'teacher/{c}']['ece']:.4f} / {paper[3]}"]
        for i, s in enumerate(students):
            cells += [f"{mean_std(student_values(c, s, 'acc'))} / {_num(paper[1 + i])}",
                      f"{mean_std(student_values(c, s, 'ece'), digits=4)} / {paper[4 + i]}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "The paper's student columns are LeNet and AlexNet in that order.", "",
              "## Class discrimination of the students (softmax outputs)", "",
              "| teacher | " + " | ".join(f"{s} CD correct | {s} CD as_published" for s in students)
              + " | paper CD (LeNet) |", "|---|" + "---|---|" * len(students) + "---|"]
    for c in conditions:
        cells = [c]
        for s in students:
            cells += [mean_std([100 * v for v in student_values(c, s, "cd_correct")]),
                      mean_std([100 * v for v in student_values(c, s, "cd_as_published")])]
        paper_cd = ref["class_discrimination"].get(c)
        cells.append(f"{100 * paper_cd['cd']:.2f}" if paper_cd else "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "CD values are multiplied by 100 for readability.", "", "## Findings", ""]
    for s in students:
        base_acc = student_values("none", s, "acc")
        base_ece = student_values("none", s, "ece")
        for mixed in [c for c in ("mixup", "cutmix", "mixup_fmu") if c in conditions]:
            d_acc, p_acc = welch(student_values(mixed, s, "acc"), base_acc)
            d_ece, p_ece = welch(student_values(mixed, s, "ece"), base_ece)
            worse, calibrated = verdict(d_acc, p_acc, sign=-1), verdict(d_ece, p_ece, sign=-1)
            lines.append(f"- {s} students of the {mixed} teacher vs the unaugmented teacher: accuracy "
                         f"{d_acc:+.2f} points (Welch p = {fmt_p(p_acc)}) — 'worse students' {worse}; "
                         f"ECE {d_ece:+.4f} (p = {fmt_p(p_ece)}) — 'better calibrated' {calibrated}.")
    from scipy.stats import spearmanr

    ranked = [c for c in conditions if c in ref["class_discrimination"]]
    paper_order = [ref["class_discrimination"][c]["cd"] for c in ranked]
    ours = [sum(student_values(c, students[0], "cd_correct")) / max(1, len(student_values(c, students[0], "cd_correct")))
            for c in ranked]
    rho = spearmanr(paper_order, ours).statistic
    lines.append(f"- Class-discrimination order of the {students[0]} students vs the paper's order "
                 f"(baseline > mixup > cutout > crop+flip > cutmix): Spearman rho = {rho:.2f} "
                 f"({'reproduced' if rho > 0.7 else 'not reproduced'} at threshold 0.7).")
    for s in students:  # students too noisy to carry a verdict
        stds = [statistics.stdev(v) for c in conditions if len(v := student_values(c, s, "acc")) > 1]
        spread = statistics.mean(stds) if stds else 0.0  # one seed: no spread to judge
        if spread > NOISY_STD:
            lines.append(f"- Caveat: the {s} students' seed std averages {spread:.1f} points, above {NOISY_STD}; "
                         f"their verdicts above carry little weight at this scale.")
    lines += ["", "## Figures", ""]
    for i, s in enumerate(students):
        name = f"das2020_students_{s}.png"
        plot_accuracy_bars({c: student_values(c, s, "acc") for c in conditions}, study_dir / name,
                           f"{s} students by their teacher's augmentation",
                           paper={c: ref["rows"][c][1 + i] for c in conditions if c in ref["rows"]}
                           if scale == "full" else None)
        lines += [f"![{s} students]({name})", ""]
    lines += [f"![teacher {c}](das2020_reliability_teacher_{c}.png)" for c in conditions]
    return "\n".join(lines) + "\n"
