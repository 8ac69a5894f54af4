"""wang2022 study: KD thrives on data augmentation (CutMixPick), longer training, T. stddev.

Grid (src/mixdistill/resources/studies/wang2022.yaml): for each teacher-student pair, CE, KD, KD+mixup/CutMix/CutMixPick
(three criteria), CE/KD/KD+CutMixPick with a longer schedule, CRD+KD and CRD+CutMixPick; on the first pair
the nine-view study (KD + each view), whose student test loss is compared with the paper's order and
with the teacher's T. stddev under each view.
"""

from __future__ import annotations

import copy
import json
import math
import os
import statistics
from pathlib import Path

from mixdistill.demo import merge
from mixdistill.studies.common import (fmt_p, load_study_config, mean_std, plot_accuracy_bars, reference,
                                       scale_config, verdict, welch)
from mixdistill.studies.grid import GridRun

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


def _view_entries(spec) -> dict[str, tuple[str, dict | None]]:
    """view -> (method key of its run, entry when the view needs runs of its own)."""
    out = {}
    for view, entry in spec["views"].items():
        out[view] = (entry, None) if isinstance(entry, str) else (f"view_{view}", entry)
    return out


def grid(scale: str, seeds: int, study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge(sc["base"], {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for i, pair in enumerate(sc["pairs"]):
        if sc["pretrained_teachers"]:
            ckpt = pair[0]  # a benchmark teacher name (mixdistill teachers)
        else:
            key = f"teacher/{pair[0]}"
            if key not in {r.key for r in runs}:
                runs.append(GridRun(key, merge(merge(base, sc["teacher"]), {
                    "model": {"student": pair[0]}, "method": {"name": "ce"}, "seed": 0}), stage=0,
                    labels={"role": "teacher", "teacher": pair[0]}))
            ckpt = str(study_dir / "runs" / f"teacher__{pair[0]}" / "last.pt")
        entries = {key: (entry, seeds) for key, entry in spec["methods"].items()}
        if i == 0:  # view-only runs may use fewer seeds (the scale's view_seeds)
            view_seeds = min(seeds, sc.get("view_seeds", seeds))
            entries.update({key: (entry, view_seeds) for key, entry in _view_entries(spec).values()
                            if entry is not None})
        for method, (entry, method_seeds) in entries.items():
            for seed in range(method_seeds):
                runs.append(GridRun(f"student/{_pair_key(pair)}/{method}/seed{seed}",
                                    _student_tree(base, sc, entry, pair, ckpt, seed), stage=1,
                                    labels={"role": "student", "pair": _pair_key(pair), "method": method,
                                            "seed": seed}))
    return runs


def _t_stddev(study_dir: Path, rows: dict, pair: str, method: str, data_root, min_steps: int = 100) -> float:
    """T. stddev of the pair's teacher under the view of ``method`` (student frozen: the seed-0 run's)."""
    from mixdistill.analysis import teacher_statistics
    from mixdistill.config import build_config
    from mixdistill.data import DeviceLoader
    from mixdistill.engine.trainer import build_distiller, load_data
    from mixdistill.models.checkpoint import load_weights

    state_dir = study_dir / "runs" / f"student__{pair}__{method}__seed0"
    from mixdistill.engine.checkpoint import load_checkpoint

    state = load_checkpoint(state_dir / "last.pt")
    cfg = build_config({**state["config"], "data": {**state["config"]["data"],
                                                    "root": data_root or state["config"]["data"]["root"]}})
    train, _ = load_data(cfg)
    d = cfg.data
    distiller = build_distiller(cfg, train.spec.num_classes, train.images.shape[1], train.spec.mean, train.spec.std)
    load_weights(distiller.student, state)
    padding = train.spec.crop_padding if d.crop_padding is None else d.crop_padding
    loader = DeviceLoader(train.images, train.labels, batch_size=d.batch_size, mean=train.spec.mean,
                          std=train.spec.std, crop_padding=padding, flip=d.flip, seed=0)
    # at least min_steps steps (20 five-step groups by default: one epoch at CPU and full scale)
    epochs = max(1, -(-min_steps // len(loader)))
    stats = teacher_statistics(distiller.teacher, loader, distiller.augment, student=distiller.student,
                               epochs=epochs)
    return stats["t_stddev"]


def _cached_t_stddev(study_dir: Path, rows: dict, pair: str, method: str, data_root, min_steps: int) -> float:
    """_t_stddev, kept in STUDY/tstddev.json (keyed by the run's checkpoint time) so a report re-renders fast."""
    from mixdistill.files import write_json

    path = study_dir / "tstddev.json"
    cache = json.loads(path.read_text()) if path.exists() else {}
    ckpt = study_dir / "runs" / f"student__{pair}__{method}__seed0" / "last.pt"
    key = f"{pair}/{method}/{min_steps}/{os.stat(ckpt).st_mtime_ns}"
    if key not in cache:
        cache[key] = _t_stddev(study_dir, rows, pair, method, data_root, min_steps)
        write_json(path, cache)
    return cache[key]


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference(NAME)

    def values(pair, method, field="last_acc"):
        return [r["summary"][field] for r in rows.values()
                if r["labels"].get("pair") == pair and r["labels"].get("method") == method]

    def gains(pair, method):
        """Per-seed accuracy gain of ``method``_long over ``method`` (seeds present in both)."""
        def by_seed(m):
            return {r["labels"].get("seed"): r["summary"]["last_acc"] for r in rows.values()
                    if r["labels"].get("pair") == pair and r["labels"].get("method") == m}
        short, long = by_seed(method), by_seed(f"{method}_long")
        return [long[s] - short[s] for s in sorted(set(short) & set(long))]

    pairs = [_pair_key(p) for p in sc["pairs"]]
    first = next(r for r in rows.values() if r["labels"]["role"] == "student")["summary"]
    paper_rows = {"kd": "kd", "kd_cutmix": "kd_cutmix", "kd_cutmixpick": "kd_cutmixpick", "ce": "student_ce",
                  "kd_cutmixpick_long": "kd_cutmixpick_960", "kd_long": "kd_960", "crd_kd": "crd_kd",
                  "crd_cutmixpick": "crd_cutmixpick", "crd_cutmixpick_long": "crd_cutmixpick_960"}
    lines = [f"# wang2022 study ({scale} scale)", "",
             f"Dataset: {first['dataset']}; {first['epochs']} epochs (long: x{sc['long_factor']}). Top-1 %, last "
             "epoch, mean ± std over seeds. Paper: CIFAR-100, 240 epochs (long = 960).", ""]
    for pair in pairs:
        paper_col = ref["pairs"].index(pair) if pair in ref["pairs"] else None
        lines += [f"## {pair}", "", "| method | ours | paper |", "|---|---|---|"]
        teacher = [r["summary"]["teacher_acc"] for r in rows.values()
                   if r["labels"].get("pair") == pair and r["summary"]["teacher_acc"] is not None]
        lines.append(f"| teacher | {teacher[0]:.2f} | "
                     f"{ref['rows']['teacher'][paper_col] if paper_col is not None else '-'} |")
        paper_means = {}
        for method in spec["methods"]:
            paper = "-"
            if paper_col is not None and method in paper_rows:
                v = ref["rows"][paper_rows[method]][paper_col]
                paper = f"{v[0]:.2f} ± {v[1]:.2f}" if isinstance(v, list) else f"{v:.2f}"
                paper_means[method] = v[0] if isinstance(v, list) else v
            lines.append(f"| {method} | {mean_std(values(pair, method))} | {paper} |")
        figure = f"wang2022_accuracy_{pair}.png"
        plot_accuracy_bars({m: values(pair, m) for m in spec["methods"]}, study_dir / figure, f"{pair} students",
                           paper=paper_means if scale == "full" and paper_means else None)
        lines += ["", f"![{pair} students]({figure})", ""]
    lines += ["## Findings", ""]
    for pair in pairs:
        kd = values(pair, "kd")
        for method in ("kd_cutmix", "kd_cutmixpick", "kd_cutmixpick_tent", "kd_cutmixpick_sent"):
            d, p = welch(values(pair, method), kd)
            lines.append(f"- {pair}: {method} vs KD {d:+.2f} points (Welch p = {fmt_p(p)}) — gain "
                         f"{verdict(d, p)}.")
        d_kd, p_kd = welch(values(pair, "kd_long"), kd)
        d_ce, p_ce = welch(values(pair, "ce_long"), values(pair, "ce"))
        d_gain, p_gain = welch(gains(pair, "kd"), gains(pair, "ce"))
        lines.append(f"- {pair}: longer training: KD {d_kd:+.2f} (p = {fmt_p(p_kd)}), CE {d_ce:+.2f} "
                     f"(p = {fmt_p(p_ce)}). 'KD gains from longer training': {verdict(d_kd, p_kd)}; 'CE does "
                     f"not': {_no_gain_verdict(d_ce, p_ce)}; 'KD gains more than CE': KD's per-seed gain exceeds "
                     f"CE's by {d_gain:+.2f} (Welch p = {fmt_p(p_gain)}) — {verdict(d_gain, p_gain)}.")
        for method, base, claim in (("crd_cutmixpick", "crd_kd", "CRD+CutMixPick beats CRD"),
                                    ("crd_cutmixpick_long", "crd_cutmixpick", "longer training helps CRD+CutMixPick")):
            if values(pair, method) and values(pair, base):
                d, p = welch(values(pair, method), values(pair, base))
                lines.append(f"- {pair}: {method} vs {base} {d:+.2f} points (Welch p = {fmt_p(p)}) — "
                             f"'{claim}': {verdict(d, p)}.")
    lines += _view_section(spec, rows, study_dir, pairs[0], values, data_root, sc.get("tstddev_steps", 100))
    return "\n".join(lines) + "\n"


def _no_gain_verdict(diff: float, p: float) -> str:
    """The paper's "CE does not gain from longer training" is a claim of no effect: a significant gain refutes
    it, and no test can confirm it, so the best outcome is "not contradicted"."""
    if math.isnan(p):
        return "untested (fewer than 2 seeds)"
    if diff > 0 and p < 0.05:
        return "NOT reproduced (CE gained significantly)"
    return "not contradicted (no significant CE gain, which does not show there is none)"


def _view_section(spec, rows, study_dir, pair, values, data_root, min_steps) -> list[str]:
    from scipy.stats import spearmanr

    from mixdistill.analysis import correlations, plot_tstddev_vs_loss

    views = _view_entries(spec)
    order = spec["paper_view_order"]  # worst (highest student test loss) first
    names, losses, stds = [], [], []
    for view in order:
        method = views[view][0]
        names.append(view)
        losses.append(statistics.mean(values(pair, method, "last_test_loss")))
        stds.append(_cached_t_stddev(study_dir, rows, pair, method, data_root, min_steps))
    plot_tstddev_vs_loss(stds, losses, names, study_dir / "wang2022_tstddev_vs_loss.png",
                         title=f"{pair}: teacher T. stddev vs student test loss")
    rho = spearmanr(list(range(len(order), 0, -1)), losses).statistic
    c = correlations(stds, losses)
    lines = ["", f"## The nine views on {pair}", "",
             "Student test loss: mean over the seeds each view has (views that are also grid methods have "
             "every seed; view-only runs have the scale's view_seeds).", "",
             "| view (paper order, worst first) | student test loss | teacher T. stddev |", "|---|---|---|"]
    lines += [f"| {n} | {loss:.4f} | {s:.5f} |" for n, loss, s in zip(names, losses, stds)]
    lines += ["", "![T. stddev vs student test loss](wang2022_tstddev_vs_loss.png)", "",
              f"- Student test loss vs the paper's view order: Spearman rho = {rho:.2f} "
              f"({'reproduced' if rho > 0.7 else 'NOT reproduced'} at threshold 0.7).",
              f"- T. stddev vs student test loss: Pearson r = {c['pearson'][0]:.2f} (p = {fmt_p(c['pearson'][1])}), "
              f"Spearman rho = {c['spearman'][0]:.2f}; paper: Pearson about 0.96 "
              f"({'reproduced' if c['pearson'][0] > 0.7 else 'NOT reproduced'} at threshold 0.7)."]
    return lines
