"""Model zoo: sizes, RepDistiller checkpoint compatibility, interface, checkpoint errors."""

import copy
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mixdistill.errors import CheckpointError, ConfigError, MixdistillError, UnknownNameError
from mixdistill.models import (MODELS, count_macs, count_parameters, create_model, list_models, load_weights,
                               model_summary)

FIXTURES = Path(__file__).parent / "fixtures"
REPDISTILLER_KEYS = json.loads((FIXTURES / "repdistiller_keys.json").read_text())
REPDISTILLER_OUT = json.loads((FIXTURES / "models_repdistiller_outputs.json").read_text())

# Millions of parameters at 100 classes (CRD paper / RepDistiller).
SPEC_PARAMS_M = {
    "resnet32x4": 7.43, "resnet8x4": 1.23, "resnet110": 1.74, "resnet56": 0.86, "resnet32": 0.47,
    "resnet20": 0.28, "wrn_40_2": 2.26, "wrn_40_1": 0.57, "wrn_16_2": 0.70, "vgg13": 9.46,
    "vgg8": 3.97, "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36, "ResNet50": 23.71,
}
SPEC_MACS_G = {"resnet32x4": 1.083, "resnet8x4": 0.177}


def synth_state(entries, seed=0):
    """Deterministic, well-scaled weights; must match fixtures/models_make_repdistiller_fixtures.py."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in entries:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(0, dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) >= 2:
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g)
    return sd


def synth_input(channels=3, size=32, seed=1):
    return torch.randn((2, channels, size, size), generator=torch.Generator().manual_seed(seed))


def test_registry():
    names = list_models()
    assert names == sorted(MODELS)
    assert set(REPDISTILLER_KEYS) <= set(names)
    for extra in ("mobile_half", "resnet18_cifar", "lenet5", "alexnet_cifar", "alexnet_cifar_w025", "cnn5_w8", "cnn5_w16", "cnn5_w32"):
        assert extra in names
    with pytest.raises(UnknownNameError) as err:
        create_model("resnet33")
    assert isinstance(err.value, MixdistillError) and "resnet32" in str(err.value)


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS_M))
def test_parameter_count(name):
    params = count_parameters(create_model(name, num_classes=100, in_channels=3))
    assert params / 1e6 == pytest.approx(SPEC_PARAMS_M[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(SPEC_MACS_G))
def test_macs(name):
    summary = model_summary(name, num_classes=100, in_channels=3, image_size=32)
    assert summary["name"] == name
    assert summary["params"] / 1e6 == pytest.approx(SPEC_PARAMS_M[name], rel=0.01)
    assert summary["macs"] / 1e9 == pytest.approx(SPEC_MACS_G[name], rel=0.02)


@pytest.mark.parametrize("name", ["resnet8x4", "wrn_16_2", "vgg8", "mobile_half", "ShuffleV2", "cnn5_w8", "lenet5",
                                  "tv_resnet18"])
def test_meta_model_counts_as_the_real_one(name):
    """model_summary builds on the meta device (no weights, initialisers skipped): the same counts as a real model."""
    from mixdistill.models import create_meta_model, native_input

    classes, channels, size = native_input(name)
    meta = create_meta_model(name, num_classes=classes, in_channels=channels)
    real = create_model(name, num_classes=classes, in_channels=channels)
    assert all(p.is_meta for p in meta.parameters()) and not any(p.is_meta for p in real.parameters())
    assert count_parameters(meta) == count_parameters(real)
    shape = (1, channels, min(size, 64), min(size, 64))
    assert count_macs(meta, shape) == count_macs(real, shape)
    summary = model_summary(name)
    assert (summary["num_classes"], summary["in_channels"], summary["image_size"]) == (classes, channels, size)
    assert summary["params"] == count_parameters(real)


def test_macs_are_per_image():
    model = create_model("resnet8")
    assert count_macs(model, (4, 3, 32, 32)) == count_macs(model, (1, 3, 32, 32))
    assert model.training  # mode restored


@pytest.mark.parametrize("name", sorted(REPDISTILLER_KEYS))
def test_repdistiller_checkpoint_loads_strictly_and_matches_outputs(name, tmp_path):
    """A RepDistiller-style checkpoint loads strictly, and our forward reproduces theirs."""
    entries = REPDISTILLER_KEYS[name]
    model = create_model(name, num_classes=100)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == entries

    path = tmp_path / "ckpt.pth"
    torch.save({"epoch": 240, "model": synth_state(entries), "best_acc": torch.tensor(75.0)}, path)
    load_weights(model, path, strict=True)

    model.eval()
    with torch.no_grad():
        logits, feats = model.forward_features(synth_input())
    ref = torch.tensor(REPDISTILLER_OUT[name]["logits"])
    scale = max(1.0, ref.abs().max().item())
    torch.testing.assert_close(logits, ref, rtol=0, atol=1e-4 * scale)
    assert [list(m.shape) for m in feats["maps"]] == REPDISTILLER_OUT[name]["maps"]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_interface(name):
    torch.manual_seed(0)
    for channels, size in ((3, 32), (1, 28)):
        model = create_model(name, num_classes=10, in_channels=channels).eval()
        assert model.num_classes == 10
        x = torch.randn(2, channels, size, size)
        with torch.no_grad():
            logits, feats = model.forward_features(x)
            plain = model(x)
        assert logits.shape == (2, 10)
        assert feats["pooled"].shape == (2, model.feature_dim)
        assert len(feats["maps"]) >= 2 and all(m.dim() == 4 and m.shape[0] == 2 for m in feats["maps"])
        torch.testing.assert_close(plain, logits, rtol=1e-5, atol=1e-5)
        assert torch.isfinite(logits).all()
    with torch.no_grad():  # larger (e.g. Tiny-ImageNet-sized) inputs work too
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobile_half", "ShuffleV1", "ShuffleV2",
                                  "resnet18_cifar", "lenet5", "alexnet_cifar", "cnn5_w8", "wrn_20_8", "okd_vgg16"])
def test_backward_through_features(name):
    model = create_model(name, num_classes=10, in_channels=1).train()
    logits, feats = model.forward_features(torch.randn(2, 1, 28, 28))
    loss = logits.logsumexp(1).mean() + feats["pooled"].pow(2).mean() + sum(m.mean() for m in feats["maps"])
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ----------------------------------------------------------------- checkpoint loading


@pytest.fixture(scope="module")
def small_state():
    return {k: v.clone() for k, v in create_model("resnet8", num_classes=10).state_dict().items()}


def test_load_formats_and_prefixes(small_state, tmp_path):
    for wrap in (lambda sd: {"model": sd}, lambda sd: {"state_dict": sd}, lambda sd: sd):
        for prefix in ("", "module.", "module._orig_mod."):
            sd = {prefix + k: v for k, v in small_state.items()}
            model = create_model("resnet8", num_classes=10)
            assert load_weights(model, wrap(sd)) is model
            torch.testing.assert_close(model.fc.weight, small_state["fc.weight"])
    path = tmp_path / "ok.pt"
    torch.save({"model": {"module." + k: v for k, v in small_state.items()}}, path)
    model = create_model("resnet8", num_classes=10)
    load_weights(model, str(path))
    torch.testing.assert_close(model.conv1.weight, small_state["conv1.weight"])


def _expect_error(model, source, *fragments, strict=True):
    with pytest.raises(CheckpointError) as err:
        load_weights(model, source, strict=strict)
    msg = str(err.value)
    for fragment in fragments:
        assert fragment in msg, msg
    assert "\n" not in msg  # one line for the CLI
    return msg


def test_error_wrong_class_count(small_state):
    msg = _expect_error(create_model("resnet8", num_classes=100), {"model": small_state},
                        "checkpoint has 10 classes, model has 100")
    assert "mismatch" not in msg  # the bias is part of the same problem


def test_error_missing_and_unexpected_keys(small_state):
    sd = dict(small_state)
    del sd["layer3.0.bn2.running_mean"]
    msg = _expect_error(create_model("resnet8", num_classes=10), {"model": sd}, "missing", "layer3.0.bn2.running_mean")
    assert "unexpected" not in msg
    sd["extra.weight"] = torch.zeros(3)
    _expect_error(create_model("resnet8", num_classes=10), sd, "missing", "unexpected", "extra.weight")
    # Non-strict loading tolerates both.
    load_weights(create_model("resnet8", num_classes=10), sd, strict=False)
    # A different architecture lists the first few keys, not hundreds.
    msg = _expect_error(create_model("wrn_16_1", num_classes=10), small_state, "missing", "more")
    assert len(msg) < 1000


def test_error_other_shape_mismatch(small_state):
    _expect_error(create_model("resnet8", num_classes=10, in_channels=1), small_state,
                  "shape mismatch", "conv1.weight", "(16, 3, 3, 3)", "(16, 1, 3, 3)")
    _expect_error(create_model("resnet8", num_classes=10, in_channels=1), small_state, "conv1.weight", strict=False)


def test_error_truncated_and_corrupt_files(small_state, tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"model": small_state}, good)
    data = good.read_bytes()
    model = create_model("resnet8", num_classes=10)
    for name, content in (("truncated.pt", data[: len(data) // 2]), ("garbage.pt", b"not a checkpoint " * 50),
                          ("empty.pt", b"")):
        (tmp_path / name).write_bytes(content)
        _expect_error(model, tmp_path / name, "cannot read checkpoint", name)
    _expect_error(model, tmp_path / "absent.pt", "not found")


class _RunsCode:
    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_error_code_executing_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = _RunsCode()
    evil.marker = str(marker)
    path = tmp_path / "evil.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "payload": evil}, path)
    msg = _expect_error(create_model("resnet8"), path, "refused", "execute code")
    assert "Traceback" not in msg
    assert not marker.exists()


def test_error_not_a_state_dict():
    _expect_error(create_model("resnet8"), {"epoch": 3, "acc": 0.5}, "does not contain a state dict")
    _expect_error(create_model("resnet8"), [1, 2, 3], "does not contain a state dict")


def _train_pass(model, x, precision):
    """Logits, parameter gradients and forward_features' maps of one training-mode pass."""
    torch.manual_seed(1)  # the same dropout masks (AlexNet) for both orders
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
        _, feats = model.forward_features(x)
    logits.float().logsumexp(1).mean().backward()
    return logits, [p.grad for p in model.parameters()], feats["maps"] + [feats["pooled"]]


@pytest.mark.parametrize("name", ["cnn5_w8", "lenet5", "alexnet_cifar_w025"])
def test_relu_after_pool_is_the_textbook_order_bit_for_bit(name, precision, monkeypatch):
    """Max-pool before ReLU (models/cnn.py, models/das2020.py) gives the textbook order's logits, gradients
    and recorded maps bit for bit. The images are constant on 4x4 blocks and the first conv is a lone centre
    tap, so most first-stage pooling windows hold tied maxima, and about half of them are all negative (the
    two cases where a max-pool's gradient could go elsewhere); channels_last, training mode."""
    torch.manual_seed(0)
    model = create_model(name, 10, 1).train().to(memory_format=torch.channels_last)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    with torch.no_grad():
        centre = conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2].clone()
        conv.weight.zero_()
        conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2] = centre
    blocks = torch.randn(8, 1, 7, 7, generator=torch.Generator().manual_seed(2))
    x = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3).contiguous(memory_format=torch.channels_last)
    textbook = copy.deepcopy(model)
    textbook.relu_after_pool = False
    assert model.relu_after_pool  # the default

    seen = []  # the shape of every map a ReLU gets
    relu = torch.nn.functional.relu
    monkeypatch.setattr(torch.nn.functional, "relu", lambda t, *a, **k: seen.append(t.shape) or relu(t, *a, **k))
    ours = _train_pass(model, x, precision)
    first_relu_ours, seen[:] = seen[0], []
    theirs = _train_pass(textbook, x, precision)
    assert first_relu_ours[-1] < seen[0][-1]  # the orders differ: ours pooled before its first ReLU
    assert len(ours[2]) == len(theirs[2]) >= 2
    for a, b in zip([ours[0], *ours[1], *ours[2]], [theirs[0], *theirs[1], *theirs[2]], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_global_avg_pool_gives_the_gradient_in_the_maps_layout(layout):
    """models._base.global_avg_pool: the pooling's floats and gradient values, with the gradient channels-last where
    the map is (ATen's would come back NCHW)."""
    from mixdistill.models._base import global_avg_pool

    x = torch.randn(16, 64, 3, 3)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weights = torch.randn(16, 64)
    outputs, grads = [], []
    for pool in (global_avg_pool, lambda t: torch.nn.functional.adaptive_avg_pool2d(t, 1).flatten(1)):
        leaf = x.clone().requires_grad_()
        relu_out = torch.relu(leaf)  # as a ReLU's output: its backward gets the gradient as handed back
        relu_out.register_hook(grads.append)
        outputs.append(pool(relu_out))
        (outputs[-1] * weights).sum().backward()
    (y, z), (ours, atens) = outputs, grads
    assert torch.equal(y, z) and torch.equal(ours, atens)
    assert ours.is_contiguous(memory_format=torch.channels_last if layout == "channels_last" else
                              torch.contiguous_format)
    if layout == "channels_last":
        assert not atens.is_contiguous(memory_format=torch.channels_last)  # what it saves the ReLU from


def test_cnn5_trains_to_the_same_floats_with_its_channels_last_pooling_gradient(precision, monkeypatch):
    """cnn5_w8, channels-last, 3 SGD steps: logits and weights bit for bit whether its global pooling hands the
    gradient back channels-last (the default) or as ATen lays it out."""
    from mixdistill.models import _base

    torch.manual_seed(0)
    model = create_model("cnn5_w8", 10, 1).train().to(memory_format=torch.channels_last)
    plain = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (32,), generator=g)) for _ in range(3)]

    def train(net):
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        logits = []
        for x, y in batches:
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                out = net(x)
            torch.nn.functional.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad()
            logits.append(out)
        return logits

    ours = train(model)
    monkeypatch.setattr(_base._GradInChannelsLast, "apply", lambda x: x)
    theirs = train(plain)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))


@pytest.mark.parametrize("name", ["cnn5_w8", "lenet5", "alexnet_cifar_w025"])
def test_torch_compile_traces_the_textbook_order(name):
    """A compiled run keeps the floats it had before the zoo pooled first: dynamo sees ReLU, then max-pool (the
    graph is captured by a backend that runs it as traced; no C++ compiler needed)."""
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = create_model(name, 10, 1).train()
    torch._dynamo.reset()
    torch.compile(model, backend=capture)(torch.randn(2, 1, 28, 28))
    calls = [getattr(n.target, "__name__", str(n.target)) for g in graphs for n in g.graph.nodes
             if n.op in ("call_function", "call_method")]
    first = lambda word: next(i for i, c in enumerate(calls) if word in c)  # noqa: E731
    assert first("relu") < first("max_pool")


@pytest.mark.parametrize("num_classes, in_channels", [(0, 3), (-1, 3), (10, 0), (True, 3), (10.0, 3)])
def test_create_model_refuses_counts_below_one_or_not_whole(num_classes, in_channels):
    """0 classes built a model with an empty classifier (torch only warned); -1, True and 10.0 were torch errors."""
    with pytest.raises(ConfigError, match="must be a whole number of at least 1"):
        create_model("resnet8", num_classes, in_channels)
    assert create_model("resnet8", np.int64(10), 1).fc.out_features == 10  # numpy's integers are whole numbers
