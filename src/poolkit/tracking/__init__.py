"""Run events and the sinks that consume them (metrics.csv, the progress bar, TensorBoard, MLflow).

The training loop emits :class:`~poolkit.tracking.events.RunStarted`,
:class:`~poolkit.tracking.events.StepEnded` (only while a sink wants steps), one
:class:`~poolkit.tracking.events.EpochEnded` per epoch and :class:`~poolkit.tracking.events.RunEnded`; an
:class:`~poolkit.tracking.events.EventStream` hands them to sinks, and a failing sink is warned about once
and dropped. Every run has the :class:`~poolkit.tracking.metrics_csv.MetricsCsvSink` and the
:class:`~poolkit.tracking.progress.ProgressSink`; ``--logger`` adds TensorBoard and MLflow
(:mod:`poolkit.tracking.sinks`). This package belongs to the harness: the layer library never imports it,
and it never imports the trainer.
"""

from poolkit.tracking.events import (
    EpochEnded,
    EventStream,
    RunEnded,
    RunEvent,
    RunSink,
    RunStarted,
    StepEnded,
)
from poolkit.tracking.metrics_csv import METRIC_COLUMNS, VAL_COLUMNS, MetricsCsvSink
from poolkit.tracking.progress import ProgressSink
from poolkit.tracking.sinks import (
    LOGGERS,
    MlflowSink,
    TensorBoardSink,
    TrackingUnavailableError,
    create_sinks,
    default_tracking_uri,
    metric_tag,
)

__all__ = [
    "LOGGERS",
    "METRIC_COLUMNS",
    "VAL_COLUMNS",
    "EpochEnded",
    "EventStream",
    "MetricsCsvSink",
    "MlflowSink",
    "ProgressSink",
    "RunEnded",
    "RunEvent",
    "RunSink",
    "RunStarted",
    "StepEnded",
    "TensorBoardSink",
    "TrackingUnavailableError",
    "create_sinks",
    "default_tracking_uri",
    "metric_tag",
]
