"""Run events and the stream that hands them to sinks.

A training run emits three kinds of event, in order: :class:`RunStarted` (once, with the resolved
config), :class:`EpochEnded` (after each epoch, with that epoch's metrics row) and :class:`RunEnded`
(once, with the final status and, when finished, the result). Sinks consume them: metrics files,
progress displays, TensorBoard, MLflow. A sink that fails logs **one** warning and is dropped; it never
stops training, because losing a dashboard is always better than losing a run.
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
]

logger = logging.getLogger("poolkit.tracking")

#: How a run ended, as its sinks see it (MLflow maps ``finished`` to FINISHED and the rest to FAILED).
RunStatus = Literal["finished", "failed", "diverged", "interrupted"]


@dataclass(frozen=True)
class RunStarted:
    """A run starts (or resumes after ``resumed_epochs`` finished epochs) in ``run_dir``."""

    run_dir: Path
    run_id: str
    config: Mapping[str, Any]
    resumed_epochs: int = 0


@dataclass(frozen=True)
class EpochEnded:
    """Epoch ``epoch`` (1-based) is over; ``metrics`` is its row of ``metrics.csv`` (without ``epoch``)."""

    epoch: int
    metrics: Mapping[str, float]


@dataclass(frozen=True)
class RunEnded:
    """The run ended with ``status``; ``result`` is ``result.json``'s content when it finished."""

    status: RunStatus
    result: Mapping[str, Any] | None = None
    message: str | None = None


RunEvent = RunStarted | EpochEnded | RunEnded


@runtime_checkable
class RunSink(Protocol):
    """Anything that consumes run events: ``handle`` each one, ``close`` once at the end."""

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
