"""``mixdistill analyze RUN_DIR_OR_CHECKPOINT``: accuracy, calibration, class discrimination, smoothness,
teacher-student agreement, optional robustness, human-label agreement, teacher statistics and t-SNE of one
model, written as ``report.md`` + ``metrics.json`` + PNG figures.

The entry points are :func:`add_analyze_arguments` (fills an argparse parser) and :func:`analyze_main`
(runs it, returns the exit status); :func:`analyze` is the same as a function returning the metrics.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from mixdistill.analysis.calibration import DEFAULT_BINS, calibration, plot_reliability_diagram
from mixdistill.analysis.discrimination import VARIANTS, class_discrimination
from mixdistill.analysis.robustness import adversarial_accuracy
from mixdistill.analysis.smoothness import CLASS_NAMES, TSNE_SAMPLES, plot_tsne, smoothness, tsne_embedding
from mixdistill.analysis.teacher_stats import STEPS_PER_GROUP, teacher_statistics
from mixdistill.augment import AUGMENTATIONS, augment_params, make_augment
from mixdistill.data import DATASETS, DeviceLoader, load_dataset
from mixdistill.data.streaming import stratified_subset
from mixdistill.engine.run import FinishedRun, open_run
from mixdistill.engine.runtime import evaluation_precision, resolve_runtime, torch_threads
from mixdistill.errors import CheckpointError, ConfigError, UnknownNameError, require_at_least
from mixdistill.files import make_dir, write_json, write_text
from mixdistill.models import create_model
from mixdistill.models.checkpoint import load_weights
from mixdistill.models.inference import forward_in_chunks
from mixdistill.provenance import reconstruction_notes
from mixdistill.registry import PLUGIN_NOTE
from mixdistill.resources import reference
from mixdistill.tables import print_table

REPORT_NAME, METRICS_NAME = "report.md", "metrics.json"
FIGURES = {"reliability": "reliability_diagram.png", "tsne": "tsne.png"}


def add_analyze_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.description = parser.description or (
        "Analyse a trained model: accuracy, calibration (ECE / MCE / NLL, reliability diagram), class "
        "discrimination (das2020; both variants, on softmax outputs and penultimate features), smoothness "
        "(choi2023: logit std, entropy, teacher-student agreement), and optionally FGSM / PGD robustness, "
        "agreement with human soft labels (CIFAR-10H), wang2022's teacher statistics and a t-SNE. Writes "
        "report.md, metrics.json and PNG figures into RUN_DIR/analysis (or --out).")
    parser.add_argument("target", metavar="RUN_DIR_OR_CHECKPOINT",
                        help="a run directory (its last.pt is used) or a checkpoint file")
    parser.add_argument("--data", default=None,
                        help="evaluation set: a dataset name (its test split), a CIFAR-10.1 style *_data.npy file "
                             "(or a folder with one *_data.npy/*_labels.npy pair), or an image folder (CINIC-10: "
                             "FOLDER/train and FOLDER/test class folders). Unset: the run's own test set")
    parser.add_argument("--data-root", default=None,
                        help="data directory for a dataset name (unset: the run's data.root)")
    parser.add_argument("--normalize", default="train", choices=["train", "data"],
                        help="input normalisation: the training set's mean/std (what the model was trained with), "
                             "or the evaluation set's own per-channel mean/std (das2020 normalised CINIC-10 with "
                             "CINIC-10's statistics)")
    parser.add_argument("--full-test-set", action="store_true",
                        help="ignore the run's data.test_subset and use the whole test split")
    parser.add_argument("--arch", default=None, help="model name, for checkpoints that do not record it")
    parser.add_argument("--dataset", default=None,
                        help="the dataset the model was trained on, for checkpoints that do not record it "
                             "(sets the input normalisation and the default evaluation set)")
    parser.add_argument("--out", default=None, help="output folder (unset: RUN_DIR/analysis)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available, as train), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (unset: torch's choice)")
    parser.add_argument("--batch-size", type=int, default=500, help="evaluation batch size")
    parser.add_argument("--bins", type=int, default=DEFAULT_BINS, help="confidence bins of ECE / MCE (das2020 used 10)")
    parser.add_argument("--teacher", default=None,
                        help="teacher checkpoint for the agreement measures (unset: the run's "
                             "model.teacher_checkpoint, when that file exists)")
    parser.add_argument("--teacher-arch", default=None,
                        help="the teacher's model name, if its checkpoint does not record it")
    parser.add_argument("--no-teacher", action="store_true", help="skip the teacher even if the run has one")
    parser.add_argument("--fgsm", type=float, nargs="+", default=None, metavar="EPS",
                        help="FGSM accuracy at these epsilons (pixel units, images in [0, 1]; e.g. 0.0078 = 2/255)")
    parser.add_argument("--pgd", type=float, nargs="+", default=None, metavar="EPS",
                        help="PGD accuracy at these epsilons")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations")
    parser.add_argument("--pgd-step-size", type=float, default=None,
                        help="PGD step in pixel units (unset: 2.5 * eps / steps)")
    parser.add_argument("--no-pgd-random-start", action="store_true", help="start PGD at the clean image")
    parser.add_argument("--human-labels", default=None, metavar="FILE.npy",
                        help="human soft labels [N, C] in test-set order (CIFAR-10H cifar10h-probs.npy): "
                             "mean KL(h || p)")
    parser.add_argument("--tsne", action="store_true", help="t-SNE plot of the penultimate features")
    parser.add_argument("--tsne-samples", type=int, default=TSNE_SAMPLES, help="random subsample size of the t-SNE")
    parser.add_argument("--teacher-stats", default=None, metavar="VIEW",
                        help="wang2022's teacher statistics (T. stddev, entropy) on the training set under this "
                             "augmentation (an augmentation name, or 'run' for the run's own)")
    parser.add_argument("--teacher-stats-epochs", type=int, default=1, help="passes over the training set")
    parser.add_argument("--seed", type=int, default=0, help="seed of the t-SNE subsample, PGD start, augmentation")
    parser.add_argument("--quiet", action="store_true", help="print only the report path")
    return parser


def analyze_main(args: argparse.Namespace) -> int:
    for option, value, minimum in (("--threads", args.threads, 1), ("--batch-size", args.batch_size, 1),
                                   ("--bins", args.bins, 1), ("--pgd-steps", args.pgd_steps, 1),
                                   ("--tsne-samples", args.tsne_samples, 2),
                                   ("--teacher-stats-epochs", args.teacher_stats_epochs, 1)):
        require_at_least(option, value, minimum)
    with torch_threads(args.threads):
        result = _analyze_args(args)
    if not getattr(args, "quiet", False):
        _print_summary(result)
    print(result["paths"]["report"])
    return 0


def _analyze_args(args: argparse.Namespace) -> dict:
    return analyze(
        args.target, data=args.data, data_root=args.data_root, full_test_set=args.full_test_set, arch=args.arch,
        normalize=args.normalize,
        dataset=args.dataset, out=args.out, device=args.device, batch_size=args.batch_size, bins=args.bins,
        teacher=args.teacher, teacher_arch=args.teacher_arch, no_teacher=args.no_teacher, fgsm=args.fgsm,
        pgd=args.pgd, pgd_steps=args.pgd_steps, pgd_step_size=args.pgd_step_size,
        pgd_random_start=not args.no_pgd_random_start, human_labels=args.human_labels, tsne=args.tsne,
        tsne_samples=args.tsne_samples, teacher_stats=args.teacher_stats,
        teacher_stats_epochs=args.teacher_stats_epochs, seed=args.seed)


# ------------------------------------------------------------------------------------------- loading

def _resolve_target(target: str | Path) -> tuple[FinishedRun, Path]:
    """(the opened run or checkpoint, its run directory)."""
    p = Path(target).expanduser()
    if not p.exists():
        raise CheckpointError(f"no such run directory or checkpoint file: {p}")
    opened = open_run(p)
    return opened, opened.checkpoint.parent


def _build_model(arch: str, state, num_classes: int, in_channels: int, what: str):
    try:
        model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    except TypeError as e:
        raise ConfigError(f"cannot build the {what} '{arch}': {e}") from None
    load_weights(model, state)
    return model.eval()


@torch.inference_mode()
def collect_outputs(model: torch.nn.Module, loader) -> dict:
    """Logits [N, C] and (if the model has ``forward_features``) pooled penultimate features [N, D] over
    ``loader``, float32 on the CPU; a batch on a CPU is forwarded in chunks (``models.inference``)."""
    has_features = hasattr(model, "forward_features")

    def forward(x):
        if not has_features:
            return (model(x),)
        z, f = model.forward_features(x)
        return z, f["pooled"]

    logits, feats = [], []
    for batch in loader:
        out = forward_in_chunks(forward, batch[0])
        logits.append(out[0].float().cpu())
        if has_features:
            feats.append(out[1].float().flatten(1).cpu())
    return {"logits": torch.cat(logits), "features": torch.cat(feats) if feats else None}


# ------------------------------------------------------------------------------------------- analysis

def analyze(target, *, data=None, data_root=None, full_test_set=False, normalize="train", arch=None, dataset=None,
            out=None, device="auto", batch_size=500, bins=DEFAULT_BINS, teacher=None, teacher_arch=None,
            no_teacher=False, fgsm=None, pgd=None, pgd_steps=10, pgd_step_size=None, pgd_random_start=True,
            human_labels=None, tsne=False, tsne_samples=TSNE_SAMPLES, teacher_stats=None, teacher_stats_epochs=1,
            seed=0, titles=None) -> dict:
    """Run the analysis and write the report; returns the metrics dict (with ``paths``). The arguments are
    the command's options (see :func:`add_analyze_arguments`), and ``titles``: figure titles in place of the
    defaults, keyed like ``FIGURES`` (``reliability``, ``tsne``); each is a ``str.format`` template given
    ``accuracy`` and ``ece`` / ``mce`` (all in %), ``test_loss``, ``samples``, ``arch`` and ``eval_set``."""
    from mixdistill.analysis.data import (check_compatible, human_label_kl, load_eval_set, load_human_labels,
                                          split_eval_set)

    # options first: a mistake should not cost a whole evaluation
    if batch_size < 1 or bins < 1:
        raise ConfigError(f"--batch-size and --bins must be >= 1, got {batch_size} and {bins}")
    for attack, eps_list in (("fgsm", fgsm), ("pgd", pgd)):
        for eps in eps_list or []:
            if not 0 <= eps <= 1:
                raise ConfigError(f"--{attack} epsilon must be in [0, 1] (pixel units), got {eps}")
    if pgd and pgd_steps < 1:
        raise ConfigError(f"--pgd-steps must be >= 1, got {pgd_steps}")
    if tsne and tsne_samples < 2:
        raise ConfigError(f"--tsne-samples must be >= 2, got {tsne_samples}")
    if teacher_stats and teacher_stats != "run" and teacher_stats not in AUGMENTATIONS:
        raise UnknownNameError("augmentation (--teacher-stats)", teacher_stats, [*AUGMENTATIONS, "run"], PLUGIN_NOTE)
    if no_teacher and (teacher or teacher_arch):
        raise ConfigError(f"--no-teacher skips the teacher that {'--teacher' if teacher else '--teacher-arch'} names: "
                          "give one of them")
    opened, run_dir = _resolve_target(target)
    ckpt_path, state = opened.checkpoint, opened.state
    config = opened.cfg.to_dict() if opened.cfg else {}  # validated; {} for a foreign checkpoint
    data_cfg = config.get("data", {}) or {}
    model_cfg = config.get("model", {}) or {}
    notes: list[str] = reconstruction_notes(config)
    if opened.config_error:  # what its config would have said (its subset, its teacher) is not known here
        notes.append(f"The run's saved config does not validate here ({opened.config_error}): analysed as a foreign "
                     "checkpoint, on the whole split, without its teacher.")
    for note in (opened.online_network_note(), opened.unfinished_note()):
        if note is not None:
            notes.append(f"{note[0].upper()}{note[1:]}.")

    # what the model was trained on: normalisation, classes, channels
    if dataset and data_cfg.get("dataset") and dataset != data_cfg["dataset"]:  # it looked for CIFAR-10 files
        raise ConfigError(f"--dataset {dataset}: {ckpt_path} records its training set, {data_cfg['dataset']}: leave "
                          "--dataset out (--data evaluates another set)")
    train_name = dataset or data_cfg.get("dataset") or (data if data in DATASETS else None)
    if train_name is None:
        raise opened.missing_dataset("--dataset NAME")
    if train_name not in DATASETS:
        raise ConfigError(f"unknown training dataset '{train_name}'; valid: {', '.join(DATASETS)}")
    spec = DATASETS[train_name]
    # another evaluation set gets its own folder: it replaced the run's own analysis/report.md
    own_data = data is None or data == train_name
    out_dir = Path(out).expanduser() if out else run_dir / (
        "analysis" if own_data else f"analysis_{Path(data).name.removesuffix('.npy').removesuffix('_data') or 'data'}")
    train_root = data_root if (data_root and own_data) else data_cfg.get("root")
    arch = arch or state.get("arch")
    if arch is None:
        raise ConfigError(f"{ckpt_path} does not record its architecture: pass --arch MODEL")

    # evaluation set
    subset_rows = None  # the rows of the whole test split that the run's test subset keeps
    if own_data and data_cfg.get("loader") == "streaming":
        raise ConfigError("analyze holds the test images in memory, at the size the run saw them; a streaming run's "
                          "(data.loader=streaming) are resized and cropped per batch by its decoding workers, which "
                          "analyze does not do: `mixdistill eval` scores the run, and --data takes a folder of "
                          "images at its size")
    if own_data:
        split = load_dataset(train_name, "test", root=train_root)
        spec = split.spec  # imagefolder: filled in from the files
        subset, subset_seed = data_cfg.get("test_subset"), data_cfg.get("subset_seed", 0)
        split_size = len(split.labels)
        if subset and not full_test_set:
            subset_rows = stratified_subset(split.labels, subset, subset_seed)  # what Split.subset keeps
            split = split.take(subset_rows)
            notes.append(f"The run's data.test_subset = {subset} (seed {subset_seed}) is used; "
                         "pass --full-test-set for the whole split.")
        eval_set = split_eval_set(split, f"{train_name} (test)")
    else:
        eval_set = load_eval_set(data, root=data_root)
    num_classes = state.get("num_classes") or spec.num_classes
    in_channels = state.get("in_channels") or spec.in_channels or eval_set.images.shape[1]
    if num_classes is None:
        raise ConfigError(f"{ckpt_path} does not record its number of classes")
    # the size the network saw: a streaming run's own crop size, else its dataset's (an image folder's: its files')
    check_compatible(eval_set, in_channels, num_classes, data_cfg.get("image_size") or spec.image_size,
                     state.get("class_names"))
    human = None
    if human_labels:  # a file of the whole split, in its order; a run's test subset takes its own rows of it
        human = load_human_labels(human_labels, len(eval_set.labels) if subset_rows is None else split_size,
                                  num_classes)
        if subset_rows is not None:
            human = human[subset_rows]
    if normalize == "train":
        mean, std = spec.mean, spec.std
    elif normalize == "data":
        pixels = eval_set.images.double().div_(255).transpose(0, 1).flatten(1)  # [C, N*H*W]
        mean, std = tuple(pixels.mean(1).tolist()), tuple(pixels.std(1, correction=0).clamp(min=1e-6).tolist())
    else:
        raise ConfigError(f"normalize must be 'train' or 'data', got {normalize!r}")

    runtime = resolve_runtime(device, "fp32", False, False, device_option="--device")
    dev = runtime.device
    if opened.cfg is not None:  # fp32 throughout (gradients of the attacks, calibration's tails)
        trained = resolve_runtime(device, evaluation_precision(opened.cfg.train.precision, device), False, False,
                                  device_option="--device").precision
        if trained != "fp32":
            notes.append(f"Computed in fp32; the run evaluated itself in {trained} (its summary's accuracy), which "
                         "can put a few images on the other side of a decision: `mixdistill eval` scores it so.")
    model = opened.model(arch, num_classes, in_channels).to(dev)  # as eval: another --arch than recorded refused
    teacher_model = None
    if not no_teacher:
        teacher_model, why = _load_teacher(teacher, teacher_arch, model_cfg, num_classes, in_channels)
        if why:
            notes.append(why)
    if teacher_stats and teacher_model is None:
        raise ConfigError("--teacher-stats needs a teacher: the run has none (or it was not found); pass --teacher")
    loader = DeviceLoader(eval_set.images, eval_set.labels, batch_size=batch_size, mean=mean, std=std,
                          shuffle=False, drop_last=False, device=dev)
    outputs = collect_outputs(model, loader)
    logits, features, labels = outputs["logits"], outputs["features"], eval_set.labels
    probs = torch.softmax(logits.double(), 1)

    metrics: dict = {
        "checkpoint": str(ckpt_path), "arch": arch, "train_dataset": train_name, "eval_set": eval_set.name,
        "samples": len(labels), "num_classes": num_classes, "device": str(dev),
        "normalization": {"from": "training set" if normalize == "train" else "evaluation set",
                          "mean": list(mean), "std": list(std)},
        "epoch": state.get("epoch"), "method": (config.get("method") or {}).get("name"),
        "accuracy": 100.0 * float((logits.argmax(1) == labels).double().mean()),
        "test_loss": float(F.cross_entropy(logits.double(), labels)),
    }
    make_dir(out_dir)
    paths = {"report": out_dir / REPORT_NAME, "metrics": out_dir / METRICS_NAME}

    # calibration
    metrics["calibration"] = calibration(probs, labels, bins)
    fields = {"accuracy": metrics["accuracy"], "test_loss": metrics["test_loss"], "arch": arch,
              "eval_set": eval_set.name, "samples": len(labels), "ece": 100 * metrics["calibration"]["ece"],
              "mce": 100 * metrics["calibration"]["mce"]}

    def title(figure: str, default: str) -> str:
        template = (titles or {}).get(figure)
        return default if template is None else template.format(**fields)

    paths["reliability"] = plot_reliability_diagram(
        probs, labels, out_dir / FIGURES["reliability"], bins,
        title=title("reliability", f"Reliability diagram: {arch} on {eval_set.name}"))

    # class discrimination
    cd = {}
    present = int(torch.unique(labels).numel())
    sources = {"softmax": probs, "features": features}
    for source, vectors in sources.items():
        if vectors is None:
            notes.append(f"{arch} has no forward_features: class discrimination of features skipped.")
            continue
        if present < 2:
            notes.append("Class discrimination needs at least two classes in the evaluation set: skipped.")
            break
        for variant in VARIANTS:
            r = class_discrimination(vectors, labels, variant=variant)
            cd[f"{source}/{variant}"] = {k: r[k] for k in ("cd", "intra", "inter", "dim", "classes")}
    metrics["class_discrimination"] = cd

    # teacher
    teacher_logits = None
    if teacher_model is not None:
        teacher_model.to(dev)
        teacher_logits = collect_outputs(teacher_model, loader)["logits"]
        metrics["teacher"] = {
            "checkpoint": str(teacher or model_cfg.get("teacher_checkpoint")),
            "accuracy": 100.0 * float((teacher_logits.argmax(1) == labels).double().mean()),
            "test_loss": float(F.cross_entropy(teacher_logits.double(), labels)),
            "calibration": calibration(torch.softmax(teacher_logits.double(), 1), labels, bins),
        }
    metrics["smoothness"] = smoothness(logits, teacher_logits)

    # robustness
    robust = []
    for attack, eps_list in (("fgsm", fgsm), ("pgd", pgd)):
        for eps in eps_list or []:
            robust.append(adversarial_accuracy(model, loader, attack=attack, eps=eps, mean=mean, std=std,
                                               steps=pgd_steps, step_size=pgd_step_size,
                                               random_start=pgd_random_start, seed=seed))
    if robust:
        metrics["robustness"] = robust

    # human soft labels
    if human is not None:
        agree = 100.0 * float((probs.argmax(1) == human.argmax(1)).double().mean())
        metrics["human_labels"] = {"file": str(human_labels), "kl": human_label_kl(probs, human),
                                   "accuracy_vs_human_argmax": agree}
        if teacher_logits is not None:
            metrics["human_labels"]["teacher_kl"] = human_label_kl(torch.softmax(teacher_logits.double(), 1), human)

    # t-SNE
    if tsne:
        if features is None:
            notes.append(f"{arch} has no forward_features: t-SNE skipped.")
        else:
            emb, sub_labels, _ = tsne_embedding(features, labels, n=tsne_samples, seed=seed)
            names = CLASS_NAMES.get(train_name) if len(CLASS_NAMES.get(train_name, [])) == num_classes else None
            paths["tsne"] = plot_tsne(emb, sub_labels, out_dir / FIGURES["tsne"], class_names=names,
                                      title=title("tsne", f"t-SNE of {arch} penultimate features, {eval_set.name}"))

    # wang2022 teacher statistics
    if teacher_stats:
        stats = metrics["teacher_stats"] = _teacher_stats(teacher_stats, teacher_model, model, config, train_name,
                                                          train_root, spec, dev, teacher_stats_epochs, seed)
        if stats["groups"] < 2:
            notes.append(f"T. stddev needs two groups of {STEPS_PER_GROUP} training steps; {stats['steps']} steps "
                         f"made {stats['groups']}: raise --teacher-stats-epochs.")

    metrics["notes"] = notes
    metrics["paths"] = {k: str(v) for k, v in paths.items()}
    write_json(paths["metrics"], _jsonable(metrics))
    write_text(paths["report"], render_report(metrics, out_dir))
    for figure, name in FIGURES.items():  # an earlier analysis's figure would sit beside a report not showing it
        if figure not in paths:
            (out_dir / name).unlink(missing_ok=True)
    return metrics


def _load_teacher(teacher, teacher_arch, model_cfg, num_classes, in_channels):
    """(teacher model or None, note or None)."""
    source = teacher or model_cfg.get("teacher_checkpoint")
    if source is None:
        return None, None
    path = Path(source).expanduser()
    if not path.is_file():
        if teacher:
            raise CheckpointError(f"teacher checkpoint not found: {path}")
        return None, (f"The run's teacher checkpoint {source} was not found from here: teacher-student "
                      "agreement skipped (pass --teacher PATH).")
    tstate = open_run(path).state
    tarch = teacher_arch or model_cfg.get("teacher") or tstate.get("arch")
    if tarch is None:
        if teacher:  # asked for: an error, not a note in the report
            raise ConfigError(f"--teacher {path} does not record its architecture: pass --teacher-arch MODEL")
        return None, f"The teacher checkpoint {path} does not record its architecture: pass --teacher-arch."
    return _build_model(tarch, tstate, num_classes, in_channels, "teacher"), None


def _teacher_stats(view, teacher, student, config, train_name, root, spec, dev, epochs, seed) -> dict:
    data_cfg = config.get("data", {}) or {}
    if view == "run":
        aug_cfg = dict(config.get("augment") or {"name": "none"})
        name = aug_cfg.pop("name", "none")
        params = aug_cfg
    else:
        name, params = view, {}
    augment = None
    if name not in ("none", "identity"):
        if name not in AUGMENTATIONS:
            make_augment(name)  # raises UnknownNameError with the closest names
        if "mean" in augment_params(name) and "mean" not in params:
            params.update(mean=tuple(spec.mean), std=tuple(spec.std))
        augment = make_augment(name, **params)
    train = load_dataset(train_name, "train", root=root)
    if data_cfg.get("train_subset"):
        train = train.subset(data_cfg["train_subset"], seed=data_cfg.get("subset_seed", 0))
    padding = data_cfg.get("crop_padding")
    loader = DeviceLoader(train.images, train.labels, batch_size=int(data_cfg.get("batch_size", 64)),
                          mean=spec.mean, std=spec.std, shuffle=True, drop_last=True,
                          crop_padding=spec.crop_padding if padding is None else padding,
                          flip=bool(data_cfg.get("flip", True)), seed=seed, device=dev)
    r = teacher_statistics(teacher, loader, augment, student=student, epochs=epochs, seed=seed)
    r["view"] = name
    return r


# ------------------------------------------------------------------------------------------- output

def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _f(x, digits=4) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{digits}f}"


def _das2020_baseline_cd() -> str:
    r = reference("das2020")["class_discrimination"]["none"]
    return f"CD {r['cd']:.6f}, intra {r['intra']:.6f}, inter {r['inter']:.6f}"


def render_report(m: dict, out_dir: Path) -> str:
    cal = m["calibration"]
    lines = [
        f"# Analysis of {m['arch']}", "",
        f"- checkpoint: `{m['checkpoint']}`" + (f" (epoch {m['epoch']})" if m.get("epoch") is not None else ""),
        f"- trained on: {m['train_dataset']}" + (f"; method: {m['method']}" if m.get("method") else ""),
        f"- evaluated on: {m['eval_set']}, {m['samples']} images, {m['num_classes']} classes; device {m['device']}",
        f"- input normalisation: mean / std of the {m['normalization']['from']} "
        f"({', '.join(f'{v:.4f}' for v in m['normalization']['mean'])} / "
        f"{', '.join(f'{v:.4f}' for v in m['normalization']['std'])})",
        f"- written {_dt.datetime.now().isoformat(timespec='seconds')}", "",
        "## Accuracy and calibration", "",
        "| model | top-1 % | test loss (NLL) | ECE | MCE |", "|---|---|---|---|---|",
        f"| {m['arch']} | {m['accuracy']:.2f} | {_loss(m['test_loss'])} | {cal['ece']:.4f} | {cal['mce']:.4f} |",
    ]
    if "teacher" in m:
        t = m["teacher"]
        lines.append(f"| teacher | {t['accuracy']:.2f} | {_loss(t['test_loss'])} | "
                     f"{t['calibration']['ece']:.4f} | {t['calibration']['mce']:.4f} |")
    lines += ["", f"ECE / MCE over {cal['bins']} equal-width confidence bins (lo, hi]; the test loss is the mean "
                  "cross-entropy in nats, from the logits (as eval's; the calibration record's `nll` clamps each "
                  "probability at 1e-12, at most 27.6 nats an image).", "",
              f"![reliability diagram]({Path(m['paths']['reliability']).name})", ""]

    if m["class_discrimination"]:
        lines += ["## Class discrimination (das2020)", "",
                  "| vectors | variant | CD | intra | inter | D |", "|---|---|---|---|---|---|"]
        for key, r in m["class_discrimination"].items():
            source, variant = key.split("/")
            lines.append(f"| {source} | {variant} | {r['cd']:.6f} | {r['intra']:.6f} | {r['inter']:.6f} | {r['dim']} |")
        lines += ["", "Vectors z-scored per dimension over all samples (population std), times 0.5, then "
                  "compared by cosine. `correct`: intra = mean over distinct pairs of a class, inter = mean over "
                  "all cross pairs; `as_published`: das2020's notebook (intra adds the self-pairs of all but the "
                  "last member; inter sums only pairs whose position in the second class exceeds the position in "
                  "the first but divides by the full count). CD = (mean intra - mean inter) / sqrt(D). "
                  f"das2020's CIFAR-10 LeNet baseline (as_published): {_das2020_baseline_cd()}.", ""]

    s = m["smoothness"]
    lines += ["## Smoothness (choi2023)", "", "| network | logit std (mean / median) | entropy, nats (mean / median) |",
              "|---|---|---|",
              f"| {m['arch']} | {_f(s['logit_std']['mean'])} / {_f(s['logit_std']['median'])} | "
              f"{_f(s['entropy']['mean'])} / {_f(s['entropy']['median'])} |"]
    if "agreement" in s:
        lines.append(f"| teacher | {_f(s['teacher_logit_std']['mean'])} / {_f(s['teacher_logit_std']['median'])} | "
                     f"{_f(s['teacher_entropy']['mean'])} / {_f(s['teacher_entropy']['median'])} |")
        a = s["agreement"]
        lines += ["", f"Teacher-student agreement: top-1 agreement {100 * a['top1_agreement']:.2f}%, "
                  f"mean KL(teacher || student) at T = {a['temperature']:g}: {a['kl']:.4f} nats."]
    lines += ["", "Logit std: unbiased std of each sample's logits over classes; entropy of softmax at T = 1.", ""]

    if "robustness" in m:
        lines += ["## Robustness", "",
                  "| attack | epsilon (pixels) | epsilon x 255 | steps | step size | accuracy % | clean % |",
                  "|---|---|---|---|---|---|---|"]
        for r in m["robustness"]:
            lines.append(f"| {r['attack'].upper()} | {r['eps']:g} | {255 * r['eps']:.2g} | {r.get('steps', 1)} | "
                         f"{_f(r.get('step_size', r['eps']), 5)} | {r['accuracy']:.2f} | {r['clean_accuracy']:.2f} |")
        lines += ["", "L-infinity attacks on the cross-entropy; epsilon in [0, 1] pixel units, divided by the "
                  "normalisation std per channel; images clamped to the valid range. PGD starts at a random point "
                  "of the epsilon-ball unless disabled.", ""]

    if "human_labels" in m:
        h = m["human_labels"]
        lines += ["## Agreement with human soft labels (das2020)", "",
                  f"Mean KL(h || p) against `{h['file']}`: **{h['kl']:.4f}** nats"
                  + (f" (teacher: {h['teacher_kl']:.4f})" if "teacher_kl" in h else "")
                  + f"; top-1 agreement with the human majority label {h['accuracy_vs_human_argmax']:.2f}%.", ""]

    if "teacher_stats" in m:
        t = m["teacher_stats"]
        lines += ["## Teacher statistics (wang2022)", "",
                  "| view | T. stddev | teacher entropy, original | teacher entropy, augmented | steps | groups |",
                  "|---|---|---|---|---|---|",
                  f"| {t['view']} | {_f(t['t_stddev'], 6)} | {_f(t['entropy_original'])} | "
                  f"{_f(t['entropy_augmented'])} | {t['steps']} | {t['groups']} |", "",
                  "T. stddev: the teacher's softmax on each original and augmented training batch, averaged every "
                  "5 steps into one mean vector; the mean over classes of the (unbiased) std of those vectors.", ""]

    if "tsne" in m["paths"]:
        lines += ["## t-SNE of penultimate features", "", f"![t-SNE]({Path(m['paths']['tsne']).name})", ""]
    if m["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in m["notes"]] + [""]
    lines += [f"Machine-readable values: `{METRICS_NAME}`.", ""]
    return "\n".join(lines)


def _loss(value: float) -> str:
    """A loss to four decimals, or in scientific notation where a diverged model's is astronomical."""
    return f"{value:.4f}" if abs(value) < 1e6 else f"{value:.4g}"


def _print_summary(m: dict) -> None:
    from rich.table import Table

    table = Table(title=f"{m['arch']} on {m['eval_set']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("top-1 %", f"{m['accuracy']:.2f}")
    table.add_row("test loss (NLL)", _loss(m["test_loss"]))
    table.add_row(f"ECE ({m['calibration']['bins']} bins)", f"{m['calibration']['ece']:.4f}")
    table.add_row("MCE", f"{m['calibration']['mce']:.4f}")
    for key, r in m["class_discrimination"].items():
        table.add_row(f"CD {key}", f"{r['cd']:.6f}")
    if "agreement" in m["smoothness"]:
        agree = m["smoothness"]["agreement"]["top1_agreement"]
        table.add_row("teacher-student top-1 agreement %", f"{100 * agree:.2f}")
    for r in m.get("robustness", []):
        table.add_row(f"{r['attack'].upper()} eps={r['eps']:g} acc %", f"{r['accuracy']:.2f}")
    if "human_labels" in m:
        table.add_row("KL(human || model)", f"{m['human_labels']['kl']:.4f}")
    if "teacher_stats" in m:
        table.add_row(f"T. stddev ({m['teacher_stats']['view']})", _f(m["teacher_stats"]["t_stddev"], 6))
    console = print_table(table)
    for note in m["notes"]:  # what the report's Notes say: a subset used, something skipped and why
        console.print(f"note: {note}", markup=False, soft_wrap=True, highlight=False)
