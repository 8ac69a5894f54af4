"""The ``mixdistill`` command. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import sys

from mixdistill.errors import MixdistillError

HELP_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def _add_train(sub):
    from mixdistill.config import describe_options

    p = sub.add_parser("train", help="train one run from a YAML config", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train one run. CONFIG is a YAML file; key=value overrides follow "
                                   "(dotted keys, values parsed as YAML), e.g. method=kd optim.epochs=10.",
                       epilog="config keys and their defaults:\n" + describe_options())
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's run directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    import yaml

    from mixdistill.config import load_config
    from mixdistill.engine.build import check_buildable
    from mixdistill.engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        check_buildable(cfg)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
        return 0
    summary = train(cfg, resume=args.resume, quiet=args.quiet)
    _print_summary_table([summary])
    return 0


def _print_summary_table(summaries):
    from rich.console import Console
    from rich.table import Table

    table = Table(title="results")
    for col in ("run", "method", "student", "seed", "last acc %", "best acc %", "teacher acc %", "time s"):
        table.add_column(col)
    for s in summaries:
        table.add_row(s["name"], s["method"], s["student"], str(s["seed"]), _fmt(s["last_acc"]),
                      _fmt(s["best_acc"]), _fmt(s.get("teacher_acc")), f"{s['train_time_s']:.0f}")
    console = Console()
    console.print(table)
    for note in dict.fromkeys(n for s in summaries for n in s.get("notes", [])):
        console.print(f"note: {note}", markup=False)


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint on a test set", formatter_class=HELP_FORMAT)
    p.add_argument("checkpoint", help="a mixdistill checkpoint (last.pt) or a {'model': state_dict} file")
    p.add_argument("--arch", default=None, help="model name, for checkpoints that do not record it")
    p.add_argument("--data", default=None, help="dataset name (default: the one the checkpoint was trained on)")
    p.add_argument("--data-root", default=None, help="data directory")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16"],
                   help="unset: the precision the run was trained with (its train.precision)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    import torch
    from rich.console import Console
    from rich.table import Table

    from mixdistill.data import DeviceLoader, load_dataset
    from mixdistill.engine.evaluate import evaluate
    from mixdistill.engine.run import open_run
    from mixdistill.engine.runtime import resolve_runtime
    from mixdistill.errors import ConfigError, require_at_least

    require_at_least("--batch-size", args.batch_size, 1)
    opened = open_run(args.checkpoint)
    cfg = opened.cfg
    dataset = args.data or (cfg.data.dataset if cfg else None)
    if dataset is None:
        raise ConfigError("this checkpoint does not record its dataset: pass --data")
    if cfg is not None and dataset == cfg.data.dataset:
        split = opened.split(args.split, root=args.data_root, use_subset=False)
    else:
        split = load_dataset(dataset, args.split, root=args.data_root)
    arch = args.arch or opened.arch
    model = opened.model(arch, split.spec.num_classes, split.images.shape[1])
    runtime = resolve_runtime(args.device, args.precision or (cfg.train.precision if cfg else "auto"))
    model.to(runtime.device)
    if runtime.channels_last:
        model.to(memory_format=torch.channels_last)
    loader = DeviceLoader(split.images, split.labels, batch_size=args.batch_size, mean=split.spec.mean,
                          std=split.spec.std, shuffle=False, drop_last=False, device=runtime.device)
    result = evaluate(model, loader, runtime)
    table = Table(title=f"{args.checkpoint} on {dataset}/{args.split}")
    for col in ("model", "images", "top-1 %", "loss"):
        table.add_column(col)
    table.add_row(arch, str(len(split.labels)), f"{result['acc']:.2f}", f"{result['loss']:.4f}")
    Console().print(table)
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="list every model with its size and cost", formatter_class=HELP_FORMAT)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--in-channels", type=int, default=3)
    p.add_argument("--image-size", type=int, default=32)
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from mixdistill.models import list_models, model_summary

    table = Table(title=f"models at {args.num_classes} classes, {args.in_channels}x{args.image_size}x{args.image_size}")
    for col in ("model", "params (M)", "MACs / image (M)"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for name in list_models():
        s = model_summary(name, args.num_classes, args.in_channels, args.image_size)
        table.add_row(name, f"{s['params'] / 1e6:.2f}", f"{s['macs'] / 1e6:.1f}")
    Console().print(table)
    return 0


def _add_teachers(sub):
    from mixdistill.teachers import add_teachers_arguments, teachers_main

    p = sub.add_parser("teachers", help="list / download the benchmark's pretrained CIFAR-100 teachers",
                       formatter_class=HELP_FORMAT)
    add_teachers_arguments(p)
    p.set_defaults(func=teachers_main)


def _add_analyze(sub):
    from mixdistill.analysis.command import add_analyze_arguments, analyze_main

    p = sub.add_parser("analyze", help="calibration, class discrimination, smoothness, robustness of a model",
                       formatter_class=HELP_FORMAT)
    add_analyze_arguments(p)
    p.set_defaults(func=analyze_main)


def _add_demo(sub):
    p = sub.add_parser("demo", help="teacher + CE and KD students on Fashion-MNIST, with a results table",
                       formatter_class=HELP_FORMAT)
    p.add_argument("--output-dir", default="runs/demo", help="where the demo's runs go (re-running reuses them)")
    p.add_argument("--seeds", type=int, default=3, help="student seeds (CE and KD each)")
    p.add_argument("--data-root", default=None, help="Fashion-MNIST directory")
    p.add_argument("--quick", action="store_true", help="a much smaller run, for smoke tests")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args) -> int:
    from mixdistill.demo import run_demo
    from mixdistill.errors import require_at_least

    require_at_least("--seeds", args.seeds, 1)
    return run_demo(output_dir=args.output_dir, seeds=args.seeds, data_root=args.data_root, quick=args.quick)


def _add_study(sub):
    p = sub.add_parser("study", help="run a paper's grid and write its report", formatter_class=HELP_FORMAT)
    p.add_argument("name", help="das2020 | wang2022 | choi2023 | shen2022")
    p.add_argument("--scale", default="cpu", help="cpu (Fashion-MNIST, 2 cores), full (the paper's CIFAR protocol), "
                                                "smoke (seconds), or another scale the study's grid file defines "
                                                "(wang2022: full_tinyimagenet; smoke_* scales for the tests)")
    p.add_argument("--seeds", default="5", help="seeds per configuration: a count (5 = seeds 0-4), a range (10-14) "
                                                "or a list (3,7,9), e.g. to check a report on seeds it was not tuned on")
    p.add_argument("--executor", default="local", choices=["local", "ray"],
                   help="local: runs side by side on this machine (--jobs); ray: one Ray task per run (every node must "
                        "see OUTPUT_DIR and the data at the same paths, e.g. a shared filesystem)")
    p.add_argument("--address", default=None, help="Ray cluster address; unset: a local Ray instance")
    p.add_argument("--output-dir", default="runs/studies", help="the study lives in OUTPUT_DIR/NAME_SCALE")
    p.add_argument("--data-root", default=None, help="dataset directory; unset: $MIXDISTILL_DATA, the Debian "
                                                     "path, then the download cache")
    p.add_argument("--rerun", action="append", default=[], metavar="PATTERN",
                   help="run again the runs whose key matches this fnmatch pattern, e.g. 'cutnmix/*' (repeatable); "
                        "runs whose config changed are re-run without it")
    p.add_argument("--gpus-per-run", type=float, default=None, help="Ray GPU request per run; unset: 1 at "
                                                                    "--scale full, else 0")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (recorded in each run's config: results depend on it); unset: the "
                        "scale's threads_per_run (1 at the CPU and smoke scales), else torch's default")
    p.add_argument("--jobs", type=int, default=None,
                   help="local executor: runs side by side; unset: as many as the cores hold at that thread count")
    p.add_argument("--plan", action="store_true",
                   help="list every run of the grid with its key, epochs and estimated compute (FLOPs from the model "
                        "zoo, GPU-hours at --plan-tflops); trains nothing")
    p.add_argument("--plan-tflops", type=float, default=None,
                   help="effective TFLOP/s for --plan's GPU-hours (default: 20, a data-centre GPU on CIFAR-size nets)")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from mixdistill.errors import ConfigError, require_at_least
    from mixdistill.studies import run_study

    require_at_least("--threads", args.threads, 1)
    require_at_least("--jobs", args.jobs, 1)
    if args.plan or args.plan_tflops is not None:
        from mixdistill.studies.plan import DEFAULT_TFLOPS, plan_study
        from mixdistill.studies.stats import parse_seeds

        tflops = DEFAULT_TFLOPS if args.plan_tflops is None else args.plan_tflops
        if not tflops > 0:
            raise ConfigError(f"--plan-tflops must be > 0, got {tflops}")
        print(plan_study(args.name, scale=args.scale, seeds=parse_seeds(args.seeds), output_dir=args.output_dir,
                         data_root=args.data_root, tflops=tflops), end="")
        return 0
    path = run_study(args.name, scale=args.scale, seeds=args.seeds, output_dir=args.output_dir,
                     executor=args.executor, address=args.address, data_root=args.data_root,
                     gpus_per_run=args.gpus_per_run, rerun=args.rerun, threads=args.threads, jobs=args.jobs)
    print(path.read_text())
    return 0


def _add_bench(sub):
    from mixdistill.bench import add_bench_arguments, bench_main

    p = sub.add_parser("bench", help="time the project's training step against a standard reference loop",
                       formatter_class=HELP_FORMAT)
    add_bench_arguments(p)
    p.set_defaults(func=bench_main)


def build_parser() -> argparse.ArgumentParser:
    from mixdistill import __version__

    parser = argparse.ArgumentParser(prog="mixdistill", description="Knowledge distillation with mixed-sample "
                                     "data augmentation (offline and online).")
    parser.add_argument("--version", action="version", version=f"mixdistill {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_analyze, _add_models, _add_teachers, _add_demo, _add_study, _add_bench):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options (`train CFG --quiet a=1`)
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args) or 0)
    except MixdistillError as err:
        print(f"mixdistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mixdistill: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
