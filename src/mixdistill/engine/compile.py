"""``train.compile=auto`` on a CPU: compile when it pays, measured rather than guessed.

On a CUDA device ``auto`` compiles. On a CPU what ``torch.compile`` buys depends on the machine and the
networks: a few per cent on small CNNs with AVX2 or AVX512-BF16 (sometimes nothing), ~45% per step for the
CRD ResNets on a CPU with AMX; against 10-30 s of compile time per run. So the first run of a kind (CPU,
torch, threads, method, networks, batch, precision, layout) that is long enough to be worth it
(:data:`MIN_PROBE_STEPS`) measures it on copies of its models: a compile, then eager and compiled training steps
in turn (``probe``). The measurement is kept in ``~/.cache/mixdistill/compile_probes.json``
(``MIXDISTILL_CACHE`` moves it), so the rest of a grid decides at once; a probe under way holds up only the
runs of its own kind (one lock per kind). A run compiles when the time saved
over its whole schedule exceeds the compile time it would pay (``decide``); inductor's own caches
(FX graph and AOT autograd, on by default; kept in ``/tmp/torchinductor_$USER/isa-<vector ISA>``, one folder per
CPU instruction set: ``runtime.keep_inductor_cache_per_cpu``) make every later compile of the same networks a
cache hit, so a grid pays the full compile once per architecture.

The probe never touches the run's own models (copies), the global RNG is reseeded at every epoch, and the
loaders are functions of (seed, epoch): probing does not change what the run computes. A resumed run takes
its decision from its checkpoint, so it computes exactly what the interrupted run would have.
"""

from __future__ import annotations

import copy
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from mixdistill.distill import StepInfo
from mixdistill.engine.build import model_label
from mixdistill.engine.runtime import cpu_compiler_missing, keep_inductor_cache_per_cpu
from mixdistill.engine.small_bn import use_plain_batchnorm
from mixdistill.engine.small_conv import use_plain_first_conv
from mixdistill.engine.small_pool import use_plain_max_pool
from mixdistill.files import hold_lock, write_json
from mixdistill.machine import cache_dir, cpu_name
from mixdistill.models import BUILT_IN, is_external

MIN_PROBE_STEPS = 1000  # shorter runs never compile by default on a CPU: even a cache hit costs seconds
PROBE_METHOD = 2  # 2: eager and compiled steps in turn (1: all eager steps, then all compiled ones)
PROBE_STEPS = 8  # timed steps of each kind, in turn (after one warm-up step each); the medians are kept


@dataclass
class CompileDecision:
    compile: bool
    reason: str
    probe: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def compile_in_place(module: nn.Module, mode: str | None) -> None:
    """``torch.compile`` a module's ``forward`` in place (state-dict keys unchanged), and its
    ``forward_features`` as well where it has one: CRD and Cut^nMix train through that entry point. Its
    BatchNorms and max-pools become torch's own again (engine/small_bn and small_pool are for eager runs): dynamo
    then traces exactly the graph it traced before they existed, so a compiled run computes what it did."""
    keep_inductor_cache_per_cpu()
    use_plain_batchnorm(module)
    use_plain_max_pool(module)
    use_plain_first_conv(module)
    module.compile(mode=mode)
    if callable(getattr(module, "forward_features", None)):
        module.forward_features = torch.compile(module.forward_features, mode=mode)


def cache_path() -> Path:
    return cache_dir() / "compile_probes.json"


def _signature(module: nn.Module | None) -> str:
    """A network by its class and size (a teacher is the same network whichever file its weights came from)."""
    if module is None:
        return "-"
    module = getattr(module, "net", module)  # the fast teacher's folded / int8 net
    return f"{type(module).__name__}:{sum(p.numel() for p in module.parameters())}"


def _student_label(cfg, distiller: nn.Module) -> str:
    """The trained network(s) by name; a plugin's (``register_model``) also by its class and size, since its name
    need not pin one network (an edited plugin, or two projects sharing the cache)."""
    label = model_label(cfg)
    if any(name not in BUILT_IN and not is_external(name) for name in label.split(",")):
        label += "|" + "+".join(_signature(m) for m in (getattr(distiller, "peers", None) or [distiller.student]))
    return label


def probe_key(cfg, distiller: nn.Module, batch_shape: tuple[int, ...], runtime) -> str:
    """What a step's eager and compiled speeds depend on, and how they were measured (probes kept from an earlier
    way of measuring are measured again)."""
    return "|".join(str(x) for x in (
        f"probe{PROBE_METHOD}", cpu_name(), torch.backends.cpu.get_cpu_capability(), torch.__version__,
        cfg.train.threads,
        cfg.method.name, _student_label(cfg, distiller), _signature(getattr(distiller, "teacher", None)),
        cfg.augment.name,
        tuple(batch_shape), runtime.precision, runtime.channels_last, cfg.train.int8_teacher))


def decide(probe: dict, total_steps: int) -> CompileDecision:
    """Compile when the time a run saves over ``total_steps`` exceeds the compile time it pays."""
    saving = probe["eager_step_s"] - probe["compiled_step_s"]
    cost = probe.get("warm_compile_s", probe["compile_s"])
    numbers = (f"eager {1e3 * probe['eager_step_s']:.1f} ms/step, compiled {1e3 * probe['compiled_step_s']:.1f} "
               f"ms/step, compile {cost:.1f} s")
    if "error" in probe:
        return CompileDecision(False, f"compiling failed when measured ({probe['error']})", probe)
    if saving <= 0:
        return CompileDecision(False, f"compiling does not pay here ({numbers})", probe)
    repaid_after = cost / saving
    if repaid_after >= total_steps:
        return CompileDecision(False, f"a {total_steps}-step run would not repay the compile ({numbers}: repaid "
                                      f"after {repaid_after:.0f} steps)", probe)
    return CompileDecision(True, f"{numbers}: repaid after {repaid_after:.0f} of {total_steps} steps", probe)


def _timed_steps(distiller, batch, runtime, n: int) -> list[float]:
    images, labels, indices = batch
    times = []
    for step in range(n):
        info = StepInfo(epoch=0, step=step, epochs=1, generator=torch.Generator().manual_seed(step), indices=indices)
        started = time.perf_counter()
        with runtime.autocast():
            losses = distiller.forward_train(images, labels, info).losses
        sum(losses.values()).backward()
        for p in distiller.parameters():
            p.grad = None
        times.append(time.perf_counter() - started)
    return times


def probe(distiller: nn.Module, batch, runtime) -> dict:
    """Seconds per training step (forward + backward) of copies of ``distiller`` eager and compiled, and the
    compile time (the compiled copy's first step minus an eager step). After one warm-up step each, the two
    copies take PROBE_STEPS steps in turn, eager then compiled, and the median of each is kept: load that comes
    and goes on the machine falls on both alike, as in the bench's interleaved rounds."""
    eager = copy.deepcopy(distiller).train()
    compiled = copy.deepcopy(distiller).train()
    for module in compiled.compile_targets():
        compile_in_place(module, None)
    teacher = getattr(compiled, "teacher", None)
    if hasattr(teacher, "compile_net"):
        teacher.compile_net()
    _timed_steps(eager, batch, runtime, 1)
    measured = {"measured": time.strftime("%Y-%m-%d %H:%M:%S")}
    eager_times, compiled_times = [], []
    try:
        first = _timed_steps(compiled, batch, runtime, 1)[0]
        for _ in range(PROBE_STEPS):
            eager_times += _timed_steps(eager, batch, runtime, 1)
            compiled_times += _timed_steps(compiled, batch, runtime, 1)
    except Exception as e:  # a backend that cannot compile these networks here: never compile them
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        eager_s = statistics.median(eager_times or _timed_steps(eager, batch, runtime, 3))
        return {"eager_step_s": eager_s, **measured, "compiled_step_s": float("inf"), "compile_s": 0.0,
                "error": f"{type(e).__name__}: {detail}"}
    eager_s = statistics.median(eager_times)
    return {"eager_step_s": eager_s, **measured, "compiled_step_s": statistics.median(compiled_times),
            "compile_s": max(0.0, first - eager_s)}


def _read_probes(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _probes_lock(path: Path, key: str | None = None) -> Path:
    """The lock for changing the probes file (``key`` None), or for measuring one kind of run: one per kind, so a
    probe of one kind keeps waiting only the runs of that kind (which would otherwise measure it again), never a
    run of another kind beside it, whose decision is already kept."""
    if key is None:
        return path.with_name(path.name + ".lock")
    return path.parent / "probe_locks" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}.lock"


def decide_cpu_compile(key: str, total_steps: int, measure) -> CompileDecision:
    """The decision for a CPU run with ``train.compile=auto``: from the kept probe of ``key``, or from a new
    one (``measure()``) when the run is long enough to be worth probing. The probes file is written whole, so
    it is read without a lock. The C++ compiler is looked for only when the run would compile or measure: looking
    imports inductor, and with it torch._dynamo (1-2 s in a fresh process such as a grid's worker), which an eager
    run never needs."""
    path = cache_path()
    probes = _read_probes(path)
    if key not in probes and total_steps < MIN_PROBE_STEPS:
        return CompileDecision(False, f"a run of {total_steps:,} steps is too short to repay a compile "
                                      f"(runs of {MIN_PROBE_STEPS:,} steps or more are measured)")
    kept = decide(probes[key], total_steps) if key in probes else None
    if kept is not None and not kept.compile:
        return kept
    missing = cpu_compiler_missing()
    if missing:
        return CompileDecision(False, f"no C++ compiler for torch.compile ({missing})")
    if key not in probes:
        with hold_lock(_probes_lock(path, key), "measuring torch.compile", wait=True):
            probes = _read_probes(path)  # another process may have measured this kind while we waited
            if key not in probes:
                measured = measure()
                with hold_lock(_probes_lock(path), "writing the compile probes", wait=True):
                    probes = _read_probes(path)
                    probes[key] = measured
                    write_json(path, probes)
    return decide(probes[key], total_steps)


def record_warm_compile(key: str, seconds: float) -> None:
    """Keep the compile time a run actually paid (inductor's cache warm), which later decisions use."""
    path = cache_path()
    with hold_lock(_probes_lock(path), "writing the compile probes", wait=True):
        probes = _read_probes(path)
        if key in probes and "warm_compile_s" not in probes[key]:
            probes[key]["warm_compile_s"] = seconds
            write_json(path, probes)
