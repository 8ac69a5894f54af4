"""choi2023's smoothness measures and the t-SNE of penultimate features.

- logit std: per sample, the unbiased standard deviation of its logits over the classes (the quantity
  MIXSTD divides by); mixup-trained networks have smaller, smoother logits.
- output entropy: per sample, the entropy (nats) of the softmax at T = 1.
- teacher-student agreement: the share of samples whose top-1 classes agree, and the mean
  ``KL(softmax(z_t / T) || softmax(z_s / T))`` (no T^2) over samples, T = 1 by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mixdistill.analysis.plots import class_colors, new_figure, save_figure
from mixdistill.analysis.teacher_stats import entropy

TSNE_SAMPLES = 2000
# label names for the legends of the datasets whose classes are fixed
CLASS_NAMES = {
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
}


def logit_std(logits: torch.Tensor) -> torch.Tensor:
    """[N]: unbiased std of each sample's logits over the classes."""
    return logits.to(torch.float64).std(1, correction=1)


def output_entropy(logits: torch.Tensor) -> torch.Tensor:
    """[N]: entropy (nats) of softmax(logits)."""
    return entropy(torch.softmax(logits.to(torch.float64), 1))


def agreement(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> dict:
    """``{"top1_agreement": fraction, "kl": mean KL(p_t || p_s) at temperature T (no T^2)}``."""
    s, t = student_logits.to(torch.float64), teacher_logits.to(torch.float64)
    if s.shape != t.shape:
        raise ValueError(f"student and teacher logits differ in shape: {list(s.shape)} vs {list(t.shape)}")
    log_ps = F.log_softmax(s / temperature, 1)
    log_pt = F.log_softmax(t / temperature, 1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(1)
    return {"top1_agreement": float((s.argmax(1) == t.argmax(1)).to(torch.float64).mean()),
            "kl": float(kl.mean()), "temperature": temperature}


def _summary(x: torch.Tensor) -> dict:
    return {"mean": float(x.mean()), "std": float(x.std()) if len(x) > 1 else 0.0, "median": float(x.median())}


def smoothness(logits: torch.Tensor, teacher_logits: torch.Tensor | None = None, temperature: float = 1.0) -> dict:
    """Summaries (mean, std, median over samples) of logit std and output entropy; with
    ``teacher_logits`` also the teacher's and the teacher-student agreement."""
    out = {"logit_std": _summary(logit_std(logits)), "entropy": _summary(output_entropy(logits))}
    if teacher_logits is not None:
        out["teacher_logit_std"] = _summary(logit_std(teacher_logits))
        out["teacher_entropy"] = _summary(output_entropy(teacher_logits))
        out["agreement"] = agreement(logits, teacher_logits, temperature)
    return out


def subsample(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of ``min(n, n_total)`` samples drawn without replacement (all when n >= n_total)."""
    if n >= n_total:
        return torch.arange(n_total)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=g)[:n].sort().values


def tsne_embedding(features, labels, n: int = TSNE_SAMPLES, seed: int = 0, perplexity: float = 30.0,
                   threads: int | None = 1):
    """2-D t-SNE (scikit-learn, PCA initialisation) of a random subsample of ``n`` rows of ``features``.
    Returns ``(embedding [n, 2] numpy, labels [n] numpy, indices [n])``.

    ``threads`` caps the OpenMP threads of scikit-learn's Barnes-Hut gradient (None: its default). The
    default 1 is deliberate: next to PyTorch's OpenMP pool on a busy machine, the default spin-waiting
    threads made a 60-point t-SNE take 40-90 s instead of about 1 s (2-core CPU, measured).
    """
    import contextlib

    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    f = torch.as_tensor(features).to(torch.float32)
    y = torch.as_tensor(labels).reshape(-1)
    idx = subsample(len(f), n, seed)
    x = f[idx].numpy()
    perplexity = min(perplexity, max(1.0, (len(x) - 1) / 3))
    limit = threadpool_limits(threads, user_api="openmp") if threads else contextlib.nullcontext()
    with limit:
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                   random_state=seed).fit_transform(x)
    return emb, y[idx].numpy(), idx


def plot_tsne(embedding, labels, path: str | Path, class_names: Sequence[str] | None = None,
              title: str = "t-SNE of penultimate features") -> Path:
    """Scatter of a 2-D embedding coloured by class, with a legend (up to 20 classes; a colour bar beyond)."""
    emb, y = np.asarray(embedding), np.asarray(labels)
    classes = np.unique(y)
    fig = new_figure(6.4, 5.4)
    ax = fig.add_subplot(1, 1, 1)
    colors = class_colors(len(classes))
    for color, c in zip(colors, classes):
        sel = y == c
        name = class_names[int(c)] if class_names is not None and int(c) < len(class_names) else str(int(c))
        ax.scatter(emb[sel, 0], emb[sel, 1], s=6, color=color, alpha=0.75, linewidths=0, label=name,
                   rasterized=True)
    if len(classes) <= 20:
        ax.legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, title_fontsize=8,
                  markerscale=2.5, frameon=False)
    ax.set_xlabel("t-SNE 1")
    ax.set_ylabel("t-SNE 2")
    ax.set_title(f"{title} ({len(y)} samples)")
    ax.set_xticks([])
    ax.set_yticks([])
    return save_figure(fig, path)
