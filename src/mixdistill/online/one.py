"""ONE (Lan et al. 2018, on-the-fly native ensemble): a shared trunk, m branches, a gate
``softmax(ReLU(BN(FC(pooled trunk feature))))`` and the gated ensemble ``z_e = sum_i g_i z_i``.
``L = sum_i CE(y, z_i) + CE(y, z_e) + T^2 * sum_i KL_T(z_e || z_i)``, T = 3, the ensemble target
detached in the KL term (``detach_ensemble``).

The branch form of an architecture: CIFAR ResNets share conv1..layer2 and branch at layer3 (as in
the paper); okd_vgg16 shares conv1..layer3 and branches at layer4 and its classifier (OKDDip's vgg_one.py);
cnn5 nets share conv1..conv4 and branch at conv5. Each branch (and the trunk) comes from
an independently initialised copy of the architecture."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from mixdistill.distill.base import step_output
from mixdistill.errors import ConfigError
from mixdistill.losses import kd_loss, mixed_cross_entropy
from mixdistill.models import create_model
from mixdistill.models.cnn import CNN5
from mixdistill.models.resnet import CifarResNet
from mixdistill.models.vgg import OKDVGG16
from mixdistill.online.base import OnlineDistiller, OnlineParams
from mixdistill.registry import METHODS


def split_trunk_branch(model: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """(trunk, branch, trunk channels): branch maps the trunk's feature map to pooled features."""
    if isinstance(model, CifarResNet):
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1, model.layer2)
        branch = nn.Sequential(model.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return trunk, branch, model.layer3[0].conv1.in_channels
    if isinstance(model, OKDVGG16):  # as OKDDip's released vgg_one.py: the branches are layer4 and the classifier,
        for m in model.classifier:   # whose dropouts there are nn.Dropout() (p = 0.5; the plain net's are p = 0)
            if isinstance(m, nn.Dropout):
                m.p = 0.5
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.conv2, model.bn2, model.relu, model.maxpool,
                              model.layer1, model.layer2, model.layer3)
        branch = nn.Sequential(model.layer4, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return trunk, branch, model.layer4[0].in_channels
    if isinstance(model, CNN5):
        pool = nn.MaxPool2d(2)
        trunk = nn.Sequential(model.conv1, pool, model.conv2, pool, model.conv3, model.conv4)
        branch = nn.Sequential(nn.MaxPool2d(2), model.conv5, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return trunk, branch, model.conv4[0].out_channels
    raise ConfigError(f"ONE has a branch form for the CIFAR ResNets (resnet8..resnet110, resnet8x4, resnet32x4, "
                      f"okd_resnet110, wrn_20_8), okd_vgg16 and cnn5_w*, not for {type(model).__name__}")


class BranchPeer(nn.Module):
    """One branch seen as a model (trunk shared), so it can be evaluated like any peer."""

    def __init__(self, trunk, branch, classifier):
        super().__init__()
        self.branch, self.fc = branch, classifier
        self._trunk = [trunk]  # not a submodule: the trunk is owned (and saved) by the ONE distiller

    def forward_from_trunk(self, h):
        return self.fc(self.branch(h))

    def forward(self, x):
        return self.forward_from_trunk(self._trunk[0](x))


class ONEParams(OnlineParams):
    temperature: float = Field(3.0, gt=0)
    detach_ensemble: bool = True


@METHODS.register("one")
class ONE(OnlineDistiller):
    source = 'Lan, Zhu, Gong, "Knowledge Distillation by On-the-Fly Native Ensemble", NeurIPS 2018'
    Params = ONEParams

    def __init__(self, trunk, peers, trunk_channels, params, standalone: nn.Module | None = None):
        super().__init__(peers, params)
        self.trunk = trunk
        if standalone is not None:  # peer 0 as the whole network (trunk + branch 0): the checkpoint's model
            self.student = standalone
        m = len(peers)
        self.gate = nn.Sequential(nn.Linear(trunk_channels, m), nn.BatchNorm1d(m), nn.ReLU())

    @classmethod
    def from_names(cls, names, params, *, num_classes, in_channels, pretrained=False):
        if len(set(names)) != 1:
            raise ConfigError(f"ONE branches share one architecture, got peers {names}")
        models = [create_model(names[0], num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)
                  for _ in names]
        trunk, _, channels = split_trunk_branch(models[0])
        peers = []
        for model in models:
            _, branch, _ = split_trunk_branch(model)
            peers.append(BranchPeer(trunk, branch, model.get_classifier()))
        return cls(trunk, peers, channels, params, standalone=models[0])  # models[0] shares trunk and branch 0

    def _branches(self, images):
        h = self.trunk(images)
        logits = [peer.forward_from_trunk(h) for peer in self.peers]
        gate = torch.softmax(self.gate(h.mean((2, 3))), dim=1)  # [B, m]
        ensemble = (gate.unsqueeze(2) * torch.stack(logits, 1)).sum(1)
        return logits, ensemble

    def forward_train(self, images, labels, info):
        T = self.params.temperature
        batch = self.mix(images, labels, info)
        logits, ensemble = self._branches(batch.images)
        target = ensemble.detach() if self.params.detach_ensemble else ensemble
        ce = sum(mixed_cross_entropy(z, labels, batch) for z in logits) + mixed_cross_entropy(ensemble, labels, batch)
        kl = sum(kd_loss(z, target, T) for z in logits)
        return step_output(ensemble, {"ce": ce, "kl": kl}, labels, batch)

    def evaluation_logits(self, images):
        logits, ensemble = self._branches(images)
        out = {f"peer{i}": z for i, z in enumerate(logits)}
        out["ensemble"] = ensemble
        return out

    def compile_targets(self):
        return [self.trunk] + [peer.branch for peer in self.peers]
