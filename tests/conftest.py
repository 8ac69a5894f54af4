"""Shared fixtures: small datasets written in the real on-disk formats, and the precision a test runs in.

Precision. ``train.precision=auto`` picks bf16 on a CPU with native bf16 (AVX512-BF16 / AMX) and fp32 on an
AVX2-only one, so a test that compares numbers would pass on one CPU kind and fail on the other. Therefore:

* every test runs with native-bf16 detection off (``auto`` means fp32 on every machine), unless it asks
  for the ``precision`` fixture;
* a test that takes ``precision`` runs once per precision in ``--precisions`` (default ``fp32,bf16``, so
  the bf16 paths are tested on every machine, emulated where bf16 is not native: keep those tests small),
  sets ``train.precision`` itself and compares with the ``tolerance`` fixture, which scales with it.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from mixdistill.data.synthetic import write_fashion_like

PRECISIONS = ("fp32", "bf16")
# relative / absolute tolerance of a comparison between two computations that should agree up to rounding
TOLERANCE = {"fp32": {"rel": 1e-4, "abs": 1e-5}, "bf16": {"rel": 2e-2, "abs": 1e-3}}


def pytest_addoption(parser):
    parser.addoption("--precisions", default=",".join(PRECISIONS),
                     help="precisions the precision-sensitive tests run in (comma-separated: fp32,bf16)")


def pytest_generate_tests(metafunc):
    if "precision" in metafunc.fixturenames:
        chosen = [p.strip() for p in metafunc.config.getoption("precisions").split(",") if p.strip()]
        unknown = set(chosen) - set(PRECISIONS)
        if unknown:
            raise pytest.UsageError(f"--precisions: unknown {', '.join(sorted(unknown))} (choose from fp32, bf16)")
        metafunc.parametrize("precision", chosen)


@pytest.fixture
def tolerance(precision) -> dict:
    """``pytest.approx`` keywords (rel, abs) for the test's precision."""
    return TOLERANCE[precision]


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """mixdistill's own cache (compile probes) in a temporary folder, never the user's (subprocesses inherit it)."""
    import os

    os.environ["MIXDISTILL_CACHE"] = str(tmp_path_factory.mktemp("mixdistill_cache"))


@pytest.fixture(autouse=True)
def _auto_precision_is_fp32(request, monkeypatch):
    """``precision=auto`` resolves to fp32 on every CPU kind for tests that do not choose a precision."""
    if "precision" not in request.fixturenames:
        import torch

        for check in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
            monkeypatch.setattr(torch.cpu, check, lambda: False, raising=False)


class Interrupted(Exception):
    """What ``interrupt_at`` raises in place of an epoch: the run dies after the previous epoch's checkpoint."""


@pytest.fixture
def interrupt_at():
    """``with interrupt_at(2): train(cfg)``: the run dies as epoch 2 (0-based) starts, as a killed process
    would after epoch 1's checkpoint; the block expects that and the trainer is restored after it."""
    import contextlib

    from mixdistill.engine.trainer import Trainer

    @contextlib.contextmanager
    def interrupted(epoch: int):
        original = Trainer._train_epoch

        def dies(self, e, epochs, logger):
            if e == epoch:
                raise Interrupted
            return original(self, e, epochs, logger)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(Trainer, "_train_epoch", dies)
            with pytest.raises(Interrupted):
                yield

    return interrupted


# The source checkout the tests come from: `checkout` tests read its files (the example configs, named
# configs/NAME.yaml from the repository root where pytest runs; README.md, pyproject.toml, constraints.txt,
# src/, docs/results and benchmarks/). Outside one (tests/ copied next to an installed wheel) they are skipped.
ROOT = Path(__file__).resolve().parents[1]
CHECKOUT_FILES = ("configs", "README.md", "pyproject.toml", "constraints.txt", "src/mixdistill", "docs/results",
                  "benchmarks")


def pytest_configure(config):
    config.addinivalue_line("markers", "checkout: reads files of the source checkout (" + ", ".join(CHECKOUT_FILES)
                            + "); skipped where the tests run outside one, e.g. against an installed wheel")


def pytest_collection_modifyitems(config, items):
    """``checkout`` tests need the source checkout's files; ``needs_cxx`` tests compile for the CPU, which
    needs a C++ compiler (a bare Debian has none)."""
    missing_files = [f for f in CHECKOUT_FILES if not (ROOT / f).exists()]
    if missing_files:
        reason = (f"needs the source checkout's {', '.join(missing_files)}: these tests run from {ROOT}, "
                  "not a checkout (e.g. a copy of tests/ against an installed wheel)")
        for item in items:
            if item.get_closest_marker("checkout"):
                item.add_marker(pytest.mark.skip(reason=reason))
    marked = [item for item in items if item.get_closest_marker("needs_cxx")]
    if not marked:
        return
    from mixdistill.engine.runtime import cpu_compiler_missing

    missing = cpu_compiler_missing()
    if missing:
        for item in marked:
            item.add_marker(pytest.mark.skip(reason=f"torch.compile on the CPU needs a C++ compiler ({missing})"))


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """A small Fashion-MNIST lookalike in the real IDX layout (gzipped), 800 train / 200 test."""
    return write_fashion_like(tmp_path_factory.mktemp("fmnist"), n_train=800, n_test=200)


@pytest.fixture
def tiny_run_overrides(fmnist_root, tmp_path):
    """Overrides for a seconds-long CPU training run on the fixture data."""
    return [f"data.root={fmnist_root}", f"output_dir={tmp_path / 'runs'}", "data.batch_size=64",
            "data.eval_batch_size=200", "model.student=cnn5_w8", "optim.schedule=onecycle", "optim.milestones=[]",
            "optim.lr=0.05", "optim.epochs=3", "train.progress=false", "train.tensorboard=false",
            "train.device=cpu", "train.precision=fp32"]


class _KernelWrapper:
    """A C kernel library (engine/small_bn, small_pool, small_conv) whose functions pass through
    ``hook(name, function)``."""

    def __init__(self, lib, hook):
        self._lib, self._hook = lib, hook

    def __getattr__(self, name):
        return self._hook(name, getattr(self._lib, name))


class KernelWrappers:
    @staticmethod
    def fresh_state(kernel, monkeypatch) -> None:
        """``kernel`` (engine.small_bn, small_pool or small_conv) on, with nothing compared yet and its switch unset,
        for the test that calls this; all put back after it."""
        monkeypatch.setattr(kernel, "_state", {"disabled": None})
        monkeypatch.setattr(kernel, "_checked", set())
        monkeypatch.delenv(kernel.SWITCH, raising=False)

    @staticmethod
    def counting(lib) -> tuple[_KernelWrapper, list[str]]:
        """``lib`` recording the name of every function called on it (the list returned)."""
        calls: list[str] = []
        return _KernelWrapper(lib, lambda name, fn: calls.append(name) or fn), calls

    @staticmethod
    def one_bit_off(lib, function: str, output_arg: int) -> _KernelWrapper:
        """``lib`` whose ``function``, after running, flips the lowest bit of the first uint16 its pointer argument
        ``output_arg`` points to (an output the self-checks and benchmarks must catch)."""
        def hook(name, fn):
            if name != function:
                return fn

            def wrong(*args):
                rc = fn(*args)
                ctypes.c_uint16.from_address(args[output_arg]).value ^= 1
                return rc
            return wrong
        return _KernelWrapper(lib, hook)

    @staticmethod
    def train(model, steps: int, runtime, seed: int = 0, no_grad_forward: bool = False) -> list:
        """``steps`` SGD steps of ``model`` on random 28x28 batches under ``runtime``'s autocast (channels_last), and
        with ``no_grad_forward`` a last forward in eval mode; returns every forward's logits."""
        import torch
        import torch.nn.functional as F

        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)  # dropout (AlexNet)
        logits = []
        for _ in range(steps):
            x = torch.randn(64, 1, 28, 28, generator=g).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (64,), generator=g)
            with runtime.autocast():
                out = model(x)
            F.cross_entropy(out.float(), y).backward()
            opt.step()
            opt.zero_grad()
            logits.append(out)
        if no_grad_forward:
            with torch.no_grad(), runtime.autocast():
                logits.append(model.eval()(x))  # the no-grad forward (a teacher's, an evaluation)
            model.train()
        return logits

    @staticmethod
    def _aten_and_ours(install, arch: str):
        """(bf16 CPU runtime, a channels-last ``arch`` in training mode, its copy with ``install`` applied, how many
        layers that swapped)."""
        import copy

        import torch

        from mixdistill.engine.runtime import resolve_runtime
        from mixdistill.models import create_model

        runtime = resolve_runtime("cpu", "bf16", True, False)
        torch.manual_seed(0)
        aten = create_model(arch, 10, 1).train().to(memory_format=torch.channels_last)
        ours = copy.deepcopy(aten)
        return runtime, aten, ours, install(ours)

    def assert_trains_like_aten(self, kernel, install, arch: str, swapped: int, monkeypatch) -> list[str]:
        """A CPU-study net ``arch`` under bf16 autocast, channels_last, with ``swapped`` layers swapped by ``install``:
        3 SGD steps and a no-grad forward give ATen's logits and weights bit for bit, and the kernel stays on. Returns
        the names of the kernel's functions called, in order."""
        import torch

        runtime, aten, ours, swaps = self._aten_and_ours(install, arch)
        assert swaps == swapped
        counting, calls = self.counting(kernel._library()[0])
        monkeypatch.setattr(kernel, "_library", lambda: (counting, ""))
        for a, o in zip(self.train(aten, 3, runtime, no_grad_forward=True),
                        self.train(ours, 3, runtime, no_grad_forward=True), strict=True):
            assert torch.equal(a.view(torch.int16), o.view(torch.int16))
        sa, so = aten.state_dict(), ours.state_dict()
        assert sa.keys() == so.keys() and all(torch.equal(sa[k], so[k]) for k in sa)
        assert kernel.status() == "on"
        return calls

    def assert_a_wrong_kernel_is_caught(self, kernel, install, direction: str, monkeypatch,
                                        output_arg: int | None = None, **train_options):
        """``kernel`` (engine.small_bn, small_pool or small_conv) with one bit of its ``direction``'s output (its
        function's pointer argument ``output_arg``; default 1 forward, 2 backward) wrong: the first call's comparison
        with ATen catches it, warns, switches the kernel off and uses ATen's result, so a cnn5_w8 whose layers
        ``install`` swapped trains 2 steps to ATen's logits and weights."""
        import torch

        runtime, aten, ours, _ = self._aten_and_ours(install, "cnn5_w8")
        name = kernel.__name__.rsplit(".", 1)[1]
        if output_arg is None:
            output_arg = 1 if direction == "forward" else 2
        wrong = self.one_bit_off(kernel._library()[0], f"{name}_{direction}", output_arg)
        monkeypatch.setattr(kernel, "_library", lambda: (wrong, ""))
        with pytest.warns(RuntimeWarning, match=f"differed from ATen's {direction}"):
            logits = self.train(ours, 2, runtime, **train_options)
        for a, o in zip(self.train(aten, 2, runtime, **train_options), logits, strict=True):
            assert torch.equal(a, o)
        sa, so = aten.state_dict(), ours.state_dict()
        assert all(torch.equal(sa[k], so[k]) for k in sa)
        assert kernel.status().startswith(f"off (differed from ATen's {direction}")

    @staticmethod
    def assert_off_without_a_compiler_or_avx512(kernel, install, net, monkeypatch):
        """No C compiler: ``kernel`` is off and says why, and ``install`` swaps nothing in ``net``; with ATen's AVX2
        kernels it is off too."""
        import torch

        from mixdistill.engine import ckernels

        monkeypatch.setattr(kernel, "_library", kernel._library.__wrapped__)
        monkeypatch.setattr(ckernels.shutil, "which", lambda name: None)
        monkeypatch.delenv("CC", raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        assert kernel.status() == "off (no C compiler)"
        before = [type(m) for m in net]
        assert install(net) == 0 and [type(m) for m in net] == before
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
        assert kernel.status().startswith("off (ATen's AVX2 kernels")

    @staticmethod
    def assert_a_bf16_kd_run_is_the_same_with_or_without(switch: str, log_label: str, overrides, monkeypatch, capsys):
        """A channels-last bf16 KD run (cnn5_w8 from a 1-epoch teacher) logs ``log_label: on, 2 layers``; with the
        environment variable ``switch`` at 0 it logs the kernel off and ends with the same weights and test loss,
        bit for bit."""
        import torch

        from mixdistill.config import load_config
        from mixdistill.engine.checkpoint import load_checkpoint
        from mixdistill.engine.trainer import train

        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)  # bf16 as here
        teacher = load_config(None, overrides + ["name=teacher", "optim.epochs=1"])
        train(teacher, quiet=True)
        common = overrides + ["method=kd", "train.precision=bf16", "train.channels_last=true",
                              "optim.epochs=2", f"model.teacher_checkpoint={teacher.run_dir / 'last.pt'}"]
        summaries, weights = {}, {}
        for way in ("on", "off"):
            monkeypatch.setenv(switch, "1" if way == "on" else "0")
            cfg = load_config(None, common + [f"name=kd_{way}"])
            capsys.readouterr()
            summaries[way] = train(cfg)
            log = capsys.readouterr().err
            expected = "on, 2 layers" if way == "on" else f"off ({switch}=0), 0 layers"
            assert f"{log_label}: {expected}" in log
            weights[way] = load_checkpoint(cfg.run_dir / "last.pt")["model"]
        assert weights["on"].keys() == weights["off"].keys()
        assert all(torch.equal(weights["on"][k], weights["off"][k]) for k in weights["on"])
        assert summaries["on"]["last_test_loss"] == summaries["off"]["last_test_loss"]


@pytest.fixture
def kernel_wrappers() -> KernelWrappers:
    """The C kernels' test kit: their library wrapped (counting calls, or one bit wrong), a few training steps, and
    the checks both kernels must pass (a wrong kernel caught, off without a compiler, a KD run unchanged)."""
    return KernelWrappers()
