"""Shared fixtures: small datasets written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import pytest

from mixdistill.data.synthetic import write_fashion_like


def pytest_collection_modifyitems(config, items):
    """``needs_cxx`` tests compile for the CPU, which needs a C++ compiler (a bare Debian has none)."""
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
