"""Every file mixdistill writes goes through here.

A file is either written whole (a temporary file in the same directory, fsync, then renamed over the
final name) or appended to; nothing is ever truncated in place, so a full disk, a read-only filesystem or
a kill mid-write leaves the previous version intact. Any OS error becomes one :class:`WriteError` line
naming the path and the errno. Files get the mode a plain ``open`` would give them (0644 under the usual
umask), not ``mkstemp``'s 0600, so runs on a shared filesystem stay readable by the group.

:func:`hold_lock` is the inter-process lock (a run directory, a study's results file): portable through
``filelock``, with the holder's host and pid written beside the lock so that a second writer can be told
who holds it.
"""

from __future__ import annotations

import io
import json
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import filelock

from mixdistill.errors import LockedError, WriteError

TMP_SUFFIX = ".mdtmp"  # temporary files of interrupted writes end in this (removed by remove_orphans)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()


def write_error(path: str | Path, err: OSError) -> WriteError:
    reason = f"[Errno {err.errno}] {err.strerror}" if err.errno else str(err)
    return WriteError(f"cannot write {path}: {reason}")


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temporary binary file beside ``path``, fsync it and rename it over ``path``. A symbolic
    link is written through (its target replaced, the link kept); a path that is no regular file (``/dev/stdout``,
    a FIFO, a device) is written to as it is: renaming over them replaced ``/dev/full`` with a file."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.exists() and not path.is_file() and not path.is_dir():
        try:
            with open(path, "wb") as f:
                write(f)
                f.flush()
        except OSError as err:
            raise write_error(path, err) from None
        return path
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
        tmp = None
    except OSError as err:
        raise write_error(path, err) from None
    except RuntimeError as err:  # torch's zip writer fails as it closes after its file's OSError (a full disk)
        cause = err.__context__
        if not isinstance(cause, OSError):
            raise
        raise write_error(path, cause) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    return write_atomic(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_cache(path: str | Path) -> dict:
    """A JSON cache of computed values (a study's tstddev.json, shifted.json): ``{}`` where it is missing or
    damaged, so its values are computed again and the file rewritten whole."""
    try:
        cache = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def write_yaml(path: str | Path, tree) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(tree, sort_keys=False))


def save_torch(obj, path: str | Path) -> Path:
    """``torch.save`` written whole (a checkpoint is never half-written under its final name)."""
    import torch

    return write_atomic(path, lambda f: torch.save(obj, f))


def save_figure_file(fig, path: str | Path, **savefig_kwargs) -> Path:
    """A matplotlib figure rendered in memory, then written whole."""
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    return write_bytes(path, buffer.getvalue())


def append_text(path: str | Path, text: str) -> None:
    """Append to a file (created if missing); what is already there is never touched."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
        try:
            os.write(fd, text.encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as err:
        raise write_error(path, err) from None


def make_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteError(f"cannot write {path}: a file of that name is there, not a folder") from None
    except OSError as err:
        raise write_error(path, err) from None
    return path


def check_writable(directory: str | Path) -> None:
    """A file can be written in ``directory`` (a WriteError naming it otherwise): for a command that writes its
    results only after minutes of work."""
    try:
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check.", suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise write_error(directory, err) from None


def remove_orphans(directory: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in ``directory`` (call it while holding the
    directory's lock, so that no live writer's file is taken)."""
    removed = []
    for p in Path(directory).glob(f".*{TMP_SUFFIX}"):
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


# ------------------------------------------------------------------------------------------------ locks

def _holder_path(lock_path: Path) -> Path:
    return lock_path.with_name(lock_path.name + ".holder")


def _holder(lock_path: str | Path) -> dict | None:
    """What :func:`hold_lock` wrote beside ``lock_path`` about its holder (pid, host, what, since), or None."""
    try:
        info = json.loads(_holder_path(Path(lock_path)).read_text())
        return info if isinstance(info, dict) and "pid" in info and "host" in info else None
    except (OSError, ValueError):
        return None


def describe_holder(lock_path: str | Path) -> str:
    info = _holder(lock_path)
    if info is None:
        return "another process"
    return f"pid {info['pid']} on {info['host']} ({info.get('what', '?')}, since {info.get('since', '?')})"


def held_elsewhere(lock_path: str | Path) -> bool:
    """Does another live process hold ``lock_path`` now, as its holder file says (:func:`hold_lock` writes it and
    removes it on release; a holder killed without releasing leaves it, so the pid is checked where it is on this
    host)? Takes no lock, so it cannot stop that process or one starting meanwhile."""
    info = _holder(lock_path)
    try:
        pid, host = int(info["pid"]), info["host"]
    except (TypeError, ValueError):  # none, or not a pid
        return False
    if host != socket.gethostname():
        return True
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


@contextmanager
def hold_lock(lock_path: str | Path, what: str, *, wait: bool = False) -> Iterator[None]:
    """Hold the inter-process lock ``lock_path`` for the body. ``wait=False``: if another process holds it,
    raise :class:`LockedError` naming the holder at once. ``what`` says what the holder is doing."""
    import time

    lock_path = Path(lock_path)
    make_dir(lock_path.parent)
    lock = filelock.FileLock(str(lock_path), mode=FILE_MODE)
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except filelock.Timeout:
        raise LockedError(f"{lock_path.parent} is in use by {describe_holder(lock_path)}: "
                          f"wait for it to finish or stop it") from None
    except OSError as err:
        raise write_error(lock_path, err) from None
    holder = _holder_path(lock_path)
    try:
        try:  # informational only (for the message a second writer gets), so a failure here stops nothing
            holder.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "what": what,
                                          "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        except OSError:
            pass
        yield
    finally:
        try:
            holder.unlink()
        except OSError:
            pass
        lock.release()
