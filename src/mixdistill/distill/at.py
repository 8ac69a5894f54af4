"""AT: attention transfer (Zagoruyko & Komodakis, ICLR 2017), as RepDistiller's ``distiller_zoo/AT.py``
(``Attention``, p = 2) wired as its ``train_student.py`` / ``helper/loops.py`` do.

Features: the stage maps ``maps[1:]`` (RepDistiller's ``feat[1:-1]``, the outputs of every stage after the stem),
paired stage by stage (as ``zip``: the first min(n_student, n_teacher) pairs). Per pair: when the heights differ
the larger map is average-pooled to the smaller one's ``(H, H)`` (RepDistiller pools to a square, which assumes
square maps); the attention map is ``normalize(mean_c f^p)`` flattened over space (L2 per sample); the term is the
mean over batch and positions of the squared difference. The loss is the sum of the terms.

Default ``feat_weight`` 1000 (RepDistiller's ``-b 1000``); the mean over positions makes the per-pair term small.
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from mixdistill.distill.feature import FeatureDistiller, FeatureParams, stage_maps
from mixdistill.registry import METHODS


def match_height(f_s: torch.Tensor, f_t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RepDistiller's size matching (AT, NST, VID): the map with the larger height is adaptive-average-pooled to
    the other's (H, H)."""
    s_h, t_h = f_s.shape[2], f_t.shape[2]
    if s_h > t_h:
        f_s = F.adaptive_avg_pool2d(f_s, (t_h, t_h))
    elif s_h < t_h:
        f_t = F.adaptive_avg_pool2d(f_t, (s_h, s_h))
    return f_s, f_t


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """[B, H*W]: the channel mean of f^p, flattened, L2-normalised per sample."""
    return F.normalize(f.pow(p).mean(1).flatten(1))


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """One stage's AT term: mean squared difference of the two attention maps."""
    f_s, f_t = match_height(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


class ATParams(FeatureParams):
    feat_weight: float = Field(1000.0, ge=0, description="RepDistiller's -b (beta) for attention")
    p: float = Field(2.0, gt=0, description="power of the activations in the attention map")


@METHODS.register("at")
class AT(FeatureDistiller):
    source = ('Zagoruyko, Komodakis, "Paying More Attention to Attention: Improving the Performance of CNNs via '
              'Attention Transfer", ICLR 2017 (arXiv 1612.03928)')
    Params = ATParams

    def select(self, feats):
        return stage_maps(feats)

    def feature_loss(self, f_s, f_t):
        return sum(at_loss(s, t, self.params.p) for s, t in zip(f_s, f_t))
