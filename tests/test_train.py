"""poolkit.train: the run directory, learning, resume, finished-run skip, AMP, the CLI and DDP (gloo).

Every run here uses the generated ``synthetic`` dataset (512 train / 256 test images, 10 classes) and a
VGG11 at width 1/8, so a run of a few epochs takes seconds on two CPU cores.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from poolkit.data import TensorLoader, load_dataset
from poolkit.train import METRIC_COLUMNS, RunConfig, WarmupCosine, load_run, train_run
from poolkit.train.checkpoint import load_checkpoint
from poolkit.train.cli import build_parser, main

# stochastic_mix draws from the global RNG in training: a resume that lost the RNG state would differ.
CONFIG: dict[str, Any] = {
    "dataset": "synthetic",
    "model": "vgg11",
    "width": 0.125,
    "pool": "stochastic_mix",
    "epochs": 3,
    "batch_size": 32,
    "lr": 0.05,
    "warmup_epochs": 1,
    "seed": 1,
    # One thread: on a 2-core machine shared with other processes, two threads can be several times slower.
    "threads": 1,
}
RESULT_KEYS = {
    "status", "run_id", "model", "dataset", "pool", "pool_options", "seed", "width", "epochs", "test_top1",
    "test_top5", "test_loss", "train_top1", "train_loss", "val_top1", "seconds", "epoch_seconds_mean",
    "images_per_second_mean", "peak_memory_bytes", "params", "pool_params", "pool_layers", "learned",
    "device", "amp",
}  # fmt: skip


def read_metrics(run: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(run / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


class Interrupt(Exception):
    """Stands in for a kill right after an epoch's checkpoint was written."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    run = tmp_path_factory.mktemp("runs") / "uninterrupted"
    return run, train_run(CONFIG, run, progress=False)


# ---------------------------------------------------------------------- the run directory
def test_run_directory_holds_every_file_with_the_contracted_contents(finished: tuple[Path, dict]) -> None:
    run, result = finished
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.yaml", "env.json", "metrics.csv", "result.json",
    ]  # fmt: skip
    assert yaml.safe_load((run / "config.yaml").read_text()) == RunConfig.from_dict(CONFIG).to_dict()
    env = json.loads((run / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["python"] and env["platform"] and env["cpu"]
    assert {"numpy", "device", "gpu", "cuda", "git_revision", "argv"} <= set(env)

    columns, rows = read_metrics(run)
    assert tuple(columns) == METRIC_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert all(float(r["epoch_seconds"]) > 0 and float(r["images_per_second"]) > 0 for r in rows)
    assert all(int(r["peak_memory_bytes"]) > 10_000_000 for r in rows)  # the process's peak RSS
    # Warm-up over epoch 1 (16 steps), then cosine: the lr column is each epoch's first step's.
    assert [float(r["lr"]) for r in rows] == pytest.approx([0.05 / 16, 0.05, 0.025])

    stored = json.loads((run / "result.json").read_text())
    assert stored == result and set(result) >= RESULT_KEYS
    assert result["status"] == "finished" and result["run_id"] == RunConfig.from_dict(CONFIG).run_id()
    assert result["test_top1"] == pytest.approx(float(rows[-1]["test_top1"]))  # the last epoch's
    assert result["val_top1"] is None and result["amp"] is False and result["device"] == "cpu"
    assert result["seconds"] == pytest.approx(sum(float(r["epoch_seconds"]) for r in rows))
    layers = result["pool_layers"]
    assert [layer["name"] for layer in layers] == [f"features.stage{s}.pool" for s in range(1, 6)] + [
        "head.pool"
    ]
    assert [layer["method"] for layer in layers] == ["stochastic_mix"] * 5 + ["avg"]
    assert result["pool_params"] == sum(layer["params"] for layer in layers) == 5
    assert set(result["learned"]) == {layer["name"] for layer in layers}
    lam = result["learned"]["features.stage1.pool"]["values"]
    assert lam and all(0 < v < 1 for vs in lam.values() for v in vs)


def test_metrics_csv_is_byte_for_byte_what_the_engine_wrote_before_it_became_a_sink(
    finished: tuple[Path, dict],
) -> None:
    """The metrics.csv sink writes the checkpoint's rows as the engine's own writer did: the header, then
    the epoch and the peak memory as integers and every other value as ``repr(float)``, "\\n" line ends."""
    run, _ = finished
    rows = load_checkpoint(run / "checkpoint.pt")["metrics"]
    ints = ("epoch", "peak_memory_bytes")
    expected = [",".join(METRIC_COLUMNS)] + [
        ",".join(str(int(r[c])) if c in ints else repr(float(r[c])) for c in METRIC_COLUMNS) for r in rows
    ]
    assert (run / "metrics.csv").read_bytes() == ("\n".join(expected) + "\n").encode()


def test_the_run_learns_and_load_run_gives_back_the_trained_model(finished: tuple[Path, dict]) -> None:
    run, result = finished
    assert result["test_top1"] > 50 and result["train_top1"] > 50  # chance is 10%
    model, cfg = load_run(run)
    assert cfg == RunConfig.from_dict(CONFIG) and not model.training
    data = load_dataset("synthetic")
    loader = TensorLoader(data.test, 256, train=False, mean=data.mean, std=data.std)
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader.epoch(0))
    assert 100 * hits / len(data.test) == pytest.approx(result["test_top1"], abs=100 / 256 + 1e-9)


def test_warmup_cosine_schedule() -> None:
    f = WarmupCosine(total=8, warmup=4)
    assert [f(i) for i in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert f(6) == pytest.approx(0.5) and 0 < f(7) < 0.2
    with pytest.raises(ValueError, match="warmup < total"):
        WarmupCosine(total=4, warmup=4)


# ---------------------------------------------------------------------- resume and reruns
def test_resume_after_a_kill_gives_bit_identical_weights(finished: tuple[Path, dict], tmp_path: Path) -> None:
    reference_run, reference = finished
    run = tmp_path / "killed"

    def kill_after_first_epoch(epoch: int, row: dict) -> None:
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_run(CONFIG, run, progress=False, on_epoch=kill_after_first_epoch)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and not (run / "result.json").exists()
    _, rows = read_metrics(run)
    assert len(rows) == 1

    with pytest.raises(ValueError, match=r"unfinished run.*resume=True"):
        train_run(CONFIG, run, progress=False)
    torch.manual_seed(12345)  # whatever the caller's RNG state, the checkpoint's is restored
    result = train_run(CONFIG, run, resume=True, progress=False)

    final = load_checkpoint(run / "checkpoint.pt")
    expected = load_checkpoint(reference_run / "checkpoint.pt")
    assert final["model"].keys() == expected["model"].keys()
    for name, tensor in expected["model"].items():
        assert torch.equal(final["model"][name], tensor), name
    for key in ("test_top1", "test_loss", "train_loss", "learned"):
        assert result[key] == reference[key], key
    _, rows = read_metrics(run)
    _, reference_rows = read_metrics(reference_run)
    for row, ref in zip(rows, reference_rows, strict=True):
        assert row["test_loss"] == ref["test_loss"] and row["train_loss"] == ref["train_loss"]
    assert "resumed" in json.loads((run / "env.json").read_text())


def test_finished_run_is_returned_without_training(finished: tuple[Path, dict]) -> None:
    run, result = finished
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    # A different device or thread count is the same run (they are not part of the run id).
    assert (
        train_run({**CONFIG, "device": "cpu", "threads": 2, "data_dir": str(run)}, run, progress=False)
        == result
    )
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_a_different_config_in_an_existing_directory_is_refused(finished: tuple[Path, dict]) -> None:
    run, _ = finished
    with pytest.raises(ValueError, match=r"holds a different run .*seed: 1 -> 2"):
        train_run({**CONFIG, "seed": 2}, run, progress=False)
    with pytest.raises(ValueError, match="different run"):
        train_run({**CONFIG, "pool": "max"}, run, resume=True, progress=False)


def test_threads_are_restored_after_a_run(finished: tuple[Path, dict]) -> None:
    before = torch.get_num_threads()
    train_run({**CONFIG, "threads": before + 1}, finished[0], progress=False)
    assert torch.get_num_threads() == before


# ---------------------------------------------------------------------- CLI, AMP, shift
def test_cli_run_with_cpu_bfloat16_amp_validation_split_and_shift_eval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    probed: list[Path] = []

    def probe_run(run_dir: Any, **kwargs: Any) -> dict:
        assert (Path(run_dir) / "result.json").exists()
        probed.append(Path(run_dir))
        return {}

    monkeypatch.setitem(sys.modules, "poolkit.analysis.shift", types.SimpleNamespace(probe_run=probe_run))
    config = tmp_path / "run.yaml"
    config.write_text("dataset: synthetic\nmodel: vgg11\nwidth: 0.125\nbatch_size: 64\nlr: 1e-1\n")
    run = tmp_path / "amp"
    args = build_parser().parse_args(
        ["--config", str(config), "--out", str(run), "--epochs", "1", "--amp", "--val-fraction", "0.25",
         "--pool", "tmaxavg", "--pool-opt", "k=2", "--shift-eval", "--channels-last", "--device", "cpu",
         "--threads", "1"]
    )  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "test top-1" in captured.out
    assert probed == [run]

    result = json.loads((run / "result.json").read_text())
    assert (
        result["amp"] is True
        and result["amp_dtype"] == "bfloat16"
        and result["pool_options"] == {"k": 2, "threshold": 0.3}
    )
    assert result["val_top1"] is not None
    columns, rows = read_metrics(run)
    assert tuple(columns) == (*METRIC_COLUMNS, "val_loss", "val_top1") and len(rows) == 1
    assert all(torch.isfinite(torch.tensor(float(v))) for v in rows[0].values())
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["lr"], cfg["amp"], cfg["val_fraction"], cfg["channels_last"]) == (0.1, True, 0.25, True)


def test_cli_reports_config_errors_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(
        ["--dataset", "synthetic", "--pool", "maxx", "--out", str(tmp_path / "x")]
    )
    assert main(args) == 2
    assert "unknown pool 'maxx'; valid pools are" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_shift_eval_is_skipped_with_a_log_line_when_the_probe_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from poolkit.experiments.runner import _shift_eval

    monkeypatch.setitem(sys.modules, "poolkit.analysis.shift", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="poolkit.experiments"):
        _shift_eval(tmp_path, None)
    assert "shift_eval: skipped" in caplog.text


# ---------------------------------------------------------------------- distributed
@pytest.mark.slow
def test_ddp_gloo_two_processes_write_one_consistent_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "poolkit.train.cli", "--dataset", "synthetic", "--model", "vgg11", "--width", "0.125",
        "--pool", "gated", "--epochs", "1", "--batch-size", "32", "--lr", "0.05", "--out", str(run),
        "--no-progress", "--device", "cpu",
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [
        "checkpoint.pt", "config.yaml", "env.json", "metrics.csv", "result.json",
    ]  # fmt: skip
    result = json.loads((run / "result.json").read_text())
    assert result["world_size"] == 2 and json.loads((run / "env.json").read_text())["world_size"] == 2
    digests = result["params_sha256"]  # every rank's final parameters: the replicas stayed identical
    assert len(digests) == 2 and digests[0] == digests[1] and result["sync_bn"] is False
    _, rows = read_metrics(run)
    assert len(rows) == 1 and float(rows[0]["test_top1"]) == result["test_top1"]
    # Metrics are sums over both ranks: the test accuracy is that of the saved model on the whole split.
    model, _ = load_run(run)
    data = load_dataset("synthetic")
    loader = TensorLoader(data.test, 128, train=False, mean=data.mean, std=data.std)
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader.epoch(0))
    assert 100 * hits / len(data.test) == pytest.approx(result["test_top1"], abs=100 / 256 + 1e-9)
    assert result["pool_params"] > 0  # DDP ran with find_unused_parameters
