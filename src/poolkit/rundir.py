"""The run directory: the one owner of its file names, its state, and how its files are read and written.

Every part of the harness that touches a run directory goes through :class:`RunDir`: ``poolkit train``
(:mod:`poolkit.train.engine`) writes it, the sweep plans and reports on it (:mod:`poolkit.experiments`),
the report (:mod:`poolkit.report.runs`) and the shift probe (:mod:`poolkit.analysis.shift`) read it.
No other module spells a file name of a run directory. A run directory holds:

=========================  ==================================================================
``config.yaml``            the resolved run config (written at start)
``env.json``               versions, platform, device, git revision (written at start)
``metrics.csv``            one row per finished epoch (rewritten atomically every epoch)
``checkpoint.pt``          the last finished epoch's training state (``checkpoint.prev.pt``: the one before)
``result.json``            how the run ended: ``"status": "finished"`` or ``"diverged"``
``error.json``             why the run failed (a sweep records it)
``shift.json``             the translation-invariance probe's result (optional)
``lock.json``              the run lock of the process training it (:mod:`poolkit.train.lock`)
``tensorboard/``           TensorBoard event files (``--logger tensorboard``)
=========================  ==================================================================

Its state (:class:`RunState`) follows from these files, in this order: a readable ``result.json`` says
``finished`` or ``diverged``; else a readable ``error.json`` says ``failed``; else a checkpoint says
``resumable``; else ``not started``. With the lock (:func:`poolkit.train.lock.live_state`) a run that a
live process holds is ``running``, and one whose holder is gone (or silent past the lock's expiry) is
``stalled``.

This module sits below the trainer and imports nothing of it (``tests/test_architecture.py``): what a
file *holds* beyond plain JSON, YAML and CSV belongs to the module that writes it. The lock protocol is
:mod:`poolkit.train.lock`'s, the checkpoint's format :mod:`poolkit.train.checkpoint`'s, and the trained
model is read back by :func:`poolkit.train.load_run`; they take their paths from :class:`RunDir`.

The readers are tolerant: a missing or broken file reads as ``None`` (and, given a ``problems`` list, a
sentence saying what is wrong is appended), so a half-written or hand-edited directory never crashes a
status table or a report. Every writer is atomic (:mod:`poolkit.atomic`).

Example:
    >>> import tempfile
    >>> run = RunDir(tempfile.mkdtemp())
    >>> run.state()
    <RunState.NOT_STARTED: 'not started'>
    >>> run.write_result({"status": "finished", "test_top1": 91.5})
    >>> run.state(), run.result.name
    (<RunState.FINISHED: 'finished'>, 'result.json')
"""

from __future__ import annotations

import csv
import json
import math
import os
import traceback
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

from poolkit.atomic import atomic_write_csv, atomic_write_json, atomic_write_text

__all__ = [
    "CHECKPOINT_FILE",
    "CONFIG_FILE",
    "ENV_FILE",
    "ERROR_FILE",
    "LOCK_FILE",
    "METRICS_FILE",
    "PREVIOUS_CHECKPOINT_FILE",
    "RESULT_FILE",
    "RUN_MARKERS",
    "SHIFT_FILE",
    "TENSORBOARD_DIR",
    "RunDir",
    "RunState",
    "error_record",
    "finite_number",
    "read_json",
    "read_metrics",
    "read_yaml_mapping",
]

CONFIG_FILE = "config.yaml"
ENV_FILE = "env.json"
METRICS_FILE = "metrics.csv"
CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
SHIFT_FILE = "shift.json"
LOCK_FILE = "lock.json"
TENSORBOARD_DIR = "tensorboard"

#: A directory holding any of these files is a run directory.
RUN_MARKERS = (CONFIG_FILE, RESULT_FILE, ERROR_FILE, METRICS_FILE)


class RunState(str, Enum):
    """Where a run stands. The one vocabulary of run states; its values are what tables print.

    From the files alone (:meth:`RunDir.state`): ``NOT_STARTED``, ``RESUMABLE`` (a checkpoint, no
    result), ``FINISHED``, ``DIVERGED`` (the training loss became NaN or infinite; ``result.json`` says
    where), ``FAILED`` (``error.json``). With the lock (:func:`poolkit.train.lock.live_state`):
    ``RUNNING`` (a live process holds it) and ``STALLED`` (its holder died or went silent; rerunning
    resumes it). ``BUSY`` is what a launch reports when it found the run ``RUNNING`` in another process
    and so left it alone.
    """

    NOT_STARTED = "not started"
    RESUMABLE = "resumable"
    RUNNING = "running"
    STALLED = "stalled"
    BUSY = "busy"
    FINISHED = "finished"
    DIVERGED = "diverged"
    FAILED = "failed"

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


# ------------------------------------------------------------------------------------- tolerant readers
def read_json(path: str | os.PathLike[str], problems: list[str] | None = None) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None when it is missing, unreadable or not an object.

    With ``problems``, a file that exists but cannot be used adds one sentence naming it and why.

    Example:
        >>> problems = []
        >>> read_json("/nonexistent/result.json", problems), problems
        (None, [])
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        if problems is not None:
            problems.append(f"{path.name} cannot be read: {exc}")
        return None
    if not isinstance(data, dict):
        if problems is not None:
            problems.append(f"{path.name} holds a {type(data).__name__}, expected a JSON object")
        return None
    return data


def read_yaml_mapping(
    path: str | os.PathLike[str], problems: list[str] | None = None
) -> dict[str, Any] | None:
    """The YAML mapping in ``path`` (a ``config.yaml``), or None when missing, unreadable or not a mapping."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        if problems is not None:
            problems.append(f"{path.name} cannot be read: {str(exc).splitlines()[0]}")
        return None
    if not isinstance(data, dict):
        if problems is not None:
            problems.append(f"{path.name} does not hold a mapping of keys to values")
        return None
    return data


def finite_number(value: Any) -> float | None:
    """A finite float from a JSON or CSV value, or None (empty cells, null, text, NaN, booleans).

    Example:
        >>> finite_number("0.5"), finite_number(""), finite_number(float("nan")), finite_number(True)
        (0.5, None, None, None)
    """
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def read_metrics(
    path: str | os.PathLike[str], problems: list[str] | None = None
) -> list[dict[str, float | None]]:
    """The rows of a ``metrics.csv`` as numbers (None for an empty or non-finite cell), sorted by epoch.

    A missing file gives ``[]``; a row without an epoch number is left out (and named in ``problems``).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if problems is not None:
            problems.append(f"{path.name} cannot be read: {exc}")
        return []
    out: list[dict[str, float | None]] = []
    for row in rows:
        parsed = {str(k).strip(): finite_number(v) for k, v in row.items() if k is not None}
        if parsed.get("epoch") is None:
            if problems is not None:
                problems.append(f"{path.name} has a row without an epoch number (left out)")
            continue
        out.append(parsed)
    out.sort(key=lambda r: r["epoch"] or 0.0)
    return out


def error_record(
    exc: BaseException | None = None,
    *,
    message: str | None = None,
    type_name: str | None = None,
    tb: str | None = None,
) -> dict[str, Any]:
    """What ``error.json`` holds: ``error``, ``type``, ``traceback`` and ``time`` (UTC, ISO 8601).

    Pass the exception, or ``message``/``type_name`` (and ``tb``) for a failure without one.

    Example:
        >>> sorted(error_record(ValueError("bad lr")))
        ['error', 'time', 'traceback', 'type']
    """
    if tb is None:
        tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if exc is not None else ""
    return {
        "error": message if message is not None else str(exc),
        "type": type_name if type_name is not None else type(exc).__name__,
        "traceback": tb,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------------------ the owner
class RunDir:
    """One run directory: the paths of its files, its :class:`RunState`, its readers and writers.

    Args:
        path: the directory (it need not exist yet).

    Example:
        >>> run = RunDir("runs/cifar10_vgg11_max_s0_1a2b3c4d5e")
        >>> run.checkpoint.name, run.previous_checkpoint.name
        ('checkpoint.pt', 'checkpoint.prev.pt')
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str] | RunDir) -> None:
        self.path = Path(path.path if isinstance(path, RunDir) else path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunDir) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    # ---------------------------------------------------------------- paths
    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def env(self) -> Path:
        return self.path / ENV_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def previous_checkpoint(self) -> Path:
        return self.path / PREVIOUS_CHECKPOINT_FILE

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def error(self) -> Path:
        return self.path / ERROR_FILE

    @property
    def shift(self) -> Path:
        return self.path / SHIFT_FILE

    @property
    def lock_file(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def tensorboard(self) -> Path:
        return self.path / TENSORBOARD_DIR

    def has_checkpoint(self) -> bool:
        """``checkpoint.pt`` or its previous generation exists (a resume can start from either)."""
        return self.checkpoint.exists() or self.previous_checkpoint.exists()

    # ---------------------------------------------------------------- readers (tolerant)
    def read_config(self, problems: list[str] | None = None) -> dict[str, Any] | None:
        return read_yaml_mapping(self.config, problems)

    def read_env(self, problems: list[str] | None = None) -> dict[str, Any] | None:
        return read_json(self.env, problems)

    def read_result(self, problems: list[str] | None = None) -> dict[str, Any] | None:
        return read_json(self.result, problems)

    def read_error(self, problems: list[str] | None = None) -> dict[str, Any] | None:
        return read_json(self.error, problems)

    def read_shift(self, problems: list[str] | None = None) -> dict[str, Any] | None:
        return read_json(self.shift, problems)

    def read_metrics(self, problems: list[str] | None = None) -> list[dict[str, float | None]]:
        return read_metrics(self.metrics, problems)

    def epochs_done(self) -> int:
        """Finished epochs: the data rows of ``metrics.csv`` (0 without one)."""
        try:
            with self.metrics.open(encoding="utf-8") as handle:
                return max(0, sum(1 for line in handle if line.strip()) - 1)
        except OSError:
            return 0

    def error_summary(self) -> str | None:
        """``"<type>: <first line of the error>"`` from ``error.json``, or None without a readable one."""
        error = self.read_error()
        if error is None:
            return None
        first = (str(error.get("error") or "").strip().splitlines() or [""])[0]
        return f"{error.get('type', 'Error')}: {first}"

    # ---------------------------------------------------------------- state
    def state(self, run_id: str | None = None) -> RunState:
        """The state the files say (see the module docstring); the lock is not consulted.

        Args:
            run_id: count a ``result.json`` only if it names this run id (or none); a directory holding
                another run's result is then not ``finished`` for this one.
        """
        result = self.read_result()
        if result is not None and (run_id is None or result.get("run_id") in (None, run_id)):
            status = result.get("status", RunState.FINISHED.value)
            if status == RunState.FINISHED.value:
                return RunState.FINISHED
            if status == RunState.DIVERGED.value:
                return RunState.DIVERGED
        if self.read_error() is not None:
            return RunState.FAILED
        if self.has_checkpoint():
            return RunState.RESUMABLE
        return RunState.NOT_STARTED

    # ---------------------------------------------------------------- writers (atomic)
    def write_config(self, config: Mapping[str, Any]) -> None:
        """``config.yaml``: the resolved config, keys in their order."""
        import yaml

        atomic_write_text(self.config, yaml.safe_dump(dict(config), sort_keys=False))

    def write_env(self, env: Mapping[str, Any]) -> None:
        atomic_write_json(self.env, dict(env))

    def write_metrics(self, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
        atomic_write_csv(self.metrics, columns, rows)

    def write_result(self, result: Mapping[str, Any]) -> None:
        atomic_write_json(self.result, dict(result))

    def write_shift(self, shift: Mapping[str, Any]) -> None:
        atomic_write_json(self.shift, dict(shift))

    def write_error(
        self,
        exc: BaseException | None = None,
        *,
        message: str | None = None,
        type_name: str | None = None,
        tb: str | None = None,
    ) -> dict[str, Any]:
        """Write ``error.json`` (see :func:`error_record`), creating the directory; returns the record."""
        record = error_record(exc, message=message, type_name=type_name, tb=tb)
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.error, record)
        return record

    def clear_error(self) -> None:
        """Remove ``error.json`` left by an earlier attempt (a new attempt starts)."""
        self.error.unlink(missing_ok=True)

    def drop_previous_checkpoint(self) -> None:
        """A finished run resumes from nothing any more: remove ``checkpoint.prev.pt``."""
        self.previous_checkpoint.unlink(missing_ok=True)
