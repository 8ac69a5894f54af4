"""shen2022 study: online distillation with mixed samples (DML, KDCL, ONE, online CutMix, and the
Cut^nMix framework RECONSTRUCTED from shen2022's abstract), plus a network trained alone.

Every method of a setting runs the same seeds (a seed fixes the initialisation and the data order), so every
comparison is paired by seed. Gates: the online-KD premise, one per baseline: "Cut^nMix beats DML" is judged only
where DML beats a network trained alone at this scale (likewise KDCL and ONE).
"""

from __future__ import annotations

from pathlib import Path

from mixdistill.config import merge
from mixdistill.resources import reference
from mixdistill.studies.common import (by_seed, convergence_gate, load_study_config, plot_effects, plot_intervals,
                                       scale_config, timing_markdown)
from mixdistill.studies.grid import GridRun
from mixdistill.studies.stats import (adjust, all_hold, each_unit_markdown, holds, Finding, Gate, counted,
                                      finding_over_units, findings_markdown, fmt_mean_ci, p_text, gates_markdown,
                                      over_units, paired)

NAME = "shen2022"
# the online-KD methods whose gain over a network alone is the premise of "Cut^nMix beats X"
ONLINE_BASELINES = ("dml", "kdcl", "one", "okddip", "pcl")
ALONE = {"ce": "one network alone", "ce_cutmix": "one network alone, CutMix"}  # not online: no peers


def scale_methods(spec, sc) -> dict[str, dict]:
    """method key -> its grid entry: the study's methods and the scale's ``extra_methods``."""
    return {**spec["methods"], **{m: spec["extra_methods"][m] for m in sc.get("extra_methods", [])}}


def settings(sc) -> dict[str, dict]:
    """setting name -> {"config": overrides, "skip": methods it cannot run, "prefix": of its run keys}. A scale
    without ``settings`` has one, named by its ``setting`` (its dataset and network), with no key prefix."""
    if "settings" not in sc:
        return {sc["setting"]: {"config": {}, "skip": [], "prefix": ""}}
    return {name: {"config": {k: v for k, v in entry.items() if k != "skip"}, "skip": entry.get("skip", []),
                   "prefix": f"{name}/"} for name, entry in sc["settings"].items()}


def grid(scale: str, seeds: list[int], study_dir: Path, data_root: str | None) -> list[GridRun]:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    base = merge(sc["base"], {"data": {"root": data_root}, "train": {"progress": False}})
    runs = []
    for setting, entry in settings(sc).items():
        for method, extra in scale_methods(spec, sc).items():
            if method in entry["skip"]:
                continue
            extra = {k: v for k, v in extra.items() if k != "ablation"}
            tree = merge(merge(base, entry["config"]), extra)
            if sc.get("peers") and method not in ALONE:
                tree = merge(tree, {"method": {"peers": sc["peers"]}})
            if extra["method"]["name"] in sc:  # the scale's settings of that method (its ablations' too)
                tree = merge(tree, sc[extra["method"]["name"]])
            for seed in seeds:
                runs.append(GridRun(f"{entry['prefix']}{method}/seed{seed}", merge(tree, {"seed": seed}),
                                    labels={"method": method, "seed": seed, "setting": setting}))
    return runs


def report(rows: dict, study_dir: Path, scale: str, data_root: str | None = None) -> str:
    spec = load_study_config(NAME)
    sc = scale_config(spec, scale)
    ref = reference("online_benchmark")
    dataset = next(iter(rows.values()))["summary"]["dataset"]
    lines = [f"# shen2022 study ({scale} scale, {dataset})", "",
             "**cutnmix is a reconstruction of shen2022 (Mixed Sample Augmentation for Online Distillation) from "
             "its abstract only**; its loss and every choice are documented in `mixdistill/online/cutmix_online.py`. "
             "shen2022's own numbers were not available: the paper column is the PCL paper's table of the baselines "
             "(CIFAR), shown only at full scale.", ""]
    lines += timing_markdown(study_dir, rows)
    findings, gates, sections, parts = [], [], [], {}
    for setting, entry in settings(sc).items():
        part = {k: r for k, r in rows.items() if r["labels"].get("setting", setting) == setting}
        g, f, text, premise = _setting(spec, ref, setting, entry, part, study_dir, scale)
        gates += g
        findings += f
        sections += text
        parts[setting] = (g, f, premise)
    described = []
    if len(parts) > 1:  # the full scale's six: each claim judged over the settings, each setting's own described
        findings, gates, described = _over_settings(parts)
    adjust(findings)
    lines += gates_markdown(gates) + findings_markdown(findings) + each_unit_markdown(described, "setting") + sections
    plot_effects(findings, study_dir / "shen2022_effects.png", "shen2022 findings")
    lines += ["![effects](shen2022_effects.png)", ""]
    return "\n".join(lines).rstrip() + "\n"


def _setting(spec, ref, setting, entry, rows, study_dir, scale):
    """(gates, findings, report lines) of one setting."""
    all_methods = scale_methods(spec, scale_config(spec, scale))
    ablations = {m: e["ablation"] for m, e in all_methods.items() if "ablation" in e and m not in entry["skip"]}
    methods = [m for m in all_methods if m not in entry["skip"] and m not in ablations]

    def peer(method) -> dict[int, float]:  # seed -> mean peer accuracy (ce, ce_cutmix: the network alone)
        return by_seed(rows, "last_acc" if method in ALONE else "last_acc_mean_peer", method=method)

    if not rows:  # every run of this setting diverged or was not run (the report's first section lists them)
        return [], [], [f"## {setting}", "", "No run of this setting finished.", ""], {}
    first = next(iter(rows.values()))["summary"]
    alone = peer("ce")
    # the premise of "Cut^nMix beats X" is that X, an online-KD method, works here: it beats a network alone
    premise, premise_effects = {}, {}
    for m in (m for m in ONLINE_BASELINES if m in methods):
        e = premise_effects[m] = paired(peer(m), alone)
        premise[m] = Gate(f"{setting}: {m} beats a network alone", f"{m} mean peer − network alone > 0, paired "
                          f"p < 0.05", f"{e.text()}, {p_text(e.p)}",
                          holds(e.estimate > 0 and e.p < 0.05, e))
    converged = convergence_gate(rows, study_dir, method="ce")
    paper_row = dict(zip(ref["columns"], ref["rows"].get(setting, []))) if scale == "full" else {}
    findings = [Finding(f"{setting}: Cut^nMix (reconstructed) mean peer beats {m}", paired(peer("cutnmix"), peer(m)),
                        +1, "beats it (shen2022 on CIFAR; its numbers were not available)",
                        gates=[gate, converged])
                for m, gate in premise.items() if "cutnmix" in methods]
    if "online_cutmix" in methods and "dml" in premise:
        findings.append(Finding(f"{setting}: online CutMix mean peer beats DML", paired(peer("online_cutmix"),
                                                                                        peer("dml")),
                                +1, "a mixed-sample online method beats DML (shen2022's premise, CIFAR)",
                                gates=[premise["dml"], converged]))
    lines = [f"## {setting}", "",
             f"Dataset: {first['dataset']}, {first['student']} peers, {counted(first['epochs'], 'epoch')}. Top-1 %, "
             f"last epoch, mean [95% CI] over {counted(len(alone), 'seed')}."
             + (f" Not run here: {', '.join(entry['skip'])} (no branch form for this network)." if entry["skip"]
                else ""), "",
             "| method | mean peer | best peer | ensemble | paired vs alone (mean peer) |" + (" PCL table |" if paper_row else ""),
             "|---|---|---|---|---|" + ("---|" if paper_row else "")]
    for m in methods:
        if m in ALONE:
            e = paired(peer(m), alone)
            versus = "-" if m == "ce" else f"{e.text()}"
            lines.append(f"| {m} ({ALONE[m]}) | {fmt_mean_ci(list(peer(m).values()))} | - | - | {versus} |"
                         + (" - |" if paper_row else ""))
            continue
        e = paired(peer(m), alone)
        lines.append(f"| {m} | {fmt_mean_ci(list(peer(m).values()))} | "
                     f"{fmt_mean_ci(list(by_seed(rows, 'last_acc_best_peer', method=m).values()))} | "
                     f"{fmt_mean_ci(list(by_seed(rows, 'last_acc_ensemble', method=m).values()))} | "
                     f"{e.text()} |" + (f" {paper_row.get(m, '-')} |" if paper_row else ""))
    mixed = [m for m in ("online_cutmix", "cutnmix") if m in methods]
    if "ce_cutmix" in methods and mixed:
        lines += ["", "Against one network alone trained with CutMix, the augmentation without the online part "
                      "(descriptive, paired by seed): "
                  + "; ".join(f"{m} {e.text()}"
                              for m, e in ((m, paired(peer(m), peer("ce_cutmix"))) for m in mixed)) + "."]
    if ablations and "cutnmix" in methods:
        lines += ["", "Ablations of the reconstruction (one choice changed each; descriptive, not among the findings):",
                  "", "| variant | changed | mean peer | paired vs cutnmix [95% CI] |", "|---|---|---|---|"]
        for m, what in ablations.items():
            e = paired(peer(m), peer("cutnmix"))
            lines.append(f"| {m} | {what} | {fmt_mean_ci(list(peer(m).values()))} | "
                         f"{e.text()} |")
    figure = f"shen2022_{setting}.png"
    plot_intervals({m: list(peer(m).values()) for m in methods}, study_dir / figure,
                   f"{setting}: mean peer accuracy (ce: the network alone)")
    lines += ["", f"![{setting}]({figure})", ""]
    return [*premise.values(), converged], findings, lines, premise_effects


def _over_settings(parts: dict) -> tuple[list[Finding], list[Gate], list[Finding]]:
    """(findings, gates, described) where a scale has several settings: each claim one finding over the settings
    that ran it (a one-sample t of each setting's mean paired difference, :func:`over_units`), resting on "X beats
    a network alone over the settings" (the mean) and on every setting's networks alone having converged; each
    setting's premise effects and findings are described, not judged. ``parts``: setting -> (its gates: the
    premise gates then its convergence gate, its findings, its premise effects)."""
    for setting, (gates, _, _) in parts.items():
        if gates:  # its convergence gate, named by its setting among the others'
            gates[-1].name = f"{setting}: {gates[-1].name}"
    converged = all_hold("converged (method=ce) on every setting", [g[-1] for g, _, _ in parts.values() if g])
    premise: dict[str, Gate] = {}
    for m in dict.fromkeys(m for _, _, effects in parts.values() for m in effects):
        e = over_units({s: effects[m] for s, (_, _, effects) in parts.items() if m in effects}, "setting")
        premise[m] = Gate(f"{m} beats a network alone over {counted(e.n, 'setting')}",
                          f"mean over the settings of {m} mean peer − network alone > 0, p < 0.05 (one-sample t over "
                          "the settings)", f"{e.text()}, {p_text(e.p)}", holds(e.estimate > 0 and e.p < 0.05, e))
    pooled = {}  # id of a setting's gate -> its gate over the settings
    for gates, _, effects in parts.values():
        pooled.update({id(g): premise[m] for g, m in zip(gates, effects)})
        if gates:
            pooled[id(gates[-1])] = converged
    claims: dict[str, dict[str, Finding]] = {}  # claim (without its setting) -> setting -> its finding
    for setting, (_, findings, _) in parts.items():
        for f in findings:
            claims.setdefault(f.claim.split(": ", 1)[1], {})[setting] = f
    out = [finding_over_units(claim, own, pooled, "setting") for claim, own in claims.items()]
    described = [Finding(f"{s}: {m} beats a network alone", e, +1, "")
                 for s, (_, _, effects) in parts.items() for m, e in effects.items()]
    described += [f for own in claims.values() for f in own.values()]
    gates = [g for gates, _, _ in parts.values() for g in gates[-1:]] + list(premise.values()) + [converged]
    return out, gates, described
