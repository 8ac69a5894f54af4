"""Time the CPU-scale study networks with each max-pool before the ReLU that precedes it (the zoo's order since
2026-12-02, ``relu_after_pool = True``) against the textbook order (ReLU, then pool), and check the two agree
bit for bit.

For cnn5_w8, cnn5_w16, lenet5 and alexnet_cifar_w025 (1-channel 28x28 inputs, 10 classes), in this CPU's
default precision and layout (``resolve_runtime``: bf16 and channels_last where bf16 is native, fp32 otherwise;
``--precision`` overrides)
and 1 thread (a study grid's runs): a training step (forward, cross-entropy, backward) and a no-grad forward (a
frozen teacher's), each order in turn for ``--rounds`` rounds; the ratio is textbook / ours of the medians.
Before timing, one training step of each order must give bitwise-equal logits and gradients, or it stops.

``--kd-runs N`` then times whole runs: N rounds of the bench's grid-case run (KD cnn5_w16 -> cnn5_w8, 3,000
synthetic Fashion-MNIST-shaped images, batch 128, 45 epochs = 1,035 steps, evaluated at the end; the grid's
defaults with 1 thread, eager: under ``torch.compile`` both orders trace the textbook one) with each order in
turn (``bench.grid.time_kd_run_both_ways``), and checks that both orders end with the same test accuracy and loss.

    PYTHONPATH=src python benchmarks/relu_after_pool.py [--rounds 30] [--batch-size 128] [--threads 1] \
        [--precision auto] [--kd-runs 0] [--kd-epochs 45]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F

from mixdistill.engine.runtime import resolve_runtime
from mixdistill.machine import cpu_name
from mixdistill.models import cnn, create_model

NETS = ("cnn5_w8", "cnn5_w16", "lenet5", "alexnet_cifar_w025")


def _train_step(model, x, y, runtime):
    torch.manual_seed(0)  # AlexNet's dropout: the same masks for both orders
    with runtime.autocast():
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    grads = [p.grad for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return [logits, *grads]


def _forward(model, x, runtime):
    with torch.inference_mode(), runtime.autocast():
        return model(x)


def _seconds(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--kd-runs", type=int, default=0, help="rounds of whole KD runs, each order in turn")
    p.add_argument("--kd-epochs", type=int, default=45, help="epochs of each KD run (23 steps each)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    runtime = resolve_runtime("cpu", args.precision, "auto", False)
    layout = torch.channels_last if runtime.channels_last else torch.contiguous_format
    print(f"{cpu_name()}, {args.threads} thread(s), {runtime.precision}, "
          f"{'channels_last' if runtime.channels_last else 'NCHW'}, batch {args.batch_size}, {args.rounds} rounds")
    print("| network | train step: textbook / ours (ms) | x | no-grad forward: textbook / ours (ms) | x |")
    print("|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, 1, 28, 28, generator=g).contiguous(memory_format=layout)
    y = torch.randint(0, 10, (args.batch_size,), generator=g)
    for name in NETS:
        torch.manual_seed(0)
        ours = create_model(name, 10, 1).train().to(memory_format=layout)
        textbook = copy.deepcopy(ours)
        textbook.relu_after_pool = False
        if not all(torch.equal(a, b) for a, b in zip(_train_step(ours, x, y, runtime),
                                                     _train_step(textbook, x, y, runtime), strict=True)):
            raise SystemExit(f"{name}: the two orders differ; not timing them")
        times = {k: [] for k in ("train_textbook", "train_ours", "fwd_textbook", "fwd_ours")}
        for _ in range(2):  # warm-up
            for model in (textbook, ours):
                _train_step(model, x, y, runtime)
                _forward(model, x, runtime)
        for _ in range(args.rounds):
            times["train_textbook"].append(_seconds(lambda: _train_step(textbook, x, y, runtime)))
            times["train_ours"].append(_seconds(lambda: _train_step(ours, x, y, runtime)))
            times["fwd_textbook"].append(_seconds(lambda: _forward(textbook, x, runtime)))
            times["fwd_ours"].append(_seconds(lambda: _forward(ours, x, runtime)))
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"| {name} | {ms['train_textbook']:.2f} / {ms['train_ours']:.2f} | "
              f"{ms['train_textbook'] / ms['train_ours']:.2f} | {ms['fwd_textbook']:.2f} / {ms['fwd_ours']:.2f} | "
              f"{ms['fwd_textbook'] / ms['fwd_ours']:.2f} |", flush=True)

    if args.kd_runs:
        _kd_runs(args.kd_runs, args.kd_epochs, args.precision)


def _kd_runs(rounds: int, epochs: int, precision: str) -> None:
    from mixdistill.bench.grid import time_kd_run_both_ways

    def order(relu_after_pool: bool):
        return lambda: setattr(cnn.CNN5, "relu_after_pool", relu_after_pool)

    try:
        line = time_kd_run_both_ways({"textbook": order(False), "ours": order(True)}, rounds, epochs,
                                     precision=precision)
    finally:
        cnn.CNN5.relu_after_pool = True
    print("\n" + line)


if __name__ == "__main__":
    main()
