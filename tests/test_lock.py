"""The run lock (poolkit.train.lock): a run is never trained twice at once, and a lock left by a dead
holder does not block it for ever (same host: at once; another host: after the expiry)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from poolkit.experiments import expand_sweep
from poolkit.experiments.runner import execute_run
from poolkit.train import train_run
from poolkit.train.checkpoint import load_checkpoint
from poolkit.train.cli import EXIT_BUSY, build_parser, main
from poolkit.train.lock import LOCK_FILE, RunBusyError, RunLock, RunLockLost, lock_settings, read_lock
from test_sweep_launch import sweep_of

TINY: dict[str, Any] = {
    "dataset": "synthetic",
    "model": "vgg11",
    "width": 0.0625,
    "epochs": 2,
    "batch_size": 64,
    "threads": 1,
    "device": "cpu",
}


def foreign_lock(
    run_dir: Path, *, age: float, expiry: float = 300.0, host: str = "node-that-crashed"
) -> None:
    """A lock written by a process on another host whose last heartbeat was ``age`` seconds ago."""
    run_dir.mkdir(parents=True, exist_ok=True)
    now = time.time()
    record = {
        "host": host, "pid": 4242, "job_id": "777_3", "started": now - age - 60, "heartbeat": now - age,
        "heartbeat_s": 30.0, "expiry_s": expiry, "token": "0123456789abcdef",
    }  # fmt: skip
    (run_dir / LOCK_FILE).write_text(json.dumps(record))


def test_a_fresh_lock_refuses_a_second_holder_until_released(tmp_path: Path) -> None:
    first = RunLock(tmp_path / "run").acquire()
    holder = read_lock(tmp_path / "run")
    assert holder is not None and holder.pid == os.getpid() and holder.host == socket.gethostname()
    assert holder.state() == "fresh"
    with pytest.raises(RunBusyError, match=rf"is being trained by pid {os.getpid()} on ") as caught:
        RunLock(tmp_path / "run").acquire()
    assert caught.value.holder.token == holder.token
    first.release()
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with RunLock(tmp_path / "run").acquire():
        assert (tmp_path / "run" / LOCK_FILE).exists()
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_lock_from_another_host_blocks_until_it_expires_then_is_taken_over(tmp_path: Path) -> None:
    run = tmp_path / "run"
    foreign_lock(run, age=5.0)
    with pytest.raises(RunBusyError, match=r"job 777_3 .*expires 295 s from now"):
        RunLock(run).acquire()
    foreign_lock(run, age=0.0, expiry=0.6)  # a node that crashed just now, with a short expiry
    start = time.monotonic()
    lock = RunLock(run).acquire(wait_s=10, poll_s=0.05)
    assert 0.5 < time.monotonic() - start < 5
    holder = read_lock(run)
    assert holder is not None and holder.pid == os.getpid() and holder.job_id != "777_3"
    lock.release()
    foreign_lock(run, age=1000.0)  # long expired: taken over at once
    with RunLock(run).acquire():
        assert read_lock(run).pid == os.getpid()  # type: ignore[union-attr]


def test_a_sigkilled_holder_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    script = textwrap.dedent(
        f"""
        import time
        from poolkit.train.lock import RunLock
        RunLock({str(run)!r}).acquire()
        print("locked", flush=True)
        time.sleep(600)
        """
    )
    holder = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunBusyError):
            RunLock(run).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    left = read_lock(run)
    assert left is not None and left.pid == holder.pid and left.state() == "dead"
    with RunLock(run).acquire():  # no waiting for the expiry: its process is gone
        assert read_lock(run).pid == os.getpid()  # type: ignore[union-attr]


def test_heartbeats_refresh_the_lock_and_a_takeover_is_noticed(tmp_path: Path) -> None:
    run = tmp_path / "run"
    lock = RunLock(run, heartbeat_s=0.05, expiry_s=0.5).acquire()
    first = read_lock(run)
    time.sleep(0.3)
    later = read_lock(run)
    assert first is not None and later is not None
    assert later.heartbeat > first.heartbeat and later.token == first.token and not lock.lost
    # Someone judged it stale and took it. A heartbeat that read its own token just before may still
    # overwrite one write of the takeover (RunLock._refresh reads, then writes), so the taker writes until
    # the holder notices, as a real taker's own heartbeats would keep doing.
    deadline = time.monotonic() + 5
    while not lock.lost and time.monotonic() < deadline:
        foreign_lock(run, age=0.0, host="another-node")
        time.sleep(0.02)
    assert lock.lost
    lock.release()
    assert read_lock(run).host == "another-node"  # type: ignore[union-attr]  # not removed


def test_lock_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert lock_settings() == (30.0, 300.0)
    monkeypatch.setenv("POOLKIT_LOCK_HEARTBEAT_S", "2")
    monkeypatch.setenv("POOLKIT_LOCK_EXPIRY_S", "10")
    assert lock_settings() == (2.0, 10.0)
    monkeypatch.setenv("POOLKIT_LOCK_EXPIRY_S", "3")
    with pytest.raises(ValueError, match="at least twice its heartbeat"):
        lock_settings()
    monkeypatch.setenv("POOLKIT_LOCK_EXPIRY_S", "soon")
    with pytest.raises(ValueError, match="POOLKIT_LOCK_EXPIRY_S='soon' is not a number"):
        lock_settings()


# ---------------------------------------------------------------------- training uses it
def test_train_run_poolkit_train_and_the_sweep_refuse_a_locked_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunBusyError, match="is being trained by"):
            train_run(TINY, run, progress=False)
        args = build_parser().parse_args(
            ["--dataset", "synthetic", "--width", "0.0625", "--epochs", "1", "--out", str(run)]
        )
        assert main(args) == EXIT_BUSY
        assert "is being trained by pid" in capsys.readouterr().err
        spec = expand_sweep(sweep_of(["max"]))[0]
        outcome = execute_run(spec, run, progress=False)
        assert outcome.status == "busy" and outcome.error_type == "RunBusyError"
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]  # nothing written, no error.json
    assert not run.exists() or not any(run.iterdir())


def test_a_run_taken_over_while_training_stops_without_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POOLKIT_LOCK_HEARTBEAT_S", "0.05")
    monkeypatch.setenv("POOLKIT_LOCK_EXPIRY_S", "0.5")
    run = tmp_path / "run"

    def taken_over(epoch: int, row: dict) -> None:
        if epoch == 1:
            # Written again and again for 0.3 s: a heartbeat that read its own token just before one write
            # may overwrite it, but the holder's next heartbeat finds the other token and stops beating.
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                foreign_lock(run, age=0.0, host="another-node")
                time.sleep(0.01)

    with pytest.raises(RunLockLost, match="another process took this run over"):
        train_run(TINY, run, progress=False, on_epoch=taken_over)
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1 and not (run / "result.json").exists()
    assert read_lock(run).host == "another-node"  # type: ignore[union-attr]


def test_train_run_releases_the_lock_when_it_ends(tmp_path: Path) -> None:
    result = train_run({**TINY, "epochs": 1}, tmp_path / "run", progress=False)
    assert result["status"] == "finished" and not (tmp_path / "run" / LOCK_FILE).exists()
