"""One training run: config -> run directory (config.yaml, env.json, metrics.csv, checkpoint.pt, result.json).

The protocol (documented in ``docs/training.md``): SGD with momentum and weight decay, a per-iteration
cosine learning rate from ``lr`` to 0 after an optional linear warm-up, cross-entropy with label
smoothing, optional AMP / channels_last / torch.compile; each epoch trains once over the training split
and then evaluates the test (and validation) split, giving one row of ``metrics.csv``. The accuracy a run
reports is the last epoch's.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poolkit.models import create_model
from poolkit.rundir import CHECKPOINT_FILE, RunDir, RunState
from poolkit.tracking import (
    METRIC_COLUMNS,
    VAL_COLUMNS,
    EpochEnded,
    EventStream,
    MetricsCsvSink,
    ProgressSink,
    RunEnded,
    RunSink,
    RunStarted,
    create_sinks,
)
from poolkit.train import distributed as D
from poolkit.train.checkpoint import load_checkpoint, load_latest_checkpoint, save_checkpoint
from poolkit.train.config import NON_RESULT_KEYS, RunConfig, load_config_file
from poolkit.train.environment import cpu_name, environment
from poolkit.train.lock import LockHolder, RunBusyError, RunLock, RunLockError, RunLockLost, lock_wait_setting
from poolkit.train.trainer import (
    Divergence,
    Trainer,
    peak_memory,
    pool_summary,
    resolve_device,
)

__all__ = [
    "METRIC_COLUMNS",
    "VAL_COLUMNS",
    "EpochCallback",
    "RunDiverged",
    "load_run",
    "train_run",
]

logger = logging.getLogger("poolkit.train")

# METRIC_COLUMNS and VAL_COLUMNS (metrics.csv's columns) belong to its sink, poolkit.tracking.metrics_csv.

#: ``on_epoch(epoch, row)``: called on rank 0 after each epoch's files are written.
EpochCallback = Callable[[int, dict[str, float]], None]


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite: the run stopped at that step.

    Not a bug and not a finished run: ``result.json`` says ``"status": "diverged"`` with where it happened
    (``diverged``: ``epoch``, ``step`` in the epoch, ``global_step``, ``loss``), and ``checkpoint.pt``
    holds the last finite weights (the end of the epoch before). Training the same config again diverges
    again, so a rerun raises this error from the stored result without training.

    Example:
        >>> where = {"epoch": 3, "step": 7, "steps_per_epoch": 50, "global_step": 107, "loss": float("nan")}
        >>> "the last finite checkpoint (after epoch 2)" in str(RunDiverged("runs/demo", where))
        True
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


# ---------------------------------------------------------------------------------------------- the run
def _result(cfg: RunConfig, trainer: Trainer, rows: list[dict[str, float]]) -> dict[str, Any]:
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
        **pool_summary(trainer.model),
        "device": str(trainer.device),
        "device_name": (
            torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else cpu_name()
        ),
        "world_size": trainer.ctx.world_size,
        "sync_bn": bool(cfg.sync_bn and trainer.ctx.enabled),
        "amp": cfg.amp,
        "amp_dtype": None if trainer.amp_dtype is None else str(trainer.amp_dtype).removeprefix("torch."),
        "finished": _now(),
    }


def _diverged(
    cfg: RunConfig, trainer: Trainer, rows: list[dict[str, float]], stop: Divergence
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
        progress: show a tqdm bar per epoch with the running loss and accuracy
            (:class:`~poolkit.tracking.ProgressSink`); without it, log one line per epoch.
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
        device = resolve_device(cfg.device, ctx)
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
            sinks = _sinks(cfg, progress, position) if ctx.is_main else []
            return _tracked(
                sinks,
                lambda stream: _train(cfg, run, device, ctx, resume_run, on_epoch, on_finished, lock, stream),
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
            lock = RunLock(run.path).acquire(wait_s=wait_s)
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


def _sinks(cfg: RunConfig, progress: bool, position: int | None) -> list[RunSink]:
    """The sinks of the process that writes files: metrics.csv, the progress display, ``cfg.loggers``."""
    return [MetricsCsvSink(), ProgressSink(bar=progress, position=position), *create_sinks(cfg.loggers)]


def _tracked(sinks: list[RunSink], train: Callable[[EventStream], dict[str, Any]]) -> dict[str, Any]:
    """Run ``train`` with an event stream to ``sinks`` (rank 0 only; none elsewhere); they see how it ends."""
    stream = EventStream(sinks)
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
    on_epoch: EpochCallback | None,
    on_finished: Callable[[nn.Module | None], None] | None,
    lock: RunLock | None,
    stream: EventStream,
) -> dict[str, Any]:
    out = run.path
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, device, ctx)
    start_epoch, rows = 0, []
    env = environment(device, ctx)
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
    history = tuple(EpochEnded(int(r["epoch"]), _epoch_metrics(r)) for r in rows)
    stream.emit(RunStarted(out, cfg.run_id(), cfg.to_dict(), resumed_epochs=start_epoch, history=history))
    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        epoch_start = time.perf_counter()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        lr = trainer.optimizer.param_groups[0]["lr"]
        try:
            train_loss, train_top1, images, train_seconds = trainer.train_epoch(epoch, stream)
            test_loss, test_top1, test_top5 = trainer.evaluate("test")
        except Divergence as stop:
            record = _diverged(cfg, trainer, rows, stop)
            if ctx.is_main:
                # checkpoint.pt and metrics.csv stay as the last finished epoch left them (finite weights).
                run.write_result(_json_safe(record))
            D.barrier(ctx)
            raise RunDiverged(out, record["diverged"]) from None
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
            "peak_memory_bytes": peak_memory(device),
        }
        if "val" in trainer.eval_loaders:
            row["val_loss"], row["val_top1"], _ = trainer.evaluate("val")
        row["epoch_seconds"] = time.perf_counter() - epoch_start
        if not all(math.isfinite(v) for v in row.values()):
            logger.warning("%s: epoch %d has a non-finite metric (the run diverged): %s", out, epoch, row)
        rows.append(row)
        if D.any_rank(lock is not None and lock.lost, ctx, device):
            raise RunLockLost(
                f"{str(out)!r}: another process took this run over (this process's lock heartbeat had "
                f"stopped for longer than the lock's expiry); stopped after epoch {epoch} without writing it"
            )
        if ctx.is_main:
            save_checkpoint(trainer.state(epoch, rows), run.checkpoint)
            # metrics.csv (its sink comes first), the progress display, then --logger's sinks
            stream.emit(EpochEnded(epoch, _epoch_metrics(row)))
            if on_epoch is not None:
                on_epoch(epoch, dict(row))
        D.barrier(ctx)
    result = _result(cfg, trainer, rows)
    # Every rank's weights, to show that the replicas stayed identical (DDP's contract).
    digests = D.all_gather_objects(D.parameters_digest(trainer.model), ctx)
    result["params_sha256"] = digests
    if len(set(digests)) > 1:
        logger.error("%s: the ranks' parameters differ at the end of training: %s", out, digests)
    if ctx.is_main:
        run.write_result(_json_safe(result))
        # Finished: nothing will resume from the previous generation any more.
        run.drop_previous_checkpoint()
    D.barrier(ctx)
    if on_finished is not None and ctx.is_main:
        on_finished(trainer.model)
    return result


def _epoch_metrics(row: Mapping[str, float]) -> dict[str, float]:
    """An epoch's row without its ``epoch`` (what :class:`EpochEnded` carries)."""
    return {k: v for k, v in row.items() if k != "epoch"}


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

    Raises:
        ValueError: there is no ``checkpoint.pt`` (the run never finished an epoch).

    Example:
        >>> model, cfg = load_run("runs/demo")  # doctest: +SKIP
        >>> model(torch.randn(1, 3, 32, 32)).shape  # doctest: +SKIP
    """
    run = RunDir(run_dir)
    if not run.checkpoint.exists():
        raise ValueError(f"{str(run.path)!r} has no {CHECKPOINT_FILE}; it is not a (started) run directory")
    cfg = RunConfig.from_stored(load_config_file(run.config))
    ckpt = load_checkpoint(run.checkpoint, map_location=device)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # The warning about a pool that a CIFAR-stem ResNet does not use was shown when it trained.
        warnings.simplefilter("ignore", UserWarning)
        model = create_model(**ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), cfg
