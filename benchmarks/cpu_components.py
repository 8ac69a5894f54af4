"""CPU cost of each part of a KD step, measured in CPU seconds (robust to other jobs time-slicing a shared
machine), one thread, best of several interleaved repeats:

* data: 64 images through the reference pipeline (PIL RandomCrop + Flip + ToTensor + Normalize, collate)
  vs the project's DeviceLoader batch (index, batched crop/flip, normalise);
* teacher forward (batch 64): eager NCHW under no_grad (reference), eager under inference_mode (eager_teacher),
  Conv+BN folded, folded + channels_last, int8;
* student forward + backward + SGD step: NCHW vs channels_last.

    PYTHONPATH=src python benchmarks/cpu_components.py --out docs/results [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def cpu_seconds(fn, repeats: int) -> float:
    t0 = time.process_time()
    for _ in range(repeats):
        fn()
    return (time.process_time() - t0) / repeats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--out", default="docs/results")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import tempfile

    from mixdistill.bench import MEAN, STD, reference_dataset, write_bench_data
    from mixdistill.data import DeviceLoader
    from mixdistill.data.readers import read_cifar100
    from mixdistill.engine.fast import fold_conv_bn, quantize_int8
    from mixdistill.models import create_model

    B = args.batch_size
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = write_bench_data(Path(tmp), n_train=B * 8, n_test=B)
        ds = reference_dataset(root)
        images, labels = read_cifar100(root, "train")
    collate = torch.utils.data.default_collate
    loader = DeviceLoader(images, labels, batch_size=B, mean=MEAN, std=STD, crop_padding=4, flip=True)

    def ref_data():
        collate([ds[i] for i in range(B)])

    def project_data():
        next(iter(loader))

    teacher = create_model(args.teacher).eval()
    x = torch.randn(B, 3, 32, 32)
    folded, _ = fold_conv_bn(teacher)
    folded_cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
    int8 = quantize_int8(folded, [torch.randn(B, 3, 32, 32) for _ in range(4)])
    student = create_model(args.student).train()
    student_cl = copy.deepcopy(student).to(memory_format=torch.channels_last)
    y = torch.randint(0, 100, (B,))
    opts = {id(student): torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9),
            id(student_cl): torch.optim.SGD(student_cl.parameters(), lr=0.01, momentum=0.9)}

    def no_grad(m, inp):
        def f():
            with torch.no_grad():
                m(inp)
        return f

    def inference(m, inp):
        def f():
            with torch.inference_mode():
                m(inp.contiguous(memory_format=torch.channels_last) if m is folded_cl else inp)
        return f

    def train(m, inp):
        opt = opts[id(m)]

        def f():
            loss = F.cross_entropy(m(inp), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return f

    parts = {
        "data: reference PIL pipeline (64 images, 1 process)": ref_data,
        "data: project DeviceLoader batch": project_data,
        "teacher fwd: eager NCHW, no_grad (reference)": no_grad(teacher, x),
        "teacher fwd: eager NCHW, inference_mode (eager_teacher)": inference(teacher, x),
        "teacher fwd: Conv+BN folded": inference(folded, x),
        "teacher fwd: folded + channels_last (project default)": inference(folded_cl, x),
        "teacher fwd: int8 (train.int8_teacher)": inference(int8, x),
        "student fwd+bwd+SGD: NCHW": train(student, x),
        "student fwd+bwd+SGD: channels_last": train(student_cl, x.contiguous(memory_format=torch.channels_last)),
    }
    for fn in parts.values():  # warm-up
        fn()
    best = {k: float("inf") for k in parts}
    for _ in range(args.trials):
        for k, fn in parts.items():
            best[k] = min(best[k], cpu_seconds(fn, 1))
    ms = {k: v * 1e3 for k, v in best.items()}
    T_ref = ms["teacher fwd: eager NCHW, no_grad (reference)"]
    S = ms["student fwd+bwd+SGD: NCHW"]
    est = {
        "reference step": ms["data: reference PIL pipeline (64 images, 1 process)"] + T_ref + S,
        "eager_teacher step": ms["data: project DeviceLoader batch"] + ms["teacher fwd: eager NCHW, inference_mode (eager_teacher)"] + S,
        "project step": ms["data: project DeviceLoader batch"] + ms["teacher fwd: folded + channels_last (project default)"] + S,
        "int8 step": ms["data: project DeviceLoader batch"] + ms["teacher fwd: int8 (train.int8_teacher)"] + S,
    }
    report = {"threads": args.threads, "batch_size": B, "teacher": args.teacher, "student": args.student,
              "cpu": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "cpu_ms_best_of": args.trials, "parts_cpu_ms": ms, "estimated_step_cpu_ms": est,
              "estimated_speedup_vs_reference": {k: est["reference step"] / v for k, v in est.items()}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"bench_cpu_components_t{args.threads}.json").write_text(json.dumps(report, indent=2))
    lines = [f"### KD step parts on the CPU ({args.teacher} → {args.student}, batch {B}, {args.threads} thread(s), "
             f"CPU ms, best of {args.trials}; {report['cpu']}, torch {torch.__version__})", "",
             "| part | CPU ms |", "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in ms.items()]
    lines += ["", "| step (data + teacher + student) | CPU ms | vs reference |", "|---|---|---|"]
    lines += [f"| {k} | {v:.0f} | {est['reference step'] / v:.2f}x |" for k, v in est.items()]
    (out / f"bench_cpu_components_t{args.threads}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
