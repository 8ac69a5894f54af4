"""Time training-mode BatchNorm on channels-last bf16 maps with few channels, ATen's kernel against
``engine/small_bn.c`` (the trainer's since 2026-12-02), and check the two agree bit for bit.

Layers: the BatchNorms of the CPU-scale studies' cnn5_w8 (8 channels at 28x28, 16 at 14x14), cnn5_w16 (16 at
28x28) and wrn_16_2 (16 at 32x32), batch 128, bf16 input and fp32 parameters as under autocast. For each, with 1
and with 2 threads, each kernel in turn for ``--rounds`` rounds: the forward (statistics, running statistics,
normalisation) and the backward (all three gradients); the ratio is ATen / ours of the medians. Before timing,
both must give equal outputs, running statistics and gradients, or it stops.

``--kd-runs N`` then times whole runs: N rounds of the bench's grid-case run (KD cnn5_w16 -> cnn5_w8, 3,000
synthetic Fashion-MNIST-shaped images, batch 128, 45 epochs = 1,035 steps, evaluated at the end; the grid's
defaults with ``--kd-threads`` threads, eager: ``train.compile=false``, as a compiled module uses torch's own
BatchNorm, and so no compile probe lands in a timed run), with the kernel and with ``MIXDISTILL_SMALL_BN=0`` in
turn (``bench.grid.time_kd_run_with_and_without``), and checks that both end with the same test accuracy and test
loss.

    PYTHONPATH=src python benchmarks/small_bn.py [--rounds 40] [--kd-runs 0] [--kd-epochs 45] [--kd-threads 1]
"""

from __future__ import annotations

import torch

from mixdistill.bench.kernels import arguments, begin, median_ms, print_whole_runs
from mixdistill.engine import small_bn

LAYERS = (("cnn5_w8 stage 1", 8, 28), ("cnn5_w8 stage 2", 16, 14), ("cnn5_w16 stage 1", 16, 28),
          ("wrn_16_2 stage 1", 16, 32))


def _layer(channels: int, size: int, batch: int):
    g = torch.Generator().manual_seed(channels * size)
    shape = (batch, channels, size, size)
    x = torch.randn(shape, generator=g).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    dy = (torch.randn(shape, generator=g) * 1e-2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(channels, generator=g), torch.randn(channels, generator=g)
    return x, dy, w, b, torch.zeros(channels), torch.ones(channels)


def _aten_forward(x, w, b, rm, rv):
    return torch.ops.aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)


def _aten_backward(dy, x, w, mean, invstd):
    return torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, mean, invstd, True, 1e-5,
                                                     [True, True, True])


def _ours_forward(x, w, b, rm, rv):
    small_bn._checked.update({("forward", x.shape[1], torch.get_num_threads())})  # time the kernel, not the check
    return small_bn._forward(x, w, b, rm, rv, 0.1, 1e-5)


def _ours_backward(dy, x, w, mean, invstd):
    small_bn._checked.update({("backward", x.shape[1], torch.get_num_threads())})
    return small_bn._backward(dy, x, w, mean, invstd, 1e-5, [True, True, True])


def _agree(x, dy, w, b, rm, rv) -> bool:
    stats_a, stats_o = (rm.clone(), rv.clone()), (rm.clone(), rv.clone())
    fa, fo = _aten_forward(x, w, b, *stats_a), _ours_forward(x, w, b, *stats_o)
    ba, bo = _aten_backward(dy, x, w, fa[1], fa[2]), _ours_backward(dy, x, w, fa[1], fa[2])
    return all(torch.equal(p, q) for p, q in zip([*fa, *stats_a, *ba], [*fo, *stats_o, *bo], strict=True))


def main(argv=None) -> None:
    args = arguments(__doc__.splitlines()[0], argv, layer_threads=False)
    begin(small_bn.status(), "small-channel BatchNorm", args)
    print("| layer | threads | forward: ATen / ours (ms) | x | backward: ATen / ours (ms) | x |")
    print("|---|---|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for name, channels, size in LAYERS:
            x, dy, w, b, rm, rv = _layer(channels, size, args.batch_size)
            if not _agree(x, dy, w, b, rm, rv):
                raise SystemExit(f"{name}, {threads} thread(s): the kernels differ; not timing them")
            _, mean, invstd = _aten_forward(x, w, b, rm.clone(), rv.clone())
            runs = {"fwd_aten": lambda: _aten_forward(x, w, b, rm, rv),
                    "fwd_ours": lambda: _ours_forward(x, w, b, rm, rv),
                    "bwd_aten": lambda: _aten_backward(dy, x, w, mean, invstd),
                    "bwd_ours": lambda: _ours_backward(dy, x, w, mean, invstd)}
            ms = median_ms(runs, args.rounds)
            print(f"| {name} ({channels} x {size}x{size}) | {threads} | {ms['fwd_aten']:.3f} / {ms['fwd_ours']:.3f} | "
                  f"{ms['fwd_aten'] / ms['fwd_ours']:.2f} | {ms['bwd_aten']:.3f} / {ms['bwd_ours']:.3f} | "
                  f"{ms['bwd_aten'] / ms['bwd_ours']:.2f} |", flush=True)
    print_whole_runs(small_bn.SWITCH, args)

if __name__ == "__main__":
    main()
