"""``train.compile=auto`` on a CPU: measured once per kind of run, decided per run by its length."""

from __future__ import annotations

import json
import os
import statistics
import threading
import time

import pytest
import torch

from mixdistill.config import load_config
from mixdistill.engine import compile as compile_mod
from mixdistill.engine.checkpoint import load_checkpoint
from mixdistill.engine.trainer import Trainer, train


def test_decide_compiles_only_when_the_run_repays_the_compile():
    probe = {"eager_step_s": 0.030, "compiled_step_s": 0.020, "compile_s": 20.0}
    assert compile_mod.decide(probe, 3000).compile  # saves 30 s for 20 s
    no = compile_mod.decide(probe, 1000)  # saves 10 s for 20 s
    assert not no.compile and "repaid after 2000 steps" in no.reason
    assert compile_mod.decide({**probe, "warm_compile_s": 2.0}, 1000).compile  # a cache hit costs less
    slower = compile_mod.decide({**probe, "compiled_step_s": 0.031}, 10**6)
    assert not slower.compile and "does not pay" in slower.reason


def test_short_runs_are_not_probed_and_probes_are_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr("mixdistill.engine.runtime.cpu_compiler_missing", lambda: None)
    calls = []

    def measure():
        calls.append(1)
        return {"eager_step_s": 0.03, "compiled_step_s": 0.02, "compile_s": 5.0}

    short = compile_mod.decide_cpu_compile("k", compile_mod.MIN_PROBE_STEPS - 1, measure)
    assert not short.compile and "too short" in short.reason and not calls
    assert compile_mod.decide_cpu_compile("k", 10_000, measure).compile and len(calls) == 1
    kept = compile_mod.decide_cpu_compile("k", 100, measure)  # the kept probe decides for a shorter run
    assert not kept.compile and "repaid after 500 steps" in kept.reason
    assert len(calls) == 1, "a kept probe was measured again"
    assert "k" in json.loads((tmp_path / "compile_probes.json").read_text())


def test_the_compiler_is_looked_for_only_when_a_run_would_compile_or_measure(monkeypatch, tmp_path):
    """Looking imports inductor and torch._dynamo: an eager run (too short to probe, or a kept probe that says no)
    does not look; a kept probe that says yes, or a new probe, does, and no compiler means no compile."""
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path))
    looked = []
    monkeypatch.setattr(compile_mod, "cpu_compiler_missing", lambda: looked.append(1) or "g++ not found")
    probe = {"eager_step_s": 0.03, "compiled_step_s": 0.02, "compile_s": 5.0}  # repaid after 500 steps
    (tmp_path / "compile_probes.json").write_text(json.dumps({"kept": probe}))
    assert "too short" in compile_mod.decide_cpu_compile("new", compile_mod.MIN_PROBE_STEPS - 1, dict).reason
    assert "repaid after 500" in compile_mod.decide_cpu_compile("kept", 400, dict).reason
    assert not looked
    for key, steps in (("kept", 1000), ("new", compile_mod.MIN_PROBE_STEPS)):
        decision = compile_mod.decide_cpu_compile(key, steps, lambda: pytest.fail("measured without a compiler"))
        assert not decision.compile and decision.reason == "no C++ compiler for torch.compile (g++ not found)"
    assert len(looked) == 2


def test_a_probe_keeps_waiting_only_the_runs_of_its_own_kind(monkeypatch, tmp_path):
    """Side by side in a grid: a run of a kind already measured decides at once while another process measures
    another kind; a run of the kind being measured waits for that measurement instead of taking its own."""
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path))
    monkeypatch.setattr(compile_mod, "cpu_compiler_missing", lambda: None)
    kept = {"eager_step_s": 0.03, "compiled_step_s": 0.02, "compile_s": 5.0}
    compile_mod.decide_cpu_compile("b", 10_000, lambda: kept)
    measuring, release = threading.Event(), threading.Event()

    def slow_probe():
        measuring.set()
        release.wait(30)
        return kept

    def decide_in_thread(key, measure, out):
        thread = threading.Thread(target=lambda: out.append(compile_mod.decide_cpu_compile(key, 10_000, measure)),
                                  daemon=True)
        thread.start()
        return thread

    first, other_kind, same_kind = [], [], []
    prober = decide_in_thread("a", slow_probe, first)
    try:
        assert measuring.wait(10)
        decide_in_thread("b", lambda: pytest.fail("b was measured again"), other_kind).join(10)
        assert other_kind and other_kind[0].compile, "a run of a measured kind waited for another kind's probe"
        waiter = decide_in_thread("a", lambda: pytest.fail("a was measured twice"), same_kind)
        time.sleep(0.5)
        assert not same_kind, "a run of the kind being measured did not wait for the measurement"
    finally:
        release.set()  # ends the probe (and so every waiting thread), the test passed or not
    prober.join(10)
    waiter.join(10)
    assert first and same_kind and same_kind[0].compile
    assert set(json.loads((tmp_path / "compile_probes.json").read_text())) == {"a", "b"}


@pytest.mark.slow
@pytest.mark.needs_cxx
def test_probing_does_not_change_the_run_and_resume_keeps_the_decision(tiny_run_overrides, monkeypatch, tmp_path,
                                                                       interrupt_at, capsys):
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(compile_mod, "MIN_PROBE_STEPS", 1)
    teacher = load_config(None, tiny_run_overrides + ["name=t", "optim.epochs=1"])
    train(teacher, quiet=True)
    base = tiny_run_overrides + ["method=kd", f"model.teacher_checkpoint={teacher.run_dir / 'last.pt'}"]
    measured = []
    real_probe = compile_mod.probe
    monkeypatch.setattr("mixdistill.engine.trainer.probe", lambda *a: measured.append(1) or real_probe(*a))
    # the probe runs on copies: a run that probed and chose eager computes exactly what compile=false does
    monkeypatch.setattr("mixdistill.engine.trainer.decide_cpu_compile",
                        lambda key, total, measure: compile_mod.CompileDecision(False, f"measured {measure()}"))
    auto = load_config(None, base + ["name=auto", "train.compile=auto"])
    train(auto)
    assert measured == [1] and "compile: no (measured {'eager_step_s'" in capsys.readouterr().err
    eager = load_config(None, base + ["name=eager", "train.compile=false"])
    train(eager, quiet=True)
    a, b = load_checkpoint(auto.run_dir / "last.pt"), load_checkpoint(eager.run_dir / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["compile"] is False
    # a run that compiled resumes compiled without probing again
    monkeypatch.undo()
    monkeypatch.setenv("MIXDISTILL_CACHE", str(tmp_path / "cache2"))
    monkeypatch.setattr("mixdistill.engine.trainer.decide_cpu_compile",
                        lambda key, total, measure: compile_mod.CompileDecision(True, "told to"))
    killed = load_config(None, base + ["name=killed", "train.compile=auto"])
    with interrupt_at(1):
        train(killed, quiet=True)
    assert load_checkpoint(killed.run_dir / "last.pt")["compile"] is True
    monkeypatch.setattr("mixdistill.engine.trainer.decide_cpu_compile", lambda *a: pytest.fail("decided again"))
    resumed = Trainer(killed, resume=True, quiet=True)
    assert resumed.runtime.compile is True and "from its checkpoint" in resumed.compile_decision.reason
    assert resumed.fit()["compiled"] is True


def test_inductor_cache_is_kept_per_vector_isa(monkeypatch, tmp_path):
    """Inductor's cache key leaves out the vector width: code generated for AVX2 and rebuilt on an AVX512 CPU
    wrote past 8-channel BatchNorm buffers. So every compile uses a folder of this CPU's instruction set."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa
    from torch._inductor.runtime.runtime_utils import default_cache_dir

    from mixdistill.engine.runtime import keep_inductor_cache_per_cpu

    isa = "+".join(str(pick_vec_isa()).split()) or "novec"
    for inductor_default in (None, default_cache_dir()):  # unset, or set by inductor itself on first use
        if inductor_default is None:
            monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
        else:
            monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", inductor_default)
        folder = keep_inductor_cache_per_cpu()
        assert folder == os.path.join(default_cache_dir(), f"isa-{isa}")
        assert torch._inductor.runtime.runtime_utils.cache_dir() == folder  # what inductor will use
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # a user's own folder is kept
    assert keep_inductor_cache_per_cpu() == str(tmp_path / "mine")

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # every compile entry point goes through it
    compile_mod.compile_in_place(torch.nn.Linear(2, 2), None)
    assert torch._inductor.runtime.runtime_utils.cache_dir().endswith(f"isa-{isa}")


def test_probe_times_eager_and_compiled_steps_in_turn(monkeypatch):
    """A probe measured while the machine's load changes must not charge the change to one side: the eager and
    the compiled copy take their timed steps alternately, and the medians are what is kept."""
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.student = torch.nn.Linear(2, 2)

        def compile_targets(self):
            return [self.student]

    monkeypatch.setattr(compile_mod, "compile_in_place", lambda module, mode: setattr(module, "tag", "compiled"))
    order, clock = [], iter(range(1, 1000))

    def fake_steps(model, batch, runtime, n):  # step i of the probe "takes" i ms (compiled) or 10*i ms (eager)
        kind = getattr(model.student, "tag", "eager")
        order.append(kind)
        return [(0.010 if kind == "eager" else 0.001) * next(clock)]

    monkeypatch.setattr(compile_mod, "_timed_steps", fake_steps)
    result = compile_mod.probe(Tiny(), None, None)
    assert order == ["eager", "compiled"] + ["eager", "compiled"] * compile_mod.PROBE_STEPS  # warm-up, then in turn
    eager = [0.010 * t for t in range(3, 3 + 2 * compile_mod.PROBE_STEPS, 2)]
    compiled = [0.001 * t for t in range(4, 4 + 2 * compile_mod.PROBE_STEPS, 2)]
    assert result["eager_step_s"] == pytest.approx(statistics.median(eager))
    assert result["compiled_step_s"] == pytest.approx(statistics.median(compiled))
    assert result["compile_s"] == 0.0 and "error" not in result  # first compiled step (2 ms) < an eager step
