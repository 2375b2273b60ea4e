"""Launchers run a sweep's pending runs: :mod:`~.local` (worker processes on this machine) and
:mod:`~.slurm` (a submitit job array). Both report through :class:`SweepProgress` and return a
:class:`LaunchOutcome`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from poolkit.experiments.grid import RunSpec
from poolkit.experiments.runner import RunOutcome

__all__ = ["EtaEstimator", "LaunchOutcome", "SweepProgress", "format_duration"]


@dataclass
class LaunchOutcome:
    """``outcomes``: how each launched run ended (by directory name); ``interrupted``: the launch was
    stopped by Ctrl-C/SIGTERM; ``pending``: runs still queued when the launcher returned;
    ``job_ids``: the scheduler's job id of each run submitted (or found in flight) this time (SLURM)."""

    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    interrupted: bool = False
    pending: list[str] = field(default_factory=list)
    job_ids: dict[str, str] = field(default_factory=dict)


def format_duration(seconds: float | None) -> str:
    """``"45s"``, ``"3m05s"``, ``"2h07m"``, ``"3d04h"``; ``"?"`` when unknown.

    Example:
        >>> format_duration(185), format_duration(7620), format_duration(None)
        ('3m05s', '2h07m', '?')
    """
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


class EtaEstimator:
    """Remaining wall time of a sweep from the durations of its finished runs.

    The expected duration of a run is the mean wall time of the runs finished so far (before any has
    finished: the projection of the running ones from their epoch rate). Remaining work is that mean
    for every queued run plus what is left of each running one (by epochs when known), spread over
    ``workers`` parallel slots.
    """

    def __init__(self, queued: int, workers: int) -> None:
        self.queued = queued
        self.workers = max(1, workers)
        self.durations: list[float] = []
        self._running: dict[str, tuple[float, int, int, int]] = {}  # start, epochs at start, now, total

    def start(self, name: str, epochs_done: int, epochs: int, now: float | None = None) -> None:
        self.queued = max(0, self.queued - 1)
        self._running[name] = (time.monotonic() if now is None else now, epochs_done, epochs_done, epochs)

    def epoch(self, name: str, epoch: int) -> None:
        if name in self._running:
            start, first, _, total = self._running[name]
            self._running[name] = (start, first, epoch, total)

    def end(self, name: str, finished: bool, now: float | None = None) -> None:
        entry = self._running.pop(name, None)
        if entry is not None and finished:
            self.durations.append((time.monotonic() if now is None else now) - entry[0])

    def _projected(self, entry: tuple[float, int, int, int], now: float) -> float | None:
        start, first, current, total = entry
        if current <= first:
            return None
        per_epoch = (now - start) / (current - first)
        return per_epoch * (total - first)

    def remaining(self, now: float | None = None) -> float | None:
        """Seconds until every queued and running run is done, or None before there is evidence."""
        now = time.monotonic() if now is None else now
        if self.durations:
            mean = sum(self.durations) / len(self.durations)
        else:
            projections = [p for e in self._running.values() if (p := self._projected(e, now)) is not None]
            if not projections:
                return None if (self.queued or self._running) else 0.0
            mean = sum(projections) / len(projections)
        left = self.queued * mean
        for entry in self._running.values():
            projected = self._projected(entry, now)
            elapsed = now - entry[0]
            if projected is not None:
                left += max(0.0, projected - elapsed)
            else:
                left += max(0.0, mean - elapsed)
        return left / self.workers


class SweepProgress:
    """What a sweep shows while it runs.

    On a terminal (``bars=True``): an overall bar (runs done / failed, ETA) and one bar per worker slot
    (the epochs of its current run); finished runs are printed above the bars. In a log file
    (``bars=False``): one line per finished or failed run with the same counts and ETA, nothing else.
    """

    def __init__(self, total: int, workers: int, stream: TextIO, *, bars: bool | None = None) -> None:
        self.total = total
        self.stream = stream
        self.bars = stream.isatty() if bars is None else bars
        self.done = 0
        self.failed = 0
        self.diverged = 0
        self.eta = EtaEstimator(total, workers)
        self._slots: dict[int, Any] = {}
        self._overall: Any = None
        if self.bars:
            from tqdm import tqdm

            self._tqdm = tqdm
            self._overall = tqdm(
                total=total, position=0, file=stream, dynamic_ncols=True, unit="run",
                bar_format="{desc} {n_fmt}/{total_fmt} runs |{bar}| {elapsed}{postfix}",
            )  # fmt: skip
            self._overall.set_description_str("sweep")
            self._refresh()

    # ------------------------------------------------------------------ events
    def started(self, slot: int | None, spec: RunSpec, epochs_done: int) -> None:
        """A run started in worker ``slot`` (None: no per-run bar, e.g. a queued SLURM task)."""
        epochs = int(spec.config["epochs"])
        self.eta.start(spec.name, epochs_done, epochs)
        if self.bars and slot is not None:
            bar = self._slots.get(slot)
            if bar is None:
                bar = self._slots[slot] = self._tqdm(
                    total=epochs, position=slot + 1, file=self.stream, dynamic_ncols=True, leave=False,
                    unit="ep", bar_format="  {desc} |{bar}| {n_fmt}/{total_fmt} ep {elapsed}{postfix}",
                )  # fmt: skip
            bar.reset(total=epochs)
            bar.update(epochs_done)
            bar.set_description_str(str(spec), refresh=False)
            bar.set_postfix_str("", refresh=True)

    def epoch(self, slot: int | None, spec: RunSpec, epoch: int, row: Mapping[str, float]) -> None:
        self.eta.epoch(spec.name, epoch)
        if self.bars and slot in self._slots:
            bar = self._slots[slot]
            bar.update(max(0, epoch - bar.n))
            test = row.get("test_top1")
            bar.set_postfix_str(
                f"loss {row.get('train_loss', float('nan')):.3f} test {test:.1f}%" if test is not None else ""
            )
            self._refresh()

    def ended(self, slot: int | None, spec: RunSpec, outcome: RunOutcome) -> None:
        finished = outcome.status == "finished"
        self.eta.end(spec.name, finished)
        if outcome.status == "interrupted":
            return
        if outcome.status == "busy":
            self._print(f"busy     {spec.name}: {(outcome.error or '').strip()}")
            return
        self.done += finished
        self.failed += outcome.status == "failed"
        self.diverged += outcome.status == "diverged"
        n = self.done + self.failed + self.diverged
        count = f"[{n:>{len(str(self.total))}}/{self.total}]"
        if outcome.status == "diverged":
            text = (outcome.error or "").strip().split(": the run diverged: ", 1)[-1].split(";")[0]
            line = f"{count} DIVERGED {spec.name}  {text}"
        elif finished:
            top1 = f"top-1 {outcome.test_top1:.2f}%" if outcome.test_top1 is not None else "no top-1"
            took = format_duration(outcome.seconds)
            line = (
                f"[{n:>{len(str(self.total))}}/{self.total}] finished {spec.name}  {top1}  ({took} training)"
            )
        else:
            first = (outcome.error or "").strip().splitlines()[0] if outcome.error else ""
            line = f"{count} FAILED   {spec.name}  {outcome.error_type}: {first}"
        self._print(f"{line}  | {self.failed} failed, ETA {format_duration(self.eta.remaining())}")
        if self.bars:
            self._overall.update(1)
            self._refresh()

    def note(self, text: str) -> None:
        self._print(text)

    def close(self) -> None:
        if self.bars:
            for bar in self._slots.values():
                bar.close()
            self._overall.close()
            self._slots.clear()

    # ------------------------------------------------------------------ output
    def _refresh(self) -> None:
        if self._overall is not None:
            self._overall.set_postfix_str(
                f"{self.failed} failed, ETA {format_duration(self.eta.remaining())}", refresh=True
            )

    def _print(self, text: str) -> None:
        if self.bars:
            self._tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)
