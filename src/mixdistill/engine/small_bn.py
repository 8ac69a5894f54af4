"""Training-mode BatchNorm for channels-last bf16 maps with fewer than 32 channels, equal bit for bit to ATen's.

ATen's CPU kernel walks such maps (the CPU-scale studies' 8- and 16-channel 28x28 and 14x14 maps, wrn_16_2's
16-channel stage) one scalar at a time, and with two threads its per-thread sums share a cache line: on the AMX
Xeon the backward of cnn5_w8's first BatchNorm took 1.45 ms with one thread and 5-7 ms with two. ``small_bn.c``
does the same arithmetic in the same order with the channels of a row in vector registers (0.49 ms, either thread
count), so every float a run computes stays what it was; ``benchmarks/small_bn.py`` times it and checks that.

The C file is built once per machine (``engine/ckernels.py``). It is used only where it was shown equal: the input
bf16, channels-last and 4-D, the affine parameters and running statistics fp32 (autocast's mixed type), training
mode, ATen's AVX512 kernels, not under ``torch.compile``. The first call of every channel count and thread count
also runs ATen and compares, forward and backward; a difference switches the kernel off for the process (with a
warning) and ATen's result is used.
``MIXDISTILL_SMALL_BN=0`` turns it off; without a C compiler it stays off.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from pathlib import Path

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from mixdistill.engine import ckernels

MAX_CHANNELS = 31  # from 32 channels on ATen's AVX512 bf16 kernel is vectorised (and C's buffers hold 32)
SOURCE = Path(__file__).with_name("small_bn.c")
SWITCH = "MIXDISTILL_SMALL_BN"  # =0 turns the kernel off

_state = {"disabled": None}  # why the kernel is off in this process (None: not off)
_checked: set[tuple] = set()  # (direction, channels, threads) compared with ATen


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded kernel, "") or (None, why not)."""
    lib, why = ckernels.load(SOURCE)
    if lib is None:
        return None, why
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    lib.small_bn_forward.argtypes = [p, p, i64, i32, i32, p, p, p, p, f64, f64, p, p]
    lib.small_bn_backward.argtypes = [p, p, p, i64, i32, i32, p, p, p, p, p]
    return lib, ""


def status() -> str:
    """What a run's log says about this kernel: "on" or why it is off."""
    return ckernels.status(SWITCH, _library, _state["disabled"])


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _eligible(x: torch.Tensor, *params: torch.Tensor | None) -> bool:
    """Whether the kernel takes this call. With more than one thread only below 16 channels: there ATen's per-thread
    sums share a cache line (and lose 10x), above it ATen's threads beat one thread of ours."""
    channels = x.shape[1] if x.dim() == 4 else 0
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and 0 < channels <= MAX_CHANNELS
            and (channels < 16 or torch.get_num_threads() == 1)
            and x.shape[2] * x.shape[3] > 1 and x.is_contiguous(memory_format=torch.channels_last)
            and all(p is None or (p.dtype == torch.float32 and p.is_contiguous() and p.device.type == "cpu")
                    for p in params)
            and _state["disabled"] is None and not torch.compiler.is_compiling() and _library()[0] is not None)


def _disagree(direction: str, channels: int) -> None:
    _state["disabled"] = f"off (differed from ATen's {direction} for {channels} channels; ATen used since)"
    warnings.warn(f"mixdistill small-channel BatchNorm {_state['disabled']}", RuntimeWarning, stacklevel=3)


def _finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


def _forward(x, weight, bias, running_mean, running_var, momentum: float, eps: float):
    """ATen's ``native_batch_norm(x, ..., training=True)``: (y, save_mean, save_invstd); updates the running stats."""
    channels, threads = x.shape[1], torch.get_num_threads()
    stats = [t for t in (running_mean, running_var) if t is not None]
    # compared on finite values only: a diverged run's NaNs (their encodings) say nothing of the kernel, and the
    # warning blamed it for them
    check = ("forward", channels, threads) not in _checked and _finite(x, weight, bias, *stats)
    if check:  # ATen on copies of the running stats, to compare
        aten_stats = [t.clone() for t in stats]
        copies = iter(aten_stats)
        expected = torch.ops.aten.native_batch_norm(
            x, weight, bias, None if running_mean is None else next(copies),
            None if running_var is None else next(copies), True, momentum, eps)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    save_mean, save_invstd = (torch.empty(channels, dtype=torch.float32) for _ in range(2))
    rc = _library()[0].small_bn_forward(
        _ptr(x), _ptr(y), x.numel() // channels, channels, threads, _ptr(weight), _ptr(bias), _ptr(running_mean),
        _ptr(running_var), momentum, eps, _ptr(save_mean), _ptr(save_invstd))
    if rc != 0:
        raise RuntimeError(f"small_bn_forward returned {rc}")
    if check:
        _checked.add(("forward", channels, threads))
        if not all(torch.equal(a, b) for a, b in zip([*expected, *aten_stats], [y, save_mean, save_invstd, *stats])):
            _disagree("forward", channels)
            for t, a in zip(stats, aten_stats):
                t.copy_(a)
            return expected
    return y, save_mean, save_invstd


def _backward(grad_out, x, weight, save_mean, save_invstd, eps: float, mask: list[bool]):
    """ATen's ``native_batch_norm_backward(..., train=True, output_mask=mask)``: (grad_x, grad_weight, grad_bias)."""
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    if not _eligible(grad_out):
        return torch.ops.aten.native_batch_norm_backward(grad_out, x, weight, None, None, save_mean, save_invstd,
                                                         True, eps, mask)
    channels, threads = x.shape[1], torch.get_num_threads()
    grads = [torch.empty_like(x, memory_format=torch.channels_last) if mask[0] else None,
             torch.empty(channels, dtype=torch.float32) if mask[1] else None,
             torch.empty(channels, dtype=torch.float32) if mask[2] else None]
    rc = _library()[0].small_bn_backward(
        _ptr(grad_out), _ptr(x), _ptr(grads[0]), x.numel() // channels, channels, threads, _ptr(weight),
        _ptr(save_mean), _ptr(save_invstd), _ptr(grads[1]), _ptr(grads[2]))
    if rc != 0:
        raise RuntimeError(f"small_bn_backward returned {rc}")
    if ("backward", channels, threads) not in _checked and _finite(grad_out, x, weight):  # as _forward
        _checked.add(("backward", channels, threads))
        expected = torch.ops.aten.native_batch_norm_backward(grad_out, x, weight, None, None, save_mean,
                                                             save_invstd, True, eps, mask)
        if not all(a is None or torch.equal(a, b) for a, b in zip(expected, grads)):
            _disagree("backward", channels)
            return expected
    return tuple(grads)


class _SmallChannelBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps):
        y, save_mean, save_invstd = _forward(x, weight, bias, running_mean, running_var, momentum, eps)
        ctx.save_for_backward(x, weight, save_mean, save_invstd)  # not the running stats: the next forward moves them
        ctx.eps = eps
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, save_mean, save_invstd = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:3])
        grad_x, grad_w, grad_b = _backward(grad_out, x, weight, save_mean, save_invstd, ctx.eps, mask)
        return grad_x, grad_w, grad_b, None, None, None, None


class SmallChannelBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and state dict) whose training-mode forward runs
    ``small_bn.c`` where that is shown equal to ATen (see the module docstring), and ATen's otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or not (
                self.training and self.track_running_stats and self.momentum is not None
                and self.num_batches_tracked is not None
                and _eligible(x, self.weight, self.bias, self.running_mean, self.running_var)):
            return super().forward(x)
        self._check_input_dim(x)
        self.num_batches_tracked.add_(1)
        return _SmallChannelBatchNorm.apply(x, self.weight, self.bias, self.running_mean, self.running_var,
                                            self.momentum, self.eps)


def use_small_channel_batchnorm(module: nn.Module) -> int:
    """Turn every ``nn.BatchNorm2d`` (exactly that class) of ``module`` with at most ``MAX_CHANNELS`` channels into
    a :class:`SmallChannelBatchNorm2d`, in place; returns how many. Nothing changes where the kernel is off."""
    def takes(m: nn.Module) -> bool:
        return type(m) is nn.BatchNorm2d and m.num_features <= MAX_CHANNELS

    return ckernels.swap(module, SWITCH, _library, takes, SmallChannelBatchNorm2d)


def use_plain_batchnorm(module: nn.Module) -> None:
    """Undo :func:`use_small_channel_batchnorm` in place (for torch.fx, which traces into any BatchNorm subclass
    that is not torch's own)."""
    ckernels.unswap(module, SmallChannelBatchNorm2d, nn.BatchNorm2d)
