"""Calibration: ECE, MCE, NLL and the reliability diagram.

Binning follows Guo et al. 2017 and das2020's ``calibration_utils``: ``bins`` equal-width confidence
intervals ``(k/bins, (k+1)/bins]`` (the first also takes confidence 0), confidence = the top softmax
probability, accuracy = how often the top class is the label.

``ECE = sum_b (n_b / N) * |acc_b - conf_b|``; ``MCE = max_b |acc_b - conf_b|`` over non-empty bins;
``NLL = -(1/N) sum_n log p_n[y_n]`` (natural log; probabilities clamped at 1e-12).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mixdistill.analysis.plots import new_figure, save_figure

DEFAULT_BINS = 15


def _probs_labels(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(np.asarray(probs) if isinstance(probs, np.ndarray) else probs).to(torch.float64)
    y = torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels).to(torch.int64).reshape(-1)
    if p.dim() != 2 or len(p) != len(y) or len(y) == 0:
        raise ValueError(f"need probabilities [N, C] and labels [N] with N > 0, "
                         f"got {list(p.shape)} and {list(y.shape)}")
    if not bool(((p >= 0) & (p <= 1)).all()) or float((p.sum(1) - 1).abs().max()) > 1e-2:  # bf16 softmax: ~1e-3
        raise ValueError("need probabilities (rows in [0, 1] summing to 1): softmax the logits first")
    if int(y.min()) < 0 or int(y.max()) >= p.shape[1]:
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1}, got {int(y.min())}..{int(y.max())}")
    return p, y


def reliability_bins(probs, labels, bins: int = DEFAULT_BINS) -> dict:
    """Per-bin statistics: ``edges`` [bins+1], ``count`` [bins], ``confidence`` and ``accuracy`` [bins]
    (mean confidence and accuracy of the samples in the bin; 0 for an empty bin), all float64 tensors."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    p, y = _probs_labels(probs, labels)
    conf, pred = p.max(1)
    correct = (pred == y).to(torch.float64)
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    # The edges rounded to the probabilities' own precision: a float32 confidence of 0.2 is float32(0.2), above
    # the float64 edge 0.2, and would leave the bin (0, 0.2] it closes.
    given = probs.dtype if torch.is_tensor(probs) else torch.from_numpy(np.asarray(probs)).dtype  # a list: float64
    binning = edges.to(given).to(torch.float64) if given.is_floating_point else edges
    # bucketize(right=False): index i with edges[i] < conf <= edges[i+1] -> bins (lo, hi]
    index = torch.bucketize(conf, binning[1:-1], right=False)
    count = torch.bincount(index, minlength=bins).to(torch.float64)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, conf)
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct)
    safe = count.clamp(min=1)
    return {"edges": edges, "count": count, "confidence": conf_sum / safe, "accuracy": acc_sum / safe}


def expected_calibration_error(probs, labels, bins: int = DEFAULT_BINS) -> float:
    r = reliability_bins(probs, labels, bins)
    return float((r["count"] / r["count"].sum() * (r["accuracy"] - r["confidence"]).abs()).sum())


def maximum_calibration_error(probs, labels, bins: int = DEFAULT_BINS) -> float:
    r = reliability_bins(probs, labels, bins)
    gaps = (r["accuracy"] - r["confidence"]).abs()[r["count"] > 0]
    return float(gaps.max()) if len(gaps) else 0.0


def negative_log_likelihood(probs, labels, eps: float = 1e-12) -> float:
    p, y = _probs_labels(probs, labels)
    return float(-p.gather(1, y[:, None]).clamp(min=eps).log().mean())


def calibration(probs, labels, bins: int = DEFAULT_BINS) -> dict:
    """``{"ece", "mce", "nll", "bins", "accuracy"}`` (accuracy as a fraction)."""
    p, y = _probs_labels(probs, labels)
    return {
        "ece": expected_calibration_error(p, y, bins),
        "mce": maximum_calibration_error(p, y, bins),
        "nll": negative_log_likelihood(p, y),
        "bins": bins,
        "accuracy": float((p.argmax(1) == y).to(torch.float64).mean()),
    }


def plot_reliability_diagram(probs, labels, path: str | Path, bins: int = DEFAULT_BINS,
                             title: str = "Reliability diagram") -> Path:
    """Accuracy per confidence bin (bars) against the diagonal of perfect calibration, the gap to it
    shaded, the share of samples per bin underneath, and the legend with ECE/MCE below that."""
    r = reliability_bins(probs, labels, bins)
    stats = calibration(probs, labels, bins)
    edges = r["edges"].numpy()
    width = 1.0 / bins
    centers = edges[:-1] + width / 2
    count = r["count"].numpy()
    acc, conf = r["accuracy"].numpy(), r["confidence"].numpy()
    filled = count > 0

    fig = new_figure(5.2, 5.6)
    grid = fig.add_gridspec(2, 1, height_ratios=[3.2, 1], hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax.bar(centers[filled], acc[filled], width=width, edgecolor="black", linewidth=0.6, color="#4C72B0",
           label="accuracy in bin")
    low, high = np.minimum(acc, conf)[filled], np.maximum(acc, conf)[filled]
    ax.bar(centers[filled], high - low, bottom=low, width=width, facecolor=(0.77, 0.31, 0.32, 0.25),
           edgecolor="#C44E52", linewidth=0.8, hatch="///", label="gap |accuracy - confidence|")
    ax.scatter(centers[filled], conf[filled], marker="_", s=120, color="black", linewidths=1.6, zorder=4,
               label="mean confidence in bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    hist = fig.add_subplot(grid[1], sharex=ax)
    hist.bar(centers, count / max(1.0, count.sum()), width=width, edgecolor="black", linewidth=0.6, color="#8C8C8C")
    hist.set_xlabel(f"confidence (top softmax probability), {bins} bins")
    hist.set_ylabel("share of\nsamples")
    hist.grid(alpha=0.3)
    # under the figure: inside the axes it covered bars wherever it went (an underconfident model's bars rise
    # above the diagonal into the top left, the only corner an overconfident one leaves free)
    hist.legend(*ax.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, -0.42), ncol=2,
                fontsize=8, frameon=False, title_fontsize=8,
                title=f"ECE {100 * stats['ece']:.2f}%   MCE {100 * stats['mce']:.2f}%")
    return save_figure(fig, path)
