"""Model zoo: the CRD/RepDistiller CIFAR benchmark, the online-distillation benchmark's nets (OKDDip's
released ResNet-110, WRN-20-8 and VGG-16), das2020's models, and small CNNs.

Every model takes ``(num_classes=100, in_channels=3)``, returns logits from
``forward(x)``, and ``(logits, {"pooled", "maps"})`` from ``forward_features(x)``;
it has ``feature_dim`` and ``num_classes`` attributes.  RepDistiller models keep
that code's state_dict keys, so its checkpoints load with ``load_weights``.

Besides the names in ``MODELS``, ``timm:NAME`` and ``tv:NAME`` build any timm or torchvision classification
model behind the same interface, with the library's own state-dict keys (``models/external.py``).
"""

from __future__ import annotations

import numbers
from typing import Callable

import torch
from torch import nn

from ..errors import ConfigError, UnknownNameError
from ..registry import NAME_PATTERN, PLUGIN_NOTE, load_plugins, remove_registered
from . import cnn, das2020, external, mobilenetv2, resnet, resnetv2, shufflenet, torchvision_models, vgg, wrn
from ._base import ZooModel
from .checkpoint import load_weights
from .external import is_external

MODELS: dict[str, Callable[..., nn.Module]] = {
    # RepDistiller / CRD benchmark (names as in its model_dict)
    "resnet8": resnet.resnet8,
    "resnet14": resnet.resnet14,
    "resnet20": resnet.resnet20,
    "resnet32": resnet.resnet32,
    "resnet44": resnet.resnet44,
    "resnet56": resnet.resnet56,
    "resnet110": resnet.resnet110,
    "resnet8x4": resnet.resnet8x4,
    "resnet32x4": resnet.resnet32x4,
    "ResNet50": resnetv2.ResNet50,
    "wrn_16_1": wrn.wrn_16_1,
    "wrn_16_2": wrn.wrn_16_2,
    "wrn_40_1": wrn.wrn_40_1,
    "wrn_40_2": wrn.wrn_40_2,
    "vgg8": vgg.vgg8,
    "vgg11": vgg.vgg11,
    "vgg13": vgg.vgg13,
    "vgg16": vgg.vgg16,
    "vgg19": vgg.vgg19,
    "mobile_half": mobilenetv2.mobile_half,
    "MobileNetV2": mobilenetv2.mobile_half,  # RepDistiller's registry name for mobile_half
    "ShuffleV1": shufflenet.ShuffleV1,
    "ShuffleV2": shufflenet.ShuffleV2,
    # the online-distillation benchmark (OKDDip's released CIFAR nets, used by PCL's table)
    "okd_resnet110": resnet.okd_resnet110,
    "wrn_20_8": resnet.wrn_20_8,
    "okd_vgg16": vgg.okd_vgg16,
    # das2020 (Distilling-with-VRM)
    "resnet18_cifar": resnetv2.resnet18_cifar,
    "lenet5": das2020.lenet5,
    "alexnet_cifar": das2020.alexnet_cifar,
    "alexnet_cifar_w025": das2020.alexnet_cifar_w025,  # a quarter of every width: CPU-scale studies
    # small CPU-friendly CNNs for 28x28 grayscale
    "cnn5_w8": cnn.cnn5_w8,
    "cnn5_w16": cnn.cnn5_w16,
    "cnn5_w32": cnn.cnn5_w32,
    # torchvision's ImageNet ResNets (torchvision state_dict keys: its pretrained checkpoints load)
    "tv_resnet18": torchvision_models.tv_resnet18,
    "tv_resnet34": torchvision_models.tv_resnet34,
    "tv_resnet50": torchvision_models.tv_resnet50,
}


BUILT_IN = frozenset(MODELS)


def list_models() -> list[str]:
    load_plugins()  # the model API alone (no config, no mixdistill.methods) had not imported them
    return sorted(MODELS)


def _known(name: str) -> bool:
    """Is ``name`` a zoo model, the plugins' included?"""
    if name not in MODELS:
        load_plugins()
    return name in MODELS


def register_model(name: str, fn: Callable[..., nn.Module] | None = None, *, input_size: tuple[int, int, int] | None
                   = None, replace: bool = False):
    """Register ``fn(num_classes, in_channels) -> nn.Module`` as model ``name`` (``model.student=name``,
    ``model.teacher``, ``create_model``). The network follows the zoo's interface: ``forward(x)`` returns logits;
    methods that read features call ``forward_features(x)`` -> ``(logits, {"pooled": (B, feature_dim), "maps": [4-D
    maps, shallow to deep]})``. ``input_size``: ``(num_classes, in_channels, image_size)`` it is usually trained
    on, what ``mixdistill models`` lists it at (default CIFAR-100's). Use as ``@register_model("name")`` or
    ``register_model("name", fn)``; a built-in name cannot be taken, registering a name again needs
    ``replace=True``."""
    def register(fn):
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ValueError(f"model name {name!r}: use letters, digits, '_' and '-' (timm:NAME and tv:NAME are "
                             "built already)")
        if not callable(fn):
            raise TypeError(f"model '{name}': {fn!r} is not callable")
        if input_size is not None and not (
                isinstance(input_size, tuple) and len(input_size) == 3
                and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in input_size)):
            raise ValueError(f"model '{name}': input_size is (num_classes, in_channels, image_size), whole numbers of "
                             f"at least 1; got {input_size!r}")
        if name in BUILT_IN:
            raise ValueError(f"model '{name}' is built in; choose another name")
        if name in MODELS and not replace:
            raise ValueError(f"model '{name}' is registered already (pass replace=True to replace it)")
        MODELS[name] = fn
        NATIVE_INPUT.pop(name, None)
        if input_size is not None:
            NATIVE_INPUT[name] = tuple(int(v) for v in input_size)
        return fn

    return register if fn is None else register(fn)


def unregister_model(name: str) -> None:
    """Remove a model registered with :func:`register_model` (built-in ones stay)."""
    remove_registered(MODELS, "model", name, BUILT_IN)
    NATIVE_INPUT.pop(name, None)


def check_model_name(name: str, kind: str = "model") -> None:
    """Raise unless ``name`` is a zoo model or a ``timm:NAME`` / ``tv:NAME`` the library has (builds nothing)."""
    if is_external(name):
        external.check_name(name)
    elif not _known(name):
        raise UnknownNameError(kind, name, MODELS, PLUGIN_NOTE)


def create_model(name: str, num_classes: int = 100, in_channels: int = 3, pretrained: bool = False) -> nn.Module:
    """Model ``name`` (a zoo name, ``timm:NAME`` or ``tv:NAME``). ``pretrained``: the library's pretrained
    weights for a ``timm:`` / ``tv:`` model (a download); the zoo's own models have none to offer."""
    for what, count in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1:
            raise ConfigError(f"create_model: {what} must be a whole number of at least 1 (got {count!r})")
    if is_external(name):
        return external.create_external(name, num_classes=num_classes, in_channels=in_channels,
                                        pretrained=pretrained)
    if not _known(name):
        raise UnknownNameError("model", name, MODELS, PLUGIN_NOTE)
    if pretrained:
        raise ConfigError(f"pretrained weights come from timm or torchvision: model '{name}' is the zoo's own "
                          "(use timm:NAME or tv:NAME, or load a checkpoint)")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape=(1, 3, 32, 32)) -> int:
    """Multiply-accumulates per image of one eval-mode forward (FlopCounterMode flops / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    p = next(model.parameters())
    x = torch.zeros(tuple(input_shape), device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2 // input_shape[0]


# The input each model is usually trained on, (num_classes, in_channels, image_size): what ``mixdistill models``
# reports it at unless told otherwise. The CRD benchmark's nets: CIFAR-100; das2020's: CIFAR-10; the small CNNs:
# Fashion-MNIST; torchvision's ResNets: ImageNet at 224x224.
CIFAR100_INPUT = (100, 3, 32)
NATIVE_INPUT: dict[str, tuple[int, int, int]] = {
    **{name: (10, 3, 32) for name in ("resnet18_cifar", "lenet5", "alexnet_cifar", "alexnet_cifar_w025")},
    **{name: (10, 1, 28) for name in ("cnn5_w8", "cnn5_w16", "cnn5_w32")},
    **{name: (1000, 3, 224) for name in ("tv_resnet18", "tv_resnet34", "tv_resnet50")},
}


def native_input(name: str) -> tuple[int, int, int]:
    """``(num_classes, in_channels, image_size)`` of the data model ``name`` is usually trained on."""
    if is_external(name):
        external.check_name(name)
        return external.NATIVE_INPUT
    if not _known(name):
        raise UnknownNameError("model", name, MODELS, PLUGIN_NOTE)
    return NATIVE_INPUT.get(name, CIFAR100_INPUT)


class _SkipMetaInit(torch.overrides.TorchFunctionMode):
    """In-place initialisers (``torch.nn.init.*_``, ``Tensor.normal_``) on a meta tensor return it unchanged:
    PyTorch has no meta kernel for ``normal_``, and its Python fallback imports ``torch._dynamo`` on first use
    (seconds), for a result that holds no values anyway."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "normal_" or (name.endswith("_") and getattr(func, "__module__", None) == "torch.nn.init"):
            target = args[0] if args else kwargs.get("tensor")
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def create_meta_model(name: str, num_classes: int = 100, in_channels: int = 3) -> nn.Module:
    """Model ``name`` on PyTorch's meta device: shapes only, no weights allocated or initialised. Enough to
    count parameters and (``count_macs``) multiply-accumulates."""
    with torch.device("meta"), _SkipMetaInit():
        return create_model(name, num_classes=num_classes, in_channels=in_channels)


# what torch says when an image is too small for a network's pools or kernels
TOO_SMALL = ("Output size is too small", "Kernel size can't be greater than actual input size")


def model_summary(name: str, num_classes: int | None = None, in_channels: int | None = None,
                  image_size: int | None = None, macs: bool = True) -> dict:
    """Parameters (and with ``macs``, multiply-accumulates per image) of model ``name``; each of
    ``num_classes``, ``in_channels``, ``image_size`` left None is the model's :func:`native_input`. The model
    is built on PyTorch's meta device: no weights are allocated and nothing is computed, so this is cheap at
    any size. ``macs`` is None where it cannot be counted, and ``macs_error`` says why: ``"too small"`` where the
    input is smaller than the network's layers take (a 5x5 kernel on 2x2), else torch's message (a plugin's forward
    that reads a value, which the meta device has not)."""
    native = native_input(name)
    num_classes = native[0] if num_classes is None else num_classes
    in_channels = native[1] if in_channels is None else in_channels
    image_size = native[2] if image_size is None else image_size
    model = create_meta_model(name, num_classes=num_classes, in_channels=in_channels)
    out = {"name": name, "num_classes": num_classes, "in_channels": in_channels, "image_size": image_size,
           "params": count_parameters(model)}
    if macs:
        try:
            out["macs"] = count_macs(model, (1, in_channels, image_size, image_size))
        except RuntimeError as err:  # torch's shape check, raised on the meta device as on a real one
            out["macs"] = None
            out["macs_error"] = ("too small" if any(phrase in str(err) for phrase in TOO_SMALL)
                                 else str(err).splitlines()[0] if str(err) else type(err).__name__)
    return out


__all__ = [
    "MODELS",
    "ZooModel",
    "check_model_name",
    "count_macs",
    "count_parameters",
    "create_meta_model",
    "create_model",
    "is_external",
    "list_models",
    "load_weights",
    "model_summary",
    "native_input",
]
