"""2x2 stride-2 max-pool of channels-last bf16 maps, equal bit for bit to ATen's (``small_pool.c``).

Every CPU-scale study net pools 2x2 (cnn5's three pools, LeNet-5's first, the quarter-width AlexNet's two). ATen
computes the pool and an int64 index for every output, one channel at a time below 32 channels; the index
tensor is four times the output's bytes, and a no-grad forward (the teacher's) pays for it too. ``small_pool.c``
keeps the maximum exactly as ATen does (row order, the first of equal elements, a NaN wins; its NaN encodings) with
the channels of a window in vector registers, writes no indices, and in the backward finds each window's kept
element again from the saved input, so every value and gradient a run computes stays what it was.
``benchmarks/small_pool.py`` times it and checks that.

Used only for ``nn.MaxPool2d(2)`` modules (kernel 2, stride 2, no padding or dilation, floor mode, no indices
returned) on bf16, 4-D, channels-last input under ATen's AVX512 kernels, not under ``torch.compile``. The first call
of every channel count also runs ATen and compares, forward and backward; a difference switches the kernel off for
the process (with a warning) and ATen's result is used. ``MIXDISTILL_SMALL_POOL=0`` turns it off; without a C
compiler it stays off.
"""

from __future__ import annotations

import ctypes
import functools
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mixdistill.engine import ckernels

SOURCE = Path(__file__).with_name("small_pool.c")
SWITCH = "MIXDISTILL_SMALL_POOL"  # =0 turns the kernel off

_state = {"disabled": None}  # why the kernel is off in this process (None: not off)
_checked: set[tuple] = set()  # (direction, channels) compared with ATen


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    lib, why = ckernels.load(SOURCE)
    if lib is None:
        return None, why
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.small_pool_forward.argtypes = [p, p, i64, i64, i64, i32]
    lib.small_pool_backward.argtypes = [p, p, p, i64, i64, i64, i32]
    return lib, ""


def status() -> str:
    """What a run's log says about this kernel: "on" or why it is off."""
    return ckernels.status(SWITCH, _library, _state["disabled"])


def _eligible(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4 and x.shape[2] >= 2
            and x.shape[3] >= 2 and x.numel() > 0 and x.is_contiguous(memory_format=torch.channels_last)
            and _state["disabled"] is None and not torch.compiler.is_compiling() and _library()[0] is not None)


def _disagree(direction: str, channels: int) -> None:
    _state["disabled"] = f"off (differed from ATen's {direction} for {channels} channels; ATen used since)"
    warnings.warn(f"mixdistill small max-pool {_state['disabled']}", RuntimeWarning, stacklevel=3)


def _aten(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.ops.aten.max_pool2d_with_indices(x, [2, 2], [2, 2])


def _aten_backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.max_pool2d_with_indices_backward(grad_out, x, [2, 2], [2, 2], [0, 0], [1, 1], False,
                                                           _aten(x)[1])


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.view(torch.int16), b.view(torch.int16))  # NaN encodings too


def _forward(x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    y = torch.empty((n, c, h // 2, w // 2), dtype=x.dtype, memory_format=torch.channels_last)
    if _library()[0].small_pool_forward(x.data_ptr(), y.data_ptr(), n, h, w, c) != 0:
        raise RuntimeError("small_pool_forward failed")
    if ("forward", c) not in _checked:
        _checked.add(("forward", c))
        expected = _aten(x)[0]
        if not _same_bits(expected, y):
            _disagree("forward", c)
            return expected
    return y


def _backward(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    grad_out = grad_out.contiguous(memory_format=torch.channels_last)
    n, c, h, w = x.shape
    if _state["disabled"] is not None or grad_out.dtype != x.dtype:
        return _aten_backward(grad_out, x)
    dx = torch.empty_like(x, memory_format=torch.channels_last)
    if _library()[0].small_pool_backward(x.data_ptr(), grad_out.data_ptr(), dx.data_ptr(), n, h, w, c) != 0:
        raise RuntimeError("small_pool_backward failed")
    if ("backward", c) not in _checked:
        _checked.add(("backward", c))
        expected = _aten_backward(grad_out, x)
        if not _same_bits(expected, dx):
            _disagree("backward", c)
            return expected
    return dx


class _MaxPool2x2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _forward(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return _backward(grad_out, x)


def max_pool_2x2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` through the kernel where it applies (see the module docstring)."""
    if not _eligible(x):
        return F.max_pool2d(x, 2)
    if torch.is_grad_enabled() and x.requires_grad:
        return _MaxPool2x2.apply(x)
    return _forward(x)


def _is_plain_2x2(m: nn.Module) -> bool:
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return (type(m) is nn.MaxPool2d and pair(m.kernel_size) == (2, 2) and pair(m.stride or m.kernel_size) == (2, 2)
            and pair(m.padding) == (0, 0) and pair(m.dilation) == (1, 1) and not m.ceil_mode
            and not m.return_indices)


class SmallMaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d(2)`` whose forward runs ``small_pool.c`` where that is shown equal to ATen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool_2x2(x)


def use_small_max_pool(module: nn.Module, leave: nn.Module | None = None) -> int:
    """Turn every plain ``nn.MaxPool2d(2)`` of ``module`` into a :class:`SmallMaxPool2d`, in place; returns how many.
    Nothing changes where the kernel is off, nor inside ``leave`` (a compiled teacher: a changed module would make
    dynamo compile it again)."""
    return ckernels.swap(module, SWITCH, _library, _is_plain_2x2, SmallMaxPool2d, leave)


def use_plain_max_pool(module: nn.Module) -> None:
    """Undo :func:`use_small_max_pool` in place (torch.fx and dynamo then see torch's own module)."""
    ckernels.unswap(module, SmallMaxPool2d, nn.MaxPool2d)
