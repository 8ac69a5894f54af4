"""Shared pieces of the paper studies: the study config files, reference numbers, statistics."""

from __future__ import annotations

import math
import statistics
from importlib import resources
from pathlib import Path

import yaml

from mixdistill.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[3] / "configs" / "studies"


def load_study_config(name: str) -> dict:
    """configs/studies/NAME.yaml: the study's grid and scales, as data."""
    path = CONFIG_DIR / f"{name}.yaml"
    if not path.exists():
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
    if not math.isnan(p) and p < alpha:
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
