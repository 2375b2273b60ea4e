"""Running one run of a sweep, shared by every launcher: what is left to do, executing it, its outcome.

* :func:`plan_runs`: what the next invocation does with each run, from its directory's
  :class:`~poolkit.rundir.RunState`: ``"new"``, ``"resume"`` (a checkpoint), ``"finished"`` and
  ``"diverged"`` (a ``result.json``; skipped: the same config would diverge again) or ``"failed"``
  (an ``error.json``; skipped unless retried).
* :func:`execute_run`: train one run (``resume=True``), record a failure in ``error.json``, and return
  its :class:`RunOutcome`; :func:`train_and_probe` runs the shift probe after training, on the model
  still in memory, when the config asks for it (``shift_eval``).
* :func:`handle_stop_signals`: Ctrl-C and SIGTERM set a flag instead of killing a launcher.

The launchers (:mod:`poolkit.experiments.launchers`) depend on this module only, never on
:mod:`poolkit.experiments.sweep`, which drives them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from poolkit.experiments.grid import RunSpec
from poolkit.rundir import RunDir, RunState, finite_number

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "LauncherError",
    "PlannedRun",
    "RunOutcome",
    "TrainFn",
    "execute_run",
    "handle_stop_signals",
    "plan_runs",
    "train_and_probe",
    "write_error",
]

#: ``train_run(config, out_dir, *, resume, progress, ...) -> result dict``: what a launcher calls per run.
TrainFn = Callable[..., Mapping[str, Any]]
Status = Literal["new", "resume", "finished", "failed", "diverged"]

logger = logging.getLogger("poolkit.experiments")


class LauncherError(RuntimeError):
    """A sweep cannot be launched: its directory is in use by another sweep, or the launcher is not
    available here (``--launcher slurm`` without SLURM)."""


@dataclass(frozen=True)
class PlannedRun:
    """A run and what the next invocation will do with it.

    ``status``: ``"new"`` (start), ``"resume"`` (continue from ``checkpoint.pt`` after
    ``epochs_done`` epochs), ``"finished"`` (skip), ``"failed"`` (an earlier attempt wrote
    ``error.json``; skipped unless retried) or ``"diverged"`` (its ``result.json`` says the training loss
    became non-finite; skipped, and ``error`` says where).
    """

    spec: RunSpec
    status: Status
    epochs_done: int = 0
    error: str | None = None


#: A run's :class:`~poolkit.rundir.RunState` as what the next invocation does with it.
_PLAN_STATUS: dict[RunState, Status] = {
    RunState.NOT_STARTED: "new",
    RunState.RESUMABLE: "resume",
    RunState.FINISHED: "finished",
    RunState.FAILED: "failed",
    RunState.DIVERGED: "diverged",
}


def plan_runs(specs: Sequence[RunSpec], runs_dir: str | os.PathLike[str]) -> list[PlannedRun]:
    """The status of every run from the files in its directory (see :class:`PlannedRun`).

    A ``result.json`` counts only if it is readable and names the same run id (a directory with another
    run's result is left for ``train_run`` to refuse, which records the failure).
    """
    runs_dir = Path(runs_dir)
    planned = []
    for spec in specs:
        run = RunDir(runs_dir / spec.name)
        state = run.state(spec.run_id)
        error: str | None = None
        if state is RunState.DIVERGED:
            error = _divergence_text(run.read_result() or {})
        elif state is RunState.FAILED:
            error = run.error_summary()
        epochs = 0 if state is RunState.NOT_STARTED else run.epochs_done()
        planned.append(PlannedRun(spec, _PLAN_STATUS[state], epochs, error))
    return planned


def _divergence_text(result: Mapping[str, Any]) -> str:
    where = result.get("diverged") if isinstance(result.get("diverged"), dict) else {}
    return (
        f"diverged at epoch {where.get('epoch', '?')}, step {where.get('step', '?')} "
        f"(training loss {where.get('loss', '?')})"
    )


@dataclass
class RunOutcome:
    """How one launched run ended: ``status`` is ``"finished"``, ``"failed"``, ``"diverged"`` (its training
    loss became non-finite; ``result.json`` records where), ``"interrupted"`` or ``"busy"`` (another live
    process holds the run's lock and is training it; nothing was written)."""

    name: str
    status: Literal["finished", "failed", "diverged", "interrupted", "busy"]
    seconds: float | None = None
    test_top1: float | None = None
    error: str | None = None
    error_type: str | None = None


def write_error(
    run_dir: str | os.PathLike[str],
    exc: BaseException | None = None,
    *,
    message: str | None = None,
    type_name: str | None = None,
    tb: str | None = None,
) -> dict[str, Any]:
    """Write ``error.json`` (``error``, ``type``, ``traceback``, ``time``) atomically; returns the record.

    Pass the exception, or ``message``/``type_name`` for a failure without one (a worker that died).
    """
    return RunDir(run_dir).write_error(exc, message=message, type_name=type_name, tb=tb)


def _default_train_fn() -> TrainFn:
    # Looked up at call time, so a patched poolkit.train.engine.train_run is the one that runs.
    from poolkit.train import engine

    return engine.train_run


def train_and_probe(
    config: Mapping[str, Any] | Any,
    run_dir: str | os.PathLike[str],
    train_fn: TrainFn | None = None,
    **train_kwargs: Any,
) -> Mapping[str, Any]:
    """Train one run with ``train_fn`` (default :func:`poolkit.train.train_run`), then, when the config
    says ``shift_eval`` and the run has no ``shift.json`` yet, run the translation-invariance probe
    (:func:`poolkit.analysis.shift.probe_run`) and write it.

    The default ``train_run`` hands this process the trained model (``on_finished``, rank 0 only), so the
    probe runs on the model in memory; a run that was already finished, or trained by another
    ``train_fn``, is probed from its ``checkpoint.pt``. Other ranks of a data-parallel run do not probe.

    Returns:
        what ``train_fn`` returned (the run's result).
    """
    models: list[nn.Module | None] = []
    if train_fn is None:
        train_kwargs["on_finished"] = models.append
    train = train_fn if train_fn is not None else _default_train_fn()
    result = train(config, run_dir, **train_kwargs)
    shift_eval = bool(config.get("shift_eval") if isinstance(config, Mapping) else config.shift_eval)
    on_main = bool(models) if train_fn is None else _launch_rank() == 0
    if shift_eval and on_main and not RunDir(run_dir).shift.exists():
        _shift_eval(run_dir, models[0] if models else None)
    return result


def _shift_eval(run_dir: str | os.PathLike[str], model: nn.Module | None) -> None:
    """The shift probe of a finished run (``shift.json``); skipped with a warning where it is missing."""
    try:
        from poolkit.analysis.shift import probe_run
    except ImportError as exc:
        logger.warning("shift_eval: skipped, poolkit.analysis.shift.probe_run is not available (%s)", exc)
        return
    probe_run(run_dir, model=model)


def _launch_rank() -> int:
    from poolkit.train.distributed import launch_rank

    return launch_rank()


def execute_run(
    spec: RunSpec, run_dir: str | os.PathLike[str], train_fn: TrainFn | None = None, **train_kwargs: Any
) -> RunOutcome:
    """Run one spec with ``train_fn`` (default :func:`poolkit.train.train_run`) and ``resume=True``.

    An ``error.json`` left by an earlier attempt is removed first; an exception is recorded in a new
    one and returned as a ``"failed"`` outcome, so the caller's other runs go on. A run whose lock is
    held by another live process (``RunBusyError``), or was taken over while training
    (``RunLockLost``), is ``"busy"``: not a failure, and nothing is recorded.
    ``KeyboardInterrupt`` and ``SystemExit`` propagate (an interruption is not a failure: the
    checkpoint stays for the next invocation).
    """
    from poolkit.train.engine import RunDiverged
    from poolkit.train.lock import RunBusyError, RunLockLost

    run_dir = Path(run_dir)
    RunDir(run_dir).clear_error()
    try:
        result = train_and_probe(spec.config, run_dir, train_fn, resume=True, **train_kwargs)
    except (RunBusyError, RunLockLost) as exc:
        return RunOutcome(spec.name, "busy", error=str(exc), error_type=type(exc).__name__)
    except RunDiverged as exc:
        # Not a bug: result.json (status "diverged") records where; the sweep goes on.
        return RunOutcome(spec.name, "diverged", error=str(exc), error_type="RunDiverged")
    except Exception as exc:
        if _launch_rank() == 0:
            write_error(run_dir, exc)
        return RunOutcome(spec.name, "failed", error=str(exc), error_type=type(exc).__name__)
    return RunOutcome(
        spec.name,
        "finished",
        seconds=finite_number(result.get("seconds")),
        test_top1=finite_number(result.get("test_top1")),
    )


@contextlib.contextmanager
def handle_stop_signals(on_signal: Callable[[int], None]) -> Iterator[None]:
    """While the block runs, SIGINT and SIGTERM call ``on_signal(signum)`` instead of stopping the process.

    A launcher counts them and stops its runs cleanly (their checkpoints stay). Only the main thread
    can install handlers; elsewhere this does nothing. The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        signum: signal.signal(signum, lambda number, frame: on_signal(number))
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
