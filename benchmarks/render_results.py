"""Re-render every ``docs/results/bench_<tag>.json`` written by ``mixdistill bench`` into its Markdown table, and
write ``docs/results/bench_summary.md``: the tables the README shows (one per device measured, plus what was
not measured).

    python benchmarks/render_results.py [docs/results]

Ratios are recomputed from the stored per-round rates (median over rounds of each round's ratio to the
reference timed in the same round), so files written by an older version of the bench read the same way.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixdistill.bench import pick_cost, pick_work, work_lines  # noqa: E402
from mixdistill.bench.grid import grid_markdown  # noqa: E402

SKIP = ("bench_accuracy", "bench_profile", "bench_cpu_components")


def normalise(report: dict) -> dict:
    for r in report["results"]:
        ref = r["loops"]["reference"]["rounds_images_per_s"]
        r["ratio"], r["ratio_range"], r["ratio_of_medians"] = {}, {}, {}
        for k, v in r["loops"].items():
            if k == "reference" or not v["rounds_images_per_s"] or not ref:
                continue
            per_round = [a / b for a, b in zip(v["rounds_images_per_s"], ref)]
            r["ratio"][k] = statistics.median(per_round)
            r["ratio_range"][k] = [min(per_round), max(per_round)]
            r["ratio_of_medians"][k] = v["images_per_s"] / r["loops"]["reference"]["images_per_s"]
    report["pick_cost"] = pick_cost(report["results"])
    report["pick_work"] = pick_work(report["results"])
    return report


def load_all(folder: Path) -> dict[str, dict]:
    reports = {}
    for path in sorted(folder.glob("bench_*.json")):
        if path.stem.startswith(SKIP) or path.stem == "bench_summary":
            continue
        report = normalise(json.loads(path.read_text()))  # in memory only: the measured files stay as written
        reports[path.stem.removeprefix("bench_")] = report
    return reports


def _rate(loop):
    if loop and loop.get("error"):
        return "failed"
    if not loop or not loop.get("rounds_images_per_s"):
        return "-"
    v = loop["images_per_s"]
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}"


def _x(r, k):
    if k not in r.get("ratio", {}):
        return "-"
    lo, hi = r["ratio_range"][k]
    return f"**{r['ratio'][k]:.2f}x** ({lo:.2f}–{hi:.2f})"


def table(results: list[dict], variants: list[str]) -> list[str]:
    head = "| case | teacher → student | reference img/s | " + " | ".join(f"{v} img/s | {v} x" for v in variants) + " |"
    lines = [head, "|" + "---|" * (3 + 2 * len(variants))]
    for r in results:
        pair = f"{r['teacher']} → {r['student']}" if r["teacher"] else f"3 × {r['student']} (DML)"
        cells = [r["label"], pair, _rate(r["loops"].get("reference"))]
        for v in variants:
            cells += [_rate(r["loops"].get(v)), _x(r, v)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    folder = Path((argv or sys.argv[1:] or ["docs/results"])[0])
    reports = load_all(folder)
    out = ["# Training-step throughput: mixdistill vs a standard reference loop", "",
           "Produced by `mixdistill bench` (`python -m mixdistill.bench`); every number is measured in one process, "
           "the reference loop (per-sample PIL transforms in a DataLoader, fp32, NCHW, teacher under no_grad, "
           "0.1 CE + 0.9 KL_4, SGD) and the project's step interleaved round by round on the same synthetic "
           "CIFAR-100-shaped data, model pair and batch size (64). `x` = median over rounds of the ratio to the "
           "reference timed in the same round (range over rounds in brackets). Loops today: **project** = the "
           "`Trainer` with its defaults, which include the fast teacher (`train.fast_teacher`: Conv+BN folded, "
           "channels_last, compiled with the student); **eager_teacher** = `train.fast_teacher=false`; **int8** = "
           "`train.int8_teacher=true` (CPU); **cuda_graphs** = `train.cuda_graphs=true` (student compiled with "
           "`mode=\"reduce-overhead\"`, and since commit 06e6684 also the fast teacher as a CUDA graph and fused SGD, "
           "first measured in `cuda_graphs_h200`); **cuda_graphs_all** = the bench-only variant that added those two "
           "before the trainer did (in `cuda_h200`, the H200 profile and every earlier file **cuda_graphs** is the "
           "student's graphs alone). Results measured BEFORE the fast teacher was wired into the trainer use the old names: "
           "there **project** = the trainer without the fast teacher (today's eager_teacher), **fast** = today's "
           "project, **fast_int8** = int8, **fast_graphs** = cuda_graphs, **fast_graphs_all** = cuda_graphs_all. "
           "Teachers have random weights (speed does not depend on them).", ""]
    for tag, rep in reports.items():
        if tag.startswith("quick"):
            continue
        m = rep["machine"]
        dev = m.get("gpu") or f"{m['cpu']}, {m['cpu_count']} cores, {m['cpu_capability']}, native bf16: {m['cpu_native_bf16']}"
        variants = [v for v in ("project", "eager_teacher", "int8", "compile", "int8_compile", "cuda_graphs",
                                "cuda_graphs_all",
                                "fast", "fast_int8", "fast_graphs", "fast_graphs_all")
                    if any(v in r["loops"] for r in rep["results"])]
        out += [f"## `{tag}`: {dev}", ""]
        if not rep["results"]:  # a grid-only report
            out += [f"torch {m['torch']}; settings: precision={rep['settings']['precision']}."]
        else:
            out += [f"torch {m['torch']}; {rep['settings']['steps']} steps × {rep['settings']['rounds']} rounds after "
                    f"{rep['settings']['warmup']} warm-up steps; reference DataLoader workers "
                    f"{m['reference_num_workers']}; project runtime: {rep.get('project_runtime')}; "
                    f"settings: precision={rep['settings']['precision']}, "
                    f"compile={rep['settings']['compile']}, channels_last={rep['settings']['channels_last']}.", ""]
            out += table(rep["results"], variants)
        for nm in rep.get("not_measured", []):
            out.append(f"| {nm['case']} | {nm['pair']} | not measured ({nm['why']}) |" + " |" * (2 * len(variants)))
        failed = [f"{r['label']} {r['pair']} {k}: {loop['error']}" for r in rep["results"]
                  for k, loop in r["loops"].items() if loop.get("error")]
        if failed:
            out += ["", "Failed: " + "; ".join(failed)]
        if rep.get("pick_cost"):
            out += ["", "KD+CutMixPick step time relative to: " + "; ".join(
                f"{p}: " + ", ".join(f"{k} {v:.2f}x" for k, v in d.items()) for p, d in rep["pick_cost"].items())]
        out += work_lines(rep, variants)
        if rep.get("sync_check", {}).get("error"):
            out += ["", f"Host synchronisations in the project's hot loop: not counted ({rep['sync_check']['error']})."]
        elif rep.get("sync_check"):
            out += ["", f"Host synchronisations in the project's hot loop (cuda sync debug mode, "
                        f"{rep['sync_check']['steps']} KD steps): {rep['sync_check']['synchronizations']}."]
        if rep.get("grid"):
            out += [line.replace("### ", "#### ") for line in grid_markdown(rep["grid"])]
        out.append("")
    for prof in sorted(folder.glob("bench_profile_cuda*.json")):
        p = json.loads(prof.read_text())
        out += [f"## Where the time goes: {p['device']}, {p['case']} {p['pair']}, batch {p['batch_size']} "
                f"(torch.profiler, {p['steps']} steps)", "",
                "| loop | wall ms/step | GPU kernel ms/step | kernel launches/step | CUDA graph launches/step |",
                "|---|---|---|---|---|"]
        for k, r in p["loops"].items():
            if "error" in r:
                out.append(f"| {k} | failed: {r['error']} | | | |")
            else:
                out.append(f"| {k} | {r['wall_ms']:.2f} | {r['kernel_ms']:.2f} | {r['launches']:.0f} | "
                           f"{r['graph_launches']:.0f} |")
        out.append("")
    for acc in sorted(folder.glob("bench_accuracy*.md")):
        out += [acc.read_text().replace("### ", "## "), ""]
    for parts in sorted(folder.glob("bench_cpu_components_t*.md")):
        out += [parts.read_text().replace("### ", "## "), ""]
    out += ["## Not measured", "",
            "* The AVX2-only CPU's full bench is `cpu_avx2`; `cpu` is older (before channels_last became the CPU "
            "default).",
            "* Any other GPU than the H100 and H200 above; multi-GPU.", ""]
    (folder / "bench_summary.md").write_text("\n".join(out))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
