"""Online distillation: losses against hand-computed values, detached targets, ensemble, EMA, ramp-up."""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from mixdistill.augment import AUGMENTATIONS, make_augment
from mixdistill.distill import StepInfo
from mixdistill.methods import METHODS
from mixdistill.online.cutmix_online import feature_mutual_loss, sigmoid_rampup

# Absolute tolerance of a training step's KL term against its by-hand value, both in fp32 from whole networks (the
# branch tests, which check structure): a KL near 0.02 is a sum of terms near 0.3 that cancel, times T^2 (9) over
# several peers, so fp32 rounding alone (which differs between ATen's AVX2 and AVX512 kernels) moves it by ~1e-6. A
# wrong target moves it by 1e-4 or more (PCL's means run on the live trunk: 1.3e-4; another peer's mean: 6e-3); the
# temperature and weights are pinned by the by-hand tests on small peers (test_pcl_loss_by_hand, ...).
KL_ABS = 1e-5


class FixedPeer(nn.Module):
    """Outputs learnable logits (the same row for every sample) and fixed pooled features."""

    def __init__(self, logits, features=None):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits))
        self.features = torch.tensor(features if features is not None else [1.0, 0.0])

    def forward_features(self, x):
        n = x.shape[0]
        return self.logits.expand(n, -1), {"pooled": self.features.expand(n, -1), "maps": []}

    def forward(self, x):
        return self.forward_features(x)[0]


def info(epoch=0):
    return StepInfo(epoch=epoch, step=0, epochs=100, generator=torch.Generator().manual_seed(0))


def kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def softmax(xs, T=1.0):
    e = [math.exp(x / T) for x in xs]
    return [v / sum(e) for v in e]


X, Y = torch.zeros(4, 1, 2, 2), torch.tensor([0, 1, 0, 1])


def test_dml_hand_computed_and_targets_detached():
    a, b = [2.0, 0.0], [0.0, 1.0]
    d = METHODS["dml"]([FixedPeer(a), FixedPeer(b)], METHODS["dml"].Params())
    _, losses, *_ = d.forward_train(X, Y, info())
    pa, pb = softmax(a), softmax(b)
    expected_kl = kl(pb, pa) + kl(pa, pb)  # (1/(m-1)) * sum over i of KL(z_j || z_i), m = 2
    expected_ce = sum(-math.log(p[y]) for p in (pa, pb) for y in (0, 1, 0, 1)) / 4
    assert losses["kl"].item() == pytest.approx(expected_kl, rel=1e-6)
    assert losses["ce"].item() == pytest.approx(expected_ce, rel=1e-6)
    losses["kl"].backward()
    # with detached targets peer A's gradient is that of KL(p_B || p_A) alone: p_A - p_B per sample, batch-mean
    grad_a = torch.tensor(pa) - torch.tensor(pb)
    assert torch.allclose(d.peers[0].logits.grad, grad_a, atol=1e-6)


def test_online_cutmix_target_is_detached_mean_on_the_same_batch():
    peers = [FixedPeer([1.0, 0.0]), FixedPeer([0.0, 0.0]), FixedPeer([0.0, 2.0])]
    cls = METHODS["online_cutmix"]
    d = cls(peers, cls.Params())
    d.set_augment(make_augment("cutmix"))
    _, losses, *_ = d.forward_train(torch.randn(4, 1, 8, 8), Y, info())
    mean = [1 / 3, 2 / 3]
    expected = sum(kl(softmax(mean, 3), softmax(p.logits.tolist(), 3)) for p in peers) * 9
    assert losses["kl"].item() == pytest.approx(expected, rel=1e-5)


def test_evaluation_ensemble_is_mean_of_peer_logits():
    peers = [FixedPeer([1.0, 0.0]), FixedPeer([0.0, 3.0])]
    d = METHODS["dml"](peers, METHODS["dml"].Params())
    out = d.evaluation_logits(X)
    assert torch.allclose(out["ensemble"], torch.tensor([[0.5, 1.5]]).expand(4, -1))
    assert set(out) == {"peer0", "peer1", "ensemble"}


def test_rampup_values():
    assert sigmoid_rampup(0, 80) == pytest.approx(math.exp(-5))
    assert sigmoid_rampup(40, 80) == pytest.approx(math.exp(-1.25))
    assert sigmoid_rampup(80, 80) == 1.0 and sigmoid_rampup(200, 80) == 1.0


def test_feature_mutual_loss_hand_computed_and_detached():
    f1 = torch.tensor([[3.0, 0.0]], requires_grad=True)  # normalises to [1, 0]
    f2 = torch.tensor([[0.0, 0.5]], requires_grad=True)  # normalises to [0, 1]
    loss = feature_mutual_loss([f1, f2])
    assert loss.item() == pytest.approx(4.0)  # each peer: |[1,-1]|^2 = 2
    # only the own-term carries gradient: d/du1 |u1 - u2|^2 = 2 (u1 - u2) = [2, -2], projected on the sphere at [1, 0]
    loss.backward()
    assert torch.allclose(f1.grad, torch.tensor([[0.0, -2.0 / 3.0]]), atol=1e-6)


def test_ema_update_rule_and_ema_teacher():
    cls = METHODS["cutnmix"]
    peers = [FixedPeer([1.0, 0.0]), FixedPeer([0.0, 1.0])]
    d = cls(peers, cls.Params(teacher="ema", ema_decay=0.9))
    before = d.ema_peers[0].module.logits.detach().clone()
    with torch.no_grad():
        d.peers[0].logits.add_(torch.tensor([1.0, -1.0]))
    d.after_step()
    expected = 0.9 * before + 0.1 * d.peers[0].logits.detach()
    assert torch.allclose(d.ema_peers[0].module.logits, expected)
    assert d.ema_peers[0].n_averaged.item() == 2  # the copy at the start, then one step
    assert not any(p is q for p in d.learnable_parameters() for q in d.ema_peers.parameters())


def test_cutnmix_terms_and_ramp():
    cls = METHODS["cutnmix"]
    d = cls([FixedPeer([1.0, 0.0], [1.0, 0.0]), FixedPeer([0.0, 1.0], [0.0, 1.0])], cls.Params(ramp_epochs=80))
    d.set_augment(make_augment("cut_n_mix"))
    step = info(epoch=40)
    out = d.forward_train(torch.randn(4, 1, 8, 8), Y, step)
    losses = out.losses
    assert set(losses) == {"ce", "kl", "feat"} and out.stats["ramp"] == pytest.approx(math.exp(-1.25))
    assert losses["feat"].item() == pytest.approx(4.0)
    target = [0.5, 0.5]
    expected_kl = 9 * (kl(softmax(target, 3), softmax([1.0, 0.0], 3)) + kl(softmax(target, 3), softmax([0.0, 1.0], 3)))
    assert losses["kl"].item() == pytest.approx(math.exp(-1.25) * expected_kl, rel=1e-5)


def test_one_gated_ensemble():
    cls = METHODS["one"]
    d = cls.from_names(["resnet8"] * 3, cls.Params(), num_classes=10, in_channels=1)
    d.eval()
    x = torch.randn(2, 1, 28, 28)
    logits, ensemble = d._branches(x)
    gate = torch.softmax(d.gate(d.trunk(x).mean((2, 3))), 1)
    assert torch.allclose(gate.sum(1), torch.ones(2))
    assert torch.allclose(ensemble, sum(gate[:, i:i + 1] * z for i, z in enumerate(logits)), atol=1e-5)
    d.train()
    _, losses, *_ = d.forward_train(x, torch.tensor([1, 2]), info())
    losses["kl"].backward()
    assert d.gate[0].weight.grad is None or d.gate[0].weight.grad.abs().sum() == 0, "KL target must be detached"
    # three distinct branches, one shared trunk
    assert len({id(p.branch) for p in d.peers}) == 3 and all(p._trunk[0] is d.trunk for p in d.peers)
    # the checkpoint's model is peer 0 as a whole network (trunk + branch 0), loadable as a plain resnet8
    from mixdistill.models import create_model

    d.eval()
    standalone = create_model("resnet8", num_classes=10, in_channels=1).eval()
    standalone.load_state_dict(d.student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(standalone(x), d.evaluation_logits(x)["peer0"])


class LinearPeer(nn.Module):
    """logits = flatten(x) @ W: depends on its input (unlike FixedPeer) and remembers the last input it saw."""

    def __init__(self, seed, d_in=64, classes=3):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(d_in, classes, generator=torch.Generator().manual_seed(seed)))
        self.seen = None

    def forward_features(self, x):
        self.seen = x.detach().clone()
        z = x.flatten(1) @ self.weight
        return z, {"pooled": z, "maps": []}

    def forward(self, x):
        return self.forward_features(x)[0]


def kd_grad_wrt_student(z, target, T):
    """d/dz of T^2 * batchmean KL(softmax(target/T) || softmax(z/T)) with the target constant: T (p_z - p_t) / B."""
    return T * (torch.softmax(z / T, 1) - torch.softmax(target / T, 1)) / z.shape[0]


def kl_rows(t, s, T):
    """Batch-mean KL(softmax(t/T) || softmax(s/T)), by hand from the definition."""
    pt, ps = torch.softmax(t / T, 1), torch.softmax(s / T, 1)
    return (pt * (pt.log() - ps.log())).sum(1).mean()


def test_dml_three_peers_divides_by_m_minus_1_and_applies_t2_once():
    logits = [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [-1.0, 0.0, 3.0]]
    for T in (1.0, 2.0):
        cls = METHODS["dml"]
        d = cls([FixedPeer(z) for z in logits], cls.Params(temperature=T))
        _, losses, *_ = d.forward_train(X, Y, info())
        p = [softmax(z, T) for z in logits]
        expected = T**2 * sum(kl(p[j], p[i]) for i in range(3) for j in range(3) if j != i) / 2
        assert losses["kl"].item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("method", ["online_cutmix", "cutnmix"])
def test_mixed_online_target_is_the_detached_peer_mean_on_the_mixed_batch(method):
    cls = METHODS[method]
    params = cls.Params(feature_weight=0.0, ramp_epochs=0) if method == "cutnmix" else cls.Params()
    peers = [LinearPeer(seed) for seed in range(3)]
    d = cls(peers, params)
    d.set_augment(make_augment("cutmix" if method == "online_cutmix" else "cut_n_mix"))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    _, losses, *_ = d.forward_train(x, torch.tensor([0, 1, 2, 0]), info())
    seen = peers[0].seen
    assert all(torch.equal(p.seen, seen) for p in peers) and not torch.equal(seen, x)  # one mixed batch for all
    z = [seen.flatten(1) @ p.weight.detach() for p in peers]
    target, T = torch.stack(z).mean(0), 3.0
    assert losses["kl"].item() == pytest.approx(float(sum(T**2 * kl_rows(target, zi, T) for zi in z)), rel=1e-5)
    losses["kl"].backward()
    # Each peer's gradient is T (p_i - p_mean) / B on its rows. (Detaching the mean changes nothing here: the
    # gradient through the mean of sum_i KL(mean || z_i) vanishes because sum_i (mean - z_i) = 0.)
    for p, zi in zip(peers, z):
        torch.testing.assert_close(p.weight.grad, seen.flatten(1).T @ kd_grad_wrt_student(zi, target, T))


def test_cutnmix_ema_teacher_is_the_mean_of_the_ema_copies():
    cls = METHODS["cutnmix"]
    d = cls([FixedPeer([1.0, 0.0]), FixedPeer([0.0, 1.0])], cls.Params(teacher="ema", ramp_epochs=0, feature_weight=0))
    d.set_augment(make_augment("cut_n_mix"))
    with torch.no_grad():  # the EMA copies differ from the live peers, so the target tells which was used
        d.ema_peers[0].module.logits.copy_(torch.tensor([3.0, 0.0]))
        d.ema_peers[1].module.logits.copy_(torch.tensor([1.0, 0.0]))
    _, losses, *_ = d.forward_train(torch.randn(4, 1, 8, 8), Y, info())
    target = softmax([2.0, 0.0], 3)
    expected = 9 * (kl(target, softmax([1.0, 0.0], 3)) + kl(target, softmax([0.0, 1.0], 3)))
    assert losses["kl"].item() == pytest.approx(expected, rel=1e-5)


def test_cutnmix_refuses_peers_of_different_feature_widths():
    from mixdistill.errors import ConfigError

    cls = METHODS["cutnmix"]
    with pytest.raises(ConfigError, match="feature width.*peer 0: 64, peer 1: 128"):
        cls.from_names(["resnet8", "wrn_16_2"], cls.Params(), num_classes=10, in_channels=1)
    cls.from_names(["resnet8", "wrn_16_2"], cls.Params(feature_weight=0), num_classes=10, in_channels=1)


def test_feature_mutual_loss_three_peers_uses_the_mean_of_the_others():
    u = [torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 3.0]]), torch.tensor([[-1.0, 0.0]])]  # -> e1, e2, -e1
    # peer 1: |e1 - (e2 - e1)/2|^2 = 2.5; peer 2: |e2 - 0|^2 = 1; peer 3: |-e1 - (e1 + e2)/2|^2 = 2.5
    assert feature_mutual_loss(u).item() == pytest.approx(6.0)


def test_kdcl_loss_views_and_detached_mean_target():
    cls = METHODS["kdcl"]
    peers = [FixedPeer([1.0, 0.0]), FixedPeer([0.0, 2.0]), FixedPeer([0.5, 0.5])]
    d = cls(peers, cls.Params())
    d.set_augment(make_augment("flip"))
    _, losses, *_ = d.forward_train(torch.randn(4, 1, 8, 8), Y, info())
    zs = [p.logits.detach() for p in peers]
    mean = torch.stack(zs).mean(0)
    expected_kl = sum(9 * kl(softmax(mean.tolist(), 3), softmax(z.tolist(), 3)) for z in zs)
    expected_ce = sum(-math.log(softmax(z.tolist())[y]) for z in zs for y in Y.tolist()) / 4
    assert losses["kl"].item() == pytest.approx(expected_kl, rel=1e-5)
    assert losses["ce"].item() == pytest.approx(expected_ce, rel=1e-6)
    losses["kl"].backward()
    for p, z in zip(peers, zs):  # per row T (p_i - p_mean) / B, summed over the B identical rows (see above)
        torch.testing.assert_close(p.logits.grad, 3 * (torch.softmax(z / 3, 0) - torch.softmax(mean / 3, 0)))


def test_one_loss_and_gate_by_hand():
    import torch.nn.functional as F

    cls = METHODS["one"]
    torch.manual_seed(0)
    d = cls.from_names(["resnet8"] * 3, cls.Params(), num_classes=10, in_channels=1)
    x, y = torch.randn(6, 1, 28, 28), torch.tensor([1, 2, 3, 4, 5, 6])
    d.eval()
    with torch.no_grad():
        d.gate[1].running_mean.uniform_(-1, 1)
        d.gate[1].running_var.uniform_(0.5, 2)
        logits, ensemble = d._branches(x)
        fc, bn = d.gate[0], d.gate[1]  # gate = softmax(ReLU(BN(FC(pooled trunk feature))))
        h = F.linear(d.trunk(x).mean((2, 3)), fc.weight, fc.bias)
        h = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        gate = torch.softmax(h.clamp(min=0), 1)
        torch.testing.assert_close(ensemble, sum(gate[:, i:i + 1] * z for i, z in enumerate(logits)))
        _, losses, *_ = d.forward_train(x, y, info())
    ce = sum(F.cross_entropy(z, y) for z in logits) + F.cross_entropy(ensemble, y)
    kl_total = sum(9 * kl_rows(ensemble, z, 3.0) for z in logits)
    assert losses["ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    assert losses["kl"].item() == pytest.approx(kl_total.item(), rel=1e-4)  # fp32 softmax vs log_softmax


@pytest.fixture(scope="module")
def online_common(tmp_path_factory):
    from mixdistill.data.synthetic import write_fashion_like

    base = tmp_path_factory.mktemp("online")
    root = write_fashion_like(base / "data", 600, 200)
    return [f"data.root={root}", f"output_dir={base / 'runs'}", "model.student=cnn5_w8", "optim.epochs=1",
            "train.progress=false", "train.tensorboard=false", "train.device=cpu", "data.eval_batch_size=200"]


@pytest.mark.checkout
def test_a_ramp_longer_than_the_run_is_said_at_its_start(online_common, capsys):
    """ramp_epochs defaults to the papers' 80 (of 300 epochs): a short run kept its distillation term near 0."""
    from mixdistill.cli import main

    for ramp, said in ((80, True), (1, False)):
        assert main(["train", "configs/online_fmnist_cpu.yaml", *online_common, f"name=ramp{ramp}",
                     f"method.ramp_epochs={ramp}", "data.train_subset=null"]) == 0
        captured = capsys.readouterr()
        out = " ".join((captured.out + captured.err).split())
        if said:
            assert ("note: method.ramp_epochs 80 is past the run's 1 epochs: the distillation weight "
                    "exp(-5 (1 - t/80)^2) reaches 0.007 of its full value in the last epoch") in out
        else:
            assert "method.ramp_epochs" not in out


@pytest.mark.checkout
def test_a_teacher_from_an_online_run_is_named_as_the_network_it_is(online_common, capsys):
    """KD from an online run's checkpoint printed the teacher's accuracy with nothing saying it is one peer."""
    from mixdistill.cli import main

    out_dir = online_common[1].split("=", 1)[1]
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *online_common, "name=group", "method=dml",
                 "--quiet"]) == 0
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *online_common, "name=from_group", "method=kd",
                 f"model.teacher_checkpoint={out_dir}/group/last.pt"]) == 0
    captured = capsys.readouterr()
    assert (f"note: teacher {out_dir}/group/last.pt: the checkpoint's model is peer0 of dml's 3 networks"
            in " ".join((captured.out + captured.err).split()))


@pytest.mark.checkout
@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ["method=dml"], ["method=kdcl"], ["method=one"], ["method=online_cutmix"],
    ["method=cutnmix", "method.teacher=ema", "augment.n=3"],
    ["method=dml", "model.peers=[cnn5_w8,cnn5_w16]"],
    pytest.param(["method=okddip"], id="okddip"), pytest.param(["method=pcl"], id="pcl"),
    pytest.param(["method=pcl", "method.views=per_peer", "augment=crop_flip"], id="pcl_per_peer"),
])
def test_online_method_runs_through_the_cli(online_common, overrides, capsys):
    import json

    from mixdistill.cli import main

    name = "_".join(o.split("=")[1] for o in overrides[:1]) + str(len(overrides))
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *online_common, f"name={name}", *overrides,
                 "--quiet"]) == 0
    out = online_common[1].split("=", 1)[1]
    with open(f"{out}/{name}/summary.json") as f:
        summary = json.load(f)
    assert {"last_acc_ensemble", "last_acc_best_peer", "last_acc_mean_peer"} <= set(summary)
    deployed = {"method=okddip": "last_acc_leader", "method=pcl": "last_acc_temporal_mean0"}.get(overrides[0])
    assert deployed is None or deployed in summary  # the network the method deploys is reported too
    # the checkpoint's model is the network the note names (OKDDip's branches: the leader), whose own accuracy is
    # in the summary; the run's last_acc is the mean peer
    import mixdistill
    from mixdistill.engine.run import open_run

    note = open_run(f"{out}/{name}").online_network_note()
    network = re.search(r"model is (peer\d+) of ", note).group(1)
    assert network == ("peer3" if overrides == ["method=okddip"] else "peer0")
    scored = mixdistill.evaluate(f"{out}/{name}", device="cpu")  # the whole test split: the 200 images it used
    assert scored["acc"] == pytest.approx(summary[f"last_acc_{network}"], abs=0.51)  # one image's tie at most
    # every output by name, as the run evaluated it (the checkpoint's model alone is one of them)
    every = mixdistill.evaluate(f"{out}/{name}", device="cpu", output="all")["outputs"]
    assert {f"last_acc_{k}" for k in every} | {"last_acc_best_peer", "last_acc_mean_peer"} == \
        {k for k in summary if k.startswith("last_acc_")}
    for output, result in every.items():
        assert result["acc"] == pytest.approx(summary[f"last_acc_{output}"], abs=0.51), output
    assert main(["eval", f"{out}/{name}", "--output", "ensemble"]) == 0
    assert f"ensemble of {overrides[0].split('=')[1]}" in capsys.readouterr().out
    assert main(["eval", f"{out}/{name}"]) == 0
    assert f"note: {note}" in capsys.readouterr().out.replace("\n", " ")


@pytest.mark.checkout
@pytest.mark.slow
@pytest.mark.needs_cxx
def test_compile_covers_forward_features(online_common):
    """Cut^nMix trains through ``forward_features``: with train.compile on, that entry point is compiled too."""
    import math

    from mixdistill.config import load_config
    from mixdistill.engine.trainer import Trainer

    cfg = load_config("configs/fmnist_cpu_teacher.yaml", [*online_common, "name=cutnmix_compiled", "method=cutnmix",
                                                          "train.compile=true", "data.train_subset=128"])
    trainer = Trainer(cfg, quiet=True)
    summary = trainer.fit()
    for peer in trainer.distiller.peers:
        assert hasattr(peer.forward_features, "_torchdynamo_orig_callable")  # a torch.compile wrapper
        assert "forward_features" not in peer.state_dict()
    assert math.isfinite(summary["last_acc"])


def test_reconstruction_notes_cover_the_method_and_the_augmentation():
    from mixdistill.provenance import SHEN2022_NOTE, reconstruction_notes

    assert reconstruction_notes({"method": {"name": "cutnmix"}, "augment": {"name": "cut_n_mix"}}) == [SHEN2022_NOTE]
    assert reconstruction_notes({"method": {"name": "kd"}, "augment": {"name": "cut_n_mix"}}) == [SHEN2022_NOTE]
    assert reconstruction_notes({"method": {"name": "kd"}, "augment": {"name": "cutmix"}}) == []


# ------------------------------------------------------------------------------------------------- OKDDip, PCL


class FeaturePeer(nn.Module):
    """A tiny zoo-like model: ``pooled = flatten(x) @ V + shift``, ``logits = fc(pooled)``, with the zoo's
    ``feature_dim`` / ``num_classes``, a float buffer (``shift``) an EMA must average, and the last input it saw."""

    def __init__(self, seed, d_in=16, width=8, classes=3):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.feature_dim, self.num_classes = width, classes
        self.v = nn.Parameter(torch.randn(d_in, width, generator=g) / math.sqrt(d_in))
        self.fc = nn.Linear(width, classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(classes, width, generator=g))
            self.fc.bias.copy_(torch.randn(classes, generator=g))
        self.register_buffer("shift", torch.randn(width, generator=g) / 10)
        self.seen = None

    def forward_features(self, x):
        self.seen = x.detach().clone()
        f = x.flatten(1) @ self.v + self.shift
        return self.fc(f), {"pooled": f, "maps": []}

    def forward(self, x):
        return self.forward_features(x)[0]


def by_hand(peer, x):
    """(pooled, logits) of a FeaturePeer from its current weights, with plain torch ops."""
    f = x.flatten(1) @ peer.v + peer.shift
    return f, f @ peer.fc.weight.T + peer.fc.bias


XS = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(3))
YS = torch.tensor([0, 2, 1, 1, 0])


def okddip_by_hand(d, x, y, weight, T=3.0, outputs=None):
    """(ce, kl_peers, kl_leader) of OKDDip (released train_GL.py / resnet_GL.py), nothing detached. ``outputs``:
    every peer's (pooled, logits), else FeaturePeers' by hand."""
    import torch.nn.functional as F

    *aux, leader = outputs or [by_hand(p, x) for p in d.peers]
    feats, zs = zip(*aux)
    _, z_leader = leader
    q = [f @ d.query.weight.T for f in feats]
    k = [f @ d.key.weight.T for f in feats]
    targets = []
    for a in range(len(aux)):
        attention = torch.softmax(torch.stack([(q[a] * k[b]).sum(1) for b in range(len(aux))], 1), 1)  # [B, A]
        assert torch.allclose(attention.sum(1), torch.ones(len(y)))
        targets.append(sum(attention[:, b:b + 1] * zs[b] for b in range(len(aux))))
    ce = sum(F.cross_entropy(z, y) for z in (*zs, z_leader))
    kl_peers = weight * sum(T**2 * kl_rows(t, z, T) for t, z in zip(targets, zs))
    kl_leader = weight * T**2 * kl_rows(torch.stack(zs).mean(0), z_leader, T)
    return ce, kl_peers, kl_leader


def test_okddip_loss_by_hand():
    cls = METHODS["okddip"]
    assert cls.Params().peers == 4 and cls.Params().temperature == 3.0  # released --num_branches 4, T = 3
    d = cls([FeaturePeer(s) for s in range(4)], cls.Params(alpha=0.5, projection_factor=2))  # 3 auxiliary + leader
    assert d.student is d.peers[0] and d.query.weight.shape == (4, 8) and d.query.bias is None
    out = d.forward_train(XS, YS, info(epoch=40))  # w = alpha * exp(-5 (1 - 40/80)^2)
    assert set(out.losses) == {"ce", "kl_peers", "kl_leader"} and out.stats["ramp"] == pytest.approx(math.exp(-1.25))
    with torch.no_grad():
        expected = okddip_by_hand(d, XS, YS, 0.5 * math.exp(-1.25))
    for name, value in zip(("ce", "kl_peers", "kl_leader"), expected):
        assert out.losses[name].item() == pytest.approx(value.item(), rel=1e-5), name
    assert out.losses["kl_peers"].item() > 0 and out.losses["kl_leader"].item() > 0


def test_okddip_targets_carry_gradient_as_released():
    """The released code detaches neither target: the KL terms train the query/key maps (nothing else does), and
    the leader's term pulls the auxiliary peers too."""
    cls = METHODS["okddip"]
    d = cls([FeaturePeer(s) for s in range(4)], cls.Params(ramp_epochs=0, projection_factor=2))
    params = [d.query.weight, d.key.weight, d.peers[0].v, d.peers[3].v]
    out = d.forward_train(XS, YS, info())
    got = torch.autograd.grad(out.losses["kl_peers"] + out.losses["kl_leader"], params)
    _, kl_peers, kl_leader = okddip_by_hand(d, XS, YS, 1.0)
    for g, e in zip(got, torch.autograd.grad(kl_peers + kl_leader, params)):
        torch.testing.assert_close(g, e)
    assert got[0].abs().sum() > 0 and got[1].abs().sum() > 0
    (from_leader,) = torch.autograd.grad(d.forward_train(XS, YS, info()).losses["kl_leader"], d.peers[0].v)
    assert from_leader.abs().sum() > 0
    assert any(q is d.query.weight for q in d.learnable_parameters()) and {"query", "key"} <= set(d.state_dict_extra())


@pytest.mark.parametrize("method", sorted(name for name, cls in METHODS.items() if getattr(cls, "online", False)))
def test_each_online_methods_named_outputs_are_what_it_evaluates(method):
    """train.best_metric is checked against evaluation_names before a run starts; they must be its outputs."""
    from mixdistill.config import load_config
    from mixdistill.engine.build import build_distiller

    cfg = load_config(None, [f"method={method}", "model.student=cnn5_w8", "data.dataset=fashion_mnist"])
    distiller = build_distiller(cfg, num_classes=10, in_channels=1).eval()
    with torch.no_grad():
        outputs = distiller.evaluation_logits(torch.randn(4, 1, 28, 28))
    assert sorted(outputs) == sorted(METHODS[method].evaluation_names(cfg.method.params()))
    from mixdistill.config import names_its_outputs

    assert names_its_outputs(METHODS[method])  # so train.best_metric and eval --output are checked up front


def test_a_best_metric_the_online_method_does_not_evaluate_is_refused_before_the_run():
    """It passed, trained a whole epoch into the run's folder, then stopped at the first evaluation."""
    from mixdistill.config import load_config
    from mixdistill.errors import ConfigError

    for method, metric in (("dml", "test_acc_peer3"), ("dml", "test_acc_leader"),
                           ("okddip", "test_acc_temporal_mean0"), ("pcl", "test_loss_best_peer"),
                           ("one", "test_acc_peer7")):
        with pytest.raises(ConfigError, match=f"train.best_metric {metric} is not evaluated by {method}"):
            load_config(None, [f"method={method}", f"train.best_metric={metric}"])
    for method, metric in (("dml", "test_acc_peer2"), ("okddip", "test_top5_leader"),
                           ("pcl", "test_acc_temporal_mean2"), ("kdcl", "test_acc_best_peer"),
                           ("one", "test_loss_ensemble")):
        assert load_config(None, [f"method={method}", f"train.best_metric={metric}"]).train.best_metric == metric


def test_eval_of_an_output_by_name_is_refused_where_there_is_none(tmp_path, capsys):
    """eval --output names an online run's output; a one-network run, an unknown name or --arch beside it are one
    line, before any data is read."""
    from mixdistill.cli import main
    from mixdistill.config import load_config

    for method, extra in (("ce", []), ("dml", [])):
        cfg = load_config(None, [f"method={method}", "model.student=cnn5_w8", "data.dataset=fashion_mnist", *extra])
        torch.save({"model": {}, "config": cfg.to_dict(), "arch": "cnn5_w8", "num_classes": 10, "in_channels": 1},
                   tmp_path / f"{method}.pt")
    for argv, why in (([str(tmp_path / "ce.pt"), "--output", "peer1"], "is a ce run, one network"),
                      ([str(tmp_path / "dml.pt"), "--output", "peer5"],
                       "--output peer5: dml with 3 peers evaluates peer0, peer1, peer2, ensemble (or all)"),
                      ([str(tmp_path / "dml.pt"), "--output", "all", "--arch", "cnn5_w8"],
                       "--arch NAME is for a checkpoint that does not record its network")):
        assert main(["eval", *argv, "--data-root", str(tmp_path / "nowhere")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and why in err[0], err


def test_okddip_auxiliary_peers_share_one_feature_width_and_leader_is_evaluated():
    from mixdistill.errors import ConfigError

    cls = METHODS["okddip"]
    with pytest.raises(ConfigError, match="peer 0: 8, peer 1: 6"):
        cls([FeaturePeer(0), FeaturePeer(1, width=6), FeaturePeer(2)], cls.Params())
    d = cls([FeaturePeer(0), FeaturePeer(1), FeaturePeer(2, width=6)], cls.Params())  # the leader may differ
    out = d.evaluation_logits(XS)
    assert set(out) == {"peer0", "peer1", "peer2", "ensemble", "leader"}
    assert torch.equal(out["leader"], out["peer2"])


def test_okddip_peers_are_branches_on_one_trunk_as_released():
    """resnet_GL.py: conv1..layer2 shared, layer3 + classifier per peer; the leader's copy is the deployed network."""
    from mixdistill.errors import ConfigError
    from mixdistill.models import create_model

    cls = METHODS["okddip"]
    assert cls.Params().peer_form == "branches"
    torch.manual_seed(0)
    d = cls.from_names(["resnet8"] * 4, cls.Params(), num_classes=10, in_channels=1)
    assert all(p._trunk[0] is d.trunk for p in d.peers) and len({id(p.branch) for p in d.peers}) == 4
    assert d.student.layer3 is d.peers[-1].branch[0] and d.student.layer1 is d.trunk[3]
    x, y = torch.randn(6, 1, 12, 12), torch.tensor([0, 1, 2, 3, 4, 5])
    calls = []
    d.trunk.register_forward_hook(lambda *_: calls.append(1))
    d.train()
    out = d.forward_train(x, y, info(epoch=100))
    assert len(calls) == 1 and d.trunk[1].num_batches_tracked.item() == 1  # one trunk pass (and BN update) a step
    assert all(v.item() > 0 for v in out.losses.values())
    d.eval()  # BN on running statistics: the same weights give the same values however often the trunk runs
    with torch.no_grad():
        expected = okddip_by_hand(d, x, y, 1.0, outputs=[(p.branch(d.trunk(x)), p(x)) for p in d.peers])
        step = d.forward_train(x, y, info(epoch=100)).losses
    for name, value in zip(("ce", "kl_peers", "kl_leader"), expected):  # fp32 KL tolerance: see KL_ABS
        assert step[name].item() == pytest.approx(value.item(), rel=1e-5, abs=KL_ABS), name
    whole = create_model("resnet8", num_classes=10, in_channels=1).eval()
    whole.load_state_dict(d.student.state_dict())  # the checkpoint's model: trunk + the leader's branch
    with torch.no_grad():
        torch.testing.assert_close(whole(x), d.evaluation_logits(x)["leader"], rtol=0, atol=0)
    with pytest.raises(ConfigError, match="method.peer_form=networks"):
        cls.from_names(["resnet8"] * 3 + ["resnet14"], cls.Params(), num_classes=10, in_channels=1)
    with pytest.raises(ConfigError, match="method.peer_form=networks"):
        cls.from_names(["wrn_16_1"] * 4, cls.Params(), num_classes=10, in_channels=1)
    separate = cls.from_names(["resnet8"] * 3 + ["resnet14"], cls.Params(peer_form="networks"), num_classes=10,
                              in_channels=1)
    assert separate.trunk is None and separate.student is separate.peers[0]


def pcl_by_hand(d, x, y, weight, T=3.0, outputs=None, means=None):
    """(ce, kl_ensemble, kl_mean) of PCL with plain torch ops; the targets are constants (detached). ``outputs``:
    every peer's (pooled, logits) and ``means`` the temporal means' logits, else FeaturePeers' by hand."""
    import torch.nn.functional as F

    feats, zs = zip(*(outputs or [by_hand(p, x) for p in d.peers]))
    z_e = torch.cat(feats, 1) @ d.ensemble_head.weight.T + d.ensemble_head.bias
    with torch.no_grad():
        means = means or [by_hand(tm.module, x)[1] for tm in d.temporal_means]
    m = len(zs)
    ce = sum(F.cross_entropy(z, y) for z in (*zs, z_e))
    kl_e = weight * sum(T**2 * kl_rows(z_e.detach(), z, T) for z in zs)
    kl_m = weight * sum(T**2 * kl_rows(means[j], zs[i], T) for i in range(m) for j in range(m) if j != i) / (m - 1)
    return ce, kl_e, kl_m


def pcl_with_distinct_means(**params):
    cls = METHODS["pcl"]
    d = cls([FeaturePeer(s) for s in range(3)], cls.Params(**params))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # temporal means unlike their peers, so a target tells which network made it
        for tm in d.temporal_means:
            for q in tm.module.parameters():
                q.add_(torch.randn(q.shape, generator=g) / 2)
    return d


def test_pcl_loss_by_hand():
    d = pcl_with_distinct_means()
    assert d.ensemble_head.in_features == 24 and d.ensemble_head.out_features == 3  # concatenated features
    out = d.forward_train(XS, YS, info(epoch=40))  # w = exp(-5 (1 - 40/80)^2)
    assert set(out.losses) == {"ce", "kl_ensemble", "kl_mean"} and out.stats["ramp"] == pytest.approx(math.exp(-1.25))
    with torch.no_grad():
        expected = pcl_by_hand(d, XS, YS, math.exp(-1.25))
    for name, value in zip(("ce", "kl_ensemble", "kl_mean"), expected):
        assert out.losses[name].item() == pytest.approx(value.item(), rel=1e-5), name


def test_pcl_targets_detached_and_temporal_means_not_learned():
    d = pcl_with_distinct_means(ramp_epochs=0)
    out = d.forward_train(XS, YS, info())
    (out.losses["kl_ensemble"] + out.losses["kl_mean"]).backward()
    assert d.ensemble_head.weight.grad is None, "the ensemble teacher must be detached in the KL"
    assert all(q.grad is None for q in d.temporal_means.parameters())
    _, kl_e, kl_m = pcl_by_hand(d, XS, YS, 1.0)
    for peer, expected in zip(d.peers, torch.autograd.grad(kl_e + kl_m, [p.v for p in d.peers])):
        torch.testing.assert_close(peer.v.grad, expected)
    d.zero_grad()
    d.forward_train(XS, YS, info()).losses["ce"].backward()  # the ensemble classifier learns through its CE
    assert d.ensemble_head.weight.grad.abs().sum() > 0
    learnable = {id(q) for q in d.learnable_parameters()}
    assert id(d.ensemble_head.weight) in learnable
    assert not any(id(q) in learnable for q in d.temporal_means.parameters())
    assert {"ensemble_head", "temporal_means"} <= set(d.state_dict_extra())


def test_pcl_temporal_mean_update_with_mean_teacher_warmup():
    from mixdistill.online.pcl import mean_teacher_ema

    cls = METHODS["pcl"]
    d = cls([FeaturePeer(0), FeaturePeer(1)], cls.Params(ema_decay=0.7))
    d.train()
    assert d.peers.training and not any(m.training for m in d.temporal_means.modules())
    peer, mean = d.peers[0], d.temporal_means[0].module
    v, shift = peer.v.detach().clone(), peer.shift.clone()
    assert torch.equal(mean.v, v)
    for a in (0.0, 0.5, 2 / 3, 0.7):  # the first update copies, then a = min(1 - 1/(n + 1), 0.7)
        with torch.no_grad():
            peer.v.add_(1.0)
            peer.shift.mul_(2.0)
        d.after_step()
        v, shift = a * v + (1 - a) * peer.v.detach(), a * shift + (1 - a) * peer.shift
        torch.testing.assert_close(mean.v, v)
        torch.testing.assert_close(mean.shift, shift)  # buffers (BatchNorm statistics) are averaged too
    counts = [torch.tensor(3)]
    mean_teacher_ema(0.7)(counts, [torch.tensor(9)], torch.tensor(5))  # integer buffers are copied
    assert counts[0].item() == 9


def test_pcl_evaluates_peers_ensemble_teacher_and_temporal_means():
    from mixdistill.engine.evaluate import eval_record

    d = pcl_with_distinct_means()
    d.eval()
    with torch.no_grad():
        out = d.evaluation_logits(XS)
        assert set(out) == {"peer0", "peer1", "peer2", "ensemble", "temporal_mean0", "temporal_mean1",
                            "temporal_mean2"}
        torch.testing.assert_close(out["ensemble"], pcl_ensemble := d.ensemble([by_hand(p, XS)[0] for p in d.peers]))
        assert pcl_ensemble.shape == (5, 3)
        torch.testing.assert_close(out["temporal_mean1"], by_hand(d.temporal_means[1].module, XS)[1])
    record = eval_record({name: {"acc": 50.0 if name.startswith("peer") else 90.0, "loss": 1.0} for name in out})
    assert record["test_acc_mean_peer"] == 50.0 and record["test_acc_temporal_mean0"] == 90.0


def test_pcl_peers_are_branches_on_one_trunk_and_their_means_average_trunk_and_branch():
    """The paper's multi-branch network (the reproduction's src/models/resnet.py): conv1..layer2 shared; peer i's
    temporal mean = the averaged trunk, then its averaged branch and classifier."""
    from mixdistill.errors import ConfigError
    from mixdistill.models import create_model

    cls = METHODS["pcl"]
    assert cls.Params().peer_form == "branches"
    torch.manual_seed(0)
    d = cls.from_names(["resnet8"] * 3, cls.Params(ema_decay=0.5), num_classes=10, in_channels=1)
    assert all(p._trunk[0] is d.trunk for p in d.peers) and d.student.layer3 is d.peers[0].branch[0]
    assert d.ensemble_head.in_features == 3 * 64 and d.ensemble_head.out_features == 10
    assert not ({id(q) for q in d.learnable_parameters()} & {id(q) for q in d.temporal_trunk.parameters()})
    x, y = torch.randn(6, 1, 12, 12), torch.tensor([0, 1, 2, 3, 4, 5])
    calls = []
    d.trunk.register_forward_hook(lambda *_: calls.append(1))
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.1)
    for _ in range(2):
        out = d.forward_train(x, y, info(epoch=100))
        opt.zero_grad()
        sum(out.losses.values()).backward()
        opt.step()
        d.after_step()
    assert len(calls) == 2  # shared views: one trunk pass a step
    # after two updates with decay 0.5 (the first copies, then a = min(1/2, 0.5)) the averaged trunk lies between
    assert not torch.equal(d.temporal_trunk.module[0].weight, d.trunk[0].weight)
    assert d.temporal_trunk.n_averaged.item() == 2 and d.temporal_means[1].n_averaged.item() == 2
    d.eval()
    with torch.no_grad():
        h, mean_h = d.trunk(x), d.temporal_trunk(x)
        outputs = [(p.branch(h), p.fc(p.branch(h))) for p in d.peers]
        means = [tm(mean_h) for tm in d.temporal_means]
        expected = pcl_by_hand(d, x, y, 1.0, outputs=outputs, means=means)
        step = d.forward_train(x, y, info(epoch=100)).losses
        evaluated = d.evaluation_logits(x)
    for name, value in zip(("ce", "kl_ensemble", "kl_mean"), expected):
        assert step[name].item() == pytest.approx(value.item(), rel=1e-5, abs=KL_ABS), name
    for i in range(3):
        torch.testing.assert_close(evaluated[f"temporal_mean{i}"], means[i], rtol=0, atol=0)
    whole = create_model("resnet8", num_classes=10, in_channels=1).eval()
    whole.load_state_dict(d.student.state_dict())  # the checkpoint's model: trunk + branch 0
    torch.testing.assert_close(whole(x), evaluated["peer0"], rtol=0, atol=0)
    assert {"temporal_trunk", "temporal_means", "trunk"} <= set(d.state_dict_extra())
    d.train()
    per_peer = cls.from_names(["resnet8"] * 3, cls.Params(views="per_peer"), num_classes=10, in_channels=1)
    per_peer.set_augment(make_augment("cutout", size=3))
    calls.clear()
    per_peer.trunk.register_forward_hook(lambda *_: calls.append(1))
    per_peer.train().forward_train(x, y, info())
    assert len(calls) == 3  # its own view per peer: the trunk runs on each
    with pytest.raises(ConfigError, match="method.peer_form=networks"):
        cls.from_names(["resnet8", "resnet8", "resnet14"], cls.Params(), num_classes=10, in_channels=1)


@pytest.mark.checkout
def test_pcl_per_peer_views():
    from mixdistill.config import load_config
    from mixdistill.errors import ConfigError

    cls = METHODS["pcl"]
    peers = [FeaturePeer(s, d_in=64) for s in range(3)]
    d = cls(peers, cls.Params(views="per_peer"))
    d.set_augment(make_augment("cutout", size=3))
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    d.forward_train(x, Y, info())
    assert not torch.equal(peers[0].seen, peers[1].seen) and not torch.equal(peers[1].seen, peers[2].seen)
    assert all(torch.equal(tm.module.seen, p.seen) for tm, p in zip(d.temporal_means, peers))  # its peer's view
    d.set_augment(make_augment("mixup"))
    with pytest.raises(ConfigError, match="label-preserving"):
        d.forward_train(x, Y, info())
    with pytest.raises((ConfigError, ValueError), match="label-preserving"):
        load_config("configs/fmnist_cpu_teacher.yaml", ["method=pcl", "method.views=per_peer", "augment=mixup"])
    load_config("configs/fmnist_cpu_teacher.yaml", ["method=pcl", "method.views=per_peer", "augment=crop_flip"])
    with pytest.raises(ConfigError, match="with augment none every peer sees the same batch"):  # accepted, idle
        load_config("configs/fmnist_cpu_teacher.yaml", ["method=pcl", "method.views=per_peer"])


@pytest.mark.parametrize("method", ["okddip", "pcl"])
@pytest.mark.parametrize("augment", sorted(AUGMENTATIONS))
def test_okddip_pcl_train_step_under_every_augmentation(method, augment):
    from mixdistill.augment import augment_params, augment_uses_teacher
    from mixdistill.errors import ConfigError

    cls = METHODS[method]
    torch.manual_seed(0)  # the query/key maps, the ensemble classifier
    d = cls([FeaturePeer(s, d_in=3 * 8 * 8) for s in range(3)], cls.Params())
    params = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)} if "mean" in augment_params(augment) else {}
    fn = make_augment(augment, **params)
    if augment_uses_teacher(augment):  # cutmix_pick scores its pool with a teacher, and online methods have none
        with pytest.raises(ConfigError, match="teacher"):
            d.set_augment(fn)
        return
    d.set_augment(fn)
    d.train()
    opt = torch.optim.SGD(d.learnable_parameters(), lr=0.1)
    before = [q.detach().clone() for q in d.learnable_parameters()]
    x = torch.rand(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = d.forward_train(x, torch.tensor([0, 1, 2, 0, 1, 2]), info(epoch=100))
    total = sum(out.losses.values())
    assert torch.isfinite(total) and out.labels.shape == (6,)
    opt.zero_grad()
    total.backward()
    opt.step()
    d.after_step()
    assert all(not torch.equal(b, q) for b, q in zip(before, d.learnable_parameters()))


@pytest.mark.checkout
def test_a_teacher_given_to_an_online_method_is_said_to_be_unused(online_common, capsys):
    from mixdistill.cli import main

    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *online_common, "name=dml_teacher", "method=dml",
                 "method.peers=2", "model.teacher_checkpoint=resnet56"]) == 0
    assert "teacher=- (model.teacher_checkpoint resnet56 is not used by dml)" in capsys.readouterr().err
