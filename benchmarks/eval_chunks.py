"""Evaluation on a CPU: the trainer's ``evaluate`` over a test set in loader batches of 1,000 images, each batch
forwarded whole vs in chunks of ``models.inference.CPU_CHUNK`` (the default), interleaved rounds, wall seconds
(median), and how far apart their metrics came: top-1 and top-5 the same or not, the loss's relative difference.

    PYTHONPATH=src python benchmarks/eval_chunks.py [--threads 1,2] [--nets cnn5_w8,cnn5_w16,...]

Nets get random weights and BatchNorm statistics; images are random uint8 of the shape each net is usually trained
on (``models.native_input``: Fashion-MNIST's for the cnn5 nets, CIFAR's for the rest, which get a fifth as many),
fp32, channels_last, as the trainer evaluates on an AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mixdistill.data import DeviceLoader  # noqa: E402
from mixdistill.engine.evaluate import evaluate  # noqa: E402
from mixdistill.engine.runtime import resolve_runtime  # noqa: E402
from mixdistill.models import create_model, native_input  # noqa: E402
from mixdistill.machine import cpu_name  # noqa: E402
from mixdistill.models import inference  # noqa: E402

DEFAULT_NETS = "cnn5_w8,cnn5_w16,cnn5_w32,lenet5,alexnet_cifar_w025,resnet20,resnet8x4"


def time_net(name: str, images: int, batch: int, rounds: int) -> dict:
    num_classes, channels, size = native_input(name)
    torch.manual_seed(0)
    net = create_model(name, num_classes=num_classes, in_channels=channels).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    net = net.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, channels, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(0, num_classes, (images,), generator=g)
    loader = DeviceLoader(x, y, batch_size=batch, mean=(0.5,) * channels, std=(0.25,) * channels, shuffle=False,
                          drop_last=False, channels_last=True)
    runtime = resolve_runtime("cpu", "fp32", True, False)
    chunk = inference.CPU_CHUNK
    seconds, metrics = {"whole": [], "chunks": []}, {}
    try:
        evaluate(net, loader, runtime)  # warm-up
        for _ in range(rounds):
            for way, size_ in (("whole", batch), ("chunks", chunk)):
                inference.CPU_CHUNK = size_
                t0 = time.perf_counter()
                metrics[way] = evaluate(net, loader, runtime)
                seconds[way].append(time.perf_counter() - t0)
    finally:
        inference.CPU_CHUNK = chunk
    whole, chunks = (statistics.median(seconds[w]) for w in ("whole", "chunks"))
    return {"net": name, "images": images, "whole_s": whole, "chunks_s": chunks, "ratio": whole / chunks,
            "same_top1_top5": all(metrics["whole"][k] == metrics["chunks"][k] for k in ("acc", "top5")),
            "loss_rel_diff": abs(metrics["whole"]["loss"] - metrics["chunks"]["loss"]) / abs(metrics["whole"]["loss"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nets", default=DEFAULT_NETS)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--images", type=int, default=5000, help="test images (CIFAR-shaped nets: a fifth of them)")
    p.add_argument("--batch-size", type=int, default=1000, help="loader batch (the studies' eval_batch_size)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"{cpu_name()}, {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}; "
          f"loader batch {args.batch_size}, chunks of {inference.CPU_CHUNK}, median of {args.rounds} rounds")
    print(f"{'threads':>7s} {'net':20s} {'images':>6s} {'whole s':>8s} {'chunks s':>8s} {'ratio':>6s} "
          f"{'same top-1/5':>12s} {'loss rel. diff':>14s}")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for name in args.nets.split(","):
            images = args.images if native_input(name)[2] <= 28 else max(1, args.images // 5)
            r = time_net(name, images, args.batch_size, args.rounds)
            print(f"{threads:7d} {name:20s} {r['images']:6d} {r['whole_s']:8.3f} {r['chunks_s']:8.3f} "
                  f"{r['ratio']:6.2f} {'yes' if r['same_top1_top5'] else 'NO':>12s} {r['loss_rel_diff']:14.1e}",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
