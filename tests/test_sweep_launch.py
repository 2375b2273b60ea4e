"""The local launcher with a stand-in for train_run: skip, resume, failure isolation, crashes, signals.

The stand-ins live at module level so the spawned worker processes can import them by name.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from poolkit.experiments import SweepConfig, SweepConfigError, expand_sweep, run_sweep
from poolkit.experiments.launchers import EtaEstimator, SweepProgress, format_duration
from poolkit.experiments.runner import LauncherError, RunOutcome
from poolkit.experiments.sweep import sweep_lock
from poolkit.train.config import RunConfig

HERE = Path(__file__).resolve().parent


def fake_train(config, out_dir, *, resume=False, progress=True, position=None, on_epoch=None):
    """Writes what train_run writes, one 'epoch' per checkpoint.pt increment; ``avg`` always fails,
    ``gated`` kills its own process (a crash), ``FAKE_EPOCH_SECONDS`` slows every epoch down."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config["pool"] == "avg":
        raise ValueError("avg is broken on purpose")
    if config["pool"] == "gated":
        os.kill(os.getpid(), signal.SIGKILL)
    start = int((out / "checkpoint.pt").read_text()) if (out / "checkpoint.pt").exists() else 0
    if start and not resume:
        raise ValueError("unfinished run without resume=True")
    (out / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    for epoch in range(start + 1, config["epochs"] + 1):
        time.sleep(float(os.environ.get("FAKE_EPOCH_SECONDS", "0")))
        # atomically, as train_run does: a SIGTERM between truncate and write must not lose the epoch
        (out / "checkpoint.tmp").write_text(str(epoch))
        os.replace(out / "checkpoint.tmp", out / "checkpoint.pt")
        if on_epoch is not None:
            on_epoch(epoch, {"epoch": epoch, "train_loss": 1.0 / epoch, "test_top1": 10.0 * epoch})
    import torch

    result = {
        "status": "finished",
        "run_id": RunConfig.from_dict(config).run_id(),
        "test_top1": 10.0 * config["epochs"] + config["seed"],
        "seconds": 0.5,
        "resumed_from": start,
        "threads": torch.get_num_threads(),
    }
    (out / "result.json").write_text(json.dumps(result), encoding="utf-8")
    return result


def sweep_of(pools, seeds=(0,), epochs=3, **train):
    return SweepConfig.from_dict(
        {
            "name": "launch",
            "grid": {"dataset": ["synthetic"], "model": ["vgg11"], "pool": list(pools), "seed": list(seeds)},
            "train": {"epochs": epochs, "width": 0.125, **train},
        }
    )


def by_pool(result):
    return {s.config["pool"]: s for s in result.specs}


def test_skip_resume_and_failure_isolation(tmp_path):
    sweep = sweep_of(["max", "avg", "gated", "tmaxavg"])
    specs = {s.config["pool"]: s for s in expand_sweep(sweep)}
    unfinished = tmp_path / "runs" / specs["tmaxavg"].name
    unfinished.mkdir(parents=True)
    (unfinished / "checkpoint.pt").write_text("2")

    log = io.StringIO()
    first = run_sweep(sweep, tmp_path, workers=2, train_fn=fake_train, stream=log)
    runs = tmp_path / "runs"
    assert {n: o.status for n, o in first.outcomes.items()} == {
        specs["max"].name: "finished",
        specs["avg"].name: "failed",
        specs["gated"].name: "failed",
        specs["tmaxavg"].name: "finished",
    }
    assert first.exit_code == 1
    resumed = json.loads((unfinished / "result.json").read_text())
    assert resumed["resumed_from"] == 2
    # two workers on this machine: each gets max(1, cores // 2) torch threads
    assert resumed["threads"] == max(1, len(os.sched_getaffinity(0)) // 2)
    error = json.loads((runs / specs["avg"].name / "error.json").read_text())
    assert set(error) == {"error", "type", "traceback", "time"}
    assert error["type"] == "ValueError" and error["error"] == "avg is broken on purpose"
    assert "fake_train" in error["traceback"]
    assert not (runs / specs["avg"].name / "result.json").exists()
    # a crashed worker process fails only its run; a new worker takes over the rest
    crash = json.loads((runs / specs["gated"].name / "error.json").read_text())
    assert crash["type"] == "WorkerDied" and "signal 9" in crash["error"]
    assert yaml.safe_load((runs / "sweep.yaml").read_text()) == sweep.to_dict()
    # a log file gets one line per finished run and no progress bars
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue()
    assert sum(" finished " in line for line in lines) == 2 and sum(" FAILED " in line for line in lines) == 2
    summary = first.summary()
    assert "2 finished, 0 skipped (finished before), 2 failed" in summary
    assert f"FAILED {specs['avg'].name}: ValueError: avg is broken on purpose" in summary
    assert "max " in summary and "30.00" in summary

    second = run_sweep(sweep, tmp_path, workers=2, train_fn=fake_train, stream=io.StringIO())
    assert second.outcomes == {}
    assert second.count("skipped") == 2 and second.count("failed_before") == 2
    assert second.exit_code == 1 and "--retry-failed" in second.summary()

    third = run_sweep(
        sweep, tmp_path, workers=1, retry_failed=True, train_fn=fake_train, stream=io.StringIO()
    )
    assert sorted(third.outcomes) == sorted([specs["avg"].name, specs["gated"].name])
    assert {o.status for o in third.outcomes.values()} == {"failed"}
    assert third.count("skipped") == 2


@pytest.mark.slow
def test_sigterm_stops_the_sweep_and_the_next_run_resumes(tmp_path):
    """SIGTERM (as Ctrl-C would) stops the workers; checkpoints stay and nothing is marked failed."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(HERE)!r})
        from test_sweep_launch import fake_train, sweep_of
        from poolkit.experiments import run_sweep
        result = run_sweep(sweep_of(["max", "tmaxavg"], epochs=50), {str(tmp_path)!r}, workers=2,
                           train_fn=fake_train, progress=False)
        print(result.summary())
        sys.exit(result.exit_code)
        """
    )
    env = {**os.environ, "FAKE_EPOCH_SECONDS": "0.2"}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runs = tmp_path / "runs"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        checkpoints = list(runs.glob("*/checkpoint.pt")) if runs.exists() else []
        if len(checkpoints) == 2:
            break
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(f"the sweep did not start: {proc.communicate()}")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "interrupted" in err and "rerun the same command to resume" in err
    assert "2 interrupted" in out
    assert not list(runs.glob("*/error.json")) and not list(runs.glob("*/result.json"))
    done = {p.parent.name: int(p.read_text()) for p in runs.glob("*/checkpoint.pt")}
    assert all(0 < epochs < 50 for epochs in done.values())

    again = run_sweep(
        sweep_of(["max", "tmaxavg"], epochs=50),
        tmp_path,
        workers=2,
        train_fn=fake_train,
        stream=io.StringIO(),
    )
    assert again.exit_code == 0
    for name, epochs in done.items():
        assert json.loads((runs / name / "result.json").read_text())["resumed_from"] >= epochs


def test_a_second_sweep_on_the_same_directory_is_refused(tmp_path):
    with sweep_lock(tmp_path / "runs"), pytest.raises(LauncherError, match="another poolkit sweep"):
        run_sweep(sweep_of(["max"]), tmp_path, train_fn=fake_train, stream=io.StringIO())


def test_a_missing_data_dir_stops_the_sweep_before_anything_runs(tmp_path):
    sweep = sweep_of(["max"], data_dir=str(tmp_path / "nope"))
    expected = r"(?s)data directories not found.*nope  \(dataset synthetic\)"
    with pytest.raises(SweepConfigError, match=expected):
        run_sweep(sweep, tmp_path / "out", train_fn=fake_train, stream=io.StringIO())
    assert not (tmp_path / "out").exists()


def test_dry_run_writes_nothing(tmp_path):
    result = run_sweep(sweep_of(["max", "avg"], seeds=[0, 1]), tmp_path, dry_run=True, train_fn=fake_train)
    assert [p.status for p in result.planned] == ["new"] * 4
    assert not (tmp_path / "runs").exists()


def test_eta_from_finished_runs():
    eta = EtaEstimator(queued=4, workers=2)
    assert eta.remaining(now=0.0) is None
    eta.start("a", 0, 10, now=0.0)
    eta.start("b", 0, 10, now=0.0)
    eta.epoch("a", 5)  # half-way after 50 s: projected 100 s
    assert eta.remaining(now=50.0) == pytest.approx((2 * 100 + 50 + 50) / 2)
    eta.end("a", finished=True, now=100.0)  # a finished run's duration is the estimate from now on
    eta.start("c", 0, 10, now=100.0)
    assert eta.remaining(now=100.0) == pytest.approx((1 * 100 + (100 - 100) + 100) / 2)
    assert (
        format_duration(59) == "59s"
        and format_duration(3600 * 26) == "1d02h"
        and format_duration(None) == "?"
    )


def test_progress_bars_on_a_terminal_and_lines_in_a_log():
    spec = expand_sweep(sweep_of(["max"]))[0]
    terminal = io.StringIO()
    bars = SweepProgress(1, 1, terminal, bars=True)
    bars.started(0, spec, 0)
    bars.epoch(0, spec, 1, {"train_loss": 0.5, "test_top1": 42.0})
    bars.ended(0, spec, RunOutcome(spec.name, "finished", seconds=3.0, test_top1=42.0))
    bars.close()
    assert (
        "\r" in terminal.getvalue() and "sweep" in terminal.getvalue() and "finished" in terminal.getvalue()
    )
    log = io.StringIO()
    lines = SweepProgress(1, 1, log, bars=False)
    lines.started(0, spec, 0)
    lines.epoch(0, spec, 1, {"train_loss": 0.5, "test_top1": 42.0})
    lines.ended(0, spec, RunOutcome(spec.name, "finished", seconds=3.0, test_top1=42.0))
    assert log.getvalue() == f"[1/1] finished {spec.name}  top-1 42.00%  (3s training)  | 0 failed, ETA 0s\n"
