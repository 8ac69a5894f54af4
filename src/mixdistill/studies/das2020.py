"""das2020 study: do mixed-sample teachers make worse (but better calibrated) students?

Grid (resources/studies/das2020.yaml): for every seed r a *replicate* of every teacher condition (seed r),
then each student architecture distilled from replicate r on un-augmented images with das2020's KD (seed r).
The factor is how the teacher was trained, so the unit of every test is the teacher replicate (students are
nested in replicates; here one student per replicate and architecture): paired t-tests across replicates.

Gates (the paper's premise, measured before any finding is judged): the unaugmented teacher is over-confident
(its mean top-class confidence − accuracy at least the grid's margin above 0, one-sample t over replicates), the
mixed teachers are at most the grid's ``accuracy_within`` points less accurate than it (so worse students are not
a worse teacher's), and the students reached a plateau.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

from mixdistill.analysis import class_discrimination, expected_calibration_error, plot_reliability_diagram
from mixdistill.config import merge
from mixdistill.errors import MixdistillError
from mixdistill.files import read_cache, write_json
from mixdistill.resources import reference
from mixdistill.studies.common import (by_seed, convergence_gate, load_study_config, plot_effects, plot_intervals,
                                       replicates_text, scale_config, test_outputs, timing_markdown)
from mixdistill.studies.grid import GridRun, checkpoint_of, run_dir
from mixdistill.studies.stats import (adjust, holds, counted, Effect, Finding, Gate, findings_markdown, fmt_mean_ci,
                                      p_text, gates_markdown, ordered_trend, paired, signed)

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
    for condition in spec["conditions"]:
        for student in sc.get("students", spec["students"]):
            if condition not in teacher_conditions(spec, sc, student):
                continue
            for r in seeds:
                ckpt = checkpoint_of(study_dir, f"teacher/{condition}/r{r}")
                tree = merge(merge(merge(base, sc["student"]), sc.get("student_overrides", {}).get(student, {})), {
                    "seed": r, "method": spec["student_method"], "augment": {"name": "none"},
                    "data": {"crop_padding": 0, "flip": False},  # students see un-augmented images
                    "model": {"student": student, "teacher_checkpoint": ckpt}})
                runs.append(GridRun(f"student/{condition}/{student}/r{r}", tree, stage=1,
                                    labels={"role": "student", "condition": condition, "student": student,
                                            "seed": r}))
    return runs


def teacher_conditions(spec: dict, sc: dict, student: str) -> list[str]:
    """The teacher conditions ``student`` learns from at the scale ``sc`` (its ``student_conditions``; default:
    all)."""
    only = sc.get("student_conditions", {}).get(student)
    return [c for c in spec["conditions"] if only is None or c in only]


def _metrics(study_dir: Path, key: str, data_root, reliability: bool = False) -> dict:
    """A run's test-set ECE, signed over-confidence and class discrimination; ``reliability``: draw its reliability
    diagram too (a teacher's)."""
    probs, _, labels = test_outputs(run_dir(study_dir, key), data_root)
    confidence, predicted = probs.max(dim=1)
    out = {"ece": float(expected_calibration_error(probs, labels, bins=ECE_BINS)),
           # signed, unlike ECE: > 0 over-confident, < 0 under-confident (das2020's mixup teacher, ECE 0.122)
           "overconfidence": float(confidence.mean() - (predicted == labels).float().mean())}
    if reliability:
        _, condition, replicate = key.split("/")
        plot_reliability_diagram(probs, labels, study_dir / f"das2020_reliability_teacher_{condition}.png", ECE_BINS,
                                 title=f"Teacher trained with {condition} (replicate {replicate.removeprefix('r')})")
    for variant in ("correct", "as_published"):
        out[f"cd_{variant}"] = float(class_discrimination(probs, labels, variant=variant)["cd"])
    return out


def class_discrimination_order(paper_cd: dict[str, float], ours_cd: dict[str, dict[str, dict[int, float]]]) -> Effect:
    """The class-discrimination finding's effect: do our students' CD values, replicate by replicate, follow the
    paper's order of teacher conditions? Page's L over the replicates (:func:`ordered_trend`), in the
    ``as_published`` variant, the one das2020's notebook computed and so the one its numbers are (like with like).
    The ``correct`` variant's mean rho is written beside it in the test column, for information only (it decides
    nothing). ``paper_cd``: condition -> the paper's CD; ``ours_cd``: variant -> condition -> replicate -> CD."""
    conditions = list(paper_cd)
    paper = [paper_cd[c] for c in conditions]

    def blocks(variant: str) -> list[list[float]]:
        replicates = sorted(set.intersection(*(set(ours_cd[variant][c]) for c in conditions)))
        return [[ours_cd[variant][c][r] for c in conditions] for r in replicates]

    correct = ordered_trend(paper, blocks("correct")).estimate
    return ordered_trend(paper, blocks(CD_ORDER_VARIANT),
                         f"students' CD per teacher condition, {CD_ORDER_VARIANT} variant as the paper's notebook; "
                         f"correct variant, for information: mean rho = {signed(correct, 3)}")


# ------------------------------------------------------------------------------------ shifted test sets

HUMAN_LABELS = "human_labels"  # the name of the CIFAR-10H entry among the shifted sets
SHIFTED_TITLES = {"cifar10_1": "CIFAR-10.1", "cinic10": "CINIC-10", HUMAN_LABELS: "CIFAR-10H"}
SHIFTED_HOW_TO = {
    "cifar10_1": "download datasets/cifar10.1_v6_data.npy and datasets/cifar10.1_v6_labels.npy from "
                 "github.com/modestyachts/CIFAR-10.1 into that folder",
    "cinic10": "download CINIC-10.tar.gz from the Edinburgh DataShare (https://datashare.ed.ac.uk/handle/10283/3192) "
               "and unpack it there: train/, valid/ and test/ class folders",
    HUMAN_LABELS: "download data/cifar10h-probs.npy from github.com/jcpeterson/cifar-10h to that path",
}


def shifted_root(data_root: str | None) -> Path:
    """The folder the scale's ``shifted_sets`` / ``human_labels`` paths are relative to: the study's
    ``--data-root``, else ``$MIXDISTILL_DATA``, else the download cache ``~/.cache/mixdistill/data`` (where the
    project looks for CIFAR-10 itself). An absolute path in the grid file is used as it is."""
    from mixdistill.data.datasets import CACHE_DIR, ENV_VAR

    if data_root:
        return Path(data_root).expanduser()
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return CACHE_DIR


def shifted_paths(sc: dict, data_root: str | None) -> dict[str, Path]:
    """name -> path of every shifted test set the scale lists, then its human labels (under ``human_labels``)."""
    base = shifted_root(data_root)
    listed = dict(sc.get("shifted_sets") or {})
    if sc.get(HUMAN_LABELS):
        listed[HUMAN_LABELS] = sc[HUMAN_LABELS]
    return {name: base / Path(str(path)).expanduser() for name, path in listed.items()}


def _run_outputs(opened, images, labels, mean, std, device):
    """float64 logits of the run's model on uint8 ``images``, normalised with the training set's mean / std."""
    import torch

    from mixdistill.data import DeviceLoader
    from mixdistill.models.inference import forward_in_chunks

    model = opened.model().to(device)
    loader = DeviceLoader(images, labels, batch_size=1000, mean=mean, std=std, shuffle=False, drop_last=False,
                          device=device)
    with torch.inference_mode():
        return torch.cat([forward_in_chunks(model, x).double().cpu() for x, _ in loader])


def _shifted_metrics(run_dir: Path, todo: dict[str, Path], eval_sets: dict, data_root, device) -> dict:
    """set name -> {"path", "acc" (top-1 %) or "kl" (mean KL(human || model) on the run's test set)} of one
    finished run; a set the run cannot take -> {"path", "error"}. ``eval_sets``: name -> loaded EvalSet (shared
    over runs), or the DataError message of a set that did not load."""
    import torch

    from mixdistill.analysis.data import (
        check_compatible,
        human_label_kl,
        load_human_labels,
    )
    from mixdistill.engine.run import open_run

    opened = open_run(run_dir)
    split = opened.split("test", data_root)  # the run's own test set (its test_subset applied), and its spec
    spec = split.spec
    num_classes, in_channels = opened.state.get("num_classes"), opened.state.get("in_channels")
    out = {}
    for name, path in todo.items():
        try:
            if name == HUMAN_LABELS:
                human = load_human_labels(path, len(split.labels), num_classes)
                logits = _run_outputs(opened, split.images, split.labels, spec.mean, spec.std, device)
                out[name] = {"path": str(path), "kl": human_label_kl(torch.softmax(logits, 1), human)}
                continue
            eval_set = eval_sets[name]
            if isinstance(eval_set, str):
                raise MixdistillError(eval_set)
            check_compatible(eval_set, in_channels, num_classes, spec.image_size)
            logits = _run_outputs(opened, eval_set.images, eval_set.labels, spec.mean, spec.std, device)
            acc = 100.0 * float((logits.argmax(1) == eval_set.labels).double().mean())
            out[name] = {"path": str(path), "acc": acc}
        except MixdistillError as e:
            out[name] = {"path": str(path), "error": str(e)}
    return out


def _stamp(path: Path) -> str:
    """A set's path and modification time: a set replaced at the same path is evaluated again."""
    return f"{path}@{path.stat().st_mtime_ns}"


def cached_shifted(study_dir: Path, keys: list[str], paths: dict[str, Path], data_root) -> dict[str, dict]:
    """run key -> set name -> its entry (see :func:`_shifted_metrics`), kept in STUDY/shifted.json keyed by the run
    key and its checkpoint's mtime (and, inside, by each set's path and mtime) so a re-rendered report evaluates nothing new.
    Errors are not kept: a set fixed since is evaluated at the next rendering. Each set is read once."""
    import torch

    from mixdistill.analysis.data import load_eval_set

    cache_path = study_dir / "shifted.json"
    cache = read_cache(cache_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    eval_sets: dict = {}
    out = {}
    for key in keys:
        directory = run_dir(study_dir, key)
        entry_key = f"{key}/{os.stat(directory / 'last.pt').st_mtime_ns}"
        entry = cache.get(entry_key, {})
        todo = {n: p for n, p in paths.items() if entry.get(n, {}).get("stamp") != _stamp(p)}
        for name, path in todo.items():
            if name != HUMAN_LABELS and name not in eval_sets:
                try:
                    eval_sets[name] = load_eval_set(str(path))
                except MixdistillError as e:
                    eval_sets[name] = str(e)
        if todo:
            new = {n: {**v, "stamp": _stamp(todo[n])}
                   for n, v in _shifted_metrics(directory, todo, eval_sets, data_root, device).items()}
            entry = {**entry, **new}
            kept = {n: v for n, v in entry.items() if "error" not in v}
            if kept != cache.get(entry_key):
                cache[entry_key] = kept
                write_json(cache_path, cache)
        out[key] = entry
    return out


def shifted_markdown(rows: dict, study_dir: Path, sc: dict, data_root, conditions: list[str],
                     students: list[str]) -> list[str]:
    """The report's "Shifted test sets and human labels" section (empty when the scale lists none): per shifted
    set, the top-1 % of every teacher condition's teachers and of their students per student network; for the
    human labels, the mean KL(human || model) on the run's own test set; a "Not evaluated" line per listed set
    that is missing or that the models cannot take. Descriptive: no finding, no Holm."""
    paths = shifted_paths(sc, data_root)
    if not paths:
        return []
    intro = ("Descriptive (no findings, no Holm). Every teacher and student, last epoch, on each listed set, inputs "
             "normalised with the training set's mean / std (das2020 normalised CINIC-10 with its own); top-1 %, "
             "and for the human soft labels (CIFAR-10H) the mean KL(human ‖ model) on the run's test set "
             "(lower: closer to the people's uncertainty). Mean [95% CI] over replicates. Paths relative to "
             f"{shifted_root(data_root)}.")
    lines = ["## Shifted test sets and human labels", "", intro, ""]
    missing = [n for n, p in paths.items() if not p.exists()]
    for name in missing:
        how = SHIFTED_HOW_TO.get(name, "see the grid file's comment")
        lines.append(f"Not evaluated: {name} not found at {paths[name]} ({how}).")
        lines.append("")
    present = {n: p for n, p in paths.items() if n not in missing}
    if not present:
        return lines
    results = cached_shifted(study_dir, list(rows), present, data_root)
    for name, path in present.items():
        errors = sorted({r[name]["error"] for r in results.values() if "error" in r.get(name, {})})
        if errors:
            lines += [f"Not evaluated: {name} at {path}: {'; '.join(errors)}", ""]
            continue
        field, digits = ("kl", 4) if name == HUMAN_LABELS else ("acc", 2)

        def cell(name=name, field=field, digits=digits, **labels) -> str:
            return fmt_mean_ci([results[r["key"]][name][field] for r in rows.values()
                                if all(r["labels"].get(k) == v for k, v in labels.items())], digits)

        what = "mean KL(human ‖ model) on the run's test set" if field == "kl" else "top-1 %"
        header = "| teacher trained with | teacher | " + " | ".join(f"{s} students" for s in students) + " |"
        lines += [f"### {SHIFTED_TITLES.get(name, name)} (`{name}`: {path.name}), {what}", "", header,
                  "|---|---|" + "---|" * len(students)]
        for c in conditions:
            cells = [c, cell(role="teacher", condition=c)] + [cell(role="student", condition=c, student=s)
                                                            for s in students]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference(NAME)
    gates_cfg = sc.get("gates", {"overconfidence_margin": 0.01, "accuracy_within": 1.0})
    conditions = list(spec["conditions"])
    students = sc.get("students", spec["students"])
    # each condition's reliability diagram: its first finished teacher replicate (replicate 0 unless it diverged)
    drawn = {}
    for key, row in sorted(rows.items(), key=lambda item: item[1]["labels"]["seed"]):
        if row["labels"]["role"] == "teacher":
            drawn.setdefault(row["labels"]["condition"], key)
    metrics = {key: _metrics(study_dir, key, data_root, reliability=key in drawn.values()) for key in rows}

    def values(field: str, **labels) -> dict[int, float]:
        """replicate -> the value of the matching runs (accuracy from the summary, the rest measured)."""
        if field == "acc":
            return by_seed(rows, "last_acc", **labels)
        return {r["labels"]["seed"]: metrics[r["key"]][field] for r in rows.values()
                if all(r["labels"].get(k) == v for k, v in labels.items())}

    dataset = next(iter(rows.values()))["summary"]["dataset"]
    replicates = sorted(values("acc", role="teacher"))  # a replicate counts where any of its teachers finished
    paper_ds = ref["dataset"].upper().replace("CIFAR", "CIFAR-")
    lines = [f"# das2020 study ({scale} scale, {dataset})", "",
             f"Teachers ({sc['teacher']['model']['student']}) trained under each condition, "
             f"{replicates_text(replicates)}; students {', '.join(students)} distilled "
             f"from each replicate on un-augmented images with das2020's KD (T = 20, g = 0.5). Top-1 % and ECE "
             f"({ECE_BINS} bins, as das2020) on the {dataset} test set, last epoch. The paper's numbers are "
             f"{paper_ds} (ResNet-18 teacher, LeNet-5 and AlexNet students) and appear only as the direction and "
             f"size of each claim.", ""]
    lines += timing_markdown(study_dir, rows)

    # ---- gates
    teacher_ece = {c: values("ece", role="teacher", condition=c) for c in conditions}
    teacher_acc = {c: values("acc", role="teacher", condition=c) for c in conditions}
    # the precondition (methods.md: an over-confident unaugmented teacher) in a signed measure: ECE has no sign, and
    # the paper's own teachers have ECE(none) 0.076 < ECE(mixup) 0.122 with the mixup teacher under-confident
    teacher_over = {c: values("overconfidence", role="teacher", condition=c) for c in conditions}
    over = paired(teacher_over["none"], {r: 0.0 for r in teacher_over["none"]})
    over.test = f"one-sample t over {counted(over.n, 'replicate')}"
    margin = gates_cfg["overconfidence_margin"]
    gate_over = Gate("unaugmented teacher over-confident",
                     f"the unaugmented teachers' mean top-class confidence − accuracy ≥ {margin} and p < 0.05 "
                     "(one-sample t over replicates, two-sided, against 0)",
                     f"{over.text(4)}, {p_text(over.p)}",
                     holds(over.estimate >= margin and over.p < 0.05, over))
    gaps = {m: paired(teacher_acc[m], teacher_acc["none"]).estimate for m in MIXED}  # NaN: no replicate has both
    # one-sided: a mixed teacher that is *worse* would explain worse students by itself; a better one (the
    # paper's CutMix teacher is 10 points better) only makes "worse students" the stronger claim
    gate_acc = Gate("mixed teachers not less accurate",
                    f"acc(mixed) − acc(none) ≥ −{gates_cfg['accuracy_within']} point for the mixup and cutmix teachers "
                    f"(mean over replicates)", ", ".join(f"{m} {signed(d)} points" for m, d in gaps.items()),
                    None if any(math.isnan(d) for d in gaps.values())
                    else all(d >= -gates_cfg["accuracy_within"] for d in gaps.values()))
    gate_conv = {s: convergence_gate(rows, study_dir, role="student", student=s) for s in students}
    gates = [gate_over, gate_acc, *gate_conv.values()]
    lines += gates_markdown(gates)

    # ---- tables (after the findings: a report reads gates, findings, then what they rest on)
    tables = ["## Teachers and students per teacher condition", "",
              "Mean [95% CI] over replicates.", "",
              "| teacher trained with | teacher acc | teacher ECE | teacher confidence − accuracy | "
              + " | ".join(f"{s} acc | {s} ECE" for s in students) + " |",
              "|---|---|---|---|" + "---|---|" * len(students)]
    for c in conditions:
        cells = [c, fmt_mean_ci(list(teacher_acc[c].values())), fmt_mean_ci(list(teacher_ece[c].values()), 4),
                 fmt_mean_ci(list(teacher_over[c].values()), 4)]
        for s in students:
            cells += [fmt_mean_ci(list(values("acc", role="student", condition=c, student=s).values())),
                      fmt_mean_ci(list(values("ece", role="student", condition=c, student=s).values()), 4)]
        tables.append("| " + " | ".join(cells) + " |")
    tables += ["", "## Class discrimination of the students (softmax outputs, ×100)", "",
               "| teacher | " + " | ".join(f"{s} correct | {s} as_published" for s in students) + " |",
               "|---|" + "---|---|" * len(students)]
    for c in conditions:
        cells = [c]
        for s in students:
            for variant in ("correct", "as_published"):
                cells.append(fmt_mean_ci([100 * v for v in values(f"cd_{variant}", role="student", condition=c,
                                                                   student=s).values()]))
        tables.append("| " + " | ".join(cells) + " |")
    tables += ["", (f"The paper's CD values were computed by its notebook, i.e. in the `{CD_ORDER_VARIANT}` variant: "
                    f"the class-discrimination finding ranks our `{CD_ORDER_VARIANT}` values against them; `correct` "
                    "is shown for information."), ""]
    tables += shifted_markdown(rows, study_dir, sc, data_root, conditions, students)

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
    ours_cd = {variant: {c: values(f"cd_{variant}", role="student", condition=c, student=first) for c in ranked}
               for variant in ("correct", "as_published")}
    findings.append(Finding(
        f"{first} students' class discrimination follows the paper's order of teachers "
        f"({' > '.join(sorted(ranked, key=lambda c: -ref['class_discrimination'][c]['cd']))})",
        class_discrimination_order({c: ref["class_discrimination"][c]["cd"] for c in ranked}, ours_cd),
        +1, f"order of {len(ranked)} CD values ({paper_ds}, LeNet)", unit="r", gates=[gate_conv[first]]))
    adjust(findings)
    lines += findings_markdown(findings)
    lines += tables

    # ---- figures
    lines += ["## Figures", ""]
    plot_effects(findings, study_dir / "das2020_effects.png", f"das2020 findings ({dataset})")
    lines += ["![effects](das2020_effects.png)", ""]
    plot_intervals({c: list(teacher_ece[c].values()) for c in conditions}, study_dir / "das2020_teacher_ece.png",
                   f"Teacher ECE by training condition ({dataset})", ylabel="ECE (10 bins)")
    lines += ["![teacher ECE](das2020_teacher_ece.png)", ""]
    for s in students:
        name = f"das2020_students_{s}.png"
        plot_intervals({c: list(values("acc", role="student", condition=c, student=s).values())
                        for c in teacher_conditions(spec, sc, s)},  # a gap by design is no unfinished run
                       study_dir / name, f"{s} students by their teacher's training condition ({dataset})")
        lines += [f"![{s} students]({name})", ""]
    lines += [f"![teacher {c}](das2020_reliability_teacher_{c}.png)" for c in conditions if c in drawn]
    return "\n".join(lines) + "\n"
