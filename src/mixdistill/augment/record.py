"""The record every augmentation returns.

Training code reads the mixed images, which original rows went into each output sample and with what
label weight, and builds its targets from the record; it never re-derives a permutation or a lam.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class MixedBatch:
    """One augmented batch and how it was made.

    images:  [B, C, H, W], same dtype and device as the input batch.
    sources: [B, K] int64, rows of the ORIGINAL input batch that contribute to each output sample.
             K = 1 for views that do not mix (then sources[:, 0] is the row the view was made from).
             Two-source mixes: column 0 is the base / first image, column 1 the partner.
    weights: [B, K] float32, label weight of each source; every row sums to 1.
             Two-source mixes: weights[:, 0] = lam (weight of the base / first image).
    boxes:   optional [B, n, 4] int64, (y1, x1, y2, x2) half-open pixel coordinates
             (rows y1..y2-1, columns x1..x2-1), already clipped to the image; n = number of boxes per
             sample (CutMix 1, Cut^nMix n in paste order, Cutout 1: the hole). A box shared by the batch
             is an expanded view of one [1, n, 4] row.
    info:    small extras (floats or small tensors): e.g. ``lam`` (a float when one lam for the batch),
             ``mixed_fraction`` (PMU), ``scores`` (CutMixPick).
    teacher_logits: optional [B, num_classes] teacher logits of ``images`` when the augmentation already
             ran the teacher (CutMixPick), so the caller need not run it again.
    """

    images: torch.Tensor
    sources: torch.Tensor
    weights: torch.Tensor
    boxes: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    teacher_logits: torch.Tensor | None = None

    @property
    def num_sources(self) -> int:
        return self.sources.shape[1]

    def source_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """[B, K] labels of the sources (``labels`` is the ORIGINAL batch's label vector)."""
        return labels.to(self.sources.device)[self.sources]

    def dominant_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """[B]: the label of each sample's largest-weight source (what train accuracy on a mixed batch is scored
        against)."""
        dominant = self.weights.argmax(1, keepdim=True)
        return labels[self.sources.gather(1, dominant).squeeze(1)]

    def soft_targets(self, labels: torch.Tensor, num_classes: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[B, num_classes]: sum_k weights[:, k] * onehot(labels[sources[:, k]]).

        A class that appears in several sources gets the sum of their weights (scatter_add).
        """
        w = self.weights if dtype is None else self.weights.to(dtype)
        out = torch.zeros(self.sources.shape[0], num_classes, dtype=w.dtype, device=w.device)
        return out.scatter_add_(1, self.source_labels(labels), w)

    def hard_pairs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(index_a, index_b, lam), each [B], for the classic two-source loss
        ``lam * CE(z, labels[index_a]) + (1 - lam) * CE(z, labels[index_b])`` (per sample).

        Defined for K == 2 (and K == 1, where index_b = index_a and lam = 1).
        """
        if self.num_sources == 1:
            a = self.sources[:, 0]
            return a, a, self.weights[:, 0]
        if self.num_sources != 2:
            raise ValueError(f"hard_pairs needs a two-source record, this one has K={self.num_sources}; use soft_targets")
        return self.sources[:, 0], self.sources[:, 1], self.weights[:, 0]
