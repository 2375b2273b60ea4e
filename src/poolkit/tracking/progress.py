"""The progress sink: a tqdm bar per epoch, or one log line per epoch when the bar is off.

:func:`poolkit.train.train_run` adds a :class:`ProgressSink` on the process that writes files (rank 0):
with ``progress=True`` (the default; ``poolkit train --no-progress`` turns it off) each epoch shows a bar
of its optimizer steps with the running loss and top-1 (from :class:`~poolkit.tracking.events.StepEnded`,
refreshed every few steps) and, once the epoch is over, its test top-1. Without the bar, each epoch
logs one line (logger ``poolkit.train``) and the sink asks for no step events at all.
"""

from __future__ import annotations

import logging
from typing import IO, Any

from tqdm.auto import tqdm

from poolkit.tracking.events import EpochEnded, RunEnded, RunEvent, RunStarted, StepEnded

__all__ = ["ProgressSink"]

logger = logging.getLogger("poolkit.train")


class ProgressSink:
    """Shows a run's progress: a tqdm bar per epoch (``bar=True``) or one log line per epoch.

    Args:
        bar: a bar per epoch; False logs one ``INFO`` line per epoch instead.
        position: the bar's tqdm ``position`` (several runs side by side); its bar is then not left behind.
        file: where the bar is drawn (tqdm's default, ``sys.stderr``, when None).

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> sink = ProgressSink(file=out)
        >>> sink.handle(RunStarted("runs/demo", "demo", {"epochs": 2}))
        >>> sink.handle(StepEnded(epoch=1, step=1, steps=1, lr=0.1, loss=2.3, top1=12.5))
        >>> sink.handle(EpochEnded(1, {"train_loss": 2.3, "train_top1": 12.5, "test_top1": 10.0}))
        >>> "epoch 1/2" in out.getvalue() and "test=10.0" in out.getvalue()
        True
    """

    name = "progress"

    def __init__(self, *, bar: bool = True, position: int | None = None, file: IO[str] | None = None) -> None:
        self.wants_steps = bar
        self._position = position
        self._file = file
        self._epochs = 0
        self._bar: Any = None
        self._bar_epoch = 0

    def handle(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            self._epochs = int(event.config.get("epochs") or 0)
        elif isinstance(event, StepEnded) and self.wants_steps:
            self._step(event)
        elif isinstance(event, EpochEnded):
            self._epoch_ended(event)
        elif isinstance(event, RunEnded):
            self._close_bar()

    def _step(self, event: StepEnded) -> None:
        if self._bar is None or self._bar_epoch != event.epoch:
            self._close_bar()
            self._bar = tqdm(
                total=event.steps, desc=f"epoch {event.epoch}/{self._epochs}", unit="batch",
                position=self._position, leave=self._position is None, dynamic_ncols=True, file=self._file,
            )  # fmt: skip
            self._bar_epoch = event.epoch
        self._bar.update(event.step - self._bar.n)
        if event.loss is not None and event.top1 is not None:
            self._bar.set_postfix(loss=f"{event.loss:.3f}", acc=f"{event.top1:.1f}")

    def _epoch_ended(self, event: EpochEnded) -> None:
        m = event.metrics
        if self.wants_steps:
            if self._bar is not None and self._bar_epoch == event.epoch:
                nan = float("nan")
                self._bar.set_postfix(
                    loss=f"{m.get('train_loss', nan):.3f}",
                    acc=f"{m.get('train_top1', nan):.1f}",
                    test=f"{m.get('test_top1', nan):.1f}",
                )
            self._close_bar()
            return
        logger.info(
            "epoch %d/%d: train loss %.4f top-1 %.2f | test loss %.4f top-1 %.2f | %.1fs",
            event.epoch, self._epochs, m.get("train_loss", float("nan")), m.get("train_top1", float("nan")),
            m.get("test_loss", float("nan")), m.get("test_top1", float("nan")), m.get("epoch_seconds", 0.0),
        )  # fmt: skip

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def close(self) -> None:
        self._close_bar()
