"""Run events and their sinks: what TensorBoard and MLflow hold afterwards, read back with their own readers.

TensorBoard's event files are read with ``EventAccumulator``; MLflow runs with ``MlflowClient`` on a real
SQLite store (no mock). Both packages are the optional ``tracking`` extra: the tests that need one skip
with a reason when it is missing.
"""

from __future__ import annotations

import csv
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


# ---------------------------------------------------------------------- the training loop emits the events
RUN = {
    "dataset": "synthetic",
    "model": "vgg11",
    "width": 0.0625,
    "epochs": 2,
    "batch_size": 128,
    "threads": 1,
}


def test_a_training_run_logs_every_epoch_to_tensorboard_and_mlflow(mlflow_store):
    pytest.importorskip("tensorboard", reason="the tracking extra (TensorBoard) is not installed")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from poolkit.train import train_run

    run_dir = mlflow_store / "gem"
    result = train_run({**RUN, "pool": "gem", "loggers": ["tensorboard", "mlflow"]}, run_dir, progress=False)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert len(rows) == 2

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for column in ("train_loss", "test_top1", "lr", "epoch_seconds"):
        logged = [(e.step, e.value) for e in acc.Scalars(metric_tag(column))]
        assert logged == [(int(r["epoch"]), pytest.approx(float(r[column]))) for r in rows], column

    client = MlflowClient(default_tracking_uri(run_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("poolkit").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "gem"
    assert run.data.params["pool"] == "gem" and run.data.params["epochs"] == "2"
    assert run.data.tags["poolkit.run_id"] == result["run_id"]
    history = client.get_metric_history(run.info.run_id, "test_top1")
    assert [(m.step, m.value) for m in history] == [
        (int(r["epoch"]), pytest.approx(float(r["test_top1"]))) for r in rows
    ]
    # loggers change where a run is reported, not what it computes: the run id ignores them
    from poolkit.train.config import RunConfig

    assert (
        RunConfig.from_dict({**RUN, "pool": "gem", "loggers": ["mlflow"]}).run_id()
        == RunConfig.from_dict({**RUN, "pool": "gem"}).run_id()
    )


def test_a_diverged_run_ends_failed_in_mlflow(mlflow_store):
    from mlflow.tracking import MlflowClient

    from poolkit.train import train_run
    from poolkit.train.engine import RunDiverged

    run_dir = mlflow_store / "huge-lr"
    with pytest.raises(RunDiverged):
        train_run(
            {**RUN, "epochs": 1, "batch_size": 64, "lr": 1e6, "loggers": ["mlflow"]}, run_dir, progress=False
        )
    client = MlflowClient(default_tracking_uri(run_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("poolkit").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["poolkit.status"] == "diverged"
    assert "diverged" in run.data.tags["poolkit.message"]


def test_a_broken_logger_warns_once_and_the_run_finishes(tmp_path, monkeypatch, caplog):
    from poolkit.tracking import sinks
    from poolkit.train import train_run

    class Broken:
        name = "tensorboard"

        def handle(self, event):
            raise OSError("no space left on device")

        def close(self):
            pass

    monkeypatch.setitem(sinks.LOGGERS, "tensorboard", Broken)
    with caplog.at_level(logging.WARNING, logger="poolkit.tracking"):
        result = train_run({**RUN, "epochs": 1, "loggers": ["tensorboard"]}, tmp_path / "run", progress=False)
    assert result["status"] == "finished"
    warnings = [r.getMessage() for r in caplog.records if r.name == "poolkit.tracking"]
    assert len(warnings) == 1 and "no space left on device" in warnings[0]


def test_sweep_logger_flag_reaches_every_run_and_a_missing_package_is_a_user_error(tmp_path, capsys):
    from poolkit.cli import main

    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "name: t\ngrid:\n  dataset: [synthetic]\n  model: [vgg11]\n  pool: [max, avg]\n"
        "train:\n  width: 0.0625\n  epochs: 1\n"
    )
    assert main(["sweep", str(sweep), "--out", str(tmp_path / "out"), "--dry-run", "--logger", "mlflow"]) == 0
    from poolkit.experiments.config import load_sweep
    from poolkit.experiments.grid import expand_sweep

    plain = expand_sweep(load_sweep(sweep))
    logged = expand_sweep(load_sweep(sweep, sets=["loggers=[mlflow]"]))
    assert [s.config["loggers"] for s in logged] == [["mlflow"], ["mlflow"]]
    assert [s.run_id for s in logged] == [s.run_id for s in plain]  # not part of the run ids
    capsys.readouterr()
    with pytest.raises(SystemExit) as bad:  # argparse's usage error: exit 2, the valid names
        main(["train", "--dataset", "synthetic", "--logger", "wandb", "--out", str(tmp_path / "r")])
    assert bad.value.code == 2
    assert "invalid choice: 'wandb' (choose from 'mlflow', 'tensorboard')" in capsys.readouterr().err


def test_a_logger_without_its_package_is_one_line_naming_pip(tmp_path, capsys, monkeypatch):
    from poolkit.cli import main
    from poolkit.tracking import TrackingUnavailableError, sinks

    def missing():
        raise TrackingUnavailableError(
            'the tensorboard logger needs TensorBoard: pip install "poolkit[tracking]"'
        )

    monkeypatch.setitem(sinks.LOGGERS, "tensorboard", missing)
    argv = ["train", "--dataset", "synthetic", "--width", "0.0625", "--epochs", "1", "--no-progress"]
    assert main([*argv, "--logger", "tensorboard", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert 'pip install "poolkit[tracking]"' in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()  # refused before training
