"""NST: neuron selectivity transfer (Huang & Wang, 2017), as RepDistiller's ``distiller_zoo/NST.py``
(``NSTLoss``, ``full_loss = True``: squared MMD with the polynomial kernel k(a, b) = (a . b)^2).

Features: the stage maps ``maps[1:]`` (RepDistiller's ``feat[1:-1]``), paired stage by stage (as ``zip``). Per
pair: heights matched by average pooling as AT does; each channel's map flattened over space and L2-normalised;
the term is ``mean k(t, t) + mean k(s, s) - 2 mean k(s, t)`` over all channel pairs and the batch (the teacher-only
term is a constant). The loss is the sum of the terms. Default ``feat_weight`` 50 (RepDistiller's ``-b 50``).
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.at import match_height
from mixdistill.distill.feature import FeatureDistiller, FeatureParams, stage_maps
from mixdistill.registry import METHODS


def poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B, C_b, C_a]: (a_i . b_j)^2 for every pair of channel vectors (a, b: [B, C, N])."""
    return torch.bmm(b, a.transpose(1, 2)).pow(2)


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """One stage's NST term (squared MMD, polynomial kernel of degree 2)."""
    f_s, f_t = match_height(f_s, f_t)
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return poly_kernel(t, t).mean().detach() + poly_kernel(s, s).mean() - 2 * poly_kernel(s, t).mean()


class NSTParams(FeatureParams):
    feat_weight: float = Field(50.0, ge=0, description="RepDistiller's -b (beta) for nst")


@METHODS.register("nst")
class NST(FeatureDistiller):
    source = ('Huang, Wang, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer", 2017 '
              '(arXiv 1707.01219)')
    Params = NSTParams

    def select(self, feats):
        return stage_maps(feats)

    def feature_loss(self, f_s, f_t):
        return sum(nst_loss(s, t) for s, t in zip(f_s, f_t))
