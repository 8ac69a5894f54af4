"""What the C kernels' benchmark scripts (``benchmarks/small_bn.py``, ``small_pool.py``, ``small_conv.py``) share:
their arguments, the alternating timing of ATen's kernel against ours, and the timing of whole KD runs with the
kernel and without."""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

from mixdistill.machine import cpu_name


def arguments(description: str, argv=None, layer_threads: bool = True) -> argparse.Namespace:
    """``--rounds``, ``--batch-size``, ``--threads`` (of the layer timings; only with ``layer_threads``), ``--kd-runs``,
    ``--kd-epochs``, ``--kd-threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=128)
    if layer_threads:
        p.add_argument("--threads", type=int, default=1, help="threads of the layer timings")
    p.add_argument("--kd-runs", type=int, default=0, help="rounds of whole KD runs, with the kernel and without")
    p.add_argument("--kd-epochs", type=int, default=45, help="epochs of each KD run (23 steps each)")
    p.add_argument("--kd-threads", type=int, default=1, help="threads of each KD run")
    return p.parse_args(argv)


def begin(status: str, what: str, args: argparse.Namespace) -> None:
    """Stop unless the kernel is on (``status``: its ``status()``; ``what``: its name); set the layer timings' threads
    where the script has ``--threads``; print the line that says what is timed."""
    if status != "on":
        raise SystemExit(f"{what} is {status}: nothing to time")
    threads = getattr(args, "threads", None)
    if threads:
        torch.set_num_threads(threads)
    print(f"{cpu_name()}, ATen {torch.backends.cpu.get_cpu_capability()}, bf16 channels_last, batch "
          f"{args.batch_size}, " + (f"{threads} thread(s), " if threads else "") + f"{args.rounds} rounds")


def median_ms(runs: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Each of ``runs`` twice to warm up, then ``rounds`` rounds of each in turn: the median milliseconds of each."""
    for fn in runs.values():
        fn(), fn()
    seconds: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            started = time.perf_counter()
            fn()
            seconds[k].append(time.perf_counter() - started)
    return {k: 1e3 * statistics.median(v) for k, v in seconds.items()}


def print_whole_runs(switch: str, args: argparse.Namespace) -> None:
    """With ``--kd-runs``: the line of :func:`bench.grid.time_kd_run_with_and_without` for the kernel's ``switch``."""
    if args.kd_runs:
        from mixdistill.bench.grid import time_kd_run_with_and_without

        print("\n" + time_kd_run_with_and_without(switch, args.kd_runs, args.kd_epochs, args.kd_threads))
