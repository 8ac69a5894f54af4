"""The Python API (README "Python API"): the README's example executed as written, the override convention,
registering methods and augmentations (and their parameters' types), plugins for the command line, and a
light ``import mixdistill``."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Annotated

import pytest
import torch
from pydantic import Field

import mixdistill
from mixdistill.augment import AUGMENTATIONS, MixedBatch, resolve_augment_params
from mixdistill.config import load_config, resolve_config
from mixdistill.distill import Distiller, MethodParams, step_output
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.errors import ConfigError, MixdistillError
from mixdistill.losses import mixed_cross_entropy
from mixdistill.methods import METHODS, load_plugins

README = Path(__file__).resolve().parents[1] / "README.md"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def registries():
    """Whatever a test registers is gone after it (other tests iterate over the registries)."""
    from mixdistill.models import MODELS

    methods, augments, models = set(METHODS), set(AUGMENTATIONS), set(MODELS)
    yield
    for name in set(METHODS) - methods:
        mixdistill.unregister_method(name)
    for name in set(AUGMENTATIONS) - augments:
        mixdistill.unregister_augment(name)
    for name in set(MODELS) - models:
        mixdistill.unregister_model(name)


def readme_example() -> str:
    text = README.read_text(encoding="utf-8")
    found = re.search(r"<!-- python-api-example -->\n```python\n(.*?)\n```", text, re.S)
    assert found, "README.md has no <!-- python-api-example --> python block"
    return found.group(1)


class CE(Distiller):
    needs_teacher = False

    def forward_train(self, images, labels, info):
        batch = self.mix(images, labels, info)
        logits = self.student(batch.images)
        return step_output(logits, {"ce": mixed_cross_entropy(logits, labels, batch)}, labels, batch)


def noise(images, labels, *, generator, sigma: float = 0.1):
    rows = torch.arange(images.shape[0])[:, None]
    return MixedBatch(images + sigma * torch.randn(images.shape, generator=generator), rows, torch.ones(rows.shape))


# ------------------------------------------------------------------------------------------- the README

@pytest.mark.checkout
def test_readme_example_runs_as_written(fmnist_root, tmp_path, monkeypatch, registries, capsys):
    monkeypatch.setenv("MIXDISTILL_DATA", str(fmnist_root))  # "data found as in Set-up"
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "readme_example"}
    exec(compile(readme_example(), f"{README}:python-api-example", "exec"), namespace)  # noqa: S102

    summary, best, model = namespace["summary"], namespace["best"], namespace["model"]
    run = tmp_path / "runs" / "smoothing_demo"
    assert summary["run_dir"] == str(run.resolve())
    assert summary == {**json.loads((run / "summary.json").read_text()), "run_dir": str(run.resolve())}
    assert summary["method"] == "label_smoothing" and summary["epochs"] == 1 and summary["train_images"] == 600
    assert summary["data_root"] == str(fmnist_root.resolve())  # found through $MIXDISTILL_DATA: recorded
    assert 0 <= summary["last_acc"] <= summary["last_top5"] <= 100
    assert "top-1" in capsys.readouterr().out
    config = load_checkpoint(run / "last.pt")["config"]
    assert config["method"] == {"name": "label_smoothing", "smoothing": 0.1}
    assert config["augment"] == {"name": "gaussian_noise", "sigma": 0.2}
    # best.pt of a one-epoch run is that epoch; evaluate reads it on the whole 200-image test split
    assert summary["best_checkpoint"] == {"file": "best.pt", "metric": "test_acc", "value": summary["last_acc"],
                                          "epoch": 1}
    assert best["images"] == 200 and best["acc"] == pytest.approx(summary["last_acc"])
    assert best["loss"] == pytest.approx(summary["last_test_loss"], rel=1e-5)
    assert not model.training and sum(p.numel() for p in model.parameters()) > 0


# ------------------------------------------------------------------------------------- train's overrides

def test_overrides_are_dotted_keys_with_python_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: a\nmethod: {name: ce}\noptim: {epochs: 7, milestones: [2, 4]}\n")
    cfg = resolve_config(path, {"optim.milestones": [3, 5], "method.temperature": 2, "method": "kd",
                                "model.teacher_checkpoint": "t.pt"})
    assert cfg.name == "a" and cfg.optim.epochs == 7 and cfg.optim.milestones == [3, 5]
    # the switch applies first, so the temperature given beside it is kept, as on the command line
    assert cfg.method.name == "kd" and cfg.method.model_extra["temperature"] == 2
    assert cfg.to_dict() == load_config(path, ["method.temperature=2", "method=kd", "optim.milestones=[3,5]",
                                               "model.teacher_checkpoint=t.pt"]).to_dict()
    tree = {"optim": {"epochs": 5, "milestones": [1]}}
    assert resolve_config(tree, {"optim.epochs": 6}).optim.epochs == 6
    assert tree == {"optim": {"epochs": 5, "milestones": [1]}}, "the caller's dict was changed"
    assert resolve_config(resolve_config(tree), {"seed": 3}).seed == 3  # a RunConfig is a config too
    assert resolve_config(None).to_dict() == load_config(None).to_dict()
    with pytest.raises(ConfigError, match="optim.epochs"):
        resolve_config(None, {"optim.epochs": True})
    with pytest.raises(ConfigError, match="expected a YAML file's path"):
        resolve_config(3)


def test_train_takes_a_dict_and_keywords_keywords_winning(monkeypatch):
    seen = {}

    def fake_train(cfg, *, resume, quiet):
        seen.update(cfg=cfg, resume=resume, quiet=quiet)
        return {"name": cfg.name}

    monkeypatch.setattr("mixdistill.engine.trainer.train", fake_train)
    out = mixdistill.train(None, {"seed": 1, "name": "x", "optim.epochs": 3, "optim.milestones": [1]},
                           seed=2, **{"optim.lr": 0.2}, quiet=True)
    assert seen["cfg"].seed == 2 and seen["cfg"].optim.lr == 0.2 and seen["cfg"].optim.epochs == 3
    assert seen["quiet"] is True and seen["resume"] is False
    assert out == {"name": "x", "run_dir": str(Path("runs/x").resolve())}


def test_evaluate_errors_are_one_line(tmp_path):
    with pytest.raises(MixdistillError, match="without last.pt"):
        mixdistill.evaluate(tmp_path)
    with pytest.raises(ConfigError, match="summary mixdistill.train returned"):
        mixdistill.evaluate({"name": "x"})
    # a wrong type is named (it was a TypeError from deep inside)
    with pytest.raises(ConfigError, match="or an opened run; got int"):
        mixdistill.evaluate(42)
    with pytest.raises(ConfigError, match="batch_size: an integer, got '64'"):
        mixdistill.evaluate(tmp_path, batch_size="64")
    with pytest.raises(ConfigError, match="overrides are a dict of dotted keys"):
        mixdistill.train(None, ["optim.epochs=1"])
    with pytest.raises(ConfigError, match="takes folders"):
        mixdistill.collect_results(42)
    with pytest.raises(ConfigError, match="no run directories"):
        mixdistill.collect_results([tmp_path, str(tmp_path)])  # a list of folders is taken as the folders
    # a foreign checkpoint's missing facts are asked for as the Python API takes them, not only as options
    from mixdistill.models import create_model

    torch.save({"model": create_model("cnn5_w8", num_classes=10, in_channels=1).state_dict()}, tmp_path / "m.pt")
    foreign = mixdistill.open_run(tmp_path / "m.pt")
    with pytest.raises(ConfigError, match=r"mixdistill.data.load_dataset\(NAME, split\)"):
        foreign.split()
    with pytest.raises(ConfigError, match="arch= in Python"):
        foreign.model()
    with pytest.raises(ConfigError, match="pass num_classes and in_channels"):
        foreign.model("cnn5_w8")
    assert foreign.model("cnn5_w8", 10, 1).training is False
    # open_run takes what evaluate takes, and names a wrong type; flags are booleans ("no" resumed)
    assert mixdistill.open_run({"run_dir": str(tmp_path / "m.pt")}).checkpoint == tmp_path / "m.pt"
    with pytest.raises(ConfigError, match="open_run: a run directory, a checkpoint file or the summary train "
                                          "returned, got int"):
        mixdistill.open_run(3)
    for flag in ("resume", "quiet"):
        with pytest.raises(ConfigError, match=f"train: {flag} is True or False, got 'no'"):
            mixdistill.train(None, **{flag: "no"})
    # the summary train returned, given back to it, is named (each of its keys was "unknown key")
    summary = {"name": "r", "last_acc": 91.0, "run_dir": str(tmp_path / "r")}
    with pytest.raises(ConfigError, match=r"got a run's summary .*'.*r/config.yaml' \(resume=True"):
        mixdistill.train(summary)
    # a run stopped before its first checkpoint is called that (it was "a directory without last.pt")
    (tmp_path / "stopped").mkdir()
    (tmp_path / "stopped" / "config.yaml").write_text("seed: 0\n")
    with pytest.raises(MixdistillError, match="is a run stopped before its first checkpoint"):
        mixdistill.evaluate(tmp_path / "stopped")


# ------------------------------------------------------------------------------------------- methods

def test_register_method_makes_configs_accept_it(registries):
    class WeightParams(MethodParams):
        weight: float = Field(1.0, gt=0)

    @mixdistill.register_method("my_ce")
    class MyCE(CE):
        Params = WeightParams

    assert METHODS["my_ce"] is MyCE and MyCE.registry_name == "my_ce"
    cfg = load_config(None, ["method=my_ce", "method.weight=2"])
    assert cfg.to_dict()["method"] == {"name": "my_ce", "weight": 2.0}
    assert load_config(None, ["method=my_ce"]).to_dict()["method"] == {"name": "my_ce", "weight": 1.0}
    with pytest.raises(ConfigError, match="weight"):
        load_config(None, ["method=my_ce", "method.weight=-1"])
    with pytest.raises(ConfigError, match="method"):
        load_config(None, ["method=my_ce", "method.wieght=1"])


def test_register_method_refuses_what_training_could_not_use(registries):
    with pytest.raises(TypeError, match="not a subclass"):
        mixdistill.register_method("x", object)
    with pytest.raises(TypeError, match="forward_train"):
        mixdistill.register_method("x", type("NoStep", (Distiller,), {}))
    with pytest.raises(TypeError, match="Params"):
        mixdistill.register_method("x", type("BadParams", (CE,), {"Params": dict}))
    with pytest.raises(ValueError, match="default_augment"):
        mixdistill.register_method("x", type("BadAug", (CE,), {"default_augment": "nope"}))
    with pytest.raises(ValueError, match="built in"):
        mixdistill.register_method("kd", CE)
    with pytest.raises(ValueError, match="method name"):
        mixdistill.register_method("a=b", CE)
    mixdistill.register_method("x", CE)
    with pytest.raises(ValueError, match="registered already"):
        mixdistill.register_method("x", CE)
    other = type("Other", (CE,), {})
    mixdistill.register_method("x", other, replace=True)
    assert METHODS["x"] is other
    with pytest.raises(ValueError, match="built in"):
        mixdistill.unregister_method("ce")
    with pytest.raises(ValueError, match=r"method 'y' is not registered \(registered: .*\bx\b"):
        mixdistill.unregister_method("y")  # was a silent no-op: a misspelt name left 'x' registered
    assert METHODS["x"] is other

    # the method section's own key, and a default outside its own range (pydantic leaves defaults unchecked)
    class NamedParams(MethodParams):
        name: str = "hello"

    class BadDefault(MethodParams):
        temperature: Annotated[float, Field(gt=0)] = -1.0

    with pytest.raises(TypeError, match="field 'name'"):
        mixdistill.register_method("y", type("Named", (CE,), {"Params": NamedParams}))
    with pytest.raises(TypeError, match=r"default -1.0 of .*temperature fails its own type: .*greater than 0"):
        mixdistill.register_method("y", type("Bad", (CE,), {"Params": BadDefault}))
    assert "y" not in METHODS


def test_every_built_in_methods_defaults_pass_their_own_types():
    from mixdistill.methods import _check_params

    for name, cls in METHODS.items():
        _check_params(name, cls)


# ------------------------------------------------------------------------------------------ augmentations

def test_register_augment_types_parameters_from_annotations_and_defaults(registries):
    @mixdistill.register_augment("mine")
    def mine(images, labels, *, generator, strength: Annotated[float, Field(ge=0, le=1)] = 0.5, steps=3,
             grey=False, mode="a", p=0.5, sizes=(1, 2), mean=None, std=None, teacher=None):
        return noise(images, labels, generator=generator)

    assert resolve_augment_params("mine") == {"strength": 0.5, "steps": 3, "grey": False, "mode": "a", "p": 0.5,
                                              "sizes": [1, 2], "mean": None, "std": None}
    assert resolve_augment_params("mine", steps=4, sizes=[3], grey=True)["sizes"] == [3]
    bad = [({"strength": 1.5}, "strength"), ({"steps": 1.5}, "steps"), ({"steps": True}, "steps"),
           ({"grey": 1}, "grey"), ({"p": 2}, "'p'"), ({"sizes": ["x"]}, "sizes"), ({"other": 1}, "unknown parameter")]
    for params, message in bad:
        with pytest.raises(ConfigError, match=message):
            resolve_augment_params("mine", **params)
    # a teacher-scoring augmentation needs a method with a teacher, as cutmix_pick does
    with pytest.raises(ConfigError, match="scores the pool with the teacher"):
        load_config(None, ["augment=mine"])

    mixdistill.register_augment("noise", noise)
    cfg = load_config(None, ["augment=noise", "augment.sigma=0.3"])
    assert cfg.to_dict()["augment"] == {"name": "noise", "sigma": 0.3}
    with pytest.raises(ConfigError, match="sigma"):
        load_config(None, ["augment=noise", "augment.sigma=[1]"])


class TinyNet(torch.nn.Module):
    """A network of the zoo's interface: logits from forward, (logits, {pooled, maps}) from forward_features."""

    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.conv = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1, bias=False),
                                        torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.fc = torch.nn.Linear(8, num_classes)
        self.feature_dim, self.num_classes = 8, num_classes

    def forward_features(self, x):
        maps = self.conv(x)
        pooled = maps.mean((2, 3))
        return self.fc(pooled), {"pooled": pooled, "maps": [maps]}

    def forward(self, x):
        return self.forward_features(x)[0]


def test_register_model_makes_it_a_student_and_a_teacher(registries, tiny_run_overrides, capsys):
    """A registered model trains, teaches (BatchNorm folded, as the zoo's), evaluates, and is listed at its input
    size; there was no way but writing into the zoo's dict."""
    from mixdistill.cli import main
    from mixdistill.models import MODELS, native_input

    @mixdistill.register_model("tiny_net", input_size=(10, 1, 28))
    def tiny_net(num_classes=100, in_channels=3):
        return TinyNet(num_classes, in_channels)

    assert MODELS["tiny_net"] is tiny_net and native_input("tiny_net") == (10, 1, 28)
    # the cached compile decision knows a plugin's network by its class and size too, not by its name alone
    from mixdistill.engine.compile import _student_label

    holder = torch.nn.Module()
    holder.student = TinyNet(10, 1)
    size = sum(p.numel() for p in holder.student.parameters())
    assert _student_label(load_config(None, ["model.student=tiny_net"]), holder) == f"tiny_net|TinyNet:{size}"
    assert _student_label(load_config(None, ["model.student=cnn5_w8"]), holder) == "cnn5_w8"
    # an online run's every peer, not its first only (a plugin after a built-in peer went undescribed)
    holder.peers = torch.nn.ModuleList([mixdistill.create_model("cnn5_w8", 10, 1), TinyNet(10, 1)])
    peers = load_config(None, ["method=dml", "model.peers=[cnn5_w8,tiny_net]"])
    assert _student_label(peers, holder).endswith(f"+TinyNet:{size}")
    assert isinstance(mixdistill.create_model("tiny_net", 10, 1), TinyNet)
    common = [*tiny_run_overrides, "optim.epochs=1", "--quiet"]
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *common, "name=t", "model.student=tiny_net"]) == 0
    teacher = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/t/last.pt"
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *common, "name=s", "model.student=cnn5_w8", "method=kd",
                 f"model.teacher_checkpoint={teacher}", "model.teacher=tiny_net"]) == 0
    runs = Path(teacher).parents[1]
    trained = json.loads((runs / "t" / "summary.json").read_text())["last_acc"]
    assert json.loads((runs / "s" / "summary.json").read_text())["teacher_acc"] == pytest.approx(trained, abs=1)
    assert mixdistill.evaluate(teacher, device="cpu")["acc"] == pytest.approx(trained, abs=1)
    capsys.readouterr()
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "tiny_net" in line)
    assert "1x28x28" in row and " 10 " in row

    def unbuildable(num_classes=100, in_channels=3):  # reads a value: not on the meta device `models` builds on
        raise RuntimeError("needs real weights")

    mixdistill.register_model("reads_values", unbuildable)
    assert main(["models"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "?: not built on PyTorch's meta device: reads_values (RuntimeError: needs real weights)" in out

    class ReadsInForward(TinyNet):
        def forward(self, x):
            if x.abs().max() > 1e3:  # a value: the meta device has none (was "cannot take a NonexNone input")
                x = x / 1e3
            return super().forward(x)

    mixdistill.unregister_model("reads_values")
    mixdistill.register_model("reads_in_forward", lambda num_classes=100, in_channels=3: ReadsInForward(
        num_classes, in_channels), input_size=(10, 1, 28))
    for size in ([], ["--image-size", "28"]):  # with a size given it read "cannot take a 28x28 input"
        assert main(["models", "--macs", *size]) == 0
        out = " ".join(capsys.readouterr().out.split())
        assert ("-: MACs not counted where the forward raises on PyTorch's meta device (e.g. where it reads a value): "
                "reads_in_forward (") in out
        assert "NonexNone" not in out and "cannot take" not in out


def test_register_model_refuses_what_the_zoo_could_not_hold(registries):
    def build(num_classes=100, in_channels=3):
        return TinyNet(num_classes, in_channels)

    with pytest.raises(ValueError, match="built in"):
        mixdistill.register_model("resnet8", build)
    for bad in ("timm:x", "", "a b"):
        with pytest.raises(ValueError, match="use letters, digits"):
            mixdistill.register_model(bad, build)
    with pytest.raises(TypeError, match="not callable"):
        mixdistill.register_model("tiny", 3)
    with pytest.raises(ValueError, match="input_size is .num_classes, in_channels, image_size."):
        mixdistill.register_model("tiny", build, input_size=(10, 1))
    mixdistill.register_model("tiny", build)
    with pytest.raises(ValueError, match="registered already"):
        mixdistill.register_model("tiny", build)
    mixdistill.register_model("tiny", build, replace=True)
    with pytest.raises(ValueError, match="model 'resnet8' is built in"):
        mixdistill.unregister_model("resnet8")
    mixdistill.unregister_model("tiny")
    with pytest.raises(MixdistillError, match="unknown model .*'tiny'.*a plugin's\\? name its module in "
                                          "\\$MIXDISTILL_PLUGINS"):
        load_config(None, ["model.student=tiny"])


def test_register_augment_refuses_untyped_or_misfit_parameters(registries):
    def untyped(images, labels, *, generator, amount):
        return noise(images, labels, generator=generator)

    def wrong_default(images, labels, *, generator, p=3.0):  # p is a probability wherever it occurs
        return noise(images, labels, generator=generator)

    def no_generator(images, labels, amount: int = 1):
        return noise(images, labels, generator=None)

    def star(images, labels, *, generator, **kw):
        return noise(images, labels, generator=generator)

    for fn, message in ((untyped, "needs a type annotation"), (wrong_default, "default 3.0 of 'p'"),
                        (no_generator, "generator missing"), (star, "name every parameter")):
        with pytest.raises(TypeError, match=message):
            mixdistill.register_augment("bad", fn)
        assert "bad" not in AUGMENTATIONS
    with pytest.raises(ValueError, match="built in"):
        mixdistill.register_augment("mixup", noise)
    with pytest.raises(ValueError, match="not 'none'"):
        mixdistill.register_augment("none", noise)
    mixdistill.register_augment("noise", noise)
    with pytest.raises(ValueError, match="registered already"):
        mixdistill.register_augment("noise", noise)
    with pytest.raises(ValueError, match=r"augmentation 'nosie' is not registered \(registered: .*\bnoise\b"):
        mixdistill.unregister_augment("nosie")
    assert "noise" in AUGMENTATIONS

    def noise2(images, labels, *, generator, level: int = 2):
        return noise(images, labels, generator=generator)

    mixdistill.register_augment("noise", noise2, replace=True)
    assert resolve_augment_params("noise") == {"level": 2}

    def named(images, labels, *, generator, name: str = "foo"):
        return noise(images, labels, generator=generator)

    with pytest.raises(TypeError, match="parameter 'name' would be the augment section's own key"):
        mixdistill.register_augment("named", named)
    # this module's annotations are strings (from __future__ import annotations): one naming a local alias cannot
    # be resolved, and typing the parameter from its default instead would drop the range it declares
    Unit = Annotated[float, Field(ge=0, le=1)]  # noqa: F841 - named by the annotation below

    def local_alias(images, labels, *, generator, q: Unit = 0.5):
        return noise(images, labels, generator=generator)

    with pytest.raises(TypeError, match="annotation 'Unit' of parameter 'q' cannot be resolved"):
        mixdistill.register_augment("local_alias", local_alias)
    assert "named" not in AUGMENTATIONS and "local_alias" not in AUGMENTATIONS


def test_a_tuple_parameter_reaches_the_augmentation_as_a_tuple(registries):
    from mixdistill.augment import make_augment

    seen = []

    @mixdistill.register_augment("patches")
    def patches(images, labels, *, generator, patch: tuple[int, int] = (4, 4)):
        seen.append(patch)
        return noise(images, labels, generator=generator, sigma=0.0)

    assert resolve_augment_params("patches", patch=[6, 3]) == {"patch": [6, 3]}  # as a config holds it
    images, labels = torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long)
    for params in ({}, {"patch": [6, 3]}):
        make_augment("patches", **params)(images, labels, generator=torch.Generator())
    assert seen == [(4, 4), (6, 3)]


def test_an_augmentation_that_returns_no_record_is_named(registries, fmnist_root, tmp_path):
    """A plugin's augmentation returning the images alone failed as "'Tensor' object has no attribute 'images'"
    inside the method's loss."""
    @mixdistill.register_augment("images_back")
    def images_back(images, labels, *, generator, s: float = 0.1):
        return images

    with pytest.raises(ConfigError, match="augmentation images_back returned a Tensor, not a MixedBatch"):
        mixdistill.train(None, {"data.root": str(fmnist_root), "output_dir": str(tmp_path), "augment": "images_back",
                                "model.student": "cnn5_w8", "optim.epochs": 1, "optim.milestones": [],
                                "data.train_subset": 128, "train.progress": False, "train.tensorboard": False,
                                "train.device": "cpu"}, quiet=True)


@pytest.mark.parametrize("make, fragment", [
    (lambda x: MixedBatch(x, torch.tensor([[0], [1], [5], [3]]), torch.ones(4, 1)),  # an IndexError in the loss
     "sources outside the input batch's rows 0..3"),
    (lambda x: MixedBatch(x[:, :1].repeat(1, 3, 1, 1), torch.arange(4)[:, None], torch.ones(4, 1)),  # conv error
     "images of shape [4, 3, 8, 8] for an input batch of [4, 1, 8, 8]"),
    (lambda x: MixedBatch(x, torch.arange(4)[:, None].repeat(1, 2), torch.full((4, 2), 1.5)),  # trained silently
     "weights (torch.float32) that are negative or do not sum to 1 per image"),
    (lambda x: MixedBatch(x, torch.arange(4)[:, None], torch.ones(3, 1)), "weights of shape [3, 1]"),
    (lambda x: MixedBatch(x, torch.arange(4)[:, None].float(), torch.ones(4, 1)), "dtype torch.float32"),
    (lambda x: MixedBatch(x[:2], torch.arange(4)[:, None], torch.ones(4, 1)), "sources of shape [4, 1]"),
])
def test_a_records_mistakes_are_named_on_the_first_batch(make, fragment):
    from mixdistill.distill.base import check_mixed_batch

    images = torch.rand(4, 1, 8, 8)
    with pytest.raises(ConfigError, match=re.escape("augmentation mine returned ") + ".*" + re.escape(fragment)):
        check_mixed_batch(make(images), images, "mine")
    rows = torch.tensor([[2, 0], [1, 3]])  # fewer rows than the input (CutMixPick keeps a subset), two sources
    check_mixed_batch(MixedBatch(images[:2], rows, torch.tensor([[0.3, 0.7], [1.0, 0.0]])), images, "mine")
    third = torch.tensor([[1 / 3, 1 - 1 / 3]] * 2, dtype=torch.bfloat16)  # sums to 1 in bf16's 3 digits, not in 4
    check_mixed_batch(MixedBatch(images[:2], rows, third), images, "mine")


@pytest.mark.parametrize("make, fragment", [
    (lambda z, loss: None, "a NoneType, not a StepOutput"),
    (lambda z, loss: {"logits": z, "losses": {"ce": loss}}, "a dict, not a StepOutput"),
    (lambda z, loss: step_output(z, {}, None), "no named loss terms"),
    (lambda z, loss: step_output(z, {"ce": loss * torch.ones(4)}, None), "the loss term 'ce' as Tensor of shape [4]"),
    (lambda z, loss: step_output(z, {"ce": 1.0}, None), "the loss term 'ce' as float"),
    (lambda z, loss: step_output(z, {"ce": loss.detach()}, None), "loss terms of which none depends on a trained"),
    (lambda z, loss: step_output(z[:3], {"ce": loss}, None), "logits of shape [3, 10] for 4 scored labels"),
])
def test_a_methods_mistakes_are_named_on_the_first_step(make, fragment):
    from mixdistill.distill.base import check_step_output

    z = torch.randn(4, 10, requires_grad=True)
    labels = torch.zeros(4, dtype=torch.long)
    with pytest.raises(ConfigError, match=re.escape("method mine: forward_train returned ") + re.escape(fragment)):
        check_step_output(make(z, z.sum()), labels, "mine")
    check_step_output(step_output(z, {"ce": z.sum(), "zero": torch.zeros(())}, labels), labels, "mine")


def test_a_plugins_mistakes_stop_training_in_one_line(registries, fmnist_root, tmp_path, capsys):
    """Through the trainer: a method returning a vector loss and an augmentation whose sources leave the batch
    ended in tracebacks from the trainer's and the losses' own code."""
    @mixdistill.register_method("vector_ce")
    class VectorCE(CE):
        def forward_train(self, images, labels, info):
            out = super().forward_train(images, labels, info)
            return out._replace(losses={"ce": out.losses["ce"] * torch.ones(2)})

    @mixdistill.register_augment("off_by_one")
    def off_by_one(images, labels, *, generator, s: float = 0.1):
        rows = torch.arange(1, images.shape[0] + 1)[:, None]
        return MixedBatch(images, rows, torch.ones(rows.shape))

    common = {"data.root": str(fmnist_root), "output_dir": str(tmp_path), "model.student": "cnn5_w8",
              "optim.epochs": 1, "optim.milestones": [], "data.train_subset": 128, "train.progress": False,
              "train.tensorboard": False, "train.device": "cpu"}
    with pytest.raises(ConfigError, match=r"method vector_ce: forward_train returned the loss term 'ce'"):
        mixdistill.train(None, {**common, "method": "vector_ce", "name": "m"}, quiet=True)
    with pytest.raises(ConfigError, match=r"augmentation off_by_one returned sources outside the input batch"):
        mixdistill.train(None, {**common, "augment": "off_by_one", "name": "a"}, quiet=True)


# ------------------------------------------------------------------------------------------- plugins

PLUGIN = textwrap.dedent('''
    import torch
    import mixdistill
    from mixdistill.distill import Distiller, step_output
    from mixdistill.losses import mixed_cross_entropy


    @mixdistill.register_augment("plugin_noise")
    def plugin_noise(images, labels, *, generator, sigma: float = 0.1):
        return mixdistill.augment.identity(images, labels, generator=generator)


    @mixdistill.register_method("plugin_ce")
    class PluginCE(Distiller):
        needs_teacher = False

        def forward_train(self, images, labels, info):
            batch = self.mix(images, labels, info)
            logits = self.student(batch.images)
            return step_output(logits, {"ce": mixed_cross_entropy(logits, labels, batch)}, labels, batch)


    @mixdistill.register_model("plugin_net", input_size=(10, 1, 28))
    def plugin_net(num_classes=100, in_channels=3):
        return mixdistill.create_model("cnn5_w8", num_classes, in_channels)
''')


def test_plugins_named_in_the_environment_reach_the_command_line(tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('plugin bug')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(SRC)]),
           "MIXDISTILL_PLUGINS": "my_plugin", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mixdistill", "train", "--print-config", "-",
           "method=plugin_ce", "augment=plugin_noise", "augment.sigma=0.5", "model.student=cnn5_w8"]
    (tmp_path / "c.yaml").write_text("name: p\n")
    cmd[cmd.index("-")] = str(tmp_path / "c.yaml")
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "name: plugin_ce" in done.stdout and "name: plugin_noise" in done.stdout and "sigma: 0.5" in done.stdout
    # the model API alone loads the plugins too (create_model said "a plugin's? name its module in ..." of one named)
    api = subprocess.run([sys.executable, "-c", "import mixdistill; print(mixdistill.create_model('plugin_net', 10, "
                          "1).num_classes, 'plugin_net' in mixdistill.list_models())"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert api.returncode == 0 and api.stdout.split() == ["10", "True"], api.stderr
    broken = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**env, "MIXDISTILL_PLUGINS": "my_plugin, broken_plugin"})
    assert broken.returncode == 2 and broken.stderr.splitlines() == [
        "mixdistill: error: plugin broken_plugin (from $MIXDISTILL_PLUGINS) failed to import: RuntimeError: plugin bug"]
    missing = subprocess.run([sys.executable, "-m", "mixdistill", "methods"], capture_output=True, text=True,
                             timeout=300, env={**env, "MIXDISTILL_PLUGINS": "my_plugin_typo"})
    assert missing.returncode == 2 and missing.stderr.splitlines() == [
        "mixdistill: error: plugin my_plugin_typo (from $MIXDISTILL_PLUGINS) failed to import: ModuleNotFoundError: "
        "No module named 'my_plugin_typo'"] and missing.stdout == ""


def test_entry_point_plugins_are_loaded(monkeypatch):
    loaded = []

    class Point:
        name, value = "mine", "my_package.plugin"

        def load(self):
            loaded.append(self.value)

    def entry_points(group):
        return [Point()] if group == "mixdistill.plugins" else []

    monkeypatch.setattr("importlib.metadata.entry_points", entry_points)
    monkeypatch.delenv("MIXDISTILL_PLUGINS", raising=False)
    assert load_plugins() == ["my_package.plugin"] and loaded == ["my_package.plugin"]

    def failing(self):
        raise ImportError("no module named my_package")

    monkeypatch.setattr(Point, "load", failing)
    with pytest.raises(MixdistillError, match="plugin my_package.plugin .*mixdistill.plugins.*no module named"):
        load_plugins()


# ------------------------------------------------------------------------------------------ import cost

def test_import_mixdistill_does_not_import_torch():
    code = ("import sys, mixdistill; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert {'train', 'evaluate', 'open_run', 'register_method', 'register_augment'} <= set(dir(mixdistill))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr


def test_a_yaml_string_given_to_the_python_api_is_named_as_a_string():
    from mixdistill.config import resolve_config
    from mixdistill.errors import ConfigError

    with pytest.raises(ConfigError, match=r"optim.milestones: Input should be a valid list \(the Python API takes "
                                          r"Python values.*optim.milestones='\[1,2\]' is a string\)"):
        resolve_config(None, {"optim.milestones": "[1,2]"})
    assert resolve_config(None, {"optim.milestones": [1, 2]}).optim.milestones == [1, 2]


def test_a_summary_names_the_teacher_only_where_the_method_learnt_from_one(fmnist_root, tmp_path):
    """A CE baseline given its pair's teacher path (as the studies give every student of a pair) recorded that
    teacher in its summary, and `results` listed it, though the run never loaded it."""
    summary = mixdistill.train(None, {"data.root": str(fmnist_root), "output_dir": str(tmp_path), "method": "ce",
                                      "model.student": "cnn5_w8", "model.teacher_checkpoint": "no/such/teacher.pt",
                                      "optim.epochs": 1, "optim.milestones": [], "data.train_subset": 128,
                                      "train.progress": False, "train.tensorboard": False, "train.device": "cpu"},
                               quiet=True)
    assert summary["teacher"] is None and summary["teacher_acc"] is None
