"""The ``mixdistill`` command. Every user-facing error is one line on stderr and a non-zero exit."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
import warnings

from mixdistill.errors import MixdistillError, NonFiniteLossError
from mixdistill.tables import print_table


class HELP_FORMAT(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help, except where that says nothing or says it twice: a default
    of None or [] (the help says what unset means), a flag's False, or a help that already names its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.default in (None, False, []) or isinstance(action, argparse._StoreTrueAction)
                or "default:" in text or "(default " in text):
            return text
        return super()._get_help_string(action)


def _add_train(sub):
    from mixdistill.config import describe_options

    p = sub.add_parser("train", help="train one run from a YAML config", formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train one run. CONFIG is a YAML file; key=value overrides follow "
                                   "(dotted keys, values parsed as YAML), e.g. method=kd optim.epochs=10.",
                       epilog="config keys and their defaults:\n" + describe_options())
    p.add_argument("config", help="YAML config file")
    p.add_argument("overrides", nargs="*", default=[], help="dotted key=value overrides")
    p.add_argument("--resume", action="store_true", help="continue the run in the config's run directory")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--quiet", action="store_true",
                   help="no progress output (the start log, the epoch lines, the bar); the results table still prints")
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
    try:
        summary = train(cfg, resume=args.resume, quiet=args.quiet)
    except KeyboardInterrupt as err:
        from mixdistill.engine.run import CHECKPOINT

        if not (cfg.run_dir / CHECKPOINT).exists():  # stopped in its first epoch: --resume would find nothing
            err.again = " (before its first checkpoint: the same command without --resume starts it again)"
        raise
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 evaluated: the others' table is empty
        _print_summary_table([summary])
    return 0


def _print_summary_table(summaries):
    from rich.table import Table

    table = Table(title="results")
    for col in ("run", "method", "student", "seed", "last acc %", "best acc %", "teacher acc %", "time s"):
        table.add_column(col, overflow="fold")  # a long run name folds at 80 columns (a pipe, a log), never cut
    for s in summaries:
        table.add_row(s["name"], s["method"], s["student"], str(s["seed"]), _fmt(s["last_acc"]),
                      _fmt(s["best_acc"]), _fmt(s.get("teacher_acc")), f"{s['train_time_s']:.0f}")
    console = print_table(table)
    for note in dict.fromkeys(n for s in summaries for n in s.get("notes", [])):
        console.print(f"note: {note}", markup=False, soft_wrap=True)  # one line in a log, as the table


def _fmt(x):
    return "-" if x is None else f"{x:.2f}"


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a checkpoint on a test set", formatter_class=HELP_FORMAT)
    p.add_argument("checkpoint", help="a mixdistill checkpoint (last.pt) or a {'model': state_dict} file")
    p.add_argument("--arch", default=None, help="model name, for checkpoints that do not record it")
    p.add_argument("--data", default=None, help="dataset name (default: the one the checkpoint was trained on), or "
                                                "a path, as analyze takes: a CIFAR-10.1 style .npy pair or an image "
                                                "folder (normalised as the run's own dataset)")
    p.add_argument("--data-root", default=None, help="data directory")
    p.add_argument("--split", default="test", choices=["train", "test"])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="unset: the precision the run was trained with (its train.precision; fp16 off a GPU: fp32)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (unset: torch's choice)")
    p.add_argument("--output", default=None, metavar="NAME",
                   help="an online run's output by the name its metrics carry (peer1, ensemble, leader, "
                        "temporal_mean0, ...), or all: a row each (unset: the checkpoint's model, peer 0)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from mixdistill.errors import require_at_least

    from mixdistill.engine.runtime import torch_threads

    require_at_least("--batch-size", args.batch_size, 1)
    require_at_least("--threads", args.threads, 1)
    with torch_threads(args.threads):
        return _eval(args)


def _eval(args) -> int:
    from rich.table import Table

    from mixdistill.api import evaluate_opened
    from mixdistill.engine.run import open_run

    opened = open_run(args.checkpoint)
    cfg = opened.cfg
    result = evaluate_opened(opened, args.data, root=args.data_root, split=args.split, device=args.device,
                             precision=args.precision, batch_size=args.batch_size, arch=args.arch,
                             options={"data": "--data NAME", "arch": "--arch NAME", "device": "--device",
                                      "precision": "--precision", "output": "--output"}, output=args.output)
    dataset, arch = args.data or cfg.data.dataset, args.arch or opened.arch
    table = Table(title=f"{args.checkpoint} on {dataset}/{args.split}, {result['precision']}")
    for col in ("model", "images", "top-1 %", "top-5 %", "loss"):
        table.add_column(col, overflow="fold")
    rows = result["outputs"] if args.output == "all" else {
        f"{args.output} of {cfg.method.name}" if args.output else arch: result}
    for label, r in rows.items():
        table.add_row(label, str(result["images"]), f"{r['acc']:.2f}", _fmt(r["top5"]), f"{r['loss']:.4f}")
    console = print_table(table)
    own = cfg is not None and dataset == cfg.data.dataset
    subset = (cfg.data.test_subset if args.split == "test" else cfg.data.train_subset) if own else None
    if subset and subset < result["images"]:
        note = (f"the run itself evaluated on data.test_subset = {subset} images, so its summary's accuracies differ "
                "(`mixdistill analyze` uses the subset)" if args.split == "test"
                else f"the run trained on data.train_subset = {subset} of its images")
        console.print(f"note: the whole {args.split} split; {note}", markup=False, soft_wrap=True)
    for note in (None if args.output else opened.online_network_note(), opened.unfinished_note()):
        if note is not None:
            console.print(f"note: {note}", markup=False, soft_wrap=True)
    return 0


def _add_models(sub):
    p = sub.add_parser("models", help="list every model with its size (and with --macs its cost)",
                       formatter_class=HELP_FORMAT,
                       description="Every model of the zoo with its parameter count at the input it is usually "
                                   "trained on (CRD benchmark nets: CIFAR-100, 100 classes, 3x32x32; das2020's: "
                                   "CIFAR-10; cnn5_*: Fashion-MNIST, 1x28x28; tv_*: ImageNet, 1000 classes, "
                                   "3x224x224), or at the one the options give. Models are built on PyTorch's meta "
                                   "device: no weights are allocated.")
    p.add_argument("--macs", action="store_true", help="also count multiply-accumulates per image (one forward "
                                                       "pass at each model's input size)")
    p.add_argument("--num-classes", type=int, default=None, help="classes for every model (default: each model's own)")
    p.add_argument("--in-channels", type=int, default=None,
                   help="input channels for every model (default: each model's own)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input height and width for every model: changes --macs, not the parameter count "
                        "(default: each model's own)")
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    from rich.table import Table

    from mixdistill.errors import require_at_least
    from mixdistill.models import BUILT_IN, list_models, model_summary

    for option, value in (("--num-classes", args.num_classes), ("--in-channels", args.in_channels),
                          ("--image-size", args.image_size)):
        require_at_least(option, value, 1)
    table = Table(title="models" + ("" if args.macs else " (--macs adds multiply-accumulates per image)"))
    columns = ["model", "classes", "input", "params (M)"] + (["MACs / image (M)"] if args.macs else [])
    for col in columns:
        table.add_column(col, justify="left" if col in ("model", "input") else "right")
    too_small, uncounted, unbuilt = [], [], []
    for name in list_models():
        try:
            s = model_summary(name, args.num_classes, args.in_channels, args.image_size, macs=args.macs)
        except Exception as err:  # noqa: BLE001 - a plugin's model: listed, and why it could not be counted
            if name in BUILT_IN:
                raise
            unbuilt.append(f"{name} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})")
            table.add_row(name, "?", "?", "?", *(["?"] if args.macs else []))
            continue
        row = [name, str(s["num_classes"]), f"{s['in_channels']}x{s['image_size']}x{s['image_size']}",
               f"{s['params'] / 1e6:.2f}"]
        if args.macs and s["macs"] is None:
            if s["macs_error"] == "too small":
                too_small.append(name if args.image_size else f"{name} (at {s['image_size']}x{s['image_size']})")
            else:
                uncounted.append(f"{name} ({s['macs_error']})")
        table.add_row(*row, *([f"{s['macs'] / 1e6:.1f}" if s["macs"] is not None else "-"] if args.macs else []))
    console = print_table(table)
    if unbuilt:
        console.print(f"?: not built on PyTorch's meta device: {'; '.join(unbuilt)}", markup=False, soft_wrap=True)
    if uncounted:
        console.print(f"-: MACs not counted where the forward raises on PyTorch's meta device (e.g. where it reads a "
                      f"value): {'; '.join(uncounted)}", markup=False, soft_wrap=True)
    if too_small:
        size = f"a {args.image_size}x{args.image_size}" if args.image_size else "its"
        console.print(f"-: {', '.join(too_small)} cannot take {size} input (a layer's kernel is larger than what "
                      "reaches it)", markup=False, soft_wrap=True)
    console.print("Also accepted wherever a model is named: timm:NAME (any timm.list_models() name; pip install "
                  "'mixdistill[timm]') and tv:NAME (any torchvision.models.list_models() classification model), "
                  "built without downloading weights unless model.pretrained=true.", markup=False, soft_wrap=True)
    return 0


def _override_value(value) -> str:
    """A default as a key=value override writes it (YAML: true, null, [1, 2])."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_override_value(v) for v in value) + "]"
    return str(value)


def _choices(annotation) -> tuple:
    """The values a Literal-typed parameter takes (looking through Optional / Annotated), else ()."""
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    return tuple(c for a in typing.get_args(annotation) for c in _choices(a))


def _first_sentence(doc: str | None) -> str:
    """A docstring's first sentence on one line (reST ``literals`` as `literals`)."""
    import inspect

    text = " ".join(inspect.cleandoc(doc or "").split("\n\n")[0].split()).replace("``", "`")
    end = text.find(". ")
    return text if end < 0 else text[:end + 1]


def _with_default(key: str, default, annotation) -> str:
    """``key=default``, and for a parameter with a fixed set of values ``(a|b)``."""
    import inspect

    if default is inspect.Parameter.empty:
        return f"{key} (required)"
    choices = _choices(annotation)
    return f"{key}={_override_value(default)}" + (f" ({'|'.join(map(str, choices))})" if choices else "")


def method_rows() -> list[tuple[str, str, str, str, str]]:
    """Every registered method (plugins included): name, kind, parameters with defaults, default augmentation,
    source paper (its ``source``, else the first line of the class's own docstring, else of its module's)."""
    import sys

    from mixdistill.methods import METHODS

    rows = []
    for name, cls in sorted(METHODS.items()):
        kind = ("online" if getattr(cls, "online", False) else
                "offline" if cls.needs_teacher else "offline, no teacher")
        params = [_with_default(key, field.get_default(call_default_factory=True), field.annotation)
                  for key, field in cls.Params.model_fields.items()]
        if getattr(cls, "pair_params", None) is not None:  # DKD's beta: mdistiller's configs set it per pair
            params.append("(a listed teacher-student pair's released values replace these defaults: README, "
                          "Methods)")
        source = (getattr(cls, "source", "") or _first_sentence(cls.__dict__.get("__doc__"))
                  or _first_sentence(sys.modules[cls.__module__].__doc__))
        rows.append((name, kind, "\n".join(params) or "-", cls.default_augment or "none", source or "-"))
    return rows


def _add_methods(sub):
    p = sub.add_parser("methods", help="list every training method: parameters, default augmentation, source",
                       formatter_class=HELP_FORMAT,
                       description="Every value method.name can take, with its parameters (method.PARAM=VALUE "
                                   "overrides; defaults shown), the augmentation it gets when the config's augment "
                                   "section names none, and the paper it comes from.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these methods (unset: every one)")
    p.set_defaults(func=cmd_methods)


def _only(rows: list[tuple], names: list[str], kind: str) -> list[tuple]:
    """The rows of ``names`` (a row's first cell is its name), in the order given; an unknown name is an error."""
    from mixdistill.errors import UnknownNameError
    from mixdistill.registry import PLUGIN_NOTE

    by_name = {row[0]: row for row in rows}
    for name in names:
        if name not in by_name:
            raise UnknownNameError(kind, name, by_name, PLUGIN_NOTE)
    return [by_name[name] for name in dict.fromkeys(names)] if names else rows


def _print_reference_table(title: str, columns, rows) -> int:
    """The methods' and augmentations' tables: prose in their cells, so off a terminal folded at 160 columns rather
    than printed at the width of their longest sentence (or folded mid-word at rich's 80)."""
    from rich.table import Table

    table = Table(title=title, show_lines=True)
    for col in columns:
        table.add_column(col, overflow="fold")  # a narrow terminal folds a long value, never cuts it
    for row in rows:
        table.add_row(*row)
    print_table(table, max_width=160, markup=False)
    return 0


def cmd_methods(args) -> int:
    return _print_reference_table("methods (method=NAME method.PARAM=VALUE)",
                                  ("method", "kind", "parameters (defaults)", "default augment", "source"),
                                  _only(method_rows(), args.names, "method"))


def augment_rows() -> list[tuple[str, str, str]]:
    """Every registered augmentation (plugins included): name, parameters with defaults, one-line description."""
    import mixdistill.methods  # noqa: F401  (plugins register their augmentations too)
    from mixdistill.augment.registry import AUGMENTATIONS, _params_model, augment_params, augment_uses_teacher

    rows = []
    for name in sorted(AUGMENTATIONS):
        defaults, fields = augment_params(name), _params_model(name).model_fields
        params = [_with_default(k, v, fields[k].annotation) for k, v in defaults.items() if k not in ("mean", "std")]
        if "mean" in defaults:
            params.append("mean, std: the dataset's")
        fn = getattr(AUGMENTATIONS[name], "func", AUGMENTATIONS[name])
        text = _first_sentence(fn.__doc__) or "-"
        if augment_uses_teacher(name):
            text += " Needs a method with a teacher."
        rows.append((name, "\n".join(params) or "-", text))
    return rows


def _add_augments(sub):
    p = sub.add_parser("augments", help="list every augmentation with its parameters", formatter_class=HELP_FORMAT,
                       description="Every value augment.name can take (or augment=NAME), with its parameters "
                                   "(augment.PARAM=VALUE overrides; defaults shown). `mixdistill methods` shows "
                                   "which augmentation each method gets by default.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these augmentations (unset: every one)")
    p.set_defaults(func=cmd_augments)


def cmd_augments(args) -> int:
    return _print_reference_table("augmentations (augment=NAME augment.PARAM=VALUE; augment=none: none)",
                                  ("augment", "parameters (defaults)", "what it does"),
                                  _only(augment_rows(), args.names, "augmentation"))


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


def _add_results(sub):
    p = sub.add_parser("results", help="a table of the runs below some directories, seeds of one config pooled",
                       formatter_class=HELP_FORMAT,
                       description="Every run directory (a folder with config.yaml) below DIR: one row per config, "
                                   "its seeds pooled (mean last-epoch top-1 with its 95% t-interval, std, best "
                                   "top-1, top-5), beside what differs between the rows, written as the overrides "
                                   "that set it. Unfinished runs are counted, not averaged, as are finished ones "
                                   "whose summary holds no number for the metric (a damaged file).")
    p.add_argument("dirs", nargs="*", default=[], metavar="DIR", help="directories to search (unset: runs)")
    p.add_argument("--per-run", action="store_true", help="one row per run instead of per config")
    p.add_argument("--sort", choices=("path", "acc"), default="path",
                   help="row order: by directory, or by the mean of --metric, best first (lowest for a loss)")
    p.add_argument("--metric", default="last_acc",
                   help="the summary.json number averaged and sorted by (last_acc_ensemble, last_acc_ema, best_acc, "
                        "last_test_loss, ...)")
    p.add_argument("--csv", default=None, metavar="FILE",
                   help="also write every run (directory, every config key, its summary's numbers) to FILE")
    p.set_defaults(func=cmd_results)


def cmd_results(args) -> int:
    from mixdistill.errors import ConfigError
    from mixdistill.results import results_command

    if args.csv is not None and args.csv.endswith(("/", os.sep)):  # pathlib drops the slash: a file named out/ was made
        raise ConfigError(f"--csv {args.csv} names a folder: give the file, e.g. --csv {args.csv}results.csv")
    return results_command(args.dirs, per_run=args.per_run, sort=args.sort, csv_path=args.csv, metric=args.metric)


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
    from mixdistill.errors import IncompleteStudyError, refuse_under_torchrun, require_at_least

    require_at_least("--seeds", args.seeds, 1)
    refuse_under_torchrun("demo", "the demo starts its own processes for its runs")  # each rank ran its own demo
    try:
        return run_demo(output_dir=args.output_dir, seeds=args.seeds, data_root=args.data_root, quick=args.quick)
    except IncompleteStudyError as err:  # a run diverged: as a study, one line and exit 1
        print(f"mixdistill: {err}", file=sys.stderr)
        return 1


def _add_study(sub):
    p = sub.add_parser("study", help="run a paper's grid and write its report", formatter_class=HELP_FORMAT,
                       epilog="exit status: 0 every run finished and the report is written; 1 some runs did not "
                              "finish (they diverged, or their teacher did): the report is written on the rest and "
                              "lists them; 2 bad input (one line, nothing trained); 130 interrupted, 143 terminated "
                              "(SIGTERM) (the same command again keeps the finished runs and resumes the others)")
    p.add_argument("name", type=str.lower, help="das2020 | wang2022 | choi2023 | shen2022 (any case)")
    p.add_argument("--scale", default="cpu", help="cpu (Fashion-MNIST, 2 cores), full (the paper's CIFAR protocol), "
                                                "smoke (for tests: seconds a run), or another scale the study's grid "
                                                "file defines "
                                                "(wang2022: full_tinyimagenet; smoke_* scales for the tests)")
    p.add_argument("--seeds", default=None, help="seeds per configuration: a count (5 = seeds 0-4, the default), a "
                                                 "range (10-14) or a list (3,7,9; '3,' is seed 3 alone), e.g. to "
                                                 "check a report on seeds it was not tuned on")
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
                        "scale's threads_per_run (1 at the cpu scale), else torch's default")
    p.add_argument("--jobs", type=int, default=None,
                   help="local executor: runs side by side; unset: as many as the cores hold at that thread count "
                        "(also the worker processes of wang2022's report, --report-only too)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report of the runs finished so far and train nothing (a study still running in "
                        "another process goes on); the runs not finished yet are listed in it. It reports the grid "
                        "last started in the folder: its --seeds, --threads and --data-root (given ones must match)")
    p.add_argument("--plan", action="store_true",
                   help="list every run of the grid with its key, epochs and compute (FLOPs counted on one step, "
                        "one evaluation and the set-up of each distinct config; GPU-hours at --plan-tflops), then "
                        "totals by stage, method and augmentation; trains nothing")
    p.add_argument("--plan-tflops", type=float, default=None,
                   help="effective TFLOP/s for --plan's GPU-hours (default: 20, a data-centre GPU on CIFAR-size nets); "
                        "given alone, it implies --plan")
    p.set_defaults(func=cmd_study)


def cmd_study(args) -> int:
    from mixdistill.errors import ConfigError, IncompleteStudyError, refuse_under_torchrun, require_at_least
    from mixdistill.studies import run_study

    require_at_least("--threads", args.threads, 1)
    require_at_least("--jobs", args.jobs, 1)
    refuse_under_torchrun("study", "a study starts its own processes for its runs")
    if args.executor != "ray":
        given = [flag for flag, value in (("--address", args.address), ("--gpus-per-run", args.gpus_per_run))
                 if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for --executor ray; the "
                              f"local executor runs on this machine (--jobs, --threads)")
    elif args.jobs is not None:
        raise ConfigError("--jobs is for the local executor; Ray places each run by its CPU and GPU requests "
                          "(--threads, --gpus-per-run)")
    planned = args.plan or args.plan_tflops is not None
    if planned:
        given = [flag for flag, value in (("--report-only", args.report_only), ("--rerun", args.rerun),
                                          ("--jobs", args.jobs), ("--threads", args.threads),
                                          ("--executor ray", args.executor == "ray")) if value]
        if given:
            raise ConfigError(f"--plan counts the grid's work and runs nothing, so {' and '.join(given)} would do "
                              f"nothing: leave {'it' if len(given) == 1 else 'them'} out")
    if args.report_only:
        given = [flag for flag, value in (("--rerun", args.rerun), ("--executor ray", args.executor == "ray"))
                 if value]
        if given:
            raise ConfigError(f"--report-only trains nothing, so {' and '.join(given)} would do nothing: leave "
                              f"{'it' if len(given) == 1 else 'them'} out (--threads and --seeds say which runs)")
    if planned:
        from mixdistill.studies.plan import DEFAULT_TFLOPS, plan_study
        from mixdistill.studies import get_study
        from mixdistill.studies.stats import parse_seeds

        tflops = DEFAULT_TFLOPS if args.plan_tflops is None else args.plan_tflops
        if not tflops > 0:
            raise ConfigError(f"--plan-tflops must be > 0, got {tflops}")
        try:
            seeds = parse_seeds(5 if args.seeds is None else args.seeds)
            get_study(args.name)
            print("--plan: counting one training step of every distinct run on the CPU (a second or so each; a full "
                  "grid takes up to two minutes)", file=sys.stderr)
            plan = plan_study(args.name, scale=args.scale, seeds=seeds, output_dir=args.output_dir,
                              data_root=args.data_root, tflops=tflops)
        except KeyboardInterrupt as err:
            err.again = " (--plan trains and writes nothing)"
            raise
        print(plan, end="")
        return 0
    try:
        path = run_study(args.name, scale=args.scale, seeds=args.seeds, output_dir=args.output_dir,
                         executor=args.executor, address=args.address, data_root=args.data_root,
                         gpus_per_run=args.gpus_per_run, rerun=args.rerun, threads=args.threads, jobs=args.jobs,
                         report_only=args.report_only)
    except IncompleteStudyError as err:  # runs diverged (or, --report-only, have not run yet): the report lists them
        print(f"mixdistill: {err}", file=sys.stderr)
        return 1
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
    for add in (_add_train, _add_eval, _add_results, _add_analyze, _add_models, _add_methods, _add_augments,
                _add_teachers, _add_demo, _add_study, _add_bench):
        add(sub)
    return parser


# How each command takes a data directory: the dataset-not-found message names this one way.
DATA_ROOT_HINTS = {
    "train": "add the override data.root=PATH naming the folder holding it (or set data.root in the config)",
    **{command: "pass --data-root PATH naming the folder holding it" for command in ("eval", "analyze", "demo", "study")},
}


OUTPUT_ERRNOS = {errno.EPIPE, errno.ENOSPC, errno.EDQUOT}  # errors of a write


def _drop_stdout() -> None:
    """Point standard output at /dev/null, so that the interpreter's last flush of what could not be written does
    not fail again (and print a traceback) on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor behind it (a replaced stream)
        pass


def _speaks() -> bool:
    """Under torchrun, the first process of each node alone prints errors, warnings and interruptions: every rank
    meets the same config and data, and printed each line once per process (interleaved, or run together on one
    line); the others exit with the same status. Outside torchrun (WORLD_SIZE unset or 1) every process speaks."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) <= 1 or int(os.environ.get("LOCAL_RANK") or 0) == 0
    except ValueError:  # not torchrun's numbers: say it rather than lose it
        return True


def _say(line: str) -> None:
    if _speaks():
        print(line, file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None, *, default=warnings.showwarning):
    """mixdistill's own warnings as one line, ``mixdistill: warning: ...`` (Python's default adds the source file,
    line number and source line); other libraries' as Python shows them; none from a node's other ranks."""
    package = os.path.dirname(os.path.abspath(__file__))
    if not _speaks():
        return
    if os.path.abspath(filename).startswith(package + os.sep):
        print(f"mixdistill: warning: {message}", file=file or sys.stderr)
    else:
        default(message, category, filename, lineno, file, line)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's preemption, ``timeout``), raised where the process is, so that it stops as a
    Ctrl-C does: a grid stops its workers, the line says what the same command does next. ``received``: whether one
    came, since a library may turn the exception into a plain KeyboardInterrupt (Ray's ``wait``)."""

    received = False


@contextlib.contextmanager
def _sigterm_as_interrupt():
    Terminated.received = False
    # under torchrun SIGTERM is how its agent stops the ranks, which may be waiting inside a collective, where no
    # Python handler runs: left to end them at once
    if (threading.current_thread() is not threading.main_thread() or "TORCHELASTIC_RUN_ID" in os.environ
            or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):  # a parent that asked us to ignore it
        yield
        return

    def terminated(signum, frame):
        Terminated.received = True
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def main(argv: list[str] | None = None) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        status = _main(argv)
    distributed = sys.modules.get("mixdistill.engine.distributed")  # loaded where a run was built
    if status and distributed is not None and distributed.made_a_process_group():
        _exit_now(status)
    return status


def _exit_now(status: int) -> None:
    """A torchrun rank that stops with an error ends here, its output flushed: torn down with the interpreter, the
    process group's threads (its DDP reducer still referenced by the error's traceback) aborted it at times
    ("terminate called without an active exception", exit -6 in place of the status)."""
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _main(argv: list[str] | None) -> int:
    try:
        parser = build_parser()  # imports the config layer, and with it the plugins ($MIXDISTILL_PLUGINS)
    except MixdistillError as err:
        print(f"mixdistill: error: {err}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may come after options (`train CFG --quiet a=1`)
        if hasattr(args, "overrides") and all("=" in x and not x.startswith("-") for x in extra):
            args.overrides += extra
        elif hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)} (train's settings are key=value overrides: "
                         "e.g. output_dir=runs seed=3 optim.epochs=3)")
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    hint = None
    if args.command in DATA_ROOT_HINTS:
        from mixdistill.data.datasets import ROOT_HINT

        hint = ROOT_HINT.set(DATA_ROOT_HINTS[args.command])
    try:
        with _sigterm_as_interrupt():  # here, inside the handlers below (start-up, importing torch: the default)
            return int(args.func(args) or 0)
    except NonFiniteLossError as err:  # a result, as a study's diverged run is (exit 1), not bad input (2)
        _say(f"mixdistill: {err}")
        return 1
    except MixdistillError as err:
        _say(f"mixdistill: error: {err}")
        return 2
    except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM (Terminated)
        again = {"train": " (the same command with --resume continues from the last checkpoint)",
                 "study": " (the same command again keeps the finished runs and resumes the others)",
                 "demo": " (the same command again keeps the finished runs and resumes the others)"}
        stopped, status = (("terminated", 143) if isinstance(err, Terminated) or Terminated.received
                           else ("interrupted", 130))
        _say(f"mixdistill: {stopped}{getattr(err, 'again', None) or again.get(args.command, '')}")
        return status
    except OSError as err:  # the files mixdistill writes raise WriteError; these come from standard output
        if err.errno not in OUTPUT_ERRNOS:
            raise
        _drop_stdout()
        if err.errno != errno.EPIPE:  # a reader that stopped reading (`| head`) is not an error to report
            print(f"mixdistill: error: cannot write the output: [Errno {err.errno}] {err.strerror}", file=sys.stderr)
        return 1
    finally:
        if hint is not None:
            ROOT_HINT.reset(hint)


if __name__ == "__main__":
    sys.exit(main())
