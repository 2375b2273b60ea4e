"""Run events and the stream that hands them to sinks.

A training run emits, in order: :class:`RunStarted` (once, with the resolved config and, on a resume,
the epochs finished before), :class:`StepEnded` (after each optimizer step, only while a sink asks for
steps: :attr:`EventStream.wants_steps`), :class:`EpochEnded` (after each epoch, with that epoch's metrics
row) and :class:`RunEnded` (once, with the final status and, when finished, the result). Sinks consume
them: ``metrics.csv`` (:mod:`poolkit.tracking.metrics_csv`), the progress bar
(:mod:`poolkit.tracking.progress`), TensorBoard and MLflow (:mod:`poolkit.tracking.sinks`). A sink that
fails logs **one** warning and is dropped; it never stops training, because losing a dashboard (or a
metrics file the checkpoint can rewrite on resume) is always better than losing a run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = [
    "EpochEnded",
    "EventStream",
    "RunEnded",
    "RunEvent",
    "RunSink",
    "RunStarted",
    "RunStatus",
    "StepEnded",
]

logger = logging.getLogger("poolkit.tracking")

#: How a run ended, as its sinks see it (MLflow maps ``finished`` to FINISHED and the rest to FAILED).
RunStatus = Literal["finished", "failed", "diverged", "interrupted"]


@dataclass(frozen=True)
class EpochEnded:
    """Epoch ``epoch`` (1-based) is over; ``metrics`` is its row of ``metrics.csv`` (without ``epoch``)."""

    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class RunStarted:
    """A run starts (or resumes after ``resumed_epochs`` finished epochs) in ``run_dir``.

    ``history`` holds the :class:`EpochEnded` events of the epochs finished before a resume (their rows
    come from the checkpoint the run resumes from), so a sink that keeps every row, such as
    ``metrics.csv``, continues where the interrupted process stopped.
    """

    run_dir: Path
    run_id: str
    config: Mapping[str, Any]
    resumed_epochs: int = 0
    history: tuple[EpochEnded, ...] = ()


@dataclass(frozen=True)
class StepEnded:
    """Optimizer step ``step`` (1-based) of ``steps`` in epoch ``epoch`` is done, at learning rate ``lr``.

    ``loss`` and ``top1`` are this process's running means over the epoch so far (percent for top-1);
    reading them waits for the device, so the trainer fills them in only every few steps and on the
    epoch's last step (None in between). Emitted only while a sink wants steps
    (:attr:`EventStream.wants_steps`), so a run without a progress bar never pays for them.
    """

    epoch: int
    step: int
    steps: int
    lr: float
    loss: float | None = None
    top1: float | None = None


@dataclass(frozen=True)
class RunEnded:
    """The run ended with ``status``; ``result`` is ``result.json``'s content when it finished."""

    status: RunStatus
    result: Mapping[str, Any] | None = None
    message: str | None = None


RunEvent = RunStarted | StepEnded | EpochEnded | RunEnded


@runtime_checkable
class RunSink(Protocol):
    """Anything that consumes run events: ``handle`` each one, ``close`` once at the end.

    A sink that wants :class:`StepEnded` events says so with a true ``wants_steps`` attribute (optional;
    without it the stream does not ask the trainer for steps on its behalf). Events a sink does not know
    are ignored by it.
    """

    name: str

    def handle(self, event: RunEvent) -> None: ...

    def close(self) -> None: ...


class EventStream:
    """Hands each event to every sink; a sink that raises is warned about once and dropped.

    Example:
        >>> class Printer:
        ...     name = "printer"
        ...     def handle(self, event): print(type(event).__name__)
        ...     def close(self): pass
        >>> stream = EventStream([Printer()])
        >>> stream.emit(EpochEnded(1, {"test_top1": 50.0}))
        EpochEnded
    """

    def __init__(self, sinks: Iterable[RunSink] = ()) -> None:
        self.sinks: list[RunSink] = list(sinks)

    @property
    def wants_steps(self) -> bool:
        """Whether a live sink wants :class:`StepEnded` events (the trainer emits them only then)."""
        return any(getattr(sink, "wants_steps", False) for sink in self.sinks)

    def emit(self, event: RunEvent) -> None:
        """Give ``event`` to every live sink, in order."""
        for sink in list(self.sinks):
            try:
                sink.handle(event)
            except Exception as error:  # a dashboard must never stop training
                self._drop(sink, f"failed on {type(event).__name__}: {type(error).__name__}: {error}")

    def close(self) -> None:
        """Close every live sink (a failing close is warned about, like a failing event)."""
        for sink in list(self.sinks):
            try:
                sink.close()
            except Exception as error:
                self._drop(sink, f"failed to close: {type(error).__name__}: {error}")
        self.sinks.clear()

    def _drop(self, sink: RunSink, what: str) -> None:
        logger.warning("logger %r %s; it is switched off for this run, training goes on", sink.name, what)
        self.sinks.remove(sink)
        with contextlib.suppress(Exception):  # already warned once about this sink
            sink.close()
