"""Experiment-tracking sinks: TensorBoard and MLflow, chosen by name (``--logger tensorboard``).

* ``tensorboard``: event files under ``RUN_DIR/tensorboard/``; one scalar per metric per epoch (tag
  ``train/loss``, ``test/top1``, ...; step = epoch), the resolved config as text (tag ``config``) and the
  final status as text (tag ``status``). Read them with ``tensorboard --logdir RUNS_DIR``.
* ``mlflow``: one MLflow run per poolkit run, in experiment ``poolkit``, named after the run directory.
  It honours ``MLFLOW_TRACKING_URI``; when that is unset it uses a SQLite store next to the runs,
  ``sqlite:///RUNS_DIR/mlflow.db`` (RUNS_DIR = the run directory's parent). Params are the resolved
  config (``pool`` included), metrics are logged per epoch (step = epoch), and the run ends FINISHED or
  FAILED. A resumed poolkit run continues its MLflow run (found by the tag ``poolkit.run_dir``).

Both packages are optional (``pip install "poolkit[tracking]"``); asking for a logger whose package is
missing is a user error that names the pip command.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from poolkit.errors import UserError
from poolkit.rundir import RunDir
from poolkit.tracking.events import EpochEnded, RunEnded, RunEvent, RunSink, RunStarted

__all__ = [
    "LOGGERS",
    "MLFLOW_EXPERIMENT",
    "MlflowSink",
    "TensorBoardSink",
    "TrackingUnavailableError",
    "create_sinks",
    "default_tracking_uri",
    "metric_tag",
]

#: The MLflow experiment that poolkit runs are logged to.
MLFLOW_EXPERIMENT = "poolkit"
_RUN_DIR_TAG = "poolkit.run_dir"


class TrackingUnavailableError(UserError):
    """A logger was asked for whose package is not installed (the message names the pip command)."""


def metric_tag(name: str) -> str:
    """TensorBoard's tag of a metrics.csv column: ``test_top1`` -> ``test/top1``, ``lr`` -> ``lr``."""
    split, sep, rest = name.partition("_")
    return f"{split}/{rest}" if sep and split in ("train", "test", "val") else name


def _config_text(config: Mapping[str, Any]) -> str:
    """The config as a Markdown table (TensorBoard renders text summaries as Markdown)."""
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {key} | {json.dumps(value, default=str)} |" for key, value in config.items()]
    return "\n".join(lines)


class TensorBoardSink:
    """Writes a run's events as TensorBoard summaries under ``RUN_DIR/tensorboard/``."""

    name = "tensorboard"

    def __init__(self) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise TrackingUnavailableError(
                'the tensorboard logger needs TensorBoard: pip install "poolkit[tracking]" '
                "(or pip install tensorboard)"
            ) from error
        self._writer_class = SummaryWriter
        self._writer: Any = None

    def handle(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            self._writer = self._writer_class(log_dir=str(RunDir(event.run_dir).tensorboard))
            if not event.resumed_epochs:
                self._writer.add_text("config", _config_text(event.config), 0)
        elif isinstance(event, EpochEnded) and self._writer is not None:
            for key, value in event.metrics.items():
                self._writer.add_scalar(metric_tag(key), float(value), event.epoch)
            self._writer.flush()
        elif isinstance(event, RunEnded) and self._writer is not None:
            self._writer.add_text("status", event.status + (f": {event.message}" if event.message else ""))
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def default_tracking_uri(run_dir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else a SQLite store next to the runs (``RUNS_DIR/mlflow.db``)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(run_dir).resolve().parent / 'mlflow.db').as_posix()}"


class MlflowSink:
    """Logs a run to MLflow through an explicit ``MlflowClient`` (no global MLflow state)."""

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, experiment: str = MLFLOW_EXPERIMENT) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise TrackingUnavailableError(
                'the mlflow logger needs MLflow: pip install "poolkit[tracking]" (or pip install mlflow)'
            ) from error
        self._client_class = MlflowClient
        self._uri = tracking_uri
        self._experiment = experiment
        self._client: Any = None
        self._run_id: str | None = None

    @property
    def run_id(self) -> str | None:
        """The MLflow run id (after :class:`RunStarted`)."""
        return self._run_id

    def handle(self, event: RunEvent) -> None:
        if isinstance(event, RunStarted):
            self._start(event)
        elif isinstance(event, EpochEnded) and self._run_id is not None:
            from mlflow.entities import Metric

            now = int(time.time() * 1000)
            metrics = [Metric(key, float(value), now, event.epoch) for key, value in event.metrics.items()]
            self._client.log_batch(self._run_id, metrics=metrics)
        elif isinstance(event, RunEnded) and self._run_id is not None:
            if event.message:
                self._client.set_tag(self._run_id, "poolkit.message", event.message[:5000])
            self._client.set_tag(self._run_id, "poolkit.status", event.status)
            status = "FINISHED" if event.status == "finished" else "FAILED"
            self._client.set_terminated(self._run_id, status=status)
            self._run_id = None

    def _start(self, event: RunStarted) -> None:
        from mlflow.entities import Param

        run_dir = Path(event.run_dir).resolve()
        self._client = self._client_class(self._uri or default_tracking_uri(run_dir))
        found = self._client.get_experiment_by_name(self._experiment)
        experiment_id = found.experiment_id if found else self._client.create_experiment(self._experiment)
        previous = self._client.search_runs(
            [experiment_id], filter_string=f"tags.`{_RUN_DIR_TAG}` = '{run_dir.as_posix()}'", max_results=1
        )
        if previous and event.resumed_epochs:
            self._run_id = previous[0].info.run_id
            self._client.update_run(self._run_id, status="RUNNING")
            return
        run = self._client.create_run(
            experiment_id,
            run_name=run_dir.name,
            tags={_RUN_DIR_TAG: run_dir.as_posix(), "poolkit.run_id": event.run_id},
        )
        self._run_id = run.info.run_id
        params = [Param(key, _param_value(value)) for key, value in event.config.items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self._run_id, params=params[start : start + 100])

    def close(self) -> None:
        if self._run_id is not None and self._client is not None:  # closed without an end: a crash
            self._client.set_terminated(self._run_id, status="FAILED")
            self._run_id = None


def _param_value(value: Any) -> str:
    """A config value as MLflow param text: plain for scalars, JSON for lists and dicts."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:6000]  # MLflow's limit on a param value


#: Logger names accepted by ``--logger`` and the run config's ``loggers``, and their factories.
LOGGERS: dict[str, Callable[[], RunSink]] = {"tensorboard": TensorBoardSink, "mlflow": MlflowSink}


def create_sinks(names: Iterable[str]) -> list[RunSink]:
    """The sinks for ``names`` (each once, in order).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).
        TrackingUnavailableError: a known logger whose package is missing (the message names pip).
    """
    sinks: list[RunSink] = []
    for name in dict.fromkeys(names):
        if name not in LOGGERS:
            raise ValueError(f"unknown logger {name!r}; choose from: {', '.join(sorted(LOGGERS))}")
        sinks.append(LOGGERS[name]())
    return sinks
