"""One prepared CPU session: the speed and accuracy measurements for the CPU kind this machine is, so that a
session that draws a kind the committed results lack spends its time measuring, not setting up.

The project's CPU results depend on the kind of CPU (``docs/results/bench_cpu_*``): AVX2 only (bf16 emulated,
fp32 by default), AVX512-BF16 (native bf16) and AMX (native bf16 with tile units). This script names this
machine's kind and runs, tagged with it:

1. the bench (``mixdistill bench``, 5 rounds): KD, KD+CutMix, KD+CutMixPick, MIXSTD and DML on the two CRD pairs,
   the reference loop against the defaults, the eager teacher, the int8 teacher, compile and int8+compile,
   with the machine's measured peak (8.4 min on the 2-core AMX Xeon, about 25 on the AVX512-BF16 EPYC, 54 on the
   AVX2-only EPYC);
2. the grid case (``--cases grid``, 3 rounds): runs per hour of a study-scale grid, side by side against one
   at a time, and the ceiling of running side by side (8 min on the AMX Xeon, about 10 on the AVX512-BF16 EPYC, 25 on the AVX2-only
   EPYC);
3. the accuracy check (``benchmarks/accuracy_check.py``, 10 seeds): the fast loops reach the reference's
   accuracy (6 min on the AMX Xeon, about 10 on the AVX512-BF16 EPYC, 19 on the AVX2-only EPYC);
4. ``benchmarks/render_results.py``: the summary re-rendered with the new files.

    PYTHONPATH=src python benchmarks/cpu_session.py kind            # avx2 | avx512bf16 | amx
    PYTHONPATH=src python benchmarks/cpu_session.py plan            # the commands, not run
    PYTHONPATH=src python benchmarks/cpu_session.py run [--only bench,grid,accuracy,render]
    PYTHONPATH=src python benchmarks/cpu_session.py study wang2022  # a --scale cpu study's wall time

``study NAME`` times ``mixdistill study NAME --scale cpu`` from scratch into ``runs/studies_<kind>`` (the
60-minute budget of each CPU-scale study is set for the AVX2-only kind; wang2022 took 83.8 min there on 2026-12-02,
``docs/results/studies/wang2022_cpu_avx2/``). Each step's output is kept in
``runs/cpu_session_<kind>/<step>.log``; a step that fails is reported and the next one runs. Run it on a quiet
machine: the load average is printed before each step, and timings taken beside other jobs mean little.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from mixdistill.engine.runtime import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("bench", "grid", "accuracy", "render")


def cpu_kind() -> str:
    """``amx``, ``avx512bf16`` or ``avx2``: what decides the project's CPU defaults (bf16 only where native)."""
    if not cpu_has_native_bf16():
        return "avx2"
    return "amx" if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)() else "avx512bf16"


def commands(kind: str, out: str = "docs/results") -> dict[str, list[str]]:
    """Each step's command line, run from the repository root."""
    bench = [sys.executable, "-m", "mixdistill", "bench", "--device", "cpu", "--out", out, "--overwrite"]
    return {
        "bench": bench + ["--rounds", "5", "--variants", "project,eager_teacher,int8,compile,int8_compile",
                          "--cases", "kd,kd_cutmix,kd_cutmixpick,mixstd,dml", "--tag", f"cpu_{kind}"],
        "grid": bench + ["--cases", "grid", "--grid-rounds", "3", "--tag", f"cpu_{kind}_grid"],
        "accuracy": [sys.executable, "benchmarks/accuracy_check.py", "--variants", "reference,project,int8,compile",
                     "--seeds", "0,1,2,3,4,5,6,7,8,9", "--tag", kind, "--out", out],
        "render": [sys.executable, "benchmarks/render_results.py", out],
    }


def study_command(kind: str, name: str) -> list[str]:
    return [sys.executable, "-m", "mixdistill", "study", name, "--scale", "cpu",
            "--output-dir", f"runs/studies_{kind}"]


def _environment() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def run_step(name: str, cmd: list[str], log_dir: Path) -> int:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"== {name} (load average {load:.2f} on {os.cpu_count()} cores): {' '.join(cmd)}", flush=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(log_dir / f"{name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        for line in proc.stdout:
            sys.stdout.write(line)
            log.write(line)
        rc = proc.wait()
    print(f"== {name}: exit {rc} after {(time.perf_counter() - started) / 60:.1f} min", flush=True)
    return rc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    sub.add_parser("kind", help="print this machine's CPU kind")
    sub.add_parser("plan", help="print the commands of `run`")
    run = sub.add_parser("run", help="run the measurements")
    run.add_argument("--only", default=",".join(STEPS), help=f"steps to run, of {','.join(STEPS)}")
    study = sub.add_parser("study", help="time one CPU-scale study from scratch")
    study.add_argument("name")
    args = p.parse_args(argv)
    kind = cpu_kind()
    if args.action == "kind":
        print(kind)
        return 0
    if args.action == "plan":
        for name, cmd in commands(kind).items():
            print(f"{name}: {' '.join(cmd)}")
        return 0
    log_dir = ROOT / "runs" / f"cpu_session_{kind}"
    if args.action == "study":
        earlier = ROOT / "runs" / f"studies_{kind}" / f"{args.name}_cpu"
        if earlier.exists():  # the study would reuse its finished runs: the time would not be from scratch
            print(f"cpu_session: {earlier} exists; move it away to time {args.name} from scratch", file=sys.stderr)
            return 2
        return run_step(f"study_{args.name}", study_command(kind, args.name), log_dir)
    steps = [s for s in args.only.split(",") if s]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        p.error(f"unknown step {', '.join(unknown)} (steps: {', '.join(STEPS)})")
    failed = [name for name, cmd in commands(kind).items() if name in steps and run_step(name, cmd, log_dir) != 0]
    print(f"CPU kind {kind}: " + (f"failed: {', '.join(failed)}" if failed else "every step finished")
          + f"; logs in {log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
