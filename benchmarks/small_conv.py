"""Time the grey-scale first-layer convolution (3x3, one input channel, channels-last bf16), ATen's (oneDNN) against
``engine/small_conv.c`` (the trainer's since 2026-12-03), and check the two agree bit for bit.

Layers: the first convolution of the CPU-scale studies' cnn5_w8 (8 channels, no bias: the student's), of a folded
cnn5_w16 (16 channels with a bias: the teacher's, as the fast teacher folds it) and of cnn5_w32 (32 channels), on
128 28x28 images. Each kernel in turn for ``--rounds`` rounds; the ratio is ATen / ours of the medians. Before timing,
both must give bitwise-equal outputs on the layer's input and on the probe (``small_conv.probe``), or it stops.

``--kd-runs N`` then times whole runs: N rounds of the bench's grid-case run (KD cnn5_w16 -> cnn5_w8, 1,035 steps,
``--kd-threads`` threads, eager) with the kernel and with ``MIXDISTILL_SMALL_CONV=0`` in turn
(``bench.grid.time_kd_run_with_and_without``), and checks that both end with the same test accuracy and test loss.

    PYTHONPATH=src python benchmarks/small_conv.py [--rounds 40] [--threads 1] [--kd-runs 0] [--kd-epochs 45] \\
        [--kd-threads 1]
"""

from __future__ import annotations

import torch

from mixdistill.bench.kernels import arguments, begin, median_ms, print_whole_runs
from mixdistill.engine import small_conv

LAYERS = (("cnn5_w8 conv1", 8, False), ("cnn5_w16 conv1, folded", 16, True), ("cnn5_w32 conv1", 32, False))


def _layer(channels: int, bias: bool, batch: int):
    g = torch.Generator().manual_seed(channels)
    x = torch.randn(batch, 1, 28, 28, generator=g).to(torch.bfloat16)
    w = torch.empty((channels, 1, 3, 3), dtype=torch.bfloat16, memory_format=torch.channels_last)
    w.copy_(torch.randn(channels, 1, 3, 3, generator=g) * 0.3)
    return x, w, (torch.randn(channels, generator=g).to(torch.bfloat16) if bias else None)


def main(argv=None) -> None:
    args = arguments(__doc__.splitlines()[0], argv)
    begin(small_conv.status(), "the first-layer conv kernel", args)
    print("| layer | forward: ATen / ours (ms) | x |")
    print("|---|---|---|")
    for name, channels, bias in LAYERS:
        x, w, b = _layer(channels, bias, args.batch_size)
        if not all(small_conv._same(small_conv._aten(*t), small_conv._kernel(*t))
                   for t in ((x, w, b), small_conv.probe(x, w, b))):
            raise SystemExit(f"{name}: the kernels differ; not timing them")
        ms = median_ms({"aten": lambda: small_conv._aten(x, w, b), "ours": lambda: small_conv._kernel(x, w, b)},
                       args.rounds)
        print(f"| {name} ({channels} channels{', bias' if bias else ''}) | {ms['aten']:.3f} / {ms['ours']:.3f} | "
              f"{ms['aten'] / ms['ours']:.2f} |", flush=True)
    print_whole_runs(small_conv.SWITCH, args)

if __name__ == "__main__":
    main()
