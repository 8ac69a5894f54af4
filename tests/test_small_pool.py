"""engine/small_pool: the channels-last bf16 2x2 max-pool kernel computes what ATen computes, bit for bit (values,
NaN encodings and gradients), and the trainer uses it only where that holds."""

from __future__ import annotations


import pytest
import torch
from torch import nn

from mixdistill.engine import small_pool
from mixdistill.models import create_model

needs_kernel = pytest.mark.skipif(
    not torch.backends.cpu.get_cpu_capability().startswith("AVX512") or small_pool._library()[0] is None,
    reason=f"2x2 max-pool kernel {small_pool._library()[1] or 'on'}: needs ATen's AVX512 kernels and a C compiler")


@pytest.fixture(autouse=True)
def _fresh_state(monkeypatch, kernel_wrappers):
    """Every test starts with the kernel on and nothing compared yet, and leaves no trace."""
    kernel_wrappers.fresh_state(small_pool, monkeypatch)


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int16)


def _tensors(shape, seed, special: bool):
    """x and an output gradient; ``special``: ties, NaNs, infinities and signed zeros sprinkled through both."""
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(shape, generator=g).to(torch.bfloat16)
    dy = torch.randn((n, c, h // 2, w // 2), generator=g).to(torch.bfloat16)
    if special:
        flat = x.view(-1)
        for step, value in ((7, 0.5), (13, float("nan")), (17, float("-inf")), (19, -0.0), (23, float("inf")),
                            (29, 0.0), (31, -1.0)):
            flat[seed % step::step] = value
        flat[3::37] = torch.tensor([0xFFC1 - 0x10000], dtype=torch.int16).view(torch.bfloat16)  # a NaN with a payload
        dy.view(-1)[::5] = -0.0
        dy.view(-1)[::11] = float("nan")
    cl = torch.channels_last
    return x.contiguous(memory_format=cl), dy.contiguous(memory_format=cl)


def _kernel(x, dy):
    n, c, h, w = x.shape
    y = torch.empty((n, c, h // 2, w // 2), dtype=torch.bfloat16, memory_format=torch.channels_last)
    dx = torch.empty_like(x)
    lib = small_pool._library()[0]
    assert lib.small_pool_forward(x.data_ptr(), y.data_ptr(), n, h, w, c) == 0
    assert lib.small_pool_backward(x.data_ptr(), dy.data_ptr(), dx.data_ptr(), n, h, w, c) == 0
    return y, dx


@needs_kernel
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("shape", [(128, 8, 28, 28), (64, 16, 14, 14), (16, 32, 7, 7), (8, 64, 7, 7), (4, 6, 24, 24),
                                   (3, 24, 6, 6), (5, 48, 5, 5), (2, 100, 9, 4), (7, 1, 3, 5), (2, 3, 2, 2)])
def test_the_kernel_is_atens_max_pool_bit_for_bit(shape, special):
    """The C kernel called directly (no self-check in the way) against ATen's max_pool2d_with_indices and its
    backward: every output bit (NaNs encoded as ATen encodes them in its vectorised and scalar channels) and every
    input-gradient bit (the first of equal elements, a NaN wins, 0 + g as ATen adds), for channel counts inside and
    across ATen's 16-float vectors and odd map sizes whose last row and column no window covers."""
    for seed in range(3):
        x, dy = _tensors(shape, seed, special)
        y, indices = torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])
        dx = torch.ops.aten.max_pool2d_with_indices_backward(dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, indices)
        ours_y, ours_dx = _kernel(x, dy)
        assert torch.equal(_bits(y), _bits(ours_y)) and torch.equal(_bits(dx), _bits(ours_dx))


@needs_kernel
@pytest.mark.parametrize("arch", ["cnn5_w8", "lenet5", "alexnet_cifar_w025"])
def test_a_network_trains_to_the_same_floats_with_the_kernel(arch, monkeypatch, kernel_wrappers):
    """A CPU-study net under bf16 autocast, channels_last: 3 SGD steps and a no-grad forward with its 2x2 pools
    swapped give the same logits and weights as ATen's, and the kernel really ran."""
    pools = {"cnn5_w8": 3, "lenet5": 1, "alexnet_cifar_w025": 2}[arch]  # calls of the swapped modules per forward
    calls = kernel_wrappers.assert_trains_like_aten(small_pool, small_pool.use_small_max_pool, arch,
                                                    {"cnn5_w8": 1, "lenet5": 1, "alexnet_cifar_w025": 2}[arch],
                                                    monkeypatch)
    assert calls.count("small_pool_forward") == 4 * pools and calls.count("small_pool_backward") == 3 * pools


@needs_kernel
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_a_kernel_that_differs_from_aten_is_switched_off_and_atens_result_used(direction, monkeypatch,
                                                                             kernel_wrappers):
    """The first call of a channel count compares with ATen: a kernel that got one bit wrong is caught, warned
    about and replaced by ATen's result for that call and every later one."""
    kernel_wrappers.assert_a_wrong_kernel_is_caught(small_pool, small_pool.use_small_max_pool, direction,
                                                    monkeypatch, no_grad_forward=True)


def test_what_the_kernel_does_not_take_stays_atens(monkeypatch):
    """fp32, NCHW, 1-pixel maps and torch.compile's tracing go to F.max_pool2d; pools other than a plain 2x2 stride-2
    one (another kernel size, stride, padding, dilation, ceil mode, returned indices) and a compiled teacher's are
    not swapped; nothing is when switched off."""
    cl = torch.channels_last
    x = torch.randn(4, 8, 6, 6).to(torch.bfloat16).contiguous(memory_format=cl)
    assert not small_pool._eligible(x.float().contiguous(memory_format=cl))
    assert not small_pool._eligible(x.contiguous())
    assert not small_pool._eligible(torch.randn(4, 8, 1, 6).to(torch.bfloat16).contiguous(memory_format=cl))
    not_taken = [nn.MaxPool2d(3), nn.MaxPool2d(2, 1), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, dilation=2),
                 nn.MaxPool2d(2, ceil_mode=True), nn.MaxPool2d(2, return_indices=True), nn.AdaptiveMaxPool2d(4)]
    net = nn.Sequential(*not_taken)
    monkeypatch.setattr(small_pool, "_library", lambda: (object(), ""))
    assert small_pool.use_small_max_pool(net) == 0
    assert [type(m) for m in net] == [type(m) for m in not_taken]
    teacher, student = nn.Sequential(nn.MaxPool2d(2)), nn.MaxPool2d(kernel_size=(2, 2), stride=2)
    assert small_pool.use_small_max_pool(nn.ModuleList([teacher, student]), leave=teacher) == 1
    assert type(teacher[0]) is nn.MaxPool2d and type(student) is small_pool.SmallMaxPool2d
    monkeypatch.setenv("MIXDISTILL_SMALL_POOL", "0")
    assert small_pool.use_small_max_pool(nn.Sequential(nn.MaxPool2d(2))) == 0
    assert small_pool.status() == "off (MIXDISTILL_SMALL_POOL=0)"


def test_without_a_compiler_or_avx512_the_kernel_is_off(monkeypatch, kernel_wrappers):
    """No C compiler (or ATen's AVX2 kernels, where the kernel was not shown equal): off, said why, nothing swapped."""
    net = nn.Sequential(nn.MaxPool2d(2))
    kernel_wrappers.assert_off_without_a_compiler_or_avx512(small_pool, small_pool.use_small_max_pool, net,
                                                            monkeypatch)


def test_a_compiled_or_folded_network_gets_torchs_own_max_pool_back():
    """compile_in_place and the fast teacher's folding turn swapped pools back into nn.MaxPool2d first, so dynamo and
    torch.fx trace what they traced before the kernel existed."""
    from mixdistill.engine.compile import compile_in_place
    from mixdistill.engine.fast import fold_conv_bn

    torch.manual_seed(0)
    net = create_model("cnn5_w8", 10, 1).eval()
    net.pool.__class__ = small_pool.SmallMaxPool2d  # as use_small_max_pool does where the kernel is on
    folded, pairs = fold_conv_bn(net)
    assert pairs > 0 and not any(type(m) is small_pool.SmallMaxPool2d for m in folded.modules())
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), net(x), atol=1e-4)
    compile_in_place(net, None)
    assert type(net.pool) is nn.MaxPool2d


@needs_kernel
def test_a_bf16_kd_run_ends_with_the_same_weights_with_the_kernel_or_without(tiny_run_overrides, monkeypatch, capsys,
                                                                               kernel_wrappers):
    """The trainer swaps the student's and the folded teacher's 2x2 pools in a channels-last bf16 CPU run and says
    so; the same KD run with MIXDISTILL_SMALL_POOL=0 ends with the same weights and test loss, bit for bit."""
    kernel_wrappers.assert_a_bf16_kd_run_is_the_same_with_or_without(
        "MIXDISTILL_SMALL_POOL", "2x2 max-pool (engine/small_pool.c)", tiny_run_overrides, monkeypatch, capsys)
    assert ("forward", 8) in small_pool._checked and ("backward", 8) in small_pool._checked
