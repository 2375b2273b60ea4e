"""One epoch of training: the model, optimizer, schedule and loaders of a run, and its train/eval loops.

:class:`Trainer` holds everything a run trains (built from a :class:`~poolkit.train.config.RunConfig`),
trains one epoch (:meth:`Trainer.train_epoch`, raising :class:`Divergence` at the first non-finite
loss) and evaluates a split; :mod:`poolkit.train.engine` drives it epoch by epoch and owns the run
directory. The names without ``__all__`` entries are internal to :mod:`poolkit.train`.
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poolkit.layers import GlobalPool2d, Pool2d
from poolkit.models import create_model
from poolkit.tracking.events import EventStream, StepEnded
from poolkit.train import distributed as D
from poolkit.train.checkpoint import CHECKPOINT_FORMAT, capture_rng_state, restore_rng_state
from poolkit.train.config import RunConfig

__all__ = ["STEP_METRICS_EVERY", "WarmupCosine", "describe_pools", "parameter_groups"]

#: A :class:`~poolkit.tracking.events.StepEnded` carries the running loss and top-1 every this many steps
#: (and on an epoch's last step): reading them waits for the device, as a progress bar's refresh did.
STEP_METRICS_EVERY = 10

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None  # type: ignore[assignment]


class WarmupCosine:
    """Learning-rate factor per optimizer step: linear warm-up, then cosine decay to 0.

    For step ``i`` (0-based) of ``total`` with ``warmup`` warm-up steps:
    ``(i + 1) / warmup`` while ``i < warmup``, then ``0.5 * (1 + cos(pi * (i - warmup) / (total - warmup)))``.
    The first cosine step uses the full ``lr``; the last is just above 0.

    A plain object (not a closure) so :class:`torch.optim.lr_scheduler.LambdaLR` stores its state.

    Example:
        >>> f = WarmupCosine(total=10, warmup=2)
        >>> [round(f(i), 3) for i in (0, 1, 2, 6, 9)]
        [0.5, 1.0, 1.0, 0.5, 0.038]
    """

    def __init__(self, total: int, warmup: int = 0) -> None:
        if total < 1 or not 0 <= warmup < total:
            raise ValueError(
                f"WarmupCosine needs total >= 1 and 0 <= warmup < total, got {total=}, {warmup=}"
            )
        self.total = int(total)
        self.warmup = int(warmup)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(step - self.warmup, self.total - self.warmup) / (self.total - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------- helpers
def resolve_device(name: str, ctx: D.DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was asked for but CUDA is not available; use device 'cpu' or 'auto'"
            )
        if ctx.enabled or name == "cuda":
            return torch.device("cuda", ctx.local_rank if ctx.enabled else torch.cuda.current_device())
        index = torch.device(name).index or 0
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device(name)
    return torch.device("cpu")


def _amp_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None without AMP; CPU autocast is bfloat16 only."""
    if not cfg.amp:
        return None
    if device.type == "cpu":
        return torch.bfloat16
    return torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if resource is None:
        return 0
    # ru_maxrss: the process's peak resident set size since it started (KiB on Linux, bytes on macOS).
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def describe_pools(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """Every pooling layer of ``model`` as ``(name, method, module)``, in module order.

    A layer is a :class:`~poolkit.layers.Pool2d` or a :class:`~poolkit.layers.GlobalPool2d` (the head's
    global pool, reported once under its wrapper's name).

    Example:
        >>> from poolkit.models import create_model
        >>> [(n, m) for n, m, _ in describe_pools(create_model("resnet18", 10, stem="imagenet"))]
        [('stem.pool', 'max'), ('head.pool', 'avg')]
    """
    found: list[tuple[str, str, nn.Module]] = []
    inside: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, GlobalPool2d):
            found.append((name, module.method, module))
            inside.append(name)
        elif isinstance(module, Pool2d):
            found.append((name, module.registry_name or type(module).__name__, module))
            inside.append(name)
    return found


def parameter_groups(model: nn.Module, weight_decay: float, pool_weight_decay: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: pooling parameters get ``pool_weight_decay``, the rest
    ``weight_decay``.

    A pooling parameter is any parameter of a :class:`~poolkit.layers.Pool2d` (the downsampling pools and
    the pool inside the head's :class:`~poolkit.layers.GlobalPool2d`): GeM's ``p``, Learnable-T's ``T``,
    the ``theta`` of every sigmoid mixing weight, attention and LIP convolutions. With equal decays, or a
    model without pooling parameters, there is one group (the optimizer of runs made before the option
    existed, so their checkpoints resume). Both groups keep ``model.parameters()`` order.

    Example:
        >>> from poolkit.models import create_model
        >>> groups = parameter_groups(create_model("vgg11", 10, pool="gem", width=0.125), 5e-4, 0.0)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(34, 0.0005), (5, 0.0)]
    """
    pool_ids = {id(p) for m in model.modules() if isinstance(m, Pool2d) for p in m.parameters()}
    params = list(model.parameters())
    pooling = [p for p in params if id(p) in pool_ids]
    if not pooling or pool_weight_decay == weight_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    others = [p for p in params if id(p) not in pool_ids]
    return [
        {"params": others, "weight_decay": weight_decay},
        {"params": pooling, "weight_decay": pool_weight_decay},
    ]


class Divergence(Exception):
    """Raised inside an epoch at the first non-finite training loss; :func:`_train` turns it into
    :class:`RunDiverged` after recording it."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def pool_summary(model: nn.Module) -> dict[str, Any]:
    layers, learned = [], {}
    for name, method, module in describe_pools(model):
        layers.append({"name": name, "method": method, "params": _trainable(module)})
        values = module.learned_values() if hasattr(module, "learned_values") else {}
        learned[name] = {"method": method, "values": {k: [float(v) for v in vs] for k, vs in values.items()}}
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "pool_params": sum(layer["params"] for layer in layers),
        "pool_layers": layers,
        "learned": learned,
    }


# ---------------------------------------------------------------------------------------------- one epoch
class Meter:
    """Sums loss, top-1 and top-5 hits on the device (no host sync per step); reduced across ranks once."""

    def __init__(self, device: torch.device) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss_sum: Tensor, logits: Tensor, target: Tensor) -> None:
        hits = logits.topk(min(5, logits.shape[1]), dim=1).indices.eq(target.unsqueeze(1))
        self.sums += torch.stack([loss_sum.detach(), hits[:, 0].sum(), hits.any(dim=1).sum()]).double()
        self.count += int(target.numel())

    def running(self) -> tuple[float, float]:
        """This rank's mean loss and top-1 so far (for the progress bar)."""
        loss, top1, _ = self.sums.tolist()
        n = max(self.count, 1)
        return loss / n, 100.0 * top1 / n

    def result(self, ctx: D.DistContext) -> tuple[float, float, float, int]:
        """Mean loss, top-1 and top-5 (percent) and the number of images, over every rank."""
        totals = torch.cat([self.sums, self.sums.new_tensor([float(self.count)])])
        loss, top1, top5, n = D.all_reduce_sum(totals, ctx).tolist()
        n = max(n, 1.0)
        return loss / n, 100.0 * top1 / n, 100.0 * top5 / n, int(n)


class Trainer:
    """The state of one run between epochs: model, optimizer, scheduler, scaler, loaders."""

    def __init__(self, cfg: RunConfig, device: torch.device, ctx: D.DistContext) -> None:
        from poolkit.data import TensorLoader, load_dataset

        self.cfg, self.device, self.ctx = cfg, device, ctx
        splits = load_dataset(
            cfg.dataset, cfg.data_dir, download=cfg.download, val_fraction=cfg.val_fraction, seed=cfg.seed
        )
        self.splits = splits
        self.model_kwargs: dict[str, Any] = {
            "name": cfg.model, "num_classes": splits.num_classes, "pool": cfg.pool, "width": cfg.width,
            "in_channels": splits.in_channels, "head": cfg.head, "stem": cfg.stem,
            "global_pool": cfg.global_pool,
            **cfg.pool_options,
        }  # fmt: skip
        # Seeded after the data is loaded, so initialisation does not depend on how the data was read.
        _seed_everything(cfg.seed)
        model = create_model(**self.model_kwargs).to(device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.sync_bn and ctx.enabled:
            # torch.nn.SyncBatchNorm on GPUs, poolkit's CpuSyncBatchNorm on Gloo; same state_dict keys.
            model = D.convert_sync_batchnorm(model, device)
        self.model = model
        if cfg.batch_size % ctx.world_size:
            raise ValueError(
                f"batch_size={cfg.batch_size} must be divisible by the {ctx.world_size} torchrun processes "
                "(each rank takes an equal share of every global batch)"
            )
        per_rank = cfg.batch_size // ctx.world_size
        common = {
            "mean": splits.mean, "std": splits.std, "device": device, "seed": cfg.seed,
            "channels_last": cfg.channels_last, "rank": ctx.rank, "world_size": ctx.world_size,
        }  # fmt: skip
        self.train_loader = TensorLoader(splits.train, per_rank, train=True, flip=splits.flip, **common)
        # A last global batch with fewer than 2 images per rank is dropped: BatchNorm cannot train on a
        # single image (1x1 feature maps), and with several ranks no rank may be left without a batch.
        last = len(splits.train) % cfg.batch_size
        self.train_loader.drop_last = 0 < last < 2 * ctx.world_size
        self.eval_loaders = {
            name: TensorLoader(split, per_rank, train=False, **common)
            for name, split in (("test", splits.test), ("val", splits.val))
            if split is not None
        }
        self.steps_per_epoch = len(self.train_loader)
        self.optimizer = torch.optim.SGD(
            parameter_groups(model, cfg.weight_decay, cfg.pool_weight_decay),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.nesterov,
        )
        schedule = WarmupCosine(cfg.epochs * self.steps_per_epoch, cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.amp_dtype = _amp_dtype(cfg, device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype is torch.float16)
        compiled = torch.compile(model) if cfg.compile else model
        self.eval_model = compiled
        self.train_model = D.wrap_model(
            compiled, ctx, device, find_unused=pool_summary(model)["pool_params"] > 0
        )
        self.criterion = nn.CrossEntropyLoss(reduction="sum", label_smoothing=cfg.label_smoothing)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(self, epoch: int, stream: EventStream | None = None) -> tuple[float, float, int, float]:
        """One pass over the training split; returns (loss, top-1, images, seconds).

        With a ``stream`` whose sinks want steps (a progress bar), each step emits a
        :class:`~poolkit.tracking.events.StepEnded`; without one, nothing waits for the device per step.
        """
        self.train_model.train()
        meter = Meter(self.device)
        steps = stream if stream is not None and stream.wants_steps else None
        start = time.perf_counter()
        # The finiteness of each step's loss is read one step late, so the host does not wait for the
        # device every step; a divergence is still reported at the step where it happened.
        pending: tuple[int, Tensor] | None = None
        for step, (x, y) in enumerate(self.train_loader.epoch(epoch)):
            with self._autocast():
                logits = self.train_model(x)
            loss_sum = self.criterion(logits.float(), y)
            if self.ctx.enabled:
                # DDP averages the ranks' gradients; dividing each rank's summed loss by
                # (images of the global step / world_size) makes that average the gradient of the global
                # batch's mean loss, also when the last step's shares differ by an image.
                denominator: float = self.train_loader.global_batch_count(step) / self.ctx.world_size
            else:
                denominator = y.shape[0]
            lr = self.optimizer.param_groups[0]["lr"]
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss_sum / denominator).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if pending is not None:
                self._check_finite(epoch, *pending)
            pending = (step, loss_sum.detach() / denominator)
            meter.add(loss_sum, logits.detach(), y)
            if steps is not None:
                running: tuple[float | None, float | None] = (None, None)
                if step % STEP_METRICS_EVERY == 0 or step + 1 == self.steps_per_epoch:
                    running = meter.running()
                steps.emit(StepEnded(epoch, step + 1, self.steps_per_epoch, lr, *running))
        if pending is not None:
            self._check_finite(epoch, *pending)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss, top1, _, n = meter.result(self.ctx)
        return loss, top1, n, seconds

    def _check_finite(self, epoch: int, step: int, loss: Tensor) -> None:
        """Raise :class:`Divergence` when the (unscaled) training loss of ``step`` is not finite.

        The loss is the one the model computed, before the gradient scaler multiplies it, so a float16
        step whose scaled gradients overflow (the scaler skips it and lowers its scale) is not divergence.
        In a data-parallel run every rank learns whether any rank's loss is not finite, so all stop at the
        same step.
        """
        finite = bool(torch.isfinite(loss).item())
        if D.any_rank(not finite, self.ctx, self.device):
            raise Divergence(epoch, step + 1, float(loss.item()))

    @torch.no_grad()
    def evaluate(self, name: str) -> tuple[float, float, float]:
        """Plain (unsmoothed) cross-entropy, top-1 and top-5 on one evaluation split."""
        D.broadcast_buffers(self.model, self.ctx)
        self.eval_model.eval()
        meter = Meter(self.device)
        for x, y in self.eval_loaders[name].epoch(0):
            with self._autocast():
                logits = self.eval_model(x)
            meter.add(F.cross_entropy(logits.float(), y, reduction="sum"), logits, y)
        loss, top1, top5, _ = meter.result(self.ctx)
        return loss, top1, top5

    def state(self, epoch: int, rows: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
            "metrics": rows,
            "config": self.cfg.to_dict(),
            "model_kwargs": self.model_kwargs,
        }

    def load_state(self, ckpt: Mapping[str, Any]) -> tuple[int, list[dict[str, float]]]:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng_state(ckpt["rng"])
        return int(ckpt["epoch"]), [dict(row) for row in ckpt["metrics"]]
