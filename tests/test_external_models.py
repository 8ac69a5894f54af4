"""timm:NAME and tv:NAME models (``mixdistill/models/external.py``): the zoo interface on any timm or
torchvision classifier, the library's own state-dict keys, clear errors, and a timm student distilled end to end
from a zoo teacher. Nothing is downloaded: models are built without weights (the pretrained path is checked
with the library's builder replaced)."""

from __future__ import annotations

import copy
import sys

import pytest
import torch
from torch import nn

import mixdistill
from mixdistill.config import resolve_config
from mixdistill.engine.build import build_distiller
from mixdistill.errors import CheckpointError, ConfigError
from mixdistill.models import (
    create_meta_model,
    create_model,
    external,
    load_weights,
    model_summary,
    native_input,
)


def _check_contract(model: nn.Module, x: torch.Tensor, num_classes: int, n_maps: int | None):
    model.eval()
    with torch.no_grad():
        logits = model(x)
        f_logits, feats = model.forward_features(x)
    assert logits.shape == (x.shape[0], num_classes) and model.num_classes == num_classes
    assert feats["pooled"].shape == (x.shape[0], model.feature_dim)
    torch.testing.assert_close(f_logits, logits)
    with torch.no_grad():
        torch.testing.assert_close(model.get_classifier()(feats["pooled"]), logits)
    if n_maps is not None:
        assert len(feats["maps"]) == n_maps
    assert all(m.ndim == 4 and m.shape[0] == x.shape[0] for m in feats["maps"])
    model.train()
    assert model.library_model.training  # the library module's flag follows the adapter's
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    return feats


# ------------------------------------------------------------------------------------------ torchvision

@pytest.mark.parametrize("channels", [1, 3])
def test_tv_resnet18_contract_and_stage_maps(channels):
    model = create_model("tv:resnet18", num_classes=10, in_channels=channels)
    feats = _check_contract(model, torch.randn(2, channels, 32, 32), 10, n_maps=5)
    assert [m.shape[1] for m in feats["maps"]] == [64, 64, 128, 256, 512] and model.feature_dim == 512
    assert model.conv1.in_channels == channels


def test_tv_mobilenet_v3_small_is_pooled_only():
    model = create_model("tv:mobilenet_v3_small", num_classes=7, in_channels=1)
    _check_contract(model, torch.randn(3, 1, 32, 32), 7, n_maps=0)
    assert model.feature_dim == 1024 and model.get_classifier() is model.classifier[3]


def test_tv_first_conv_adapted_as_timm_does():
    w = torch.randn(4, 3, 3, 3)
    torch.testing.assert_close(external.adapt_input_conv(w, 1), w.sum(1, keepdim=True))
    five = external.adapt_input_conv(w, 5)
    torch.testing.assert_close(five, torch.cat([w, w[:, :2]], 1) * 0.6)


def test_tv_pretrained_gets_the_weights_and_a_fresh_head(monkeypatch):
    import torchvision

    asked = []
    real = torchvision.models.get_model

    def fake_get_model(name, **kwargs):  # the library's pretrained model, without downloading it
        asked.append(kwargs.get("weights"))
        return real(name, **{**kwargs, "weights": None})

    monkeypatch.setattr(torchvision.models, "get_model", fake_get_model)
    model = create_model("tv:resnet18", num_classes=10, in_channels=1, pretrained=True)
    assert asked == ["DEFAULT"] and model.fc.out_features == 10 and model.conv1.in_channels == 1
    create_model("tv:resnet18", num_classes=10)
    assert asked[-1] is None  # default: no weights asked for


# ----------------------------------------------------------------------------------------------- timm

@pytest.mark.parametrize("name,n_maps", [("timm:resnet10t", 5), ("timm:mobilenetv3_small_050", 5)])
@pytest.mark.parametrize("channels", [1, 3])
def test_timm_contract_and_intermediate_maps(name, n_maps, channels):
    pytest.importorskip("timm")
    model = create_model(name, num_classes=10, in_channels=channels)
    feats = _check_contract(model, torch.randn(2, channels, 32, 32), 10, n_maps=n_maps)
    assert feats["maps"][-1].shape[1] == model.library_model.feature_info[-1]["num_chs"]


def test_timm_pretrained_is_asked_of_timm_only_when_set(monkeypatch):
    timm = pytest.importorskip("timm")
    asked = []
    real = timm.create_model

    def fake_create_model(name, pretrained=False, **kwargs):
        asked.append(pretrained)
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    create_model("timm:resnet10t", num_classes=10, in_channels=1)
    cfg = resolve_config(None, {"model.student": "timm:resnet10t", "model.pretrained": True, "method": "ce",
                                "train.device": "cpu"})
    student = build_distiller(cfg, 10, 1).student
    assert asked == [False, True] and student.conv1[0].in_channels == 1


# -------------------------------------------------------------------------------------- state dicts

@pytest.mark.parametrize("name", ["tv:resnet18", "tv:mobilenet_v3_small", "timm:resnet10t"])
def test_library_state_dict_loads_strictly(name, tmp_path):
    if name.startswith("timm:"):
        timm = pytest.importorskip("timm")
        library = timm.create_model(name[5:], pretrained=False, num_classes=10)
    else:
        import torchvision

        library = torchvision.models.get_model(name[3:], weights=None, num_classes=10)
    path = tmp_path / "library.pth"
    torch.save(library.state_dict(), path)  # a bare state dict, as the libraries publish theirs
    model = create_model(name, num_classes=10)
    assert list(model.state_dict()) == list(library.state_dict())  # the library's own keys, in its order
    load_weights(model, path)
    x = torch.randn(2, 3, 32, 32)
    library.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), library(x))
        torch.testing.assert_close(model.forward_features(x)[0], library(x))
    # and back: the adapter's state dict is the bare library model's
    again = copy.deepcopy(library)
    again.load_state_dict(model.state_dict(), strict=True)
    # a checkpoint of another class count is one clear line
    with pytest.raises(CheckpointError, match="checkpoint has 10 classes, model has 5"):
        load_weights(create_model(name, num_classes=5), path)


def test_adapter_shares_the_library_tensors():
    model = create_model("tv:resnet18", num_classes=10)
    library = model.library_model
    model.to(memory_format=torch.channels_last)
    assert library.conv1.weight is model.conv1.weight and library.conv1.weight.is_contiguous(
        memory_format=torch.channels_last)
    twin = copy.deepcopy(model)  # as the EMA copies the student
    assert twin.library_model._modules is twin._modules and twin.conv1 is not model.conv1
    with torch.no_grad():
        twin.fc.weight.add_(1.0)
    x = torch.randn(2, 3, 32, 32)
    twin.eval(), model.eval()
    assert not torch.equal(twin(x), model(x))


def test_folded_teacher_and_meta_model():
    from mixdistill.engine.fast import fold_conv_bn

    model = create_model("tv:resnet18", num_classes=10, in_channels=1).eval()
    folded, pairs = fold_conv_bn(model)
    assert pairs == 20
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    meta = create_meta_model("tv:resnet18", num_classes=10, in_channels=1)
    assert meta.fc.weight.is_meta
    assert native_input("tv:resnet18") == (1000, 3, 224)
    assert model_summary("tv:resnet18", macs=False)["params"] == 11_689_512  # torchvision's resnet18


# -------------------------------------------------------------------------------------------- errors

def test_unknown_names_are_one_config_error_line():
    with pytest.raises(ConfigError, match=r"unknown tv model 'resnet19'\. Did you mean: tv:resnet18.*"
                                          r"torchvision\.models\.list_models") as e:
        create_model("tv:resnet19", num_classes=10)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="give a name after 'tv:'"):
        create_model("tv:", num_classes=10)
    # as an override, `timm:` read as the YAML mapping {timm: null}: "model.student: Input should be a valid string"
    from mixdistill.config import load_config

    for override, said in (("model.student=timm:", "give a name after 'timm:'"),
                           ("model.teacher=tv:", "give a name after 'tv:'")):
        with pytest.raises(ConfigError, match=said):
            load_config(None, [override])
    with pytest.raises(ConfigError, match="no final nn.Linear classifier"):
        create_model("tv:squeezenet1_0", num_classes=10)
    with pytest.raises(ConfigError, match=r"unknown tv model 'nope'"):
        resolve_config(None, {"model.student": "tv:nope"})
    with pytest.raises(ConfigError, match="model.pretrained=true loads timm or torchvision weights; cnn5_w8"):
        resolve_config(None, {"model.student": "cnn5_w8", "model.pretrained": True})


def test_unknown_timm_name():
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"unknown timm model 'resnet10x'\..*timm\.list_models\(\)"):
        resolve_config(None, {"model.student": "timm:resnet10x"})
    resolve_config(None, {"model.student": "timm:resnet10t.c3_in1k"})  # a pretrained tag is a name timm takes


def test_missing_timm_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mixdistill\[timm\]'"):
        create_model("timm:resnet18", num_classes=10)


def test_models_command_names_the_prefixes(capsys, monkeypatch):
    from mixdistill.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "timm:NAME" in out and "tv:NAME" in out


# ------------------------------------------------------------------------------------ end to end

def test_timm_student_distils_from_a_zoo_teacher(fmnist_root, tmp_path):
    pytest.importorskip("timm")
    common = {"data.root": str(fmnist_root), "output_dir": str(tmp_path / "runs"), "data.train_subset": 64,
              "data.test_subset": 64, "data.batch_size": 32, "data.eval_batch_size": 64, "optim.epochs": 1,
              "optim.milestones": [], "train.progress": False, "train.tensorboard": False, "train.device": "cpu",
              "train.precision": "fp32", "train.compile": False}
    teacher = mixdistill.train({"name": "teacher", "model": {"student": "cnn5_w8"}, "method": {"name": "ce"}},
                               common, quiet=True)
    teacher_ckpt = f"{teacher['run_dir']}/last.pt"
    for name, augment in (("kd", "none"), ("kd_cutmix", "cutmix")):
        summary = mixdistill.train(
            {"name": name, "model": {"student": "timm:mobilenetv3_small_050", "teacher_checkpoint": teacher_ckpt},
             "method": {"name": "kd"}, "augment": {"name": augment}}, common, quiet=True)
        assert summary["student"] == "timm:mobilenetv3_small_050" and summary["last_acc"] is not None
        assert summary["teacher_acc"] == teacher["last_acc"]
        assert set(summary["environment"]) >= {"precision"}
        # the checkpoint records the timm: name and holds timm's keys: it loads strictly into a fresh model, and
        # evaluates (it can also teach: build_teacher creates the arch it records)
        state = torch.load(f"{summary['run_dir']}/last.pt", map_location="cpu", weights_only=True)
        assert state["arch"] == "timm:mobilenetv3_small_050" and "conv_stem.weight" in state["model"]
        load_weights(create_model(state["arch"], num_classes=10, in_channels=1), state)
        result = mixdistill.evaluate(summary, root=fmnist_root)
        assert result["images"] == 200 and 0 <= result["acc"] <= 100


def test_a_map_method_on_a_network_without_maps_is_one_clear_error(tmp_path):
    from mixdistill.engine.build import check_buildable
    from mixdistill.methods import METHODS

    if not {"at", "pkt"} <= set(METHODS):
        pytest.skip("the feature methods at and pkt are not registered")
    teacher = tmp_path / "teacher.pt"
    teacher.write_bytes(b"")  # check_buildable reads no weights
    common = {"model.teacher": "cnn5_w8", "model.teacher_checkpoint": str(teacher)}
    with pytest.raises(ConfigError, match="method at compares stage maps, which tv:mobilenet_v3_small does not give"):
        check_buildable(resolve_config(None, {**common, "model.student": "tv:mobilenet_v3_small", "method": "at"}))
    check_buildable(resolve_config(None, {**common, "model.student": "tv:mobilenet_v3_small", "method": "pkt"}))
    check_buildable(resolve_config(None, {**common, "model.student": "tv:resnet18", "method": "at"}))


def test_a_network_built_for_one_input_size_is_one_line_on_other_images():
    """A timm ViT on 28x28 Fashion-MNIST passed --print-config and stopped at step 1 in a traceback."""
    pytest.importorskip("timm")
    from mixdistill.engine.build import check_buildable

    with pytest.raises(ConfigError, match=r"timm:vit_tiny_patch16_224 cannot take 28x28 images: it is built for one "
                                          r"input size \(Input height \(28\) doesn't match model \(224\)"):
        check_buildable(resolve_config(None, {"model.student": "timm:vit_tiny_patch16_224", "method": "ce",
                                              "data.dataset": "fashion_mnist", "train.device": "cpu"}))
    # torchvision's ViT asserts its size and MaxViT's windows do not divide 28: each was a traceback at the first
    # step, after the run's folder was made
    for name, said in (("tv:vit_b_16", r"Wrong image height! Expected 224 but got 28!"),
                       ("tv:maxvit_t", r"shape '\[1, 8, 8, 7, 7, 64\]' is invalid for input of size")):
        with pytest.raises(ConfigError, match=rf"{name} cannot take 28x28 images: it is built for one input size "
                                              rf"\({said}"):
            check_buildable(resolve_config(None, {"model.student": name, "method": "ce",
                                                  "data.dataset": "fashion_mnist", "train.device": "cpu"}))
