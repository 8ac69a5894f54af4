"""The command line: help, tables, errors as one line with a non-zero exit, train → eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mixdistill.cli import main


@pytest.mark.parametrize("command", ["train", "eval", "results", "analyze", "models", "methods", "augments",
                                     "teachers", "demo", "study", "bench"])
def test_every_command_has_help(command, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one option per line
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage: mixdistill " + command in out
    # a default is said once, and "(default: None)" never (the help says what unset means)
    assert "(default: None)" not in out and "(default: False)" not in out and "(default: [])" not in out
    assert "%%" not in out  # a description is not %-formatted, a help is
    for line in out.splitlines():
        assert line.count("default:") <= 1, line


def test_help_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    for argv, expected in ((["eval", "--help"], "--data DATA           dataset name (default: the one the checkpoint "
                                                "was trained on), or a path"),
                           (["teachers", "--help"], "network timeout in seconds (default: 30)\n"),
                           (["analyze", "--help"], "(CUDA when available, as train), cpu, cuda or cuda:N "
                                                   "(default: auto)\n"),
                           (["demo", "--help"], "student seeds (CE and KD each) (default: 3)\n"),
                           (["study", "--help"], "exit status: 0 every run finished and the report is written; 1 some "
                                                 "runs did not finish")):
        with pytest.raises(SystemExit):
            main(argv)
        assert expected in capsys.readouterr().out, argv


def test_analyze_defaults_to_device_auto_like_train():
    from mixdistill.analysis.command import analyze
    from mixdistill.cli import build_parser
    from mixdistill.config import RunConfig

    args = build_parser().parse_args(["analyze", "runs/x"])
    assert args.device == "auto" == RunConfig().train.device
    assert analyze.__kwdefaults__["device"] == "auto"


def test_train_help_lists_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "optim.lr=0.05" in out and "data.batch_size=64" in out
    assert "see README" not in out
    assert ("method.<param>=...  (the chosen method's parameters: `mixdistill methods` lists them with their "
            "defaults)") in out
    assert ("augment.<param>=...  (the chosen augmentation's parameters: `mixdistill augments` lists them with "
            "their defaults)") in out
    assert "output_dir='runs'  (the run lives in output_dir/name (relative: from the current directory, not the " \
           "config file's))" in out


def _table_rows(out: str) -> dict[str, str]:
    """A rich table drawn with a line between rows: each row's text (its cells' lines joined) by its first cell."""
    rows, block = {}, []
    for line in out.splitlines():
        if line.startswith(("├", "└")) and block:
            rows[block[0].split("│")[1].strip()] = "\n".join(block)
            block = []
        elif line.startswith("│"):
            block.append(line)
    return rows


def test_methods_table(capsys, monkeypatch):
    from mixdistill.methods import METHODS

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    assert "methods (method=NAME method.PARAM=VALUE)" in out
    rows = _table_rows(out)
    assert set(rows) == set(METHODS)
    for name, cls in METHODS.items():
        row = rows[name]
        cells = [c.strip() for c in row.splitlines()[0].split("│")[1:-1]]
        kind = "online" if getattr(cls, "online", False) else "offline" if cls.needs_teacher else "offline, no teacher"
        assert cells[1] == kind and cells[3] == (cls.default_augment or "none"), cells
        if cls.__module__.startswith("mixdistill."):  # every built-in method names its paper (a plugin may not)
            assert cls.source and cells[4] == cls.source, cells
        for key in cls.Params.model_fields:
            assert f" {key}=" in row, (name, key)
    # the text of a few rows, as a user reads them
    assert "│ kd " in rows["kd"] and "temperature=4.0" in rows["kd"] and "ce_weight=0.1" in rows["kd"]
    assert "kd_weight=0.9" in rows["kd"] and '"Distilling the Knowledge in a Neural Network"' in rows["kd"]
    assert "offline, no teacher" in rows["ce"] and "│ -  " in rows["ce"]
    assert "cache_teacher=true" in rows["das_kd"] and "kl_reduction=mean (mean|batchmean)" in rows["das_kd"]
    assert "temperature=20.0" in rows["das_kd"] and "das2020:" in rows["das_kd"]
    assert "mixup_two_perm" in rows["mix_kd"] and "choi2023 (Mix-S)" in rows["mix_kd"]
    assert "teacher=mean (mean|ema)" in rows["cutnmix"] and "cut_n_mix" in rows["cutnmix"]
    assert "RECONSTRUCTED from its abstract" in rows["cutnmix"] and "│ online " in rows["cutnmix"]
    assert "peers=4" in rows["okddip"] and "views=shared (shared|per_peer)" in rows["pcl"]
    assert "eps=1e-07" in rows["mixstd"] and "│ flip " in rows["kdcl"]
    assert "a listed teacher-student pair's released values replace" in rows["dkd"]  # beta=8.0 read as DKD's only


@pytest.mark.parametrize("command, names, bad", [("methods", ["dkd", "kd"], "kdd"),
                                                 ("augments", ["mixup", "cutmix"], "cutmx")])
def test_reference_tables_show_only_the_names_given(capsys, monkeypatch, command, names, bad):
    """`mixdistill methods kd` was "unrecognized arguments: kd" (the whole table, 160 columns, was the one view)."""
    monkeypatch.setenv("COLUMNS", "400")
    assert main([command, *names]) == 0
    assert list(_table_rows(capsys.readouterr().out)) == names  # in the order given
    assert main([command, names[0], bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mixdistill: error: unknown {command.removesuffix('s').replace('augment', 'augmentation')} "
                          f"'{bad}'. Did you mean: {names[1]}") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("command", ["methods", "augments"])
def test_reference_tables_fold_at_160_columns_off_a_terminal(capsys, monkeypatch, command):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main([command]) == 0
    widths = [len(line) for line in capsys.readouterr().out.splitlines()]
    assert max(widths) == 160  # their prose would take more; rich alone would fold it at 80, mid-word
    assert sum(w == 160 for w in widths) > 10


def test_augments_table(capsys, monkeypatch):
    from mixdistill.augment.registry import AUGMENTATIONS, augment_params

    monkeypatch.setenv("COLUMNS", "400")
    assert main(["augments"]) == 0
    out = capsys.readouterr().out
    assert "augmentations (augment=NAME augment.PARAM=VALUE; augment=none: none)" in out
    rows = _table_rows(out)
    assert set(rows) == set(AUGMENTATIONS)
    for name in AUGMENTATIONS:
        for key in augment_params(name):
            assert (f" {key}=" if key not in ("mean", "std") else "mean, std: the dataset's") in rows[name], (name, key)
    assert "p=0.5" in rows["flip"] and "Horizontal flip of each sample with probability `p` (one coin per sample)." \
        in rows["flip"]
    assert "criterion=kl (kl|teacher_entropy|student_entropy)" in rows["cutmix_pick"]
    assert "CutMixPick (wang2022). Needs a method with a teacher." in rows["cutmix_pick"]
    assert "partner=derangement (derangement|permutation)" in rows["cutmix"]
    assert "box_rounding=exact (exact|released)" in rows["cutmix"] and "per_sample_boxes=false" in rows["cutmix"]
    assert "CutMix: paste a box of the partner image into each image." in rows["cutmix"]
    assert "padding=4" in rows["crop_flip"] and "flip=true" in rows["crop_flip"]
    assert "mean, std: the dataset's" in rows["autoaugment"] and "(required)" not in out
    assert "sampling=replacement (replacement|exact)" in rows["pmu"] and "│ -  " in rows["identity"]


def _row(out: str, name: str) -> list[str]:
    line = next(line for line in out.splitlines() if f"│ {name} " in line)
    return [c.strip() for c in line.split("│")[1:-1]]


def test_models_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "models (--macs adds multiply-accumulates per image)" in out and "MACs" not in out.split("\n", 1)[1]
    # each model at its own input: CIFAR-100 for the CRD benchmark, Fashion-MNIST for cnn5, ImageNet for torchvision
    for name, row in (("resnet32x4", ["100", "3x32x32", "7.43"]), ("resnet8x4", ["100", "3x32x32", "1.23"]),
                      ("wrn_40_2", ["100", "3x32x32", "2.26"]), ("cnn5_w8", ["10", "1x28x28", "0.03"]),
                      ("lenet5", ["10", "3x32x32", "0.06"]), ("tv_resnet18", ["1000", "3x224x224", "11.69"]),
                      ("tv_resnet50", ["1000", "3x224x224", "25.56"])):
        assert _row(out, name) == [name, *row]
    assert main(["models", "--macs", "--num-classes", "100", "--in-channels", "3"]) == 0
    out = capsys.readouterr().out
    assert "MACs / image (M)" in out
    assert _row(out, "resnet8x4") == ["resnet8x4", "100", "3x32x32", "1.23", "177.1"]
    assert _row(out, "tv_resnet18") == ["tv_resnet18", "100", "3x224x224", "11.23", "1813.6"]
    assert _row(out, "cnn5_w8")[2] == "3x28x28"
    assert main(["models", "--image-size", "0"]) == 2
    assert "--image-size must be at least 1" in capsys.readouterr().err
    # an input smaller than a network's layers take: its MACs are '-', said under the table (a torch traceback)
    assert main(["models", "--macs", "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "-: lenet5 cannot take a 8x8 input" in out and "wrn_40_2" in out


def _one_line_error(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mixdistill: error:") and fragment in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


@pytest.mark.checkout
def test_unknown_model_lists_close_names(capsys, tiny_run_overrides):
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "model.student=resnet8x5"],
                    "Did you mean: resnet8x4")


@pytest.mark.checkout
def test_bad_config_key_is_named(capsys):
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "optim.learning_rate=3"],
                    "optim.learning_rate: unknown key")


def test_missing_config_file(capsys):
    assert main(["train", "nope.yaml"]) == 2
    assert capsys.readouterr().err == "mixdistill: error: config file not found: nope.yaml\n"
    # overrides given without a config: the first is taken as the file, which the error now says
    _one_line_error(capsys, ["train", "method=ce", "optim.epochs=1"],
                    "config file not found: method=ce (the first argument is a YAML config file")


def test_eval_of_a_foreign_checkpoint_asks_for_all_it_lacks_and_a_wrong_arch_is_named(capsys, tmp_path, fmnist_root):
    from mixdistill.models import create_model

    weights = create_model("cnn5_w8", num_classes=10, in_channels=1).state_dict()
    torch.save({"model": weights}, tmp_path / "plain.pt")  # records neither its dataset nor its architecture
    _one_line_error(capsys, ["eval", str(tmp_path / "plain.pt")],
                    "does not record its dataset: pass --data NAME and --arch NAME")
    torch.save({"model": weights, "arch": "cnn5_w8", "num_classes": 10, "in_channels": 1}, tmp_path / "known.pt")
    for command in (["eval", str(tmp_path / "known.pt"), "--data"],  # analyze blamed the checkpoint's keys
                    ["analyze", str(tmp_path / "known.pt"), "--out", str(tmp_path / "a"), "--dataset"]):
        _one_line_error(capsys, [*command, "fashion_mnist", "--data-root", str(fmnist_root), "--arch", "resnet8"],
                        f"{tmp_path / 'known.pt'} holds a 'cnn5_w8', not a 'resnet8': leave the architecture out")
    # a foreign file's own name for its network (PyTorch's ImageNet example saves 'arch') is no model here: --arch wins
    torch.save({"state_dict": weights, "arch": "cnn5"}, tmp_path / "foreign.pth")
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "foreign.pth"), "--data", "fashion_mnist", "--data-root", str(fmnist_root),
                 "--arch", "cnn5_w8"]) == 0
    # scored in fp32, as its authors scored it, and said so (it ran in bf16 on a native-bf16 CPU, without a word)
    assert "fashion_mnist/test, fp32" in " ".join(capsys.readouterr().out.split())  # the title, wrapped
    import mixdistill

    assert mixdistill.evaluate(tmp_path / "foreign.pth", "fashion_mnist", root=fmnist_root, arch="cnn5_w8",
                               precision="bf16")["precision"] == "bf16"


def test_train_without_a_config_asks_for_the_config_alone(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required: config\n" in err  # overrides are optional


def test_train_options_that_are_config_keys_point_to_the_override(capsys):
    """``--output-dir X`` / ``--seed 3`` are how other tools take them; train takes key=value overrides."""
    with pytest.raises(SystemExit) as e:
        main(["train", "configs/fmnist_cpu_teacher.yaml", "--seed", "3"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unrecognized arguments: --seed 3 (train's settings are key=value overrides" in err


@pytest.mark.checkout
def test_missing_dataset_names_every_way(capsys, tmp_path, monkeypatch):
    import torch

    import mixdistill.data.datasets as datasets
    from mixdistill.models import create_model

    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    monkeypatch.setattr(datasets, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(datasets, "_download_into", lambda spec, folder: "")  # offline
    monkeypatch.delenv("MIXDISTILL_DATA", raising=False)
    _one_line_error(capsys, ["eval", "x.pt"], "checkpoint not found")
    (tmp_path / "empty").mkdir()
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", f"data.root={tmp_path / 'empty'}",
                             "data.download=false", f"output_dir={tmp_path}"], "MIXDISTILL_DATA")
    # each command names the way it takes a data directory, and only that one
    looked = f"$MIXDISTILL_DATA (not set), Debian package location {tmp_path / 'none'}, download cache {tmp_path / 'cache'}"
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", "data.download=false",
                             f"output_dir={tmp_path}"],
                    f"dataset 'fashion_mnist' not found (looked in: {looked}; download disabled). To fix, add the "
                    "override data.root=PATH naming the folder holding it (or set data.root in the config), or set "
                    "the environment variable MIXDISTILL_DATA to that folder, or on Debian/Ubuntu run `apt-get "
                    "install dataset-fashion-mnist`")
    assert not (tmp_path / "fmnist_teacher_cnn5_w32").exists(), "a run that failed to start left a directory"
    torch.save({"model": create_model("cnn5_w8", num_classes=10, in_channels=1).state_dict()}, tmp_path / "m.pt")
    for argv in (["eval", str(tmp_path / "m.pt"), "--arch", "cnn5_w8", "--data", "fashion_mnist", "--device", "cpu"],
                 ["analyze", str(tmp_path / "m.pt"), "--arch", "cnn5_w8", "--dataset", "fashion_mnist",
                  "--device", "cpu", "--out", str(tmp_path / "analysis")]):
        _one_line_error(capsys, argv, f"(looked in: {looked}). To fix, pass --data-root PATH naming the folder "
                                      "holding it, or set the environment variable MIXDISTILL_DATA to that folder")
    # outside a command (the library, a study's worker) every command's way is named
    with pytest.raises(datasets.DatasetNotFoundError) as err:
        datasets.load_dataset("fashion_mnist", "test", download=False)
    assert ("To fix, give the folder holding it as the data root (train: the override data.root=PATH or data.root in "
            "the config; eval, analyze, study and demo: --data-root PATH), or set the environment variable "
            "MIXDISTILL_DATA") in str(err.value)


@pytest.mark.checkout
def test_relative_teacher_path_is_read_from_the_current_directory(capsys, tmp_path, monkeypatch):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "fmnist_cpu.yaml"
    monkeypatch.chdir(tmp_path)
    _one_line_error(capsys, ["train", str(config), "--print-config"],
                    "teacher checkpoint 'runs/fmnist_teacher_cnn5_w32/last.pt' is neither a file nor a benchmark "
                    f"teacher name (a relative path is read from the current directory, {tmp_path}, as a relative "
                    "output_dir is written: run the student from where you ran the teacher, or give an absolute path)")
    _one_line_error(capsys, ["train", str(config), f"model.teacher_checkpoint={tmp_path / 'no.pt'}", "--print-config"],
                    f"teacher checkpoint '{tmp_path / 'no.pt'}' is neither a file nor a benchmark teacher name: train "
                    "the teacher first (`mixdistill train configs/fmnist_cpu_teacher.yaml`)")
    # a misspelt benchmark teacher's name: the names close to it, and no word of relative paths
    _one_line_error(capsys, ["train", str(config.parent / "cifar100_crd.yaml"), "model.teacher_checkpoint=resnet99",
                             "--print-config"],
                    "'resnet99' is neither a file nor a benchmark teacher name (benchmark teachers close to it: "
                    "resnet56, resnet110): name a pretrained CIFAR-100 teacher")
    # the ImageNet config's teacher is torchvision's weights: it said to train the Fashion-MNIST teacher
    _one_line_error(capsys, ["train", str(config.parent / "imagenet_resnet34_resnet18.yaml"),
                             f"model.teacher_checkpoint={tmp_path / 'no.pt'}", "--print-config"],
                    "download torchvision's ImageNet weights of resnet34 (a state dict, which tv_resnet34 loads")
    # a teacher trained from this directory is found from it (a stand-in checkpoint: no training here)
    import torch

    from mixdistill.models import create_model

    (tmp_path / "runs" / "fmnist_teacher_cnn5_w32").mkdir(parents=True)
    torch.save({"model": create_model("cnn5_w32", num_classes=10, in_channels=1).state_dict(), "arch": "cnn5_w32"},
               tmp_path / "runs" / "fmnist_teacher_cnn5_w32" / "last.pt")
    assert main(["train", str(config), "--print-config"]) == 0
    assert "teacher_checkpoint: runs/fmnist_teacher_cnn5_w32/last.pt" in capsys.readouterr().out


def test_demo_with_one_seed_prints_no_spread(capsys, monkeypatch, tmp_path):
    import mixdistill.demo as demo

    def fake_grid(runs, output_dir, **kw):  # the finished runs' summaries, no training
        kw["log"]("[stage 0] 1/3 finished teacher")
        acc = {"teacher": 90.0, "ce": 84.0, "kd": 85.5}
        return {r.key: {"summary": {"last_acc": acc[r.key.split("/")[0]] + r.labels.get("seed", 0),
                                    "train_images": 3000}} for r in runs}

    monkeypatch.setattr(demo, "run_grid", fake_grid)
    monkeypatch.setenv("COLUMNS", "200")
    assert demo.run_demo(output_dir=str(tmp_path), seeds=1) == 0
    out = capsys.readouterr().out
    assert "[stage 0] 1/3 finished teacher" in out, "the grid's progress line lost its stage"
    assert "±" not in out and "accuracy" in out and "mean ± std" not in out
    assert _row(out, "student cnn5_w8 (KD)")[2:] == ["85.50", "85.50"]
    assert demo.run_demo(output_dir=str(tmp_path), seeds=2) == 0
    out = capsys.readouterr().out
    assert "mean ± std" in out and _row(out, "student cnn5_w8 (KD)")[2:] == ["85.50 86.50", "86.00 ± 0.71"]


def test_a_demo_asking_more_images_than_its_data_root_holds_stops_before_training(fmnist_root, capsys, tmp_path):
    """Its students' 3,000-image subset of an 800-image root stopped the demo after the teacher had trained."""
    assert main(["demo", "--seeds", "1", "--output-dir", str(tmp_path / "demo"), "--data-root", str(fmnist_root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mixdistill: error: run ce/seed0: data.train_subset=3000 exceeds the 800 images of fashion_mnist"]
    assert not list(tmp_path.rglob("*.pt"))


@pytest.mark.slow
def test_demo_whose_teacher_diverges_is_one_line_naming_it(fmnist_root, capsys, monkeypatch, tmp_path):
    import mixdistill.demo as demo

    spec = demo.demo_config()
    monkeypatch.setattr(demo, "demo_config", lambda: {**spec, "teacher": {**spec["teacher"], "optim": {
        **spec["teacher"].get("optim", {}), "lr": 1e30}}})
    args = ["demo", "--quick", "--seeds", "1", "--output-dir", str(tmp_path), "--data-root", str(fmnist_root)]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixdistill: 2 of 3 demo runs did not finish: teacher "
                                               "(diverged: non-finite loss at step"), err
    assert err[0].endswith("; kd/seed0 (not run: its teacher's run teacher did not finish)")  # CE needs no teacher


@pytest.mark.checkout
def test_train_that_diverges_is_one_line_and_exit_1_not_bad_inputs_2(tiny_run_overrides, capsys):
    """A diverged run is a result (a study's exits 1 too); it exited 2, as a misspelt key does."""
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=nan", "optim.lr=1e30",
                 "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixdistill: non-finite loss at step"), err


@pytest.mark.checkout
def test_train_then_eval_reports_the_same_accuracy(capsys, tiny_run_overrides):
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=cli", "optim.epochs=1",
                 "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "results" in out
    run_dir = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/cli"
    summary = json.loads(open(run_dir + "/summary.json").read())
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    threads = torch.get_num_threads()
    assert main(["eval", run_dir + "/last.pt", "--data-root", data_root, "--device", "cpu", "--threads", "1"]) == 0
    assert torch.get_num_threads() == threads  # set for the evaluation only
    out = capsys.readouterr().out
    assert f"{summary['last_acc']:.2f}" in out and f"{summary['last_top5']:.2f}" in out
    assert "note:" not in out  # the run evaluated on the whole split too
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=cli_subset", "optim.epochs=1",
                 "data.test_subset=50", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", run_dir + "_subset", "--data-root", data_root, "--device", "cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: the whole test split; the run itself evaluated on data.test_subset = 50 images" in out
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=cli_train_subset",
                 "optim.epochs=1", "data.train_subset=100", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", run_dir + "_train_subset", "--split", "train", "--data-root", data_root,
                 "--device", "cpu"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: the whole train split; the run trained on data.train_subset = 100 of its images" in out


def test_eval_of_another_datasets_images_names_the_mismatch(capsys, tiny_run_overrides, tmp_path):
    """A network recording 3 input channels on 1-channel images: what does not fit, not a weight shape mismatch."""
    from mixdistill.files import save_torch
    from mixdistill.models import create_model

    state = {"model": create_model("cnn5_w8", 10, 3).state_dict(), "arch": "cnn5_w8", "num_classes": 10,
             "in_channels": 3}
    ckpt = save_torch(state, tmp_path / "rgb.pt")
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    _one_line_error(capsys, ["eval", str(ckpt), "--data", "fashion_mnist", "--data-root", data_root],
                    "fashion_mnist (test) has 1-channel images but the model takes 3 channels")


def test_a_run_of_a_plugin_method_not_loaded_here_says_so(capsys, tiny_run_overrides):
    """eval and analyze of a run whose config names a method no plugin registered here: the reason, not 'does not
    record its dataset'; --data gets past it."""
    import torch

    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=plug", "optim.epochs=1",
                 "--quiet"]) == 0
    run_dir = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/plug"
    state = torch.load(run_dir + "/last.pt", weights_only=False)
    state["config"]["method"] = {"name": "label_smoothing", "smoothing": 0.1}
    torch.save(state, run_dir + "/last.pt")
    capsys.readouterr()
    why = ("its saved config does not validate here (unknown method 'label_smoothing': a plugin's? name its module "
           "in $MIXDISTILL_PLUGINS), so its dataset is not known: pass ")
    _one_line_error(capsys, ["eval", run_dir], why + "--data")
    _one_line_error(capsys, ["analyze", run_dir, "--out", run_dir + "/a"], why + "--dataset NAME")
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    assert main(["eval", run_dir, "--data", "fashion_mnist", "--data-root", data_root, "--device", "cpu"]) == 0
    # --output (an online run's outputs by name) said "a checkpoint without its run's config"
    _one_line_error(capsys, ["eval", run_dir, "--output", "all", "--data", "fashion_mnist", "--data-root", data_root],
                    "its saved config does not validate here (unknown method 'label_smoothing': a plugin's? name its "
                    "module in $MIXDISTILL_PLUGINS)")
    # results lists it as its config.yaml reads, and says why; training it again names the plugin route too
    config = Path(run_dir) / "config.yaml"
    config.write_text(config.read_text().replace("name: ce\n", "name: label_smoothing\n", 1))
    assert main(["results", run_dir]) == 0
    assert ("(unknown method 'label_smoothing': a plugin's? name its module in $MIXDISTILL_PLUGINS)"
            in " ".join(capsys.readouterr().out.split()))
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=plug",
                             "method=label_smoothing", "--resume"],
                    "(a plugin's? name its module in $MIXDISTILL_PLUGINS) Valid names: ")


@pytest.mark.parametrize("columns", [None, "60"])
def test_results_table_never_cuts_a_run_name(capsys, monkeypatch, columns):
    from mixdistill.cli import _print_summary_table

    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)  # a width asked for: rich folds to it
    name = "wang2022_kd_view_cutmixpick_resnet32x4_resnet8x4_seed4"
    _print_summary_table([{"name": name, "method": "kd_view", "student": "resnet8x4", "seed": 4, "last_acc": 75.5,
                           "best_acc": 76.0, "teacher_acc": 79.4, "train_time_s": 3600.0}])
    out = capsys.readouterr().out  # not a terminal
    rows = [line for line in out.splitlines() if line.startswith("│")]
    run_column = "".join(line.split("│")[1].strip() for line in rows)
    assert "…" not in out and run_column == name
    if columns is None:  # at the table's own width: one line a run, for grep and sort
        assert len(rows) == 1 and rows[0].split("│")[1].strip() == name and "3600" in rows[0]
    else:
        assert len(rows) > 1 and max(len(line) for line in out.splitlines()) <= 60


@pytest.mark.checkout
def test_console_script_exit_code():
    proc = subprocess.run([sys.executable, "-m", "mixdistill", "train", "configs/fmnist_cpu.yaml", "method=nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown method 'nope'" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_demo_quick(tmp_path, fmnist_root, capsys):
    assert main(["demo", "--quick", "--seeds", "2", "--output-dir", str(tmp_path / "demo"),
                 "--data-root", str(fmnist_root)]) == 0
    out = capsys.readouterr().out
    assert "teacher cnn5_w16" in out and "(CE)" in out and "(KD)" in out
    verdict = next(line for line in out.splitlines() if "beat" in line)  # one line, however long
    assert verdict.startswith(("KD beats CE", "KD did NOT beat CE")) and verdict.endswith(" of 2 seed(s).")
    assert f"mixdistill results {tmp_path / 'demo'}\n" in out
    # a second run reuses every finished run instead of training again
    assert main(["demo", "--quick", "--seeds", "2", "--output-dir", str(tmp_path / "demo"),
                 "--data-root", str(fmnist_root)]) == 0
    assert capsys.readouterr().out.count("mixdistill demo: teacher cnn5_w16") == 1
    # a folder in use: the lock's one line and nothing on standard output
    from mixdistill.files import hold_lock
    from mixdistill.studies.grid import GRID_LOCK

    with hold_lock(tmp_path / "demo" / GRID_LOCK, "a test holding the folder"):
        assert main(["demo", "--quick", "--seeds", "2", "--output-dir", str(tmp_path / "demo"),
                     "--data-root", str(fmnist_root)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "is in use by" in captured.err


@pytest.mark.checkout
def test_the_readme_config_table_names_every_config_key():
    from pathlib import Path

    from mixdistill.config import config_keys

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rows = {}
    for line in readme.split("| section | keys (defaults) |", 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        section, keys = line.split("|")[1:3]
        rows[section.strip().strip("`")] = keys
    missing = [k for k in config_keys() if f"`{k.rsplit('.', 1)[-1]}`" not in rows["top level" if "." not in k
                                                                                   else k.split(".")[0]]]
    assert not missing, f"README's config table leaves out {missing}"


def test_prose_after_a_table_is_one_line_in_a_log(capsys, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    assert main(["models"]) == 0
    footer = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Also accepted")]
    assert len(footer) == 1 and footer[0].endswith("unless model.pretrained=true.")


@pytest.mark.checkout
def test_mixdistills_own_warnings_are_one_line(monkeypatch, capsys):
    """A warning of mixdistill's (here: bf16 asked for on a CPU that emulates it) prints as one line, without the
    source file and line Python's default adds; the command goes on."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    assert main(["train", "configs/fmnist_cpu_teacher.yaml", "train.precision=bf16", "train.device=cpu",
                 "--print-config"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mixdistill: warning: train.precision=bf16 on a cpu without native "
                                               "bf16: it is emulated"), err


def test_eval_on_other_data_uses_the_networks_own_input(capsys, tiny_run_overrides, tmp_path):
    """eval --data OTHER normalised with OTHER's statistics: the run's own test images written as an image folder
    scored other numbers than the run itself (analyze used the run's); nor were image size and classes checked."""
    import numpy as np
    from PIL import Image

    import mixdistill
    from mixdistill.data import load_dataset
    from mixdistill.errors import DataError

    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=r", "optim.epochs=1",
                 "--quiet"]) == 0
    run_dir = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/r"
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    test = load_dataset("fashion_mnist", "test", root=data_root)

    def folder(name, classes=10, size=28):
        for split in ("train", "test"):
            for i, (image, label) in enumerate(zip(test.images, test.labels)):
                if int(label) < classes and (split == "test" or i < 40):
                    path = tmp_path / name / split / f"c{int(label)}" / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.asarray(image[0])).resize((size, size)).save(path)
        return tmp_path / name

    own = mixdistill.evaluate(run_dir, root=data_root, device="cpu")
    other = mixdistill.evaluate(run_dir, "imagefolder", root=folder("same"), device="cpu")
    assert other["images"] == own["images"] == 200 and other["acc"] == own["acc"]
    assert other["loss"] == pytest.approx(own["loss"], rel=1e-5)
    np.save(tmp_path / "pair_data.npy", test.images[:, 0].numpy())  # a CIFAR-10.1 style pair, as analyze takes
    np.save(tmp_path / "pair_labels.npy", test.labels.numpy())
    pair = mixdistill.evaluate(run_dir, str(tmp_path / "pair_data.npy"), device="cpu")
    assert pair["images"] == 200 and pair["acc"] == own["acc"] and pair["loss"] == pytest.approx(own["loss"], rel=1e-5)
    with pytest.raises(DataError, match=r"imagefolder \(test\) has 3 classes but the network 10"):
        mixdistill.evaluate(run_dir, "imagefolder", root=folder("three", classes=3), device="cpu")
    with pytest.raises(DataError, match=r"three \(image folder, test\) has 3 classes but the network 10"):
        mixdistill.evaluate(run_dir, str(tmp_path / "three"), device="cpu")  # the same folder as a path
    capsys.readouterr()  # analyze makes the same checks (one function): it scored 10 classes on 3 classes' labels
    _one_line_error(capsys, ["analyze", run_dir, "--data", str(tmp_path / "three"), "--out", str(tmp_path / "a")],
                    "three (image folder, test) has 3 classes but the network 10")
    with pytest.raises(DataError, match="has 32x32 images but the model was trained on 28x28"):
        mixdistill.evaluate(run_dir, "imagefolder", root=folder("big", size=32), device="cpu")


def test_a_teacher_of_other_classes_is_named_as_the_command_line_sees_it(capsys, tiny_run_overrides, tmp_path):
    """It said '... create the model with num_classes=10': advice for the Python API, not for a KD run."""
    import numpy as np
    from PIL import Image

    assert main(["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=t", "optim.epochs=1",
                 "--quiet"]) == 0
    teacher = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("output_dir=")) + "/t/last.pt"
    for split in ("train", "test"):
        for c in ("a", "b", "c"):
            path = tmp_path / "three" / split / c / "0.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    capsys.readouterr()
    _one_line_error(capsys, ["train", "configs/fmnist_cpu_teacher.yaml", *tiny_run_overrides, "name=s", "method=kd",
                             f"model.teacher_checkpoint={teacher}", "data.dataset=imagefolder",
                             f"data.root={tmp_path / 'three'}", "data.batch_size=1"],
                    f"the teacher {teacher} has 10 classes but imagefolder here 3: a teacher is trained on its "
                    "student's data")


def test_an_image_folder_run_records_its_class_names_and_eval_checks_them(tmp_path, capsys):
    """eval on a folder whose classes were renamed scored the labels by position without a word."""
    import numpy as np
    from PIL import Image

    import mixdistill
    from mixdistill.errors import DataError

    def folder(name, classes):
        for split in ("train", "test"):
            for c in classes:
                for i in range(2):
                    path = tmp_path / name / split / c / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(path)
        return tmp_path / name

    summary = mixdistill.train(None, {"data.dataset": "imagefolder", "data.root": str(folder("f", ("ant", "bee"))),
                                      "output_dir": str(tmp_path / "runs"), "model.student": "cnn5_w8",
                                      "data.batch_size": 2, "optim.epochs": 1, "optim.milestones": [],
                                      "train.device": "cpu", "train.progress": False, "train.tensorboard": False},
                               quiet=True)
    assert mixdistill.open_run(summary).state["class_names"] == ["ant", "bee"]
    assert mixdistill.evaluate(summary, device="cpu")["images"] == 4
    with pytest.raises(DataError, match=r"imagefolder \(test\): class 1 is 'wasp' where the network learnt 'bee'"):
        mixdistill.evaluate(summary, "imagefolder", root=folder("g", ("ant", "wasp")), device="cpu")
    with pytest.raises(DataError, match=r"g \(image folder, test\): class 1 is 'wasp' where the network learnt"):
        mixdistill.evaluate(summary, str(tmp_path / "g"), device="cpu")  # as a path, as analyze takes it
    with pytest.raises(DataError, match=r"test \(image folder\): class 1 is 'wasp' where the network learnt"):
        mixdistill.evaluate(summary, str(tmp_path / "g" / "test"), device="cpu")  # a folder of class folders
    # --resume on the same folder with a class renamed (the same count): named too
    for split in ("train", "test"):
        (tmp_path / "f" / split / "bee").rename(tmp_path / "f" / split / "wasp")
    Path(summary["run_dir"], "summary.json").unlink()  # as killed after its last checkpoint
    with pytest.raises(DataError, match="changed since it started: class 1 is 'wasp' where the network learnt 'bee'"):
        mixdistill.train(Path(summary["run_dir"]) / "config.yaml", resume=True, quiet=True)


def test_eval_of_an_unfinished_run_says_which_epoch_and_why(capsys, tiny_run_overrides, interrupt_at):
    """eval and analyze of a run killed or diverged midway scored its last.pt without a word about it."""
    from mixdistill.config import load_config
    from mixdistill.engine.trainer import train

    cfg = load_config("configs/fmnist_cpu_teacher.yaml", [*tiny_run_overrides, "name=cut", "optim.epochs=3"])
    with interrupt_at(2):
        train(cfg, quiet=True)
    data_root = next(o.split("=", 1)[1] for o in tiny_run_overrides if o.startswith("data.root="))
    capsys.readouterr()
    assert main(["eval", str(cfg.run_dir), "--data-root", data_root]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert ("note: the checkpoint is epoch 2 of 3: it was interrupted, or is still training: --resume continues it"
            in out)
    (cfg.run_dir / "diverged.json").write_text("{}")
    assert main(["eval", str(cfg.run_dir), "--data-root", data_root]) == 0
    assert "it diverged (diverged.json)" in " ".join(capsys.readouterr().out.split())
    assert main(["eval", str(cfg.run_dir / "best.pt"), "--data-root", data_root]) == 0
    assert "note: the checkpoint is epoch" not in capsys.readouterr().out  # best.pt is an epoch by choice
