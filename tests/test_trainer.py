"""End-to-end training on the IDX fixture: outputs, resume equivalence, teacher handling, bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mixdistill.config import load_config
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.trainer import Trainer, train
from mixdistill.errors import ConfigError, MixdistillError, NonFiniteLossError


def test_ce_run_writes_outputs_and_learns(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=ce", "train.tensorboard=true"])
    summary = train(cfg, quiet=True)
    run = cfg.run_dir
    assert (run / "last.pt").is_file() and (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3]
    assert {"train_loss", "train_ce", "test_acc", "lr", "images_per_s"} <= set(lines[0])
    assert list((run / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    assert summary["last_acc"] == lines[-1]["test_acc"]
    assert summary["best_acc"] == max(r["test_acc"] for r in lines)
    assert summary["last_acc"] > 30.0  # 10 classes: chance is 10%
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["arch"] == "cnn5_w8" and ckpt["epoch"] == 3 and set(ckpt["model"]) == set(
        __import__("mixdistill").create_model("cnn5_w8", num_classes=10, in_channels=1).state_dict())


def test_refuses_to_overwrite_a_finished_run(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=once", "optim.epochs=1"])
    train(cfg, quiet=True)
    before = (cfg.run_dir / "last.pt").read_bytes()
    with pytest.raises(MixdistillError, match="already holds a run"):
        train(cfg, quiet=True)
    assert (cfg.run_dir / "last.pt").read_bytes() == before
    # a finished run whose last.pt is gone: one message, with or without --resume (each sent the user to the other)
    (cfg.run_dir / "last.pt").unlink()
    summary = (cfg.run_dir / "summary.json").read_bytes()
    for resume in (False, True):
        with pytest.raises(MixdistillError, match="holds a finished run .summary.json. whose last.pt is gone, so there "
                                                  "is nothing to resume: choose another name="):
            train(cfg, resume=resume, quiet=True)
    assert (cfg.run_dir / "summary.json").read_bytes() == summary


def test_resume_is_bitwise_equal_to_uninterrupted(tiny_run_overrides, interrupt_at, precision):
    common = tiny_run_overrides + ["method=kd", f"train.precision={precision}"]
    teacher_cfg = load_config(None, tiny_run_overrides + ["name=teacher", "optim.epochs=1"])
    train(teacher_cfg, quiet=True)
    common += [f"model.teacher_checkpoint={teacher_cfg.run_dir / 'last.pt'}"]

    full = load_config(None, common + ["name=full"])
    train(full, quiet=True)

    killed = load_config(None, common + ["name=killed"])
    with interrupt_at(2):  # dies mid-run after epoch 2's checkpoint
        train(killed, quiet=True)
    assert load_checkpoint(killed.run_dir / "last.pt")["epoch"] == 2
    train(killed, resume=True, quiet=True)

    a = load_checkpoint(full.run_dir / "last.pt")
    b = load_checkpoint(killed.run_dir / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert json.loads((full.run_dir / "summary.json").read_text())["last_acc"] == json.loads(
        (killed.run_dir / "summary.json").read_text())["last_acc"]
    # metrics.jsonl of the resumed run holds each epoch once
    epochs = [json.loads(x)["epoch"] for x in (killed.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]


def _tensorboard_test_acc(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return [(e.step, round(e.value, 4)) for e in events.Scalars("test/acc")]


@pytest.mark.parametrize("dies_at_save", [1, 2], ids=["restarted", "resumed"])
def test_tensorboard_holds_each_epoch_once_after_a_kill_between_its_log_and_its_checkpoint(
        tiny_run_overrides, monkeypatch, dies_at_save):
    # the epoch's scalars are logged before its checkpoint is written: a run killed between the two logged an
    # epoch it re-runs, and (dies_at_save=1) a run killed before its first checkpoint is started again from scratch
    cfg = load_config(None, tiny_run_overrides + ["name=tb", "train.tensorboard=true"])
    save = Trainer._save_state

    def dies(self, epoch, state=None):
        if epoch == dies_at_save:
            raise KeyboardInterrupt
        return save(self, epoch, state)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "_save_state", dies)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, quiet=True)
    assert [step for step, _ in _tensorboard_test_acc(cfg.run_dir)] == list(range(1, dies_at_save + 1))
    train(cfg, resume=dies_at_save > 1, quiet=True)
    assert len(list((cfg.run_dir / "tensorboard").glob("events.out.tfevents.*"))) == 2
    logged = [(r["epoch"], round(r["test_acc"], 4))
              for r in map(json.loads, (cfg.run_dir / "metrics.jsonl").read_text().splitlines())]
    assert [step for step, _ in logged] == [1, 2, 3]
    assert _tensorboard_test_acc(cfg.run_dir) == logged


def test_resume_of_a_finished_run_returns_its_summary_and_writes_nothing(tiny_run_overrides, capsys):
    cfg = load_config(None, tiny_run_overrides + ["name=done", "optim.epochs=1", "train.tensorboard=true"])
    summary = train(cfg, quiet=True)
    before = {p.relative_to(cfg.run_dir): p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()}
    assert train(cfg, resume=True) == summary
    assert "finished all 1 epochs: nothing to resume" in capsys.readouterr().err
    after = {p.relative_to(cfg.run_dir): p.read_bytes() for p in cfg.run_dir.rglob("*") if p.is_file()}
    assert after == before  # no second TensorBoard file, config.yaml and metrics as they were
    longer = load_config(None, tiny_run_overrides + ["name=done", "optim.epochs=2", "train.tensorboard=true"])
    with pytest.raises(ConfigError, match="optim.epochs: 1 -> 2"):  # another config still says what differs
        train(longer, resume=True, quiet=True)


def test_resume_with_a_different_config_is_refused(tiny_run_overrides, interrupt_at):
    cfg = load_config(None, tiny_run_overrides + ["name=r", "optim.epochs=2"])
    with interrupt_at(1):
        train(cfg, quiet=True)
    other = load_config(None, tiny_run_overrides + ["name=r", "optim.epochs=2", "optim.lr=0.2"])
    with pytest.raises(ConfigError, match=r"resume=True in Python\): the config differs.*optim.lr"):
        train(other, resume=True, quiet=True)


def test_student_ema_is_evaluated_checkpointed_and_resumed_bitwise(tiny_run_overrides, interrupt_at):
    # fp32 (tiny_run_overrides pins it): a killed and resumed run ends with bitwise the same EMA weights
    common = tiny_run_overrides + ["train.ema_decay=0.9", "train.label_smoothing=0.1", "train.compile=false",
                                   "train.best_metric=test_acc_ema"]
    full = load_config(None, common + ["name=full"])
    summary = train(full, quiet=True)
    killed = load_config(None, common + ["name=killed"])
    with interrupt_at(2):
        train(killed, quiet=True)
    mid = load_checkpoint(killed.run_dir / "last.pt")
    assert mid["ema"]["n_averaged"].item() == mid["step"] > 0  # one update per optimiser step
    resumed = train(killed, resume=True, quiet=True)

    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(killed.run_dir / "last.pt")
    assert a["ema"]["n_averaged"].item() == a["step"] == 3 * mid["step"] // 2
    assert set(a["ema"]) == {"n_averaged", *(f"module.{k}" for k in a["model"])}
    for key in a["ema"]:
        assert torch.equal(a["ema"][key], b["ema"][key]), key
    assert any(not torch.equal(a["ema"][f"module.{k}"], v) for k, v in a["model"].items() if v.is_floating_point())
    lines = [json.loads(x) for x in (full.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all({"test_acc_ema", "test_loss_ema", "test_top5_ema", "test_acc"} <= set(r) for r in lines)
    assert summary["last_acc_ema"] == lines[-1]["test_acc_ema"] == resumed["last_acc_ema"]
    assert summary["best_checkpoint"]["metric"] == "test_acc_ema"
    best = load_checkpoint(full.run_dir / "best.pt")
    # chosen by the EMA's accuracy, best.pt's model is the EMA (eval, analyze and distillation read "model": they
    # scored the live student's weights, 19.50 where best.pt recorded the EMA's 22.00)
    assert best["weights"] == "ema" and best["model"].keys() == a["model"].keys()
    assert all(torch.equal(best["model"][k], best["ema"][f"module.{k}"]) for k in best["model"])
    from mixdistill.api import evaluate

    scored = evaluate(full.run_dir / "best.pt", precision="fp32", batch_size=200)
    assert scored["acc"] == pytest.approx(best["best"]["value"], abs=1e-9), (scored, best["best"])


def test_ema_and_label_smoothing_options_are_checked(tiny_run_overrides):
    with pytest.raises(ConfigError, match="ema_decay"):
        load_config(None, tiny_run_overrides + ["train.best_metric=test_acc_ema"])
    for bad in ("train.ema_decay=1.0", "train.ema_decay=0", "train.label_smoothing=1.0", "train.label_smoothing=-0.1"):
        with pytest.raises(ConfigError):
            load_config(None, tiny_run_overrides + [bad])
    cfg = load_config(None, tiny_run_overrides)
    assert cfg.train.ema_decay is None and cfg.train.label_smoothing == 0.0


def test_trainer_applies_label_smoothing_to_the_ce_terms(tiny_run_overrides, fmnist_root):
    import torch.nn.functional as F

    cfg = load_config(None, tiny_run_overrides + ["name=smooth", "train.label_smoothing=0.2", "train.compile=false",
                                                  "optim.epochs=1"])
    trainer = Trainer(cfg, quiet=True)
    try:
        images, labels, indices = next(iter(trainer.train_loader))
        out = trainer.step(images, labels, indices)  # the logits are the forward's, before the SGD step
        logits = out.logits.detach()
        assert out.losses["ce"].item() == pytest.approx(F.cross_entropy(logits, labels, label_smoothing=0.2).item(),
                                                        rel=1e-6)
        assert out.losses["ce"].item() != pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-3)
    finally:
        trainer.close()


def test_teacher_is_frozen_during_kd(tiny_run_overrides):
    teacher_cfg = load_config(None, tiny_run_overrides + ["name=t", "optim.epochs=1"])
    train(teacher_cfg, quiet=True)
    path = teacher_cfg.run_dir / "last.pt"
    cfg = load_config(None, tiny_run_overrides + ["name=s", "method=kd", f"model.teacher_checkpoint={path}",
                                                  "optim.epochs=1"])
    trainer = Trainer(cfg, quiet=True)
    before = {k: v.clone() for k, v in trainer.distiller.teacher.state_dict().items()}
    trainer.fit()
    assert not trainer.distiller.teacher.training
    for k, v in trainer.distiller.teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed (BN statistics or weights)"
    assert all(p.grad is None for p in trainer.distiller.teacher.parameters())


def test_teacher_architecture_mismatch_is_one_clear_error(tiny_run_overrides):
    teacher_cfg = load_config(None, tiny_run_overrides + ["name=t2", "optim.epochs=1"])
    train(teacher_cfg, quiet=True)
    cfg = load_config(None, tiny_run_overrides + ["name=s2", "method=kd", "model.teacher=cnn5_w32",
                                                  f"model.teacher_checkpoint={teacher_cfg.run_dir / 'last.pt'}"])
    with pytest.raises(ConfigError, match="holds a 'cnn5_w8'"):
        train(cfg, quiet=True)


def test_a_bare_teacher_state_dict_of_other_classes_says_so_as_a_recorded_one_does(tiny_run_overrides, tmp_path):
    """A RepDistiller-style {'model': state_dict} of CIFAR-100 was told to 'create the model with num_classes=100'."""
    from mixdistill.models import create_model

    torch.save({"model": create_model("cnn5_w16", num_classes=100, in_channels=1).state_dict()}, tmp_path / "t.pt")
    cfg = load_config(None, tiny_run_overrides + ["name=t100", "method=kd", "model.teacher=cnn5_w16",
                                                  f"model.teacher_checkpoint={tmp_path / 't.pt'}"])
    with pytest.raises(ConfigError, match="has 100 classes but fashion_mnist here 10: a teacher is trained on its "
                                          "student's data"):
        train(cfg, quiet=True)


def test_non_finite_loss_stops_with_step_and_term(tiny_run_overrides):
    cfg = load_config(None, tiny_run_overrides + ["name=nan", "optim.lr=1e30", "train.log_every=1"])
    with pytest.raises(NonFiniteLossError, match=r"step \d+ \(term: ce\)") as err:
        train(cfg, quiet=True)
    assert not (cfg.run_dir / "last.pt").exists()  # it blew up in epoch 1: the message must not promise one
    assert "No checkpoint was written yet" in str(err.value)


def test_fast_teacher_computes_the_loaded_teachers_logits(tiny_run_overrides, precision, tolerance):
    from mixdistill.engine.build import build_teacher
    from mixdistill.engine.fast import InferenceTeacher

    teacher_cfg = load_config(None, tiny_run_overrides + ["name=ft", "optim.epochs=1", "model.student=cnn5_w16"])
    train(teacher_cfg, quiet=True)
    path = teacher_cfg.run_dir / "last.pt"
    base = tiny_run_overrides + ["method=kd", f"model.teacher_checkpoint={path}", "optim.epochs=1",
                                 f"train.precision={precision}"]
    fast = Trainer(load_config(None, base + ["name=fast"]), quiet=True)  # train.fast_teacher=auto
    eager = Trainer(load_config(None, base + ["name=eager", "train.fast_teacher=false"]), quiet=True)
    assert isinstance(fast.distiller.teacher, InferenceTeacher) and eager.teacher_report is None
    assert fast.teacher_report.folded_pairs == 5 and fast.teacher_report.channels_last
    # a method that reads the folded teacher's features without saying so (a plugin's) is told what to declare
    assert not hasattr(fast.distiller.teacher, "forward_features")
    with pytest.raises(AttributeError, match="reads_teacher_features = True"):
        fast.distiller.teacher.forward_features
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.distiller.teacher.modules())
    x, _, _ = next(iter(fast.train_loader))
    with fast.runtime.autocast():
        folded, unfolded = fast.distiller.teacher_logits(x).float(), eager.distiller.teacher_logits(x).float()
    # logits are O(10): the tolerance is relative to their scale
    torch.testing.assert_close(folded, unfolded, rtol=tolerance["rel"], atol=10 * tolerance["rel"])
    reference = build_teacher(fast.cfg, 10, 1)
    with torch.no_grad():
        torch.testing.assert_close(eager.distiller.teacher_logits(x), reference(x))
    summary = fast.fit()
    assert math.isfinite(summary["last_test_loss"])
    # the same teacher accuracy up to ties rounded differently: at most 1 (fp32) / 3 (bf16) of 200 test images
    assert abs(summary["teacher_acc"] - eager.fit()["teacher_acc"]) <= (0.5 if precision == "fp32" else 1.5)


def test_fast_teacher_settings_are_checked(tiny_run_overrides):
    teacher_cfg = load_config(None, tiny_run_overrides + ["name=ft2", "optim.epochs=1"])
    train(teacher_cfg, quiet=True)
    path = teacher_cfg.run_dir / "last.pt"
    base = tiny_run_overrides + [f"model.teacher_checkpoint={path}", "optim.epochs=1"]
    crd = Trainer(load_config(None, base + ["name=crd", "method=crd", "method.nce_k=16"]), quiet=True)
    assert crd.teacher_report is None  # CRD reads teacher features: auto leaves the teacher alone
    with pytest.raises(ConfigError, match="reads the teacher's features"):
        Trainer(load_config(None, base + ["name=crd2", "method=crd", "train.fast_teacher=true"]), quiet=True)
    with pytest.raises(ConfigError, match="cuda_graphs"):
        Trainer(load_config(None, base + ["name=cg", "method=kd", "train.cuda_graphs=true"]), quiet=True)
    int8 = Trainer(load_config(None, base + ["name=int8", "method=kd", "train.int8_teacher=true"]), quiet=True)
    report = int8.teacher_report
    assert report.int8 and report.agreement["images"] > 0
    assert report.agreement["top1_agreement_pct"] >= 90.0  # measured on the training images it calibrated on
    assert math.isfinite(int8.fit()["last_test_loss"])


def test_start_log_says_what_the_config_does_not(tiny_run_overrides, capsys):
    """An lr from lr_overrides, the compile decision and a reconstruction's label are printed; a method defined with
    an augmentation refuses augment=none at validation, naming its default, and an unset augment gets it."""
    with pytest.raises(ConfigError, match="online_cutmix' trains on an augmented batch: set augment .* cutmix"):
        load_config(None, tiny_run_overrides + ["method=online_cutmix", "augment=none"])
    assert load_config(None, ["method=online_cutmix"]).augment.name == "cutmix"
    cfg = load_config(None, tiny_run_overrides + ["name=one_step", "method=online_cutmix", "optim.epochs=1",
                                                  "data.train_subset=128", "train.progress=false",
                                                  "model.student=cnn5_w8", "optim.lr_overrides={cnn5_w8: 0.02}"])
    train(cfg)
    err = capsys.readouterr().err
    assert "lr 0.02 for cnn5_w8 from optim.lr_overrides" in err and "compile: no (" in err
    assert ": online_cutmix augment=cutmix student=" in err  # the start line names the augmentation it trains with
    cfg = load_config(None, tiny_run_overrides + ["name=cnm", "method=cutnmix", "optim.epochs=1",
                                                  "data.train_subset=128", "train.progress=false"])
    summary = train(cfg)
    assert "RECONSTRUCTION of shen2022" in capsys.readouterr().err and "RECONSTRUCTION" in summary["notes"][0]


@pytest.mark.parametrize("method", ["okddip", "pcl"])
def test_online_branches_resume_bitwise(tiny_run_overrides, interrupt_at, method):
    """Branch peers (a shared trunk, the whole network as the checkpoint's model, PCL's averaged trunk): a killed
    and resumed run ends with bitwise the same state as one that was not interrupted."""
    common = tiny_run_overrides + [f"method={method}", "method.peers=3"]
    full = load_config(None, common + ["name=full"])
    train(full, quiet=True)
    killed = load_config(None, common + ["name=killed"])
    with interrupt_at(2):
        train(killed, quiet=True)
    train(killed, resume=True, quiet=True)
    a, b = load_checkpoint(full.run_dir / "last.pt"), load_checkpoint(killed.run_dir / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    extra_a, extra_b = a["distiller_extra"], b["distiller_extra"]
    assert "trunk" in extra_a and (method != "pcl" or "temporal_trunk" in extra_a)
    for part in extra_a:
        for key in extra_a[part]:
            assert torch.equal(extra_a[part][key], extra_b[part][key]), (part, key)
