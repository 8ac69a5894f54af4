"""User-facing errors. The CLI prints the message of any MixdistillError in one line and exits non-zero."""

import os


class MixdistillError(Exception):
    """Base class: something the user can fix (bad name, bad config, missing or corrupt file)."""


class ConfigError(MixdistillError):
    pass


def require_at_least(option: str, value: int | None, minimum: int) -> None:
    """A count given on the command line (``None``: left to its default) below ``minimum`` is a ConfigError."""
    if value is not None and value < minimum:
        raise ConfigError(f"{option} must be at least {minimum} (got {value})")


def refuse_under_torchrun(command: str, why: str) -> None:
    """``mixdistill COMMAND`` started by torchrun (one copy a process) is a ConfigError saying ``why`` it must not."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(f"{why}: run `mixdistill {command}` directly, not under torchrun (torchrun is for one run: "
                          "`torchrun ... -m mixdistill train CONFIG`)")


class DataError(MixdistillError):
    pass


class DatasetNotFoundError(DataError):
    pass


class CheckpointError(MixdistillError):
    pass


class UnknownNameError(MixdistillError):
    """An unknown registry name; the message lists the closest valid names."""

    def __init__(self, kind: str, name: str, valid, note: str = ""):
        import difflib

        valid = sorted(valid)
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        super().__init__(f"unknown {kind} '{name}'.{hint}{f' ({note})' if note else ''} Valid names: "
                         f"{', '.join(valid)}")
        self.kind, self.name, self.valid, self.note = kind, name, valid, note


class NonFiniteLossError(MixdistillError):
    pass


class IncompleteStudyError(MixdistillError):
    """A study's grid ended with runs that did not finish (diverged, or their teacher did); its report, when any run
    finished, is written and lists them."""


class WriteError(MixdistillError):
    """A file could not be written (full disk, read-only filesystem, permissions); nothing already there changed."""


class LockedError(MixdistillError):
    """Another process holds the lock of a run directory or a study."""


def one_line(error: Exception) -> str:
    """An exception's message on one line, for a one-line error that quotes it: torchvision's download errors take
    three ("Error downloading X:", the mirror tried, the cause), tarfile's "r:*" one line per compression tried."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
