import pytest

from mixdistill.config import describe_options, load_config, resolve_config
from mixdistill.errors import ConfigError, UnknownNameError


def test_overrides_and_method_params(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: x\nmethod: {name: kd, temperature: 2}\nmodel: {teacher_checkpoint: t.pt}\n")
    cfg = load_config(path, ["method.ce_weight=0.5", "optim.milestones=[5,8]", "optim.epochs=10"])
    params = cfg.method.params()
    assert (params.temperature, params.ce_weight, params.kd_weight) == (2.0, 0.5, 0.9)
    assert cfg.optim.milestones == [5, 8]


def test_switching_method_resets_the_files_params_and_keeps_the_command_lines(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("method: {name: kd, temperature: 2, ce_weight: 0.5}\nmodel: {teacher_checkpoint: t.pt}\n")
    switched = load_config(path, ["method=dkd"]).method
    assert switched.name == "dkd" and switched.model_extra["temperature"] == 4.0  # the file's 2 is reset
    for overrides in (["method.temperature=1", "method=kd"], ["method=kd", "method.temperature=1"]):
        method = load_config(path, overrides).method
        assert method.name == "kd" and method.model_extra["temperature"] == 1  # given beside the switch: kept
        assert method.model_extra["ce_weight"] == 0.1  # the file's 0.5 is reset to kd's default


def test_the_last_of_an_augmentations_switches_wins_a_name_or_a_whole_section():
    """``augment={}`` (the method's default) was applied after every named switch, wherever it was given:
    ``augment={} augment=mixup`` trained kd_view's cutmix, and hid a refused combination behind no augmentation."""
    base = ["model.teacher_checkpoint=t.pt"]
    assert load_config(None, base + ["method=kd_view", "augment={}", "augment=mixup"]).augment.name == "mixup"
    assert load_config(None, base + ["method=kd_view", "augment=mixup", "augment={}"]).augment.name == "cutmix"
    assert load_config(None, base + ["augment={name: mixup}", "augment=cutmix"]).augment.name == "cutmix"
    assert load_config(None, base + ["augment=cutmix", "augment={name: mixup, alpha: 0.4}"]).augment.name == "mixup"
    with pytest.raises(ConfigError, match="override method.temperature comes before method, which replaces"):
        load_config(None, base + ["method.temperature=1", "method={name: kd}"])  # a section drops a key before it
    with pytest.raises(ConfigError, match=r"override method=\{temperature: 2\} replaces the whole method section and "
                                          r"names no method: give method=\{name: NAME, temperature: ...\}, or set one "
                                          r"parameter with method.temperature=...$"):  # it said "method ce takes no"
        load_config(None, base + ["method=kd", "method={temperature: 2}"])
    from mixdistill.config import resolve_config

    with pytest.raises(ConfigError, match="override key 1: expected a dotted config key"):  # the API's, not text
        resolve_config(None, {"optim.epochs": 2, 1: 3})


@pytest.mark.parametrize("overrides, fragment", [
    (["data.batchsize=3"], "data.batchsize: unknown key"),
    (["optim.lr=abc"], "optim.lr"),
    (["method=kd", "model.teacher_checkpoint=a", "method.tempx=3"], "tempx"),
    (["method=kd"], "needs a teacher"),
    (["optim.milestones=[1,300]"], "milestones"),
    (["nonsense"], "key=value"),
    (["data.root=''"], "data.root: String should have at least 1 character"),  # it was the current directory
])
def test_bad_config_names_the_key(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, overrides)


@pytest.mark.parametrize("overrides, message", [
    (["data.bathc_size=3"], "data.bathc_size: unknown key (did you mean data.batch_size or data.eval_batch_size?)"),
    (["train.epochs=3"], "train.epochs: unknown key (did you mean optim.epochs?)"),  # the key lives elsewhere
    (["seeed=1"], "seeed: unknown key (did you mean seed?)"),
    (["method=kd", "model.teacher_checkpoint=a", "method.temprature=3"],
     "method.temprature: unknown key (did you mean method.temperature?)"),
    (["method=kd", "model.teacher_checkpoint=a", "method.zzz=3"],
     "method.zzz: unknown key; method kd takes temperature, ce_weight, kd_weight, logit_stand"),
    (["method=kd", "model.teacher_checkpoint=a", "method.ce_weight=0.5", "method.name=dml"],
     "method.ce_weight: unknown key; method dml takes peers, temperature "
     "(method=dml, unlike method.name=dml, starts the section afresh)"),
    # kd's kd_weight is close to dkd's ce_weight, but it was left by method.name=dkd: no "did you mean"
    (["method=kd", "model.teacher_checkpoint=a", "method.kd_weight=0.9", "method.name=dkd"],
     "method.kd_weight: unknown key; method dkd takes ce_weight, alpha, beta, temperature, warmup, "
     "mixed_target, logit_stand (method=dkd, unlike method.name=dkd, starts the section afresh)"),
    (["optim.zzz=1"], "optim.zzz: unknown key"),  # nothing close: no hint
])
def test_unknown_key_says_what_was_meant(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert str(e.value) == "invalid config: " + message


def test_unknown_method_suggests_close_names():
    with pytest.raises(UnknownNameError, match="Did you mean: kd"):
        load_config(None, ["method=kdd"])


def test_epoch_factor_scales_schedule():
    cfg = load_config(None, ["optim.epoch_factor=2"])
    assert cfg.optim.total_epochs == 480 and cfg.optim.scaled_milestones == [300, 360, 420]


@pytest.mark.checkout
def test_shipped_configs_validate():
    from pathlib import Path

    configs = sorted(Path(__file__).parent.parent.joinpath("configs").glob("*.yaml"))
    assert configs, "no shipped configs"
    for path in configs:
        load_config(path, ["model.teacher_checkpoint=t.pt"])


def test_help_lists_every_key_with_default():
    text = describe_options()
    for key in ("data.batch_size=64", "optim.lr=0.05", "optim.milestones=[150, 180, 210]", "train.precision='auto'"):
        assert key in text


def test_model_peers_decide_the_peer_count_the_config_records():
    cfg = load_config(None, ["method=dml", "model.peers=[cnn5_w8,cnn5_w8,cnn5_w16]"])
    assert cfg.method.params().peers == 3 and cfg.to_dict()["method"]["peers"] == 3
    cfg = load_config(None, ["method=dml", "method.peers=2", "model.peers=[cnn5_w8,cnn5_w16]"])
    assert cfg.to_dict()["method"]["peers"] == 2
    again = load_config(None, [f"{k}={v}" for k, v in (("method", "dml"), ("method.peers", 2),
                                                         ("model.peers", "[cnn5_w8,cnn5_w16]"))])
    assert again.to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="method.peers is 4 but model.peers names 2 models"):
        load_config(None, ["method=dml", "method.peers=4", "model.peers=[cnn5_w8,cnn5_w16]"])
    # one peer: a traceback of the method's own parameter check when the run was built
    with pytest.raises(ConfigError, match=r"model.peers names 1 model\(s\), method.peers: Input should be greater "
                                          "than or equal to 2"):
        load_config(None, ["method=dml", "model.peers=[cnn5_w8]"])


def test_the_first_peer_is_recorded_as_the_student_and_keys_its_lr_override():
    """model.student stayed at its default beside model.peers: the config recorded a network nobody trained, and
    optim.lr_overrides looked up that one's lr."""
    from mixdistill.config import stored_config
    from mixdistill.engine.build import base_lr
    from mixdistill.engine.run import config_difference

    cfg = load_config(None, ["method=dml", "model.student=resnet8x4", "model.peers=[cnn5_w16,cnn5_w8]",
                             "optim.lr_overrides={cnn5_w16: 0.02}"])
    assert cfg.model.student == "cnn5_w16" and base_lr(cfg) == 0.02
    older = cfg.to_dict()
    older["model"]["student"] = "resnet8x4"  # as a run of an earlier mixdistill recorded it: it trained at 0.05
    assert base_lr(stored_config(older)) == 0.05
    same = load_config(None, ["method=dml", "model.peers=[cnn5_w16,cnn5_w8]"])  # no override: the same lr, same run
    older = same.to_dict()
    older["model"]["student"] = "resnet8x4"
    assert config_difference(stored_config(older).to_dict(), same.to_dict()) == []
    assert load_config(None, ["method=dml", "model.student=cnn5_w8"]).model.student == "cnn5_w8"  # no peers named
    # where the two lrs differ the older run trained at its student's: it keeps that lr, and differs from today's
    today = load_config(None, ["method=dml", "model.peers=[MobileNetV2,MobileNetV2]"])
    older = today.to_dict()
    older["model"]["student"] = "resnet8x4"
    assert base_lr(today) == 0.01 and base_lr(stored_config(older)) == 0.05
    assert config_difference(stored_config(older).to_dict(), today.to_dict()) == [
        "optim.lr_overrides.MobileNetV2: None -> 0.01"]


def test_an_older_pcl_run_of_per_peer_views_without_augmentation_reads_as_shared_views():
    """Refused since 2026-12-05 (one view drawn for all peers): such a run still opens, as what it computed."""
    from mixdistill.config import stored_config

    tree = load_config(None, ["method=pcl", "method.views=per_peer", "augment=crop_flip"]).to_dict()
    tree["augment"] = {"name": "none"}
    assert stored_config(tree).method.params().views == "shared"


@pytest.mark.parametrize("method", [["method=ce"], ["method=kd", "model.teacher_checkpoint=t.pt"]])
def test_peers_with_a_method_that_trains_one_student_are_refused_not_ignored(method):
    with pytest.raises(ConfigError, match="model.peers names the peers of an online method .*dml.*; method '(ce|kd)' "
                                          "trains one student"):
        load_config(None, method + ["model.peers=[cnn5_w8,cnn5_w16]"])
    assert load_config(None, method + ["model.peers=[cnn5_w8,cnn5_w16]", "model.peers=null"]).model.peers is None


@pytest.mark.parametrize("method", [["method=ce"], ["method=kd", "model.teacher_checkpoint=t.pt"]])
def test_a_stored_config_is_read_as_the_run_it_was(method):
    """stored_config drops peers an older mixdistill ignored beside a one-student method, and only those: what
    today's schema accepts (an empty list; an online method's peers) reads back as it was stored."""
    from mixdistill.config import stored_config
    from mixdistill.engine.run import config_difference

    tree = load_config(None, method).to_dict()
    old = {**tree, "model": {**tree["model"], "peers": ["cnn5_w8", "cnn5_w16"]}}
    assert config_difference(stored_config(old).to_dict(), tree) == []
    empty = load_config(None, method + ["model.peers=[]"]).to_dict()
    assert config_difference(stored_config(empty).to_dict(), empty) == []
    online = load_config(None, ["method=dml", "model.peers=[cnn5_w8,cnn5_w16]"]).to_dict()
    assert stored_config(online).model.peers == ["cnn5_w8", "cnn5_w16"]
    # refused since 2026-12-05, accepted and ignored before: a run that recorded them still reads as itself
    old = {**tree, "data": {**tree["data"], "num_workers": 4}}
    assert config_difference(stored_config(old).to_dict(), tree) == []
    old = {**tree, "train": {**tree["train"], "int8_teacher": True}}
    if method == ["method=ce"]:
        assert config_difference(stored_config(old).to_dict(), tree) == []
    else:  # a teacher to quantise: kept, a config of its own
        assert stored_config(old).train.int8_teacher
    streaming = load_config(None, ["data.dataset=imagefolder", "data.loader=streaming", "data.image_size=32",
                                   "data.num_workers=2", *method]).to_dict()
    assert stored_config(streaming).data.num_workers == 2
    padded = {**streaming, "data": {**streaming["data"], "crop_padding": 4}}  # refused since 2026-12-05
    assert config_difference(stored_config(padded).to_dict(), streaming) == []


def test_cuda_graphs_are_refused_for_online_methods():
    with pytest.raises(ConfigError, match="train.cuda_graphs=true: not for online methods .'dml' evaluates"):
        load_config(None, ["method=dml", "train.cuda_graphs=true"])
    assert load_config(None, ["method=kd", "model.teacher_checkpoint=t.pt", "train.cuda_graphs=true"]).train.cuda_graphs


def test_a_config_file_may_name_its_method_and_augmentation_alone(tmp_path):
    """``method: kd`` / ``augment: none`` in a file mean what ``method=kd`` / ``augment=none`` mean on the command line
    (the README's own wording); they were refused naming pydantic's classes."""
    path = tmp_path / "run.yaml"
    path.write_text("method: kd\naugment: cutmix\nmodel:\n  teacher_checkpoint: t.pt\n")
    cfg = load_config(path)
    assert (cfg.method.name, cfg.augment.name) == ("kd", "cutmix")
    overrides = ["method=kd", "augment=cutmix", "model.teacher_checkpoint=t.pt"]
    assert cfg.to_dict() == load_config(None, overrides).to_dict()
    path.write_text("augment: none\n")
    assert load_config(path).augment.name == "none"
    path.write_text("method: kd\nmodel:\n  teacher_checkpoint: t.pt\n")  # its parameters then set by dotted keys
    assert load_config(path, ["method.temperature=2"]).method.params().temperature == 2
    path.write_text("method: mix_kd\nmodel:\n  teacher_checkpoint: t.pt\n")  # the method's default augmentation
    assert load_config(path).augment.name == load_config(None, ["method=mix_kd", "model.teacher_checkpoint=t.pt"]) \
        .augment.name
    assert resolve_config({"method": "kd", "model": {"teacher_checkpoint": "t.pt"}},
                          {"method.temperature": 3}).method.params().temperature == 3


def test_an_override_given_twice_takes_its_last_value_and_a_folder_for_a_config_is_one_line(tmp_path):
    """A script adds to a base list of overrides (the README says so); a key a file gives twice is refused."""
    assert load_config(None, ["seed=1", "name=a", "seed=2"]).seed == 2
    with pytest.raises(ConfigError, match=f"config {tmp_path} is a folder: name a YAML file"):
        load_config(tmp_path)


def test_a_malformed_list_or_a_missing_key_in_an_override_is_named():
    with pytest.raises(ConfigError, match=r"override optim.milestones=\[1,: not a valid YAML list or mapping"):
        load_config(None, ["optim.milestones=[1,"])
    with pytest.raises(ConfigError, match="override '=3' names no key"):
        load_config(None, ["=3"])
    assert load_config(None, ["output_dir=d: e: f"]).output_dir == "d: e: f"  # text that is no YAML stays text


def test_an_older_run_that_gave_augment_std_alone_reads_as_what_it_trained():
    """std without mean was replaced by the dataset's (refused since 2026-12-05): such a run still opens as itself."""
    from mixdistill.config import stored_config

    tree = load_config(None, ["augment=autoaugment"]).to_dict()
    tree["augment"]["std"] = [0.5]
    assert stored_config(tree).augment.model_extra["std"] is None
    mixed = load_config(None, ["augment=autoaugment", "augment.mean=[0.3]", "augment.std=[0.2,0.2,0.2]",
                               "data.dataset=cifar10"])  # one value for all beside three: it broadcast, and still does
    assert mixed.augment.model_extra["std"] == [0.2, 0.2, 0.2]
