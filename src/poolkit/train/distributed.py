"""Data-parallel training under ``torchrun``: process group, DDP wrapping, batch sharding, metric sums.

``torchrun --nproc_per_node=N -m poolkit train ...`` starts N processes with ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK`` set. Every rank's loader draws the same epoch plan from ``(seed, epoch)`` and takes every
``world_size``-th position of it, ``batch_size / world_size`` images per step: together the ranks' batches
of a step are the single-process run's global batch of ``batch_size`` images. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "launched_distributed",
    "setup_distributed",
    "teardown_distributed",
    "wrap_model",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank, world_size, local_rank: as set by ``torchrun`` (0, 1, 0 without it).
        owns_group: whether :func:`setup_distributed` created the process group (and so destroys it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and shows progress (rank 0)."""
        return self.rank == 0


def launched_distributed() -> bool:
    """Whether the environment describes a multi-process launch (``WORLD_SIZE`` > 1, as torchrun sets)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup_distributed(use_cuda: bool) -> DistContext:
    """Join the process group when launched by ``torchrun`` (NCCL on CUDA, Gloo on CPU).

    An existing process group (initialised by the caller) is reused and left in place.
    """
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        return DistContext(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=False)
    if not launched_distributed():
        return DistContext()
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {', '.join(missing)} is not set; launch with "
            "torchrun --nproc_per_node=N -m poolkit train ..."
        )
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ["LOCAL_RANK"])
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=30))
    return DistContext(rank, world_size, local_rank, owns_group=True)


def teardown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`setup_distributed` created it."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.enabled:
        dist.barrier()


def all_reduce_sum(values: Tensor, ctx: DistContext) -> Tensor:
    """Sum ``values`` over every rank (in place, and returned)."""
    if ctx.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_buffers(module: nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics) so all ranks evaluate one model."""
    if ctx.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def wrap_model(model: nn.Module, ctx: DistContext, device: torch.device, *, find_unused: bool) -> nn.Module:
    """``DistributedDataParallel(model)`` in a multi-process run, ``model`` itself otherwise.

    ``find_unused`` must be true when some parameters take no part in a training step (a pool whose
    parameter is only used in eval, for example).
    """
    if not ctx.enabled:
        return model
    device_ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused
    )
