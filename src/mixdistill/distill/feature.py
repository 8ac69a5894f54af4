"""The shared base of the feature / relation distillers of RepDistiller (github HobbitLong/RepDistiller,
``distiller_zoo/``, wired in ``train_student.py`` and ``helper/loops.py``): FitNets (``fitnet``), AT (``at``),
SP (``sp``), PKT (``pkt``), RKD (``rkd``), NST (``nst``), CC (``cc``), VID (``vid``).

Loss, as RepDistiller's ``loss = gamma * CE + alpha * KL_T + beta * loss_kd``::

    ce_weight * CE + kd_weight * KL_T (only when kd_weight > 0) + feat_weight * <method's feature loss>

The defaults are RepDistiller's CIFAR-100 settings (``scripts/run_cifar_distill.sh``: ``-r 1 -a 0 -b <beta>``):
ce_weight 1, kd_weight 0 and feat_weight = beta: fitnet 100, at 1000, sp 3000, cc 0.02, vid 1, rkd 1,
pkt 30000, nst 50. ``kd_weight > 0`` (with ``temperature``, default 4 as RepDistiller's ``--kd_T``) adds
RepDistiller's ``-a``, its "+KD" variants.

Which features. RepDistiller's ``feat`` list is ``[stem output, stage 1, stage 2, stage 3(, stage 4), pooled]``;
here ``forward_features`` gives ``maps`` (the stage outputs, for the RepDistiller model family exactly its
``feat[:-1]``, same order and shapes) and ``pooled`` (its ``feat[-1]``). So ``feat[i]`` is ``maps[i]`` for
``i < len(maps)``, ``feat[-1]`` is ``pooled``, ``feat[-2]`` is ``maps[-1]`` and ``feat[1:-1]`` is ``maps[1:]``.
Each method's docstring says which it uses. The maps are what each model records (for the RepDistiller family
the outputs RepDistiller returns with ``preact=False``).

Mixing augmentations: the teacher sees the same (possibly mixed) images as the student (its forward under
``torch.inference_mode()`` in eval mode, outputs cloned into ordinary tensors), the feature loss compares the two
networks on those images, and CE is soft-label CE on the record's mixed labels. Batch-relational losses (SP, PKT,
RKD, CC) relate the mixed samples of the batch to one another. The feature loss is computed in fp32 with autocast
off, whatever the training precision.

Methods that own learnable modules (FitNets' regressor, CC's embeddings, VID's regressors) build them in
``prepare`` from the map shapes of one probe forward (two images of the first clean training batch, both networks
in eval mode, no gradient), as RepDistiller's ``train_student.py`` does with a random [2, 3, 32, 32] batch; being
submodules they are in ``learnable_parameters()`` (so also under the optimiser's weight decay, as RepDistiller's
``trainable_list``) and in checkpoints.
"""

from __future__ import annotations

import torch
from pydantic import Field

from mixdistill.distill.base import Distiller, MethodParams, TrainSet, step_output
from mixdistill.losses import kd_loss, mixed_cross_entropy


class FeatureParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="RepDistiller's -r (gamma)")
    kd_weight: float = Field(0.0, ge=0, description="RepDistiller's -a (alpha): weight of KL_T; 0 = no KD term")
    temperature: float = Field(4.0, gt=0, description="KD temperature (RepDistiller's --kd_T)")
    feat_weight: float = Field(1.0, ge=0, description="RepDistiller's -b (beta): weight of the feature loss")


class FeatureDistiller(Distiller):
    """``forward_train`` as the module docstring says; a subclass gives ``select`` (the tensors it compares,
    from a ``forward_features`` dict) and ``feature_loss`` (student list, teacher list -> scalar)."""

    Params = FeatureParams
    reads_teacher_features = True

    def select(self, feats: dict) -> list[torch.Tensor]:
        """The features the loss compares, from ``{"pooled", "maps"}`` (the same choice for both networks)."""
        raise NotImplementedError

    def feature_loss(self, f_s: list[torch.Tensor], f_t: list[torch.Tensor]) -> torch.Tensor:
        """The method's loss on fp32 features (autocast off), before ``feat_weight``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------- prepare

    @torch.no_grad()
    def probe_features(self, data: TrainSet) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(student, teacher) ``select``-ed features of two clean training images, both networks in eval mode
        (no BatchNorm statistic moves); training modes are restored."""
        images = next(iter(data.clean_batches()))[0][:2]
        modes = [(m, m.training) for m in (self.student, self.teacher)]
        try:
            self.student.eval()
            self.teacher.eval()
            _, s_feats = self.student.forward_features(images)
            _, t_feats = self.teacher.forward_features(images)
        finally:
            for m, mode in modes:
                m.train(mode)
        return [f.float() for f in self.select(s_feats)], [f.float() for f in self.select(t_feats)]

    def module_device(self) -> torch.device:
        return next(self.student.parameters()).device

    # ------------------------------------------------------------------------------------------- step

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        with torch.inference_mode():
            t_logits, t_raw = self.teacher.forward_features(batch.images)
            t_selected = self.select(t_raw)
        t_logits, t_selected = t_logits.clone(), [f.clone() for f in t_selected]
        logits, s_feats = self.student.forward_features(batch.images)
        f_s = self.select(s_feats)
        with torch.autocast(logits.device.type, enabled=False):
            feat = self.feature_loss([f.float() for f in f_s], [f.float() for f in t_selected])
        losses = {"ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch)}
        if p.kd_weight > 0:
            losses["kd"] = p.kd_weight * kd_loss(logits, t_logits, p.temperature)
        losses[self.loss_name] = p.feat_weight * feat
        return step_output(logits, losses, labels, batch)

    @property
    def loss_name(self) -> str:
        return getattr(type(self), "registry_name", "feat")


def stage_maps(feats: dict, first: int = 1) -> list[torch.Tensor]:
    """RepDistiller's ``feat[first:-1]``: the stage maps from index ``first`` on. Methods that pair them stage by
    stage (AT, NST, VID) pair them as RepDistiller's ``zip`` does: the first min(n_student, n_teacher)."""
    return list(feats["maps"][first:])
