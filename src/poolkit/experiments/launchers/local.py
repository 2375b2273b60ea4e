"""The local launcher: a sweep's pending runs, N at a time, in worker processes on this machine.

Each worker is a ``spawn`` process (a clean interpreter: no CUDA state or threads inherited from the
parent) that takes one run at a time and calls :func:`poolkit.experiments.runner.execute_run`, which
records a failure in ``error.json`` so the other runs go on. Workers set
``torch.set_num_threads(max(1, cores // N))`` unless the run config sets ``threads``; with several
visible GPUs and ``device: auto``/``cuda``, worker ``i`` gets GPU ``i mod n_gpus``.

Ctrl-C or SIGTERM stops the sweep: workers ignore SIGINT (the terminal sends it to the whole process
group) and the parent stops them with SIGTERM, which interrupts training between two operations. Every
run keeps the checkpoint of its last finished epoch (checkpoints are written atomically), so the next
invocation of the same command resumes it. A second Ctrl-C kills the workers at once.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from poolkit.experiments.grid import RunSpec
from poolkit.experiments.launchers import LaunchOutcome, SweepProgress
from poolkit.experiments.runner import (
    PlannedRun,
    RunOutcome,
    TrainFn,
    execute_run,
    handle_stop_signals,
    write_error,
)

__all__ = ["LocalLauncher", "default_threads"]

_POLL_SECONDS = 1.0


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Torch threads per worker: the cores this process may use, shared evenly, at least 1."""
    return max(1, _cores() // max(1, workers))


# ---------------------------------------------------------------------------------------------- worker side
class _Interrupted(KeyboardInterrupt):
    """Raised in a worker by SIGTERM (or a dead parent): stop training, keep the checkpoint."""


def _on_sigterm(signum: int, frame: Any) -> None:
    raise _Interrupted


def _check_parent(parent_pid: int) -> None:
    # A parent killed with SIGKILL cannot stop its workers; they notice and stop themselves.
    if os.getppid() != parent_pid:
        raise _Interrupted


def _worker_main(
    slot: int,
    conn: Any,
    train_fn: TrainFn | None,
    threads: int,
    gpu: str | None,
    parent_pid: int,
) -> None:
    """A worker: receive ``(spec, run_dir)`` on ``conn``, send ``("epoch", ...)`` and ``("end", outcome)``
    back, until ``None`` arrives. Each worker has its own pipe, so a worker that is killed mid-message
    (SIGKILL, out of memory) breaks only its own channel."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_sigterm)
    name = None
    try:
        if gpu is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = gpu
        import torch

        torch.set_num_threads(threads)
        while True:
            if not conn.poll(2.0):
                _check_parent(parent_pid)
                continue
            task = conn.recv()
            if task is None:
                return
            spec, run_dir = task
            name = spec.name

            def on_epoch(epoch: int, row: Mapping[str, float], _name: str = spec.name) -> None:
                conn.send(("epoch", _name, epoch, dict(row)))
                _check_parent(parent_pid)

            outcome = execute_run(spec, run_dir, train_fn, progress=False, on_epoch=on_epoch)
            conn.send(("end", outcome))
            name = None
    except KeyboardInterrupt:
        if name is not None:
            with contextlib.suppress(OSError):
                conn.send(("end", RunOutcome(name, "interrupted")))
    except (EOFError, BrokenPipeError):  # the parent is gone
        pass
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------- parent side
@dataclass
class _Worker:
    slot: int
    process: Any
    conn: Any
    current: PlannedRun | None = None
    alive: bool = True


class LocalLauncher:
    """Run planned runs in ``workers`` processes; see the module docstring.

    Args:
        workers: runs at a time (>= 1).
        train_fn: what trains one run (default :func:`poolkit.train.train_run`); it must be picklable
            (a module-level function) and accept ``resume``, ``progress`` and ``on_epoch``.
        stream: where progress goes (default ``sys.stderr``).
        progress: bars (True) or one line per finished run (False); default: bars on a terminal.
        threads: torch threads per worker (default :func:`default_threads`).
        grace_seconds: how long an interrupted worker may take to stop before it is killed.
    """

    def __init__(
        self,
        workers: int = 1,
        *,
        train_fn: TrainFn | None = None,
        stream: TextIO | None = None,
        progress: bool | None = None,
        threads: int | None = None,
        grace_seconds: float = 30.0,
    ) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        try:
            pickle.dumps(train_fn)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ValueError(
                f"train_fn must be picklable to reach the worker processes (a module-level function, not a "
                f"lambda or a local function): {exc}"
            ) from None
        self.workers = workers
        self.train_fn = train_fn
        self.stream = stream if stream is not None else sys.stderr
        self.progress = progress
        self.threads = threads
        self.grace_seconds = grace_seconds

    def run(self, todo: Sequence[PlannedRun], runs_dir: str | os.PathLike[str]) -> LaunchOutcome:
        """Run every planned run (in order, ``workers`` at a time) and return how each ended."""
        if not todo:
            return LaunchOutcome()
        return _Session(self, list(todo), Path(runs_dir)).run()


class _Session:
    """One :meth:`LocalLauncher.run`: the workers, the queue of runs and what happened to them."""

    def __init__(self, launcher: LocalLauncher, todo: list[PlannedRun], runs_dir: Path) -> None:
        self.launcher = launcher
        self.todo = todo
        self.runs_dir = runs_dir
        self.n = min(launcher.workers, len(todo))
        self.threads = launcher.threads or default_threads(self.n)
        self.gpus = _gpu_assignment([p.spec for p in todo])
        self.ctx = mp.get_context("spawn")
        self.pending = deque(todo)
        self.by_name = {p.spec.name: p for p in todo}
        self.workers: list[_Worker] = []
        self.outcome = LaunchOutcome()
        self.signals = 0
        self.progress = SweepProgress(len(todo), self.n, launcher.stream, bars=launcher.progress)

    def run(self) -> LaunchOutcome:
        threads = f"{self.threads} torch thread{'s' if self.threads > 1 else ''} each"
        gpus = f", GPUs {', '.join(sorted(set(self.gpus)))}" if self.gpus else ""
        self.progress.note(
            f"running {len(self.todo)} runs, {self.n} at a time ({threads}{gpus}) into {self.runs_dir}"
        )
        try:
            with handle_stop_signals(self._on_signal):
                for slot in range(self.n):
                    self.workers.append(self._spawn(slot))
                    self._assign(self.workers[-1])
                while any(w.current is not None for w in self.workers) and not self.signals:
                    self._poll(_POLL_SECONDS)
                if self.signals:
                    self.outcome.interrupted = True
                    self.progress.note(
                        "interrupted: stopping the workers; every run keeps its last finished epoch's "
                        "checkpoint (rerun the same command to resume)"
                    )
                    self._stop_workers()
        finally:
            self._shutdown()
            self.progress.close()
        self.outcome.pending = [p.spec.name for p in self.todo if p.spec.name not in self.outcome.outcomes]
        return self.outcome

    # ------------------------------------------------------------------ workers
    def _spawn(self, slot: int) -> _Worker:
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        gpu = self.gpus[slot % len(self.gpus)] if self.gpus else None
        process = self.ctx.Process(
            target=_worker_main,
            args=(slot, child_end, self.launcher.train_fn, self.threads, gpu, os.getpid()),
            name=f"poolkit-sweep-worker-{slot}",
        )
        # The child inherits an ignored SIGINT from its first instruction on, so a Ctrl-C during its
        # start-up cannot kill it with a traceback.
        with _sigint_ignored(), _main_file_hidden_if_missing():
            process.start()
        child_end.close()
        return _Worker(slot, process, parent_end)

    def _assign(self, worker: _Worker) -> None:
        if self.signals or not self.pending:
            worker.current = None
            with contextlib.suppress(OSError):
                worker.conn.send(None)
            return
        planned = self.pending.popleft()
        worker.current = planned
        worker.conn.send((planned.spec, str(self.runs_dir / planned.spec.name)))
        self.progress.started(
            worker.slot, planned.spec, planned.epochs_done if planned.status == "resume" else 0
        )

    def _poll(self, timeout: float) -> None:
        """Handle every message that arrives within ``timeout``, and the workers that died."""
        live = {w.conn: w for w in self.workers if w.alive}
        if not live:
            return
        for conn in mp_connection.wait(list(live), timeout=timeout):
            worker = live[conn]
            while worker.alive and _readable(conn):
                try:
                    message = conn.recv()
                except (EOFError, OSError, pickle.UnpicklingError):
                    self._worker_gone(worker)
                    break
                self._handle(worker, message)

    def _handle(self, worker: _Worker, message: tuple[Any, ...]) -> None:
        if message[0] == "epoch":
            _, name, epoch, row = message
            self.progress.epoch(worker.slot, self.by_name[name].spec, epoch, row)
        elif message[0] == "end":
            self._record(worker, message[1])

    def _record(self, worker: _Worker, result: RunOutcome) -> None:
        self.outcome.outcomes[result.name] = result
        self.progress.ended(worker.slot, self.by_name[result.name].spec, result)
        if worker.current is not None and worker.current.spec.name == result.name:
            worker.current = None
            if result.status != "interrupted":
                self._assign(worker)

    def _worker_gone(self, worker: _Worker) -> None:
        """The worker's pipe closed. If it was running a run (a segfault, an out-of-memory kill), that
        run fails and, while runs are left, a new worker takes the slot."""
        worker.alive = False
        worker.conn.close()
        worker.process.join(timeout=5.0)
        if worker.current is None or self.signals:
            return
        spec = worker.current.spec
        worker.current = None
        code = worker.process.exitcode
        if code is None:
            how = "stopped answering"
        elif code < 0:
            how = f"was killed by signal {-code}" + (
                " (SIGKILL: often the kernel's out-of-memory killer)" if code == -signal.SIGKILL else ""
            )
        else:
            how = f"exited with status {code}"
        message = f"the worker process running this run {how}; its own output, if any, is above"
        write_error(self.runs_dir / spec.name, message=message, type_name="WorkerDied", tb="")
        self.outcome.outcomes[spec.name] = failed = RunOutcome(
            spec.name, "failed", error=message, error_type="WorkerDied"
        )
        self.progress.ended(worker.slot, spec, failed)
        if self.pending:
            replacement = self._spawn(worker.slot)
            self.workers[self.workers.index(worker)] = replacement
            self._assign(replacement)

    def _stop_workers(self) -> None:
        self.pending.clear()
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.terminate()
        deadline = time.monotonic() + self.launcher.grace_seconds
        while any(w.alive for w in self.workers) and time.monotonic() < deadline and self.signals < 2:
            self._poll(0.1)
        for worker in self.workers:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join()
            if worker.current is not None:
                name = worker.current.spec.name
                self.outcome.outcomes.setdefault(name, RunOutcome(name, "interrupted"))
                worker.current = None

    def _shutdown(self) -> None:
        for worker in self.workers:
            if worker.alive:
                with contextlib.suppress(OSError):
                    worker.conn.send(None)
        for worker in self.workers:
            worker.process.join(timeout=10.0)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()

    def _on_signal(self, signum: int) -> None:
        self.signals += 1


def _readable(conn: Any) -> bool:
    try:
        return bool(conn.poll(0))
    except (EOFError, OSError):
        return True  # recv() will report the closed pipe


@contextlib.contextmanager
def _sigint_ignored() -> Any:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _main_file_hidden_if_missing() -> Any:
    """``spawn`` re-runs the parent's ``__main__`` file in each child; a script read from stdin has
    ``__file__ == '<stdin>'``, which does not exist, and every child would die. The workers need
    nothing from ``__main__``, so such a path is hidden while they start."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if path is None or os.path.exists(path):
        yield
        return
    del main.__file__  # type: ignore[union-attr]
    try:
        yield
    finally:
        main.__file__ = path  # type: ignore[union-attr]


def _gpu_assignment(specs: Sequence[RunSpec]) -> list[str]:
    """The GPUs to spread workers over: the visible ones when there are several and every run may use
    any GPU (``device`` ``auto`` or ``cuda``); otherwise none (workers keep the parent's view)."""
    if any(s.config.get("device", "auto") not in ("auto", "cuda") for s in specs):
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v.strip() for v in visible.split(",") if v.strip()]
        return ids if len(ids) > 1 else []
    try:
        import torch

        count = torch.cuda.device_count()
    except Exception:  # a broken CUDA install must not stop a CPU sweep
        return []
    return [str(i) for i in range(count)] if count > 1 else []
