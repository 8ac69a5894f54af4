"""DIST and ReviewKD: our losses against transcriptions of the released code, one training step under every
augmentation, a tiny Trainer run (ABFs optimised and checkpointed) and an end-to-end run through the Python API."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import mixdistill
from mixdistill.augment import augment_params, make_augment
from mixdistill.augment.registry import (
    BUILT_IN as AUGMENTATIONS,  # the built-in augmentations
)
from mixdistill.distill import StepInfo, TrainSet
from mixdistill.distill.dist import dist_loss, dist_terms
from mixdistill.distill.reviewkd import ABF, hcl_loss
from mixdistill.errors import ConfigError
from mixdistill.losses import cross_entropy
from mixdistill.methods import METHODS
from mixdistill.models import create_model

# ------------------------------------------------------------------------------- released code, transcribed
# DIST: github hunto/image_classification_sota (the DIST_KD ``classification`` submodule),
# lib/models/losses/dist_kd.py; the CIFAR-100 recipe configs/strategies/distill/dist_cifar.yaml (kd: dist_t4,
# ori_loss_weight 1, kd_loss_weight 2) as wired in lib/models/losses/kd_loss.py.

def ref_cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def ref_pearson_correlation(a, b, eps=1e-8):
    return ref_cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def ref_inter_class_relation(y_s, y_t):
    return 1 - ref_pearson_correlation(y_s, y_t).mean()


def ref_intra_class_relation(y_s, y_t):
    return ref_inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


def ref_dist(z_s, z_t, beta=1.0, gamma=1.0, tau=1.0):
    y_s = (z_s / tau).softmax(dim=1)
    y_t = (z_t / tau).softmax(dim=1)
    inter_loss = tau**2 * ref_inter_class_relation(y_s, y_t)
    intra_loss = tau**2 * ref_intra_class_relation(y_s, y_t)
    return beta * inter_loss + gamma * intra_loss


# ReviewKD: github megvii-research/mdistiller, mdistiller/distillers/ReviewKD.py (hcl_loss, ABF, forward_train),
# with the resnet's preact_feats of mdistiller/models/cifar/resnet.py.

def ref_hcl_loss(fstudent, fteacher):
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        _n, _c, h, _w = fs.shape
        loss = F.mse_loss(fs, ft, reduction="mean")
        cnt = 1.0
        tot = 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction="mean") * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


class RefABF(nn.Module):
    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False),
                                   nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None

    def forward(self, x, y=None, shape=None, out_shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = torch.cat([x, y], dim=1)
            z = self.att_conv(z)
            x = x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w)
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        y = self.conv2(x)
        return y, x


def ref_abfs(in_channels, out_channels):
    abfs = nn.ModuleList()
    mid_channel = min(512, in_channels[-1])
    for idx, in_channel in enumerate(in_channels):
        abfs.append(RefABF(in_channel, mid_channel, out_channels[idx], idx < len(in_channels) - 1))
    return abfs[::-1]


def ref_reviewkd_loss(abfs, shapes, out_shapes, feats_student, pooled_student, preact_teacher, pooled_teacher,
                      epoch, weight=5.0, warmup=20):
    x = feats_student + [pooled_student.unsqueeze(-1).unsqueeze(-1)]
    x = x[::-1]
    results = []
    out_features, res_features = abfs[0](x[0], out_shape=out_shapes[0])
    results.append(out_features)
    for features, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out_features, res_features = abf(features, res_features, shape, out_shape)
        results.insert(0, out_features)
    features_teacher = preact_teacher[1:] + [pooled_teacher.unsqueeze(-1).unsqueeze(-1)]
    return weight * min(epoch / warmup, 1.0) * ref_hcl_loss(results, features_teacher)


def ref_resnet_features(net, x):
    """mdistiller's CIFAR ResNet forward: (feats, preact_feats, pooled_feat); each stage's last block returns its
    output before the ReLU as well."""
    x = net.relu(net.bn1(net.conv1(x)))
    feats, preacts = [x], [x]
    for layer in (net.layer1, net.layer2, net.layer3):
        for block in layer[:-1]:
            x = block(x)
        last = layer[-1]
        out = last.bn2(last.conv2(last.relu(last.bn1(last.conv1(x)))))
        residual = x if last.downsample is None else last.downsample(x)
        out += residual
        preacts.append(out)
        x = F.relu(out)
        feats.append(x)
    return feats, preacts, F.adaptive_avg_pool2d(x, 1).flatten(1)


# ------------------------------------------------------------------------------------------------ helpers

def info(epoch=0, seed=0, n=32):
    return StepInfo(epoch=epoch, step=0, epochs=1, generator=torch.Generator().manual_seed(seed),
                    indices=torch.arange(n))


def train_set(images, labels):
    n = images.shape[0]
    return TrainSet(num_samples=n, num_classes=10, augmented_by_loader=False,
                    clean_batches=lambda: iter([(images, labels, torch.arange(n))]))


def bound_augment(name):
    params = {"mean": (0.5,), "std": (0.5,)} if "mean" in augment_params(name) else {}
    return make_augment(name, **params)


def build(method, student="cnn5_w8", teacher="cnn5_w8", augment=None, shape=(1, 28, 28), n=32, seed=0, **params):
    torch.manual_seed(seed)
    s = create_model(student, num_classes=10, in_channels=shape[0])
    t = create_model(teacher, num_classes=10, in_channels=shape[0])
    cls = METHODS[method]
    d = cls(s, t, cls.Params(**params))
    d.set_augment(bound_augment(augment) if augment else None)
    g = torch.Generator().manual_seed(seed + 1)
    images, labels = torch.randn(n, *shape, generator=g), torch.arange(n) % 10
    d.prepare(train_set(images, labels))
    return d, images, labels


# -------------------------------------------------------------------------------------- DIST: the maths

def test_dist_matches_the_released_loss():
    g = torch.Generator().manual_seed(0)
    for b, c, scale in ((8, 10, 1.0), (64, 100, 5.0), (3, 7, 0.1)):
        z_s, z_t = torch.randn(b, c, generator=g) * scale, torch.randn(b, c, generator=g) * scale
        for beta, gamma, tau in ((1.0, 1.0, 4.0), (2.0, 0.5, 1.0), (1.0, 1.0, 0.5)):
            torch.testing.assert_close(dist_loss(z_s, z_t, beta, gamma, tau), ref_dist(z_s, z_t, beta, gamma, tau))
        inter, intra = dist_terms(z_s, z_t, 4.0)
        torch.testing.assert_close(inter + intra, ref_dist(z_s, z_t, tau=4.0))


def test_dist_defaults_and_step_match_the_release():
    p = METHODS["dist"].Params()
    assert (p.ce_weight, p.kd_weight, p.beta, p.gamma, p.tau) == (1.0, 2.0, 1.0, 1.0, 4.0)
    d, images, labels = build("dist")
    d.train()
    out = d.forward_train(images, labels, info())
    with torch.no_grad():
        z_s, z_t = d.student(images), d.teacher(images)
    torch.testing.assert_close(out.losses["ce"], cross_entropy(z_s, labels))
    torch.testing.assert_close(out.losses["dist"], 2.0 * ref_dist(z_s, z_t, 1.0, 1.0, 4.0))
    # identical, well-spread logits: both relations are 1 - (1 - O(eps)), i.e. ~0
    z = torch.randn(16, 10, generator=torch.Generator().manual_seed(5)) * 10
    assert dist_loss(z, z).abs() < 1e-4


def test_dist_is_fp32_under_bf16_autocast():
    d, images, labels = build("dist")
    d.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d.forward_train(images, labels, info())
    assert out.losses["dist"].dtype == torch.float32 and torch.isfinite(out.losses["dist"])


# ---------------------------------------------------------------------------------- ReviewKD: the maths

def test_hcl_matches_the_released_loss():
    g = torch.Generator().manual_seed(1)
    sizes = [(4, 8, 1), (4, 6, 2), (4, 5, 3), (4, 7, 5), (4, 3, 8), (2, 4, 16)]
    fs = [torch.randn(n, c, h, h, generator=g) for n, c, h in sizes]
    ft = [torch.randn(n, c, h, h, generator=g) for n, c, h in sizes]
    torch.testing.assert_close(hcl_loss(fs, ft), ref_hcl_loss(fs, ft))
    for a, b in zip(fs, ft):  # per level too
        torch.testing.assert_close(hcl_loss([a], [b]), ref_hcl_loss([a], [b]))


@pytest.mark.parametrize("fuse,size,shape,out_shape", [(True, 4, 4, 8), (True, 8, 8, 8), (False, 1, 1, 1),
                                                        (True, 3, 3, 7)])
def test_abf_matches_the_released_module(fuse, size, shape, out_shape):
    torch.manual_seed(2)
    ours, ref = ABF(6, 5, 7, fuse), RefABF(6, 5, 7, fuse)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 6, size, size)
    y = torch.randn(4, 5, max(1, size // 2), max(1, size // 2)) if fuse else None
    for a, b in zip(ours(x, y, (shape, shape), (out_shape, out_shape)), ref(x, y, shape, out_shape)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("epoch", [0, 9, 30])
def test_reviewkd_matches_mdistiller_on_resnet32x4_to_resnet8x4(epoch):
    """mdistiller's configs/cifar100/reviewkd.yaml pair: shapes, channels and the whole loss."""
    d, images, labels = build("reviewkd", "resnet8x4", "resnet32x4", shape=(3, 32, 32), n=4)
    assert d.shapes == [(1, 1), (8, 8), (16, 16), (32, 32)] == d.out_shapes  # cfg.py SHAPES / OUT_SHAPES
    abfs = ref_abfs([64, 128, 256, 256], [64, 128, 256, 256])  # cfg.py IN_CHANNELS / OUT_CHANNELS
    abfs.load_state_dict(d.abfs.state_dict())  # same keys: abfs.0 is the pooled level
    d.train()
    out = d.forward_train(images, labels, info(epoch=epoch, n=4))
    with torch.no_grad():
        _, preacts, pooled_t = ref_resnet_features(d.teacher, images)
    feats, _, pooled_s = ref_resnet_features(d.student, images)
    ref = ref_reviewkd_loss(abfs, [1, 8, 16, 32], [1, 8, 16, 32], feats, pooled_s, preacts, pooled_t, epoch + 1)
    torch.testing.assert_close(out.losses["reviewkd"], ref)
    torch.testing.assert_close(out.losses["ce"], cross_entropy(d.student(images), labels))


def test_reviewkd_wrn_teacher_targets_are_mdistillers_preact_feats():
    d, images, _ = build("reviewkd", "wrn_16_1", "wrn_16_2", shape=(3, 32, 32), n=4)
    t = d.teacher
    _, feats = t.forward_features(images)
    f1, f2, f3 = feats["maps"][1:]
    expected = [t.block2.layer[0].bn1(f1), t.block3.layer[0].bn1(f2), t.bn1(f3), feats["pooled"][:, :, None, None]]
    for a, b in zip(d.teacher_levels(images), expected):
        torch.testing.assert_close(a, b.detach())
    d2, *_ = build("reviewkd", "wrn_16_1", "wrn_16_2", shape=(3, 32, 32), n=4, teacher_features="maps")
    d2.teacher.load_state_dict(t.state_dict())
    for a, b in zip(d2.teacher_levels(images), feats["maps"][1:]):
        torch.testing.assert_close(a, b.detach())


def test_reviewkd_levels_channels_and_errors():
    p = METHODS["reviewkd"].Params()
    assert (p.ce_weight, p.reviewkd_weight, p.warmup, p.max_mid_channel) == (1.0, 5.0, 20, 512)
    d, *_ = build("reviewkd", "lenet5", "cnn5_w8")  # 2 maps vs 4: one map level + pooled
    assert d.num_maps == 1 and d.shapes == [(1, 1), (5, 5)] and d.out_shapes == [(1, 1), (3, 3)]
    assert [a.conv1[0].in_channels for a in d.abfs] == [84, 16] and [a.conv2[0].out_channels for a in d.abfs] == [64, 64]
    assert d.abfs[0].att_conv is None and d.abfs[1].att_conv is not None

    class OneMap(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.Linear(4, 10)

        def forward_features(self, x):
            m = self.conv(x)
            pooled = m.mean((2, 3))
            return self.fc(pooled), {"pooled": pooled, "maps": [m]}

    cls = METHODS["reviewkd"]
    images = torch.randn(4, 1, 28, 28)
    d = cls(OneMap(), create_model("cnn5_w8", num_classes=10, in_channels=1), cls.Params())
    with pytest.raises(ConfigError, match="two 4-D stage maps from the student"):
        d.prepare(train_set(images, torch.arange(4)))
    with pytest.raises(ConfigError, match="teacher_features=preact"):
        build("reviewkd", teacher_features="preact")


def test_reviewkd_is_fp32_under_bf16_autocast():
    d, images, labels = build("reviewkd")
    d.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d.forward_train(images, labels, info(epoch=25))
    assert out.losses["reviewkd"].dtype == torch.float32 and torch.isfinite(out.losses["reviewkd"])


# ------------------------------------------------------------------------- every augmentation, one step

@pytest.mark.parametrize("augment", sorted(AUGMENTATIONS))
@pytest.mark.parametrize("method", ["dist", "reviewkd"])
def test_one_step_under_every_augmentation(method, augment):
    d, images, labels = build(method, augment=augment)
    d.train()
    params = dict(d.named_parameters())
    learnable = {id(p) for p in d.learnable_parameters()}
    assert all((id(p) in learnable) != name.startswith("teacher.") for name, p in params.items())
    before = {name: p.detach().clone() for name, p in params.items()}
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.1)
    out = d.forward_train(images, labels, info(epoch=5))
    assert all(torch.isfinite(v) for v in out.losses.values()), out.losses
    opt.zero_grad()
    sum(out.losses.values()).backward()
    opt.step()
    changed = {name for name, p in params.items() if not torch.equal(p, before[name])}
    assert not any(name.startswith("teacher.") for name in changed)
    assert any(name.startswith("student.") for name in changed)
    if method == "reviewkd":
        abf_names = {name for name in params if name.startswith("abfs.")}
        assert abf_names and abf_names <= changed, abf_names - changed


# --------------------------------------------------------------------------------------- through training

@pytest.fixture(scope="module")
def teacher_run(fmnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    summary = mixdistill.train(None, {**tiny(fmnist_root, out), "name": "teacher"}, quiet=True)
    return out, f"{summary['run_dir']}/last.pt"


def tiny(root, out):
    return {"data.root": str(root), "output_dir": str(out), "data.batch_size": 32, "data.train_subset": 64,
            "data.eval_batch_size": 200, "model.student": "cnn5_w8", "optim.epochs": 1, "optim.schedule": "onecycle",
            "optim.milestones": [], "train.progress": False, "train.tensorboard": False, "train.device": "cpu",
            "train.precision": "fp32"}


def test_reviewkd_tiny_run_trains_and_checkpoints_the_abfs(fmnist_root, teacher_run):
    from mixdistill.config import resolve_config
    from mixdistill.engine.trainer import Trainer

    out, teacher = teacher_run
    cfg = resolve_config(None, {**tiny(fmnist_root, out), "name": "reviewkd", "method": "reviewkd",
                                "augment": "cutmix", "model.teacher_checkpoint": teacher})
    trainer = Trainer(cfg, quiet=True)
    abfs = trainer.distiller.abfs
    in_optimiser = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in in_optimiser for p in abfs.parameters())
    before = {k: v.clone() for k, v in abfs.state_dict().items()}
    trainer.fit()
    trainer.close()
    after = abfs.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    state = torch.load(cfg.run_dir / "last.pt", map_location="cpu", weights_only=False)
    saved = state["distiller_extra"]["abfs"]
    assert saved.keys() == after.keys() and all(torch.equal(saved[k], after[k]) for k in saved)
    history = [line for line in (cfg.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert history and "nan" not in history[-1].lower()


def test_dist_end_to_end_with_cutmix_pick(fmnist_root, teacher_run):
    out, teacher = teacher_run
    summary = mixdistill.train(None, {**tiny(fmnist_root, out), "name": "dist_pick", "method": "dist",
                                      "augment": "cutmix_pick", "model.teacher_checkpoint": teacher}, quiet=True)
    assert summary["method"] == "dist" and summary["last_acc"] is not None and math.isfinite(summary["last_acc"])
