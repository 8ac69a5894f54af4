"""RepDistiller's feature / relation distillers (fitnet, at, sp, pkt, rkd, nst, cc, vid): each loss against a
transcription of the released code (github HobbitLong/RepDistiller), one training step per method and
augmentation, the FitNets hint stage, checkpoints, and one run through the command line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixdistill.augment import make_augment
from mixdistill.augment.registry import AUGMENTATIONS, augment_params
from mixdistill.distill import StepInfo, TrainSet
from mixdistill.distill.at import at_loss
from mixdistill.distill.cc import correlation_loss
from mixdistill.distill.fitnet import ConvReg, hint_loss
from mixdistill.distill.nst import nst_loss
from mixdistill.distill.pkt import pkt_loss
from mixdistill.distill.rkd import rkd_loss
from mixdistill.distill.sp import similarity_loss
from mixdistill.distill.vid import VIDRegressor
from mixdistill.errors import ConfigError
from mixdistill.methods import METHODS
from mixdistill.models import create_model

FEATURE_METHODS = ("fitnet", "at", "sp", "pkt", "rkd", "nst", "cc", "vid")
# RepDistiller's scripts/run_cifar_distill.sh: -r 1 -a 0 -b <beta>
BETA = {"fitnet": 100.0, "at": 1000.0, "sp": 3000.0, "cc": 0.02, "vid": 1.0, "rkd": 1.0, "pkt": 30000.0, "nst": 50.0}


# ----------------------------------------------------------------------- transcriptions of the released code

class RefAttention(nn.Module):
    """distiller_zoo/AT.py, class Attention (p = 2)."""

    def __init__(self, p=2):
        super().__init__()
        self.p = p

    def forward(self, g_s, g_t):
        return [self.at_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def at_loss(self, f_s, f_t):
        s_H, t_H = f_s.shape[2], f_t.shape[2]
        if s_H > t_H:
            f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
        elif s_H < t_H:
            f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
        return (self.at(f_s) - self.at(f_t)).pow(2).mean()

    def at(self, f):
        return F.normalize(f.pow(self.p).mean(1).view(f.size(0), -1))


class RefNST(nn.Module):
    """distiller_zoo/NST.py, class NSTLoss (full_loss = True)."""

    def forward(self, g_s, g_t):
        return [self.nst_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def nst_loss(self, f_s, f_t):
        s_H, t_H = f_s.shape[2], f_t.shape[2]
        if s_H > t_H:
            f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
        elif s_H < t_H:
            f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
        f_s = f_s.view(f_s.shape[0], f_s.shape[1], -1)
        f_s = F.normalize(f_s, dim=2)
        f_t = f_t.view(f_t.shape[0], f_t.shape[1], -1)
        f_t = F.normalize(f_t, dim=2)
        return (self.poly_kernel(f_t, f_t).mean().detach() + self.poly_kernel(f_s, f_s).mean()
                - 2 * self.poly_kernel(f_s, f_t).mean())

    def poly_kernel(self, a, b):
        a = a.unsqueeze(1)
        b = b.unsqueeze(2)
        return (a * b).sum(-1).pow(2)


class RefSimilarity(nn.Module):
    """distiller_zoo/SP.py, class Similarity."""

    def forward(self, g_s, g_t):
        return [self.similarity_loss(f_s, f_t) for f_s, f_t in zip(g_s, g_t)]

    def similarity_loss(self, f_s, f_t):
        bsz = f_s.shape[0]
        f_s = f_s.view(bsz, -1)
        f_t = f_t.view(bsz, -1)
        G_s = torch.nn.functional.normalize(torch.mm(f_s, torch.t(f_s)))
        G_t = torch.nn.functional.normalize(torch.mm(f_t, torch.t(f_t)))
        G_diff = G_t - G_s
        return (G_diff * G_diff).view(-1, 1).sum(0) / (bsz * bsz)


def ref_pkt(output_net, target_net, eps=0.0000001):
    """distiller_zoo/PKT.py, PKT.cosine_similarity_loss."""
    output_net_norm = torch.sqrt(torch.sum(output_net ** 2, dim=1, keepdim=True))
    output_net = output_net / (output_net_norm + eps)
    output_net[output_net != output_net] = 0  # noqa: PLR0124  (NaN test, as released)
    target_net_norm = torch.sqrt(torch.sum(target_net ** 2, dim=1, keepdim=True))
    target_net = target_net / (target_net_norm + eps)
    target_net[target_net != target_net] = 0  # noqa: PLR0124
    model_similarity = torch.mm(output_net, output_net.transpose(0, 1))
    target_similarity = torch.mm(target_net, target_net.transpose(0, 1))
    model_similarity = (model_similarity + 1.0) / 2.0
    target_similarity = (target_similarity + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)
    return torch.mean(target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps)))


class RefRKD(nn.Module):
    """distiller_zoo/RKD.py, class RKDLoss (w_d = 25, w_a = 50)."""

    def __init__(self, w_d=25, w_a=50):
        super().__init__()
        self.w_d, self.w_a = w_d, w_a

    def forward(self, f_s, f_t):
        student = f_s.view(f_s.shape[0], -1)
        teacher = f_t.view(f_t.shape[0], -1)
        with torch.no_grad():
            t_d = self.pdist(teacher, squared=False)
            mean_td = t_d[t_d > 0].mean()
            t_d = t_d / mean_td
        d = self.pdist(student, squared=False)
        mean_d = d[d > 0].mean()
        d = d / mean_d
        loss_d = F.smooth_l1_loss(d, t_d)
        with torch.no_grad():
            td = (teacher.unsqueeze(0) - teacher.unsqueeze(1))
            norm_td = F.normalize(td, p=2, dim=2)
            t_angle = torch.bmm(norm_td, norm_td.transpose(1, 2)).view(-1)
        sd = (student.unsqueeze(0) - student.unsqueeze(1))
        norm_sd = F.normalize(sd, p=2, dim=2)
        s_angle = torch.bmm(norm_sd, norm_sd.transpose(1, 2)).view(-1)
        loss_a = F.smooth_l1_loss(s_angle, t_angle)
        return self.w_d * loss_d + self.w_a * loss_a

    @staticmethod
    def pdist(e, squared=False, eps=1e-12):
        e_square = e.pow(2).sum(dim=1)
        prod = e @ e.t()
        res = (e_square.unsqueeze(1) + e_square.unsqueeze(0) - 2 * prod).clamp(min=eps)
        if not squared:
            res = res.sqrt()
        res = res.clone()
        res[range(len(e)), range(len(e))] = 0
        return res


def ref_correlation(f_s, f_t):
    """distiller_zoo/CC.py, class Correlation."""
    delta = torch.abs(f_s - f_t)
    return torch.mean((delta[:-1] * delta[1:]).sum(1))


class RefConvReg(nn.Module):
    """models/util.py, class ConvReg (use_relu = True)."""

    def __init__(self, s_shape, t_shape, use_relu=True):
        super().__init__()
        self.use_relu = use_relu
        _s_N, s_C, s_H, s_W = s_shape
        _t_N, t_C, t_H, t_W = t_shape
        if s_H == 2 * t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=3, stride=2, padding=1)
        elif s_H * 2 == t_H:
            self.conv = nn.ConvTranspose2d(s_C, t_C, kernel_size=4, stride=2, padding=1)
        elif s_H >= t_H:
            self.conv = nn.Conv2d(s_C, t_C, kernel_size=(1 + s_H - t_H, 1 + s_W - t_W))
        else:
            raise NotImplementedError
        self.bn = nn.BatchNorm2d(t_C)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        return self.relu(self.bn(x)) if self.use_relu else self.bn(x)


class RefVIDLoss(nn.Module):
    """distiller_zoo/VID.py, class VIDLoss."""

    def __init__(self, num_input_channels, num_mid_channel, num_target_channels, init_pred_var=5.0, eps=1e-5):
        super().__init__()

        def conv1x1(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False, stride=stride)

        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_target_channels),
        )
        self.log_scale = torch.nn.Parameter(np.log(np.exp(init_pred_var - eps) - 1.0) * torch.ones(num_target_channels))
        self.eps = eps

    def forward(self, input, target):
        s_H, t_H = input.shape[2], target.shape[2]
        if s_H > t_H:
            input = F.adaptive_avg_pool2d(input, (t_H, t_H))
        elif s_H < t_H:
            target = F.adaptive_avg_pool2d(target, (s_H, s_H))
        pred_mean = self.regressor(input)
        pred_var = torch.log(1.0 + torch.exp(self.log_scale)) + self.eps
        pred_var = pred_var.view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)


# ----------------------------------------------------------------------------------- helpers

def rand(*shape, seed=0, relu=False):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x.relu() if relu else x


def same_value_and_grad(ours, ref, f_s: list[torch.Tensor], f_t: list[torch.Tensor], params=((), ())):
    """ours(f_s, f_t) == ref(f_s, f_t), and so are the gradients w.r.t. the student features (and each pair of
    parameters), fp32 to rounding."""
    outs, grads = [], []
    for fn, ps in ((ours, params[0]), (ref, params[1])):
        xs = [f.clone().requires_grad_(True) for f in f_s]
        loss = fn(xs, [f.clone() for f in f_t])
        loss = loss.sum() if loss.dim() else loss
        g = torch.autograd.grad(loss, xs + list(ps))
        outs.append(loss.detach())
        grads.append(g)
    torch.testing.assert_close(outs[0], outs[1])
    assert torch.isfinite(outs[0])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, equal_nan=True)  # PKT's zero row: NaN in both


# ------------------------------------------------------------------------------ 1. losses vs the release

@pytest.mark.parametrize("s_shape, t_shape", [((6, 8, 8, 8), (6, 16, 8, 8)),    # equal sizes
                                              ((6, 8, 8, 8), (6, 16, 4, 4)),    # student larger: pooled
                                              ((6, 8, 4, 4), (6, 16, 8, 8))])   # teacher larger: pooled
def test_at_and_nst_match_the_release(s_shape, t_shape):
    f_s = [rand(*s_shape, seed=1, relu=True), rand(s_shape[0], 4, 4, 4, seed=2, relu=True)]
    f_t = [rand(*t_shape, seed=3, relu=True), rand(t_shape[0], 12, 4, 4, seed=4, relu=True)]
    same_value_and_grad(lambda s, t: sum(at_loss(a, b) for a, b in zip(s, t)),
                        lambda s, t: sum(RefAttention()(s, t)), f_s, f_t)
    same_value_and_grad(lambda s, t: sum(nst_loss(a, b) for a, b in zip(s, t)),
                        lambda s, t: sum(RefNST()(s, t)), f_s, f_t)


def test_sp_matches_the_release():
    same_value_and_grad(lambda s, t: similarity_loss(s[0], t[0]), lambda s, t: sum(RefSimilarity()(s, t)),
                        [rand(10, 8, 3, 3, seed=1, relu=True)], [rand(10, 16, 3, 3, seed=2, relu=True)])


@pytest.mark.parametrize("zero_row", [False, True])
def test_pkt_matches_the_release(zero_row):
    f_s, f_t = rand(12, 16, seed=1, relu=True), rand(12, 32, seed=2, relu=True)
    if zero_row:  # a zero feature vector: the value is guarded by eps; the gradient of sqrt(0) is NaN, as released
        f_s[3] = 0.0
    same_value_and_grad(lambda s, t: pkt_loss(s[0], t[0]), lambda s, t: ref_pkt(s[0], t[0]), [f_s], [f_t])


def test_rkd_matches_the_release():
    same_value_and_grad(lambda s, t: rkd_loss(s[0], t[0]), lambda s, t: RefRKD()(s[0], t[0]),
                        [rand(10, 16, seed=1)], [rand(10, 32, seed=2)])


@pytest.mark.parametrize("s_hw, t_hw", [(8, 4), (4, 8), (8, 8), (7, 5)])
def test_fitnet_convreg_and_hint_loss_match_the_release(s_hw, t_hw):
    s_shape, t_shape = (6, 8, s_hw, s_hw), (6, 16, t_hw, t_hw)
    torch.manual_seed(0)
    ours = ConvReg(s_shape, t_shape)
    ref = RefConvReg(s_shape, t_shape)
    ref.load_state_dict(ours.state_dict())
    assert type(ours.conv) is type(ref.conv) and ours.conv.weight.shape == ref.conv.weight.shape
    same_value_and_grad(lambda s, t: hint_loss(ours(s[0]), t[0]), lambda s, t: nn.MSELoss()(ref(s[0]), t[0]),
                        [rand(*s_shape, seed=1)], [rand(*t_shape, seed=2, relu=True)],
                        params=(list(ours.parameters()), list(ref.parameters())))


def test_fitnet_convreg_refuses_what_the_release_cannot_map():
    with pytest.raises(ConfigError, match="hint_layer"):
        ConvReg((2, 8, 3, 3), (2, 8, 7, 7))


def test_cc_matches_the_release_with_linear_embeddings():
    torch.manual_seed(0)
    d = make("cc")
    embed_s, embed_t = nn.Linear(d.student.feature_dim, 128), nn.Linear(d.teacher.feature_dim, 128)
    embed_s.load_state_dict(d.embed_s.linear.state_dict())
    embed_t.load_state_dict(d.embed_t.linear.state_dict())
    f_s, f_t = rand(10, d.student.feature_dim, seed=1), rand(10, d.teacher.feature_dim, seed=2)
    same_value_and_grad(d.feature_loss,
                        lambda s, t: ref_correlation(embed_s(s[0].view(10, -1)), embed_t(t[0].view(10, -1))),
                        [f_s], [f_t], params=(list(d.embed_s.parameters()) + list(d.embed_t.parameters()),
                                              list(embed_s.parameters()) + list(embed_t.parameters())))
    torch.testing.assert_close(correlation_loss(f_s, f_s.flip(0)), ref_correlation(f_s, f_s.flip(0)))


def test_vid_matches_the_release():
    d = make("vid")
    probe_s, probe_t = d.probe_features(train_set())
    refs = nn.ModuleList(RefVIDLoss(s.shape[1], t.shape[1], t.shape[1]) for s, t in zip(probe_s, probe_t))
    assert len(refs) == len(d.vid) == len(probe_s) == 3  # cnn5: feat[1:-1] = maps[1:], three stages
    for ours, ref in zip(d.vid, refs):
        torch.testing.assert_close(ours.log_scale.detach(), ref.log_scale.detach())  # same initial variance
        ref.load_state_dict(ours.state_dict())
    f_s = [rand(6, *s.shape[1:], seed=i, relu=True) for i, s in enumerate(probe_s)]
    f_t = [rand(6, *t.shape[1:], seed=10 + i, relu=True) for i, t in enumerate(probe_t)]
    same_value_and_grad(d.feature_loss, lambda s, t: sum(c(a, b) for a, b, c in zip(s, t, refs)), f_s, f_t,
                        params=(list(d.vid.parameters()), list(refs.parameters())))
    # and with a spatial mismatch (pooled as released)
    a, b = VIDRegressor(8, 16, 16), RefVIDLoss(8, 16, 16)
    b.load_state_dict(a.state_dict())
    same_value_and_grad(lambda s, t: a(s[0], t[0]), lambda s, t: b(s[0], t[0]),
                        [rand(4, 8, 8, 8, seed=1)], [rand(4, 16, 4, 4, seed=2)])


# ------------------------------------------------------------------------------ 2. one step per augmentation

N_DATA, CLASSES = 32, 10


def train_set(n=N_DATA, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, labels = torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % CLASSES
    batches = lambda: iter([(images[i:i + 16], labels[i:i + 16], torch.arange(i, min(i + 16, n)))
                            for i in range(0, n, 16)])
    return TrainSet(num_samples=n, num_classes=CLASSES, clean_batches=batches, augmented_by_loader=False)


def make(name, augment=None, data=None, teacher="cnn5_w16", **params):
    """A distiller with a cnn5_w8 student and a (wider by default) cnn5 teacher on 1x28x28 images, prepared."""
    cls = METHODS[name]
    torch.manual_seed(1)
    student = create_model("cnn5_w8", num_classes=CLASSES, in_channels=1)
    torch.manual_seed(2)
    t = create_model(teacher, num_classes=CLASSES, in_channels=1)
    d = cls(student, t, cls.Params(**params))
    if augment is not None:
        d.set_augment(augment_fn(augment))
    torch.manual_seed(3)
    d.prepare(data if data is not None else train_set())
    d.train()
    return d


def augment_fn(name):
    params = {k: (0.5,) for k in ("mean", "std") if k in augment_params(name)}  # one channel
    return make_augment(name, **params)


def info(seed=0, n=16):
    return StepInfo(epoch=0, step=0, epochs=1, generator=torch.Generator().manual_seed(seed),
                    indices=torch.arange(n))


def test_defaults_are_repdistillers():
    for name in FEATURE_METHODS:
        p = METHODS[name].Params()
        assert (p.ce_weight, p.kd_weight, p.feat_weight) == (1.0, 0.0, BETA[name]), name
        assert METHODS[name].reads_teacher_features and METHODS[name].source


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_one_step_with_every_augmentation(name):
    # every augmentation applies: cutmix_pick scores with the teacher every one of these methods has
    # (kd_view is a method, not an augmentation)
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(7)
    images, labels = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, CLASSES, (16,), generator=g)
    for aug in [None, *AUGMENTATIONS]:
        d = make(name, aug)
        owned = {k: v.detach().clone() for k, v in d.named_parameters()
                 if not k.startswith(("student.", "teacher."))}
        student = {k: v.detach().clone() for k, v in d.student.named_parameters()}
        teacher = {k: v.clone() for k, v in d.teacher.state_dict().items()}
        learnable = d.learnable_parameters()
        assert all(any(p is q for q in learnable) for k, p in d.named_parameters() if not k.startswith("teacher."))
        opt = torch.optim.SGD(learnable, lr=0.1)
        logits, losses, scored, _ = d.forward_train(images, labels, info())
        assert set(losses) == {"ce", name}, (name, aug)
        assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values()), (name, aug, losses)
        assert logits.shape == (16, CLASSES) and scored.shape == (16,)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        assert any(not torch.equal(v, student[k]) for k, v in d.student.named_parameters()), (name, aug)
        for k, v in d.named_parameters():
            if k in owned:
                assert not torch.equal(v.detach(), owned[k]), f"{name}/{aug}: {k} did not move"
        assert all(torch.equal(v, teacher[k]) for k, v in d.teacher.state_dict().items()), (name, aug)
        assert not d.teacher.training
    if name in ("fitnet", "cc", "vid"):
        assert owned, f"{name} owns no learnable module"


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_kd_term_under_bf16_autocast(name):
    # kd_weight > 0 adds RepDistiller's -a term; the trainer's bf16 autocast leaves the feature loss in fp32
    d = make(name, kd_weight=0.5)
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(8, 1, 28, 28, generator=g), torch.arange(8) % CLASSES
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses, *_ = d.forward_train(images, labels, info(n=8))
    assert set(losses) == {"ce", "kd", name}
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses[name].dtype == torch.float32


def test_feature_loss_is_beta_times_the_loss_on_the_features():
    d = make("sp", feat_weight=2.0)
    images = rand(8, 1, 28, 28, seed=4)
    d.eval()  # fixed BatchNorm: the two forwards below see the same features
    _, losses, *_ = d.forward_train(images, torch.arange(8), info(n=8))
    with torch.no_grad():
        _, fs = d.student.forward_features(images)
        _, ft = d.teacher.forward_features(images)
    torch.testing.assert_close(losses["sp"], 2.0 * similarity_loss(fs["maps"][-1], ft["maps"][-1]))


def test_owned_modules_are_checkpointed_and_reload():
    for name, keys in (("fitnet", {"regressor"}), ("cc", {"embed_s", "embed_t"}), ("vid", {"vid"})):
        d = make(name)
        extra = d.state_dict_extra()
        assert set(extra) == keys
        other = make(name)
        with torch.no_grad():
            for p in other.parameters():
                p.add_(1.0)
        other.load_state_dict_extra(extra)
        for k in keys:
            a, b = getattr(d, k).state_dict(), getattr(other, k).state_dict()
            assert all(torch.equal(a[n], b[n]) for n in a)


def test_fitnet_hint_layer_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match=r"hint_layer 4 is out of range: the student has 4 \(0..3\) and the "
                                          r"teacher has 4 \(0..3\) stage maps"):
        make("fitnet", hint_layer=4)  # cnn5 has four stage maps
    with pytest.raises(ConfigError, match=r"hint_layer 3 is out of range: the teacher has 2 \(0..1\) stage maps"):
        make("fitnet", hint_layer=3, teacher="lenet5")  # which one has too few: it did not say


def test_fitnet_hint_stage_trains_up_to_the_guided_layer_only():
    plain = make("fitnet")
    staged = make("fitnet", hint_epochs=2, hint_layer=1)
    # the same initial weights (same seeds), so what moved is the stage's work
    # (parameters: the forward runs the whole student in training mode, so every BatchNorm's running statistics
    # move, as in RepDistiller's init stage)
    before = dict(plain.student.named_parameters())
    moved = {k for k, v in staged.student.named_parameters() if not torch.equal(v, before[k])}
    assert any(k.startswith("conv1.") for k in moved) and any(k.startswith("conv2.") for k in moved)
    assert not any(k.startswith(("conv3.", "conv4.", "conv5.", "fc.")) for k in moved), moved
    assert staged.student.training and staged.regressor.training  # modes restored
    # the stage lowered the hint loss on the training data
    data = train_set()
    images = next(iter(data.clean_batches()))[0]

    def hint(d):
        d.eval()
        with torch.no_grad():
            _, fs = d.student.forward_features(images)
            _, ft = d.teacher.forward_features(images)
            return d.feature_loss(d.select(fs), d.select(ft)).item()

    fresh = make("fitnet", hint_layer=1)
    assert hint(staged) < hint(fresh)


# ------------------------------------------------------------------------------ 3. through the command line

@pytest.mark.checkout
def test_at_with_cutmix_pick_through_the_cli(fmnist_root, tmp_path):
    from mixdistill.cli import main

    torch.manual_seed(0)
    teacher = tmp_path / "teacher.pt"
    torch.save({"model": create_model("cnn5_w8", num_classes=10, in_channels=1).state_dict()}, teacher)
    out = tmp_path / "runs"
    assert main(["train", "configs/fmnist_cpu.yaml", f"data.root={fmnist_root}", f"output_dir={out}",
                 "data.train_subset=64", "data.batch_size=32", "data.test_subset=100", "data.eval_batch_size=100",
                 "model.student=cnn5_w8", "model.teacher=cnn5_w8", f"model.teacher_checkpoint={teacher}",
                 "optim.epochs=1", "train.progress=false", "train.tensorboard=false", "train.device=cpu",
                 "method=at", "augment=cutmix_pick", "name=at", "--quiet"]) == 0
    summary = json.loads((out / "at" / "summary.json").read_text())
    assert summary["method"] == "at" and summary["last_acc"] is not None
    metrics = [json.loads(line) for line in (out / "at" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(metrics[-1]["train_at"]) and math.isfinite(metrics[-1]["train_ce"]), metrics
