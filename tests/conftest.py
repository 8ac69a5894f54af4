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
    """A C kernel library (engine/small_bn, small_pool) whose functions pass through ``hook(name, function)``."""

    def __init__(self, lib, hook):
        self._lib, self._hook = lib, hook

    def __getattr__(self, name):
        return self._hook(name, getattr(self._lib, name))


class KernelWrappers:
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


@pytest.fixture
def kernel_wrappers() -> KernelWrappers:
    """Wrappers of a C kernel library for the kernels' tests: counting calls, or one bit wrong."""
    return KernelWrappers()
