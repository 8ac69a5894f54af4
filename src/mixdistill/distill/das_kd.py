"""das2020's KD: ``g * T^2 * KL + (1 - g) * CE`` at T = 20, g = 0.5, student on un-augmented images.

Their code uses PyTorch's default ``mean`` reduction for the KL, the mean over all B*C elements
(1/C of the batch mean); ``kl_reduction: batchmean`` gives the usual scaling. Because the student's
inputs are fixed, the teacher's logits are computed once for the whole training set in ``prepare``
and looked up by sample index every step (``cache_teacher``, default on; it requires a loader without
crop/flip and no augmentation, and says so otherwise).
"""

from typing import Literal

import torch
from pydantic import Field

from mixdistill.data.datasets import DATASETS
from mixdistill.distill.base import Distiller, MethodParams, TrainSet, step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import cross_entropy, kl_div, mixed_cross_entropy
from mixdistill.models.inference import forward_in_chunks
from mixdistill.registry import METHODS

CACHE_NEEDS_FIXED_INPUTS = ("das_kd caches teacher logits, which needs fixed inputs: set data.crop_padding=0 "
                            "data.flip=false augment=none, or method.cache_teacher=false")


class DasKDParams(MethodParams):
    temperature: float = Field(20.0, gt=0)
    gamma: float = Field(0.5, ge=0, le=1, description="weight g of the KL term; CE gets 1 - g")
    kl_reduction: Literal["mean", "batchmean"] = "mean"
    cache_teacher: bool = True


@METHODS.register("das_kd")
class DasKD(Distiller):
    source = ('das2020: Das, Massa, Kulkarni, Rekatsinas, "An Empirical Analysis of the Impact of Data '
              'Augmentation on Knowledge Distillation", 2020 (arXiv 2006.03810)')
    Params = DasKDParams

    @classmethod
    def check_config(cls, cfg) -> None:
        if not cfg.method.params().cache_teacher:
            return

        spec = DATASETS.get(cfg.data.dataset)
        padding = cfg.data.crop_padding if cfg.data.crop_padding is not None else (spec.crop_padding if spec else 1)
        if padding or cfg.data.flip or cfg.augment.name != "none" or cfg.data.loader == "streaming":
            raise ValueError(CACHE_NEEDS_FIXED_INPUTS)

    def __init__(self, student, teacher, params):
        super().__init__(student, teacher, params)
        self.register_buffer("cached_logits", None, persistent=False)  # recomputed, never checkpointed

    def prepare(self, data: TrainSet) -> None:
        if not self.params.cache_teacher:
            return
        if data.augmented_by_loader or self.augment is not None:
            raise ConfigError(CACHE_NEEDS_FIXED_INPUTS)
        cache = None
        for images, _, indices in data.clean_batches():
            logits = forward_in_chunks(self.teacher_logits, images).float()
            if cache is None:
                cache = torch.empty(data.num_samples, logits.shape[1], device=logits.device)
            cache[indices] = logits
        self.cached_logits = cache

    def forward_train(self, images, labels, info):
        p = self.params
        batch = None
        if self.cached_logits is not None:
            teacher_logits = self.cached_logits[info.indices]
            logits = self.student(images)
            ce = cross_entropy(logits, labels)
        else:
            batch = self.mix(images, labels, info)
            teacher_logits = self.batch_teacher_logits(batch)
            logits = self.student(batch.images)
            ce = mixed_cross_entropy(logits, labels, batch)
        kl = kl_div(logits, teacher_logits, p.temperature, reduction=p.kl_reduction)
        return step_output(logits, {"kd": p.gamma * p.temperature**2 * kl, "ce": (1 - p.gamma) * ce}, labels, batch)
