"""The SLURM launcher: a sweep's pending runs as one job array, submitted with submitit.

Every array task calls :func:`poolkit.experiments.runner.execute_run` (``train_run(..., resume=True)``)
for one run. The task object is :class:`SlurmRunTask`, a ``submitit.helpers.Checkpointable``: when
SLURM signals a time-out or a preemption, submitit calls its :meth:`~SlurmRunTask.checkpoint`, which
resubmits the same run; the requeued task resumes from the ``checkpoint.pt`` written after the last
finished epoch. The run's lock (``RUN_DIR/lock.json``, :mod:`poolkit.train.lock`) keeps a run from
being trained twice at once; a requeued task waits for a lock left by a crashed node to expire. With
``tasks_per_node > 1`` each run is one DDP job: every task exports the ``torchrun`` environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) with submitit's
``TorchDistributedEnvironment`` and :func:`poolkit.train.train_run` joins the process group, one GPU
per task.

Submitted job ids are kept in ``OUT/slurm/jobs.json``; a rerun does not resubmit a run whose job is
still pending or running. Logs go to ``OUT/slurm/<job id>/<job id>_<task>_log.{out,err}``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import submitit

from poolkit.experiments.grid import RunSpec
from poolkit.experiments.launch_options import SlurmOptions
from poolkit.experiments.launchers import LaunchOutcome, SweepProgress
from poolkit.experiments.runner import (
    LauncherError,
    PlannedRun,
    RunOutcome,
    TrainFn,
    execute_run,
    handle_stop_signals,
    write_error,
)
from poolkit.experiments.scheduler import scheduler_states
from poolkit.rundir import RunDir, read_json

__all__ = ["SlurmLauncher", "SlurmRunTask", "slurm_parameters"]

#: Job states in which a submitted run must not be submitted again.
_IN_FLIGHT = frozenset(
    {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "COMPLETING",
     "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING"}
)  # fmt: skip


class SlurmRunTask(submitit.helpers.Checkpointable):
    """The callable each array task runs: one sweep run, resumed from its checkpoint if there is one.

    Args:
        train_fn: what trains the run (default :func:`poolkit.train.train_run`).
        raise_on_failure: re-raise a failure after recording ``error.json``, so the scheduler marks
            the job FAILED (off for submitit's in-process ``debug`` executor, which would open pdb).
    """

    def __init__(self, train_fn: TrainFn | None = None, *, raise_on_failure: bool = True) -> None:
        self.train_fn = train_fn
        self.raise_on_failure = raise_on_failure

    def __call__(self, spec: RunSpec, run_dir: str) -> dict[str, Any]:
        _export_distributed_environment()
        # train_run's own keyword; a custom train_fn gets the TrainFn keywords only.
        extra = {"lock_wait": requeue_lock_wait()} if self.train_fn is None else {}
        outcome = execute_run(spec, run_dir, self.train_fn, progress=False, **extra)
        if outcome.status == "failed" and self.raise_on_failure:
            where = RunDir(run_dir).error
            raise RuntimeError(f"run {spec.name} failed: {outcome.error_type}: {outcome.error} (see {where})")
        return dataclasses.asdict(outcome)

    def checkpoint(self, spec: RunSpec, run_dir: str) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on time-out or preemption: requeue the same run. Nothing needs saving
        here: ``train_run`` wrote ``checkpoint.pt`` after the last finished epoch, and the requeued
        task resumes from it (at most the epoch in progress is trained again)."""
        fresh = SlurmRunTask(self.train_fn, raise_on_failure=self.raise_on_failure)
        return submitit.helpers.DelayedSubmission(fresh, spec, run_dir)


def requeue_lock_wait() -> float:
    """Seconds a task waits for its run's lock: ``POOLKIT_LOCK_WAIT_S`` when set, else long enough for a
    stale lock to expire (its expiry plus two heartbeats).

    A requeued task may start while the lock of its previous attempt still looks fresh (a node that
    crashed cannot remove its lock), so it waits for it to expire instead of giving up.
    """
    from poolkit.train.lock import lock_settings, lock_wait_setting

    wait = lock_wait_setting()
    if wait is not None:
        return wait
    heartbeat, expiry = lock_settings()
    return expiry + 2 * heartbeat


def _export_distributed_environment() -> None:
    """In a multi-task job, set the variables torchrun would, so train_run runs data-parallel."""
    try:
        env = submitit.JobEnvironment()
        tasks = env.num_tasks
    except RuntimeError:  # not inside a submitit job (called directly)
        return
    if tasks > 1:
        # Every task sees all GPUs of its node and train_run picks cuda:LOCAL_RANK.
        # overwrite: the job's own ranks win over variables inherited from the submitting shell.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def slurm_parameters(options: SlurmOptions, job_name: str) -> dict[str, Any]:
    """The keyword arguments for ``submitit.AutoExecutor.update_parameters`` of a sweep's job array.

    Example:
        >>> from poolkit.experiments.launch_options import SlurmOptions
        >>> options = SlurmOptions(partition="gpu", gpus_per_node=1, account="lab")
        >>> p = slurm_parameters(options, "poolkit-paper")
        >>> p["slurm_partition"], p["gpus_per_node"], p["slurm_additional_parameters"]
        ('gpu', 1, {'account': 'lab'})
    """
    params: dict[str, Any] = {
        "name": job_name,
        "timeout_min": options.timeout_min,
        "nodes": 1,
        "tasks_per_node": options.tasks_per_node,
    }
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        value = getattr(options, key)
        if value is not None:
            params[key] = value
    if options.partition is not None:
        params["slurm_partition"] = options.partition
    if options.array_parallelism is not None:
        params["slurm_array_parallelism"] = options.array_parallelism
    extra = {
        k: getattr(options, k) for k in ("account", "qos", "constraint") if getattr(options, k) is not None
    }
    extra.update(options.additional_parameters)
    if extra:
        params["slurm_additional_parameters"] = extra
    if options.setup:
        params["slurm_setup"] = list(options.setup)
    return params


class SlurmLauncher:
    """Submit planned runs as one submitit job array and (by default) wait for them.

    Args:
        options: the sweep's ``slurm:`` section.
        folder: submitit's folder (job scripts, pickles, logs): ``OUT/slurm``.
        train_fn: what trains one run (default :func:`poolkit.train.train_run`); picklable.
        stream: where progress goes (default ``sys.stderr``).
        job_name: the SLURM job name.
        poll_seconds: how often a waiting launcher checks its jobs.
    """

    def __init__(
        self,
        options: SlurmOptions,
        *,
        folder: str | os.PathLike[str],
        train_fn: TrainFn | None = None,
        stream: TextIO | None = None,
        job_name: str = "poolkit",
        poll_seconds: float = 30.0,
    ) -> None:
        self.options = options
        self.folder = Path(folder)
        self.train_fn = train_fn
        self.stream = stream if stream is not None else sys.stderr
        self.job_name = job_name
        self.poll_seconds = poll_seconds if options.cluster == "slurm" else min(poll_seconds, 1.0)
        self._interrupted = False

    def parameters(self) -> dict[str, Any]:
        """See :func:`slurm_parameters`."""
        return slurm_parameters(self.options, self.job_name)

    def executor(self) -> submitit.AutoExecutor:
        """A configured ``submitit.AutoExecutor`` for ``options.cluster``.

        Raises:
            LauncherError: ``cluster`` is ``slurm`` but this machine has no SLURM (no ``srun``).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.options.cluster)
        except RuntimeError as exc:
            raise LauncherError(
                f"--launcher slurm needs a SLURM cluster, but {exc} (to try the sweep on this machine, use "
                "--launcher local, or --set slurm.cluster=local to go through submitit's local executor)"
            ) from None
        executor.update_parameters(**self.parameters())
        return executor

    # ------------------------------------------------------------------ submission
    def run(
        self, todo: Sequence[PlannedRun], runs_dir: str | os.PathLike[str], *, wait: bool = True
    ) -> LaunchOutcome:
        """Submit every planned run not already in flight; wait for them unless ``wait=False``."""
        runs_dir = Path(runs_dir)
        outcome = LaunchOutcome()
        jobs_file = self.folder / "jobs.json"
        known = _read_jobs(jobs_file)
        in_flight = self._in_flight([p.spec.name for p in todo], known)
        if in_flight:
            print(
                f"{len(in_flight)} runs are already queued or running on the cluster (not submitted again): "
                + ", ".join(f"{n} (job {known[n]})" for n in in_flight[:5])
                + (" ..." if len(in_flight) > 5 else ""),
                file=self.stream,
            )
        submit = [p for p in todo if p.spec.name not in in_flight]
        outcome.pending = list(in_flight)
        outcome.job_ids = {name: known[name] for name in in_flight}
        if not submit:
            return outcome
        executor = self.executor()
        task = SlurmRunTask(self.train_fn, raise_on_failure=self.options.cluster != "debug")
        jobs = executor.map_array(
            task, [p.spec for p in submit], [str(runs_dir / p.spec.name) for p in submit]
        )
        submitted = {p.spec.name: str(job.job_id) for p, job in zip(submit, jobs, strict=True)}
        known.update(submitted)
        outcome.job_ids.update(submitted)
        _write_jobs(jobs_file, known)
        array_id = str(jobs[0].job_id).split("_")[0]
        print(
            f"submitted {len(jobs)} runs as job array {array_id} ({self.options.cluster}); "
            f"logs in {self.folder}",
            file=self.stream,
        )
        if not wait:
            print(
                "not waiting: rerun the same command later to collect the results (finished runs are "
                f"skipped, queued ones are not submitted again); cancel with: scancel {array_id}",
                file=self.stream,
            )
            outcome.pending += [p.spec.name for p in submit]
            return outcome
        self._wait(submit, jobs, runs_dir, outcome, array_id)
        return outcome

    def _in_flight(self, names: Sequence[str], known: Mapping[str, str]) -> list[str]:
        if self.options.cluster != "slurm":
            return []
        listed = [name for name in names if name in known]
        # One sacct call for every job; without sacct (or when it fails) the jobs are assumed gone.
        states = scheduler_states([known[name] for name in listed]) or {}
        return [name for name in listed if states.get(known[name], "").split(" ")[0].upper() in _IN_FLIGHT]

    # ------------------------------------------------------------------ waiting
    def _wait(
        self,
        submitted: Sequence[PlannedRun],
        jobs: Sequence[submitit.Job[Any]],
        runs_dir: Path,
        outcome: LaunchOutcome,
        array_id: str,
    ) -> None:
        parallel = self.options.array_parallelism or len(jobs)
        progress = SweepProgress(len(jobs), min(parallel, len(jobs)), self.stream, bars=False)
        for p in submitted:
            progress.started(None, p.spec, p.epochs_done if p.status == "resume" else 0)
        remaining = dict(
            zip([p.spec.name for p in submitted], zip(submitted, jobs, strict=True), strict=True)
        )
        self._interrupted = False
        try:
            with handle_stop_signals(self._on_signal):
                while remaining and not self._interrupted:
                    for name, (planned, job) in list(remaining.items()):
                        if self._interrupted:
                            break
                        if not job.done():
                            continue
                        result = self._collect(planned.spec, job, runs_dir / name)
                        outcome.outcomes[name] = result
                        progress.ended(None, planned.spec, result)
                        del remaining[name]
                    if remaining and not self._interrupted:
                        _sleep_unless(lambda: self._interrupted, self.poll_seconds)
        finally:
            progress.close()
        if remaining:
            outcome.interrupted = True
            outcome.pending += list(remaining)
            print(
                f"stopped waiting; {len(remaining)} runs keep going on the cluster (job array {array_id}). "
                f"Rerun the same command later to collect them, or cancel with: scancel {array_id}",
                file=self.stream,
            )

    def _collect(self, spec: RunSpec, job: submitit.Job[Any], run_dir: Path) -> RunOutcome:
        try:
            value = job.results()[0]
        except Exception as exc:
            error = RunDir(run_dir).read_error()
            if error is None:
                # The job died outside train_run (killed by the scheduler, node failure, time-out
                # without requeue): record what submitit knows.
                message = f"job {job.job_id} ended in state {job.state}: {str(exc).strip()[-2000:]}"
                write_error(run_dir, message=message, type_name="SlurmJobFailed", tb=str(exc))
                return RunOutcome(spec.name, "failed", error=message, error_type="SlurmJobFailed")
            return RunOutcome(spec.name, "failed", error=error.get("error"), error_type=error.get("type"))
        if isinstance(value, Mapping):
            return RunOutcome(**{f.name: value.get(f.name) for f in dataclasses.fields(RunOutcome)})
        return RunOutcome(
            spec.name, "failed", error=f"unexpected job result {value!r}", error_type="SlurmJobFailed"
        )

    def _on_signal(self, signum: int) -> None:
        self._interrupted = True


def _sleep_unless(stop: Any, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop():
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def _read_jobs(path: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in (read_json(path) or {}).items()}


def _write_jobs(path: Path, jobs: Mapping[str, str]) -> None:
    from poolkit.atomic import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, dict(sorted(jobs.items())))
