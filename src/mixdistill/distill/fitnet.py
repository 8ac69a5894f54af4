"""FitNets: hints (Romero et al., ICLR 2015), as RepDistiller's ``distill == 'hint'``: ``HintLoss``
(``distiller_zoo/FitNet.py``, the mean squared error) between the teacher's hint map and the student's guided map
passed through ``ConvReg`` (``models/util.py``), a learnable regressor ``ReLU(BN(conv(x)))``:

- student height = 2 x teacher's: Conv2d 3x3, stride 2, padding 1;
- student height = teacher's / 2: ConvTranspose2d 4x4, stride 2, padding 1;
- student height >= teacher's: Conv2d with kernel (1 + s_H - t_H, 1 + s_W - t_W) (1x1 at equal sizes);
- otherwise RepDistiller raises; so does this (a ConfigError naming both sizes).

PyTorch's default initialisation of the conv and BatchNorm (as RepDistiller), BatchNorm in training mode while the
student trains; the regressor is trained with the student by the same optimiser (weight decay included).

Features: ``maps[hint_layer]`` of both networks (RepDistiller's ``feat[hint_layer]``, ``--hint_layer`` default
2: the output of the second stage after the stem, e.g. resnet's layer2). ``hint_layer`` must index a stage map
(RepDistiller's ``feat[4]``, the pooled vector, does not fit ConvReg either). Default ``feat_weight`` 100
(RepDistiller's ``-b 100``).

Hint stage. RepDistiller trains FitNets in ONE stage: ``train_student.py`` runs ``helper/pretrain.py``'s ``init``
only for AB, FT and FSP (``init`` itself refuses 'hint'). The paper's first stage (train the student up to the
guided layer, with the regressor, on the hint loss alone) is the option ``hint_epochs`` (default 0 = RepDistiller).
With ``hint_epochs > 0``, ``prepare`` runs it the way ``init`` runs its stage for AB/FSP: SGD (``hint_lr``, default
RepDistiller's 0.05; momentum 0.9, weight decay 5e-4, constant rate) over the regressor and every student
parameter that reaches the guided map (the layers after it get no gradient, so SGD leaves them alone), for
``hint_epochs`` passes (RepDistiller's ``--init_epochs`` is 30), loss = HintLoss alone, student in training mode,
teacher in eval mode. Differences: the passes run over the un-augmented training batches in dataset order
(``TrainSet.clean_batches``; ``init`` uses the shuffled, crop/flip-augmented loader), with no mixing augmentation,
in fp32; its optimiser state is discarded. A resumed run runs the stage again before its checkpoint is loaded over
it (same weights in the end, wasted time).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mixdistill.distill.base import TrainSet
from mixdistill.distill.feature import FeatureDistiller, FeatureParams
from mixdistill.errors import ConfigError
from mixdistill.optim import SGD
from mixdistill.registry import METHODS


class ConvReg(nn.Module):
    """RepDistiller's ``ConvReg``: maps a student map [B, s_C, s_H, s_W] onto the teacher's [B, t_C, t_H, t_W]."""

    def __init__(self, s_shape, t_shape, use_relu: bool = True):
        super().__init__()
        self.use_relu = use_relu
        _, s_c, s_h, s_w = s_shape
        _, t_c, t_h, t_w = t_shape
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif s_h * 2 == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            raise ConfigError(f"fitnet: no regressor maps a student map of height {s_h} onto a teacher map of height "
                              f"{t_h} (RepDistiller's ConvReg handles s_H = 2 t_H, 2 s_H = t_H and s_H >= t_H); "
                              "pick another method.hint_layer")
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.use_relu else x


def hint_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``HintLoss``: ``nn.MSELoss()`` (mean over every element)."""
    return F.mse_loss(f_s, f_t)


class FitNetParams(FeatureParams):
    feat_weight: float = Field(100.0, ge=0, description="RepDistiller's -b (beta) for hint")
    hint_layer: int = Field(2, ge=0, description="index of the hint / guided stage map (RepDistiller's --hint_layer)")
    hint_epochs: int = Field(0, ge=0, description="passes of the FitNets hint stage before training (0: none, as "
                                                  "RepDistiller; its --init_epochs is 30)")
    hint_lr: float = Field(0.05, gt=0, description="learning rate of the hint stage (RepDistiller's 0.05)")


@METHODS.register("fitnet")
class FitNet(FeatureDistiller):
    source = 'Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv 1412.6550)'
    Params = FitNetParams

    def _check_hint_layer(self, data: TrainSet) -> None:
        """method.hint_layer within both networks' stage maps, naming the network that has too few (select's own
        message cannot tell which it was given)."""
        images = next(iter(data.clean_batches()))[0][:1]
        counts = {}
        for who, net in (("student", self.student), ("teacher", self.teacher)):
            was = net.training
            net.eval()  # no BatchNorm statistic moves
            try:
                with torch.no_grad():
                    counts[who] = len(net.forward_features(images)[1]["maps"])
            finally:
                net.train(was)
        layer = self.params.hint_layer
        short = [f"the {who} has {n} (0..{n - 1})" for who, n in counts.items() if layer >= n]
        if short:
            raise ConfigError(f"fitnet: method.hint_layer {layer} is out of range: {' and '.join(short)} stage maps")

    def select(self, feats):
        maps, layer = feats["maps"], self.params.hint_layer
        if layer >= len(maps):
            raise ConfigError(f"fitnet: method.hint_layer {layer} is out of range: this model has {len(maps)} stage "
                              f"maps (0..{len(maps) - 1})")
        return [maps[layer]]

    def prepare(self, data: TrainSet) -> None:
        self._check_hint_layer(data)
        (s,), (t,) = self.probe_features(data)
        self.regressor = ConvReg(s.shape, t.shape).to(self.module_device())
        if self.params.hint_epochs > 0:
            self.hint_stage(data)

    def feature_loss(self, f_s, f_t):
        return hint_loss(self.regressor(f_s[0]), f_t[0])

    def hint_stage(self, data: TrainSet) -> None:
        """The FitNets first stage (see the module docstring)."""
        p = self.params
        params = list(self.student.parameters()) + list(self.regressor.parameters())
        optimizer = SGD(params, lr=p.hint_lr, momentum=0.9, weight_decay=5e-4)
        modes = [(m, m.training) for m in (self.student, self.regressor)]
        self.student.train()
        self.regressor.train()
        try:
            for _ in range(p.hint_epochs):
                for images, _, _ in data.clean_batches():
                    with torch.no_grad():
                        _, t_feats = self.teacher.forward_features(images)
                    _, s_feats = self.student.forward_features(images)
                    loss = self.feature_loss([f.float() for f in self.select(s_feats)],
                                             [f.float() for f in self.select(t_feats)])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
        finally:
            for m, mode in modes:
                m.train(mode)
