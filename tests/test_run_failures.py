"""No run fails silently: divergence, damaged checkpoints, and user errors of every ``poolkit`` command.

Runs use the generated ``synthetic`` dataset (512 training images, 8 steps of 64 per epoch) and a VGG11 at
width 1/8, so each takes seconds on two CPU cores.
"""

from __future__ import annotations

import io
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from poolkit.cli import main as poolkit_main
from poolkit.experiments import SweepConfig, run_sweep
from poolkit.experiments.sweep import format_status, sweep_status
from poolkit.report.grouping import collect
from poolkit.report.runs import read_run
from poolkit.report.tables import problem_runs_table
from poolkit.train import train_run
from poolkit.train.checkpoint import CheckpointError, load_checkpoint, previous_path
from poolkit.train.engine import RunDiverged

RUN: dict[str, Any] = {
    "dataset": "synthetic",
    "model": "vgg11",
    "width": 0.125,
    "pool": "stochastic_mix",  # draws from the RNG: a resume from the wrong state would differ
    "epochs": 3,
    "batch_size": 64,
    "lr": 0.05,
    "seed": 3,
    "threads": 1,
}
STEPS = 512 // 64
#: A learning rate at which the synthetic run's loss overflows to NaN within a few steps.
HUGE_LR = 1e6


class Stop(Exception):
    """Stands in for a kill right after an epoch's checkpoint was written."""


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``poolkit ARGV`` in this process: (exit status, stderr)."""
    try:
        code = poolkit_main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- divergence
class _PoisonedLoss(nn.CrossEntropyLoss):
    """Cross-entropy that returns NaN at one call (1-based) of the run: a divergence at a known step."""

    calls = 0
    poison_at = 0

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        loss = super().forward(input, target)
        return loss * float("nan") if type(self).calls == self.poison_at else loss


def test_a_non_finite_loss_stops_the_run_at_that_step_and_keeps_the_last_finite_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_PoisonedLoss, "calls", 0)
    monkeypatch.setattr(_PoisonedLoss, "poison_at", STEPS + 3)  # epoch 2, step 3
    monkeypatch.setattr(nn, "CrossEntropyLoss", _PoisonedLoss)
    run = tmp_path / "run"
    saved: dict[int, bytes] = {}

    def keep(epoch: int, row: dict) -> None:
        saved[epoch] = (run / "checkpoint.pt").read_bytes()

    with pytest.raises(RunDiverged, match=r"diverged: the training loss was nan at epoch 2, step 3 of 8"):
        train_run(RUN, run, progress=False, on_epoch=keep)
    assert _PoisonedLoss.calls == STEPS + 3 + 1  # stopped at once (the check reads one step late)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "diverged" and result["test_top1"] is None
    assert result["diverged"] == {
        "epoch": 2, "step": 3, "steps_per_epoch": STEPS, "global_step": STEPS + 3, "loss": "nan",
        "checkpoint_epoch": 1,
    }  # fmt: skip
    # The checkpoint is the one epoch 1 wrote, untouched, with finite weights; metrics.csv has epoch 1.
    assert list(saved) == [1] and (run / "checkpoint.pt").read_bytes() == saved[1]
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert (run / "metrics.csv").read_text().count("\n") == 2
    # Running it again does not train (it would diverge again): the same error from result.json.
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with pytest.raises(RunDiverged, match="epoch 2, step 3"):
        train_run(RUN, run, progress=False, resume=True)
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before


def test_steps_the_gradient_scaler_skips_are_not_divergence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A scaler whose scale (inf) makes every *scaled* loss inf, as float16 AMP's scaler
    # does at times: it skips every step. The unscaled loss is finite, so the run is not divergent.
    original = torch.amp.GradScaler

    def overflowing_scaler(device: str = "cuda", **kwargs: Any) -> torch.amp.GradScaler:
        return original("cpu", init_scale=float("inf"))

    monkeypatch.setattr(torch.amp, "GradScaler", overflowing_scaler)
    result = train_run({**RUN, "pool": "max", "epochs": 1}, tmp_path / "run", progress=False)
    assert result["status"] == "finished"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["scaler"]["scale"] == float("inf")
    assert ckpt["optimizer"]["state"] == {}  # every step was skipped: SGD never made a momentum buffer


def test_poolkit_train_exits_non_zero_and_says_where_it_diverged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "huge-lr"
    argv = ["train", "--dataset", "synthetic", "--model", "vgg11", "--width", "0.125", "--epochs", "2",
            "--batch-size", "64", "--lr", str(HUGE_LR), "--threads", "1", "--no-progress",
            "--out", str(run)]  # fmt: skip
    code, err = _cli(argv, capsys)
    assert code == 3
    assert "Traceback" not in err
    assert json.loads((run / "result.json").read_text())["status"] == "diverged"
    assert "the run diverged: the training loss was" in err and "at epoch 1, step" in err
    assert "lower lr" in err


def test_a_sweep_records_a_diverged_run_and_goes_on(tmp_path: Path) -> None:
    sweep = SweepConfig.from_dict(
        {
            "name": "diverge",
            "grid": {"dataset": ["synthetic"], "model": ["vgg11"], "pool": ["max"], "lr": [0.05, HUGE_LR]},
            "train": {"epochs": 1, "width": 0.125, "batch_size": 64, "threads": 1},
        }
    )
    first = run_sweep(sweep, tmp_path, workers=1, stream=io.StringIO(), progress=False)
    assert (first.count("finished"), first.count("diverged"), first.count("failed")) == (1, 1, 0)
    assert first.exit_code == 1
    summary = first.summary()
    assert "1 diverged" in summary and "DIVERGED" in summary and "at epoch 1, step" in summary
    diverged = next(s for s in first.specs if s.config["lr"] == HUGE_LR)
    assert not (first.runs_dir / diverged.name / "error.json").exists()  # not a failure (a bug)

    states = {s.spec.name: s for s in sweep_status(first.specs, tmp_path)}
    assert states[diverged.name].state == "diverged" and "epoch 1" in states[diverged.name].detail
    assert "1 diverged" in format_status(list(states.values()), tmp_path)

    record = read_run(first.runs_dir / diverged.name)
    assert record.status == "diverged" and record.divergence.startswith("epoch 1, step")
    # The report's table of problem runs lists it.
    rows = problem_runs_table(collect([read_run(first.runs_dir / s.name) for s in first.specs]))[1]
    assert [row[1] for row in rows] == ["diverged"] and "diverged at epoch 1" in rows[0][-1]

    again = run_sweep(sweep, tmp_path, workers=1, stream=io.StringIO(), progress=False)
    assert not again.outcomes and again.count("diverged") == 1  # skipped, still counted


# ---------------------------------------------------------------------- damaged checkpoints
@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = tmp_path_factory.mktemp("ref") / "run"
    train_run(RUN, run, progress=False)
    assert not previous_path(run / "checkpoint.pt").exists()  # a finished run keeps one checkpoint
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _stopped_after_epoch_2(run: Path) -> None:
    def stop(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        train_run(RUN, run, progress=False, on_epoch=stop)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert load_checkpoint(previous_path(run / "checkpoint.pt"))["epoch"] == 1


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_resume_from_a_damaged_checkpoint_recovers_from_the_previous_one(
    tmp_path: Path, reference: dict[str, Any], damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    _stopped_after_epoch_2(run)
    path = run / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with caplog.at_level(logging.WARNING, logger="poolkit.train"):
        train_run(RUN, run, progress=False, resume=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert (
        "checkpoint.pt' cannot be used" in warnings[0] and "checkpoint.prev.pt (after epoch 1)" in warnings[0]
    )
    final = load_checkpoint(path)
    assert final["epoch"] == 3
    # Two parameter groups (pooling parameters without weight decay) resume bit-identically too.
    assert [g["weight_decay"] for g in final["optimizer"]["param_groups"]] == [5e-4, 0.0]
    for name, tensor in reference.items():  # the same run as one never interrupted
        assert torch.equal(final["model"][name], tensor), name


def test_resume_without_a_readable_checkpoint_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    _stopped_after_epoch_2(run)
    for path in (run / "checkpoint.pt", previous_path(run / "checkpoint.pt")):
        path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(
        CheckpointError, match=r"no readable checkpoint in .*checkpoint\.pt.*checkpoint\.prev\.pt"
    ):
        train_run(RUN, run, progress=False, resume=True)
    argv = ["train", "--dataset", "synthetic", "--model", "vgg11", "--width", "0.125", "--epochs", "3",
            "--batch-size", "64", "--lr", "0.05", "--seed", "3", "--pool", "stochastic_mix", "--resume",
            "--no-progress", "--out", str(run)]  # fmt: skip
    code, err = _cli(argv, capsys)
    assert code == 2 and "Traceback" not in err
    assert "no readable checkpoint" in err and "delete the run directory" in err


# ---------------------------------------------------------------------- user errors, every command
def _bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(argv, a regex the one-line message must match) for errors a user can make."""
    (tmp / "bad.yaml").write_text("a: [1\n")
    (tmp / "keys.yaml").write_text("dataset: synthetic\nlrr: 0.1\n")
    (tmp / "types.yaml").write_text("dataset: synthetic\nepochs: many\n")
    (tmp / "list.yaml").write_text("- 1\n- 2\n")
    (tmp / "sweep.yaml").write_text("name: x\ngrid: {dataset: [synthetic], poool: [max]}\n")
    (tmp / "empty").mkdir()
    (tmp / "afile").write_text("x")
    (tmp / "broken").mkdir()
    (tmp / "broken" / "config.yaml").write_text("dataset: synthetic\nmodel: vgg11\n")
    (tmp / "broken" / "checkpoint.pt").write_text("not a checkpoint")
    out = ["--out", str(tmp / "run")]
    return [
        (
            ["train", "--dataset", "cifar100", "--data-dir", str(tmp / "missing"), *out],
            r"cifar-100-python.* --download",
        ),
        (
            ["train", "--dataset", "cifar10", "--data-dir", str(tmp / "empty"), *out],
            r"data_batch_1 not found",
        ),
        (
            ["train", "--dataset", "tinyimagenet", "--data-dir", str(tmp / "empty"), *out],
            r"wnids\.txt not found",
        ),
        (
            ["train", "--dataset", "imagefolder", "--data-dir", str(tmp / "missing"), *out],
            r"train not found.*--data-dir",
        ),
        (["train", "--dataset", "imagefolder", "--data-dir", str(tmp / "afile"), *out], r"not found"),
        (["train", "--dataset", "imagefolder", *out], r"data_dir must be set"),
        (["train", "--dataset", "nope", *out], r"unknown dataset 'nope'; valid datasets are"),
        (["train", "--dataset", "synthetic", "--model", "vgg17", *out], r"unknown model 'vgg17'"),
        (["train", "--dataset", "synthetic", "--pool", "maxx", *out], r"unknown pool 'maxx'"),
        (
            ["train", "--dataset", "synthetic", "--pool-opt", "kk=2", "--pool", "tmaxavg", *out],
            r"unknown pool_options",
        ),
        (["train", "--dataset", "synthetic", "--lr", "x", *out], r"invalid float value: 'x'"),
        (
            ["train", "--dataset", "synthetic", "--pool-weight-decay", "-1", *out],
            r"pool_weight_decay must be >= 0",
        ),
        (["train", "--dataset", "synthetic", "--nope", *out], r"unrecognized arguments: --nope"),
        (["train", "--config", str(tmp / "missing.yaml"), *out], r"cannot read config file"),
        (["train", "--config", str(tmp / "bad.yaml"), *out], r"is not valid YAML"),
        (["train", "--config", str(tmp / "keys.yaml"), *out], r"unknown run-config key\(s\) 'lrr'"),
        (["train", "--config", str(tmp / "types.yaml"), *out], r"epochs must be an integer"),
        (["train", "--config", str(tmp / "list.yaml"), *out], r"must hold a mapping"),
        (["train", "--dataset", "synthetic", "--out", str(tmp / "afile")], r"is not a directory"),
        (["sweep", str(tmp / "missing.yaml"), *out], r"does not exist"),
        (["sweep", str(tmp / "bad.yaml"), *out], r"YAML"),
        (["sweep", str(tmp / "sweep.yaml"), *out], r"grid\.poool: unknown key"),
        (["sweep", "--preset", "nope", *out], r"unknown preset 'nope'"),
        (["sweep", "--preset", "quick", "--set", "train.lrr=1", *out], r"train\.lrr: unknown key"),
        (["reproduce", "--preset", "nope", *out], r"unknown preset 'nope'"),
        (["report", str(tmp / "missing")], r"is not a directory"),
        (["shift", str(tmp / "missing")], r"does not exist"),
        (["shift", str(tmp / "empty")], r"has no checkpoint\.pt"),
        (["shift", str(tmp / "broken")], r"is not a readable poolkit checkpoint"),
        (["bench", "--pools", "nope"], r"unknown pool\(s\) \['nope'\]"),
        (["list", "nope"], r"invalid choice: 'nope'"),
    ]


def test_every_user_error_is_one_message_and_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import re

    for argv, pattern in _bad_inputs(tmp_path):
        code, err = _cli(argv, capsys)
        assert code == 2, (argv, code, err)
        assert "Traceback" not in err, (argv, err)
        assert re.search(pattern, err, re.DOTALL), (argv, pattern, err)
        shutil.rmtree(tmp_path / "run", ignore_errors=True)


def test_an_internal_error_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import poolkit.train.engine as engine

    def broken(*args: Any, **kwargs: Any) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr(engine, "train_run", broken)
    with pytest.raises(KeyError, match="a bug"):
        poolkit_main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "run")])


def test_a_value_error_from_inside_torch_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A ValueError that another package raises (poolkit passed something wrong on) is a bug, not a user
    error: it keeps its traceback instead of becoming a one-line message with exit status 2."""
    import numpy as np

    import poolkit.train.engine as engine

    def broken(*args: Any, **kwargs: Any) -> None:
        np.zeros(2).reshape(3)  # NumPy's own check raises ValueError

    monkeypatch.setattr(engine, "train_run", broken)
    with pytest.raises(ValueError, match="cannot reshape"):
        poolkit_main(["train", "--dataset", "synthetic", "--out", str(tmp_path / "run")])


def test_is_user_error_tells_poolkits_checks_from_other_packages() -> None:
    from poolkit.errors import UserError, is_user_error
    from poolkit.train.config import RunConfig

    with pytest.raises(ValueError) as ours:
        RunConfig.from_dict({"dataset": "synthetic", "lr": -1})
    assert is_user_error(ours.value)
    with pytest.raises(ValueError) as numpy_error:
        import numpy as np

        np.zeros(2).reshape(3)
    assert not is_user_error(numpy_error.value)
    assert is_user_error(UserError("any"))
    assert not is_user_error(KeyError("a bug"))
