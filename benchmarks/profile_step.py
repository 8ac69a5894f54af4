"""Where a training step's time goes: wall time per step, device kernel time per step and kernel launches
per step, for the reference loop and the project's step variants (``mixdistill.bench`` loops), under
``torch.profiler``. A step whose wall time is far above its kernel time is bound by the host (Python and
kernel launches), not by the GPU.

    PYTHONPATH=src python benchmarks/profile_step.py --device cuda --variants project,eager_teacher,cuda_graphs

Writes ``profile_<device>.json`` (and prints a table) into ``--out``. The profiled project steps are the
trainer's public ``Trainer.step`` fed by its ``DeviceLoader`` (the per-step metric bookkeeping of ``train_epoch`` is
left out); the reference steps are ``ReferenceLoop.step`` (DataLoader included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixdistill.bench import steps as bench  # noqa: E402
from mixdistill.engine.runtime import resolve_device  # noqa: E402
from mixdistill.machine import available_cpus, cpu_name  # noqa: E402


def profile_loop(step_fn, steps: int, device: torch.device) -> dict:
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    bench._sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn()
    bench._sync(device)
    wall = (time.perf_counter() - t0) / steps
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step_fn()
        bench._sync(device)
    avg = prof.key_averages()
    kernel_us = sum(e.self_device_time_total for e in avg if getattr(e, "self_device_time_total", 0)) / steps
    launches = sum(e.count for e in avg if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                       "cuLaunchKernelEx")) / steps
    graphs = sum(e.count for e in avg if e.key == "cudaGraphLaunch") / steps
    top = sorted(avg, key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
    return {"wall_ms": wall * 1e3, "kernel_ms": kernel_us / 1e3, "launches": launches, "graph_launches": graphs,
            "top_self_cpu_ms": [(e.key, round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in top]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--case", default="kd")
    p.add_argument("--pair", default="resnet32x4-resnet8x4")
    p.add_argument("--variants", default="project,eager_teacher,cuda_graphs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                   help="the project loops' train.compile")
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    device = resolve_device(args.device, "--device")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    bargs = argparse.Namespace(precision="auto", compile=args.compile, channels_last="auto", seed=0, quick=False,
                               batch_size=args.batch_size)
    teacher_arch, student_arch = bench.PAIRS[args.pair]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n = max(args.steps, args.warmup) * args.batch_size * 2
        bench.write_bench_data(tmp / "data", n_train=n, n_test=500)
        ckpt = bench.make_teacher_checkpoint(teacher_arch, tmp / "t.pt", 0)
        loader = torch.utils.data.DataLoader(bench.reference_dataset(tmp / "data"), batch_size=args.batch_size,
                                             shuffle=True, drop_last=True, num_workers=available_cpus(),
                                             persistent_workers=True)
        ref = bench.ReferenceLoop(args.case, teacher_arch, student_arch, loader, device, 0)
        for _ in range(args.warmup):
            ref.step()
        rows["reference"] = profile_loop(ref.step, args.steps, device)
        del ref
        for v in args.variants.split(","):
            try:
                loop = bench.ProjectLoop(args.case, v, teacher_arch, student_arch, data_root=tmp / "data",
                                         teacher_ckpt=ckpt, run_root=tmp / "runs", batch_size=args.batch_size,
                                         device=str(device), args=bargs, seed=0)
                loop.warmup(args.warmup)
                rows[v] = profile_loop(_project_step(loop), args.steps, device)
            except Exception as e:
                rows[v] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
              "case": args.case, "pair": args.pair, "batch_size": args.batch_size, "steps": args.steps, "loops": rows}
    (out / f"profile_{device.type}.json").write_text(json.dumps(result, indent=2))
    print(f"{'loop':18s} {'wall ms/step':>12s} {'kernel ms/step':>14s} {'launches/step':>13s} {'graphs/step':>11s}")
    for k, r in rows.items():
        if "error" in r:
            print(f"{k:18s} {r['error']}")
        else:
            print(f"{k:18s} {r['wall_ms']:12.2f} {r['kernel_ms']:14.2f} {r['launches']:13.0f} {r['graph_launches']:11.0f}")
    for k, r in rows.items():
        if "top_self_cpu_ms" in r:
            print(k, "top self-CPU ms/step:", ", ".join(f"{a} {b}" for a, b in r["top_self_cpu_ms"][:8]))
    return 0


def _project_step(loop):
    tr = loop.trainer
    state = {"it": iter(tr.train_loader)}

    def step():
        try:
            x, y, idx = next(state["it"])
        except StopIteration:
            state["it"] = iter(tr.train_loader)
            x, y, idx = next(state["it"])
        tr.step(x, y, idx)

    return step


if __name__ == "__main__":
    raise SystemExit(main())
