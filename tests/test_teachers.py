"""Pretrained-teacher support: archive layout, unpacking, status, loading and offline failure modes.

Nothing here touches the network: the archive is built locally with the real internal layout and the
download tests use a closed local port or a file:// URL.
"""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest
import torch

from mixdistill import teachers as T
from mixdistill.errors import MixdistillError, UnknownNameError

ARCHIVED = ("resnet56", "wrn_40_2")  # benchmark teachers put into the test archive (small models)


def _randomised_state(model: torch.nn.Module, seed: int) -> dict:
    """A state dict that differs from any fresh initialisation (buffers included)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if v.is_floating_point():
            state[k] = torch.randn(v.shape, generator=g).to(v.dtype)
            if "running_var" in k:
                state[k] = state[k].abs() + 0.5
        else:
            state[k] = torch.full_like(v, 7)
    return state


def _save_ckpt(path: Path, arch: str, seed: int) -> dict:
    from mixdistill.models import create_model

    state = _randomised_state(create_model(arch, num_classes=100), seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 240, "model": state, "accuracy": 70.0}, path)
    return state


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """cifar_teachers.tar with the real layout holding two benchmark teachers; returns (path, states)."""
    root = tmp_path_factory.mktemp("archive_src")
    states = {}
    for i, name in enumerate(ARCHIVED):
        spec = T.TEACHERS[name]
        states[name] = _save_ckpt(root.joinpath(*spec.path.split("/")), spec.arch, seed=i)
    tar_path = root / "cifar_teachers.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(root / "cifar_teachers", arcname="cifar_teachers")
    return tar_path, states


def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _assert_same_weights(model: torch.nn.Module, state: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


# ---------------------------------------------------------------------------------------- the table
def test_table_matches_archive_layout():
    assert T.TEACHER_ARCHIVE_URL.endswith("/releases/download/checkpoints/cifar_teachers.tar")
    assert set(T.TEACHERS) >= {"resnet32x4", "resnet56", "resnet110", "wrn_40_2", "vgg13", "ResNet50"}
    for name, spec in T.TEACHERS.items():
        arch, path, acc = spec  # plain tuple too
        assert path == f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"
        assert acc is None or 60 < acc < 90
    assert T.TEACHERS["resnet32x4"].published_acc == 79.42
    assert T.TEACHERS["ResNet50"].published_acc == 79.34


def test_teacher_archs_exist_in_zoo():
    from mixdistill.models import create_model

    for spec in T.TEACHERS.values():
        create_model(spec.arch, num_classes=100)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path / "c"))
    assert T.default_cache_dir() == tmp_path / "c"
    assert T.teachers_dir() == tmp_path / "c" / "teachers"
    monkeypatch.delenv("MIXDISTILL_CACHE")
    assert T.default_cache_dir() == Path.home() / ".cache" / "mixdistill"


# -------------------------------------------------------------------------- unpack, status and load
def test_unpack_status_and_load(archive, tmp_path):
    tar_path, states = archive
    cache = tmp_path / "cache"
    assert not any(r["present"] for r in T.teacher_status(cache))

    out = T.unpack_teacher_archive(tar_path, cache)
    assert out == cache / "teachers"
    assert (cache / "teachers/cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth").is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".unpack-")]  # staging cleaned up

    status = {r["name"]: r for r in T.teacher_status(cache)}
    assert set(status) == set(T.TEACHERS)
    for name, row in status.items():
        assert row["present"] == (name in ARCHIVED)
        assert row["arch"] == T.TEACHERS[name].arch
        assert row["published_acc"] == T.TEACHERS[name].published_acc
        assert row["path"] == T.teacher_checkpoint_path(name, cache)

    assert T.find_teacher_checkpoint("resnet56", cache) == status["resnet56"]["path"]
    for name in ARCHIVED:
        model = T.load_teacher(name, cache_dir=cache)
        assert not model.training
        _assert_same_weights(model, states[name])
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_cache_dir_from_environment(archive, tmp_path, monkeypatch):
    tar_path, states = archive
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path / "envcache"))
    T.unpack_teacher_archive(tar_path)
    assert (tmp_path / "envcache/teachers/cifar_teachers/wrn_40_2_vanilla/ckpt_epoch_240.pth").is_file()
    _assert_same_weights(T.load_teacher("wrn_40_2"), states["wrn_40_2"])


def test_unpack_archive_without_top_folder(tmp_path):
    src = tmp_path / "src"
    state = _save_ckpt(src / "resnet56_vanilla" / "ckpt_epoch_240.pth", "resnet56", seed=3)
    tar_path = tmp_path / "flat.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(src / "resnet56_vanilla", arcname="resnet56_vanilla")
    T.unpack_teacher_archive(tar_path, tmp_path / "cache")
    _assert_same_weights(T.load_teacher("resnet56", cache_dir=tmp_path / "cache"), state)


def test_load_from_file_path(tmp_path):
    ckpt = tmp_path / "student.pth"
    state = _save_ckpt(ckpt, "resnet8x4", seed=5)
    model = T.load_teacher(ckpt, arch="resnet8x4")
    assert not model.training
    _assert_same_weights(model, state)
    _assert_same_weights(T.load_teacher(str(ckpt), arch="resnet8x4"), state)
    with pytest.raises(MixdistillError, match="architecture"):
        T.load_teacher(ckpt)
    with pytest.raises(MixdistillError, match="not found"):
        T.load_teacher(tmp_path / "nope.pth", arch="resnet8x4")


def test_load_with_wrong_arch_is_checkpoint_error(tmp_path):
    from mixdistill.errors import CheckpointError

    ckpt = tmp_path / "r56.pth"
    _save_ckpt(ckpt, "resnet56", seed=1)
    with pytest.raises(CheckpointError):
        T.load_teacher(ckpt, arch="resnet8x4")


# ---------------------------------------------------------------------------------- error messages
def test_unknown_name_lists_close_names(tmp_path):
    with pytest.raises(UnknownNameError, match="resnet32x4") as info:
        T.find_teacher_checkpoint("resnet32x5", tmp_path)
    assert "Did you mean" in str(info.value)
    with pytest.raises(UnknownNameError, match="wrn_40_2"):
        T.load_teacher("wrn_40_3", cache_dir=tmp_path)


def test_missing_checkpoint_names_expected_path(tmp_path):
    expected = tmp_path / "teachers" / "cifar_teachers" / "resnet32x4_vanilla" / "ckpt_epoch_240.pth"
    calls = (
        lambda: T.find_teacher_checkpoint("resnet32x4", tmp_path),
        lambda: T.load_teacher("resnet32x4", cache_dir=tmp_path),
    )
    for call in calls:
        with pytest.raises(MixdistillError) as info:
            call()
        msg = str(info.value)
        assert str(expected) in msg
        assert "--download" in msg and "--archive" in msg
        assert not isinstance(info.value, UnknownNameError)


def test_benchmark_teacher_arch_and_classes_checked(archive, tmp_path):
    T.unpack_teacher_archive(archive[0], tmp_path)
    with pytest.raises(MixdistillError, match="resnet56"):
        T.load_teacher("resnet56", arch="resnet110", cache_dir=tmp_path)
    with pytest.raises(MixdistillError, match="100 classes"):
        T.load_teacher("resnet56", num_classes=10, cache_dir=tmp_path)


# ------------------------------------------------------------------------------------ unsafe/corrupt
@pytest.mark.parametrize("evil", ["../evil", "cifar_teachers/../../evil", "/tmp/mixdistill_evil_abs"])
def test_archive_escaping_target_is_refused(tmp_path, evil):
    tar_path = _tar_with(
        tmp_path / "evil.tar",
        {"cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth": b"x" * 10, evil: b"pwned"},
    )
    cache = tmp_path / "cache"
    with pytest.raises(MixdistillError, match="refusing"):
        T.unpack_teacher_archive(tar_path, cache)
    assert not (tmp_path / "evil").exists() and not (cache / "evil").exists()
    assert not Path("/tmp/mixdistill_evil_abs").exists()
    assert not any(r["present"] for r in T.teacher_status(cache))  # nothing was installed


def test_archive_with_symlink_is_refused(tmp_path):
    tar_path = tmp_path / "link.tar"
    with tarfile.open(tar_path, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet56_vanilla/ckpt_epoch_240.pth")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(MixdistillError, match="refusing"):
        T.unpack_teacher_archive(tar_path, tmp_path / "cache")


def test_corrupt_archive_gives_clear_error(archive, tmp_path):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(MixdistillError, match="not a readable tar archive") as caught:
        T.unpack_teacher_archive(garbage, tmp_path / "cache")
    assert "\n" not in str(caught.value) and "method gz" in str(caught.value)  # tarfile's lines per compression

    data = archive[0].read_bytes()
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(MixdistillError, match="not a readable tar archive"):
        T.unpack_teacher_archive(truncated, tmp_path / "cache")
    assert not any(r["present"] for r in T.teacher_status(tmp_path / "cache"))  # no half-written files

    with pytest.raises(MixdistillError, match="not found"):
        T.unpack_teacher_archive(tmp_path / "absent.tar", tmp_path / "cache")


def test_an_archive_holding_a_checkpoint_that_does_not_load_unpacks_nothing(tmp_path):
    """Five bytes of junk at a teacher's path were unpacked and listed as present; the load failed later."""
    name = next(iter(T.TEACHERS))
    tar_path = _tar_with(tmp_path / "junk.tar", {T.TEACHERS[name].path: b"junk!"})
    with pytest.raises(MixdistillError, match=f"teacher {name}'s checkpoint does not load .*nothing unpacked"):
        T.unpack_teacher_archive(tar_path, tmp_path / "cache")
    assert not (tmp_path / "cache" / "teachers").exists()  # the folder it made, removed again
    with pytest.raises(MixdistillError, match="is a folder: give the cifar_teachers.tar file"):
        T.unpack_teacher_archive(tmp_path, tmp_path / "cache")


def test_archive_without_teachers_is_rejected(tmp_path):
    tar_path = _tar_with(tmp_path / "other.tar", {"something/else.txt": b"hello"})
    with pytest.raises(MixdistillError, match="none of the expected"):
        T.unpack_teacher_archive(tar_path, tmp_path / "cache")


# ------------------------------------------------------------------------------------------ download
@pytest.fixture
def no_proxy(monkeypatch):
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


def test_download_unreachable_fails_fast_with_instructions(tmp_path, no_proxy):
    start = time.monotonic()
    with pytest.raises(MixdistillError) as info:
        T.download_teachers(tmp_path, url="http://127.0.0.1:9/x.tar", timeout=5)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "\n" not in msg
    assert "127.0.0.1:9" in msg
    assert "mixdistill teachers --archive PATH" in msg
    assert str(tmp_path / "teachers" / "cifar_teachers") in msg and "<name>_vanilla/ckpt_epoch_240.pth" in msg
    assert T.TEACHER_ARCHIVE_URL in msg
    leftovers = [p.name for p in (tmp_path / "teachers").iterdir()]
    assert leftovers == []  # no partial file, no archive


def test_download_from_file_url(archive, tmp_path, no_proxy):
    tar_path, states = archive
    cache = tmp_path / "cache"
    out = T.download_teachers(cache, url=tar_path.as_uri())
    assert out == cache / "teachers"
    assert not (out / T.TEACHER_ARCHIVE_NAME).exists()  # removed after unpacking
    present = {r["name"] for r in T.teacher_status(cache) if r["present"]}
    assert present == set(ARCHIVED)
    _assert_same_weights(T.load_teacher("resnet56", cache_dir=cache), states["resnet56"])


def test_download_of_non_archive_is_not_kept(tmp_path, no_proxy):
    page = tmp_path / "page.html"
    page.write_text("<html>rate limited</html>")
    with pytest.raises(MixdistillError, match="not a readable tar archive"):
        T.download_teachers(tmp_path / "cache", url=page.as_uri())
    assert list((tmp_path / "cache" / "teachers").iterdir()) == []


# ----------------------------------------------------------------------------------------------- CLI
def test_teachers_main_archive_and_table(archive, tmp_path, capsys):
    import argparse

    cache = tmp_path / "cache"
    assert T.teachers_main(["--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "missing" in out and "present" not in out and "--archive" in out

    assert T.teachers_main(["--archive", str(archive[0]), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert "present" in out and "missing" in out and "resnet32x4" in out and "79.42" in out

    parser = T.add_teachers_arguments(argparse.ArgumentParser())
    args = parser.parse_args(["--cache-dir", str(cache)])
    assert args.download is False and args.archive is None
    assert T.teachers_main(args) == 0


def test_teachers_errors_are_one_line_and_exit_2(tmp_path, capsys, no_proxy):
    from mixdistill.cli import main

    argv = ["teachers", "--download", "--cache-dir", str(tmp_path), "--url", "http://127.0.0.1:9/x.tar",
            "--timeout", "5"]
    for args, fragment in ((argv, "could not download"), (argv[:1] + ["--archive", str(tmp_path / "no.tar")],
                                                          "teacher archive not found"),
                           (argv[:-1] + ["0"], "--timeout is seconds, more than 0 (got 0)")):
        assert main(args) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith(f"mixdistill: error: {fragment}") and len(captured.err.splitlines()) == 1
        assert "missing" not in captured.out  # no table after an error
        if args is argv:
            assert "--archive" in captured.err  # the way round a download that cannot work here


def test_download_and_archive_together_are_refused(archive, tmp_path, capsys):
    """One archive per call: --download beside --archive was accepted and did both."""
    from mixdistill.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["teachers", "--download", "--archive", str(archive[0]), "--cache-dir", str(tmp_path)])
    assert stop.value.code == 2
    assert "not allowed with argument --download" in capsys.readouterr().err
    assert not (tmp_path / "teachers").exists()  # nothing unpacked


def test_a_cache_that_cannot_be_written_is_one_line_before_any_download(tmp_path, capsys, monkeypatch, no_proxy):
    """It printed 'downloading ...' and then the error: two lines."""
    from mixdistill.cli import main
    from mixdistill.errors import WriteError

    def refuse(folder):
        raise WriteError(f"cannot write {folder}: [Errno 13] Permission denied")

    monkeypatch.setattr(T, "check_writable", refuse)
    assert main(["teachers", "--download", "--cache-dir", str(tmp_path), "--url", "http://127.0.0.1:9/x.tar"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1
    assert "Permission denied; choose another cache folder with --cache-dir" in captured.err
