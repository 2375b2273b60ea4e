"""Run events and the sinks that consume them (TensorBoard, MLflow).

The training loop emits :class:`~poolkit.tracking.events.RunStarted`, one
:class:`~poolkit.tracking.events.EpochEnded` per epoch and :class:`~poolkit.tracking.events.RunEnded`;
an :class:`~poolkit.tracking.events.EventStream` hands them to sinks, and a failing sink is warned about
once and dropped. This package belongs to the harness: the layer library never imports it.
"""

from poolkit.tracking.events import EpochEnded, EventStream, RunEnded, RunEvent, RunSink, RunStarted
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
    "EpochEnded",
    "EventStream",
    "MlflowSink",
    "RunEnded",
    "RunEvent",
    "RunSink",
    "RunStarted",
    "TensorBoardSink",
    "TrackingUnavailableError",
    "create_sinks",
    "default_tracking_uri",
    "metric_tag",
]
