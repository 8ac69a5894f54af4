"""PKT: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller's
``distiller_zoo/PKT.py`` (the authors' ``cosine_similarity_loss``, eps = 1e-7).

Features: the pooled penultimate vector ``pooled`` (RepDistiller's ``feat[-1]``). Each network's vectors are
divided by (their L2 norm + eps) (NaNs set to 0), cosine similarities [B, B] are mapped to [0, 1] by (c + 1) / 2
and each row normalised to sum 1; the loss is ``mean(P_t * log((P_t + eps) / (P_s + eps)))`` over all B^2
entries. Default ``feat_weight`` 30000 (RepDistiller's ``-b 30000``). As released, an all-zero feature vector
gives a finite loss but a NaN gradient (the derivative of the norm's square root at 0); pooled post-ReLU features of a
trained network are practically never exactly zero.
"""

import torch
from pydantic import Field

from mixdistill.distill.feature import FeatureDistiller, FeatureParams
from mixdistill.registry import METHODS

PKT_EPS = 1e-7


def _cosine_probabilities(f: torch.Tensor, eps: float) -> torch.Tensor:
    f = f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)
    f = torch.nan_to_num(f, nan=0.0, posinf=torch.inf, neginf=-torch.inf)  # the release zeroes NaNs only
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = PKT_EPS) -> torch.Tensor:
    p_s = _cosine_probabilities(f_s.flatten(1), eps)
    p_t = _cosine_probabilities(f_t.flatten(1), eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


class PKTParams(FeatureParams):
    feat_weight: float = Field(30000.0, ge=0, description="RepDistiller's -b (beta) for pkt")


@METHODS.register("pkt")
class PKT(FeatureDistiller):
    source = ('Passalis, Tefas, "Learning Deep Representations with Probabilistic Knowledge Transfer", '
              'ECCV 2018 (arXiv 1803.10837)')
    Params = PKTParams

    def select(self, feats):
        return [feats["pooled"]]

    def feature_loss(self, f_s, f_t):
        return pkt_loss(f_s[0], f_t[0])
