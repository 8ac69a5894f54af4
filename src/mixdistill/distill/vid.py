"""VID: variational information distillation (Ahn et al., CVPR 2019), as RepDistiller's ``distill == 'vid'``:
one ``VIDLoss`` (``distiller_zoo/VID.py``, the authors' code) per stage pair.

Features: the stage maps ``maps[1:]`` (RepDistiller's ``feat[1:-1]``), paired stage by stage (as ``zip``). Per
pair: heights matched by average pooling (as AT); a learnable regressor of three bias-free 1x1 convolutions
``s_C -> t_C -> t_C -> t_C`` with ReLUs between predicts the teacher map's mean, and a learnable per-channel
variance ``softplus(log_scale) + eps`` (eps = 1e-5; log_scale initialised to ``log(exp(5 - eps) - 1)``, i.e. a
variance of 5) gives the Gaussian negative log-likelihood
``mean 0.5 * ((mu - t)^2 / var + log var)`` (over batch, channels, positions). The loss is the sum over pairs.
Regressors and variances are trained with the student. Default ``feat_weight`` 1 (RepDistiller's ``-b 1``).
"""

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mixdistill.distill.at import match_height
from mixdistill.distill.base import TrainSet
from mixdistill.distill.feature import FeatureDistiller, FeatureParams, stage_maps
from mixdistill.registry import METHODS


class VIDRegressor(nn.Module):
    """RepDistiller's ``VIDLoss`` for one stage pair: the mean regressor and the per-channel variance."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, init_pred_var: float = 5.0,
                 eps: float = 1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, mid_channels, kernel_size=1, bias=False), nn.ReLU(),
            nn.Conv2d(mid_channels, out_channels, kernel_size=1, bias=False),
        )
        self.log_scale = nn.Parameter(torch.full((out_channels,), math.log(math.exp(init_pred_var - eps) - 1.0)))
        self.eps = eps

    def forward(self, f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
        f_s, f_t = match_height(f_s, f_t)
        mean = self.regressor(f_s)
        var = (F.softplus(self.log_scale) + self.eps).view(1, -1, 1, 1)
        return (0.5 * ((mean - f_t).pow(2) / var + torch.log(var))).mean()


class VIDParams(FeatureParams):
    feat_weight: float = Field(1.0, ge=0, description="RepDistiller's -b (beta) for vid")
    init_pred_var: float = Field(5.0, gt=0, description="initial predicted variance")
    eps: float = Field(1e-5, gt=0, description="added to the softplus variance")


@METHODS.register("vid")
class VID(FeatureDistiller):
    source = ('Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for Knowledge Transfer", '
              'CVPR 2019 (arXiv 1904.05835)')
    Params = VIDParams

    def select(self, feats):
        return stage_maps(feats)

    def prepare(self, data: TrainSet) -> None:
        f_s, f_t = self.probe_features(data)
        p = self.params
        self.vid = nn.ModuleList(VIDRegressor(s.shape[1], t.shape[1], t.shape[1], p.init_pred_var, p.eps)
                                 for s, t in zip(f_s, f_t)).to(self.module_device())

    def feature_loss(self, f_s, f_t):
        return sum(c(s, t) for s, t, c in zip(f_s, f_t, self.vid))
