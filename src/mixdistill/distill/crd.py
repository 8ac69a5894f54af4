"""CRD: Contrastive Representation Distillation (Tian, Krishnan, Isola, ICLR 2020, arXiv 1910.10699).

Follows RepDistiller (github HobbitLong/RepDistiller: ``crd/criterion.py``, ``crd/memory.py``,
``train_student.py``):

- Embedding heads: Linear(pooled feature -> feat_dim) then L2 normalisation, one for the student's and
  one for the teacher's penultimate (pooled) feature. Both are learnable.
- Contrast memory: two banks [num_samples, feat_dim] (student bank, teacher bank), initialised uniform
  in [-stdv, stdv], stdv = 1 / sqrt(feat_dim / 3). For each sample, K + 1 bank rows (column 0 = the
  positive, i.e. the sample's own dataset index; columns 1.. = K negatives) are scored against the
  other network's embedding: ``exp(bank[idx] . v / nce_t) / Z``. The student's embedding is scored
  against the teacher bank and the teacher's embedding against the student bank.
- Z (one per direction) is set from the first batch, ``mean(exp scores) * num_samples``, then fixed
  (it is checkpointed with the banks).
- Loss per direction: RepDistiller's ``ContrastLoss`` (NCE with noise Pn = 1 / num_samples, m = K,
  eps = 1e-7); the CRD loss is the sum of the two directions.
- After scoring, without gradient: ``bank[y] = l2norm(m * bank[y] + (1 - m) * v)`` for each bank with
  its own network's embedding.

Differences from RepDistiller, on purpose:

- Negatives are drawn on the training device per batch, from the global torch RNG (which the trainer
  reseeds every epoch), not by the data loader. ``negatives: uniform`` draws K indices
  uniformly from the whole training set with replacement (a negative may share the positive's class,
  or rarely be the positive itself). ``negatives: other_class`` (the default) is RepDistiller's ``mode='exact'``
  sampler: uniform over the samples of the *other* classes (with replacement; RepDistiller draws without
  replacement when K is below the class-negative count, a negligible difference).
- Scores and the NCE loss are computed in fp32 with autocast off.

Mixing augmentations: the networks see the mixed images; the positive (and the memory slot written)
of each mixed sample is the dataset index of its **source 0** (``info.indices[batch.sources[:, 0]]``),
and the CE term is soft-label CE on the mixed labels. If two outputs share a source-0 index (possible
with CutMixPick), the memory keeps one of their updates.

Methods: ``crd`` = ce_weight * CE + crd_weight * CRD (RepDistiller ``-r 1 -a 0 -b 0.8``);
``crd_kd`` = ce_weight * CE + kd_weight * KL_T + crd_weight * CRD (``-a 1 -b 0.8``; what wang2022
reports as "CRD").
"""

import math
import warnings
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mixdistill.augment import MixedBatch
from mixdistill.distill.base import Distiller, MethodParams, TrainSet, clean_batch, step_output
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.registry import METHODS

NCE_EPS = 1e-7


def nce_loss(scores: torch.Tensor, num_samples: int, eps: float = NCE_EPS) -> torch.Tensor:
    """RepDistiller's ``ContrastLoss`` (CRD paper eq. 18). ``scores``: [B, K + 1] normalised scores,
    column 0 the positive. Returns -(sum_n log D1 + sum_{n,k} log D0) / B with
    D1 = P_pos / (P_pos + K * Pn + eps), D0 = K * Pn / (P_neg + K * Pn + eps), Pn = 1 / num_samples."""
    batch_size, m = scores.shape[0], scores.shape[1] - 1
    m_pn = m / num_samples
    log_d1 = torch.log(scores[:, 0] / (scores[:, 0] + m_pn + eps))
    log_d0 = torch.log(m_pn / (scores[:, 1:] + m_pn + eps))
    return -(log_d1.sum() + log_d0.sum()) / batch_size


class Embed(nn.Module):
    """Linear projection to ``dim_out`` followed by L2 normalisation (RepDistiller's ``Embed``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class ContrastMemory(nn.Module):
    """The two memory banks and their normalisation constants (RepDistiller's ``ContrastMemory``)."""

    def __init__(self, feat_dim: int, num_samples: int, nce_t: float, nce_m: float):
        super().__init__()
        self.num_samples, self.nce_t, self.nce_m = num_samples, nce_t, nce_m
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("student_bank", torch.rand(num_samples, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("teacher_bank", torch.rand(num_samples, feat_dim).mul_(2 * stdv).add_(-stdv))
        # normalisation constants of the student-embedding scores and the teacher-embedding scores; -1 = unset
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        self._means_shared = False  # under torchrun: the first batch's score means averaged over the ranks yet?

    def scores(self, v_s: torch.Tensor, v_t: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, K + 1] each: exp(teacher_bank[idx] . v_s / T) / Z_s and exp(student_bank[idx] . v_t / T) / Z_t. Each
        Z is set once, from the first batch: its scores' mean times n. Under torchrun the mean is over every rank's
        share (their mean: the shares are equal), so every rank divides by the Z one process sets from the whole
        batch; each rank set its own from its share before."""
        out_s = self._exp_scores(self.teacher_bank, v_s, idx)
        out_t = self._exp_scores(self.student_bank, v_t, idx)
        with torch.no_grad():  # on the device, no host sync: Z = mean * n the first time, then unchanged
            means = torch.stack([out_s.detach().mean(), out_t.detach().mean()])
            if not self._means_shared and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(means)  # once per process, on every rank's first batch (a resumed Z stays as it is)
                means /= dist.get_world_size()
            self._means_shared = True
            for z, mean in zip((self.z_student, self.z_teacher), means):
                z.copy_(torch.where(z < 0, mean * self.num_samples, z))
        return out_s / self.z_student.clone(), out_t / self.z_teacher.clone()

    def _exp_scores(self, bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        weights = bank[idx].detach()  # [B, K + 1, D]
        return torch.exp(torch.bmm(weights, v[:, :, None]).squeeze(2) / self.nce_t)

    @torch.no_grad()
    def update(self, v_s: torch.Tensor, v_t: torch.Tensor, y: torch.Tensor) -> None:
        """bank[y] = l2norm(m * bank[y] + (1 - m) * v) for both banks. Under torchrun every rank writes every rank's
        rows (the ranks' shares of a batch are disjoint dataset indices), so the banks stay the one bank a single
        process keeps: each rank updated only its own share, drew negatives from rows the others had moved, and
        the checkpoint kept rank 0's."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            v_s, v_t, y = (_all_gathered(t.detach().contiguous()) for t in (v_s, v_t, y))
        for bank, v in ((self.student_bank, v_s), (self.teacher_bank, v_t)):
            mixed = bank[y] * self.nce_m + v.detach() * (1 - self.nce_m)
            bank.index_copy_(0, y, F.normalize(mixed, dim=1))


def _all_gathered(t: torch.Tensor) -> torch.Tensor:
    """Every rank's ``t`` (the same shape on each: a batch divides by the ranks), concatenated in rank order; a
    16-bit float travels as its bits (gloo has no bf16)."""
    bits = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
    parts = [torch.empty_like(bits) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, bits)
    return torch.cat(parts).view(t.dtype)


class CRDLoss(nn.Module):
    """Embedding heads + contrast memory + the two-directional NCE loss (RepDistiller's ``CRDLoss``),
    with the negatives drawn here, on the device."""

    def __init__(self, s_dim: int, t_dim: int, num_samples: int, feat_dim: int = 128, nce_k: int = 16384,
                 nce_t: float = 0.07, nce_m: float = 0.5, labels: torch.Tensor | None = None):
        super().__init__()
        self.nce_k = nce_k
        self.embed_s = Embed(s_dim, feat_dim)
        self.embed_t = Embed(t_dim, feat_dim)
        self.memory = ContrastMemory(feat_dim, num_samples, nce_t, nce_m)
        # other-class sampling tables (derived from the labels; rebuilt by ``prepare``, never checkpointed)
        self.register_buffer("by_class", None, persistent=False)  # dataset indices sorted by class
        self.register_buffer("class_start", None, persistent=False)  # [C]: first position of each class
        self.register_buffer("class_count", None, persistent=False)  # [C]
        self.register_buffer("labels", None, persistent=False)  # [N]: label of each dataset index
        if labels is not None:
            labels = labels.long()
            counts = torch.bincount(labels)
            self.by_class = torch.argsort(labels, stable=True)
            self.class_start = torch.cumsum(counts, 0) - counts
            self.class_count = counts
            self.labels = labels

    def contrast_indices(self, positives: torch.Tensor) -> torch.Tensor:
        """[B, K + 1] dataset indices drawn on ``positives``' device: column 0 = positives, then K negatives
        (uniform over the training set, or over the other classes when built with labels)."""
        n, shape = self.memory.num_samples, (positives.shape[0], self.nce_k)
        if self.labels is None:
            negatives = torch.randint(n, shape, device=positives.device)
        else:
            cls = self.labels[positives]
            start, count = self.class_start[cls][:, None], self.class_count[cls][:, None]
            r = (torch.rand(shape, device=positives.device) * (n - count)).long().clamp_(max=n - count - 1)
            negatives = self.by_class[r + count * (r >= start)]  # skip the positive's class block
        return torch.cat([positives[:, None], negatives], dim=1)

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor, positives: torch.Tensor,
                contrast_idx: torch.Tensor | None = None) -> torch.Tensor:
        """f_s, f_t: pooled student / teacher features [B, *]; positives: dataset indices [B]."""
        if contrast_idx is None:
            contrast_idx = self.contrast_indices(positives)
        with torch.autocast(f_s.device.type, enabled=False):
            v_s, v_t = self.embed_s(f_s.float()), self.embed_t(f_t.float())
            mem = self.memory
            out_s, out_t = mem.scores(v_s, v_t, contrast_idx)
            loss = nce_loss(out_s, mem.num_samples) + nce_loss(out_t, mem.num_samples)
        mem.update(v_s, v_t, positives)
        return loss


class CRDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0)
    crd_weight: float = Field(0.8, ge=0)
    feat_dim: int = Field(128, gt=0, description="embedding size")
    nce_k: int = Field(16384, gt=0, description="negatives per sample")
    nce_t: float = Field(0.07, gt=0, description="temperature of the scores")
    nce_m: float = Field(0.5, ge=0, le=1, description="momentum of the memory update")
    negatives: Literal["uniform", "other_class"] = Field(
        "other_class", description="uniform over the training set, or over the other classes (RepDistiller's sampler)")


class CRDKDParams(CRDParams):
    kd_weight: float = Field(1.0, ge=0)
    temperature: float = Field(4.0, gt=0)


@METHODS.register("crd")
class CRD(Distiller):
    source = 'Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020 (arXiv 1910.10699)'
    Params = CRDParams
    reads_teacher_features = True

    def prepare(self, data: TrainSet) -> None:
        p = self.params
        if p.nce_k > data.num_samples:
            warnings.warn(f"crd: method.nce_k={p.nce_k} negatives per sample from {data.num_samples} training images "
                          f"repeat each image about {p.nce_k / data.num_samples:.0f} times per step, at the cost of "
                          f"{p.nce_k} (RepDistiller's 16384 is for CIFAR's 50,000); "
                          f"method.nce_k={data.num_samples - 1} or less draws as many different ones", stacklevel=2)
        labels = None
        if p.negatives == "other_class":
            labels = torch.empty(data.num_samples, dtype=torch.long)
            for _, batch_labels, indices in data.clean_batches():
                labels[indices.cpu()] = batch_labels.cpu().long()
        device = next(self.student.parameters()).device
        self.crd = CRDLoss(self.student.feature_dim, self.teacher.feature_dim, data.num_samples, p.feat_dim,
                           p.nce_k, p.nce_t, p.nce_m, labels).to(device)

    def ce_and_crd(self, images, labels, info, batch: MixedBatch | None = None):
        """(student logits, teacher logits, the batch, {"ce", "crd"}) on ``batch``, by default the configured
        augmentation's (possibly mixed) batch."""
        if info.indices is None:
            raise ValueError("CRD needs the dataset indices of the batch (StepInfo.indices)")
        p = self.params
        batch = self.mix(images, labels, info) if batch is None else batch
        with torch.inference_mode():
            teacher_logits, teacher_feats = self.teacher.forward_features(batch.images)
        teacher_logits, f_t = teacher_logits.clone(), teacher_feats["pooled"].clone()
        logits, feats = self.student.forward_features(batch.images)
        positives = info.indices.to(logits.device)[batch.sources[:, 0]]  # source 0 of mixed samples
        crd = self.crd(feats["pooled"], f_t, positives)
        return logits, teacher_logits, batch, {"ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
                                        "crd": p.crd_weight * crd}

    def forward_train(self, images, labels, info):
        logits, _, batch, losses = self.ce_and_crd(images, labels, info)
        return step_output(logits, losses, labels, batch)


@METHODS.register("crd_kd")
class CRDKD(CRD):
    source = 'CRD (Tian et al., ICLR 2020) + KD: what wang2022 (arXiv 2012.02909) reports as "CRD"'
    Params = CRDKDParams

    def forward_train(self, images, labels, info):
        p = self.params
        logits, teacher_logits, batch, losses = self.ce_and_crd(images, labels, info)
        return step_output(logits, {"ce": losses["ce"],
                                    "kd": p.kd_weight * kd_loss(logits, teacher_logits, p.temperature),
                                    "crd": losses["crd"]}, labels, batch)


@METHODS.register("crd_kd_view")
class CRDKDView(CRD):
    """wang2022's "CRD + augmentation": its clean + augmented scheme (``kd_view``) with CRD added on the clean
    batch. ``ce_weight * CE(z_s(x), y) + kd_weight * [KL_T(z_t(x) || z_s(x)) + KL_T(z_t(x') || z_s(x'))]
    + crd_weight * CRD(x)``; the view ``x'`` gets the KL term only (teacher re-run on it, or CutMixPick's pool
    logits), its mixed labels unused; the student forwards ``x`` and ``x'`` separately."""

    source = 'wang2022 (arXiv 2012.02909): its "CRD + CutMixPick"'
    Params = CRDKDParams
    default_augment = "cutmix"

    def forward_train(self, images, labels, info):
        p = self.params
        view = self.mix(images, labels, info)
        logits, teacher_logits, _, losses = self.ce_and_crd(images, labels, info, batch=clean_batch(images))
        teacher_view = self.batch_teacher_logits(view)
        logits_view = self.student(view.images)
        return step_output(logits, {"ce": losses["ce"],
                                    "kd": p.kd_weight * kd_loss(logits, teacher_logits, p.temperature),
                                    "kd_view": p.kd_weight * kd_loss(logits_view, teacher_view, p.temperature),
                                    "crd": losses["crd"]}, labels, view, logits_of_batch=False)
