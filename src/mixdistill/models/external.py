"""Any timm or torchvision classification model as a zoo model: ``timm:NAME`` and ``tv:NAME``.

``timm:NAME`` takes any name ``timm.list_models()`` lists (a pretrained tag, ``resnet18.a1_in1k``, is accepted too);
``tv:NAME`` any name ``torchvision.models.list_models(module=torchvision.models)`` lists (the classification
models). The network is built by the library with the dataset's ``num_classes`` and without weights
(``pretrained=False`` / ``weights=None``: nothing is downloaded) unless ``pretrained=True`` (config:
``model.pretrained``), which asks the library for its pretrained weights (a download where the network allows).

**State-dict keys are the library's own.** :class:`ExternalModel` is a thin view of the library's module: it
shares that module's parameter, buffer and submodule registries (the same dict objects), so
``state_dict()``, ``named_parameters()`` and ``named_modules()`` name everything exactly as the library does
(``conv1.weight``, ``layer1.0.bn1.running_mean``, ``fc.bias`` ...), a state dict saved from a bare
``timm.create_model(...)`` / ``torchvision.models.get_model(...)`` loads strictly with
:func:`mixdistill.models.checkpoint.load_weights`, and one saved from this model loads into the bare library
model. (``torchvision_models.py`` adopts torchvision's ResNet children under their own names for the same
reason; sharing the registries does the same for any network without re-implementing its forward.)
``forward(x)`` is the library's forward.

``forward_features(x)`` returns ``(logits, {"pooled": [B, feature_dim], "maps": [...]})``, ``logits ==
get_classifier()(pooled)``:

* timm: ``forward_intermediates`` (timm >= 1.0; the stage outputs listed by the model's ``feature_info``, e.g.
  the stem and the four stages of a ResNet) gives ``maps`` and the final feature map, ``forward_head(...,
  pre_logits=True)`` the pooled vector. A model without ``forward_intermediates`` gives ``maps == []``.
* torchvision: the ResNet family (``resnet*``, ``resnext*``, ``wide_resnet*``) by its known structure, maps
  ``[stem after the max-pool, layer1, layer2, layer3, layer4]`` as ``tv_resnet*``; every other network gives
  ``pooled`` (the input of its final linear classifier, captured while its forward runs) and ``maps == []``.
  A network without a final ``nn.Linear`` classifier (SqueezeNet) is refused.

Methods that read ``maps`` (FitNet, AT, ...) therefore need a timm model or a torchvision ResNet; methods that
read ``pooled`` (CRD, the online methods' feature heads) work with every model.

**Input channels.** timm builds the model with ``in_chans``. For torchvision the first convolution is
adapted as timm adapts pretrained weights (``adapt_input_conv``): one channel takes the sum of the RGB filters,
other counts repeat them cyclically scaled by ``3 / in_channels``, so pretrained weights stay usable and a fresh
network keeps its initialisation's scale.

Neither library is imported when the zoo is imported; timm is an optional extra (``pip install
'mixdistill[timm]'``).
"""

from __future__ import annotations

import difflib
import functools

import torch
from torch import nn

from ..errors import ConfigError
from ._base import ZooModel

PREFIXES = ("timm", "tv")
HOW_TO_LIST = {
    "timm": "timm:NAME takes a name timm.list_models() lists, e.g. python -c \"import timm; "
            "print(timm.list_models('resnet*'))\"",
    "tv": "tv:NAME takes a classification model torchvision.models.list_models() lists, e.g. python -c "
          "\"import torchvision; print(torchvision.models.list_models(module=torchvision.models))\"",
}
# the input these libraries' models are usually trained on: ImageNet, (num_classes, in_channels, image_size)
NATIVE_INPUT = (1000, 3, 224)


def is_external(name: str) -> bool:
    """Does ``name`` name a timm or torchvision model (``timm:NAME``, ``tv:NAME``)?"""
    return isinstance(name, str) and name.partition(":")[0] in PREFIXES and ":" in name


def split_name(name: str) -> tuple[str, str]:
    library, _, arch = name.partition(":")
    return library, arch


def _import_timm():
    try:
        import timm
    except ImportError:
        raise ConfigError("timm: models need the timm package, which is not installed: pip install "
                          "'mixdistill[timm]' (or pip install timm)") from None
    return timm


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    import torchvision

    return tuple(torchvision.models.list_models(module=torchvision.models))


def _unknown(library: str, arch: str, valid) -> ConfigError:
    close = difflib.get_close_matches(arch, list(valid), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(f'{library}:{c}' for c in close)}?" if close else ""
    return ConfigError(f"unknown {library} model '{arch}'.{hint} {HOW_TO_LIST[library]}")


def check_name(name: str) -> None:
    """Raise one ConfigError line unless ``name`` is a model the library can build (no model is built)."""
    library, arch = split_name(name)
    if not arch:
        raise ConfigError(f"model '{name}': give a name after '{library}:'. {HOW_TO_LIST[library]}")
    if library == "timm":
        timm = _import_timm()
        base = arch.split(".", 1)[0]  # timm names may carry a pretrained tag: resnet18.a1_in1k
        if not timm.is_model(base):
            raise _unknown("timm", arch, timm.list_models())
    else:
        if arch not in _torchvision_names():
            raise _unknown("tv", arch, _torchvision_names())


def create_external(name: str, num_classes: int = 1000, in_channels: int = 3,
                    pretrained: bool = False) -> ExternalModel:
    """Build ``timm:NAME`` / ``tv:NAME`` with ``num_classes`` outputs and ``in_channels`` input channels."""
    check_name(name)
    library, arch = split_name(name)
    build = _build_timm if library == "timm" else _build_torchvision
    try:
        net = build(arch, num_classes, in_channels, pretrained)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - a failed download, a model refusing these settings: one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        what = " with pretrained weights (model.pretrained=true needs the network to download them)" if pretrained else ""
        raise ConfigError(f"cannot build {name}{what}: {type(e).__name__}: {first}") from None
    cls = TimmModel if library == "timm" else TorchvisionModel
    return cls(net, name, num_classes=num_classes, in_channels=in_channels)


# ------------------------------------------------------------------------------------------------ builders

def _build_timm(arch: str, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    timm = _import_timm()
    return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, in_chans=in_channels)


def _build_torchvision(arch: str, num_classes: int, in_channels: int, pretrained: bool) -> nn.Module:
    from torchvision import models

    # GoogLeNet and Inception v3 return (logits, aux logits) while training unless told not to
    kwargs = {"aux_logits": False} if arch in ("googlenet", "inception_v3") else {}
    if pretrained:
        # pretrained heads have the weights' class count: build with it, then give the net a fresh classifier
        net = models.get_model(arch, weights="DEFAULT", **kwargs)
        head_path, head = _final_linear(net, None, arch)
        if head.out_features != num_classes:
            fresh = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
            fresh.to(device=head.weight.device, dtype=head.weight.dtype)
            _set_submodule(net, head_path, fresh)
    else:
        net = models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    if in_channels != 3:
        _adapt_first_conv(net, in_channels, arch)
    return net


def _final_linear(net: nn.Module, num_classes: int | None, arch: str) -> tuple[str, nn.Linear]:
    """The network's classifier: its last ``nn.Linear`` (with ``num_classes`` outputs when given)."""
    found = [(path, m) for path, m in net.named_modules() if isinstance(m, nn.Linear)
             and (num_classes is None or m.out_features == num_classes)]
    if not found:
        raise ConfigError(f"tv:{arch} has no final nn.Linear classifier, which the zoo interface needs "
                          "(forward_features' pooled features are its input); choose another network")
    return found[-1]


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """A ``[out, 3, kh, kw]`` filter bank for ``in_channels`` inputs, as timm's ``adapt_input_conv``: the sum over
    RGB for one channel; otherwise the RGB filters repeated cyclically and scaled by ``3 / in_channels``."""
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _adapt_first_conv(net: nn.Module, in_channels: int, arch: str) -> None:
    first = next(((path, m) for path, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].in_channels != 3 or first[1].groups != 1:
        raise ConfigError(f"tv:{arch}: cannot adapt its first convolution to {in_channels} input channels; "
                          "use 3-channel data or a timm: model (built with in_chans)")
    path, old = first
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, dilation=old.dilation, bias=old.bias is not None,
                    padding_mode=old.padding_mode, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(adapt_input_conv(old.weight, in_channels))
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _set_submodule(net, path, new)


# ------------------------------------------------------------------------------------------------- adapter

class ExternalModel(ZooModel):
    """A view of a library's network with the zoo interface. It shares the network's ``_parameters``,
    ``_buffers``, ``_modules`` (and non-persistent buffer set) dicts, so its state-dict keys and module names are
    the library's, ``.to()`` / ``load_state_dict`` / ``deepcopy`` act on the same tensors, and nothing is held
    twice. The library module itself is kept outside the registries (``library_model``); its ``training`` flag
    follows this module's. ``has_maps``: whether ``forward_features`` gives stage maps (else ``maps == []``)."""

    has_maps: bool = False

    _SHARED = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")

    def __init__(self, net: nn.Module, name: str, num_classes: int, in_channels: int):
        super().__init__()
        for attr in self._SHARED:
            self.__dict__[attr] = net.__dict__[attr]
        self.__dict__["_library_model"] = net  # not registered: its registries are this module's own
        self.training = net.training
        self.external_name = name
        self.num_classes = num_classes
        self.in_channels = in_channels

    @property
    def library_model(self) -> nn.Module:
        """The timm / torchvision module (same parameters and buffers as this one)."""
        return self.__dict__["_library_model"]

    def train(self, mode: bool = True):
        super().train(mode)
        self.library_model.training = mode
        return self

    def extra_repr(self) -> str:
        return f"{self.external_name}, num_classes={self.num_classes}, feature_dim={self.feature_dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the library's forward, called directly (not through its __call__: it has no hooks of its own, and a
        # torch.fx trace of this module then sees the library's submodules under their registered names)
        return self.library_model.forward(x)


def _in_features(head: nn.Module) -> int | None:
    if isinstance(head, nn.Linear):
        return head.in_features
    if isinstance(head, nn.Conv2d):
        return head.in_channels
    return None


class TimmModel(ExternalModel):
    """A timm model: maps from ``forward_intermediates``, pooled from ``forward_head(pre_logits=True)``."""

    def __init__(self, net: nn.Module, name: str, num_classes: int, in_channels: int):
        super().__init__(net, name, num_classes, in_channels)
        head = net.get_classifier()
        if isinstance(head, (tuple, list)):  # distilled models: (head, head_dist)
            head = head[0]
        self._head_is_classifier = isinstance(head, nn.Module) and _in_features(head) is not None
        self.feature_dim = (_in_features(head) if self._head_is_classifier
                            else getattr(net, "head_hidden_size", None) or net.num_features)
        self._intermediates = callable(getattr(net, "forward_intermediates", None))
        self.has_maps = self._intermediates

    def get_classifier(self) -> nn.Module:
        head = self.library_model.get_classifier()
        return head[0] if isinstance(head, (tuple, list)) else head

    def forward_features(self, x: torch.Tensor):
        net = self.library_model
        if self._intermediates:
            final, maps = net.forward_intermediates(x)
            maps = list(maps)
        else:
            final, maps = net.forward_features(x), []
        pooled = net.forward_head(final, pre_logits=True)
        logits = self.get_classifier()(pooled) if self._head_is_classifier else net.forward_head(final)
        return logits, {"pooled": pooled, "maps": maps}


class TorchvisionModel(ExternalModel):
    """A torchvision model: the ResNet family by its structure, every other network pooled-only."""

    def __init__(self, net: nn.Module, name: str, num_classes: int, in_channels: int):
        super().__init__(net, name, num_classes, in_channels)
        from torchvision.models import ResNet

        self._resnet = isinstance(net, ResNet)
        self.has_maps = self._resnet
        self._head_path, head = _final_linear(net, num_classes, split_name(name)[1])
        self.feature_dim = head.in_features

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self._head_path)

    def forward_features(self, x: torch.Tensor):
        if self._resnet:
            maps: list[torch.Tensor] = []
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            maps.append(x)
            for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
                x = layer(x)
                maps.append(x)
            pooled = torch.flatten(self.avgpool(x), 1)
            return self.fc(pooled), {"pooled": pooled, "maps": maps}
        captured: list[torch.Tensor] = []
        head = self.get_classifier()
        handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0]))
        try:
            logits = self.library_model.forward(x)
        finally:
            handle.remove()
        return logits, {"pooled": captured[-1], "maps": []}
