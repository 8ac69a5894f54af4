"""The first layer of a grey-scale net (3x3, stride 1, padding 1, one input channel, 8/16/32 output channels) on
channels-last bf16, equal bit for bit to ATen's (``small_conv.c``).

cnn5's first convolution (Fashion-MNIST, the CPU-scale studies' student and teacher) costs oneDNN ~0.75 ms per
128 images on one thread, most of it around 7 M multiply-adds; ``small_conv.c`` does the same float sums in oneDNN's
order (found by search, checked below) with the output channels in vector lanes: 0.3 ms for 8 channels, 0.45 ms
for 16. Only the forward is ours; the backward is ATen's ``convolution_backward``, called as autograd's
convolution node calls it. ``benchmarks/small_conv.py`` times whole runs and checks that they end the same.

Used only for a ``Conv2d(1, C, 3, padding=1)`` (stride 1, no dilation or groups, zero padding, bias or not) under
bf16 autocast (or on bf16 input and weights), with channels-last weights (ATen's output is then channels-last), on
ATen's AVX512 kernels on a CPU with AVX512-BF16 and without AMX, oneDNN's ISA not capped (where oneDNN's order
was found; elsewhere oneDNN may run other kernels), not under ``torch.compile``.
The first call of each (channels, bias, height, width) also runs ATen on the batch and on a probe built so that
any other summation order shows (values 2^25 apart cancel or not, depending on the order); a difference switches the
kernel off for the process (with a warning) and ATen's result is used. A batch with a value the kernel does not take
(NaN, infinity, below 2^-50 or from 2^61 in magnitude) goes to ATen. ``MIXDISTILL_SMALL_CONV=0`` turns it off;
without a C compiler it stays off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import warnings
import weakref
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from mixdistill.engine import ckernels

SOURCE = Path(__file__).with_name("small_conv.c")
SWITCH = "MIXDISTILL_SMALL_CONV"  # =0 turns the kernel off
CHANNELS = (8, 16, 32)  # the output channel counts small_conv.c has a copy for

_state = {"disabled": None}  # why the kernel is off in this process (None: not off)
_checked: set[tuple] = set()  # (channels, bias, height, width) compared with ATen


@functools.cache
def _library() -> tuple[ctypes.CDLL | None, str]:
    lib, why = ckernels.load(SOURCE)
    if lib is None:
        return None, why
    cpu = torch.cpu.get_capabilities()  # the hardware's (cpuinfo), whatever a test sets for the precision
    if cpu.get("amx_tile", False):
        return None, "off (a CPU with AMX: oneDNN's order was matched without AMX only)"
    if not cpu.get("avx512_bf16", False):
        return None, "off (no AVX512-BF16: oneDNN's order was matched on AVX512-BF16 only)"
    isa = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    if isa and isa.upper() != "ALL":
        return None, f"off (ONEDNN_MAX_CPU_ISA={isa}: oneDNN's order was matched with all its kernels)"
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.small_conv_forward.argtypes = [p, p, p, p, i64, i64, i64, i32]
    return lib, ""


def status() -> str:
    """What a run's log says about this kernel: "on" or why it is off."""
    return ckernels.status(SWITCH, _library, _state["disabled"])


def _is_first_layer(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.in_channels == 1 and m.out_channels in CHANNELS
            and tuple(m.kernel_size) == (3, 3) and tuple(m.stride) == (1, 1) and m.padding in ((1, 1), 1)
            and tuple(m.dilation) == (1, 1) and m.groups == 1 and m.padding_mode == "zeros")


def _runs_in_bf16(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Would the convolution run in bf16 here (under bf16 autocast, or on bf16 tensors)?"""
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        return x.dtype in (torch.float32, torch.bfloat16)
    return x.dtype == weight.dtype == torch.bfloat16


def _eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    n, c, h, w = x.shape if x.dim() == 4 else (0, 0, 0, 0)
    return (x.device.type == "cpu" and c == 1 and n > 0 and h > 0 and w > 0 and x.stride(0) == h * w
            and x.stride(2) == w and x.stride(3) == 1 and weight.stride(1) == 1  # channels-last weights
            and _runs_in_bf16(x, weight) and _state["disabled"] is None
            and not torch.compiler.is_compiling() and _library()[0] is not None)


def _aten(x, weight, bias):
    return F.conv2d(x, weight, bias, padding=1)


def _kernel(x, weight, bias) -> torch.Tensor | None:
    """The kernel's output, or None where it does not take the batch (a value out of its range)."""
    n, _, h, w = x.shape
    c = weight.shape[0]
    y = torch.empty((n, c, h, w), dtype=torch.bfloat16, memory_format=torch.channels_last)
    rc = _library()[0].small_conv_forward(x.data_ptr(), weight.contiguous().data_ptr(),
                                          None if bias is None else bias.contiguous().data_ptr(), y.data_ptr(),
                                          n, h, w, c)
    if rc < 0:
        raise RuntimeError(f"small_conv_forward returned {rc}")
    return None if rc else y


def probe(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, seed: int = 0):
    """Input, weights and bias shaped and laid out as ``x`` (8 images), ``weight`` and ``bias`` on which summing a
    pixel's 9 products in any other order than oneDNN's changes the output: inputs of +-2^25, 2^24, 1, 3, +-0 and
    weights of +-1, 0.5, 2, -0.25 (all exact in bf16), so that 2^25 + 1 - 2^25 is 0 or 1 by the order of the
    additions."""
    g = torch.Generator().manual_seed(seed)
    shape = (8, *x.shape[1:])

    def drawn(values, size, like_strides):
        out = torch.empty_strided(size, like_strides, dtype=torch.bfloat16)
        return out.copy_(torch.tensor(values)[torch.randint(len(values), size, generator=g)])

    px = drawn([2.0 ** 25, -2.0 ** 25, 2.0 ** 24, 1.0, -1.0, 3.0, 0.0, -0.0], shape, x.stride())
    pw = drawn([1.0, -1.0, 0.5, 2.0, -0.25], tuple(weight.shape), weight.stride())
    pb = None if bias is None else drawn([2.0 ** 25, -2.0 ** 25, 1.0, 0.5], tuple(bias.shape), bias.stride())
    return px, pw, pb


def _same(a: torch.Tensor, b: torch.Tensor | None) -> bool:
    return b is not None and a.shape == b.shape and a.stride() == b.stride() and torch.equal(a.view(torch.int16),
                                                                                            b.view(torch.int16))


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """bf16 ``x``, ``weight``, ``bias``: ATen's convolution output, through the kernel where it takes the batch."""
    y = _kernel(x, weight, bias)
    if y is None:
        return _aten(x, weight, bias)
    key = (weight.shape[0], bias is not None, x.shape[2], x.shape[3])
    if key not in _checked:
        _checked.add(key)
        px, pw, pb = probe(x, weight, bias)
        expected = _aten(x, weight, bias)
        if not (_same(expected, y) and _same(_aten(px, pw, pb), _kernel(px, pw, pb))):
            _state["disabled"] = (f"off (differed from ATen's forward for {key[0]} channels, "
                                  f"{'a' if key[1] else 'no'} bias, {key[2]}x{key[3]}; ATen used since)")
            warnings.warn(f"mixdistill first-layer convolution {_state['disabled']}", RuntimeWarning, stacklevel=3)
            return expected
    return y


class _FirstLayerConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.bias_sizes = None if bias is None else list(bias.shape)
        return _forward(x, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.bias_sizes is not None and
                ctx.needs_input_grad[2]]
        return torch.ops.aten.convolution_backward(grad_out, x, weight, ctx.bias_sizes, [1, 1], [1, 1], [1, 1],
                                                   False, [0, 0], 1, mask)


# layer -> {parameter name: (the parameter, its version, its bf16 cast)}. Keyed weakly by the layer: a cast's autograd
# graph holds its parameter, so a table keyed by the parameter would keep every layer's weights alive for good. (Two
# layers sharing one parameter would get a cast each, unlike autocast; no network here ties first layers.)
_casts: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _autocast_cast(layer: nn.Module, name: str) -> torch.Tensor | None:
    """``layer``'s parameter ``name`` in bf16 as bf16 autocast gives it to ATen's convolution. Autocast casts a
    parameter (a leaf that requires grad) once per version and hands every later call the same cast, so a layer run
    twice before one backward (kd_view's clean and augmented batches) sums its two gradients in bf16 before the
    cast's backward takes them to fp32; a cast per call would sum them in fp32 instead (other floats: 60 of
    wang2022's 86 runs differed so before this cache). Kept here per parameter version: an optimiser step makes a
    new one."""
    t = getattr(layer, name)
    if t is None or t.dtype == torch.bfloat16:
        return t
    if not (t.is_leaf and t.requires_grad and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
            and torch.is_autocast_cache_enabled()):
        return t.to(torch.bfloat16)
    own = _casts.setdefault(layer, {})
    hit = own.get(name)
    if hit is not None and hit[0] is t and hit[1] == t._version:
        return hit[2]
    cast = t.to(torch.bfloat16)
    own[name] = (t, t._version, cast)
    return cast


class SmallFirstConv2d(nn.Conv2d):
    """``nn.Conv2d(1, C, 3, padding=1)`` whose forward runs ``small_conv.c`` where that is shown equal to ATen."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _eligible(x, self.weight):
            return super().forward(x)
        x = x.to(torch.bfloat16)  # what bf16 autocast gives the convolution
        weight, bias = _autocast_cast(self, "weight"), _autocast_cast(self, "bias")
        if torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad
                                        or (bias is not None and bias.requires_grad)):
            return _FirstLayerConv.apply(x, weight, bias)
        return _forward(x, weight, bias)


def use_small_first_conv(module: nn.Module, leave: nn.Module | None = None) -> int:
    """Turn every grey-scale first layer of ``module`` (see the module docstring) into a :class:`SmallFirstConv2d`,
    in place; returns how many. Nothing changes where the kernel is off, nor inside ``leave`` (a compiled teacher)."""
    return ckernels.swap(module, SWITCH, _library, _is_first_layer, SmallFirstConv2d, leave)


def use_plain_first_conv(module: nn.Module) -> None:
    """Undo :func:`use_small_first_conv` in place (torch.fx and dynamo then see torch's own module)."""
    ckernels.unswap(module, SmallFirstConv2d, nn.Conv2d)
