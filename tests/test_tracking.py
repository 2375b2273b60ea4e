"""Run events and their sinks: what TensorBoard and MLflow hold afterwards, read back with their own readers.

TensorBoard's event files are read with ``EventAccumulator``; MLflow runs with ``MlflowClient`` on a real
SQLite store (no mock). Both packages are the optional ``tracking`` extra: the tests that need one skip
with a reason when it is missing.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import pytest

from poolkit.tracking import (
    METRIC_COLUMNS,
    EpochEnded,
    EventStream,
    MetricsCsvSink,
    ProgressSink,
    RunEnded,
    RunStarted,
    StepEnded,
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


# ---------------------------------------------------------------------- metrics.csv and the progress bar
def test_the_metrics_csv_sink_writes_every_row_so_far_in_the_contracted_format(tmp_path):
    run_dir = tmp_path / "run"
    sink = MetricsCsvSink()
    sink.handle(RunStarted(run_dir, "id", CONFIG))
    assert not (run_dir / "metrics.csv").exists()  # nothing before the first epoch, as before
    row = {c: 0.5 for c in METRIC_COLUMNS[1:]} | {"peak_memory_bytes": 2048.0, "lr": 0.1}
    val = {"val_top1": 12.25, "val_loss": 2.0}  # out of order: the file keeps the contracted order
    sink.handle(EpochEnded(1, val | row))
    sink.handle(StepEnded(2, 1, 4, 0.1, 1.0, 50.0))  # not a row
    sink.handle(EpochEnded(2, row | val | {"train_loss": 1 / 3}))
    sink.handle(RunEnded("diverged"))  # the file stays as the last finished epoch left it
    sink.close()
    header = ",".join([*METRIC_COLUMNS, "val_loss", "val_top1"])
    assert (run_dir / "metrics.csv").read_text().splitlines() == [
        header,
        "1,0.5,0.5,0.5,0.5,0.5,0.1,0.5,0.5,2048,2.0,12.25",
        "2,0.3333333333333333,0.5,0.5,0.5,0.5,0.1,0.5,0.5,2048,2.0,12.25",
    ]


def test_a_resumed_metrics_csv_starts_from_the_checkpoints_rows(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.csv").write_text("epoch,lr\n1,0.1\n2,0.05\n")  # epoch 2 outlived its checkpoint
    sink = MetricsCsvSink()
    sink.handle(RunStarted(run_dir, "id", CONFIG, resumed_epochs=1, history=(EpochEnded(1, {"lr": 0.1}),)))
    assert (run_dir / "metrics.csv").read_text() == "epoch,lr\n1,0.1\n"
    sink.handle(EpochEnded(2, {"lr": 0.025}))
    assert (run_dir / "metrics.csv").read_text() == "epoch,lr\n1,0.1\n2,0.025\n"


def test_the_progress_bar_follows_the_step_events(tmp_path):
    out = io.StringIO()
    sink = ProgressSink(file=out)
    assert EventStream([sink]).wants_steps
    sink.handle(RunStarted(tmp_path, "id", {"epochs": 2}))
    for step in range(1, 4):
        sink.handle(StepEnded(1, step, 3, 0.1, *((2.5, 12.5) if step in (1, 3) else (None, None))))
    text = out.getvalue()
    assert "epoch 1/2" in text and "3/3" in text and "acc=12.5, loss=2.500" in text
    sink.handle(EpochEnded(1, {"train_loss": 2.25, "train_top1": 15.0, "test_top1": 20.0}))
    assert "acc=15.0, loss=2.250, test=20.0" in out.getvalue()  # tqdm sorts the keys
    sink.handle(StepEnded(2, 1, 3, 0.05))  # a new epoch: a new bar
    assert "epoch 2/2" in out.getvalue()
    sink.handle(RunEnded("interrupted"))  # the open bar is closed
    assert sink._bar is None


def test_without_the_bar_no_step_is_asked_for_and_each_epoch_logs_one_line(tmp_path, caplog):
    sink = ProgressSink(bar=False)
    assert not EventStream([sink]).wants_steps and not EventStream().wants_steps
    with caplog.at_level(logging.INFO, logger="poolkit.train"):
        sink.handle(RunStarted(tmp_path, "id", {"epochs": 3}))
        sink.handle(EpochEnded(2, {**ROWS[0], "epoch_seconds": 1.5}))
    assert [r.getMessage() for r in caplog.records] == [
        "epoch 2/3: train loss 2.0000 top-1 20.00 | test loss 1.9000 top-1 25.00 | 1.5s"
    ]


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


class Recorder:
    """A sink that keeps every event (``wants_steps`` as asked)."""

    name = "tensorboard"

    def __init__(self, wants_steps: bool) -> None:
        self.wants_steps = wants_steps
        self.events: list[object] = []

    def handle(self, event):
        self.events.append(event)

    def close(self):
        pass


@pytest.mark.parametrize("wants_steps", [True, False])
def test_the_training_loop_emits_steps_only_when_a_sink_wants_them(tmp_path, monkeypatch, wants_steps):
    from poolkit.tracking import sinks
    from poolkit.train import train_run

    recorder = Recorder(wants_steps)
    monkeypatch.setitem(sinks.LOGGERS, "tensorboard", lambda: recorder)
    train_run({**RUN, "batch_size": 256, "loggers": ["tensorboard"]}, tmp_path / "run", progress=False)
    kinds = [type(e).__name__ for e in recorder.events]
    assert kinds[0] == "RunStarted" and kinds[-1] == "RunEnded" and kinds.count("EpochEnded") == 2
    steps = [e for e in recorder.events if isinstance(e, StepEnded)]
    if not wants_steps:
        assert steps == []
        return
    per_epoch = steps[0].steps
    assert per_epoch > 1 and len(steps) == 2 * per_epoch
    assert [(e.epoch, e.step) for e in steps] == [(ep, s) for ep in (1, 2) for s in range(1, per_epoch + 1)]
    # the running loss only where the bar refreshed it before (every 10 steps and the last), one sync each
    measured = [e.step for e in steps[:per_epoch] if e.loss is not None]
    assert measured == sorted({*range(1, per_epoch + 1, 10), per_epoch})
    assert all(e.top1 is not None and 0 <= e.top1 <= 100 for e in steps if e.loss is not None)
    assert kinds.index("EpochEnded") == 1 + per_epoch  # an epoch's steps come before its end
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))  # lr: each epoch's first step's
    assert [e.lr for e in steps if e.step == 1] == pytest.approx([float(r["lr"]) for r in rows])


def test_a_failing_metrics_csv_warns_once_and_the_run_finishes(tmp_path, caplog):
    from poolkit.train import train_run

    run_dir = tmp_path / "run"
    (run_dir / "metrics.csv").mkdir(parents=True)  # the file cannot be replaced: every write fails
    with caplog.at_level(logging.WARNING, logger="poolkit.tracking"):
        result = train_run({**RUN, "batch_size": 256}, run_dir, progress=False)
    assert result["status"] == "finished" and (run_dir / "result.json").is_file()
    warnings = [r.getMessage() for r in caplog.records if r.name == "poolkit.tracking"]
    assert len(warnings) == 1 and "'metrics.csv' failed on EpochEnded" in warnings[0]


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
