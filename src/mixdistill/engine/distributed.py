"""One run across processes: ``torchrun --nproc-per-node N -m mixdistill train CONFIG ...``.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; we start the process group (nccl on CUDA, gloo on CPU),
give each rank its shard of the device-resident data (``data.batch_size`` stays the GLOBAL batch), wrap
the method's training forward in DistributedDataParallel (gradients are averaged across ranks, so the
result matches one process with the same global batch), and let rank 0 alone evaluate, log and
checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from mixdistill.errors import ConfigError


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor


def init_distributed(device: str) -> DistContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda") or device.startswith("cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
        _owned["group"] = _owned["made"] = True
    return DistContext(rank, world_size, local_rank)


# group: whether init_distributed made the process group there is now (a caller's own is left to it); made: whether
# it made one in this process at all
_owned = {"group": False, "made": False}


def made_a_process_group() -> bool:
    """Did this process make a process group (torchrun's run), live or destroyed since?"""
    return _owned["made"]


def end_distributed() -> None:
    """Destroy the process group :func:`init_distributed` made, if it made one (not a group the caller of the
    Python API made and still uses)."""
    if _owned["group"] and dist.is_initialized():
        dist.destroy_process_group()
    _owned["group"] = False


def check_same_config(config: dict, ctx: DistContext) -> None:
    """Every rank must train the config rank 0 does: torchrun gives each the same command, but a launcher that
    does not (a wrapper, another node's files) gave silently wrong runs (another seed or lr on rank 1, rank 0's
    recorded) or a gloo traceback (other epochs, another network)."""
    if not ctx.enabled:
        return
    text = json.dumps(config, sort_keys=True, default=str)
    texts: list = [None] * ctx.world_size
    dist.all_gather_object(texts, text)
    other = next((r for r, t in enumerate(texts) if t != texts[0]), None)
    if other is not None:
        raise ConfigError(f"rank {other} was given another config than rank 0 (every rank must train the same run: "
                          "give each the same command and files)")


def local_batch_size(global_batch: int, ctx: DistContext) -> int:
    if global_batch % ctx.world_size:
        raise ConfigError(f"data.batch_size {global_batch} (the global batch) must be divisible by the "
                          f"{ctx.world_size} processes")
    return global_batch // ctx.world_size


class TrainForward(nn.Module):
    """``forward`` = the method's ``forward_train``, so DistributedDataParallel can wrap any method."""

    def __init__(self, distiller: nn.Module):
        super().__init__()
        self.distiller = distiller

    def forward(self, images, labels, info):
        return self.distiller.forward_train(images, labels, info)


def wrap_for_training(distiller: nn.Module, ctx: DistContext, sync_bn: bool) -> nn.Module:
    module = TrainForward(distiller)
    if not ctx.enabled:
        return module
    if sync_bn:
        if not next(distiller.parameters()).is_cuda:  # torch's SyncBatchNorm: "only work with GPU modules"
            raise ConfigError("train.sync_bn=true needs CUDA GPUs (torch's SyncBatchNorm runs on them only); on CPUs "
                              "each rank's BatchNorm sees its own share of the batch")
        for name in ("student", "peers"):
            if hasattr(distiller, name):
                setattr(distiller, name, nn.SyncBatchNorm.convert_sync_batchnorm(getattr(distiller, name)))
    device_ids = [ctx.local_rank] if next(distiller.parameters()).is_cuda else None
    with warnings.catch_warnings():  # torch 2.14 deprecates it; its successor, forward_sync_buffers, still syncs
        # at init, we keep each rank's buffers as its own (torch's advice for that case), and torch 2.4 (the minimum
        # we support) lacks it
        warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)
        return nn.parallel.DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)
