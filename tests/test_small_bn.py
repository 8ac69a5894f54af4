"""engine/small_bn: the channels-last bf16 BatchNorm kernel for few channels computes what ATen computes, bit for bit,
and the trainer uses it only where that holds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mixdistill.engine import small_bn
from mixdistill.engine.runtime import resolve_runtime
from mixdistill.models import create_model

needs_kernel = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512") or small_bn._library()[0] is None,
    reason=f"small-channel BatchNorm {small_bn._library()[1] or 'on'}: needs ATen's AVX512 kernels and a C compiler")


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch, kernel_wrappers):
    """Every test starts with the kernel on and nothing compared yet, and leaves no trace."""
    kernel_wrappers.fresh_state(small_bn, monkeypatch)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _tensors(shape, seed, affine=True):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]
    x = (torch.randn(shape, generator=g) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    dy = (torch.randn(shape, generator=g) * 1e-2).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, generator=g) if affine else None
    b = torch.randn(c, generator=g) if affine else None
    return x, dy, w, b, torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5


def _kernel_forward(x, w, b, rm, rv):
    c = x.shape[1]
    y, mean, invstd = torch.empty_like(x), torch.empty(c), torch.empty(c)
    p = small_bn._ptr
    rc = small_bn._library()[0].small_bn_forward(p(x), p(y), x.numel() // c, c, torch.get_num_threads(), p(w), p(b),
                                                 p(rm), p(rv), 0.1, 1e-5, p(mean), p(invstd))
    assert rc == 0
    return y, mean, invstd


def _kernel_backward(dy, x, w, mean, invstd, mask):
    c = x.shape[1]
    gx, gw, gb = (torch.empty_like(x) if mask[0] else None, torch.empty(c) if mask[1] else None,
                  torch.empty(c) if mask[2] else None)
    p = small_bn._ptr
    rc = small_bn._library()[0].small_bn_backward(p(dy), p(x), p(gx), x.numel() // c, c, torch.get_num_threads(),
                                                  p(w), p(mean), p(invstd), p(gw), p(gb))
    assert rc == 0
    return gx, gw, gb


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("shape", [(128, 8, 28, 28), (64, 16, 9, 9), (7, 8, 5, 3), (16, 24, 7, 7), (16, 12, 6, 6),
                                   (32, 3, 6, 6), (8, 31, 5, 5), (1, 1, 1, 2)])
def test_the_kernel_is_atens_batchnorm_bit_for_bit(shape, threads):
    """The C kernel called directly (no self-check in the way) against ATen's native_batch_norm and its backward:
    output, saved mean and inverse std, both running statistics and all three gradients, with and without affine
    parameters and running statistics, for channel counts inside and across ATen's vectorised 16-float blocks
    (24: 16 unfused + 8 fused channels in the input gradient) and thread counts that split the rows unevenly."""
    torch.set_num_threads(threads)
    for seed in range(4):
        x, dy, w, b, rm, rv = _tensors(shape, seed, affine=seed != 1)
        stats = seed != 2
        aten_rm, aten_rv, our_rm, our_rv = (t.clone() if stats else None for t in (rm, rv, rm, rv))
        aten = torch.ops.aten.native_batch_norm(x, w, b, aten_rm, aten_rv, True, 0.1, 1e-5)
        ours = _kernel_forward(x, w, b, our_rm, our_rv)
        for name, a, o in zip(["y", "mean", "invstd", "running_mean", "running_var"],
                              [*aten, aten_rm, aten_rv], [*ours, our_rm, our_rv]):
            assert (a is None and o is None) or torch.equal(a, o), (name, shape, threads, seed)
        mask = [True, w is not None, w is not None] if seed != 3 else [True, False, True]
        aten_g = torch.ops.aten.native_batch_norm_backward(dy, x, w, None, None, aten[1], aten[2], True, 1e-5, mask)
        ours_g = _kernel_backward(dy, x, w, aten[1], aten[2], mask)
        for name, a, o in zip(["grad_x", "grad_weight", "grad_bias"], aten_g, ours_g):
            assert (a is None and o is None) or torch.equal(a, o), (name, shape, threads, seed)


@needs_kernel
@pytest.mark.parametrize("threads", [1, 2])
def test_a_network_trains_to_the_same_floats_with_the_kernel(threads, monkeypatch, kernel_wrappers):
    """cnn5_w8 under bf16 autocast, channels_last: 3 SGD steps with its BatchNorms swapped give the same logits,
    weights, running statistics and batch counts as ATen's, and the kernel really ran (the trainer's call counted)."""
    torch.set_num_threads(threads)
    runtime = resolve_runtime("cpu", "bf16", True, False)
    torch.manual_seed(0)
    aten = create_model("cnn5_w8", 10, 1).train().to(memory_format=torch.channels_last)
    ours = copy.deepcopy(aten)
    assert small_bn.use_small_channel_batchnorm(ours) == 2  # the 8- and 16-channel stages; 32 and 64 stay ATen's
    counting, calls = kernel_wrappers.counting(small_bn._library()[0])
    monkeypatch.setattr(small_bn, "_library", lambda: (counting, ""))
    for a, o in zip(kernel_wrappers.train(aten, 3, runtime),
                    kernel_wrappers.train(ours, 3, runtime), strict=True):
        assert torch.equal(a, o)
    sa, so = aten.state_dict(), ours.state_dict()
    assert sa.keys() == so.keys() and all(torch.equal(sa[k], so[k]) for k in sa)
    expected_layers = 2 if threads == 1 else 1  # with 2 threads only the 8-channel stage (see _eligible)
    assert calls.count("small_bn_forward") == 3 * expected_layers
    assert calls.count("small_bn_backward") == 3 * expected_layers
    assert small_bn.status() == "on"


@needs_kernel
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_kernel_that_differs_from_aten_is_switched_off_and_atens_result_used(direction, monkeypatch,
                                                                             kernel_wrappers):
    """The first call of a shape compares with ATen: a kernel that got one bit wrong is caught, warned about and
    replaced by ATen's result for that call (running statistics included) and every later one."""
    kernel_wrappers.assert_a_wrong_kernel_is_caught(small_bn, small_bn.use_small_channel_batchnorm, direction,
                                                    monkeypatch)


def test_what_the_kernel_does_not_take_stays_atens(monkeypatch):
    """Eval mode, fp32, NCHW, 32+ channels, bf16 parameters, cumulative-average momentum and torch.compile's
    tracing go to nn.BatchNorm2d's own forward; nothing is swapped when switched off."""
    bn = small_bn.SmallChannelBatchNorm2d(8)
    cl = torch.channels_last
    x = torch.randn(4, 8, 5, 5).to(torch.bfloat16).contiguous(memory_format=cl)
    assert not small_bn._eligible(x.float(), bn.weight)
    assert not small_bn._eligible(x.contiguous(), bn.weight)
    assert not small_bn._eligible(torch.randn(4, 32, 5, 5).to(torch.bfloat16).contiguous(memory_format=cl))
    assert not small_bn._eligible(x, bn.weight.to(torch.bfloat16))
    assert not small_bn._eligible(torch.randn(4, 8, 1, 1).to(torch.bfloat16))  # NCHW and NHWC at once
    torch.set_num_threads(2)
    assert not small_bn._eligible(torch.randn(4, 16, 5, 5).to(torch.bfloat16).contiguous(memory_format=cl))
    monkeypatch.setattr(small_bn, "_SmallChannelBatchNorm", None)  # any use of the kernel path would raise
    bn.eval()(x)
    bn.train()
    bn.momentum = None
    bn(x)
    monkeypatch.setenv("MIXDISTILL_SMALL_BN", "0")
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
    assert small_bn.use_small_channel_batchnorm(net) == 0 and type(net[1]) is nn.BatchNorm2d
    assert small_bn.status() == "off (MIXDISTILL_SMALL_BN=0)"


def test_without_a_compiler_or_avx512_the_kernel_is_off(monkeypatch, kernel_wrappers):
    """No C compiler (or ATen's AVX2 kernels, where the kernel was not shown equal): off, said why, nothing swapped."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8))
    kernel_wrappers.assert_off_without_a_compiler_or_avx512(small_bn, small_bn.use_small_channel_batchnorm, net,
                                                            monkeypatch)


@needs_kernel
def test_a_swapped_network_saves_loads_and_folds_as_before(tmp_path):
    """The swap changes no parameter, buffer or state-dict key; a swapped network folds (the fast teacher) and
    evaluates exactly as the plain one."""
    from mixdistill.engine.fast import fold_conv_bn

    torch.manual_seed(0)
    plain = create_model("cnn5_w8", 10, 1).eval()
    swapped = copy.deepcopy(plain)
    small_bn.use_small_channel_batchnorm(swapped)
    assert list(plain.state_dict()) == list(swapped.state_dict())
    fresh = create_model("cnn5_w8", 10, 1).eval()
    small_bn.use_small_channel_batchnorm(fresh)
    fresh.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 28, 28)
    (folded_plain, n_plain), (folded_swapped, n_swapped) = fold_conv_bn(plain), fold_conv_bn(swapped)
    assert n_plain == n_swapped > 0
    with torch.no_grad():
        assert torch.equal(plain(x), fresh(x)) and torch.equal(folded_plain(x), folded_swapped(x))


@needs_kernel
def test_a_bf16_kd_run_ends_with_the_same_weights_with_the_kernel_or_without(tiny_run_overrides, monkeypatch, capsys,
                                                                               kernel_wrappers):
    """The trainer swaps the student's small BatchNorms in a channels-last bf16 CPU run and says so; the same KD
    run with MIXDISTILL_SMALL_BN=0 ends with the same weights, running statistics and test loss, bit for bit."""
    kernel_wrappers.assert_a_bf16_kd_run_is_the_same_with_or_without(
        "MIXDISTILL_SMALL_BN", "small-channel BatchNorm (engine/small_bn.c)", tiny_run_overrides, monkeypatch, capsys)
    assert ("forward", 8, torch.get_num_threads()) in small_bn._checked


def test_a_compiled_network_gets_torchs_own_batchnorm_back():
    """compile_in_place (the trainer's and the compile probe's) turns swapped BatchNorms back into nn.BatchNorm2d
    before torch.compile, so dynamo traces the graph it traced before the kernel existed and a compiled run keeps
    its floats (traced through the subclass, KDCL and Cut^nMix runs of shen2022 ended 0.1-0.4 points apart)."""
    from mixdistill.engine.compile import compile_in_place

    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 40, 3), nn.BatchNorm2d(40))
    for m in net.modules():  # as use_small_channel_batchnorm does where the kernel is on
        if type(m) is nn.BatchNorm2d and m.num_features <= small_bn.MAX_CHANNELS:
            m.__class__ = small_bn.SmallChannelBatchNorm2d
    assert type(net[1]) is small_bn.SmallChannelBatchNorm2d
    compile_in_place(net, None)
    assert [type(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [nn.BatchNorm2d, nn.BatchNorm2d]


@needs_kernel
def test_a_diverged_batch_is_not_the_comparison_with_aten(recwarn):
    """A run diverging at its first step (method.temperature=1e30) was told the kernel 'differed from ATen's
    backward': its NaNs, not the kernel, differed. Non-finite input leaves the comparison to the next finite call."""
    torch.set_num_threads(1)
    bn = small_bn.SmallChannelBatchNorm2d(8)
    x, dy, *_ = _tensors((4, 8, 5, 5), 0)
    bad = x.clone().requires_grad_()
    with torch.no_grad():
        bad[0, 0, 0, 0] = float("nan")
    bn(bad).backward(dy)
    assert small_bn.status() == "on" and not small_bn._checked and not recwarn.list
    bn(x.clone().requires_grad_()).backward(dy)  # its running statistics hold the NaN now: not compared either
    assert small_bn._checked == {("backward", 8, 1)} and small_bn.status() == "on" and not recwarn.list
    nan_weight = small_bn.SmallChannelBatchNorm2d(8)
    with torch.no_grad():
        nan_weight.weight[0] = float("nan")
    nan_weight(x.clone().requires_grad_()).backward(dy)  # a NaN parameter: not compared either
    assert small_bn._checked == {("backward", 8, 1)} and small_bn.status() == "on" and not recwarn.list
    small_bn.SmallChannelBatchNorm2d(8)(x.clone().requires_grad_()).backward(dy)
    assert small_bn._checked == {("forward", 8, 1), ("backward", 8, 1)} and small_bn.status() == "on"
