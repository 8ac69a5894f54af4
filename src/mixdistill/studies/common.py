"""Shared pieces of the paper studies: the study config files, reference numbers, statistics."""

from __future__ import annotations

import math
import statistics
from importlib import resources
from pathlib import Path

import yaml

from mixdistill.errors import ConfigError

CONFIG_DIR = resources.files("mixdistill").joinpath("resources/studies")  # shipped with the package


def load_study_config(name: str) -> dict:
    """src/mixdistill/resources/studies/NAME.yaml: the study's grid and scales, as data."""
    path = CONFIG_DIR.joinpath(f"{name}.yaml")
    if not path.is_file():
        raise ConfigError(f"study config not found: {path}")
    return yaml.safe_load(path.read_text())


def scale_config(spec: dict, scale: str) -> dict:
    if scale not in spec["scales"]:
        raise ConfigError(f"unknown scale '{scale}'; this study has: {', '.join(spec['scales'])}")
    return spec["scales"][scale]


def reference(name: str) -> dict:
    text = resources.files("mixdistill").joinpath("resources/reference_results.yaml").read_text()
    return yaml.safe_load(text)[name]


def mean_std(values, digits: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def welch(a, b) -> tuple[float, float]:
    """(mean(a) - mean(b), two-sided Welch t-test p-value); p is nan with fewer than 2 values a side."""
    diff = statistics.mean(a) - statistics.mean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return diff, p


def verdict(diff: float, p: float, sign: int = 1, alpha: float = 0.05) -> str:
    """Whether an effect the paper claims (its direction: ``sign``) shows in ours: only a significant
    effect in the claimed direction counts as reproduced."""
    if diff * sign > 0:
        if math.isnan(p):
            return "same direction, untested (fewer than 2 seeds)"
        return f"reproduced (p < {alpha})" if p < alpha else f"same direction, not significant (p ≥ {alpha})"
    if math.isnan(p):
        return "NOT reproduced, untested (fewer than 2 seeds)"
    if p < alpha:
        return "NOT reproduced (significant opposite effect)"
    return "NOT reproduced"


def fmt_p(p: float) -> str:
    """n/a: fewer than two seeds a side, or no variance at all."""
    return "n/a" if math.isnan(p) else f"{p:.3g}"


def test_outputs(run_dir: str | Path, data_root: str | None = None):
    """(softmax probabilities [N, C], penultimate features [N, D], labels [N]) of a finished run's
    final model on its test set (CPU, fp32)."""
    import torch

    from mixdistill.data import DeviceLoader, load_dataset
    from mixdistill.engine.checkpoint import load_checkpoint
    from mixdistill.models import create_model
    from mixdistill.models.checkpoint import load_weights

    state = load_checkpoint(Path(run_dir) / "last.pt")
    data = state["config"]["data"]
    split = load_dataset(data["dataset"], "test", root=data_root or data.get("root"))
    if data.get("test_subset"):
        split = split.subset(data["test_subset"], seed=data.get("subset_seed", 0))
    model = create_model(state["arch"], num_classes=state["num_classes"], in_channels=state["in_channels"])
    load_weights(model, state)
    model.eval()
    loader = DeviceLoader(split.images, split.labels, batch_size=1000, mean=split.spec.mean, std=split.spec.std,
                          shuffle=False, drop_last=False)
    probs, feats = [], []
    with torch.inference_mode():
        for images, _ in loader:
            logits, f = model.forward_features(images)
            probs.append(torch.softmax(logits.float(), 1))
            feats.append(f["pooled"].float())
    return torch.cat(probs), torch.cat(feats), split.labels


def plot_accuracy_bars(groups: dict[str, list[float]], path: str | Path, title: str,
                       paper: dict[str, float] | None = None, ylabel: str = "test top-1 %") -> Path:
    """One bar per group (mean over seeds), an error bar of one std, every seed as a dot, and the paper's
    value as a black tick where ``paper`` gives one."""
    import numpy as np

    from mixdistill.analysis.plots import class_colors, new_figure, save_figure

    names = list(groups)
    fig = new_figure(max(4.5, 1.0 + 0.75 * len(names)), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    colors = class_colors(len(names))
    for i, name in enumerate(names):
        values = np.asarray([v for v in groups[name] if v is not None], dtype=float)
        if len(values) == 0:
            continue
        ax.bar(i, values.mean(), color=colors[i], alpha=0.75, yerr=values.std(ddof=1) if len(values) > 1 else None,
               capsize=3)
        ax.scatter(np.full(len(values), i) + np.linspace(-0.15, 0.15, len(values)), values, s=10, color="black",
                   zorder=3)
        if paper and name in paper:
            ax.plot([i - 0.35, i + 0.35], [paper[name]] * 2, color="black", linewidth=2, zorder=4,
                    label="paper" if i == min(j for j, n in enumerate(names) if n in paper) else None)
    every = [v for name in names for v in groups[name] if v is not None] + list((paper or {}).values())
    if every:
        low, high = min(every), max(every)
        pad = max(0.5, 0.15 * (high - low))
        ax.set_ylim(low - pad, high + pad)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if paper:
        ax.legend(fontsize=8)
    return save_figure(fig, path)
