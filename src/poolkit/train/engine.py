"""One training run: config -> run directory (config.yaml, env.json, metrics.csv, checkpoint.pt, result.json).

The protocol (documented in ``docs/training.md``): SGD with momentum and weight decay, a per-iteration
cosine learning rate from ``lr`` to 0 after an optional linear warm-up, cross-entropy with label
smoothing, optional AMP / channels_last / torch.compile; each epoch trains once over the training split
and then evaluates the test (and validation) split, giving one row of ``metrics.csv``. The accuracy a run
reports is the last epoch's.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

import poolkit
from poolkit.layers import GlobalPool2d, Pool2d
from poolkit.models import create_model
from poolkit.rundir import CHECKPOINT_FILE, RunDir, RunState
from poolkit.tracking import EpochEnded, EventStream, RunEnded, RunStarted, create_sinks
from poolkit.train import distributed as D
from poolkit.train.checkpoint import (
    CHECKPOINT_FORMAT,
    capture_rng_state,
    load_latest_checkpoint,
    restore_rng_state,
)
from poolkit.train.config import NON_RESULT_KEYS, RunConfig, load_config_file
from poolkit.train.lock import LockHolder, RunBusyError, RunLock, RunLockError, RunLockLost, lock_wait_setting

__all__ = [
    "METRIC_COLUMNS",
    "VAL_COLUMNS",
    "EpochCallback",
    "RunDiverged",
    "WarmupCosine",
    "describe_pools",
    "load_run",
    "parameter_groups",
    "train_run",
]

try:
    import resource
except ImportError:  # Windows: no getrusage
    resource = None  # type: ignore[assignment]

logger = logging.getLogger("poolkit.train")

#: Columns of metrics.csv, in order; :data:`VAL_COLUMNS` follow when a validation split is held out.
METRIC_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
    "lr", "epoch_seconds", "images_per_second", "peak_memory_bytes",
)  # fmt: skip
VAL_COLUMNS: tuple[str, ...] = ("val_loss", "val_top1")

#: ``on_epoch(epoch, row)``: called on rank 0 after each epoch's files are written.
EpochCallback = Callable[[int, dict[str, float]], None]


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run stopped at that step.

    Not a bug and not a finished run: ``result.json`` says ``"status": "diverged"`` with where it happened
    (``diverged``: ``epoch``, ``step`` in the epoch, ``global_step``, ``loss``), and ``checkpoint.pt``
    holds the last finite weights (the end of the epoch before). Training the same config again diverges
    again, so a rerun raises this error from the stored result without training.
    """

    def __init__(self, run_dir: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.record = dict(record)
        kept = int(record.get("epoch", 1)) - 1
        checkpoint = (
            f"the last finite checkpoint (after epoch {kept}) is kept in {CHECKPOINT_FILE}"
            if kept > 0
            else "no checkpoint was kept (it diverged in the first epoch)"
        )
        super().__init__(
            f"{str(self.run_dir)!r}: the run diverged: the training loss was {record.get('loss')} at epoch "
            f"{record.get('epoch')}, step {record.get('step')} of {record.get('steps_per_epoch')} (step "
            f"{record.get('global_step')} of the run); training stopped there and {checkpoint}. Try a lower "
            "lr, warmup_epochs, or amp off"
        )


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
def _resolve_device(name: str, ctx: D.DistContext) -> torch.device:
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


def _peak_memory(device: torch.device) -> int:
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


class _Divergence(Exception):
    """Raised inside an epoch at the first non-finite training loss; :func:`_train` turns it into
    :class:`RunDiverged` after recording it."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        super().__init__(f"non-finite training loss {loss} at epoch {epoch}, step {step}")
        self.epoch, self.step, self.loss = epoch, step, loss


def _trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _pool_summary(model: nn.Module) -> dict[str, Any]:
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


def _git_revision() -> str | None:
    """The commit of the poolkit checkout this code runs from (``+dirty`` with local changes), if any."""
    package = Path(poolkit.__file__).resolve().parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=package, capture_output=True, text=True, timeout=10
        )
        if top.returncode != 0 or package not in {
            Path(top.stdout.strip()) / p for p in ("src/poolkit", "poolkit")
        }:
            return None
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=package, capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if rev.returncode != 0:
        return None
    return rev.stdout.strip() + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _environment(device: torch.device, ctx: D.DistContext) -> dict[str, Any]:
    cuda = device.type == "cuda"
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "poolkit": poolkit.__version__,
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if cuda else None,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "world_size": ctx.world_size,
        "git_revision": _git_revision(),
        "argv": list(sys.argv),
    }


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _config_diff(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    keys = [k for k in wanted if k not in NON_RESULT_KEYS and stored.get(k) != wanted[k]]
    return ", ".join(f"{k}: {stored.get(k)!r} -> {wanted[k]!r}" for k in keys) or "(the run ids differ)"


def _inspect_run_dir(run: RunDir, cfg: RunConfig, resume: bool) -> RunState:
    """What ``run`` holds for ``cfg``: ``FINISHED`` (a result.json, finished or diverged), ``RESUMABLE`` or
    ``NOT_STARTED``; ValueError on conflict."""
    out = run.path
    if not out.exists():
        return RunState.NOT_STARTED
    if not out.is_dir():
        raise ValueError(f"{str(out)!r} exists and is not a directory; the run directory must be a folder")
    config_path = run.config
    if config_path.exists():
        try:
            stored = RunConfig.from_stored(load_config_file(config_path))
        except ValueError as exc:
            raise ValueError(
                f"{str(out)!r} holds a run whose config.yaml is no longer valid ({exc}); "
                "use another directory or delete it"
            ) from exc
        if stored.run_id() != cfg.run_id():
            raise ValueError(
                f"{str(out)!r} holds a different run (run id {stored.run_id()}, this config {cfg.run_id()}; "
                f"{_config_diff(stored.to_dict(), cfg.to_dict())}); use another directory, or delete it "
                "to start over"
            )
    elif run.result.exists() or run.has_checkpoint():
        raise ValueError(f"{str(out)!r} holds run files but no config.yaml; use another directory")
    if run.result.exists():
        return RunState.FINISHED
    if run.has_checkpoint():
        if not resume:
            raise ValueError(
                f"{str(out)!r} holds an unfinished run (checkpoint.pt); pass resume=True (--resume) to "
                "continue it, or delete the directory to start over"
            )
        return RunState.RESUMABLE
    return RunState.NOT_STARTED


# ---------------------------------------------------------------------------------------------- one epoch
class _Meter:
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


class _Trainer:
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
            compiled, ctx, device, find_unused=_pool_summary(model)["pool_params"] > 0
        )
        self.criterion = nn.CrossEntropyLoss(reduction="sum", label_smoothing=cfg.label_smoothing)

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_epoch(self, epoch: int, bar: Any) -> tuple[float, float, int, float]:
        """One pass over the training split; returns (loss, top-1, images, seconds)."""
        self.train_model.train()
        meter = _Meter(self.device)
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
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss_sum / denominator).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if pending is not None:
                self._check_finite(epoch, *pending)
            pending = (step, loss_sum.detach() / denominator)
            meter.add(loss_sum, logits.detach(), y)
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step + 1 == self.steps_per_epoch:
                    loss, top1 = meter.running()
                    bar.set_postfix(loss=f"{loss:.3f}", acc=f"{top1:.1f}")
        if pending is not None:
            self._check_finite(epoch, *pending)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds = time.perf_counter() - start
        loss, top1, _, n = meter.result(self.ctx)
        return loss, top1, n, seconds

    def _check_finite(self, epoch: int, step: int, loss: Tensor) -> None:
        """Raise :class:`_Divergence` when the (unscaled) training loss of ``step`` is not finite.

        The loss is the one the model computed, before the gradient scaler multiplies it, so a float16
        step whose scaled gradients overflow (the scaler skips it and lowers its scale) is not divergence.
        In a data-parallel run every rank learns whether any rank's loss is not finite, so all stop at the
        same step.
        """
        finite = bool(torch.isfinite(loss).item())
        if D.any_rank(not finite, self.ctx, self.device):
            raise _Divergence(epoch, step + 1, float(loss.item()))

    @torch.no_grad()
    def evaluate(self, name: str) -> tuple[float, float, float]:
        """Plain (unsmoothed) cross-entropy, top-1 and top-5 on one evaluation split."""
        D.broadcast_buffers(self.model, self.ctx)
        self.eval_model.eval()
        meter = _Meter(self.device)
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


# ---------------------------------------------------------------------------------------------- the run
def _result(cfg: RunConfig, trainer: _Trainer, rows: list[dict[str, float]]) -> dict[str, Any]:
    last = rows[-1]
    return {
        "status": "finished",
        "run_id": cfg.run_id(),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "pool": cfg.pool,
        "pool_options": dict(cfg.pool_options),
        "global_pool": cfg.global_pool,
        "head": cfg.head,
        "stem": cfg.stem,
        "seed": cfg.seed,
        "width": cfg.width,
        "epochs": cfg.epochs,
        "weight_decay": cfg.weight_decay,
        "pool_weight_decay": cfg.pool_weight_decay,
        "test_top1": last["test_top1"],
        "test_top5": last["test_top5"],
        "test_loss": last["test_loss"],
        "train_top1": last["train_top1"],
        "train_loss": last["train_loss"],
        "val_top1": last.get("val_top1"),
        "val_loss": last.get("val_loss"),
        "seconds": sum(r["epoch_seconds"] for r in rows),
        "epoch_seconds_mean": sum(r["epoch_seconds"] for r in rows) / len(rows),
        "images_per_second_mean": sum(r["images_per_second"] for r in rows) / len(rows),
        "peak_memory_bytes": max(int(r["peak_memory_bytes"]) for r in rows),
        **_pool_summary(trainer.model),
        "device": str(trainer.device),
        "device_name": (
            torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else _cpu_name()
        ),
        "world_size": trainer.ctx.world_size,
        "sync_bn": bool(cfg.sync_bn and trainer.ctx.enabled),
        "amp": cfg.amp,
        "amp_dtype": None if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch."),
        "finished": _now(),
    }


def _diverged(
    cfg: RunConfig, trainer: _Trainer, rows: list[dict[str, float]], stop: _Divergence
) -> dict[str, Any]:
    """``result.json`` of a run that diverged: where, the loss, and the epochs it finished before."""
    return {
        "status": "diverged",
        "run_id": cfg.run_id(),
        "model": cfg.model,
        "dataset": cfg.dataset,
        "pool": cfg.pool,
        "pool_options": dict(cfg.pool_options),
        "seed": cfg.seed,
        "width": cfg.width,
        "epochs": cfg.epochs,
        "weight_decay": cfg.weight_decay,
        "pool_weight_decay": cfg.pool_weight_decay,
        "diverged": {
            "epoch": stop.epoch,
            "step": stop.step,
            "steps_per_epoch": trainer.steps_per_epoch,
            "global_step": (stop.epoch - 1) * trainer.steps_per_epoch + stop.step,
            "loss": repr(stop.loss),
            "checkpoint_epoch": len(rows),
        },
        "epochs_done": len(rows),
        "test_top1": None,
        "device": str(trainer.device),
        "world_size": trainer.ctx.world_size,
        "amp": cfg.amp,
        "finished": _now(),
    }


def train_run(
    config: Mapping[str, Any] | RunConfig,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = True,
    position: int | None = None,
    on_epoch: EpochCallback | None = None,
    lock_wait: float | None = None,
    on_finished: Callable[[nn.Module | None], None] | None = None,
) -> dict[str, Any]:
    """Train one run and write its run directory; return the result (what ``result.json`` holds).

    Args:
        config: a :class:`RunConfig` or a mapping validated by :meth:`RunConfig.from_dict`.
        out_dir: the run directory (created if needed).
        resume: continue from ``checkpoint.pt`` when it exists (the final weights are bit-identical to an
            uninterrupted run on CPU); without a checkpoint the run starts fresh.
        progress: show a tqdm bar per epoch with the running loss and accuracy.
        position: the bar's tqdm ``position`` (several runs side by side); its bar is then not left behind.
        on_epoch: ``on_epoch(epoch, row)`` after each epoch's files are written (rank 0 only).
        lock_wait: seconds to wait for the run's lock (``RUN_DIR/lock.json``, see
            :mod:`poolkit.train.lock`) when another live process holds it; default: the environment
            variable ``POOLKIT_LOCK_WAIT_S``, else 0 (refuse at once).
        on_finished: ``on_finished(model)`` on rank 0 once the run is finished and its files written: the
            trained model (unwrapped, on its device) to use further without reading it back from disk
            (the shift probe, :func:`poolkit.experiments.runner.train_and_probe`), or None when the
            directory already held the finished run.

    Returns:
        The result dict. A directory that already holds a finished run of the same config returns its
        ``result.json`` without training.

    Raises:
        ValueError: an invalid config, a directory holding a different run, or an unfinished run
            without ``resume=True``.
        RunBusyError: another live process is training this run directory (after ``lock_wait``).
        RunLockLost: another process took the run over while this one trained it (this process had
            stopped sending heartbeats for longer than the lock's expiry); nothing more was written.

    Example:
        >>> result = train_run({"dataset": "synthetic", "model": "vgg11", "width": 0.125, "epochs": 1},
        ...                    "runs/demo", progress=False)  # doctest: +SKIP
        >>> result["test_top1"]  # doctest: +SKIP
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.from_dict(config)
    run = RunDir(out_dir)
    use_cuda = torch.cuda.is_available() and (cfg.device.startswith("cuda") or cfg.device == "auto")
    ctx = D.setup_distributed(use_cuda)
    threads_before = torch.get_num_threads()
    try:
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        device = _resolve_device(cfg.device, ctx)
        state = _inspect_run_dir(run, cfg, resume)
        D.barrier(ctx)
        if state is RunState.FINISHED:
            return _finished(run, ctx, on_finished)
        lock = _take_lock(run, ctx, _lock_wait(lock_wait))
        try:
            # Again under the lock: the process that held it may have finished or advanced the run.
            state = _inspect_run_dir(run, cfg, resume)
            D.barrier(ctx)
            if state is RunState.FINISHED:
                return _finished(run, ctx, on_finished)
            resume_run = state is RunState.RESUMABLE
            return _tracked(
                cfg,
                ctx,
                lambda stream: _train(
                    cfg, run, device, ctx, resume_run, progress, position, on_epoch, on_finished, lock, stream
                ),
            )
        finally:
            if lock is not None:
                lock.release()
    finally:
        torch.set_num_threads(threads_before)
        D.teardown_distributed(ctx)


def _finished(
    run: RunDir, ctx: D.DistContext, on_finished: Callable[[nn.Module | None], None] | None
) -> dict[str, Any]:
    problems: list[str] = []
    result = run.read_result(problems)
    if result is None:
        raise ValueError(
            f"{str(run.path)!r}: {'; '.join(problems) or 'result.json cannot be read'}; "
            "delete result.json to train the run again"
        )
    if result.get("status") == RunState.DIVERGED.value:
        raise RunDiverged(run.path, result.get("diverged") or {})
    if on_finished is not None and ctx.is_main:
        on_finished(None)
    return result


def _lock_wait(value: float | None) -> float:
    if value is None:
        value = lock_wait_setting()
    return max(0.0, float(value)) if value is not None else 0.0


def _take_lock(run: RunDir, ctx: D.DistContext, wait_s: float) -> RunLock | None:
    """Rank 0 takes the run's lock; every rank learns whether it did (and raises the same error if not)."""
    out = run.path
    lock: RunLock | None = None
    failure: tuple[str, Any] | None = None
    if ctx.is_main:
        try:
            lock = run.lock().acquire(wait_s=wait_s)
        except RunBusyError as exc:
            if not ctx.enabled:
                raise
            failure = ("busy", exc.holder.to_dict())
        except ValueError as exc:  # bad POOLKIT_LOCK_* settings
            if not ctx.enabled:
                raise
            failure = ("value", str(exc))
        except OSError as exc:
            message = f"cannot take the run lock in {str(out)!r}: {exc}"
            if not ctx.enabled:
                raise RunLockError(message) from exc
            failure = ("os", message)
    failure = D.broadcast_object(failure, ctx)
    if failure is None:
        return lock
    if failure[0] == "busy":
        raise RunBusyError(out, LockHolder.from_dict(failure[1]))
    if failure[0] == "value":
        raise ValueError(failure[1])
    raise RunLockError(failure[1])


def _tracked(
    cfg: RunConfig, ctx: D.DistContext, train: Callable[[EventStream], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``train`` with the run's event stream: its sinks (``cfg.loggers``, rank 0) see how the run ends."""
    stream = EventStream(create_sinks(cfg.loggers) if ctx.is_main else [])
    try:
        result = train(stream)
    except RunDiverged as exc:
        stream.emit(RunEnded("diverged", message=str(exc)))
        raise
    except KeyboardInterrupt:
        stream.emit(RunEnded("interrupted", message="interrupted (SIGINT/SIGTERM); resume with --resume"))
        raise
    except BaseException as exc:
        stream.emit(RunEnded("failed", message=f"{type(exc).__name__}: {exc}"))
        raise
    else:
        stream.emit(RunEnded("finished", result=result))
        return result
    finally:
        stream.close()


def _train(
    cfg: RunConfig,
    run: RunDir,
    device: torch.device,
    ctx: D.DistContext,
    resume: bool,
    progress: bool,
    position: int | None,
    on_epoch: EpochCallback | None,
    on_finished: Callable[[nn.Module | None], None] | None,
    lock: RunLock | None,
    stream: EventStream,
) -> dict[str, Any]:
    out = run.path
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(cfg, device, ctx)
    start_epoch, rows = 0, []
    env = _environment(device, ctx)
    if resume:
        ckpt, warning = load_latest_checkpoint(run.checkpoint, map_location=device)
        if warning is not None and ctx.is_main:
            logger.warning("%s", warning)
        start_epoch, rows = trainer.load_state(ckpt)
        logger.info("%s: resuming after epoch %d of %d", out, start_epoch, cfg.epochs)
        previous = run.read_env()
        if previous is not None:
            env = {**previous, "resumed": [*previous.get("resumed", []), env]}
    if ctx.is_main:
        run.write_config(cfg.to_dict())
        run.write_env(env)
    stream.emit(RunStarted(out, cfg.run_id(), cfg.to_dict(), resumed_epochs=start_epoch))
    columns = METRIC_COLUMNS + (VAL_COLUMNS if trainer.splits.val is not None else ())
    show = progress and ctx.is_main
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = trainer.optimizer.param_groups[0]["lr"]
        bar = None
        if show:
            bar = tqdm(
                total=trainer.steps_per_epoch, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch",
                position=position, leave=position is None, dynamic_ncols=True,
            )  # fmt: skip
        try:
            train_loss, train_top1, images, train_seconds = trainer.train_epoch(epoch, bar)
            test_loss, test_top1, test_top5 = trainer.evaluate("test")
        except _Divergence as stop:
            if bar is not None:
                bar.close()
            record = _diverged(cfg, trainer, rows, stop)
            if ctx.is_main:
                # checkpoint.pt and metrics.csv stay as the last finished epoch left them (finite weights).
                run.write_result(_json_safe(record))
            D.barrier(ctx)
            raise RunDiverged(out, record["diverged"]) from None
        except BaseException:
            if bar is not None:
                bar.close()
            raise
        row: dict[str, float] = {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_top1": train_top1,
            "test_loss": test_loss,
            "test_top1": test_top1,
            "test_top5": test_top5,
            "lr": lr,
            "epoch_seconds": 0.0,
            "images_per_second": images / train_seconds if train_seconds > 0 else 0.0,
            "peak_memory_bytes": _peak_memory(device),
        }
        if "val" in trainer.eval_loaders:
            row["val_loss"], row["val_top1"], _ = trainer.evaluate("val")
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        if not all(math.isfinite(v) for v in row.values()):
            logger.warning("%s: epoch %d has a non-finite metric (the run diverged): %s", out, epoch, row)
        rows.append(row)
        if bar is not None:
            bar.set_postfix(loss=f"{train_loss:.3f}", acc=f"{train_top1:.1f}", test=f"{test_top1:.1f}")
            bar.close()
        elif ctx.is_main:
            logger.info(
                "epoch %d/%d: train loss %.4f top-1 %.2f | test loss %.4f top-1 %.2f | %.1fs",
                epoch, cfg.epochs, train_loss, train_top1, test_loss, test_top1, row["epoch_seconds"],
            )  # fmt: skip
        if D.any_rank(lock is not None and lock.lost, ctx, device):
            raise RunLockLost(
                f"{str(out)!r}: another process took this run over (this process's lock heartbeat had "
                f"stopped for longer than the lock's expiry); stopped after epoch {epoch} without writing it"
            )
        if ctx.is_main:
            run.save_checkpoint(trainer.state(epoch, rows))
            run.write_metrics(columns, _csv_rows(rows))
            if on_epoch is not None:
                on_epoch(epoch, dict(row))
            stream.emit(EpochEnded(epoch, {k: v for k, v in row.items() if k != "epoch"}))
        D.barrier(ctx)
    result = _result(cfg, trainer, rows)
    # Every rank's weights, to show that the replicas stayed identical (DDP's contract).
    digests = D.all_gather_objects(D.parameters_digest(trainer.model), ctx)
    result["params_sha256"] = digests
    if len(set(digests)) > 1:
        logger.error("%s: the ranks' parameters differ at the end of training: %s", out, digests)
    if ctx.is_main:
        run.write_metrics(columns, _csv_rows(rows))
        run.write_result(_json_safe(result))
        # Finished: nothing will resume from the previous generation any more.
        run.drop_previous_checkpoint()
    D.barrier(ctx)
    if on_finished is not None and ctx.is_main:
        on_finished(trainer.model)
    return result


def _csv_rows(rows: Iterable[Mapping[str, float]]) -> list[dict[str, Any]]:
    return [
        {k: (int(v) if k in ("epoch", "peak_memory_bytes") else repr(float(v))) for k, v in r.items()}
        for r in rows
    ]


def _json_safe(obj: Any) -> Any:
    """NaN/inf (a diverged run) become null, so result.json stays strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------- reading
def load_run(
    run_dir: str | os.PathLike[str], *, device: str | torch.device = "cpu"
) -> tuple[nn.Module, RunConfig]:
    """The trained model of a run directory (weights of ``checkpoint.pt``, in eval mode) and its config.

    The model is rebuilt from the arguments stored in the checkpoint, so the dataset is not read.

    Example:
        >>> model, cfg = load_run("runs/demo")  # doctest: +SKIP
        >>> model(torch.randn(1, 3, 32, 32)).shape  # doctest: +SKIP
    """
    return RunDir(run_dir).load_model(device=device)
