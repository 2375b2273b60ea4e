"""The run lock: one run directory is never trained by two processes at once.

Whoever trains a run (``poolkit train``, a local sweep worker, a SLURM array task) first takes
``RUN_DIR/lock.json``, which names the holder (host, pid, job id) and carries a **heartbeat**: a
background thread of the holder rewrites it every ``heartbeat_s`` seconds. Another process that finds
the lock refuses to train the run while the lock is fresh (:class:`RunBusyError`, or it waits with
``wait_s``). A lock is **stale**, and taken over, when

* its heartbeat is older than ``expiry_s`` (the holder's node crashed, lost the shared filesystem or
  was suspended), or
* its holder ran on this host and that process no longer exists (killed with SIGKILL, out of memory),
  which is known at once, without waiting for the expiry.

Taking a lock is atomic on POSIX filesystems (NFS included): the lock file is written under a
temporary name and hard-linked into place, which fails if a lock already exists; a stale lock is first
renamed away (only one of several contenders can rename it). A holder whose lock was taken over (it
was silent for longer than the expiry) notices on its next heartbeat and sets :attr:`RunLock.lost`;
``train_run`` then stops before writing another checkpoint, so two processes never write one run.

Defaults (``heartbeat_s`` 30 s, ``expiry_s`` 300 s) can be changed with the environment variables
``POOLKIT_LOCK_HEARTBEAT_S`` and ``POOLKIT_LOCK_EXPIRY_S``; the expiry must be at least twice the
heartbeat, so one late heartbeat never loses a lock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from poolkit.atomic import atomic_write_json
from poolkit.rundir import LOCK_FILE, RunDir, RunState, read_json

__all__ = [
    "DEFAULT_EXPIRY_S",
    "DEFAULT_HEARTBEAT_S",
    "LOCK_FILE",
    "LockHolder",
    "RunBusyError",
    "RunLock",
    "RunLockError",
    "RunLockLost",
    "lock_settings",
    "lock_wait_setting",
    "read_lock",
]

logger = logging.getLogger("poolkit.train")

#: Seconds between two heartbeats of a holder.
DEFAULT_HEARTBEAT_S = 30.0
#: Seconds without a heartbeat after which a lock is stale and may be taken over.
DEFAULT_EXPIRY_S = 300.0

LockState = Literal["fresh", "stale", "dead"]


class RunLockError(RuntimeError):
    """Base class of the run-lock errors."""


class RunBusyError(RunLockError):
    """Another live process holds the run's lock. ``holder`` describes it."""

    def __init__(self, run_dir: Path, holder: LockHolder) -> None:
        self.run_dir = run_dir
        self.holder = holder
        expires = holder.expiry_s - holder.age()
        super().__init__(
            f"{str(run_dir)!r} is being trained by {holder.describe()}; a run is never trained twice at "
            f"once. Wait for it to end (or stop that process). If that process is gone, its lock expires "
            f"{max(0.0, expires):.0f} s from now and the run can then be resumed"
        )


class RunLockLost(RunLockError):
    """This process's lock was taken over by another process (its heartbeat had stopped for longer
    than the expiry), so it must stop writing the run directory."""


def lock_settings() -> tuple[float, float]:
    """``(heartbeat_s, expiry_s)`` from ``POOLKIT_LOCK_HEARTBEAT_S`` / ``POOLKIT_LOCK_EXPIRY_S`` or the
    defaults.

    Raises:
        ValueError: a value is not a positive number, or the expiry is shorter than two heartbeats.
    """
    values = []
    for name, default in (
        ("POOLKIT_LOCK_HEARTBEAT_S", DEFAULT_HEARTBEAT_S),
        ("POOLKIT_LOCK_EXPIRY_S", DEFAULT_EXPIRY_S),
    ):
        text = os.environ.get(name)
        try:
            value = default if text in (None, "") else float(text)  # type: ignore[arg-type]
        except ValueError:
            raise ValueError(f"{name}={text!r} is not a number of seconds") from None
        if not value > 0:
            raise ValueError(f"{name}={text!r} must be a positive number of seconds")
        values.append(value)
    heartbeat, expiry = values
    _check_timing(heartbeat, expiry)
    return heartbeat, expiry


def lock_wait_setting() -> float | None:
    """Seconds to wait for a busy run's lock from ``POOLKIT_LOCK_WAIT_S``, or None when it is not set.

    The user-facing default of ``train_run(lock_wait=)``; callers pass ``lock_wait`` explicitly.

    Raises:
        ValueError: the value is not a number.
    """
    text = os.environ.get("POOLKIT_LOCK_WAIT_S", "")
    try:
        return float(text) if text else None
    except ValueError:
        raise ValueError(f"POOLKIT_LOCK_WAIT_S={text!r} is not a number of seconds") from None


def _check_timing(heartbeat_s: float, expiry_s: float) -> None:
    if not (heartbeat_s > 0 and expiry_s >= 2 * heartbeat_s):
        raise ValueError(
            f"the run lock's expiry ({expiry_s} s) must be at least twice its heartbeat ({heartbeat_s} s), "
            "so one late heartbeat does not lose the lock"
        )


# ---------------------------------------------------------------------------------------------- holders
def _boot_id() -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return None


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state first), or None without /proc."""
    with contextlib.suppress(OSError, IndexError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return None


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot, from /proc), to tell a reused pid."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _process_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True
    fields = _proc_stat(pid)
    if fields is not None:
        if fields[0] in ("Z", "X"):
            return False  # killed, not yet reaped by its parent
        if start is not None and len(fields) > 19 and fields[19] != start:
            return False  # the pid was reused by another process
    return True


def _job_id() -> str | None:
    """The scheduler's id of the job this process runs in (SLURM, submitit's local executor)."""
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    for name in ("SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID"):
        if os.environ.get(name):
            return os.environ[name]
    return None


@dataclass(frozen=True)
class LockHolder:
    """What ``lock.json`` says about the process holding a run.

    Attributes:
        host, pid: where the holder runs. ``job_id``: its SLURM (or submitit) job id, if any.
        started, heartbeat: Unix times of taking the lock and of the last heartbeat.
        heartbeat_s, expiry_s: the holder's heartbeat interval and the age at which its lock is stale.
        token: identifies this holding (a new one each time the lock is taken).
    """

    host: str
    pid: int
    job_id: str | None
    started: float
    heartbeat: float
    heartbeat_s: float
    expiry_s: float
    token: str
    boot_id: str | None = None
    pid_start: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LockHolder:
        return cls(
            host=str(data["host"]),
            pid=int(data["pid"]),
            job_id=None if data.get("job_id") is None else str(data["job_id"]),
            started=float(data["started"]),
            heartbeat=float(data["heartbeat"]),
            heartbeat_s=float(data.get("heartbeat_s", DEFAULT_HEARTBEAT_S)),
            expiry_s=float(data.get("expiry_s", DEFAULT_EXPIRY_S)),
            token=str(data["token"]),
            boot_id=data.get("boot_id"),
            pid_start=data.get("pid_start"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "pid": self.pid,
            "job_id": self.job_id,
            "started": self.started,
            "heartbeat": self.heartbeat,
            "heartbeat_s": self.heartbeat_s,
            "expiry_s": self.expiry_s,
            "token": self.token,
            "boot_id": self.boot_id,
            "pid_start": self.pid_start,
        }

    def age(self, now: float | None = None) -> float:
        """Seconds since the last heartbeat."""
        return (time.time() if now is None else now) - self.heartbeat

    def state(self, now: float | None = None) -> LockState:
        """``"fresh"`` (a live holder), ``"stale"`` (no heartbeat for ``expiry_s``) or ``"dead"`` (the
        holder ran on this host and its process is gone, or the host rebooted since)."""
        if self.host == socket.gethostname():
            boot = _boot_id()
            if self.boot_id is not None and boot is not None and boot != self.boot_id:
                return "dead"
            if not _process_alive(self.pid, self.pid_start):
                return "dead"
        return "stale" if self.age(now) > self.expiry_s else "fresh"

    def describe(self, now: float | None = None) -> str:
        job = f", job {self.job_id}" if self.job_id else ""
        return f"pid {self.pid} on {self.host}{job} (last heartbeat {self.age(now):.0f} s ago)"


def live_state(run: RunDir, run_id: str | None = None) -> tuple[RunState, LockHolder | None]:
    """``run``'s :meth:`~poolkit.rundir.RunDir.state` refined by its lock, and the lock's holder.

    ``RUNNING`` while a live process holds the lock (its heartbeat is fresh); ``STALLED`` when an
    unfinished run's lock was left by a process that is gone or silent past the expiry (rerunning
    resumes it); otherwise the state the files say. ``run_id`` is passed on to ``state``.

    Example:
        >>> import tempfile
        >>> live_state(RunDir(tempfile.mkdtemp()))
        (<RunState.NOT_STARTED: 'not started'>, None)
    """
    state = run.state(run_id)
    holder = read_lock(run.path)
    if state is RunState.FINISHED or holder is None:
        return state, holder
    if holder.state() == "fresh":
        return RunState.RUNNING, holder
    if state in (RunState.FAILED, RunState.DIVERGED):
        return state, holder
    return RunState.STALLED, holder


def read_lock(run_dir: str | os.PathLike[str]) -> LockHolder | None:
    """The holder named by ``RUN_DIR/lock.json``, or None when there is no (readable) lock."""
    return _read_holder_file(RunDir(run_dir).lock_file)


# ---------------------------------------------------------------------------------------------- the lock
class RunLock:
    """The lock of one run directory, held by this process while it trains the run.

    Args:
        run_dir: the run directory (created if needed).
        heartbeat_s, expiry_s: default: :func:`lock_settings`.

    Use :meth:`acquire` and :meth:`release`, or the object as a context manager. The lock is not
    re-entrant: a second :class:`RunLock` on the same directory, even in the same process, finds it
    busy.

    Example:
        >>> lock = RunLock("runs/demo")  # doctest: +SKIP
        >>> with lock.acquire(wait_s=60):  # doctest: +SKIP
        ...     ...  # train; lock.lost turns True if another process took the run over
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        heartbeat_s: float | None = None,
        expiry_s: float | None = None,
    ) -> None:
        default_heartbeat, default_expiry = lock_settings()
        self.run_dir = Path(run_dir)
        self.path = RunDir(self.run_dir).lock_file
        self.heartbeat_s = float(heartbeat_s if heartbeat_s is not None else default_heartbeat)
        self.expiry_s = float(expiry_s if expiry_s is not None else default_expiry)
        _check_timing(self.heartbeat_s, self.expiry_s)
        self.holder: LockHolder | None = None
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self.holder is not None

    @property
    def lost(self) -> bool:
        """Whether another process took the lock over while this one held it."""
        return self._lost.is_set()

    def acquire(self, wait_s: float = 0.0, poll_s: float = 1.0) -> RunLock:
        """Take the lock, waiting up to ``wait_s`` seconds for a live holder to let go.

        Returns:
            ``self`` (so ``with lock.acquire(): ...`` works).

        Raises:
            RunBusyError: a live process still holds the lock after ``wait_s`` seconds.
            RuntimeError: this object holds the lock already.
        """
        if self.held:
            raise RuntimeError(f"{self.path} is already held by this RunLock")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + max(0.0, wait_s)
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise RunBusyError(self.run_dir, holder)
            time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))
        self._lost.clear()
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat, name=f"poolkit-lock-heartbeat:{self.run_dir.name}", daemon=True
        )
        self._thread.start()
        return self

    def release(self) -> None:
        """Give the lock back: stop the heartbeat and remove the file if this process still holds it."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        self._thread = None
        current = read_lock(self.run_dir)
        if current is not None and self.holder is not None and current.token == self.holder.token:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.holder = None

    def __enter__(self) -> RunLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _record(self, started: float | None = None) -> LockHolder:
        now = time.time()
        token = self.holder.token if self.holder is not None else secrets.token_hex(8)
        return LockHolder(
            host=socket.gethostname(),
            pid=os.getpid(),
            job_id=_job_id(),
            started=now if started is None else started,
            heartbeat=now,
            heartbeat_s=self.heartbeat_s,
            expiry_s=self.expiry_s,
            token=token,
            boot_id=_boot_id(),
            pid_start=_process_start(os.getpid()),
        )

    def _try_take(self) -> LockHolder | None:
        """Take the lock if it is free or stale; else return its (live) holder."""
        for _ in range(10):  # contenders may race; each round makes progress
            mine = self._record()
            if _create_exclusive(self.path, mine.to_dict()):
                self.holder = mine
                return None
            current = read_lock(self.run_dir)
            if current is None:
                if self._unreadable_is_stale():
                    self._remove_stale(None)
                    continue
                return _unknown_holder(self.path)
            state = current.state()
            if state == "fresh":
                return current
            why = "its process is gone" if state == "dead" else f"no heartbeat for {current.age():.0f} s"
            logger.warning("%s: taking over the run lock of %s (%s)", self.run_dir, current.describe(), why)
            self._remove_stale(current)
        current = read_lock(self.run_dir)
        return current if current is not None else _unknown_holder(self.path)

    def _unreadable_is_stale(self) -> bool:
        """A lock file that cannot be parsed (being written by a non-atomic filesystem, or corrupt) is
        stale once it is older than the expiry."""
        try:
            return time.time() - self.path.stat().st_mtime > self.expiry_s
        except FileNotFoundError:
            return True

    def _remove_stale(self, stale: LockHolder | None) -> None:
        grave = self.path.with_name(f".{LOCK_FILE}.stale.{secrets.token_hex(6)}")
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another contender removed it first
        moved = _read_holder_file(grave)
        if stale is not None and (moved is None or moved.token != stale.token):
            # A contender replaced the stale lock with a fresh one between our read and our rename:
            # put it back (unless yet another lock appeared meanwhile, in which case its owner notices).
            with contextlib.suppress(OSError):
                os.link(grave, self.path)
        with contextlib.suppress(OSError):
            grave.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            self._refresh()
            if self._lost.is_set():
                return

    def _refresh(self) -> None:
        """Write a new heartbeat, unless the lock was taken over (then set :attr:`lost`)."""
        if self.holder is None:
            return
        current = read_lock(self.run_dir)
        if current is None or current.token != self.holder.token:
            if current is None and not self.path.exists():
                # Removed (by hand, or by a contender that judged it stale): take it back if it is free.
                mine = self._record(self.holder.started)
                if _create_exclusive(self.path, mine.to_dict()):
                    self.holder = mine
                    return
            self._lost.set()
            taker = current.describe() if current is not None else "another process"
            logger.error(
                "%s: this process's run lock was taken over by %s (no heartbeat was written for over "
                "%.0f s); training stops before the next checkpoint",
                self.run_dir,
                taker,
                self.expiry_s,
            )
            return
        self.holder = self._record(self.holder.started)
        try:
            atomic_write_json(self.path, self.holder.to_dict())
        except OSError as exc:  # a filesystem hiccup: the next heartbeat tries again
            print(f"poolkit: warning: cannot refresh {self.path}: {exc}", file=sys.stderr)


def _read_holder_file(path: Path) -> LockHolder | None:
    data = read_json(path)
    try:
        return LockHolder.from_dict(data) if data is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def _unknown_holder(path: Path) -> LockHolder:
    """A stand-in for a lock file that exists but cannot be read yet."""
    try:
        mtime = path.stat().st_mtime
    except OSError:
        mtime = time.time()
    return LockHolder("unknown host", 0, None, mtime, mtime, DEFAULT_HEARTBEAT_S, DEFAULT_EXPIRY_S, "")


def _create_exclusive(path: Path, record: dict[str, Any]) -> bool:
    """Create ``path`` holding ``record`` as JSON if it does not exist, atomically; False if it exists.

    The record is written to a temporary file and hard-linked into place (atomic, complete when it
    appears, and safe on NFS); filesystems without hard links fall back to ``O_CREAT | O_EXCL``.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    data = (json.dumps(record, indent=2) + "\n").encode("utf-8")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            pass
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        tmp.unlink(missing_ok=True)
