"""RKD: relational knowledge distillation (Park et al., CVPR 2019), as RepDistiller's ``distiller_zoo/RKD.py``
(``RKDLoss``, w_d = 25, w_a = 50).

Features: the pooled penultimate vector ``pooled`` (RepDistiller's ``feat[-1]``). Distance term: pairwise
Euclidean distances (squared distances clamped at 1e-12 before the root, diagonal 0), each network's divided by the
mean of its positive entries, smooth-L1 between them (mean over B^2). Angle term: for every triple, the cosine of
the angle at the middle sample (normalised difference vectors), smooth-L1 between the two networks' B^3 cosines.
Loss ``dist_weight * distance + angle_weight * angle``; the teacher side carries no gradient. Default
``feat_weight`` 1 (RepDistiller's ``-b 1``).
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.feature import FeatureDistiller, FeatureParams
from mixdistill.registry import METHODS


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """[B, B] Euclidean distances from the expanded square form, clamped at eps before the root; diagonal 0."""
    sq = e.pow(2).sum(dim=1)
    d = (sq[:, None] + sq[None, :] - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=d.dtype))


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = pairwise_distances(e)
    return d / d[d > 0].mean()


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e[None, :, :] - e[:, None, :], p=2, dim=2)  # [i, j] = normalize(e_j - e_i)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_loss(f_s: torch.Tensor, f_t: torch.Tensor, dist_weight: float = 25.0,
             angle_weight: float = 50.0) -> torch.Tensor:
    s, t = f_s.flatten(1), f_t.flatten(1)
    with torch.no_grad():
        t_d, t_angle = _normalised_distances(t), _angles(t)
    loss_d = F.smooth_l1_loss(_normalised_distances(s), t_d)
    loss_a = F.smooth_l1_loss(_angles(s), t_angle)
    return dist_weight * loss_d + angle_weight * loss_a


class RKDParams(FeatureParams):
    feat_weight: float = Field(1.0, ge=0, description="RepDistiller's -b (beta) for rkd")
    dist_weight: float = Field(25.0, ge=0, description="w_d, the distance term's weight")
    angle_weight: float = Field(50.0, ge=0, description="w_a, the angle term's weight")


@METHODS.register("rkd")
class RKD(FeatureDistiller):
    source = 'Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019 (arXiv 1904.05068)'
    Params = RKDParams

    def select(self, feats):
        return [feats["pooled"]]

    def feature_loss(self, f_s, f_t):
        return rkd_loss(f_s[0], f_t[0], self.params.dist_weight, self.params.angle_weight)
