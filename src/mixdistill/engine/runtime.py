"""Device, precision and layout choices, taken from what the hardware does natively."""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from dataclasses import dataclass

import torch

from mixdistill.data.loader import epoch_seed
from mixdistill.errors import ConfigError
from mixdistill.machine import DEVICE_NAMES, cpu_name, is_device_name


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, and ATen running its AVX512 kernels. On AVX2-only CPUs bf16 is emulated and ~9x slower
    than fp32; so it is on a bf16 CPU told to run AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``)."""
    if "AVX512" not in torch.backends.cpu.get_cpu_capability():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


@functools.cache
def source_commit() -> str | None:
    """The git commit of mixdistill's source when it runs from a git checkout (an editable install), else None."""
    from pathlib import Path

    return git_commit_of(Path(__file__).resolve().parent.parent)


def git_commit_of(package) -> str | None:
    """``git rev-parse HEAD`` in directory ``package`` when git tracks its ``__init__.py`` there, else None. Never
    fails: no git, no repository, a directory git does not track (a copy installed inside someone else's
    repository) are all None."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # ask about this directory only

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=package, env=env, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError, ValueError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("ls-files", "--error-unmatch", "__init__.py") is None:  # not tracked here: not our checkout
        return None
    commit = git("rev-parse", "HEAD")
    return commit if commit and len(commit) >= 40 and all(c in "0123456789abcdef" for c in commit) else None


def environment(runtime: Runtime, world_size: int = 1) -> dict:
    """What a run computed on (its ``summary.json``): torch, the CPU kind, the device and the precision actually
    used, and the source commit."""
    import platform

    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "device": str(runtime.device),
        "device_name": (torch.cuda.get_device_name(runtime.device) if runtime.device.type == "cuda" else cpu_name()),
        "precision": runtime.precision,
        "threads": torch.get_num_threads(),
        "processes": world_size,
        "git_commit": source_commit(),
    }


def cpu_compiler_missing() -> str | None:
    """Why ``torch.compile`` cannot build CPU kernels here (inductor needs a C++ compiler), or None."""
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as e:  # noqa: BLE001 - any failure to find one means compile would fail later
        return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return None


def keep_inductor_cache_per_cpu() -> str:
    """Point inductor's caches at a folder of this CPU's vector instruction set, unless
    ``TORCHINDUCTOR_CACHE_DIR`` names a folder other than inductor's default; returns the folder. Every
    ``torch.compile`` of the project calls it first.

    Inductor's FX-graph cache key leaves out the vector width its C++ kernels were generated for, and it
    rebuilds a cached kernel with the flags of the process that reads it. A cache written under AVX2 (an AVX2
    machine sharing ``/tmp`` or a home folder, or a run with ``ATEN_CPU_CAPABILITY=avx2``, the bench's AVX2
    stand-in) and read on an AVX512 CPU runs kernels written for 8 float lanes with 16: each full-vector store
    into an 8-channel BatchNorm statistic writes 32 bytes past it (seen with torch 2.14.1: heap corruption and an
    abort in the first compiled step of cnn5_w8). ``pick_vec_isa`` honours ``ATEN_CPU_CAPABILITY``, so such runs
    get their own folder."""
    try:
        from torch._inductor.cpu_vec_isa import pick_vec_isa
    except ImportError:  # torch < 2.5 kept it in codecache
        from torch._inductor.codecache import pick_vec_isa
    from torch._inductor.runtime.runtime_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):  # inductor sets the default
        return chosen
    isa = "+".join(str(pick_vec_isa()).split()) or "novec"
    folder = os.path.join(default_cache_dir(), f"isa-{isa}")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    return folder


AUTOCAST_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# fp16 autocast pays on tensor cores (Volta, compute capability 7.0, and later); bf16 is native from Ampere (8.0)
FP16_MIN_CAPABILITY = (7, 0)
BF16_MIN_CAPABILITY = (8, 0)


def cuda_has_native_bf16(capability: tuple[int, int]) -> bool:
    """Does an NVIDIA GPU of this compute capability do bf16 natively (Ampere and later)? Earlier GPUs emulate
    it, and ``torch.cuda.is_bf16_supported()`` says True for them too (``including_emulation``)."""
    return tuple(capability) >= BF16_MIN_CAPABILITY


def _given(option: str, value: str) -> str:
    """How the user set ``option``: ``--precision fp16`` for a command-line flag, ``train.precision=fp16`` else."""
    return f"{option} {value}" if option.startswith("--") else f"{option}={value}"


def choose_precision(requested: str, device_type: str, *, native_bf16: bool,
                     cuda_capability: tuple[int, int] | None = None, option: str = "train.precision") -> str:
    """``train.precision`` resolved: ``fp32``, ``bf16`` or ``fp16`` (a pure function of what the device does).

    ``auto``: bf16 where the device does it natively (a CPU with AVX512-BF16 or AMX, an Ampere or later GPU);
    fp16 autocast with a gradient scaler on a CUDA GPU without native bf16 that has tensor cores (compute
    capability 7.0 to 7.x: Volta, Turing); fp32 otherwise (older GPUs, CPUs without native bf16). ``fp32`` and
    ``bf16`` are taken as given (the caller warns about an emulated bf16). ``fp16`` is for CUDA devices only: on a
    CPU fp16 autocast is emulated on nearly every CPU, slower than fp32 and no more accurate, so it is refused.
    ``option``: where the value came from, for the error."""
    if requested in ("fp32", "bf16"):
        return requested
    if requested == "fp16":
        if device_type != "cuda":
            raise ConfigError(f"{_given(option, 'fp16')} is for CUDA GPUs (fp16 autocast with a gradient scaler); "
                              f"on a {device_type} use auto, fp32 or bf16")
        return "fp16"
    if requested != "auto":
        raise ConfigError(f"{option}: '{requested}' is not a precision (auto, fp32, bf16, fp16)")
    if native_bf16:
        return "bf16"
    if device_type == "cuda" and cuda_capability is not None and tuple(cuda_capability) >= FP16_MIN_CAPABILITY:
        return "fp16"
    return "fp32"


def evaluation_precision(trained: str, device: str) -> str:
    """The precision to evaluate a run in, given the ``train.precision`` it was trained with: the same, except
    that a run trained in fp16 on a GPU is evaluated in fp32 where fp16 is not on offer (a CPU)."""
    device = str(device)
    if trained == "fp16" and not (device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())):
        return "fp32"
    return trained


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # None = fp32
    channels_last: bool
    compile: bool | None  # None: train.compile=auto on a CPU, decided by the trainer (engine/compile.py)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @property
    def precision(self) -> str:
        return next(name for name, dtype in AUTOCAST_DTYPE.items() if dtype == self.autocast_dtype)

    def grad_scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler fp16 training needs (fp16 gradients underflow without it); None in fp32 and bf16."""
        if self.precision != "fp16":
            return None
        return torch.amp.GradScaler(self.device.type)

    def describe(self) -> str:
        cap = torch.backends.cpu.get_cpu_capability() if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)
        return (f"device={self.device} ({cap}), precision={self.precision}, "
                f"channels_last={self.channels_last}, compile={'auto' if self.compile is None else self.compile}")


def resolve_device(name: str, option: str = "train.device") -> torch.device:
    """The device ``name`` (auto, cpu, cuda, cuda:N) names here; bad input or an absent GPU is a ConfigError that
    names ``option``, where the user gave it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not is_device_name(name):
        raise ConfigError(f"{option}: '{name}' is not a device ({DEVICE_NAMES})")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{option}: {name} requested but no CUDA device is available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{option}: {name} requested but this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool | str = "auto",
                    compile: bool | str = "auto", device_option: str = "train.device",
                    precision_option: str = "train.precision") -> Runtime:
    """The device and what runs on it; ``device_option`` / ``precision_option``: where those values came from
    (``--device``, the API's ``device``), named in errors and warnings."""
    dev = resolve_device(device, device_option)
    capability = None
    if dev.type == "cuda":
        capability = torch.cuda.get_device_capability(dev)
        native_bf16 = (torch.cuda.is_bf16_supported(including_emulation=False) if torch.version.hip
                       else cuda_has_native_bf16(capability))
    else:
        native_bf16 = cpu_has_native_bf16()
    chosen = choose_precision(precision, dev.type, native_bf16=native_bf16, cuda_capability=capability,
                              option=precision_option)
    if precision == "bf16" and not native_bf16:
        auto = choose_precision("auto", dev.type, native_bf16=False, cuda_capability=capability)
        warnings.warn(f"{_given(precision_option, 'bf16')} on a {dev.type} without native bf16: it is emulated "
                      f"there (on an AVX2-only CPU about 9x slower than fp32); {_given(precision_option, 'auto')} "
                      f"would choose {auto}", stacklevel=2)
    # channels_last everywhere: oneDNN / tensor cores, and on a CPU PyTorch's NCHW max-pooling is several times
    # slower than NHWC (the small CNNs of the CPU-scale studies ran 1.26-1.42x faster per step in fp32 with
    # AVX2 kernels, the CIFAR ResNets no slower)
    cl = True if channels_last == "auto" else bool(channels_last)
    # CPU auto: decided per run by measurement (engine/compile.py: it pays for long runs of large networks)
    comp = (True if dev.type == "cuda" else None) if compile == "auto" else bool(compile)
    if comp and dev.type == "cpu":
        missing = cpu_compiler_missing()
        if missing:
            raise ConfigError("train.compile=true on the CPU needs a C++ compiler for torch.compile (apt-get install "
                              f"g++, or set CXX), or set train.compile=false ({missing})")
    return Runtime(dev, AUTOCAST_DTYPE[chosen], cl, comp)


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """torch's CPU threads set to ``threads`` (None: as they are) for the block, and what they were restored after
    it: a command called in-process (tests, a notebook) leaves no --threads behind."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def seed_epoch(seed: int, epoch: int) -> torch.Generator:
    """Reseed the global torch RNG (dropout, init) for this epoch and return the CPU generator for
    the epoch's random parameters (mixing). Seeding per epoch makes a resumed run bitwise equal to
    an uninterrupted one without saving generator states."""
    # streams 0 .. world_size belong to the loader; these two sit far above them
    torch.manual_seed(epoch_seed(seed, epoch, 1_000_001))
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, 1_000_002))
