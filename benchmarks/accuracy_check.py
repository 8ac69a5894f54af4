"""No speed bought with correctness: the reference loop and the project's fast path, same seeds, a few
hundred KD steps on real Fashion-MNIST, reach the same test accuracy within seed noise.

1. A cnn5_w16 teacher is trained with the project's Trainer (CE, one epoch on all 60k images).
2. cnn5_w8 students are distilled from it (KD, T = 4, 0.1 CE + 0.9 KL, SGD 0.05 one-cycle, batch 64) on the same
   class-stratified subset, for each seed, by
   * ``reference``: per-sample PIL transforms (RandomCrop(28, padding=2), RandomHorizontalFlip, ToTensor,
     Normalize) in a DataLoader, fp32 NCHW, teacher under ``no_grad``, ``loss.item()`` per step;
   * ``project``: the Trainer as configured (device-resident data, batched on-device crop/flip, the fast
     teacher: Conv+BN folded, channels_last);
   * ``eager_teacher``: the Trainer with ``train.fast_teacher=false`` (the teacher as loaded);
   * ``int8``: the Trainer with ``train.int8_teacher=true`` (CPU), whose top-1 agreement with the fp32
     teacher is reported.
3. Test accuracy on the 10k test images; mean and std over seeds.

    PYTHONPATH=src python benchmarks/accuracy_check.py --out docs/results   # ~15 min on a 2-core CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


def _base_overrides(args, tmp: Path) -> list[str]:
    return [f"output_dir={tmp / 'runs'}", "data.dataset=fashion_mnist", f"data.root={args.data_root}",
            "data.eval_batch_size=1000", "data.download=false", "train.device=cpu", "train.progress=false",
            "train.tensorboard=false", "optim.momentum=0.9", "optim.weight_decay=5e-4", "optim.schedule=onecycle",
            "optim.milestones=[]"]


def train_teacher(args, tmp: Path) -> tuple[Path, float]:
    from mixdistill.config import load_config
    from mixdistill.engine.trainer import train

    cfg = load_config(None, _base_overrides(args, tmp) + [
        "name=teacher", "model.student=cnn5_w16", "method=ce", "data.batch_size=128", "optim.lr=0.1",
        f"optim.epochs={args.teacher_epochs}", "seed=0"])
    summary = train(cfg, quiet=True)
    return cfg.run_dir / "last.pt", summary["last_acc"]


def student_overrides(args, tmp: Path, teacher: Path, seed: int, name: str) -> list[str]:
    return _base_overrides(args, tmp) + [
        f"name={name}", "model.student=cnn5_w8", "model.teacher=cnn5_w16", f"model.teacher_checkpoint={teacher}",
        "method=kd", "method.temperature=4.0", "method.ce_weight=0.1", "method.kd_weight=0.9",
        f"data.train_subset={args.subset}", "data.batch_size=64", "optim.lr=0.05", f"optim.epochs={args.epochs}",
        f"seed={seed}"]


VARIANT_OVERRIDES = {"project": [], "eager_teacher": ["train.fast_teacher=false"],
                     "int8": ["train.int8_teacher=true"], "compile": ["train.compile=true"]}


def run_project(args, tmp, teacher, seed, variant) -> dict:
    from mixdistill.config import load_config
    from mixdistill.engine.build import build_teacher
    from mixdistill.engine.fast import teacher_agreement
    from mixdistill.engine.trainer import Trainer

    overrides = student_overrides(args, tmp, teacher, seed, f"{variant}_{seed}") + VARIANT_OVERRIDES[variant]
    cfg = load_config(None, overrides)
    trainer = Trainer(cfg, quiet=True)
    extra = {}
    if trainer.teacher_report is not None:
        fp32 = build_teacher(cfg, trainer.num_classes, trainer.in_channels).to(trainer.runtime.device)
        extra["teacher_vs_fp32_on_test"] = teacher_agreement(fp32, trainer.distiller.teacher,
                                                             [x for x, _ in trainer.test_loader])
    started = time.perf_counter()
    summary = trainer.fit()
    return {"acc": summary["last_acc"], "teacher_acc": summary["teacher_acc"], "time_s": time.perf_counter() - started,
            "steps": trainer.step_count, "runtime": trainer.runtime.describe(), **extra}


def run_reference(args, tmp, teacher_path, seed) -> dict:
    """The standard loop, on the same subset, schedule and initialisation as the project's run."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms

    from mixdistill.config import load_config
    from mixdistill.engine.build import load_data
    from mixdistill.models import create_model
    from mixdistill.models.checkpoint import load_weights

    cfg = load_config(None, student_overrides(args, tmp, teacher_path, seed, f"reference_{seed}"))
    train_split, test_split = load_data(cfg)  # the same class-stratified subset as the Trainer's
    tf = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                             transforms.ToTensor(), transforms.Normalize((FMNIST_MEAN,), (FMNIST_STD,))])

    class FashionMNISTStyle(torch.utils.data.Dataset):  # as torchvision.datasets.MNIST.__getitem__
        def __init__(self, images, labels):
            self.data, self.targets = images[:, 0].numpy(), labels.tolist()

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return tf(Image.fromarray(self.data[i], mode="L")), self.targets[i]

    torch.manual_seed(seed)
    np.random.seed(seed)
    student = create_model("cnn5_w8", num_classes=10, in_channels=1).train()  # same init as the Trainer's
    teacher = create_model("cnn5_w16", num_classes=10, in_channels=1)
    load_weights(teacher, torch.load(teacher_path, map_location="cpu", weights_only=True))
    teacher.eval()
    loader = torch.utils.data.DataLoader(FashionMNISTStyle(train_split.images, train_split.labels), batch_size=64,
                                         shuffle=True, drop_last=True, num_workers=args.num_workers,
                                         persistent_workers=args.num_workers > 0)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total = args.epochs * len(loader)
    peak = max(1, int(0.25 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(  # one-cycle: linear up 25%, linear down to 0
        opt, lambda s: (s + 1) / peak if s < peak else max(0.0, (total - s) / (total - peak)))
    T = 4.0
    started = time.perf_counter()
    last_loss = float("nan")
    for _ in range(args.epochs):
        for x, y in loader:
            logit_s = student(x)
            with torch.no_grad():
                logit_t = teacher(x)
            kl = F.kl_div(F.log_softmax(logit_s / T, 1), F.softmax(logit_t / T, 1), reduction="sum") * T * T / x.shape[0]
            loss = 0.1 * F.cross_entropy(logit_s, y) + 0.9 * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            last_loss = loss.item()
    elapsed = time.perf_counter() - started
    student.eval()
    x_test = (test_split.images.float() / 255 - FMNIST_MEAN) / FMNIST_STD
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x_test), 1000):
            correct += int((student(x_test[i:i + 1000]).argmax(1) == test_split.labels[i:i + 1000]).sum())
    return {"acc": 100.0 * correct / len(x_test), "time_s": elapsed, "steps": total, "last_loss": last_loss}


def markdown(report: dict, args) -> list[str]:
    """The report's table: each loop's accuracy over seeds, and its paired difference to the reference loop (same
    seed, same student initialisation; studies.stats.paired: t-interval and p over the seeds)."""
    from mixdistill.studies.stats import fmt_p, paired

    summary, results, machine = report["summary"], report["runs"], report.get("machine")
    teacher_acc = report["teacher_acc"]
    reference = {r["seed"]: r["acc"] for r in results.get("reference", [])}
    lines = ["### Accuracy check (no speed bought with correctness)", "",
             f"Real Fashion-MNIST; teacher cnn5_w16 ({teacher_acc:.2f}% test, trained by the project's Trainer, "
             f"{args.teacher_epochs} epoch), student cnn5_w8, KD T=4 (0.1 CE + 0.9 KL), batch 64, "
             f"{report['steps']} steps ({report['epochs']} epochs x {report['subset']} images), SGD 0.05 one-cycle, "
             f"seeds {','.join(str(s) for s in report['seeds'])}; test accuracy on the 10k test images."
             + (f" Machine: {machine['cpu']} ({machine['cpu_capability']}, native bf16: {machine['cpu_native_bf16']}), "
                f"torch {report['torch']}; project runtime: {machine['project_runtime']}." if machine else ""), "",
             "| loop | test acc % (mean ± std) | minus reference, paired by seed (95% CI, p) | per seed |",
             "|---|---|---|---|"]
    for v, s in summary.items():
        diff = "-"
        if v != "reference" and len(reference) > 1:
            e = paired({r["seed"]: r["acc"] for r in results[v]}, reference)
            diff = f"{e.estimate:+.2f} {e.interval()}, p {fmt_p(e.p)}"
        lines.append(f"| {v} | {s['mean']:.2f} ± {s['std']:.2f} | {diff} | {', '.join(f'{a:.2f}' for a in s['accs'])} |")
    agreements = [r["teacher_vs_fp32_on_test"] for v in ("int8",) if v in results for r in results[v][:1]]
    if agreements:
        a = agreements[0]
        lines += ["", f"int8 teacher vs fp32 teacher on the 10k test images: top-1 agreement "
                      f"{a['top1_agreement_pct']:.2f}%, max |logit diff| {a['max_abs_logit_diff']:.3f}, "
                      f"mean {a['mean_abs_logit_diff']:.4f}."]
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--subset", type=int, default=12800, help="training images of the students")
    p.add_argument("--epochs", type=int, default=2, help="student epochs (subset / 64 steps each)")
    p.add_argument("--teacher-epochs", type=int, default=1)
    p.add_argument("--variants", default="reference,project,eager_teacher,int8")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--out", default="docs/results")
    p.add_argument("--tag", default="", help="written as bench_accuracy_TAG.json/.md (default: bench_accuracy)")
    p.add_argument("--render", metavar="JSON", help="only write the Markdown of a saved report again")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.render:
        report = json.loads(Path(args.render).read_text())
        lines = markdown(report, args)
        Path(args.render).with_suffix(".md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines))
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="mixdistill-acc-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        teacher, teacher_acc = train_teacher(args, tmp)
        print(f"teacher cnn5_w16: {teacher_acc:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)
        for seed in seeds:
            for v in variants:
                r = run_reference(args, tmp, teacher, seed) if v == "reference" else run_project(args, tmp, teacher, seed, v)
                results[v].append({"seed": seed, **r})
                print(f"seed {seed} {v:9s} test acc {r['acc']:.2f}%  ({r['time_s']:.0f} s, {r['steps']} steps)"
                      + (f"  teacher agreement {r['teacher_vs_fp32_on_test']['top1_agreement_pct']:.2f}%"
                         if "teacher_vs_fp32_on_test" in r else ""), flush=True)
    from mixdistill.engine.runtime import cpu_has_native_bf16
    from mixdistill.machine import cpu_name

    runtimes = sorted({r["runtime"] for v in variants if v != "reference" for r in results[v]})
    machine = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "cpu_native_bf16": cpu_has_native_bf16(), "project_runtime": "; ".join(runtimes) or "-"}
    summary = {v: {"mean": statistics.mean(r["acc"] for r in rs),
                   "std": statistics.stdev([r["acc"] for r in rs]) if len(rs) > 1 else float("nan"),
                   "accs": [r["acc"] for r in rs]} for v, rs in results.items()}
    report = {"dataset": "fashion_mnist (real)", "teacher": "cnn5_w16", "teacher_acc": teacher_acc,
              "student": "cnn5_w8", "seeds": seeds, "subset": args.subset, "epochs": args.epochs,
              "steps": results[variants[0]][0]["steps"], "summary": summary, "runs": results,
              "torch": torch.__version__, "machine": machine}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_accuracy_{args.tag}" if args.tag else "bench_accuracy"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = markdown(report, args)
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
