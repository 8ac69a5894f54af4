"""The branch form of an architecture: a shared trunk and per-peer branches, as ONE's and OKDDip's released code
build their peers (``models/model_cifar/resnet_one.py``, ``resnet_GL.py``, ``vgg_one.py``, ``vgg_GL.py``).

CIFAR ResNets share conv1..layer2 and branch at layer3 (as in the papers); okd_vgg16 shares conv1..layer3 and
branches at layer4 and its classifier, whose dropouts are p = 0.5 there; cnn5 nets share conv1..conv4 and branch
at conv5. Each branch (and the trunk) comes from an independently initialised copy of the architecture, and the
copy that gives the trunk is also a whole network (trunk + its own branch): the checkpoint's ``model``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn

from mixdistill.errors import ConfigError
from mixdistill.models import create_model
from mixdistill.models.cnn import CNN5
from mixdistill.models.resnet import CifarResNet
from mixdistill.models.vgg import OKDVGG16

FORMS = "the CIFAR ResNets (resnet8..resnet110, resnet8x4, resnet32x4, okd_resnet110, wrn_20_8), okd_vgg16 and cnn5_w*"


def split_trunk_branch(model: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """(trunk, branch, trunk channels): branch maps the trunk's feature map to pooled features."""
    if isinstance(model, CifarResNet):
        trunk = nn.Sequential(model.conv1, model.bn1, model.relu, model.layer1, model.layer2)
        branch = nn.Sequential(model.layer3, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return trunk, branch, model.layer3[0].conv1.in_channels
    if isinstance(model, OKDVGG16):
        for m in model.classifier:  # the released branch classifiers' nn.Dropout(): p = 0.5 (the plain net's: 0)
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
    raise ConfigError(f"the branch form (a shared trunk) exists for {FORMS}, not for {type(model).__name__}")


class BranchPeer(nn.Module):
    """One branch seen as a model (trunk shared), so it can be evaluated like any peer."""

    def __init__(self, trunk, branch, classifier, feature_dim: int):
        super().__init__()
        self.branch, self.fc = branch, classifier
        self.feature_dim = feature_dim
        self._trunk = [trunk]  # not a submodule: the trunk is owned (and saved) by the distiller

    def forward_from_trunk(self, h):
        return self.fc(self.branch(h))

    def forward(self, x):
        return self.forward_from_trunk(self._trunk[0](x))


def build_branches(names: list[str], *, num_classes: int, in_channels: int, pretrained: bool, whole: int, who: str,
                   otherwise: str = ""):
    """(trunk, peers, trunk channels, whole network): one copy of the architecture per peer, in order; the trunk
    is copy ``whole``'s, which is returned as a whole network too (it shares the trunk and peer ``whole``'s
    branch). ``otherwise`` ends the error of peers that have no branch form (what else to do)."""
    if len(set(names)) != 1:
        raise ConfigError(f"{who}: branches share one architecture, got peers {names}{otherwise}")
    models = [create_model(names[0], num_classes=num_classes, in_channels=in_channels, pretrained=pretrained)
              for _ in names]
    try:
        trunk, _, channels = split_trunk_branch(models[whole])
    except ConfigError as err:
        raise ConfigError(f"{who}: {err}{otherwise}") from None
    peers = []
    for model in models:
        _, branch, _ = split_trunk_branch(model)
        peers.append(BranchPeer(trunk, branch, model.get_classifier(), model.feature_dim))
    return trunk, peers, channels, models[whole]


class BranchPeers:
    """Mixin for an online distiller whose ``params.peer_form`` is ``branches`` (its peers are built here, and
    ``cls(peers, params, trunk=, whole=)`` takes them) or ``networks`` (the base class's separate networks)."""

    whole_peer: ClassVar[int] = 0  # the peer whose copy gives the trunk and is the checkpoint's model

    def __init__(self, peers, params, trunk: nn.Module | None = None, whole: nn.Module | None = None):
        """``trunk``: the peers are branches on it (None: separate networks); ``whole``: peer ``whole_peer`` as a
        whole network, the checkpoint's model."""
        super().__init__(peers, params)
        self.trunk = trunk
        if whole is not None:
            self.student = whole

    @classmethod
    def from_names(cls, names, params, *, num_classes, in_channels, pretrained=False):
        if params.peer_form == "networks":
            return super().from_names(names, params, num_classes=num_classes, in_channels=in_channels,
                                      pretrained=pretrained)
        trunk, peers, _, whole = build_branches(names, num_classes=num_classes, in_channels=in_channels,
                                                pretrained=pretrained, whole=cls.whole_peer, who=cls.__name__.lower(),
                                                otherwise="; method.peer_form=networks trains separate networks")
        return cls(peers, params, trunk=trunk, whole=whole)

    def compile_targets(self):
        if self.trunk is None:
            return super().compile_targets()
        return [self.trunk] + [peer.branch for peer in self.peers]
