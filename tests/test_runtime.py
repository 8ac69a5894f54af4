"""``resolve_runtime``: precision, layout and compile follow what the hardware does natively."""

from __future__ import annotations

import pytest
import torch

from mixdistill.engine import runtime as rt
from mixdistill.errors import ConfigError


@pytest.fixture
def cpu_bf16(monkeypatch):
    """Pretend the CPU has (True) or lacks (False) native bf16, with ATen running its AVX512 kernels."""
    def set_native(native: bool):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    return set_native


def test_a_bf16_cpu_running_avx2_kernels_is_not_native(cpu_bf16, monkeypatch):
    cpu_bf16(True)
    assert rt.cpu_has_native_bf16()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")  # ATEN_CPU_CAPABILITY=avx2
    assert not rt.cpu_has_native_bf16() and rt.resolve_runtime("cpu", "auto", "auto", "auto").precision == "fp32"


def test_auto_precision_is_bf16_only_where_native(cpu_bf16):
    cpu_bf16(False)
    r = rt.resolve_runtime("cpu", "auto", "auto", "auto")
    assert r.autocast_dtype is None and r.precision == "fp32" and r.channels_last and r.compile is None
    cpu_bf16(True)
    r = rt.resolve_runtime("cpu", "auto", "auto", "auto")
    assert r.autocast_dtype is torch.bfloat16 and r.channels_last
    assert rt.resolve_runtime("cpu", "fp32", "auto", "auto").autocast_dtype is None  # the user's word wins
    cpu_bf16(False)
    with pytest.warns(UserWarning, match="emulated"):  # the user's word wins, with a warning
        assert rt.resolve_runtime("cpu", "bf16", "auto", "auto").autocast_dtype is torch.bfloat16


def test_autocast_context_matches_precision(cpu_bf16):
    cpu_bf16(True)
    r = rt.resolve_runtime("cpu", "auto", False, False)
    with r.autocast():
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype is torch.bfloat16
    cpu_bf16(False)
    with rt.resolve_runtime("cpu", "auto", False, False).autocast():
        y = torch.nn.functional.linear(torch.randn(2, 3), torch.randn(4, 3))
    assert y.dtype is torch.float32


def test_explicit_layout_and_compile_are_kept():
    r = rt.resolve_runtime("cpu", "fp32", True, False)
    assert r.channels_last and not r.compile


@pytest.mark.needs_cxx
def test_cpu_compile_allowed_with_a_compiler():
    assert rt.cpu_compiler_missing() is None
    assert rt.resolve_runtime("cpu", "fp32", False, True).compile


def test_cpu_compile_without_compiler_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(rt, "cpu_compiler_missing", lambda: "no C++ compiler found")
    with pytest.raises(ConfigError, match=r"train.compile=true on the CPU needs a C\+\+ compiler"):
        rt.resolve_runtime("cpu", "fp32", False, True)
    assert not rt.resolve_runtime("cpu", "fp32", False, "auto").compile  # auto stays off: no error


def test_bad_device_is_a_config_error():
    with pytest.raises(ConfigError, match="is not a device"):
        rt.resolve_runtime("gpu0", "auto", "auto", "auto")


@pytest.mark.parametrize("name, message", [
    ("tpu", "--device: 'tpu' is not a device (auto, cpu, cuda, cuda:N)"),
    ("mps", "--device: 'mps' is not a device"),  # a torch device, not one this project runs on
    ("cpu:0", "--device: 'cpu:0' is not a device"),
    ("cuda:x", "--device: 'cuda:x' is not a device"),
])
def test_resolve_device_names_the_option_the_bad_value_came_from(name, message):
    with pytest.raises(ConfigError) as err:
        rt.resolve_device(name, "--device")
    assert str(err.value).startswith(message)
    assert rt.resolve_device("cpu", "--device") == torch.device("cpu")


def test_a_missing_gpu_or_gpu_number_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="^bench --device: cuda:1 requested but no CUDA device is available$"):
        rt.resolve_device("cuda:1", "bench --device")
    assert rt.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"^train.device: cuda:2 requested but this machine has 2 CUDA device\(s\) "
                                          r"\(cuda:0 to cuda:1\)$"):
        rt.resolve_device("cuda:2")
    assert rt.resolve_device("cuda:1") == torch.device("cuda:1")


@pytest.mark.parametrize("cpu_max, expected", [("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", 8),
                                               ("garbage\n", 8), (None, 8)])
def test_available_cpus_is_the_affinity_mask_capped_by_the_cgroup_quota(tmp_path, monkeypatch, cpu_max, expected):
    from mixdistill import machine

    monkeypatch.setattr(machine.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(machine, "CGROUP_CPU_MAX", str(path))
    assert machine.available_cpus() == expected
