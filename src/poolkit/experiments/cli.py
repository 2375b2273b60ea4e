"""``poolkit sweep`` and ``poolkit reproduce``.

``poolkit sweep CONFIG`` (or ``--preset NAME``) runs every unfinished run of a sweep into
``OUT/runs/`` and prints a summary; ``poolkit reproduce --preset NAME`` does the same and then writes
the report to ``OUT/report/``; ``poolkit sweep --status`` shows where every run stands. Progress goes
to stderr, the summary to stdout. Exit status: 0 when every run finished, 1 when a run failed (or is
being trained by another process), 2 for a usage or configuration error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from poolkit.errors import is_user_error
from poolkit.experiments.config import (
    SweepConfig,
    SweepConfigError,
    list_presets,
    load_preset,
    load_sweep,
    parse_time_limit,
    update_slurm,
)
from poolkit.tracking.sinks import LOGGERS
from poolkit.train.cli import positive_int

__all__ = ["add_arguments", "add_reproduce_arguments", "main", "reproduce_main"]

_DEFAULT_ROOT = Path("poolkit-out")


def _add_common(parser: argparse.ArgumentParser) -> None:
    source = parser.add_argument_group("what to run")
    source.add_argument(
        "config", nargs="?", metavar="CONFIG", help="a sweep YAML file (see docs/experiments.md)"
    )
    source.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a sweep shipped with poolkit instead of CONFIG: {', '.join(_presets())}",
    )
    source.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the sweep (repeatable): a run key forced on every run (--set epochs=2), a grid axis "
        "(--set seed=0, --set grid.seed=[0,1]) or a section key (--set slurm.partition=gpu); "
        "VALUE is YAML",
    )
    source.add_argument(
        "--data-dir",
        metavar="DIR",
        help="the data root: replaces ${data_dir} in the sweep (the paper preset reads DIR/cifar-100-python "
        "and DIR/tiny-imagenet-200); a sweep without ${data_dir} uses DIR as every run's data_dir",
    )
    where = parser.add_argument_group("where and how")
    where.add_argument(
        "--out", metavar="DIR", type=Path, help="output directory (default: ./poolkit-out/<sweep name>)"
    )
    where.add_argument("--launcher", choices=("local", "slurm"), default="local", help="default: local")
    where.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="local launcher: runs at a time, each in its own process with max(1, cores // N) torch "
        "threads (default: the sweep's local.workers, else 1); with several GPUs, worker i uses GPU i mod n",
    )
    where.add_argument(
        "--logger", dest="loggers", action="append", default=None, choices=sorted(LOGGERS),
        help="log every run to TensorBoard (RUN_DIR/tensorboard/) or MLflow (MLFLOW_TRACKING_URI, else "
        "sqlite:///<out>/runs/mlflow.db); repeatable; not part of the run ids (same as --set loggers=[...])",
    )  # fmt: skip
    where.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    where.add_argument(
        "--dry-run", action="store_true", help="list the runs and what would happen; run nothing"
    )
    where.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm launcher: submit the job array and return (rerun the command to collect the results)",
    )
    slurm = parser.add_argument_group(
        "SLURM (--launcher slurm)",
        "Each flag sets a key of the sweep's slurm: section, like --set slurm.KEY=VALUE, and wins over it.",
    )
    for flag, key, kind, metavar, text in _SLURM_FLAGS:
        slurm.add_argument(flag, dest=f"slurm_{key}", type=kind, metavar=metavar, default=None, help=text)
    slurm.add_argument(
        "--sbatch", dest="slurm_sbatch", action="append", default=[], metavar="OPTION[=VALUE]",
        help="any other sbatch option, repeatable: --sbatch mail-type=END --sbatch exclusive "
        "(slurm.additional_parameters)",
    )  # fmt: skip
    slurm.add_argument(
        "--setup", dest="slurm_setup", action="append", default=[], metavar="COMMAND",
        help="a shell line run before each task, repeatable, after the file's slurm.setup "
        "(e.g. --setup 'source ~/venv/bin/activate')",
    )  # fmt: skip
    slurm.add_argument(
        "--cluster", dest="slurm_cluster", choices=("slurm", "local", "debug"), default=None,
        help="submitit's executor: slurm (default), or local/debug to try the launcher on this machine",
    )  # fmt: skip


def _slurm_time(text: str) -> int:
    try:
        return parse_time_limit(text)
    except SweepConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _presets() -> list[str]:
    try:
        return list_presets()
    except OSError:
        return []


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``poolkit sweep``."""
    parser.description = (
        "Run a sweep: every unfinished run of the grid, into "
        "OUT/runs/<dataset>_<model>_<pool>_s<seed>_<id>/. "
        "Finished runs are skipped, interrupted ones resume from their checkpoint, failed ones are recorded "
        "in error.json while the others go on."
    )
    _add_common(parser)
    parser.add_argument(
        "--status",
        action="store_true",
        help="show each run's state (finished, running, queued, resumable, stalled, failed, not started), "
        "epoch and SLURM job, and run nothing; the sweep is CONFIG / --preset, or OUT/runs/sweep.yaml of "
        "--out",
    )


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``poolkit reproduce``."""
    parser.description = (
        "Reproduce an experiment end to end: run its sweep into OUT/runs/, then write the report to "
        "OUT/report/. Start with --preset quick (about 2.5 minutes on a 2-core CPU); "
        "--preset paper is the study."
    )
    _add_common(parser)


#: (flag, slurm key, type, metavar, help) of the SLURM flags with one value.
_SLURM_FLAGS: list[tuple[str, str, Any, str, str]] = [
    ("--partition", "partition", str, "NAME", "the partition (sbatch --partition)"),
    (
        "--time", "timeout_min", _slurm_time, "LIMIT",
        "time limit of each task: minutes (720), HH:MM:SS or D-HH:MM:SS; a run that needs longer is "
        "requeued and resumes from its checkpoint",
    ),
    ("--gpus-per-node", "gpus_per_node", positive_int, "N", "GPUs per task's node (one run's GPUs)"),
    (
        "--tasks-per-node", "tasks_per_node", positive_int, "N",
        "processes per run: N > 1 trains each run with DDP on N GPUs of one node (with --gpus-per-node N)",
    ),
    ("--cpus-per-task", "cpus_per_task", positive_int, "N", "CPUs per task"),
    ("--mem-gb", "mem_gb", _positive_float, "GB", "memory per node in GB (sbatch --mem)"),
    (
        "--array-parallelism", "array_parallelism", positive_int, "N",
        "at most N runs at once (sbatch --array=...%%N)",
    ),
    ("--account", "account", str, "NAME", "sbatch --account"),
    ("--qos", "qos", str, "NAME", "sbatch --qos"),
    ("--constraint", "constraint", str, "EXPR", "sbatch --constraint (node features, e.g. a100)"),
]  # fmt: skip


def _slurm_changes(args: argparse.Namespace, sweep: SweepConfig) -> dict[str, Any]:
    """The slurm-section keys set by flags."""
    changes: dict[str, Any] = {}
    for _, key, *_ in _SLURM_FLAGS:
        value = getattr(args, f"slurm_{key}", None)
        if value is not None:
            changes[key] = value
    if getattr(args, "slurm_cluster", None) is not None:
        changes["cluster"] = args.slurm_cluster
    sbatch = getattr(args, "slurm_sbatch", [])
    if sbatch:
        extra = dict(sweep.slurm.additional_parameters)
        for item in sbatch:
            key, sep, text = item.partition("=")
            key = key.strip().lstrip("-")
            if not key:
                raise SweepConfigError(
                    f"--sbatch {item!r}: expected OPTION or OPTION=VALUE (e.g. mail-type=END)"
                )
            extra[key] = text if sep else True  # passed to sbatch as written
        changes["additional_parameters"] = extra
    setup = getattr(args, "slurm_setup", [])
    if setup:
        changes["setup"] = [*sweep.slurm.setup, *setup]
    return changes


def _slurm_flags_given(args: argparse.Namespace) -> list[str]:
    given = [flag for flag, key, *_ in _SLURM_FLAGS if getattr(args, f"slurm_{key}", None) is not None]
    for flag, dest in (
        ("--sbatch", "slurm_sbatch"),
        ("--setup", "slurm_setup"),
        ("--cluster", "slurm_cluster"),
    ):
        if getattr(args, dest, None):
            given.append(flag)
    return given


def _load(args: argparse.Namespace, *, status: bool = False) -> SweepConfig:
    if args.config and args.preset:
        raise SweepConfigError("give either CONFIG or --preset NAME, not both")
    sets = list(args.sets)
    if getattr(args, "loggers", None):
        sets.append(f"loggers=[{', '.join(dict.fromkeys(args.loggers))}]")
    options: dict[str, Any] = {
        "data_dir": args.data_dir,
        "sets": sets,
        "allow_missing_data_dir": args.dry_run or status,
    }
    if not args.config and not args.preset:
        saved = args.out / "runs" / "sweep.yaml" if status and args.out is not None else None
        if saved is None or not saved.is_file():
            where = f" (or --out DIR of a sweep that has run: {saved} does not exist)" if saved else ""
            raise SweepConfigError(
                f"give a sweep: CONFIG (a YAML file) or --preset NAME ({', '.join(_presets())}){where}"
            )
        sweep = load_sweep(saved, **options)
    elif args.preset:
        sweep = load_preset(args.preset, **options)
    else:
        path = Path(args.config)
        if not path.exists() and args.config in _presets():
            raise SweepConfigError(
                f"no file {args.config!r}; for the shipped preset use --preset {args.config}"
            )
        sweep = load_sweep(path, **options)
    return update_slurm(sweep, _slurm_changes(args, sweep))


def _launcher_text(args: argparse.Namespace, sweep: SweepConfig) -> str:
    if args.launcher == "slurm":
        from poolkit.experiments.launchers.slurm import slurm_parameters

        params = slurm_parameters(sweep.slurm, sweep.slurm.job_name or f"poolkit-{sweep.name}")
        return f"slurm launcher ({sweep.slurm.cluster}): " + ", ".join(f"{k}={v}" for k, v in params.items())
    from poolkit.experiments.launchers.local import default_threads

    workers = args.workers or sweep.local.workers
    return f"local launcher: {workers} worker(s), {default_threads(workers)} torch thread(s) each"


def _status(args: argparse.Namespace) -> int:
    from poolkit.experiments.grid import expand_sweep
    from poolkit.experiments.sweep import format_status, sweep_status

    try:
        sweep = _load(args, status=True)
        out_dir = args.out if args.out is not None else _DEFAULT_ROOT / sweep.name
        statuses = sweep_status(expand_sweep(sweep), out_dir)
    except ValueError as exc:
        if not is_user_error(exc):
            raise  # raised inside torch or another package: an internal error keeps its traceback
        print(f"poolkit: error: {exc}", file=sys.stderr)
        return 2
    print(f"Sweep {sweep.name!r}: " + format_status(statuses, out_dir))
    return 0


def _run(args: argparse.Namespace, *, report: bool) -> int:
    from poolkit.experiments.runner import LauncherError
    from poolkit.experiments.sweep import format_plan, run_sweep

    if getattr(args, "status", False):
        return _status(args)
    try:
        sweep = _load(args)
        out_dir = args.out if args.out is not None else _DEFAULT_ROOT / sweep.name
        given = _slurm_flags_given(args)
        if given and args.launcher != "slurm":
            raise SweepConfigError(
                f"{', '.join(given)} applies to --launcher slurm only (add --launcher slurm, or drop it)"
            )
        if args.no_wait and args.launcher != "slurm":
            raise SweepConfigError("--no-wait applies to --launcher slurm only")
        if args.workers and args.launcher != "local":
            raise SweepConfigError(
                "--workers applies to --launcher local only (SLURM runs one run per array task)"
            )
        result = run_sweep(
            sweep,
            out_dir,
            launcher=args.launcher,
            workers=args.workers,
            retry_failed=args.retry_failed,
            dry_run=args.dry_run,
            wait=not args.no_wait,
        )
    except (ValueError, LauncherError) as exc:
        print(f"poolkit: error: {exc}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(format_plan(result, _launcher_text(args, sweep)))
        if any("${data_dir}" in str(s.config.get("data_dir")) for s in result.specs):
            print("\nnote: data_dir is not set; pass --data-dir DIR to run this sweep")
        return 0
    print(result.summary())
    if result.interrupted or result.pending or result.count("busy"):
        return result.exit_code
    if report and not _report(result.runs_dir, out_dir / "report"):
        return max(result.exit_code, 1)
    return result.exit_code


def _report(runs_dir: Path, report_dir: Path) -> bool:
    """Write the report; False (with the reason on stderr) when it could not be written."""
    try:
        from poolkit.report import build_report

        path = build_report(runs_dir, report_dir)
    except Exception:
        traceback.print_exc()
        print(
            f"\nthe report could not be written; the runs are safe in {runs_dir}. Once fixed, rebuild it "
            f"with: poolkit report {runs_dir} --out {report_dir}",
            file=sys.stderr,
        )
        return False
    print(f"\nReport: {path}")
    return True


def main(args: argparse.Namespace) -> int:
    """``poolkit sweep``."""
    return _run(args, report=False)


def reproduce_main(args: argparse.Namespace) -> int:
    """``poolkit reproduce``: the sweep, then the report."""
    return _run(args, report=True)
