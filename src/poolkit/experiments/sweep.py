"""Sweeps: grid expansion into runs, run ids and directories, what is left to do, and running it all.

A :class:`~poolkit.experiments.config.SweepConfig` expands into :class:`RunSpec` s (one validated
``RunConfig`` each). Every run lives in ``OUT/runs/<dataset>_<model>_<pool>_s<seed>_<id>/`` where
``<id>`` is ``RunConfig.run_id()``, so rerunning a sweep finds its runs again:

* ``result.json`` present: the run is finished and skipped; one with ``"status": "diverged"`` (its
  training loss became NaN or infinite) is counted as diverged and skipped too (the same config would
  diverge again);
* ``error.json`` present: the run failed before; it is skipped (and counted as failed) unless
  ``retry_failed`` is set;
* ``checkpoint.pt`` present: the run resumes from its last finished epoch;
* otherwise it starts from scratch.

:func:`run_sweep` does all of it with a launcher (local worker processes or a SLURM job array) and
returns a :class:`SweepResult` whose :meth:`~SweepResult.summary` is the table ``poolkit sweep`` prints.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from poolkit.experiments.config import PoolEntry, SweepConfig, SweepConfigError
from poolkit.rundir import RunDir, RunState, read_json
from poolkit.text import align_columns

__all__ = [
    "LauncherError",
    "PlannedRun",
    "RunOutcome",
    "RunSpec",
    "RunStatus",
    "SweepResult",
    "TrainFn",
    "execute_run",
    "expand_sweep",
    "format_plan",
    "format_status",
    "plan_runs",
    "results_table",
    "run_dir_name",
    "run_sweep",
    "scheduler_states",
    "sweep_lock",
    "sweep_status",
    "write_error",
]

#: ``train_run(config, out_dir, *, resume, progress, ...) -> result dict``: what a launcher calls per run.
TrainFn = Callable[..., Mapping[str, Any]]
Status = Literal["new", "resume", "finished", "failed", "diverged"]


class LauncherError(RuntimeError):
    """A sweep cannot be launched: its directory is in use by another sweep, or the launcher is not
    available here (``--launcher slurm`` without SLURM)."""


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        config: the fully resolved run config (``RunConfig.to_dict()``): what ``config.yaml`` will hold.
        run_id: ``RunConfig.run_id()``, the first 10 hex digits of the config's SHA-256.
        name: the run directory's name, ``<dataset>_<model>_<pool>_s<seed>_<run_id>``.
        method: the pool and the options the sweep gave it, e.g. ``tmaxavg(k=2, threshold=0.3)``.
        variant: other run keys that vary across the sweep (besides dataset, model, pool and seed),
            e.g. ``width=0.5``; empty when none do.
    """

    config: dict[str, Any]
    run_id: str
    name: str
    method: str
    variant: str = ""

    def __str__(self) -> str:
        extra = f" [{self.variant}]" if self.variant else ""
        c = self.config
        return f"{c['dataset']} {c['model']} {self.method}{extra} seed {c['seed']}"


def run_dir_name(config: Mapping[str, Any], run_id: str) -> str:
    """``<dataset>_<model>_<pool>_s<seed>_<run_id>`` for a resolved run config."""
    return f"{config['dataset']}_{config['model']}_{config['pool']}_s{config['seed']}_{run_id}"


def _method_label(pool: str, options: Mapping[str, Any]) -> str:
    if not options:
        return pool
    return f"{pool}({', '.join(f'{k}={v}' for k, v in options.items())})"


def _grid_points(sweep: SweepConfig) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values; seed is the outermost axis, so an interrupted sweep has
    finished whole seeds of every configuration rather than every seed of a few."""
    axes = sorted(sweep.grid, key=lambda a: a != "seed")
    choices: list[list[Any]] = []
    for axis in axes:
        if axis == "pool":
            choices.append([p for entry in sweep.grid[axis] for p in _as_entry(entry).expand()])
        else:
            choices.append(list(sweep.grid[axis]))
    for combo in itertools.product(*choices):
        point: dict[str, Any] = {}
        for axis, value in zip(axes, combo, strict=True):
            if axis == "pool":
                point["pool"], point["pool_options"] = value
            else:
                point[axis] = value
        yield point


def _as_entry(entry: PoolEntry | str) -> PoolEntry:
    return entry if isinstance(entry, PoolEntry) else PoolEntry(entry)


def expand_sweep(sweep: SweepConfig) -> list[RunSpec]:
    """Every run of a sweep, validated with ``RunConfig.from_dict``, in launch order.

    Precedence, lowest first: RunConfig defaults, ``train``, the grid point, then each matching
    override in file order. Overrides match on the values from ``train`` and the grid (the RunConfig
    default for a key set in neither).

    Raises:
        SweepConfigError: a run is invalid (the message names the run and the key), or two grid points
            are the same run.

    Example:
        >>> from poolkit.experiments import load_preset
        >>> runs = expand_sweep(load_preset("quick"))
        >>> len(runs), runs[0].name.startswith("mnist5k_vgg11_")
        (9, True)
    """
    from poolkit.train.config import RunConfig

    defaults = _run_defaults()
    specs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for point in _grid_points(sweep):
        base = {**sweep.train, **point}
        values = dict(base)
        for override in sweep.overrides:
            # Match against the defaults too, so `match: {stem: cifar}` also finds runs that leave
            # stem at its default.
            if override.matches({**defaults, **base}):
                values.update(override.set)
        pool = values.get("pool", defaults["pool"])
        method = _method_label(pool, values.get("pool_options", {}))
        where = ", ".join(
            f"{k}={method if k == 'pool' else v}" for k, v in point.items() if k != "pool_options"
        )
        try:
            config = RunConfig.from_dict(values)
        except ValueError as exc:
            raise SweepConfigError(f"sweep {sweep.name!r}, run {{{where}}}: {exc}") from None
        run_id = config.run_id()
        if run_id in seen:
            raise SweepConfigError(
                f"sweep {sweep.name!r}: the grid points {{{seen[run_id]}}} and {{{where}}} give the same run "
                f"(id {run_id}); remove one of them"
            )
        seen[run_id] = where
        resolved = config.to_dict()
        specs.append(RunSpec(resolved, run_id, run_dir_name(resolved, run_id), method))
    return _with_variants(specs)


def _run_defaults() -> dict[str, Any]:
    import dataclasses

    from poolkit.train.config import RunConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _with_variants(specs: list[RunSpec]) -> list[RunSpec]:
    """Name the run keys that vary among runs of one dataset, model, method and seed (e.g. a ``width``
    axis). Keys that differ only between datasets or models (an override's ``epochs`` for Tiny
    ImageNet) are not variants: they do not split a row of the results table."""
    from poolkit.train.config import NON_RESULT_KEYS

    fixed = {"dataset", "model", "pool", "pool_options", "seed", *NON_RESULT_KEYS}
    keys = [k for k in (specs[0].config if specs else {}) if k not in fixed]
    groups: dict[tuple[Any, ...], list[RunSpec]] = {}
    for spec in specs:
        c = spec.config
        groups.setdefault((c["dataset"], c["model"], spec.method, c["seed"]), []).append(spec)

    def varies(key: str) -> bool:
        return any(len({json.dumps(s.config[key], sort_keys=True) for s in g}) > 1 for g in groups.values())

    varying = [k for k in keys if varies(k)]
    if not varying:
        return specs
    return [
        RunSpec(s.config, s.run_id, s.name, s.method, ", ".join(f"{k}={s.config[k]}" for k in varying))
        for s in specs
    ]


# ----------------------------------------------------------------------------------------------------------
# What is on disk.


@dataclass(frozen=True)
class PlannedRun:
    """A run and what the next invocation will do with it.

    ``status``: ``"new"`` (start), ``"resume"`` (continue from ``checkpoint.pt`` after
    ``epochs_done`` epochs), ``"finished"`` (skip), ``"failed"`` (an earlier attempt wrote
    ``error.json``; skipped unless retried) or ``"diverged"`` (its ``result.json`` says the training loss
    became non-finite; skipped, and ``error`` says where).
    """

    spec: RunSpec
    status: Status
    epochs_done: int = 0
    error: str | None = None


#: A run's :class:`~poolkit.rundir.RunState` as what the next invocation does with it.
_PLAN_STATUS: dict[RunState, Status] = {
    RunState.NOT_STARTED: "new",
    RunState.RESUMABLE: "resume",
    RunState.FINISHED: "finished",
    RunState.FAILED: "failed",
    RunState.DIVERGED: "diverged",
}


def plan_runs(specs: Sequence[RunSpec], runs_dir: str | os.PathLike[str]) -> list[PlannedRun]:
    """The status of every run from the files in its directory (see :class:`PlannedRun`).

    A ``result.json`` counts only if it is readable and names the same run id (a directory with another
    run's result is left for ``train_run`` to refuse, which records the failure).
    """
    runs_dir = Path(runs_dir)
    planned = []
    for spec in specs:
        run = RunDir(runs_dir / spec.name)
        state = run.state(spec.run_id)
        error: str | None = None
        if state is RunState.DIVERGED:
            error = _divergence_text(run.read_result() or {})
        elif state is RunState.FAILED:
            error = run.error_summary()
        epochs = 0 if state is RunState.NOT_STARTED else run.epochs_done()
        planned.append(PlannedRun(spec, _PLAN_STATUS[state], epochs, error))
    return planned


def _divergence_text(result: Mapping[str, Any]) -> str:
    where = result.get("diverged") if isinstance(result.get("diverged"), dict) else {}
    return (
        f"diverged at epoch {where.get('epoch', '?')}, step {where.get('step', '?')} "
        f"(training loss {where.get('loss', '?')})"
    )


# ----------------------------------------------------------------------------------------------------------
# Running one run (shared by every launcher).


@dataclass
class RunOutcome:
    """How one launched run ended: ``status`` is ``"finished"``, ``"failed"``, ``"diverged"`` (its training
    loss became non-finite; ``result.json`` records where), ``"interrupted"`` or ``"busy"`` (another live
    process holds the run's lock and is training it; nothing was written)."""

    name: str
    status: Literal["finished", "failed", "diverged", "interrupted", "busy"]
    seconds: float | None = None
    test_top1: float | None = None
    error: str | None = None
    error_type: str | None = None


def write_error(
    run_dir: str | os.PathLike[str],
    exc: BaseException | None = None,
    *,
    message: str | None = None,
    type_name: str | None = None,
    tb: str | None = None,
) -> dict[str, Any]:
    """Write ``error.json`` (``error``, ``type``, ``traceback``, ``time``) atomically; returns the record.

    Pass the exception, or ``message``/``type_name`` for a failure without one (a worker that died).
    """
    return RunDir(run_dir).write_error(exc, message=message, type_name=type_name, tb=tb)


def _default_train_fn() -> TrainFn:
    from poolkit.train import train_run

    return train_run


def execute_run(
    spec: RunSpec, run_dir: str | os.PathLike[str], train_fn: TrainFn | None = None, **train_kwargs: Any
) -> RunOutcome:
    """Run one spec with ``train_fn`` (default :func:`poolkit.train.train_run`) and ``resume=True``.

    An ``error.json`` left by an earlier attempt is removed first; an exception is recorded in a new
    one and returned as a ``"failed"`` outcome, so the caller's other runs go on. A run whose lock is
    held by another live process (``RunBusyError``), or was taken over while training
    (``RunLockLost``), is ``"busy"``: not a failure, and nothing is recorded.
    ``KeyboardInterrupt`` and ``SystemExit`` propagate (an interruption is not a failure: the
    checkpoint stays for the next invocation).
    """
    from poolkit.train.engine import RunDiverged
    from poolkit.train.lock import RunBusyError, RunLockLost

    run_dir = Path(run_dir)
    RunDir(run_dir).clear_error()
    train = train_fn if train_fn is not None else _default_train_fn()
    try:
        result = train(spec.config, run_dir, resume=True, **train_kwargs)
    except (RunBusyError, RunLockLost) as exc:
        return RunOutcome(spec.name, "busy", error=str(exc), error_type=type(exc).__name__)
    except RunDiverged as exc:
        # Not a bug: result.json (status "diverged") records where; the sweep goes on.
        return RunOutcome(spec.name, "diverged", error=str(exc), error_type="RunDiverged")
    except Exception as exc:
        if int(os.environ.get("RANK", "0")) == 0:
            write_error(run_dir, exc)
        return RunOutcome(spec.name, "failed", error=str(exc), error_type=type(exc).__name__)
    return RunOutcome(
        spec.name,
        "finished",
        seconds=_number(result.get("seconds")),
        test_top1=_number(result.get("test_top1")),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


# ----------------------------------------------------------------------------------------------------------
# Results.


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
        top1 = _number(result.get("test_top1")) if result else None
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


# ----------------------------------------------------------------------------------------------------------
# A whole sweep.


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
    """Hold an exclusive lock on ``runs_dir`` so two sweeps never train the same run directory at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        yield
        return
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / ".sweep.lock"
    with path.open("a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise LauncherError(
                f"another poolkit sweep (pid {holder}) is running in {runs_dir}; "
                "wait for it to end or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle, fcntl.LOCK_UN)


def _missing_data_dirs(todo: Sequence[PlannedRun]) -> list[tuple[str, str]]:
    """``(dataset, data_dir)`` of runs whose data directory does not exist (and will not be downloaded)."""
    found: dict[tuple[str, str], None] = {}
    for p in todo:
        c = p.spec.config
        if c.get("data_dir") and not c.get("download") and not Path(c["data_dir"]).exists():
            found[(c["dataset"], c["data_dir"])] = None
    return list(found)


def _write_sweep_yaml(sweep: SweepConfig, runs_dir: Path) -> None:
    from poolkit.io import atomic_write_text

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


# ----------------------------------------------------------------------------------------------------------
# The state of every run (``poolkit sweep --status``).

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


def scheduler_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """SLURM's state of each job id (one ``sacct`` call for all), or None when ``sacct`` is not here."""
    import shutil

    ids = [str(j) for j in job_ids if j]
    if not ids or shutil.which("sacct") is None:
        return None
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=600)
        for job_id in ids:
            watcher.register_job(job_id)
        watcher.update()
        return {job_id: watcher.get_state(job_id, mode="cache") for job_id in ids}
    except Exception:  # a broken sacct must not break the status table
        return None


_QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RUNNING", "SUSPENDED"}


def sweep_status(specs: Sequence[RunSpec], out_dir: str | os.PathLike[str]) -> list[RunStatus]:
    """The :class:`RunStatus` of every run of a sweep in ``out_dir`` (reads files; trains nothing)."""
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
        live, holder = run.live_state(spec.run_id)
        state: StatusState = live.value  # type: ignore[assignment]
        detail = ""
        if live is RunState.FINISHED:
            top1 = _number((run.read_result() or {}).get("test_top1"))
            detail = f"top-1 {top1:.2f}%" if top1 is not None else ""
        elif live is RunState.RUNNING and holder is not None:
            detail = holder.describe()
        elif live in (RunState.FAILED, RunState.DIVERGED):
            detail = plan.error or ""
        elif scheduler in _QUEUED_STATES:
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
