"""Time the 2x2 max-pool on channels-last bf16 maps, ATen's kernel against ``engine/small_pool.c`` (the trainer's
since 2026-12-03), and check the two agree bit for bit.

Layers: the pools of the CPU-scale studies' cnn5_w8 (8 channels at 28x28, 16 at 14x14, 32 at 7x7) and cnn5_w16
(16 at 28x28, 32 at 14x14, 64 at 7x7), batch 128. For each, each kernel in turn for ``--rounds`` rounds: the
no-grad forward (a teacher's), the forward a student trains through (ATen's with its indices) and the backward. The
ratio is ATen / ours of the medians. Before timing, both must give bitwise-equal outputs and gradients, or it stops.

``--kd-runs N`` then times whole runs: N rounds of the bench's grid-case run (KD cnn5_w16 -> cnn5_w8, 1,035 steps,
``--kd-threads`` threads, eager) with the kernel and with ``MIXDISTILL_SMALL_POOL=0`` in turn
(``bench.grid.time_kd_run_with_and_without``), and checks that both end with the same test accuracy and test loss.

    PYTHONPATH=src python benchmarks/small_pool.py [--rounds 40] [--threads 1] [--kd-runs 0] [--kd-epochs 45] \\
        [--kd-threads 1]
"""

from __future__ import annotations

import torch

from mixdistill.bench.kernels import arguments, begin, median_ms, print_whole_runs
from mixdistill.engine import small_pool

LAYERS = (("cnn5_w8 pool 1", 8, 28), ("cnn5_w8 pool 2", 16, 14), ("cnn5_w8 pool 3", 32, 7),
          ("cnn5_w16 pool 1", 16, 28), ("cnn5_w16 pool 2", 32, 14), ("cnn5_w16 pool 3", 64, 7))


def _layer(channels: int, size: int, batch: int):
    g = torch.Generator().manual_seed(channels * size)
    shape = (batch, channels, size, size)
    x = torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    dy = torch.randn((batch, channels, size // 2, size // 2), generator=g).to(torch.bfloat16)
    return x, dy.contiguous(memory_format=torch.channels_last)


def main(argv=None) -> None:
    args = arguments(__doc__.splitlines()[0], argv)
    begin(small_pool.status(), "the 2x2 max-pool kernel", args)
    print("| layer | no-grad forward: ATen / ours (ms) | x | training forward: ATen / ours | x | "
          "backward: ATen / ours | x |")
    print("|---|---|---|---|---|---|---|")
    for name, channels, size in LAYERS:
        x, dy = _layer(channels, size, args.batch_size)
        y, indices = small_pool._aten(x)
        small_pool._checked.update({("forward", channels), ("backward", channels)})  # the kernel, not its check
        if not (small_pool._same_bits(y, small_pool._forward(x))
                and small_pool._same_bits(small_pool._aten_backward(dy, x), small_pool._backward(dy, x))):
            raise SystemExit(f"{name}: the kernels differ; not timing them")
        runs = {"nograd_aten": lambda: torch.ops.aten.max_pool2d(x, [2, 2], [2, 2]),
                "nograd_ours": lambda: small_pool._forward(x),
                "train_aten": lambda: small_pool._aten(x),
                "train_ours": lambda: small_pool._forward(x),
                "bwd_aten": lambda: torch.ops.aten.max_pool2d_with_indices_backward(
                    dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices),
                "bwd_ours": lambda: small_pool._backward(dy, x)}
        ms = median_ms(runs, args.rounds)
        print(f"| {name} ({channels} x {size}x{size}) | " + " | ".join(
            f"{ms[k + '_aten']:.3f} / {ms[k + '_ours']:.3f} | {ms[k + '_aten'] / ms[k + '_ours']:.2f}"
            for k in ("nograd", "train", "bwd")) + " |", flush=True)
    print_whole_runs(small_pool.SWITCH, args)

if __name__ == "__main__":
    main()
