"""wang2022 study: KD thrives on data augmentation (CutMixPick), longer training, T. stddev.

Grid (resources/studies/wang2022.yaml): per teacher-student pair, CE, KD, KD+mixup/CutMix/CutMixPick (three
criteria), CE/KD/KD+CutMixPick with a longer schedule, CRD+KD and CRD+CutMixPick; on the first pair the
nine-view study (KD with each view), every view with every seed. Every method runs the same seeds (a seed fixes
the initialisation and the data order), so every comparison is paired by seed; the view correlations use each
view's mean over the same seeds.

Gates: KD beats CE (significantly), the students converged (plateau over the last quarter, at least ~1,000 SGD
steps), so that "longer" extends a converged schedule rather than curing underfitting.
"""

from __future__ import annotations

import copy
import os
import statistics
from pathlib import Path

from mixdistill.analysis import plot_tstddev_vs_loss, teacher_statistics
from mixdistill.analysis.teacher_stats import STEPS_PER_GROUP
from mixdistill.config import merge
from mixdistill.data import DeviceLoader
from mixdistill.engine.build import build_distiller
from mixdistill.engine.run import open_run
from mixdistill.engine.runtime import torch_threads
from mixdistill.errors import ConfigError, IncompleteStudyError
from mixdistill.files import read_cache, write_json
from mixdistill.models.checkpoint import load_weights
from mixdistill.resources import reference
from mixdistill.studies.common import (REPORT_JOBS, by_seed, convergence_gate, load_study_config, plot_effects,
                                       plot_intervals, scale_config, timing_markdown)
from mixdistill.studies.grid import GridRun, checkpoint_of, run_dir
from mixdistill.studies.stats import (adjust, all_hold, holds, Finding, Gate, correlation, counted, each_unit_markdown,
                                      equivalence, finding_over_units, findings_markdown, fmt_mean_ci, p_text,
                                      gates_markdown, mean_correlation, ordered_trend, over_units, paired,
                                      published_difference, rank_correlation)

NAME = "wang2022"


def _pair_key(pair) -> str:
    return f"{pair[0]}-{pair[1]}"


def _student_tree(base, sc, entry, pair, teacher_ckpt, seed):
    entry = copy.deepcopy(entry)
    long = entry.pop("long", False)
    if entry["augment"]["name"] == "cutout":
        entry["augment"]["size"] = sc["cutout_size"]
    tree = merge(merge(merge(base, sc.get("student", {})), entry),
                 {"seed": seed, "model": {"student": pair[1], "teacher_checkpoint": teacher_ckpt}})
    if entry["method"]["name"].startswith("crd") and "crd" in sc:
        tree = merge(tree, sc["crd"])
    if long:
        tree = merge(tree, {"optim": {"epoch_factor": sc["long_factor"]}})
    return tree


def methods(spec, sc) -> dict:
    """The study's methods at this scale (a scale may leave some out: ``skip_methods``)."""
    return {k: v for k, v in spec["methods"].items() if k not in sc.get("skip_methods", [])}


def _view_entries(spec) -> dict[str, tuple[str, dict | None]]:
    """view -> (method key of its run, entry when the view needs runs of its own)."""
    out = {}
    for view, entry in spec["views"].items():
        out[view] = (entry, None) if isinstance(entry, str) else (f"view_{view}", entry)
    return out


def grid(scale: str, seeds: list[int], study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge(sc["base"], {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    pairs, view_pairs = sc["pairs"], _view_pairs(sc)
    for pair in pairs + [p for p in view_pairs if p not in pairs]:
        if sc["pretrained_teachers"]:
            ckpt = pair[0]  # a benchmark teacher name (mixdistill teachers)
        else:
            key = f"teacher/{pair[0]}"
            if key not in {r.key for r in runs}:
                runs.append(GridRun(key, merge(merge(base, sc["teacher"]), {
                    "model": {"student": pair[0]}, "method": {"name": "ce"}, "augment": {"name": "none"},
                    "seed": 0}), stage=0, labels={"role": "teacher", "teacher": pair[0]}))
            ckpt = checkpoint_of(study_dir, key)
        entries = methods(spec, sc) if pair in pairs else {}
        if pair in view_pairs:  # the nine-view study: each view's run, every seed
            for key, entry in _view_entries(spec).values():
                entries.setdefault(key, entry if entry is not None else spec["methods"][key])
        for method, entry in entries.items():
            for seed in seeds:
                runs.append(GridRun(f"student/{_pair_key(pair)}/{method}/seed{seed}",
                                    _student_tree(base, sc, entry, pair, ckpt, seed), stage=1,
                                    labels={"role": "student", "pair": _pair_key(pair), "method": method,
                                            "seed": seed}))
    return runs


def _view_pairs(sc) -> list:
    """The pairs of the nine-view study: the scale's ``view_pairs`` (the released scripts' pairs at full
    scale), else its first pair."""
    return sc.get("view_pairs") or sc["pairs"][:1]


def _t_stddev(study_dir: Path, run_key: str, data_root, min_steps: int, epochs: int | None = None) -> float:
    """T. stddev of the pair's teacher under the view of the run ``run_key`` (its student frozen, as the
    released scripts freeze it with lr 0), over ``epochs`` epochs (the released scripts: 10) or else at least
    ``min_steps`` steps of the run's own training data, seeded by the run's seed, with as many torch threads as the
    run trained with (so the value does not depend on where it is computed: a worker process or the study's own)."""
    opened = open_run(run_dir(study_dir, run_key))
    cfg = opened.cfg
    train = opened.split("train", data_root)
    d = cfg.data
    distiller = build_distiller(cfg, train.spec.num_classes, train.images.shape[1], train.spec.mean, train.spec.std)
    load_weights(distiller.student, opened.state)
    padding = train.spec.padding_for(d.crop_padding)
    loader = DeviceLoader(train.images, train.labels, batch_size=d.batch_size, mean=train.spec.mean,
                          std=train.spec.std, crop_padding=padding, flip=d.flip, seed=cfg.seed)
    epochs = epochs or max(1, -(-min_steps // len(loader)))
    if epochs * len(loader) < 2 * STEPS_PER_GROUP:  # the std of a single group is undefined
        raise ConfigError(f"T. stddev needs at least {2 * STEPS_PER_GROUP} steps (two groups of {STEPS_PER_GROUP}); "
                          f"{epochs} epoch(s) of {len(loader)} steps give {epochs * len(loader)}")
    with torch_threads(cfg.train.threads):
        stats = teacher_statistics(distiller.teacher, loader, distiller.augment, student=distiller.student,
                                   epochs=epochs, seed=cfg.seed)
    return stats["t_stddev"]


def _t_stddev_key(study_dir: Path, run_key: str, min_steps: int, epochs: int | None) -> str:
    ckpt = checkpoint_of(study_dir, run_key)
    length = f"{epochs}ep" if epochs else min_steps
    return f"{run_key}/{length}/{os.stat(ckpt).st_mtime_ns}"


def _cached_t_stddev(study_dir: Path, run_key: str, data_root, min_steps: int, epochs: int | None = None) -> float:
    """_t_stddev, kept in STUDY/tstddev.json (keyed by the run's checkpoint time) so a report re-renders fast."""
    path = study_dir / "tstddev.json"
    cache = read_cache(path)
    key = _t_stddev_key(study_dir, run_key, min_steps, epochs)
    if key not in cache:
        cache[key] = _t_stddev(study_dir, run_key, data_root, min_steps, epochs)
        write_json(path, cache)
    return cache[key]


def _fill_t_stddev_cache(study_dir: Path, rows: dict, run_keys: list[str], data_root, min_steps: int,
                         epochs: int | None) -> None:
    """The T. stddev of every run of ``run_keys`` not in STUDY/tstddev.json yet, computed side by side in worker
    processes, as many as the cores hold at the runs' thread counts (read from their grid ``rows``; the grid
    runner's rule), each result kept as soon as it is done. One at a time in this process when only one fits."""
    import concurrent.futures

    from mixdistill.files import held_elsewhere
    from mixdistill.machine import available_cpus
    from mixdistill.studies.grid import GRID_LOCK, worker_pool

    path = study_dir / "tstddev.json"
    cache = read_cache(path)
    todo = {}
    for run_key in run_keys:
        key = _t_stddev_key(study_dir, run_key, min_steps, epochs)
        if key not in cache:
            todo[key] = run_key
    threads = max(((rows[k].get("config") or {}).get("train", {}).get("threads") or 1  # old rows carry no config
                   for k in todo.values()), default=1)
    workers = min(len(todo), REPORT_JOBS.get() or available_cpus() // threads)  # --jobs, else the cores
    if workers <= 1 or held_elsewhere(study_dir / GRID_LOCK):  # --report-only beside a running grid: its cores
        return  # _cached_t_stddev computes each in turn
    with worker_pool(workers) as pool:
        futures = {pool.submit(_t_stddev, study_dir, run_key, data_root, min_steps, epochs): key
                   for key, run_key in todo.items()}
        for future in concurrent.futures.as_completed(futures):
            cache[futures[future]] = future.result()
            write_json(path, cache)


# the findings' names of the methods (the grid's keys name them in the tables): what each view and pick is
CLAIM_NAMES = {"kd_cutmix": "KD+CutMix (kd_cutmix)", "kd_cutmixpick": "KD+CutMixPick, KL pick (kd_cutmixpick)",
               "kd_cutmixpick_tent": "KD+CutMixPick, teacher-entropy pick (kd_cutmixpick_tent)"}


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference(NAME)
    pairs = [_pair_key(p) for p in sc["pairs"]]
    teacher_of = {_pair_key(p): p[0] for p in sc["pairs"]}
    first = next((r for r in rows.values() if r["labels"]["role"] == "student"), None)
    if first is None:  # no student finished: nothing this report compares
        raise IncompleteStudyError("no student run of wang2022 finished; no report written")
    first = first["summary"]
    dataset = first["dataset"]
    paper_ds = ref["dataset"].upper().replace("CIFAR", "CIFAR-")

    def acc(pair, method, field="last_acc") -> dict[int, float]:
        return by_seed(rows, field, pair=pair, method=method)

    lines = [f"# wang2022 study ({scale} scale, {dataset})", "",
             f"Students of each pair; {counted(first['epochs'], 'epoch')} (long: x{sc['long_factor']}). Top-1 % on the "
             f"{dataset} test set, last epoch, mean [95% CI] over seeds; every method ran the same seeds, so "
             f"differences are paired by seed. The paper's numbers are {paper_ds} (240 epochs, long = 960) and appear "
             f"only as the direction and size of each claim.", ""]
    lines += timing_markdown(study_dir, rows)
    gates, findings, tables, kd_converged, kd_beats_ce, gates_of = [], [], [], {}, {}, {}
    paper_rows = {"kd": "kd", "kd_cutmix": "kd_cutmix", "kd_cutmixpick": "kd_cutmixpick", "ce": "student_ce",
                  "kd_cutmixpick_long": "kd_cutmixpick_960", "kd_long": "kd_960", "crd_kd": "crd_kd",
                  "crd_cutmixpick": "crd_cutmixpick", "crd_cutmixpick_long": "crd_cutmixpick_960"}

    def paper_gain(pair, a, b) -> str:
        col = ref["pairs"].index(pair) if pair in ref["pairs"] else 0  # a CPU pair: the paper's first pair
        va, vb = (ref["rows"][paper_rows[m]][col] for m in (a, b))
        if isinstance(va, list) and isinstance(vb, list):  # mean and std of 3 runs: the paper's own test too
            return f"{published_difference(va, vb)} ({paper_ds}, {ref['pairs'][col]})"
        va, vb = (v[0] if isinstance(v, list) else v for v in (va, vb))
        return f"{va - vb:+.2f} ({paper_ds}, {ref['pairs'][col]})"

    def paper_mean_gain(a, b) -> str:  # a claim over several pairs: the paper's mean over its pairs
        diffs = [(va[0] if isinstance(va, list) else va) - (vb[0] if isinstance(vb, list) else vb)
                 for va, vb in zip(ref["rows"][paper_rows[a]], ref["rows"][paper_rows[b]])]
        return f"{statistics.fmean(diffs):+.2f}, mean over the paper's {len(diffs)} pairs ({paper_ds})"

    per_pair: dict[str, list] = {}  # claim (without its pair) -> [(pair, its finding, the paper's (a, b) or None)]

    def add(pair, finding, paper_methods=None):
        per_pair.setdefault(finding.claim.split(": ", 1)[1], []).append((pair, finding, paper_methods))
        findings.append(finding)

    # "CE does not gain from longer training" is judged by equivalence within the gain the paper calls a gain: KD's
    # from 960 epochs, its mean over the paper's pairs (0.65 points)
    no_gain_margin = statistics.fmean(long[0] - short[0] for long, short in zip(ref["rows"]["kd_960"],
                                                                                 ref["rows"]["kd"]))
    for pair in pairs:
        kd_ce = paired(acc(pair, "kd"), acc(pair, "ce"))
        gate_kd = Gate(f"{pair}: KD beats CE", "KD − CE > 0, paired p < 0.05",
                       f"{kd_ce.text()}, {p_text(kd_ce.p)}",
                       holds(kd_ce.estimate > 0 and kd_ce.p < 0.05, kd_ce))
        short = [m for m in methods(spec, sc) if not spec["methods"][m].get("long")]
        gate_conv = convergence_gate(rows, study_dir, pair=pair, method="kd")
        gate_conv_ce = convergence_gate(rows, study_dir, pair=pair, method="ce")
        gates += [gate_kd, gate_conv, gate_conv_ce]
        kd_converged[pair] = gate_conv
        kd_beats_ce[pair], gates_of[pair] = kd_ce, (gate_kd, gate_conv, gate_conv_ce)
        g = [gate_kd, gate_conv]
        for m in ("kd_cutmix", "kd_cutmixpick", "kd_cutmixpick_tent"):  # the paper's tables; the rest are views
            paper = paper_gain(pair, m, "kd") if m in paper_rows else "gains (paper, CIFAR-100 figures)"
            add(pair, Finding(f"{pair}: {CLAIM_NAMES[m]} beats KD", paired(acc(pair, m), acc(pair, "kd")), +1, paper,
                              gates=g),
                (m, "kd") if m in paper_rows else None)
        add(pair, Finding(f"{pair}: KD gains from longer training", paired(acc(pair, "kd_long"), acc(pair, "kd")),
                          +1, paper_gain(pair, "kd_long", "kd"), gates=[gate_kd, gate_conv]), ("kd_long", "kd"))
        gain = {s: (acc(pair, "kd_long")[s] - acc(pair, "kd")[s]) for s in acc(pair, "kd_long") if s in acc(pair, "kd")}
        ce_gain = {s: (acc(pair, "ce_long")[s] - acc(pair, "ce")[s]) for s in acc(pair, "ce_long") if s in acc(pair, "ce")}
        add(pair, Finding(f"{pair}: KD gains more from longer training than CE", paired(gain, ce_gain), +1,
                          "KD gains, CE does not (CIFAR-100)", gates=[gate_kd, gate_conv, gate_conv_ce]))
        add(pair, Finding(f"{pair}: CE does not gain from longer training", paired(acc(pair, "ce_long"),
                                                                                  acc(pair, "ce")),
                          +1, f"no gain (CIFAR-100); margin ±{no_gain_margin:.2f}, the paper's mean KD gain "
                              f"from longer training", no_effect_claim=True, gates=[gate_conv_ce],
                          equivalence=equivalence(acc(pair, "ce_long"), acc(pair, "ce"), no_gain_margin)))
        add(pair, Finding(f"{pair}: KD+CutMixPick gains from longer training",
                          paired(acc(pair, "kd_cutmixpick_long"), acc(pair, "kd_cutmixpick")), +1,
                          paper_gain(pair, "kd_cutmixpick_long", "kd_cutmixpick"), gates=g),
            ("kd_cutmixpick_long", "kd_cutmixpick"))
        if {"crd_cutmixpick", "crd_kd"} <= set(methods(spec, sc)):
            add(pair, Finding(f"{pair}: CRD+CutMixPick beats CRD+KD",
                              paired(acc(pair, "crd_cutmixpick"), acc(pair, "crd_kd")), +1,
                              paper_gain(pair, "crd_cutmixpick", "crd_kd"), gates=g), ("crd_cutmixpick", "crd_kd"))
        tables += [f"## {pair}", "", "| method | top-1 | paired vs KD [95% CI] |", "|---|---|---|"]
        # the teacher's own run where the grid trains it (its students record the accuracy of the copy they distil
        # from, folded and in their precision: 90.05 for its 90.06); a pretrained one's as its students evaluated it
        teacher = [r["summary"]["last_acc"] for r in rows.values()
                   if r["labels"]["role"] == "teacher" and r["labels"]["teacher"] == teacher_of[pair]] or [
            r["summary"]["teacher_acc"] for r in rows.values()
            if r["labels"].get("pair") == pair and r["summary"]["teacher_acc"] is not None]
        tables.append(f"| teacher | {f'{teacher[0]:.2f}' if teacher else '-'} | - |")  # '-': no student finished
        for m in methods(spec, sc):
            e = paired(acc(pair, m), acc(pair, "kd"))
            tables.append(f"| {m} | {fmt_mean_ci(list(acc(pair, m).values()))} | "
                          + ("-" if m == "kd" else e.text()) + " |")
        figure = f"wang2022_accuracy_{pair}.png"
        plot_intervals({m: list(acc(pair, m).values()) for m in short}, study_dir / figure,
                       f"{pair} students, {dataset}")
        tables += ["", f"![{pair} students]({figure})", ""]
        del short
    view_lines, view_pairs, view_runs = [], [_pair_key(p) for p in _view_pairs(sc)], {}
    for pair in view_pairs:
        # a pair of the main grid is judged under its KD students' convergence gate, another by its identity view's
        gate = kd_converged.get(pair) or convergence_gate(rows, study_dir, pair=pair,
                                                          method=_view_entries(spec)["identity"][0])
        if pair not in kd_converged:
            gates.append(gate)
        figure = ("wang2022_tstddev_vs_loss.png" if len(view_pairs) == 1
                  else f"wang2022_tstddev_vs_loss_{pair}.png")
        view_findings, lines_, losses = _views(spec, rows, study_dir, pair, data_root, sc.get("tstddev_steps", 100),
                                               gate, sc.get("tstddev_epochs"), figure)
        view_runs[pair] = (view_findings, losses, gate)
        findings += view_findings
        view_lines += lines_
    described, over = [], []  # each pair's own findings, and the claims judged over several pairs instead
    if len(pairs) > 1:
        described += [Finding(f"{p}: KD beats CE", kd_beats_ce[p], +1, "") for p in pairs]  # the gate's units
        described += [f for entries in per_pair.values() for _, f, _ in entries]
        over += _over_pairs(pairs, per_pair, kd_beats_ce, gates_of, gates, paper_mean_gain, no_gain_margin)
    if len(view_runs) > 1:
        described += [f for fs, _, _ in view_runs.values() for f in fs]
        over += _over_view_pairs(spec, view_runs, gates)
    if described:
        left_out = {id(f) for f in described}
        findings = [f for f in findings if id(f) not in left_out] + over
    adjust(findings)
    lines += gates_markdown(gates) + findings_markdown(findings)
    plot_effects(findings, study_dir / "wang2022_effects.png", f"wang2022 findings ({dataset})")
    lines += ["![effects](wang2022_effects.png)", ""] + each_unit_markdown(described, "pair") + tables + view_lines
    return "\n".join(lines) + "\n"


def _over_pairs(pairs, per_pair, kd_beats_ce, gates_of, gates, paper_mean_gain, margin) -> list[Finding]:
    """The claims judged over several pairs (the full scale's seven): each the mean of the pairs' own paired effects,
    tested over the pairs (:func:`over_units`), resting on the pooled gates (KD beats CE over the pairs; every pair's
    KD and CE students converged), which are added to ``gates``."""
    kd = over_units(kd_beats_ce)
    gate_kd = Gate(f"KD beats CE over {counted(kd.n, 'pair')}", "mean over the pairs of KD − CE > 0, p < 0.05 "
                   "(one-sample t over the pairs)", f"{kd.text()}, {p_text(kd.p)}",
                   holds(kd.estimate > 0 and kd.p < 0.05, kd))
    gate_conv = all_hold("converged (method=kd) on every pair", [gates_of[p][1] for p in pairs])
    gate_conv_ce = all_hold("converged (method=ce) on every pair", [gates_of[p][2] for p in pairs])
    # each pair's KD-beats-CE gate holds nothing up here (the gate is the mean's): it moves to the descriptive rows
    gates[:] = [g for g in gates if all(g is not gates_of[p][0] for p in pairs)] + [gate_kd, gate_conv, gate_conv_ce]
    pooled = {}  # id of a pair's gate -> the pooled gate of its kind
    for p in pairs:
        for own, over in zip(gates_of[p], (gate_kd, gate_conv, gate_conv_ce)):
            pooled[id(own)] = over
    return [finding_over_units(claim, {p: f for p, f, _ in entries}, pooled, "pair",
                               paper_mean_gain(*entries[0][2]) if entries[0][2] else None, margin)
            for claim, entries in per_pair.items()]


def _over_view_pairs(spec, view_runs, gates) -> list[Finding]:
    """The nine views' two claims over several view pairs (the released scripts' nine): the order by Page's L with
    the pairs as blocks (each pair's view means), the correlation as the mean of the pairs' Fisher z; resting on
    every view pair's convergence gate, pooled into one added to ``gates``."""
    order = spec["paper_view_order"]
    blocks = [losses for _, losses, _ in view_runs.values() if losses]
    trend = ordered_trend(list(range(len(order), 0, -1)), blocks)
    trend.test = f"Page's L, {counted(trend.n, 'pair')} × {len(order)} views (each pair's view means)"
    gate = all_hold("converged on every view pair", [g for _, _, g in view_runs.values()])
    gates.append(gate)
    firsts = next(iter(view_runs.values()))[0]
    n = counted(len(view_runs), "view pair")
    return [Finding(f"over the {n}: student test loss follows the paper's order of the nine views", trend, +1,
                    f"{firsts[0].paper}; the paper shows this one pair", unit="r", gates=[gate]),
            Finding(f"over the {n}: teacher T. stddev correlates with student test loss",
                    mean_correlation({p: fs[1].effect for p, (fs, _, _) in view_runs.items()}), +1,
                    f"{firsts[1].paper}, one pair (wrn_40_2 → wrn_16_2)", unit="r", gates=[gate])]


def _views(spec, rows, study_dir, pair, data_root, min_steps, gate_conv, epochs=None,
           figure="wang2022_tstddev_vs_loss.png") -> tuple[list[Finding], list[str], list[float]]:
    views = _view_entries(spec)
    order = spec["paper_view_order"]  # worst (highest student test loss) first
    per_view = {view: by_seed(rows, "last_test_loss", pair=pair, method=views[view][0]) for view in order}
    # the views are compared on the seeds every one of them finished (all of them unless a run did not finish)
    seeds = sorted(set.intersection(*(set(v) for v in per_view.values())))
    dropped = sorted(set().union(*(set(v) for v in per_view.values())) - set(seeds))
    _fill_t_stddev_cache(study_dir, rows, [f"student/{pair}/{views[view][0]}/seed{s}" for view in order
                                           for s in seeds], data_root, min_steps, epochs)
    losses, stds = [], []
    for view in order if seeds else ():  # no seed finished under every view: nothing to rank
        losses.append(statistics.fmean(per_view[view][s] for s in seeds))
        stds.append(statistics.fmean(_cached_t_stddev(study_dir, f"student/{pair}/{views[view][0]}/seed{s}",
                                                      data_root, min_steps, epochs) for s in seeds))
    n_seeds = len(seeds)
    if seeds:
        plot_tstddev_vs_loss(stds, losses, order, study_dir / figure,
                             title=f"{pair}: teacher T. stddev vs student test loss")
    findings = [
        Finding(f"{pair}: student test loss follows the paper's order of the nine views",
                rank_correlation(list(range(len(order), 0, -1))[:len(losses)], losses,
                                 f"view means over {counted(n_seeds, 'seed')}"), +1,
                "Identity worst … CutMixPick (T. ent.) best (CIFAR-100, wrn_40_2 → wrn_16_2)", unit="r",
                gates=[gate_conv]),
        Finding(f"{pair}: teacher T. stddev correlates with student test loss",
                correlation(stds, losses, f"9 views, means over {counted(n_seeds, 'seed')}"), +1,
                "Pearson ≈ 0.96 (CIFAR-100)", unit="r", gates=[gate_conv]),
    ]
    ran = ("No seed finished under every view, so there is nothing to compare" if not seeds else
           f"Every view ran the same {counted(n_seeds, 'seed')}" if not dropped else
           f"The views are compared on the {counted(n_seeds, 'seed')} that finished under every view (seed"
           f"{'s' * (len(dropped) != 1)} {', '.join(map(str, dropped))} left out: a run of it did not finish)")
    lines = ["", f"## The nine views on {pair}", "",
             f"{ran}; student test loss and T. stddev (the teacher's, each seed's frozen student scoring CutMixPick, "
             f"{counted(epochs, 'epoch') if epochs else f'at least {min_steps} steps'}) are means over them.", "",
             "| view (paper order, worst first) | student test loss | teacher T. stddev |", "|---|---|---|"]
    lines += [f"| {n} | {loss:.4f} | {s:.5f} |" for n, loss, s in zip(order, losses, stds)]
    if not seeds:
        return findings, lines + [""], losses
    lines += ["", f"![T. stddev vs student test loss]({figure})", "",
              "The p values in the figure's legend are each coefficient's own, unadjusted; the verdicts use the "
              "findings table's Holm-adjusted p.", ""]
    return findings, lines, losses
