"""ReviewKD: Distilling Knowledge via Knowledge Review (Chen, Liu, Zhao, Jia, CVPR 2021, arXiv 2104.09044).

Follows mdistiller (github megvii-research/mdistiller, ``mdistiller/distillers/ReviewKD.py``, defaults in
``mdistiller/engine/cfg.py``, CIFAR-100 config ``configs/cifar100/reviewkd.yaml``):

    loss = ce_weight * CE + reviewkd_weight * min((epoch + 1) / warmup, 1) * HCL(ABF-reviewed student, teacher)

(mdistiller's 1-based epoch is ``info.epoch + 1`` here). Released CIFAR-100 values: ``CE_WEIGHT`` 1,
``REVIEWKD_WEIGHT`` 5 (``reviewkd.yaml``; the ``cfg.py`` default is 1), ``WARMUP_EPOCHS`` 20, mid channels
``min(512, student's last channels)``.

Levels. mdistiller's models return ``feats`` = [stem, stage 1, ..., stage S] (post-activation), ``preact_feats``
(the same, each stage's output before its final ReLU / BN-ReLU) and ``pooled_feat``. ReviewKD reviews the student's
``feats + [pooled]`` and matches them to the teacher's ``preact_feats[1:] + [pooled]``: with the CIFAR ResNets
(IN_CHANNELS / OUT_CHANNELS of length 4) that is stages 1..3 plus the pooled vector as a 1x1 map, the stem unused.
Here a model's ``forward_features`` gives ``maps`` (for resnet, wrn, resnetv2, tv_resnet: [stem, stage 1, ...];
cnn5: its four block outputs, the first at full resolution; lenet5: its two conv-pool outputs; vgg, mobilenetv2,
shufflenet, alexnet: their stage outputs) and ``pooled``. The levels are the top ``n`` maps of each network plus
``pooled`` as a [B, D, 1, 1] map, with ``n = min(len(student maps), len(teacher maps)) - 1``: for two networks with
the same number of maps that is ``maps[1:] + [pooled]``, mdistiller's lists exactly (for resnet and wrn pairs the
same tensors). Every level's channels and spatial size (mdistiller's IN_CHANNELS = the student's, OUT_CHANNELS =
the teacher's, SHAPES = the student's, OUT_SHAPES = the teacher's) are read in ``prepare`` from one
``forward_features`` of each network on a dummy batch of the training image shape (eval mode, no gradient).
A network whose ``forward_features`` gives fewer than two 4-D maps cannot be reviewed: ``prepare`` raises a
ConfigError.

Teacher targets (``teacher_features``): mdistiller uses the teacher's pre-activation ``preact_feats``. ``auto``
(default) and ``preact`` compute them where this package knows the family's pre-activation form: CIFAR ResNets
(resnet8 ... resnet32x4: each stage's last block recomputed to ``bn2(conv2(...)) + shortcut``, before its ReLU, by
a forward hook on the teacher) and WRNs (``block2.layer[0].bn1(stage 1)``, ``block3.layer[0].bn1(stage 2)``,
``bn1(stage 3)``, as mdistiller). For other teacher families ``auto`` uses the maps as the model gives them
(post-activation: a difference from mdistiller, whose vgg / ShuffleNetV1 / ResNet50 teachers give pre-activation
features) and ``preact`` is a ConfigError; ``maps`` always uses the maps. The student's features are
post-activation, as mdistiller's default ``STU_PREACT: False``.

ABF (attention-based fusion), one per level, built deepest first (the pooled level has no fusion): 1x1 conv + BN to
the mid channels; below the deepest level the residual from the level above is upsampled (nearest) to this level's
size and fused with it by a 1x1 conv + sigmoid giving two per-pixel weights; the result is resized (nearest) to the
teacher's size when they differ and mapped by a 3x3 conv + BN to the teacher's channels. HCL: per level the MSE
plus the MSEs of adaptive-average-pooled 4x4, 2x2, 1x1 versions (only sizes below the level's height) weighted
1/2, 1/4, 1/8, divided by the sum of the weights; the levels summed. The ABFs are learnable (in
``learnable_parameters`` and checkpointed as ``abfs``); they, HCL and the features run in fp32 with autocast off.

Augmentation: teacher and student both see ``self.mix(...)``'s images (the teacher is re-run for its features
even when CutMixPick has its logits); the CE term is ``mixed_cross_entropy`` on the record's mixed labels. The
feature loss needs no labels.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mixdistill.distill.base import Distiller, MethodParams, TrainSet, step_output
from mixdistill.distill.dkd import warmup_factor
from mixdistill.errors import ConfigError
from mixdistill.losses import mixed_cross_entropy
from mixdistill.registry import METHODS

HCL_POOL_SIZES = (4, 2, 1)


def hcl_loss(student_feats: list[torch.Tensor], teacher_feats: list[torch.Tensor]) -> torch.Tensor:
    """Hierarchical context loss: sum over levels of the pyramid-weighted mean squared errors (module docstring)."""
    total = 0.0
    for fs, ft in zip(student_feats, teacher_feats):
        height = fs.shape[2]
        level = F.mse_loss(fs, ft, reduction="mean")
        weight, weight_sum = 1.0, 1.0
        for size in HCL_POOL_SIZES:
            if size >= height:
                continue
            weight /= 2.0
            level = level + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, (size, size)),
                                                F.adaptive_avg_pool2d(ft, (size, size)), reduction="mean")
            weight_sum += weight
        total = total + level / weight_sum
    return total


class ABF(nn.Module):
    """Attention-based fusion of one student level with the residual from the level above (``fuse``)."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channels))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, shape: tuple[int, int] | None = None,
                out_shape: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(this level's output in the teacher's channels and size, the fused mid-channel map passed down)."""
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, tuple(shape), mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_shape):
            x = F.interpolate(x, tuple(out_shape), mode="nearest")
        return self.conv2(x), x


def _stage_maps(feats: dict, who: str) -> list[torch.Tensor]:
    maps = feats.get("maps") if isinstance(feats, dict) else None
    if not maps or len(maps) < 2 or any(m.dim() != 4 for m in maps):
        raise ConfigError(f"reviewkd needs at least two 4-D stage maps from the {who}'s forward_features "
                          f"(a stem and one stage); this {who} gives "
                          f"{[tuple(m.shape) for m in maps] if maps else 'none'}")
    return list(maps)


def levels(maps: list[torch.Tensor], pooled: torch.Tensor, n: int) -> list[torch.Tensor]:
    """The top ``n`` maps plus the pooled vector as a 1x1 map, shallowest first."""
    return list(maps[len(maps) - n:]) + [pooled[:, :, None, None]]


@contextlib.contextmanager
def _resnet_preact_hooks(teacher: nn.Module, captured: dict):
    """Forward hooks on each stage's last block of a CIFAR ResNet recording its output before the ReLU."""
    handles = []
    for stage, layer in enumerate((teacher.layer1, teacher.layer2, teacher.layer3), start=1):
        def hook(block, inputs, _output, stage=stage):
            captured[stage] = block.preact(inputs[0])
        handles.append(layer[-1].register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def preact_family(model: nn.Module) -> str | None:
    """'resnet' or 'wrn' when the teacher's pre-activation stage outputs can be computed here, else None."""
    from mixdistill.models.resnet import CifarResNet
    from mixdistill.models.wrn import WideResNet

    if isinstance(model, CifarResNet):
        return "resnet"
    if isinstance(model, WideResNet):
        return "wrn"
    return None


class ReviewKDParams(MethodParams):
    ce_weight: float = Field(1.0, ge=0, description="weight of the CE term (mdistiller REVIEWKD.CE_WEIGHT)")
    reviewkd_weight: float = Field(5.0, ge=0, description="weight of the HCL term (REVIEWKD_WEIGHT: 5 in "
                                                          "mdistiller's configs/cifar100/reviewkd.yaml)")
    warmup: int = Field(20, ge=0, description="epochs over which the HCL weight ramps up linearly, "
                                              "min((epoch + 1) / warmup, 1) (WARMUP_EPOCHS; 0: none)")
    max_mid_channel: int = Field(512, gt=0, description="ABF mid channels = min(this, the student's pooled "
                                                        "channels) (MAX_MID_CHANNEL)")
    teacher_features: Literal["auto", "preact", "maps"] = Field(
        "auto", description="teacher targets: preact = mdistiller's pre-activation stage outputs (resnet and wrn "
                            "teachers only), maps = the maps as the model gives them, auto = preact where available")


@METHODS.register("reviewkd")
class ReviewKD(Distiller):
    source = ('Chen, Liu, Zhao, Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021 (arXiv 2104.09044), '
              'as mdistiller')
    Params = ReviewKDParams
    reads_teacher_features = True

    def _teacher_preact(self) -> bool:
        mode = self.params.teacher_features
        family = preact_family(self.teacher)
        if mode == "preact" and family is None:
            raise ConfigError(f"reviewkd teacher_features=preact: the pre-activation features of a "
                              f"{type(self.teacher).__name__} teacher are not available here (resnet and wrn "
                              "teachers only); use teacher_features=auto or maps")
        return mode != "maps" and family is not None

    def teacher_levels(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's target levels (shallowest first; see the module docstring), without gradient."""
        captured: dict[int, torch.Tensor] = {}
        family = preact_family(self.teacher) if self._use_preact else None
        hooks = _resnet_preact_hooks(self.teacher, captured) if family == "resnet" else contextlib.nullcontext()
        with torch.no_grad(), hooks:
            _, feats = self.teacher.forward_features(images)
            maps = list(_stage_maps(feats, "teacher"))
            if family == "resnet":
                maps[1:] = [captured[k] for k in range(1, len(maps))]
            elif family == "wrn":
                t = self.teacher
                maps[1:] = [t.block2.layer[0].bn1(maps[1]), t.block3.layer[0].bn1(maps[2]), t.bn1(maps[3])]
            return levels(maps, feats["pooled"], self.num_maps)

    def prepare(self, data: TrainSet) -> None:
        p = self.params
        self._use_preact = self._teacher_preact()
        images = next(iter(data.clean_batches()))[0]
        device = next(self.student.parameters()).device
        probe = torch.zeros((2, *images.shape[1:]), device=device)
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                _, s_feats = self.student.forward_features(probe)
                s_maps = _stage_maps(s_feats, "student")
                _, t_feats = self.teacher.forward_features(probe)
                self.num_maps = min(len(s_maps), len(_stage_maps(t_feats, "teacher"))) - 1
                s_levels = levels(s_maps, s_feats["pooled"], self.num_maps)
                t_levels = self.teacher_levels(probe)
        finally:
            self.student.train(was_training)
        in_channels = [f.shape[1] for f in s_levels]
        out_channels = [f.shape[1] for f in t_levels]
        mid = min(p.max_mid_channel, in_channels[-1])
        last = len(in_channels) - 1
        # deepest level first, as mdistiller's reversed ModuleList: abfs[0] is the pooled level, without fusion
        self.abfs = nn.ModuleList(ABF(in_channels[i], mid, out_channels[i], fuse=i < last)
                                  for i in reversed(range(len(in_channels)))).to(device)
        self.shapes = [tuple(f.shape[-2:]) for f in reversed(s_levels)]
        self.out_shapes = [tuple(f.shape[-2:]) for f in reversed(t_levels)]

    def review(self, student_levels: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF outputs, shallowest first (one per level, in the teacher's channels and sizes)."""
        x = student_levels[::-1]
        out, residual = self.abfs[0](x[0], out_shape=self.out_shapes[0])
        results = [out]
        for feat, abf, shape, out_shape in zip(x[1:], self.abfs[1:], self.shapes[1:], self.out_shapes[1:]):
            out, residual = abf(feat, residual, shape, out_shape)
            results.insert(0, out)
        return results

    def forward_train(self, images, labels, info):
        p = self.params
        batch = self.mix(images, labels, info)
        teacher_levels = self.teacher_levels(batch.images)
        logits, feats = self.student.forward_features(batch.images)
        student_levels = levels(feats["maps"], feats["pooled"], self.num_maps)
        with torch.autocast(logits.device.type, enabled=False):
            reviewed = self.review([f.float() for f in student_levels])
            hcl = hcl_loss(reviewed, [f.float() for f in teacher_levels])
        return step_output(logits, {
            "ce": p.ce_weight * mixed_cross_entropy(logits, labels, batch),
            "reviewkd": p.reviewkd_weight * warmup_factor(info.epoch, p.warmup) * hcl,
        }, labels, batch, stats={"hcl": hcl.detach()})
