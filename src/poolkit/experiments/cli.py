"""``poolkit sweep`` and ``poolkit reproduce``.

``poolkit sweep CONFIG`` (or ``--preset NAME``) runs every unfinished run of a sweep into
``OUT/runs/`` and prints a summary; ``poolkit reproduce --preset NAME`` does the same and then writes
the report to ``OUT/report/``. Progress goes to stderr, the summary to stdout. Exit status: 0 when
every run finished, 1 when a run failed, 2 for a usage or configuration error, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import Any

from poolkit.experiments.config import SweepConfig, SweepConfigError, list_presets, load_preset, load_sweep

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
        type=_positive_int,
        metavar="N",
        help="local launcher: runs at a time, each in its own process with max(1, cores // N) torch "
        "threads (default: the sweep's local.workers, else 1); with several GPUs, worker i uses GPU i mod n",
    )
    where.add_argument("--retry-failed", action="store_true", help="run again the runs that failed before")
    where.add_argument(
        "--dry-run", action="store_true", help="list the runs and what would happen; run nothing"
    )
    where.add_argument(
        "--no-wait",
        action="store_true",
        help="slurm launcher: submit the job array and return (rerun the command to collect the results)",
    )


def _presets() -> list[str]:
    try:
        return list_presets()
    except OSError:
        return []


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``poolkit sweep``."""
    parser.description = (
        "Run a sweep: every unfinished run of the grid, into "
        "OUT/runs/<dataset>_<model>_<pool>_s<seed>_<id>/. "
        "Finished runs are skipped, interrupted ones resume from their checkpoint, failed ones are recorded "
        "in error.json while the others go on."
    )
    _add_common(parser)


def add_reproduce_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``poolkit reproduce``."""
    parser.description = (
        "Reproduce an experiment end to end: run its sweep into OUT/runs/, then write the report to "
        "OUT/report/. Start with --preset quick (about 2.5 minutes on a 2-core CPU); "
        "--preset paper is the study."
    )
    _add_common(parser)


def _load(args: argparse.Namespace) -> SweepConfig:
    if args.config and args.preset:
        raise SweepConfigError("give either CONFIG or --preset NAME, not both")
    if not args.config and not args.preset:
        raise SweepConfigError(
            f"give a sweep: CONFIG (a YAML file) or --preset NAME ({', '.join(_presets())})"
        )
    options: dict[str, Any] = {
        "data_dir": args.data_dir,
        "sets": args.sets,
        "allow_missing_data_dir": args.dry_run,
    }
    if args.preset:
        return load_preset(args.preset, **options)
    path = Path(args.config)
    if not path.exists() and args.config in _presets():
        raise SweepConfigError(f"no file {args.config!r}; for the shipped preset use --preset {args.config}")
    return load_sweep(path, **options)


def _launcher_text(args: argparse.Namespace, sweep: SweepConfig) -> str:
    if args.launcher == "slurm":
        from poolkit.experiments.launchers.slurm import slurm_parameters

        params = slurm_parameters(sweep.slurm, sweep.slurm.job_name or f"poolkit-{sweep.name}")
        return f"slurm launcher ({sweep.slurm.cluster}): " + ", ".join(f"{k}={v}" for k, v in params.items())
    from poolkit.experiments.launchers.local import default_threads

    workers = args.workers or sweep.local.workers
    return f"local launcher: {workers} worker(s), {default_threads(workers)} torch thread(s) each"


def _run(args: argparse.Namespace, *, report: bool) -> int:
    from poolkit.experiments.sweep import LauncherError, format_plan, run_sweep

    try:
        sweep = _load(args)
        out_dir = args.out if args.out is not None else _DEFAULT_ROOT / sweep.name
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
    if result.interrupted or result.pending:
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
