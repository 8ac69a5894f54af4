"""What this machine is and what of it this process may use: the CPU's name, the CPUs available and where this
user's caches go. Below every other layer: the data readers size their worker pools by it as the grid runner sizes
its slots."""

from __future__ import annotations

import math
import os
import platform
import re
from pathlib import Path


DEVICE_NAMES = "auto, cpu, cuda, cuda:N"


def is_device_name(name: str) -> bool:
    """Is ``name`` a device a run can be given (``train.device``, ``--device``): one of :data:`DEVICE_NAMES`?"""
    return re.fullmatch(r"auto|cpu|cuda(:\d+)?", name) is not None


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup v2 CPU quota (a container's
    ``--cpus``), which the mask does not show."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def cache_dir() -> Path:
    """``$MIXDISTILL_CACHE`` if set (and non-empty), else ``~/.cache/mixdistill``: downloaded teachers, compile
    probes, built kernels."""
    env = os.environ.get("MIXDISTILL_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "mixdistill"
