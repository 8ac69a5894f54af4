"""``SGD``: torch.optim.SGD, less the torch._dynamo import on its first use.

torch.optim.Optimizer reaches its eager code through wrappers that import torch._dynamo when first called:
``add_param_group`` (called by the constructor), ``zero_grad``, ``state_dict`` and ``load_state_dict`` through
``torch._disable_dynamo``, and ``step`` through ``_use_grad_for_differentiable``, whose graph breaks do nothing
outside torch.compile. The import takes 1-2 s of a fresh process (each worker of a study grid, each
``mixdistill train``), and an eager run has no other use for it. This class calls the wrapped functions instead:
the same code, so the same floats and state dicts as torch.optim.SGD (tests/test_optim.py). The trainer compiles
the distiller, never the optimiser step, so nothing compiled goes through these methods.
"""

from __future__ import annotations

import inspect

import torch

_OPTIMIZER = torch.optim.Optimizer


class SGD(torch.optim.SGD):
    add_param_group = inspect.unwrap(_OPTIMIZER.add_param_group)
    zero_grad = inspect.unwrap(_OPTIMIZER.zero_grad)
    state_dict = inspect.unwrap(_OPTIMIZER.state_dict)
    load_state_dict = inspect.unwrap(_OPTIMIZER.load_state_dict)
    _step = inspect.unwrap(torch.optim.SGD.step)  # also under Optimizer's profiling wrapper once an SGD exists

    def step(self, closure=None):
        with torch.set_grad_enabled(self.defaults["differentiable"]):  # the wrapper's one effect in eager mode
            return self._step(closure)


def sgd_kernel(cuda_graphs: bool, scaled: bool = False) -> dict:
    """How SGD updates the parameters: one fused CUDA kernel with train.cuda_graphs (the rest of that step is a
    few graph replays, and the per-tensor launches of the foreach kernels would be most of what is left),
    the foreach kernels otherwise. The same update rule either way; the fused kernel may round differently.
    Not fused under fp16's GradScaler (``scaled``): a fused optimiser skips an inf/NaN step inside its kernel, so
    the trainer could no longer tell a skipped step (``scaled_step``) and would advance its EMAs on it."""
    return {"foreach": False, "fused": True} if cuda_graphs and not scaled else {"foreach": True, "fused": None}
