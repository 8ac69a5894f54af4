"""engine/small_conv: the grey-scale first-layer convolution kernel computes what ATen (oneDNN) computes, bit for bit,
and the trainer uses it only where that holds."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mixdistill.engine import small_conv
from mixdistill.models import create_model

needs_kernel = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512") or small_conv._library()[0] is None,
    reason=f"first-layer conv kernel {small_conv._library()[1] or 'on'}: needs ATen's AVX512 kernels, AVX512-BF16 "
           "without AMX, oneDNN's full ISA and a C compiler")

# the taps (kh * 3 + kw) in the order small_conv.c adds them (oneDNN's)
ORDER = [3, 0, 1, 6, 7, 4, 5, 2, 8]


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch, kernel_wrappers):
    """Every test starts with the kernel on and nothing compared yet, and leaves no trace."""
    kernel_wrappers.fresh_state(small_conv, monkeypatch)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` with channels-last strides even where a size-1 channel dimension makes ``contiguous`` keep others."""
    return torch.empty(t.shape, dtype=t.dtype, memory_format=torch.channels_last).copy_(t)


def _tensors(n, h, w, channels, bias, kind, seed):
    """bf16 input [n, 1, h, w], channels-last weights and a bias: ``normal`` values, ``wide`` (exponents 2^-12..2^12:
    sums whose order shows now and then) or ``probe`` (small_conv.probe's)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, h, w, generator=g)
    wt = torch.randn(channels, 1, 3, 3, generator=g) * 0.3
    b = torch.randn(channels, generator=g)
    if kind == "wide":
        x = x * 2.0 ** torch.randint(-12, 12, x.shape, generator=g)
        wt = wt * 2.0 ** torch.randint(-12, 12, wt.shape, generator=g)
    x, wt = x.to(torch.bfloat16).contiguous(), _channels_last(wt.to(torch.bfloat16))
    b = b.to(torch.bfloat16) if bias else None
    if kind == "probe":
        x, wt, b = small_conv.probe(x, wt, b, seed)
    return x, wt, b


def _in_order(x, wt, b, order):
    """The convolution as float sums of the exact bf16 products taken in ``order``, bias last, rounded to bf16."""
    n, _, h, w = x.shape
    xp = F.pad(x.float(), (1, 1, 1, 1))
    acc = torch.zeros(n, wt.shape[0], h, w)
    for t in order:
        i, j = divmod(t, 3)
        acc = acc + xp[:, :, i:i + h, j:j + w] * wt.float()[:, 0, i, j].view(1, -1, 1, 1)
    if b is not None:
        acc = acc + b.float().view(1, -1, 1, 1)
    return acc.to(torch.bfloat16)


@needs_kernel
@pytest.mark.parametrize("kind", ["normal", "wide", "probe"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("channels", [8, 16, 32])
@pytest.mark.parametrize("n,h,w", [(128, 28, 28), (5, 17, 9), (3, 1, 1), (2, 5, 30), (4, 28, 7)])
def test_the_kernel_is_atens_convolution_bit_for_bit(n, h, w, channels, bias, kind):
    """The C kernel called directly (no self-check in the way) against ATen's channels-last bf16 convolution: every
    output bit and the layout, for each channel count, with and without a bias, on maps whose width leaves a lone
    pixel or fewer than a vector's worth, and on values whose sums show a different order."""
    for seed in range(2):
        x, wt, b = _tensors(n, h, w, channels, bias, kind, seed)
        expected = F.conv2d(x, wt, b, padding=1)
        ours = small_conv._kernel(x, wt, b)
        assert ours is not None and ours.stride() == expected.stride()
        assert torch.equal(_bits(ours), _bits(expected))


@needs_kernel
def test_the_probe_shows_any_other_order_of_the_sums():
    """On the probe, ATen equals the sums in the kernel's order, and every order that swaps two neighbouring taps, or
    reverses them all, gives other bits (so the first-call check would catch a oneDNN that sums otherwise)."""
    x, wt, b = _tensors(8, 28, 28, 16, True, "probe", 0)
    expected = F.conv2d(x, wt, b, padding=1)
    assert torch.equal(_bits(_in_order(x, wt, b, ORDER)), _bits(expected))
    others = [ORDER[:i] + [ORDER[i + 1], ORDER[i]] + ORDER[i + 2:] for i in range(1, 8)] + [ORDER[::-1]]
    for order in others:  # (swapping the first two changes nothing: 0 + a + b = 0 + b + a)
        assert (_bits(_in_order(x, wt, b, order)) != _bits(expected)).sum() > 100, order


@needs_kernel
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2.0 ** -60, 2.0 ** 70, -2.0 ** -127])
@pytest.mark.parametrize("where", ["x", "w", "b"])
def test_a_value_out_of_the_kernels_range_goes_to_aten(value, where):
    """NaN, infinity, a tiny, huge or denormal value in the input, weights or bias: the kernel refuses the batch and
    the layer's output is ATen's."""
    x, wt, b = _tensors(4, 9, 9, 8, True, "normal", 0)
    {"x": x, "w": wt, "b": b}[where].view(-1)[3] = value
    assert small_conv._kernel(x, wt, b) is None
    assert torch.equal(_bits(small_conv._forward(x, wt, b)), _bits(F.conv2d(x, wt, b, padding=1)))
    assert small_conv.status() == "on"


@needs_kernel
@pytest.mark.parametrize("arch", ["cnn5_w8", "cnn5_w16"])
def test_a_network_trains_to_the_same_floats_with_the_kernel(arch, monkeypatch, kernel_wrappers):
    """A grey-scale CPU-study net under bf16 autocast, channels_last: 3 SGD steps and a no-grad forward with its first
    layer swapped give the same logits and weights as ATen's, the gradient through ATen's convolution_backward, and
    the kernel really ran."""
    calls = kernel_wrappers.assert_trains_like_aten(small_conv, small_conv.use_small_first_conv, arch, 1, monkeypatch)
    assert calls.count("small_conv_forward") == 4 + 1  # every forward, and the first call's probe


@needs_kernel
def test_a_kernel_that_differs_from_aten_is_switched_off_and_atens_result_used(monkeypatch, kernel_wrappers):
    """The first call compares with ATen: a kernel that got one output bit wrong is caught, warned about and replaced
    by ATen's result for that call and every later one."""
    kernel_wrappers.assert_a_wrong_kernel_is_caught(small_conv, small_conv.use_small_first_conv, "forward",
                                                    monkeypatch, output_arg=3, no_grad_forward=True)


@needs_kernel
def test_a_kernel_that_sums_in_another_order_is_caught_by_the_probe(monkeypatch):
    """A kernel right on the batch but wrong on the probe (standing in for a oneDNN that sums in another order):
    switched off at the first call, ATen's result used."""
    real = small_conv._kernel

    def wrong_on_probes(x, weight, bias):
        y = real(x, weight, bias)
        if x.shape[0] == 8 and y is not None:  # the probe's 8 images
            return _in_order(x, weight, bias, ORDER[::-1]).contiguous(memory_format=torch.channels_last)
        return y

    monkeypatch.setattr(small_conv, "_kernel", wrong_on_probes)
    x, wt, _ = _tensors(64, 28, 28, 8, False, "normal", 0)
    with pytest.warns(RuntimeWarning, match="differed from ATen's forward for 8 channels, no bias, 28x28"):
        y = small_conv._forward(x, wt, None)
    assert torch.equal(_bits(y), _bits(F.conv2d(x, wt, None, padding=1)))
    assert small_conv.status().startswith("off (differed")


def test_what_the_kernel_does_not_take_stays_atens(monkeypatch):
    """Convolutions other than a grey-scale 3x3/1/1 one into 8, 16 or 32 channels and a compiled teacher's are not
    swapped; fp32 without autocast, NCHW weights and torch.compile's tracing go to torch's forward; nothing is
    swapped when switched off or on a CPU with AMX."""
    not_taken = [nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(1, 12, 3, padding=1), nn.Conv2d(1, 8, 5, padding=2),
                 nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.Conv2d(1, 8, 3, padding=0),
                 nn.Conv2d(1, 8, 3, padding=2, dilation=2), nn.Conv2d(1, 8, 3, padding=1, padding_mode="reflect")]
    net = nn.Sequential(*not_taken)
    monkeypatch.setattr(small_conv, "_library", lambda: (object(), ""))
    assert small_conv.use_small_first_conv(net) == 0
    assert [type(m) for m in net] == [type(m) for m in not_taken]
    teacher, student = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1)), nn.Conv2d(1, 8, (3, 3), padding=(1, 1))
    assert small_conv.use_small_first_conv(nn.ModuleList([teacher, student]), leave=teacher) == 1
    assert type(teacher[0]) is nn.Conv2d and type(student) is small_conv.SmallFirstConv2d
    x = torch.randn(2, 1, 6, 6)
    assert not small_conv._eligible(x, student.weight)  # fp32, no autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not small_conv._eligible(x, student.weight)  # NCHW weights: ATen's output would be NCHW
        assert small_conv._eligible(x, _channels_last(student.weight))
    monkeypatch.setenv("MIXDISTILL_SMALL_CONV", "0")
    assert small_conv.use_small_first_conv(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1))) == 0
    assert small_conv.status() == "off (MIXDISTILL_SMALL_CONV=0)"


def test_without_a_compiler_or_avx512_or_with_amx_the_kernel_is_off(monkeypatch, kernel_wrappers):
    """No C compiler (or ATen's AVX2 kernels): off, said why, nothing swapped; a CPU with AMX or without AVX512-BF16,
    or oneDNN's ISA capped, where oneDNN's order was not matched: off too."""
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1))
    kernel_wrappers.assert_off_without_a_compiler_or_avx512(small_conv, small_conv.use_small_first_conv, net,
                                                            monkeypatch)
    monkeypatch.undo()
    monkeypatch.setattr(small_conv, "_library", small_conv._library.__wrapped__)
    capabilities = dict(torch.cpu.get_capabilities())
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512") and small_conv.ckernels.load(small_conv.SOURCE)[0]:
        for amx, avx512_bf16, isa, why in (
                (True, True, None, "off (a CPU with AMX: oneDNN's order was matched without AMX only)"),
                (False, False, None, "off (no AVX512-BF16: oneDNN's order was matched on AVX512-BF16 only)"),
                (False, True, "AVX512_CORE",
                 "off (ONEDNN_MAX_CPU_ISA=AVX512_CORE: oneDNN's order was matched with all its kernels)"),
                (False, True, "ALL", "on")):
            monkeypatch.setattr(torch.cpu, "get_capabilities",
                                lambda: {**capabilities, "amx_tile": amx, "avx512_bf16": avx512_bf16})
            if isa:
                monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
            assert small_conv.status() == why
            if why != "on":
                assert small_conv.use_small_first_conv(net) == 0


def test_a_compiled_or_folded_network_gets_torchs_own_conv_back():
    """compile_in_place and the fast teacher's folding turn a swapped first layer back into nn.Conv2d first."""
    from mixdistill.engine.compile import compile_in_place
    from mixdistill.engine.fast import fold_conv_bn

    torch.manual_seed(0)
    net = create_model("cnn5_w8", 10, 1).eval()
    net.conv1[0].__class__ = small_conv.SmallFirstConv2d  # as use_small_first_conv does where the kernel is on
    folded, pairs = fold_conv_bn(net)
    assert pairs > 0 and not any(type(m) is small_conv.SmallFirstConv2d for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.allclose(folded(x), net(x), atol=1e-4)
    compile_in_place(net, None)
    assert type(net.conv1[0]) is nn.Conv2d


@needs_kernel
def test_a_bf16_kd_run_ends_with_the_same_weights_with_the_kernel_or_without(tiny_run_overrides, monkeypatch, capsys,
                                                                               kernel_wrappers):
    """The trainer swaps the student's and the folded teacher's first layers in a channels-last bf16 CPU run and says
    so; the same KD run with MIXDISTILL_SMALL_CONV=0 ends with the same weights and test loss, bit for bit."""
    kernel_wrappers.assert_a_bf16_kd_run_is_the_same_with_or_without(
        "MIXDISTILL_SMALL_CONV", "first-layer conv (engine/small_conv.c)", tiny_run_overrides, monkeypatch, capsys)
    assert (8, False, 28, 28) in small_conv._checked and (8, True, 28, 28) in small_conv._checked


@needs_kernel
@pytest.mark.parametrize("bias", [True, False])
def test_a_layer_run_twice_before_one_backward_sums_its_gradients_as_autocast_does(bias):
    """kd_view runs the student on the clean and on the augmented batch, then one backward. Under bf16 autocast ATen's
    convolution gets one cached bf16 cast of the weight for both calls, so the two gradients meet in bf16; a cast per
    call met them in fp32 (60 of wang2022's 86 cpu runs ended differently). Two steps: the cast follows each update."""
    torch.manual_seed(0)
    plain = nn.Conv2d(1, 16, 3, padding=1, bias=bias).to(memory_format=torch.channels_last)
    ours = small_conv.SmallFirstConv2d(1, 16, 3, padding=1, bias=bias).to(memory_format=torch.channels_last)
    ours.load_state_dict(plain.state_dict())
    for step in range(2):
        a, b = (_channels_last(torch.randn(64, 1, 28, 28)) for _ in range(2))
        for layer in (plain, ours):
            layer.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = layer(a).float().square().mean() + layer(b).float().abs().mean()
            loss.backward()
        for p, q in zip(plain.parameters(), ours.parameters()):
            assert torch.equal(p.grad, q.grad), (step, p.shape)
        with torch.no_grad():
            for layer in (plain, ours):
                for p in layer.parameters():
                    p.sub_(0.1 * p.grad)


def test_a_layer_dropped_after_training_is_freed_with_its_cached_casts():
    """The bf16 casts kept per parameter version hold their parameters through autograd: kept in a table keyed by the
    parameter, every layer a process ever trained (a grid's runs one after another) stayed alive."""
    import gc
    import weakref

    layer = small_conv.SmallFirstConv2d(1, 16, 3, padding=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = small_conv._autocast_cast(layer, "weight")
        assert cast.dtype == torch.bfloat16 and small_conv._autocast_cast(layer, "weight") is cast  # cached
        cast.float().sum().backward()
    weight = weakref.ref(layer.weight)
    del layer, cast
    gc.collect()
    assert weight() is None
