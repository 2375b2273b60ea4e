"""``poolkit report RUNS_DIR [--out DIR]``: the report of every run directory under RUNS_DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poolkit.report.builder import build_report
from poolkit.report.runs import find_run_dirs

__all__ = ["add_arguments", "default_out_dir", "main"]


def default_out_dir(runs_dir: Path) -> Path:
    """``OUT/report`` for a sweep's ``OUT/runs`` (as ``poolkit reproduce`` writes it), else "
    "``RUNS_DIR/report``."""
    return runs_dir.parent / "report" if runs_dir.name == "runs" else runs_dir / "report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-command's arguments to ``parser`` (``poolkit`` wires it as a sub-command)."""
    parser.add_argument(
        "runs_dir",
        type=Path,
        metavar="RUNS_DIR",
        help="a directory holding run directories, searched recursively (e.g. a sweep's OUT/runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to write report.md, report.html, figures/ and the CSV tables "
        "(default: OUT/report for OUT/runs, else RUNS_DIR/report)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.95, help="level of the confidence intervals (default 0.95)"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``poolkit report``; 0 on success, 2 for a bad argument."""
    runs_dir: Path = args.runs_dir
    if not runs_dir.is_dir():
        print(
            f"poolkit report: {runs_dir} is not a directory (give the sweep's runs/ directory)",
            file=sys.stderr,
        )
        return 2
    if not 0.0 < args.confidence < 1.0:
        print(f"poolkit report: --confidence must be in (0, 1), got {args.confidence}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else default_out_dir(runs_dir)
    if not find_run_dirs(runs_dir):
        print(
            f"poolkit report: warning: no run directories under {runs_dir} (a run directory holds "
            "config.yaml, metrics.csv, result.json or error.json); the report will only show the method "
            "gallery",
            file=sys.stderr,
        )
    path = build_report(runs_dir, out, confidence=args.confidence)
    print(f"report: {path}")
    print(f"        {path.with_name('report.md')}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="poolkit report", description=__doc__)
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
