"""wang2022's teacher statistics: teacher entropy under each view, and T. stddev.

T. stddev (README "Analysis"; following the released code's ``check_ce_var``): with the student frozen,
at every step collect the teacher's softmax (T = 1) on the original batch and on the augmented batch; every
``steps_per_group = 5`` steps concatenate all the probability vectors collected in those steps and average
them into one mean vector ``m_g`` [C]; then

    ``T. stddev = (1/C) sum_c std_g(m_g[c])``

over all groups ``g`` of the run (``std`` unbiased, as ``torch.std`` in the released code; a final group of
fewer than ``steps_per_group`` steps is dropped, as there). Groups run across epoch boundaries. wang2022
finds that lower T. stddev predicts lower student test loss.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from mixdistill.analysis.plots import class_colors, new_figure, save_figure

STEPS_PER_GROUP = 5


class TStddev:
    """Streaming T. stddev. Call :meth:`add` with each probability batch [B, C] of a step (the original and
    the augmented batch), then :meth:`end_step`; every ``steps_per_group`` steps the probabilities collected
    are averaged into one mean vector."""

    def __init__(self, steps_per_group: int = STEPS_PER_GROUP, unbiased: bool = True):
        if steps_per_group < 1:
            raise ValueError(f"steps_per_group must be >= 1, got {steps_per_group}")
        self.steps_per_group, self.unbiased = steps_per_group, unbiased
        self._sum: torch.Tensor | None = None
        self._rows = 0
        self._steps = 0
        self.group_means: list[torch.Tensor] = []

    def add(self, probs: torch.Tensor) -> None:
        probs = probs.detach().to(torch.float64).reshape(-1, probs.shape[-1])
        s = probs.sum(0).cpu()
        self._sum = s if self._sum is None else self._sum + s
        self._rows += probs.shape[0]

    def end_step(self) -> None:
        self._steps += 1
        if self._steps == self.steps_per_group:
            if self._rows:
                self.group_means.append(self._sum / self._rows)
            self._sum, self._rows, self._steps = None, 0, 0

    def value(self) -> float:
        """NaN until there are two groups (one with ``unbiased=False``)."""
        need = 2 if self.unbiased else 1
        if len(self.group_means) < need:
            return float("nan")
        means = torch.stack(self.group_means)
        return float(means.std(0, correction=1 if self.unbiased else 0).mean())


def t_stddev(step_probs: Iterable[Sequence[torch.Tensor] | torch.Tensor], steps_per_group: int = STEPS_PER_GROUP,
             unbiased: bool = True) -> dict:
    """T. stddev of a sequence of steps; each step is one probability tensor [B, C] or a list of them
    (original and augmented batch). Returns ``{"t_stddev", "groups", "group_means" [G, C]}``."""
    acc = TStddev(steps_per_group, unbiased)
    for step in step_probs:
        for p in ([step] if isinstance(step, torch.Tensor) else step):
            acc.add(torch.as_tensor(p))
        acc.end_step()
    means = torch.stack(acc.group_means) if acc.group_means else torch.empty(0)
    return {"t_stddev": acc.value(), "groups": len(acc.group_means), "group_means": means}


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Per-row entropy in nats, with 0 log 0 = 0."""
    p = probs.to(torch.float64)
    return -(p * torch.where(p > 0, p.log(), torch.zeros_like(p))).sum(-1)


def _wants_models(augment) -> bool:
    target = getattr(augment, "func", augment)
    try:
        return "teacher" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


@torch.no_grad()
def teacher_statistics(teacher: torch.nn.Module, batches: Iterable, augment: Callable | None, *,
                       student: torch.nn.Module | None = None, steps_per_group: int = STEPS_PER_GROUP,
                       epochs: int = 1, seed: int = 0, max_steps: int | None = None,
                       unbiased: bool = True) -> dict:
    """Run the frozen ``teacher`` (eval mode) over ``batches`` (an iterable of ``(images, labels, ...)``,
    e.g. the training :class:`DeviceLoader`; ``set_epoch`` is called when it has one) for ``epochs``
    passes. At each step the teacher sees the original batch and, if ``augment`` is given
    (``fn(images, labels, *, generator[, teacher, student]) -> MixedBatch``), the augmented batch.

    Returns ``{"t_stddev", "groups", "steps", "entropy_original", "entropy_augmented"}``: the mean
    teacher entropy (nats) over all samples of each view (``entropy_augmented`` is None without
    ``augment``). The student, if given (CutMixPick's student criteria), stays frozen in eval mode.
    """
    was = teacher.training
    teacher.eval()
    s_was = student.training if student is not None else None
    if student is not None:
        student.eval()
    models = {"teacher": teacher, "student": student} if augment is not None and _wants_models(augment) else {}
    generator = torch.Generator().manual_seed(seed)
    acc = TStddev(steps_per_group, unbiased)
    ent = {"original": [0.0, 0], "augmented": [0.0, 0]}
    steps = 0
    try:
        for epoch in range(epochs):
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            for batch in batches:
                images, labels = batch[0], batch[1]
                p = torch.softmax(teacher(images).float(), 1)
                acc.add(p)
                e = entropy(p)
                ent["original"][0] += float(e.sum())
                ent["original"][1] += len(e)
                if augment is not None:
                    view = augment(images, labels, generator=generator, **models)
                    logits = view.teacher_logits if view.teacher_logits is not None else teacher(view.images)
                    p = torch.softmax(logits.float(), 1)
                    acc.add(p)
                    e = entropy(p)
                    ent["augmented"][0] += float(e.sum())
                    ent["augmented"][1] += len(e)
                acc.end_step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            if max_steps is not None and steps >= max_steps:
                break
    finally:
        teacher.train(was)
        if student is not None:
            student.train(s_was)
    return {
        "t_stddev": acc.value(),
        "groups": len(acc.group_means),
        "steps": steps,
        "entropy_original": ent["original"][0] / max(1, ent["original"][1]),
        "entropy_augmented": ent["augmented"][0] / ent["augmented"][1] if ent["augmented"][1] else None,
    }


EXACT_RANK_POINTS = 9  # exact Spearman p up to this many points (9! = 362,880 orders; wang2022 ranks nine views)


def correlations(x: Sequence[float], y: Sequence[float]) -> dict:
    """Pearson, Spearman and Kendall coefficients with their two-sided p-values:
    ``{"pearson": (r, p), "spearman": (rho, p), "kendall": (tau, p)}`` (NaN with fewer than 3 points; Spearman's
    and Kendall's p exact at few points, as :func:`spearman` and scipy's ``kendalltau`` give them)."""
    from scipy import stats

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        nan = (float("nan"), float("nan"))
        return {"pearson": nan, "spearman": nan, "kendall": nan}
    out = {"spearman": spearman(x, y)}
    for name, fn in (("pearson", stats.pearsonr), ("kendall", stats.kendalltau)):
        r = fn(x, y)
        out[name] = (float(r[0]), float(r[1]))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p: exact (over every order of ``y``) up to ``EXACT_RANK_POINTS`` points,
    else scipy's t approximation, which understates p at so few points (0.0053 for 0.0083 at nine)."""
    import itertools

    from scipy import stats

    result = stats.spearmanr(x, y)
    if len(x) > EXACT_RANK_POINTS:
        return float(result.statistic), float(result.pvalue)
    # rho is Pearson's r of the ranks; every order of y's ranks keeps their mean and spread, so rho moves with the
    # centred ranks' dot product alone
    rx, ry = stats.rankdata(x) - (len(x) + 1) / 2, stats.rankdata(y) - (len(y) + 1) / 2
    orders = np.array(list(itertools.permutations(range(len(y)))), dtype=np.int8)
    dots = ry[orders] @ rx
    return float(result.statistic), float(np.mean(np.abs(dots) >= abs(float(ry @ rx)) - 1e-9))


def plot_tstddev_vs_loss(t_stddevs: Sequence[float], test_losses: Sequence[float], names: Sequence[str],
                         path: str | Path, title: str = "Teacher T. stddev vs student test loss") -> Path:
    """Scatter of T. stddev (x) against student test loss (y), one labelled point per augmentation, a
    least-squares line, and the Pearson / Spearman / Kendall coefficients in the legend."""
    x, y = np.asarray(t_stddevs, dtype=float), np.asarray(test_losses, dtype=float)
    c = correlations(x, y)
    fig = new_figure(6.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    colors = class_colors(len(x))
    for i, name in enumerate(names):
        ax.scatter(x[i], y[i], s=55, color=colors[i], edgecolor="black", linewidth=0.6, zorder=3)
        ax.annotate(name, (x[i], y[i]), textcoords="offset points", xytext=(6, 5), fontsize=8)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
        xs = np.linspace(x.min(), x.max(), 50)
        label = (f"least squares fit\nPearson r = {c['pearson'][0]:.2f} (p = {c['pearson'][1]:.2g})\n"
                 f"Spearman ρ = {c['spearman'][0]:.2f} (p = {c['spearman'][1]:.2g})\n"
                 f"Kendall τ = {c['kendall'][0]:.2f} (p = {c['kendall'][1]:.2g})")
        ax.plot(xs, slope * xs + intercept, "--", color="gray", linewidth=1, label=label)
        ax.legend(loc="best", fontsize=8)
    pad_x = 0.15 * (np.ptp(x) or abs(x.mean()) or 1.0)
    pad_y = 0.15 * (np.ptp(y) or abs(y.mean()) or 1.0)
    ax.set_xlim(x.min() - pad_x, x.max() + pad_x)
    ax.set_ylim(y.min() - pad_y, y.max() + pad_y)
    ax.set_xlabel("teacher T. stddev (mean over classes of the std of 5-step mean probabilities)")
    ax.set_ylabel("student test loss (cross-entropy)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
