"""SP: similarity-preserving distillation (Tung & Mori, ICCV 2019), as RepDistiller's ``distiller_zoo/SP.py``
(``Similarity``).

Features: the last stage map ``maps[-1]`` (RepDistiller's ``feat[-2]``: the last block's output before pooling),
flattened per sample. G = f f^T [B, B], each row L2-normalised, for both networks; the loss is
``sum (G_t - G_s)^2 / B^2``. The Gram matrices relate the batch's (possibly mixed) samples to one another.
Default ``feat_weight`` 3000 (RepDistiller's ``-b 3000``).
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.feature import FeatureDistiller, FeatureParams
from mixdistill.registry import METHODS


def similarity_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    b = f_s.shape[0]
    f_s, f_t = f_s.reshape(b, -1), f_t.reshape(b, -1)
    g_s = F.normalize(f_s @ f_s.t())
    g_t = F.normalize(f_t @ f_t.t())
    return (g_t - g_s).pow(2).sum() / (b * b)


class SPParams(FeatureParams):
    feat_weight: float = Field(3000.0, ge=0, description="RepDistiller's -b (beta) for similarity")


@METHODS.register("sp")
class SP(FeatureDistiller):
    source = 'Tung, Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019 (arXiv 1907.09682)'
    Params = SPParams

    def select(self, feats):
        return [feats["maps"][-1]]

    def feature_loss(self, f_s, f_t):
        return similarity_loss(f_s[0], f_t[0])
