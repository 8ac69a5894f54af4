"""Class discrimination (das2020), computed in O(N * D) from sums of unit vectors.

Definition (README "Analysis"), for vectors ``v_n`` (softmax outputs or penultimate features) with true
labels ``y_n``:

1. z-score every dimension over all N samples with the population std and multiply by 0.5:
   ``z_n = 0.5 * (v_n - mean) / std``. A dimension whose std is 0 becomes 0 (numpy would give NaN).
   The factor 0.5 does not change any cosine; it is kept because the definition has it.
2. ``u_n = z_n / |z_n|`` (cosine similarity is a dot product of unit vectors). A zero row stays zero,
   so its cosine with anything is 0 (the notebook would give NaN).
3. Group by true label. Classes are the labels that occur, in increasing order; K of them. Within a class
   the members keep their dataset order (position 0, 1, ..., n_c - 1), which matters for the
   ``as_published`` inter-class term only.

``variant="correct"`` (the default):

- ``intra(c) = 2 / (n_c (n_c - 1)) * sum_{i<j} u_i . u_j``  (mean over distinct pairs of class c)
  ``= (|S_c|^2 - Q_c) / (n_c (n_c - 1))`` with ``S_c = sum_{i in c} u_i`` and ``Q_c = sum_{i in c} |u_i|^2``.
- ``inter(c, c') = 1 / (n_c n_c') * sum_{i in c, j in c'} u_i . u_j = S_c . S_c' / (n_c n_c')``.
- ``CD = (mean_c intra(c) - mean_{c<c'} inter(c, c')) / sqrt(D)``; the first mean runs over the classes
  with at least two samples, the second over all K (K - 1) / 2 class pairs.

``variant="as_published"`` is das2020's ``discrim.ipynb`` loop for loop:

- intra: ``for i in range(n - 1): for j in range(i, n)`` sums the distinct pairs **and the self-pairs of
  positions 0 .. n - 2** (n - 1 of them, each cosine 1), then multiplies by ``2 / (n (n - 1))``:
  ``intra_pub(c) = 2 / (n_c (n_c - 1)) * (sum_{i<j} u_i . u_j + sum_{i <= n_c - 2} |u_i|^2)``
  ``= intra(c) + 2 / n_c`` when no row is zero.
- inter, for each class pair c < c' (c the lower label): ``for i in range(n_c): for j in range(i + 1, n_c')``
  sums only the pairs whose position j in class c' exceeds the position i in class c, and divides by the
  full count: ``inter_pub(c, c') = 1 / (n_c n_c') * sum_i u^c_i . (sum_{j > i} u^c'_j)``; about half the
  true mean. Computed with per-class suffix sums, O(N * D) in total (memory-bounded blocks of positions).
- ``CD`` as above, with these two terms.

Not reproduced: the notebook divides the sum of the intra terms by the number of distinct *predicted*
classes (``len(set(argmax))``) instead of the number of true classes; that differs only when some class is
never predicted. Here the intra mean is always over the true classes (with at least two samples).
"""

from __future__ import annotations

import math

import numpy as np
import torch

VARIANTS = ("correct", "as_published")
# elements of one [K, block, D] float64 block in the as_published inter computation (~160 MB)
_BLOCK_ELEMENTS = 20_000_000


def _as_tensor(x, dtype) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    return torch.as_tensor(x).to(dtype)


def zscore_unit(vectors: torch.Tensor) -> torch.Tensor:
    """Steps 1 and 2: ``0.5 * (v - mean) / std`` per dimension (population std; zero-std dimensions -> 0),
    then each row divided by its L2 norm (zero rows stay zero). float64."""
    v = _as_tensor(vectors, torch.float64)
    std, mean = torch.std_mean(v, 0, correction=0)
    scale = torch.where(std > 0, 0.5 / std, torch.zeros_like(std))
    z = (v - mean) * scale
    norm = z.norm(dim=1, keepdim=True)
    return z * torch.where(norm > 0, 1 / norm, torch.zeros_like(norm))


def _positions(labels: torch.Tensor, K: int) -> torch.Tensor:
    """Position of each sample inside its class, in dataset order (labels already remapped to 0..K-1)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=K)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.empty_like(labels)
    pos[order] = torch.arange(len(labels)) - starts[labels[order]]
    return pos


def _published_inter_sum(u: torch.Tensor, cls: torch.Tensor, pos: torch.Tensor, counts: torch.Tensor,
                         totals: torch.Tensor) -> float:
    """``sum_{c<c'} inter_pub(c, c')`` in O(N * D): positions are processed in blocks of a padded
    [K, block, D] tensor; the suffix sums of class c' come from its total minus a running prefix sum, and
    the sum over c' > c is a reversed cumulative sum over the class axis."""
    K, D = totals.shape
    nmax = int(counts.max())
    block = max(1, min(nmax, _BLOCK_ELEMENTS // max(1, K * D)))
    n = counts.to(torch.float64)[:, None, None]
    prefix = torch.zeros(K, D, dtype=torch.float64)  # sum of u at positions < start, per class
    total = torch.zeros((), dtype=torch.float64)
    for start in range(0, nmax, block):
        stop = min(nmax, start + block)
        sel = (pos >= start) & (pos < stop)
        padded = torch.zeros(K, stop - start, D, dtype=torch.float64)
        padded[cls[sel], pos[sel] - start] = u[sel]
        cum = prefix[:, None, :] + padded.cumsum(1)  # sum over positions <= i
        after = (totals[:, None, :] - cum) / n  # sum_{j > i} u_j / n_c'
        later = after.flip(0).cumsum(0).flip(0)  # later[c] = sum_{c' >= c}
        total += ((padded[:-1] / n[:-1]) * later[1:]).sum()  # pairs c < c'
        prefix = cum[:, -1, :]
    return float(total)


def class_discrimination(vectors, labels, variant: str = "correct") -> dict:
    """das2020's class discrimination of ``vectors`` [N, D] grouped by ``labels`` [N] (see the module
    docstring for the exact definitions of both variants).

    Returns ``{"cd", "intra", "inter", "variant", "dim", "classes", "intra_per_class"}``: ``intra`` is
    the mean over classes of intra(c), ``inter`` the mean over class pairs of inter(c, c'),
    ``intra_per_class`` a float64 tensor [K] (NaN for a class with one sample). Inputs may be torch
    tensors or numpy arrays; everything is computed in float64.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    v = _as_tensor(vectors, torch.float64)
    y = _as_tensor(labels, torch.int64).reshape(-1)
    if v.dim() != 2 or len(v) != len(y):
        raise ValueError(f"need vectors [N, D] and labels [N], got {list(v.shape)} and {list(y.shape)}")
    classes, cls = torch.unique(y, sorted=True, return_inverse=True)
    K, (N, D) = len(classes), v.shape
    if K < 2:
        raise ValueError("class discrimination needs at least two classes")
    u = zscore_unit(v)
    counts = torch.bincount(cls, minlength=K)
    onehot = torch.nn.functional.one_hot(cls, K).to(torch.float64).T  # [K, N]
    sums = onehot @ u  # S_c
    sq = (u * u).sum(1)
    squares = onehot @ sq  # Q_c
    n = counts.to(torch.float64)
    pair_count = n * (n - 1)
    distinct = (sums * sums).sum(1) - squares  # 2 * sum_{i<j} u_i . u_j

    if variant == "correct":
        intra_c = distinct / pair_count
        scaled = sums / n[:, None]  # S_c / n_c
        inter_sum = 0.5 * (scaled.sum(0).dot(scaled.sum(0)) - (scaled * scaled).sum())
    else:
        pos = _positions(cls, K)
        last = pos == (counts[cls] - 1)  # the notebook's i loop stops before the last position
        self_pairs = onehot @ torch.where(last, 0.0, sq)
        intra_c = (distinct + 2 * self_pairs) / pair_count
        inter_sum = _published_inter_sum(u, cls, pos, counts, sums)

    intra_c = torch.where(counts >= 2, intra_c, torch.full_like(intra_c, float("nan")))
    valid = counts >= 2
    if not bool(valid.any()):
        raise ValueError("class discrimination needs a class with at least two samples")
    intra = float(intra_c[valid].mean())
    inter = float(inter_sum) / (K * (K - 1) / 2)
    return {
        "cd": (intra - inter) / math.sqrt(D),
        "intra": intra,
        "inter": inter,
        "variant": variant,
        "dim": D,
        "classes": K,
        "intra_per_class": intra_c,
    }
