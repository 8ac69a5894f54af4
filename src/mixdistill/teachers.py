"""Pretrained CIFAR-100 teachers of the CRD / RepDistiller benchmark.

The checkpoints were trained by the CRD authors (RepDistiller, 240 epochs, saved as
``{'model': state_dict, ...}``). Their original server is gone; the mdistiller project re-hosts them
as a single tar archive attached to its ``checkpoints`` GitHub release. Unpacked, the archive holds
one folder per teacher::

    cifar_teachers/<name>_vanilla/ckpt_epoch_240.pth

mixdistill keeps them in ``<cache>/teachers/cifar_teachers/...`` where ``<cache>`` is
``$MIXDISTILL_CACHE`` or ``~/.cache/mixdistill``. On machines without internet access, download the
archive elsewhere and run ``mixdistill teachers --archive PATH`` (or unpack it there by hand).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence

from mixdistill import __version__
from mixdistill.errors import MixdistillError, UnknownNameError, WriteError, one_line
from mixdistill.files import FILE_MODE, check_writable
from mixdistill.machine import cache_dir
from mixdistill.models import create_model
from mixdistill.models.checkpoint import load_weights, names_a_file
from mixdistill.resources import reference
from mixdistill.tables import print_table

__all__ = [
    "TEACHER_ARCHIVE_URL",
    "TEACHER_ARCHIVE_NAME",
    "ARCHIVE_ROOT",
    "TeacherSpec",
    "TEACHERS",
    "default_cache_dir",
    "teachers_dir",
    "teacher_checkpoint_path",
    "download_teachers",
    "unpack_teacher_archive",
    "teacher_status",
    "find_teacher_checkpoint",
    "load_teacher",
    "add_teachers_arguments",
    "teachers_main",
]

#: GitHub release asset of megvii-research/mdistiller (release tag ``checkpoints``).
TEACHER_ARCHIVE_URL = "https://github.com/megvii-research/mdistiller/releases/download/checkpoints/cifar_teachers.tar"
TEACHER_ARCHIVE_NAME = "cifar_teachers.tar"
#: Top-level folder inside the archive.
ARCHIVE_ROOT = "cifar_teachers"
_CKPT_FILE = "ckpt_epoch_240.pth"
_CHUNK = 1 << 20


class TeacherSpec(NamedTuple):
    arch: str  # architecture name in mixdistill.models
    path: str  # POSIX path inside the unpacked archive
    published_acc: float | None  # CIFAR-100 top-1 (%) reported with the checkpoints (CRD paper, Table 1/2)


def _specs(names: Sequence[str]) -> dict[str, TeacherSpec]:
    """Each teacher's archive path, with its published top-1: the teacher column of the CRD benchmark table
    (resources/reference_results.yaml, read once)."""
    rows = reference("crd_benchmark")["rows"]
    return {name: TeacherSpec(name, f"{ARCHIVE_ROOT}/{name}_vanilla/{_CKPT_FILE}",
                              next((row[0] for pair, row in rows.items() if pair.split("-")[0] == name), None))
            for name in names}


#: Benchmark teacher name -> (zoo architecture, path inside the archive, published top-1).
TEACHERS: dict[str, TeacherSpec] = _specs(("resnet56", "resnet110", "resnet32x4", "wrn_40_2",
                                            "vgg13",  # VGG-13 with batch norm (RepDistiller's vgg13_bn)
                                            "ResNet50"))


# --------------------------------------------------------------------------------------------- paths
def default_cache_dir() -> Path:
    """``$MIXDISTILL_CACHE`` if set (and non-empty), else ``~/.cache/mixdistill``."""
    return cache_dir()


def teachers_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder the archive is unpacked into: ``<cache>/teachers``."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / "teachers"


def _check_name(name: str) -> TeacherSpec:
    if name not in TEACHERS:
        raise UnknownNameError("teacher", name, TEACHERS)
    return TEACHERS[name]


def teacher_checkpoint_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the checkpoint of benchmark teacher ``name`` lives (whether or not it is there)."""
    spec = _check_name(name)
    return teachers_dir(cache_dir).joinpath(*PurePosixPath(spec.path).parts)


def _is_present(path: Path) -> bool:
    try:
        return path.is_file() and path.stat().st_size > 0
    except OSError:
        return False


def _how_to_get(cache_dir: str | os.PathLike | None) -> str:
    tdir = teachers_dir(cache_dir)
    cache_opt = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return (
        f"Either run `mixdistill teachers --download{cache_opt}`, or download {TEACHER_ARCHIVE_URL} on a "
        f"machine with internet access and then run `mixdistill teachers --archive PATH{cache_opt}` "
        f"(or unpack it yourself so that {tdir}/{ARCHIVE_ROOT}/<name>_vanilla/{_CKPT_FILE} exists)."
    )


# ------------------------------------------------------------------------------------------ download
def _make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MixdistillError(
            f"cannot create the teacher cache folder {path} ({exc}); choose another one with "
            f"--cache-dir or the MIXDISTILL_CACHE environment variable"
        ) from exc


def _download_failed(url: str, reason: object, cache_dir) -> MixdistillError:
    tdir = teachers_dir(cache_dir)
    cache_opt = f" --cache-dir {cache_dir}" if cache_dir is not None else ""
    return MixdistillError(
        f"could not download the pretrained teachers from {url} ({reason}). Without internet access, "
        f"download {TEACHER_ARCHIVE_NAME} ({TEACHER_ARCHIVE_URL}) on another machine, copy it here and "
        f"run `mixdistill teachers --archive PATH{cache_opt}`, or unpack it so that "
        f"{tdir}/{ARCHIVE_ROOT}/<name>_vanilla/{_CKPT_FILE} exists "
        f"(e.g. {tdir}/{ARCHIVE_ROOT}/resnet32x4_vanilla/{_CKPT_FILE})."
    )


def _fetch(url: str, dest: Path, timeout: float, cache_dir, progress: bool) -> None:
    """Download ``url`` to ``dest`` through a temporary file in the same folder, renamed at the end."""
    request = urllib.request.Request(url, headers={"User-Agent": f"mixdistill/{__version__}"})
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            written = 0
            bar = _progress_bar(total) if progress else None
            try:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
                    if bar is not None:
                        bar[0].update(bar[1], completed=written)
            finally:
                if bar is not None:
                    bar[0].stop()
            if total is not None and written != total:
                raise _download_failed(url, f"incomplete transfer: {written} of {total} bytes", cache_dir)
            if written == 0:
                raise _download_failed(url, "the server sent an empty file", cache_dir)
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600 would hide the teacher from the group on a shared filesystem
        os.replace(tmp, dest)
    except MixdistillError:
        raise
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise _download_failed(url, reason, cache_dir) from exc
    finally:
        tmp.unlink(missing_ok=True)


def _progress_bar(total: int | None):
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
    task = bar.add_task(TEACHER_ARCHIVE_NAME, total=total)
    bar.start()
    return bar, task


def download_teachers(
    cache_dir: str | os.PathLike | None = None,
    url: str = TEACHER_ARCHIVE_URL,
    timeout: float = 30,
    *,
    keep_archive: bool = False,
    progress: bool = False,
) -> Path:
    """Download the teacher archive and unpack it into ``<cache>/teachers``; return that folder.

    The archive is written to a temporary file and renamed into place only once complete, so an
    interrupted download never looks like a good archive. A complete archive already sitting at
    ``<cache>/teachers/cifar_teachers.tar`` is reused instead of downloaded again. It is deleted after
    unpacking unless ``keep_archive``. Any network failure raises :class:`MixdistillError` whose
    message says how to install the files by hand.
    """
    tdir = teachers_dir(cache_dir)
    _make_dir(tdir)
    archive = tdir / TEACHER_ARCHIVE_NAME
    if _is_present(archive):  # left by an earlier run (complete, thanks to the rename)
        try:
            unpack_teacher_archive(archive, cache_dir)
        except MixdistillError:
            archive.unlink(missing_ok=True)  # unusable after all: fetch a fresh copy below
    if not _is_present(archive):
        _fetch(url, archive, timeout, cache_dir, progress)
        try:
            unpack_teacher_archive(archive, cache_dir)
        except MixdistillError:
            archive.unlink(missing_ok=True)  # e.g. an HTML error page: do not reuse it next time
            raise
    if not keep_archive:
        archive.unlink(missing_ok=True)
    return tdir


# -------------------------------------------------------------------------------------------- unpack
def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse anything but plain files and folders with relative paths that stay inside the target."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (parts and parts[0].endswith(":")) or ".." in parts:
        raise MixdistillError(
            f"refusing to unpack {archive}: member '{name}' would be written outside the target folder"
        )
    if not (member.isfile() or member.isdir()):
        raise MixdistillError(f"refusing to unpack {archive}: member '{name}' is a link or special file")


def unpack_teacher_archive(archive_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Unpack a ``cifar_teachers.tar`` into ``<cache>/teachers``; return that folder.

    Members with absolute paths, ``..`` components, links or device files are refused before anything
    is written (extraction also uses tarfile's ``data`` filter). The archive is first extracted into a
    temporary folder and its files are moved into place only once it was read completely, so a corrupt
    or truncated archive leaves no half-written checkpoints. An archive without the top-level
    ``cifar_teachers/`` folder (just ``<name>_vanilla/...``) is accepted too. Existing files are replaced.
    """
    archive = Path(archive_path).expanduser()
    if archive.is_dir():
        raise MixdistillError(f"teacher archive {archive} is a folder: give the {TEACHER_ARCHIVE_NAME} file")
    if not archive.is_file():
        raise MixdistillError(f"teacher archive not found: {archive}")
    tdir = teachers_dir(cache_dir)
    made = not tdir.exists()
    _make_dir(tdir)
    try:
        return _unpack_into(archive, tdir)
    except BaseException:
        if made:  # a failed unpack leaves the cache as it found it
            with contextlib.suppress(OSError):
                tdir.rmdir()
        raise


def _unpack_into(archive: Path, tdir: Path) -> Path:
    corrupt = (
        f"{archive} is not a readable tar archive (corrupt or incomplete download?); "
        f"download {TEACHER_ARCHIVE_NAME} again from {TEACHER_ARCHIVE_URL}"
    )
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=tdir))
    try:
        try:
            with tarfile.open(archive, "r:*") as tar:
                members = tar.getmembers()  # reads the whole index: detects truncation early
                for member in members:
                    _check_member(member, archive)
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, members=members, filter="data")
                else:  # Python < 3.10.12: the members were checked above
                    tar.extractall(staging, members=members)
        except MixdistillError:
            raise
        except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
            if isinstance(exc, tarfile.FilterError):
                raise MixdistillError(f"refusing to unpack {archive}: {exc}") from exc
            raise MixdistillError(f"{corrupt} ({one_line(exc)})") from exc

        root = staging / ARCHIVE_ROOT if (staging / ARCHIVE_ROOT).is_dir() else staging
        found = [n for n, s in TEACHERS.items() if _is_present(root.joinpath(*PurePosixPath(s.path).parts[1:]))]
        if not found:
            raise MixdistillError(
                f"{archive} contains none of the expected teacher checkpoints "
                f"({ARCHIVE_ROOT}/<name>_vanilla/{_CKPT_FILE} for <name> in {', '.join(TEACHERS)})"
            )
        for name in found:  # each one reads as its teacher's weights (a junk file was listed as present)
            path = root.joinpath(*PurePosixPath(TEACHERS[name].path).parts[1:])
            try:
                load_weights(create_model(TEACHERS[name].arch, num_classes=100), path, strict=True)
            except MixdistillError as err:
                raise MixdistillError(f"{archive}: teacher {name}'s checkpoint does not load ({one_line(err)}); "
                                      f"nothing unpacked: download {TEACHER_ARCHIVE_NAME} again from "
                                      f"{TEACHER_ARCHIVE_URL}") from None
        target = tdir / ARCHIVE_ROOT
        for src in sorted(p for p in root.rglob("*") if p.is_file()):
            dest = target / src.relative_to(root)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return tdir


# -------------------------------------------------------------------------------------------- lookup
def teacher_status(cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """One dict per benchmark teacher: name, arch, path, present (bool), published_acc."""
    rows = []
    for name, spec in TEACHERS.items():
        path = teacher_checkpoint_path(name, cache_dir)
        rows.append(
            dict(name=name, arch=spec.arch, path=path, present=_is_present(path), published_acc=spec.published_acc)
        )
    return rows


def find_teacher_checkpoint(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of benchmark teacher ``name``'s checkpoint; a clear error if unknown or not installed."""
    path = teacher_checkpoint_path(name, cache_dir)
    if not _is_present(path):
        raise MixdistillError(
            f"pretrained teacher '{name}' is not installed: expected {path}. " + _how_to_get(cache_dir)
        )
    return path


def load_teacher(
    name_or_path: str | os.PathLike,
    arch: str | None = None,
    num_classes: int = 100,
    cache_dir: str | os.PathLike | None = None,
):
    """Build a teacher and load its weights (strict); the model is returned in eval mode.

    ``name_or_path`` is a benchmark teacher name (see :data:`TEACHERS`; ``arch`` then defaults to its
    architecture) or the path of a checkpoint file, in which case ``arch`` is required.
    """
    key = os.fspath(name_or_path)
    if isinstance(name_or_path, str) and key in TEACHERS:
        spec = TEACHERS[key]
        if arch is not None and arch != spec.arch:
            raise MixdistillError(
                f"teacher '{key}' is a {spec.arch}, not a {arch}; leave arch unset for benchmark teachers"
            )
        if num_classes != 100:
            raise MixdistillError(f"teacher '{key}' is a CIFAR-100 model (100 classes), not {num_classes} classes")
        arch = spec.arch
        path = find_teacher_checkpoint(key, cache_dir)
    else:
        path = Path(key).expanduser()
        if not path.exists():
            if isinstance(name_or_path, str) and not names_a_file(key):
                raise UnknownNameError("teacher", key, TEACHERS)
            raise MixdistillError(f"teacher checkpoint not found: {path}")
        if path.is_dir():
            raise MixdistillError(f"teacher checkpoint {path} is a folder; give the checkpoint file")
        if arch is None:
            raise MixdistillError(
                f"loading a teacher from the file {path} needs its architecture (arch=..., e.g. 'resnet32x4')"
            )

    model = create_model(arch, num_classes=num_classes)
    load_weights(model, path, strict=True)
    model.eval()
    return model


# ----------------------------------------------------------------------------------------------- CLI
def add_teachers_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Register the options of ``mixdistill teachers`` on ``parser`` (returned for chaining)."""
    source = parser.add_mutually_exclusive_group()  # one archive: the download or a local copy
    source.add_argument("--download", action="store_true", help="download and unpack the teacher archive")
    source.add_argument("--archive", metavar="PATH", help=f"unpack a local copy of {TEACHER_ARCHIVE_NAME}")
    parser.add_argument(
        "--cache-dir", metavar="DIR", default=None,
        help="cache folder (default: $MIXDISTILL_CACHE or ~/.cache/mixdistill); teachers go to DIR/teachers",
    )
    parser.add_argument("--url", default=TEACHER_ARCHIVE_URL, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout in seconds (default: 30)")
    return parser


def _print_table(console, cache_dir) -> list[dict]:
    from rich.markup import escape
    from rich.table import Table

    rows = teacher_status(cache_dir)
    table = Table(title=escape(f"CIFAR-100 teachers in {teachers_dir(cache_dir)}"))
    table.add_column("teacher")
    table.add_column("arch")
    table.add_column("top-1", justify="right")
    table.add_column("status")
    table.add_column("checkpoint", overflow="fold")
    for r in rows:
        acc = f"{r['published_acc']:.2f}" if r["published_acc"] is not None else "-"
        status = "[green]present[/green]" if r["present"] else "[red]missing[/red]"
        table.add_row(r["name"], r["arch"], acc, status, escape(str(r["path"])))
    print_table(table, console)
    return rows


def teachers_main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """``mixdistill teachers [--download] [--archive PATH] [--cache-dir DIR]``; returns the exit code.

    ``args`` is the parsed namespace (see :func:`add_teachers_arguments`) or a list of arguments.
    """
    from rich.console import Console
    from rich.markup import escape

    if args is None or not isinstance(args, argparse.Namespace):
        parser = add_teachers_arguments(argparse.ArgumentParser(prog="mixdistill teachers"))
        args = parser.parse_args(list(args) if args is not None else None)
    cache_dir = getattr(args, "cache_dir", None)
    archive = getattr(args, "archive", None)
    download = getattr(args, "download", False)
    url = getattr(args, "url", TEACHER_ARCHIVE_URL) or TEACHER_ARCHIVE_URL
    timeout = getattr(args, "timeout", 30.0)

    if timeout is not None and not timeout > 0:
        raise MixdistillError(f"--timeout is seconds, more than 0 (got {timeout:g})")
    console = Console(highlight=False)
    if archive:
        tdir = unpack_teacher_archive(archive, cache_dir)
        console.print(escape(f"unpacked {archive} into {tdir}"), soft_wrap=True)
    if download:
        if all(r["present"] for r in teacher_status(cache_dir)):
            console.print("all teachers are already present; nothing to download")
        else:
            tdir = teachers_dir(cache_dir)  # one line, before the "downloading" one, where nothing can be written
            _make_dir(tdir)
            try:
                check_writable(tdir)
            except WriteError as err:
                raise MixdistillError(f"{err}; choose another cache folder with --cache-dir or the MIXDISTILL_CACHE "
                                      "environment variable") from None
            console.print(escape(f"downloading {url} ..."), soft_wrap=True)
            download_teachers(cache_dir, url=url, timeout=timeout, progress=sys.stderr.isatty())
            console.print(escape(f"unpacked into {teachers_dir(cache_dir)}"), soft_wrap=True)
    rows = _print_table(console, cache_dir)
    if not all(r["present"] for r in rows):
        console.print(escape(_how_to_get(cache_dir)), soft_wrap=True)
    return 0
