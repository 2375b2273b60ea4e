"""Reading run directories from disk: never a live trainer, never a crash on a broken file.

A run directory (see ``docs/architecture.md``) holds ``config.yaml``, ``metrics.csv``, and, when the run
ended, ``result.json`` (finished) or ``error.json`` (failed); ``shift.json`` is optional. Every run found
under a root becomes one :class:`RunRecord` whose ``status`` says what could be read:

* ``"finished"``: ``result.json`` is readable and has a numeric ``test_top1``;
* ``"failed"``: ``error.json`` and no ``result.json``;
* ``"diverged"``: ``result.json`` says ``"status": "diverged"`` (the training loss became NaN or infinite;
  ``divergence`` says where); it has no accuracy and stays out of the statistics;
* ``"incomplete"``: neither (still running, or killed); ``metrics.csv`` tells how far it got;
* ``"unreadable"``: a file that should be parsed could not be (``problems`` says which and why).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from poolkit.rundir import RUN_MARKERS, RunDir, RunState
from poolkit.rundir import finite_number as _number

__all__ = [
    "RUN_MARKERS",
    "RunRecord",
    "canonical_options",
    "find_run_dirs",
    "load_runs",
    "options_label",
    "read_run",
    "resolved_options",
]

Status = Literal["finished", "failed", "diverged", "incomplete", "unreadable"]

#: The report's status of each :class:`~poolkit.rundir.RunState` a run directory's files can say:
#: the report does not tell a run still training from one that was killed.
_STATUS: dict[RunState, Status] = {
    RunState.FINISHED: "finished",
    RunState.DIVERGED: "diverged",
    RunState.FAILED: "failed",
}


@dataclass
class RunRecord:
    """Everything the report reads from one run directory.

    Identity (``model``, ``dataset``, ``pool``, ``pool_options``, ``seed``) comes from ``result.json``
    when present and from ``config.yaml`` otherwise, so failed and incomplete runs are still named.
    """

    path: Path
    status: Status
    config: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    metrics: list[dict[str, float | None]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    shift: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def sweep(self) -> Path:
        """The directory the run lives in: runs of one sweep share it (``OUT/runs``)."""
        return self.path.parent

    def _get(self, key: str) -> Any:
        if self.result is not None and self.result.get(key) is not None:
            return self.result[key]
        return self.config.get(key)

    @property
    def model(self) -> str | None:
        value = self._get("model")
        return str(value) if value is not None else None

    @property
    def dataset(self) -> str | None:
        value = self._get("dataset")
        return str(value) if value is not None else None

    @property
    def pool(self) -> str | None:
        value = self._get("pool")
        return str(value) if value is not None else None

    @property
    def pool_options(self) -> dict[str, Any]:
        value = self._get("pool_options")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def seed(self) -> int | None:
        value = self._get("seed")
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        number = _number(value)
        return int(number) if number is not None and number.is_integer() else None

    def value(self, key: str) -> float | None:
        """A numeric ``result.json`` entry (``test_top1``, ``seconds``, ``pool_params``, ...) or None."""
        return None if self.result is None else _number(self.result.get(key))

    @property
    def test_top1(self) -> float | None:
        return self.value("test_top1")

    @property
    def epochs_done(self) -> int:
        return len(self.metrics)

    @property
    def epochs_planned(self) -> int | None:
        number = _number(self._get("epochs"))
        return int(number) if number is not None else None

    @property
    def device(self) -> str | None:
        value = self._get("device")
        return str(value) if value not in (None, "") else None

    @property
    def divergence(self) -> str:
        """Where a diverged run stopped (``"epoch 3, step 17 of 40 (training loss nan)"``), else ``""``."""
        where = (self.result or {}).get("diverged")
        if self.status != "diverged" or not isinstance(where, dict):
            return ""
        of = f" of {where['steps_per_epoch']}" if where.get("steps_per_epoch") else ""
        return (
            f"epoch {where.get('epoch', '?')}, step {where.get('step', '?')}{of} "
            f"(training loss {where.get('loss', '?')})"
        )

    @property
    def error_line(self) -> str:
        """The first line of the failure's message (``"<type>: <message>"``), for the report."""
        if self.status == "unreadable":
            return self.problems[0] if self.problems else "unreadable"
        if self.error is None:
            return ""
        message = str(self.error.get("error") or "").strip()
        first = message.splitlines()[0] if message else ""
        kind = str(self.error.get("type") or "").strip()
        if kind and first and not first.startswith(kind):
            return f"{kind}: {first}"
        return first or kind or "error.json has no message"

    def column(self, name: str) -> list[float]:
        """The finite values of one ``metrics.csv`` column, in epoch order."""
        return [v for row in self.metrics if (v := row.get(name)) is not None]

    def steady(self, name: str) -> tuple[float | None, bool]:
        """Mean of a per-epoch timing column with the first (warm-up) epoch left out when there are > 2.

        Returns ``(mean or None, whether the first epoch was left out)``.
        """
        values = self.column(name)
        if not values:
            return None, False
        if len(values) > 2:
            return sum(values[1:]) / (len(values) - 1), True
        return sum(values) / len(values), False

    @property
    def peak_memory_bytes(self) -> float | None:
        from_result = self.value("peak_memory_bytes")
        if from_result:
            return from_result
        column = self.column("peak_memory_bytes")
        return max(column) if column and max(column) > 0 else None


def find_run_dirs(root: str | os.PathLike[str]) -> list[Path]:
    """Every run directory at or below ``root`` (sorted); a run directory's own subfolders are not searched.

    Raises:
        ValueError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"runs directory {str(root)!r} does not exist or is not a directory")
    found: list[Path] = []
    for current, dirs, files in os.walk(root):
        if any(marker in files for marker in RUN_MARKERS):
            found.append(Path(current))
            dirs.clear()
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _check_shift(data: dict[str, Any] | None, problems: list[str]) -> dict[str, Any] | None:
    if data is None:
        return None
    consistency = _number(data.get("consistency"))
    by_shift = data.get("accuracy_by_shift")
    if consistency is None or not isinstance(by_shift, dict):
        problems.append(
            "shift.json lacks a numeric 'consistency' or an 'accuracy_by_shift' mapping (ignored)"
        )
        return None
    clean = {str(k): v for k, v in by_shift.items() if _number(v) is not None}
    return {**data, "consistency": consistency, "accuracy_by_shift": {k: float(v) for k, v in clean.items()}}


def read_run(path: str | os.PathLike[str]) -> RunRecord:
    """Read one run directory; never raises for broken or missing files (see ``status`` and ``problems``)."""
    run = RunDir(path)
    problems: list[str] = []
    config = run.read_config(problems) or {}
    metrics = run.read_metrics(problems)
    result = run.read_result(problems)
    error = run.read_error(problems)
    shift_problems: list[str] = []
    shift = _check_shift(run.read_shift(shift_problems), shift_problems)
    record = RunRecord(
        run.path, _STATUS.get(run.state(), "incomplete"), config, result, metrics, error, shift
    )

    if not run.config.is_file():
        problems.append(f"{run.config.name} is missing")
    if result is not None:
        status = result.get("status", "finished")
        if status not in ("finished", "diverged"):
            problems.append(f"{run.result.name} has status {status!r}, expected 'finished' or 'diverged'")
        elif status == "finished" and record.test_top1 is None:
            problems.append(f"{run.result.name} has no numeric test_top1")
    for key in ("model", "dataset", "pool"):
        if getattr(record, key) is None:
            problems.append(f"neither result.json nor config.yaml names the run's {key}")
    if record.seed is None:
        problems.append("neither result.json nor config.yaml gives an integer seed")

    if problems:
        record.status = "unreadable"
    # A finished run whose shift.json is broken is still finished; the report lists the problem.
    record.problems = problems + shift_problems
    return record


def load_runs(root: str | os.PathLike[str]) -> list[RunRecord]:
    """Every run directory under ``root``, read with :func:`read_run` (sorted by path)."""
    return [read_run(p) for p in find_run_dirs(root)]


def _defaults(pool: str) -> dict[str, Any] | None:
    from poolkit.registry import pool_options

    try:
        return pool_options(pool)
    except ValueError:
        return None


def canonical_options(pool: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` without the entries equal to the method's defaults, sorted by key.

    Two runs of one method at the same settings then compare equal whether or not their config spelled
    out the defaults. Methods this poolkit does not know keep their options as written.
    """
    defaults = _defaults(pool) or {}
    return {k: options[k] for k in sorted(options) if not (k in defaults and defaults[k] == options[k])}


def resolved_options(pool: str, options: dict[str, Any]) -> dict[str, Any]:
    """The method's defaults updated with ``options`` (what the run actually used)."""
    return {**(_defaults(pool) or {}), **options}


def options_label(options: dict[str, Any]) -> str:
    """``"k=2, threshold=0.3"`` (empty for defaults)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
