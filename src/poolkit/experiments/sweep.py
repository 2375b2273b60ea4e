"""Sweeps: running every unfinished run of a sweep, the summary, and where every run stands.

A :class:`~poolkit.experiments.config.SweepConfig` expands into runs (:mod:`poolkit.experiments.grid`);
what is left to do comes from each run directory's state (:func:`~poolkit.experiments.runner.plan_runs`):

* ``result.json`` present: the run is finished and skipped; one with ``"status": "diverged"`` (its
  training loss became NaN or infinite) is counted as diverged and skipped too (the same config would
  diverge again);
* ``error.json`` present: the run failed before; it is skipped (and counted as failed) unless
  ``retry_failed`` is set;
* ``checkpoint.pt`` present: the run resumes from its last finished epoch;
* otherwise it starts from scratch.

:func:`run_sweep` does all of it with a launcher (local worker processes or a SLURM job array, each
running :func:`~poolkit.experiments.runner.execute_run` per run) and returns a :class:`SweepResult`
whose :meth:`~SweepResult.summary` is the table ``poolkit sweep`` prints; :func:`sweep_status` and
:func:`format_status` are ``poolkit sweep --status``.

Example:
    >>> import tempfile
    >>> from poolkit.experiments import load_preset
    >>> result = run_sweep(load_preset("quick"), tempfile.mkdtemp(), dry_run=True)  # plans, writes nothing
    >>> len(result.planned), result.planned[0].status, result.exit_code
    (9, 'new', 0)
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO

from poolkit.experiments.config import SweepConfig, SweepConfigError
from poolkit.experiments.grid import RunSpec, expand_sweep
from poolkit.experiments.runner import LauncherError, PlannedRun, RunOutcome, TrainFn, plan_runs
from poolkit.experiments.scheduler import QUEUED_STATES, scheduler_states
from poolkit.rundir import RunDir, RunState, finite_number, read_json
from poolkit.text import align_columns

__all__ = [
    "RunStatus",
    "SweepResult",
    "format_plan",
    "format_status",
    "results_table",
    "run_sweep",
    "sweep_lock",
    "sweep_status",
]


def _mean_sd(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def results_table(specs: Sequence[RunSpec], runs_dir: str | os.PathLike[str]) -> str:
    """Test top-1 (last epoch, %) per method x dataset, one block per model: mean ± sd over seeds.

    A cell shows ``[n/N]`` when only n of its N seeds have finished, ``-`` when none has.
    """
    runs_dir = Path(runs_dir)
    cells: dict[tuple[str, str, str], list[float]] = {}
    planned: dict[tuple[str, str, str], int] = {}
    models: list[str] = []
    datasets: list[str] = []
    rows: list[str] = []
    for spec in specs:
        model, dataset = spec.config["model"], spec.config["dataset"]
        row = spec.method + (f" [{spec.variant}]" if spec.variant else "")
        for seq, item in ((models, model), (datasets, dataset), (rows, row)):
            if item not in seq:
                seq.append(item)
        key = (model, dataset, row)
        planned[key] = planned.get(key, 0) + 1
        result = RunDir(runs_dir / spec.name).read_result()
        top1 = finite_number(result.get("test_top1")) if result else None
        if top1 is not None:
            cells.setdefault(key, []).append(top1)

    lines = ["Test top-1 % (last epoch), mean ± sd over seeds; [n/N] = only n of N seeds finished"]
    for model in models:
        grid: list[list[str]] = [[f"model {model}", *datasets]]
        for row in rows:
            if not any((model, d, row) in planned for d in datasets):
                continue
            out = [row]
            for dataset in datasets:
                key = (model, dataset, row)
                values = cells.get(key, [])
                if key not in planned:
                    out.append("")
                elif not values:
                    out.append("-")
                else:
                    mean, sd = _mean_sd(values)
                    text = f"{mean:.2f}" + (f" ± {sd:.2f}" if sd is not None else "")
                    if len(values) < planned[key]:
                        text += f" [{len(values)}/{planned[key]}]"
                    out.append(text)
            grid.append(out)
        lines.append("")
        lines.extend(align_columns(grid, right=True))
    return "\n".join(lines)


@dataclass
class SweepResult:
    """What :func:`run_sweep` did.

    ``planned`` is the state before launching; ``outcomes`` maps a run directory name to how the runs
    launched this time ended; ``interrupted`` is set when Ctrl-C/SIGTERM stopped the sweep;
    ``pending`` names the launched runs that have not ended (interrupted before they started, or still
    queued or running on a SLURM cluster).
    """

    sweep: SweepConfig
    out_dir: Path
    specs: list[RunSpec]
    planned: list[PlannedRun]
    outcomes: dict[str, RunOutcome] = field(default_factory=dict)
    interrupted: bool = False
    pending: list[str] = field(default_factory=list)
    dry_run: bool = False
    job_ids: dict[str, str] = field(default_factory=dict)

    @property
    def runs_dir(self) -> Path:
        return self.out_dir / "runs"

    def count(self, what: str) -> int:
        """``finished`` (this time), ``failed`` (this time), ``diverged`` (this time or before),
        ``skipped`` (finished before), ``failed_before`` (skipped failures), ``interrupted``, ``busy``
        (trained by another process)."""
        if what == "skipped":
            return sum(p.status == "finished" for p in self.planned)
        if what == "failed_before":
            return sum(p.status == "failed" and p.spec.name not in self.outcomes for p in self.planned)
        if what == "diverged":
            before = sum(p.status == "diverged" and p.spec.name not in self.outcomes for p in self.planned)
            return before + sum(o.status == "diverged" for o in self.outcomes.values())
        return sum(o.status == what for o in self.outcomes.values())

    @property
    def exit_code(self) -> int:
        """0 when every run is finished; 1 when a run failed (now or before), diverged (now or before) or
        is busy (being trained by another process); 130 when interrupted; 0 for a dry run or a
        submitted-but-not-awaited SLURM sweep without failures."""
        if self.interrupted:
            return 130
        bad = ("failed", "failed_before", "diverged", "busy")
        return 1 if any(self.count(what) for what in bad) else 0

    def summary(self) -> str:
        """Counts, failures with their first error line, and :func:`results_table`."""
        parts = [
            f"{self.count('finished')} finished",
            f"{self.count('skipped')} skipped (finished before)",
            f"{self.count('failed')} failed",
        ]
        if self.count("diverged"):
            parts.append(f"{self.count('diverged')} diverged (training loss not finite; see result.json)")
        if self.count("failed_before"):
            parts.append(f"{self.count('failed_before')} failed before (rerun with --retry-failed)")
        if self.count("interrupted") or self.interrupted:
            parts.append(f"{self.count('interrupted')} interrupted (rerun the same command to resume)")
        if self.count("busy"):
            parts.append(f"{self.count('busy')} busy (being trained by another process; rerun later)")
        if self.pending:
            parts.append(f"{len(self.pending)} still to run")
        lines = [f"Sweep {self.sweep.name!r}: {len(self.specs)} runs: " + ", ".join(parts)]
        failures = [(n, o.error_type, o.error) for n, o in self.outcomes.items() if o.status == "failed"]
        failures += [
            (p.spec.name, None, p.error)
            for p in self.planned
            if p.status == "failed" and p.spec.name not in self.outcomes
        ]
        for name, kind, error in failures:
            first = (error or "").strip().splitlines()[0] if error else ""
            label = f"{kind}: {first}" if kind else first
            lines.append(f"  FAILED {name}: {label}  (see {RunDir(self.runs_dir / name).error})")
        diverged = [(n, (o.error or "").strip()) for n, o in self.outcomes.items() if o.status == "diverged"]
        diverged += [
            (p.spec.name, p.error or "")
            for p in self.planned
            if p.status == "diverged" and p.spec.name not in self.outcomes
        ]
        for name, text in diverged:
            text = text.split(": the run diverged: ", 1)[-1]
            lines.append(f"  DIVERGED {name}: {text}")
        for name, outcome in self.outcomes.items():
            if outcome.status == "busy":
                lines.append(f"  BUSY   {name}: {(outcome.error or '').strip()}")
        if self.job_ids:
            arrays = sorted({job.split("_")[0] for job in self.job_ids.values()})
            lines.append(
                f"  jobs: {len(self.job_ids)} runs in job(s) {', '.join(arrays[:5])}"
                + (" ..." if len(arrays) > 5 else "")
                + f" (per run: {self.out_dir / 'slurm' / 'jobs.json'}; "
                f"states: poolkit sweep --status --out {self.out_dir})"
            )
        lines += ["", results_table(self.specs, self.runs_dir)]
        return "\n".join(lines)


@contextlib.contextmanager
def sweep_lock(runs_dir: Path) -> Iterator[None]:
    """Hold the lock of ``runs_dir`` so two sweeps never train the same run directories at once.

    It is the run lock (:class:`~poolkit.train.lock.RunLock`) taken on the sweep's runs directory
    (``OUT/runs/lock.json``): a second sweep is refused while the first one lives, on any machine that
    shares the directory, and the lock of a sweep that was killed is taken over.

    Raises:
        LauncherError: another live sweep holds it.
    """
    from poolkit.train.lock import RunBusyError, RunLock

    try:
        lock = RunLock(runs_dir).acquire()
    except RunBusyError as exc:
        raise LauncherError(
            f"another poolkit sweep ({exc.holder.describe()}) is running in {runs_dir}; "
            "wait for it to end or use another --out"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _missing_data_dirs(todo: Sequence[PlannedRun]) -> list[tuple[str, str]]:
    """``(dataset, data_dir)`` of runs whose data directory does not exist (and will not be downloaded)."""
    found: dict[tuple[str, str], None] = {}
    for p in todo:
        c = p.spec.config
        if c.get("data_dir") and not c.get("download") and not Path(c["data_dir"]).exists():
            found[(c["dataset"], c["data_dir"])] = None
    return list(found)


def _write_sweep_yaml(sweep: SweepConfig, runs_dir: Path) -> None:
    from poolkit.atomic import atomic_write_text

    atomic_write_text(runs_dir / "sweep.yaml", sweep.to_yaml())


def _stale_runs(specs: Sequence[RunSpec], runs_dir: Path) -> list[str]:
    names = {s.name for s in specs}
    return sorted(
        p.name
        for p in runs_dir.iterdir()
        if p.is_dir() and not p.name.startswith(".") and p.name not in names
    )


def format_plan(result: SweepResult, launcher_text: str) -> str:
    """The dry-run listing: every run, its status and directory, and how it would be launched."""
    states = ("new", "resume", "finished", "failed", "diverged")
    counts = {s: sum(p.status == s for p in result.planned) for s in states}
    lines = [
        f"Sweep {result.sweep.name!r}: {len(result.specs)} runs into {result.runs_dir}",
        "  " + ", ".join(f"{n} {s}" for s, n in counts.items()),
        f"  {launcher_text}",
        "",
    ]
    for p in result.planned:
        status = p.status if p.status != "resume" else f"resume@{p.epochs_done}"
        lines.append(f"  {status:<12} {p.spec.name}  {p.spec}")
    return "\n".join(lines)


def run_sweep(
    sweep: SweepConfig,
    out_dir: str | os.PathLike[str],
    *,
    launcher: Literal["local", "slurm"] = "local",
    workers: int | None = None,
    retry_failed: bool = False,
    dry_run: bool = False,
    wait: bool = True,
    train_fn: TrainFn | None = None,
    stream: TextIO | None = None,
    progress: bool | None = None,
) -> SweepResult:
    """Run every unfinished run of ``sweep`` into ``out_dir/runs/`` (see the module docstring).

    Args:
        sweep: a validated sweep (:func:`~poolkit.experiments.load_sweep` / ``load_preset``).
        out_dir: the sweep's output directory; runs go to ``out_dir/runs/``.
        launcher: ``"local"`` (worker processes on this machine) or ``"slurm"`` (a submitit job array).
        workers: local runs at a time (default: the sweep's ``local.workers``).
        retry_failed: also launch runs whose earlier attempt failed.
        dry_run: only plan (``result.planned``); nothing is written.
        wait: SLURM only: wait for the jobs (False: submit and return; rerun to collect).
        train_fn: what runs one run (default :func:`poolkit.train.train_run`); must be picklable.
        stream: where progress goes (default ``sys.stderr``).
        progress: bars (True) or one line per finished run (False); default: bars on a terminal.

    Returns:
        A :class:`SweepResult`; its ``exit_code`` is non-zero when a run failed or the sweep was
        interrupted.
    """
    out_dir = Path(out_dir)
    runs_dir = out_dir / "runs"
    specs = expand_sweep(sweep)
    planned = plan_runs(specs, runs_dir)
    result = SweepResult(sweep, out_dir, specs, planned, dry_run=dry_run)
    if dry_run:
        return result
    stream = stream if stream is not None else sys.stderr
    todo = [p for p in planned if p.status in ("new", "resume") or (retry_failed and p.status == "failed")]
    missing = _missing_data_dirs(todo)
    if missing and launcher == "local":
        raise SweepConfigError(
            "data directories not found (check --data-dir; nothing was run):\n"
            + "\n".join(f"  {path}  (dataset {dataset})" for dataset, path in missing)
        )
    for dataset, path in missing:  # a cluster may mount paths this machine does not see
        print(f"warning: data_dir {path} (dataset {dataset}) does not exist on this machine", file=stream)
    with sweep_lock(runs_dir):
        _write_sweep_yaml(sweep, runs_dir)
        stale = _stale_runs(specs, runs_dir)
        if stale:
            print(
                f"note: {runs_dir} also holds {len(stale)} run directories that are not part of this sweep "
                f"(e.g. {stale[0]}); the report reads every run there",
                file=stream,
            )
        if not todo:
            return result
        if launcher == "local":
            from poolkit.experiments.launchers.local import LocalLauncher

            runner = LocalLauncher(
                workers=workers or sweep.local.workers, train_fn=train_fn, stream=stream, progress=progress
            )
            outcome = runner.run(todo, runs_dir)
        elif launcher == "slurm":
            from poolkit.experiments.launchers.slurm import SlurmLauncher

            runner = SlurmLauncher(
                sweep.slurm,
                folder=out_dir / "slurm",
                train_fn=train_fn,
                stream=stream,
                job_name=sweep.slurm.job_name or f"poolkit-{sweep.name}",
            )
            outcome = runner.run(todo, runs_dir, wait=wait)
        else:
            raise ValueError(f"unknown launcher {launcher!r}; launchers are: local, slurm")
    result.outcomes = outcome.outcomes
    result.interrupted = outcome.interrupted
    result.pending = outcome.pending
    result.job_ids = outcome.job_ids
    return result


StatusState = Literal[
    "finished", "running", "failed", "diverged", "queued", "stalled", "resumable", "not started"
]


@dataclass(frozen=True)
class RunStatus:
    """Where one run of a sweep stands, from its directory, its lock and its job.

    ``state``: ``finished`` (result.json), ``running`` (a live process holds its lock), ``failed``
    (error.json), ``diverged`` (result.json says the training loss became non-finite), ``queued`` (its
    job is pending or starting), ``stalled`` (its lock expired or its
    process is gone: the holder died; rerun the sweep to resume it), ``resumable`` (a checkpoint and
    nobody training it), ``not started``. ``job_id`` / ``job_state``: from ``OUT/slurm/jobs.json`` and
    the scheduler (``None`` when unknown, e.g. without ``sacct``). ``detail``: the top-1 of a finished
    run, the lock holder of a running one, the error of a failed one.
    """

    spec: RunSpec
    state: StatusState
    epochs_done: int
    job_id: str | None = None
    job_state: str | None = None
    detail: str = ""


def sweep_status(specs: Sequence[RunSpec], out_dir: str | os.PathLike[str]) -> list[RunStatus]:
    """The :class:`RunStatus` of every run of a sweep in ``out_dir`` (reads files; trains nothing)."""
    from poolkit.train.lock import live_state  # poolkit.train's package loads the trainer (torch)

    out_dir = Path(out_dir)
    runs_dir = out_dir / "runs"
    jobs = {str(k): str(v) for k, v in (read_json(out_dir / "slurm" / "jobs.json") or {}).items()}
    states = scheduler_states([jobs[s.name] for s in specs if s.name in jobs]) or {}
    planned = {p.spec.name: p for p in plan_runs(specs, runs_dir)}
    out = []
    for spec in specs:
        run = RunDir(runs_dir / spec.name)
        plan = planned[spec.name]
        job_id = jobs.get(spec.name)
        job_state = states.get(job_id) if job_id else None
        scheduler = (job_state or "").split(" ")[0].upper()
        live, holder = live_state(run, spec.run_id)
        state: StatusState = live.value  # type: ignore[assignment]
        detail = ""
        if live is RunState.FINISHED:
            top1 = finite_number((run.read_result() or {}).get("test_top1"))
            detail = f"top-1 {top1:.2f}%" if top1 is not None else ""
        elif live is RunState.RUNNING and holder is not None:
            detail = holder.describe()
        elif live in (RunState.FAILED, RunState.DIVERGED):
            detail = plan.error or ""
        elif scheduler in QUEUED_STATES:
            state = "queued"
        elif live is RunState.STALLED and holder is not None:
            why = "its process is gone" if holder.state() == "dead" else "its lock expired"
            detail = f"{holder.describe()}: {why}; rerun the sweep to resume"
        elif live is RunState.RESUMABLE:
            detail = "rerun the sweep to resume"
        out.append(RunStatus(spec, state, plan.epochs_done, job_id, job_state, detail))
    return out


def format_status(statuses: Sequence[RunStatus], out_dir: str | os.PathLike[str]) -> str:
    """The ``poolkit sweep --status`` table: counts, then one line per run."""
    order = ["finished", "running", "queued", "resumable", "stalled", "failed", "diverged", "not started"]
    counts = {s: sum(r.state == s for r in statuses) for s in order}
    lines = [
        f"{len(statuses)} runs in {Path(out_dir) / 'runs'}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    ]
    rows = [["run", "state", "epoch", "job", "scheduler", "detail"]]
    for r in statuses:
        epochs = int(r.spec.config.get("epochs", 0))
        rows.append(
            [
                r.spec.name,
                r.state,
                f"{r.epochs_done}/{epochs}",
                r.job_id or "-",
                (r.job_state or "-").split(" ")[0],
                r.detail,
            ]
        )
    lines.extend(align_columns(rows))
    return "\n".join(lines)
