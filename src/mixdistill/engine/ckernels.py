"""The C kernels next to this file (``small_bn.c``, ``small_pool.c``, ``small_conv.c``): each built once per machine
with the system's C compiler into ``$MIXDISTILL_CACHE/kernels/`` and loaded with ctypes.

All are used only where ATen runs its AVX512 kernels, the build they were shown equal to bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from mixdistill.files import write_bytes
from mixdistill.machine import cache_dir

FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-shared", "-fPIC"]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def switched_off(variable: str) -> bool:
    """Whether the environment turns a kernel off (``VARIABLE=0``)."""
    return os.environ.get(variable, "1") == "0"


def status(variable: str, library, disabled: str | None) -> str:
    """What a run's log says about a kernel: "on" or why it is off (``variable``: its switch; ``library``: its
    loader; ``disabled``: why its self-check turned it off, if it did)."""
    if switched_off(variable):
        return f"off ({variable}=0)"
    lib, why = library()
    if lib is None:
        return why
    return disabled or "on"


def load(source: Path) -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library built from ``source``, "") or (None, why not). The build is keyed by the source and the
    headers beside it, the compiler's version, the flags and the CPU's flags (``-march=native``)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return None, f"off (ATen's {torch.backends.cpu.get_cpu_capability()} kernels; shown equal for AVX512 only)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None, "off (no C compiler)"
    text = b"\0".join(p.read_bytes() for p in [source, *sorted(source.parent.glob("*.h"))])
    try:
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as err:
        return None, f"off (C compiler {compiler}: {err})"
    key = hashlib.sha256(b"\0".join([text, version.encode(), " ".join(FLAGS).encode(),
                                     _cpu_flags().encode()])).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"{source.stem}-{key}.so"
    if not path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            built = Path(tmp) / f"{source.stem}.so"
            try:
                done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(built), "-lm"], capture_output=True,
                                      text=True, timeout=300)
            except (OSError, subprocess.SubprocessError) as err:
                return None, f"off (building {source.name}: {err})"
            if done.returncode != 0:
                return None, f"off (building {source.name} failed: {done.stderr.strip().splitlines()[-1:]})"
            write_bytes(path, built.read_bytes())  # atomic: two runs of a grid may build at once
    return ctypes.CDLL(str(path)), ""


def swap(module, switch: str, library, takes, to: type, leave=None) -> int:
    """Turn every submodule of ``module`` that ``takes(submodule)`` into class ``to`` (a subclass computing the same
    through a kernel), in place, except inside ``leave`` (a compiled teacher: a changed module would make dynamo
    compile it again); returns how many. Nothing changes where the kernel (``switch``, ``library``: its loader) is
    off."""
    if switched_off(switch) or library()[0] is None:
        return 0
    kept = {id(m) for m in leave.modules()} if leave is not None else set()
    swapped = 0
    for m in module.modules():
        if id(m) not in kept and takes(m):
            m.__class__ = to
            swapped += 1
    return swapped


def unswap(module, small: type, plain: type) -> None:
    """Undo :func:`swap` in place: every ``small`` submodule back to ``plain`` (torch.fx and dynamo then see torch's
    own module)."""
    for m in module.modules():
        if type(m) is small:
            m.__class__ = plain
