"""The report: reads run directories (never a live trainer) and writes tables, figures, Markdown and HTML.

Example:
    >>> from poolkit.report import build_report
    >>> build_report("out/runs", "out/report")  # doctest: +SKIP
    PosixPath('out/report/report.html')
"""

from poolkit.report.builder import build_report
from poolkit.report.runs import RunRecord, load_runs, read_run

__all__ = ["RunRecord", "build_report", "load_runs", "read_run"]
