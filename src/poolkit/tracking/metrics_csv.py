"""The ``metrics.csv`` sink: one row per finished epoch, the whole file rewritten atomically each time.

Every run writes it (it is not a ``--logger`` choice): :func:`poolkit.train.train_run` puts a
:class:`MetricsCsvSink` first in its event stream on the process that writes files (rank 0). The columns
are :data:`METRIC_COLUMNS`, then :data:`VAL_COLUMNS` when a validation split is held out; ``epoch`` and
``peak_memory_bytes`` are integers, every other value is ``repr(float)`` (all its digits, so the file
reads back to the same floats). On a resume the rows of the epochs finished before come from the
checkpoint (:attr:`~poolkit.tracking.events.RunStarted.history`) and are written again at once, so the
file always matches the checkpoint the run continues from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from poolkit.rundir import METRICS_FILE, RunDir
from poolkit.tracking.events import EpochEnded, RunEvent, RunStarted

__all__ = ["METRIC_COLUMNS", "VAL_COLUMNS", "MetricsCsvSink", "csv_row"]

#: Columns of metrics.csv, in order; :data:`VAL_COLUMNS` follow when a validation split is held out.
METRIC_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5",
    "lr", "epoch_seconds", "images_per_second", "peak_memory_bytes",
)  # fmt: skip
VAL_COLUMNS: tuple[str, ...] = ("val_loss", "val_top1")
_INTEGER_COLUMNS = ("epoch", "peak_memory_bytes")


def csv_row(event: EpochEnded) -> dict[str, Any]:
    """An epoch's row as ``metrics.csv`` writes it: integers for the epoch and the memory, else all digits.

    Example:
        >>> csv_row(EpochEnded(2, {"train_loss": 0.1, "peak_memory_bytes": 1024.0}))
        {'epoch': 2, 'train_loss': '0.1', 'peak_memory_bytes': 1024}
    """
    row: dict[str, Any] = {"epoch": int(event.epoch)}
    for key, value in event.metrics.items():
        row[key] = int(value) if key in _INTEGER_COLUMNS else repr(float(value))
    return row


def _columns(row: Mapping[str, Any]) -> list[str]:
    """The standard columns the row has, in their order, then any other key in the row's order."""
    known = METRIC_COLUMNS + VAL_COLUMNS
    return [c for c in known if c in row] + [k for k in row if k not in known]


class MetricsCsvSink:
    """Keeps a run's ``metrics.csv``: all rows so far, rewritten atomically after each epoch.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> run_dir = Path(tempfile.mkdtemp())
        >>> sink = MetricsCsvSink()
        >>> sink.handle(RunStarted(run_dir, "demo", {}))
        >>> sink.handle(EpochEnded(1, {"train_loss": 2.25, "test_top1": 12.5}))
        >>> print((run_dir / "metrics.csv").read_text(), end="")
        epoch,train_loss,test_top1
        1,2.25,12.5
    """

    name = METRICS_FILE

    def __init__(self) -> None:
        self._run: RunDir | None = None
        self._rows: list[dict[str, Any]] = []

    def handle(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            self._run = RunDir(event.run_dir)
            self._rows = [csv_row(earlier) for earlier in event.history]
            if self._rows:  # a resume: the file says what the checkpoint it continues from says
                self._write()
        elif isinstance(event, EpochEnded) and self._run is not None:
            self._rows.append(csv_row(event))
            self._write()

    def _write(self) -> None:
        assert self._run is not None
        self._run.write_metrics(_columns(self._rows[-1]), self._rows)

    def close(self) -> None:
        self._run = None
