"""shen2022 study: online distillation with mixed samples (DML, KDCL, ONE, online CutMix, and the
Cut^nMix framework RECONSTRUCTED from shen2022's abstract), plus a network trained alone.

Report: mean peer, best peer and ensemble accuracy per method (mean ± std over seeds), the PCL
paper's baseline numbers beside them, and Welch t-tests for the claims.
"""

from __future__ import annotations

from pathlib import Path

from mixdistill.demo import merge
from mixdistill.studies.common import (fmt_p, load_study_config, mean_std, plot_accuracy_bars, reference,
                                       scale_config, verdict, welch)
from mixdistill.studies.grid import GridRun

NAME = "shen2022"


def settings(sc) -> dict[str, dict]:
    """setting name (a row of the PCL table) -> {"config": overrides, "skip": methods it cannot run}. A scale
    without ``settings`` has one, named by its ``reference_row``, whose run keys carry no setting prefix."""
    if "settings" not in sc:
        return {sc["reference_row"]: {"config": {}, "skip": [], "prefix": ""}}
    return {name: {"config": {k: v for k, v in entry.items() if k != "skip"}, "skip": entry.get("skip", []),
                   "prefix": f"{name}/"} for name, entry in sc["settings"].items()}


def grid(scale: str, seeds: int, study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge(sc["base"], {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for setting, entry in settings(sc).items():
        for method, extra in spec["methods"].items():
            if method in entry["skip"]:
                continue
            tree = merge(merge(base, entry["config"]), extra)
            if method in sc:
                tree = merge(tree, sc[method])
            for seed in range(seeds):
                runs.append(GridRun(f"{entry['prefix']}{method}/seed{seed}", merge(tree, {"seed": seed}),
                                    labels={"method": method, "seed": seed, "setting": setting}))
    return runs


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference("online_benchmark")
    lines = [f"# shen2022 study ({scale} scale)", "",
             "**cutnmix is a reconstruction of shen2022 (Mixed Sample Augmentation for Online Distillation) from "
             "its abstract only**; its loss and every choice are documented in `mixdistill/online/cutmix_online.py`.",
             ""]
    if sc.get("not_run"):
        lines += [f"Not in this grid: {sc['not_run']}", ""]
    for setting, entry in settings(sc).items():
        lines += _setting_section(spec, ref, setting, entry, {k: r for k, r in rows.items()
                                                              if r["labels"].get("setting", setting) == setting},
                                  study_dir, scale)
    return "\n".join(lines).rstrip() + "\n"


def _setting_section(spec, ref, setting, entry, rows, study_dir, scale) -> list[str]:
    reference_row = ref["rows"].get(setting)
    paper_row = dict(zip(ref["columns"], reference_row)) if reference_row else {}

    def values(method, field):
        return [r["summary"].get(field) for r in rows.values() if r["labels"]["method"] == method]

    first = next(iter(rows.values()))["summary"]
    methods = [m for m in spec["methods"] if m not in entry["skip"]]
    lines = [f"## {setting}", "",
             f"Dataset: {first['dataset']}, {first['student']} peers, {first['epochs']} epochs; "
             f"paper column: the PCL paper's {setting} numbers (shen2022's own were not available). "
             "Top-1 %, last epoch, mean ± std over seeds."
             + (f" Not run here: {', '.join(entry['skip'])} (no branch form for this network)." if entry["skip"]
                else ""), "",
             "| method | mean peer | best peer | ensemble | paper (PCL table) |", "|---|---|---|---|---|"]
    for method in methods:
        if method == "ce":
            lines.append(f"| ce (one network alone) | {mean_std(values(method, 'last_acc'))} | - | - | - |")
            continue
        lines.append(f"| {method} | {mean_std(values(method, 'last_acc_mean_peer'))} | "
                     f"{mean_std(values(method, 'last_acc_best_peer'))} | {mean_std(values(method, 'last_acc_ensemble'))} | "
                     f"{paper_row.get(method, '-')} |")
    figure = f"shen2022_{setting}.png"
    plot_accuracy_bars({m: values(m, "last_acc" if m == "ce" else "last_acc_mean_peer") for m in methods},
                       study_dir / figure, f"{setting}: mean peer (ce: the network alone)",
                       paper={m: v for m, v in paper_row.items() if m in methods} if scale == "full" else None)
    lines += ["", f"![{setting}]({figure})", "", "### Findings", ""]
    alone = values("ce", "last_acc")
    online = [m for m in ("dml", "kdcl", "one", "online_cutmix", "cutnmix") if m in methods]
    for method in online:
        d, p = welch(values(method, "last_acc_mean_peer"), alone)
        lines.append(f"- {method} mean peer vs a network trained alone: {d:+.2f} points (Welch p = {fmt_p(p)}).")
    cut = values("cutnmix", "last_acc_mean_peer")
    for baseline in (m for m in online if m != "cutnmix"):
        d, p = welch(cut, values(baseline, "last_acc_mean_peer"))
        lines.append(f"- Claim 'Cut^nMix beats {baseline}' (mean peer): {d:+.2f} points (p = {fmt_p(p)}) — "
                     f"{verdict(d, p)}.")
    return lines + [""]
