"""Data-parallel training under ``torchrun``: process group, DDP wrapping, SyncBatchNorm, collectives.

``torchrun --nproc-per-node N -m poolkit train ...`` (or ``poolkit train --nproc N``) starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. Every rank's loader draws the same epoch plan from
``(seed, epoch)`` and takes every ``world_size``-th position of it, ``batch_size / world_size`` images per
step: together the ranks' batches of a step are the single-process run's global batch of ``batch_size``
images, and every image is used once per epoch. Only rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "CpuSyncBatchNorm",
    "DistContext",
    "all_gather_objects",
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "convert_sync_batchnorm",
    "launch_rank",
    "launched_distributed",
    "parameters_digest",
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


def launch_rank() -> int:
    """This process's rank in a multi-process launch (``RANK``, as torchrun and the SLURM launcher set it);
    0 outside one. The one reader of ``RANK`` outside :func:`setup_distributed`: only rank 0 writes
    a run directory's files and prints."""
    return int(os.environ.get("RANK", "0"))


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
        visible = torch.cuda.device_count()
        if local_rank >= visible:
            raise ValueError(
                f"LOCAL_RANK={local_rank} but only {visible} CUDA device(s) are visible to this process: "
                f"start at most {visible} processes per node (--nproc / --nproc-per-node), make every GPU "
                "of the node visible to every process, or train on the CPU with --device cpu"
            )
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


def any_rank(flag: bool, ctx: DistContext, device: torch.device) -> bool:
    """Whether ``flag`` is true on at least one rank (every rank gets the same answer)."""
    if not ctx.enabled:
        return bool(flag)
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def broadcast_object(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_objects(obj: Any, ctx: DistContext) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def parameters_digest(module: nn.Module) -> str:
    """SHA-256 of every parameter's name, dtype, shape and bytes: equal digests mean identical weights."""
    h = hashlib.sha256()
    for name, param in module.named_parameters():
        tensor = param.detach().to("cpu").contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


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


# ---------------------------------------------------------------------------------------------- SyncBatchNorm
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out


class CpuSyncBatchNorm(_BatchNorm):
    """BatchNorm over the global batch for CPU process groups (Gloo), where ``torch.nn.SyncBatchNorm``
    does not run (it needs a GPU).

    In training, with an initialised process group of more than one rank, the per-channel mean and
    (biased) variance are those of every rank's images together: each rank sums ``x`` and ``x**2`` in
    float64 and the sums are all-reduced (differentiably, so the gradient flows through the global
    statistics as in ``torch.nn.SyncBatchNorm``). The running statistics get the global mean and the
    unbiased global variance. Otherwise (eval mode, one process) it is plain BatchNorm. Parameters and
    buffers are those of ``nn.BatchNorm2d``, so state dicts load either way.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions (N, C, ...), got {input.dim()}D")

    def forward(self, input: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        dims = [0, *range(2, input.dim())]
        wide = input.double()
        count = wide.new_tensor([input.numel() / max(channels, 1)])
        total = _AllReduceSum.apply(torch.cat([wide.sum(dims), (wide * wide).sum(dims), count]))
        n = total[2 * channels]
        if float(n.detach()) <= 1:
            raise ValueError(
                "CpuSyncBatchNorm: expected more than 1 value per channel over all ranks in training, "
                f"got {float(n.detach()):.0f}"
            )
        mean = total[:channels] / n
        var = (total[channels : 2 * channels] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                if self.num_batches_tracked is not None:
                    self.num_batches_tracked.add_(1)
                tracked = float(self.num_batches_tracked or 1)
                factor = 1.0 / tracked if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1))
                self.running_mean.mul_(1 - factor).add_(factor * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - factor).add_(factor * unbiased.to(self.running_var.dtype))
        shape = [1, channels] + [1] * (input.dim() - 2)
        work = torch.promote_types(input.dtype, torch.float32)
        invstd = torch.rsqrt(var + self.eps).to(work).view(shape)
        out = (input.to(work) - mean.to(work).view(shape)) * invstd
        if self.affine:
            out = out * self.weight.to(work).view(shape) + self.bias.to(work).view(shape)
        return out.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm layer of ``module`` synchronised across ranks: ``torch.nn.SyncBatchNorm`` on a
    GPU, :class:`CpuSyncBatchNorm` on the CPU. Parameters are kept (the same tensors), buffers copied.
    """
    if device.type != "cpu":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert_cpu(module)


def _convert_cpu(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, (CpuSyncBatchNorm, nn.SyncBatchNorm)):
        out = CpuSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            with torch.no_grad():
                out.weight = module.weight
                out.bias = module.bias
        out.running_mean = module.running_mean
        out.running_var = module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.training = module.training
        if hasattr(module, "qconfig"):
            out.qconfig = module.qconfig
    for name, child in module.named_children():
        out.add_module(name, _convert_cpu(child))
    return out
