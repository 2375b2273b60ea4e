"""Run events and their sinks: what TensorBoard and MLflow hold afterwards, read back with their own readers.

TensorBoard's event files are read with ``EventAccumulator``; MLflow runs with ``MlflowClient`` on a real
SQLite store (no mock). Both packages are the optional ``tracking`` extra: the tests that need one skip
with a reason when it is missing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from poolkit.tracking import (
    EpochEnded,
    EventStream,
    RunEnded,
    RunStarted,
    create_sinks,
    default_tracking_uri,
    metric_tag,
)

CONFIG = {"dataset": "synthetic", "model": "vgg11", "pool": "gem", "lr": 0.05, "pool_options": {"p": 3.0}}
ROWS = [
    {"train_loss": 2.0, "train_top1": 20.0, "test_loss": 1.9, "test_top1": 25.0, "lr": 0.05},
    {"train_loss": 1.5, "train_top1": 40.0, "test_loss": 1.4, "test_top1": 45.5, "lr": 0.025},
]


def _play(stream: EventStream, run_dir: Path, status: str = "finished", start: int = 0) -> None:
    stream.emit(RunStarted(run_dir, "synthetic_vgg11_gem_s0_abc", CONFIG, resumed_epochs=start))
    for epoch, row in enumerate(ROWS[start:], start + 1):
        stream.emit(EpochEnded(epoch, row))
    stream.emit(RunEnded(status, {"test_top1": 45.5} if status == "finished" else None))  # type: ignore[arg-type]
    stream.close()


def test_metric_tags_group_by_split():
    assert metric_tag("test_top1") == "test/top1"
    assert metric_tag("val_loss") == "val/loss"
    assert metric_tag("lr") == "lr" and metric_tag("epoch_seconds") == "epoch_seconds"


def test_a_failing_sink_warns_once_and_training_goes_on(caplog):
    seen = []

    class Broken:
        name = "broken"

        def handle(self, event):
            raise OSError("disk full")

        def close(self):
            raise OSError("still full")

    class Recorder:
        name = "recorder"

        def handle(self, event):
            seen.append(type(event).__name__)

        def close(self):
            seen.append("closed")

    stream = EventStream([Broken(), Recorder()])
    with caplog.at_level(logging.WARNING, logger="poolkit.tracking"):
        _play(stream, Path("unused"))
    assert seen == ["RunStarted", "EpochEnded", "EpochEnded", "RunEnded", "closed"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "'broken' failed on RunStarted: OSError: disk full" in warnings[0]
    assert "training goes on" in warnings[0]


def test_unknown_logger_lists_the_valid_names():
    with pytest.raises(ValueError, match="unknown logger 'wandb'; choose from: mlflow, tensorboard"):
        create_sinks(["wandb"])


def test_tensorboard_event_files_hold_every_metric_per_epoch_and_the_config(tmp_path):
    pytest.importorskip("tensorboard", reason="the tracking extra (TensorBoard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "runs" / "r1"
    _play(EventStream(create_sinks(["tensorboard"])), run_dir)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert sorted(scalars) == ["lr", "test/loss", "test/top1", "train/loss", "train/top1"]
    top1 = acc.Scalars("test/top1")
    assert [(e.step, e.value) for e in top1] == [(1, 25.0), (2, 45.5)]
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]}
    assert set(texts) == {"config/text_summary", "status/text_summary"}
    assert '| pool | "gem" |' in texts["config/text_summary"]
    assert texts["status/text_summary"] == "finished"


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="the tracking extra (MLflow) is not installed")
    pytest.importorskip("sqlalchemy", reason="MLflow's SQLite store needs SQLAlchemy (the tracking extra)")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "runs"


def test_mlflow_sqlite_store_next_to_the_runs_holds_params_metrics_and_status(mlflow_store):
    from mlflow.tracking import MlflowClient

    run_dir = mlflow_store / "r1"
    uri = default_tracking_uri(run_dir)
    assert uri == f"sqlite:///{(mlflow_store / 'mlflow.db').resolve().as_posix()}"
    _play(EventStream(create_sinks(["mlflow"])), run_dir)
    _play(EventStream(create_sinks(["mlflow"])), mlflow_store / "r2", status="diverged")
    assert (mlflow_store / "mlflow.db").is_file()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("poolkit")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert set(runs) == {"r1", "r2"}
    first = runs["r1"]
    assert first.info.status == "FINISHED" and runs["r2"].info.status == "FAILED"
    assert runs["r2"].data.tags["poolkit.status"] == "diverged"
    assert first.data.params["pool"] == "gem"
    assert first.data.params["pool_options"] == '{"p": 3.0}'
    assert first.data.params["lr"] == "0.05"
    history = client.get_metric_history(first.info.run_id, "test_top1")
    assert [(m.step, m.value) for m in history] == [(1, 25.0), (2, 45.5)]
    assert first.data.tags["poolkit.run_id"] == "synthetic_vgg11_gem_s0_abc"


def test_mlflow_honours_the_tracking_uri_and_a_resumed_run_continues(mlflow_store, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{(mlflow_store.parent / 'elsewhere.db').as_posix()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_dir = mlflow_store / "r1"
    stream = EventStream(create_sinks(["mlflow"]))
    stream.emit(RunStarted(run_dir, "id", CONFIG))
    stream.emit(EpochEnded(1, ROWS[0]))
    stream.close()  # killed after epoch 1: closed without RunEnded
    _play(EventStream(create_sinks(["mlflow"])), run_dir, start=1)  # --resume
    assert not (mlflow_store / "mlflow.db").exists()

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("poolkit").experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "test_top1")
    assert [(m.step, m.value) for m in history] == [(1, 25.0), (2, 45.5)]
