"""CC: correlation congruence (Peng et al., ICCV 2019), as RepDistiller's ``distill == 'correlation'``:
``Correlation`` (``distiller_zoo/CC.py``, the authors' code) on ``LinearEmbed`` projections (``models/util.py``:
a plain ``nn.Linear`` to ``feat_dim`` = 128, no normalisation) of the two networks' pooled features.

Features: the pooled penultimate vector ``pooled`` (RepDistiller's ``feat[-1]``), through a learnable embedding per
network (``embed_s``, ``embed_t``: both trained, with PyTorch's default Linear initialisation, as RepDistiller puts
both in its ``trainable_list``). With ``d = |e_s - e_t|`` [B, feat_dim] the loss is
``mean_i sum_k d[i, k] * d[i + 1, k]`` over consecutive samples of the batch (i = 0..B-2), the released form of the
correlation congruence. Default ``feat_weight`` 0.02 (RepDistiller's ``-b 0.02``).
"""

import torch
from pydantic import Field
from torch import nn

from mixdistill.distill.base import TrainSet
from mixdistill.distill.feature import FeatureDistiller, FeatureParams
from mixdistill.registry import METHODS


class LinearEmbed(nn.Module):
    """RepDistiller's ``LinearEmbed``: flatten, Linear(dim_in -> dim_out)."""

    def __init__(self, dim_in: int, dim_out: int = 128):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def correlation_loss(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()


class CCParams(FeatureParams):
    feat_weight: float = Field(0.02, ge=0, description="RepDistiller's -b (beta) for correlation")
    feat_dim: int = Field(128, gt=0, description="embedding size (RepDistiller's --feat_dim)")


@METHODS.register("cc")
class CC(FeatureDistiller):
    source = 'Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019 (arXiv 1904.01802)'
    Params = CCParams

    def select(self, feats):
        return [feats["pooled"]]

    def prepare(self, data: TrainSet) -> None:
        (s,), (t,) = self.probe_features(data)
        device = self.module_device()
        self.embed_s = LinearEmbed(s[0].numel(), self.params.feat_dim).to(device)
        self.embed_t = LinearEmbed(t[0].numel(), self.params.feat_dim).to(device)

    def feature_loss(self, f_s, f_t):
        return correlation_loss(self.embed_s(f_s[0]), self.embed_t(f_t[0]))
