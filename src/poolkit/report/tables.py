"""The report's tables as rows of text cells: Table 1 (accuracy and paired Δ per dataset), the variants,
the ablation grids, parameters, timing, shift, learned parameters and the runs that did not finish.

Each function returns ``(header, rows)``; :mod:`poolkit.report.document` lays them out as Markdown or
HTML. The numbers come from :func:`poolkit.report.grouping.collect`.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from poolkit.report.formatting import format_comparison, format_number, method_title, seed_list
from poolkit.report.grouping import (
    AccuracyRow,
    Column,
    Group,
    LearnedRow,
    OverheadRow,
    ReportData,
    ablation_grids,
    comparison_verdict,
)
from poolkit.report.runs import options_label
from poolkit.report.stats import Summary, t_quantile

__all__ = [
    "TableRows",
    "ablation_row_label",
    "ablation_table",
    "format_delta",
    "learned_table",
    "params_table",
    "problem_runs_table",
    "resolution_sentence",
    "shift_table",
    "table1",
    "timing_table",
    "variants_table",
]


def format_delta(row: AccuracyRow) -> str:
    """Table 1's Δ cell of ``row`` (see :func:`format_comparison`)."""
    return format_comparison(row.comparison, row.verdict, row.p_holm, row.family_size)


def resolution_sentence(data: ReportData, column: Column) -> str:
    """Say plainly what size of Δ this column's seeds can resolve (or that they resolve nothing)."""
    rows = [r for r in data.accuracy_in(column, table1_only=True) if r.comparison is not None]
    if not rows:
        return ""
    ns = sorted({r.comparison.n for r in rows if r.comparison})
    widths = [r.comparison.half_width for r in rows if r.comparison and r.comparison.half_width is not None]
    where = column.full_title
    if max(ns) <= 1:
        return (
            f"**{where}: n = 1 seed per method, so there is no confidence interval and no p-value.** Each Δ "
            "is a single pair of runs and cannot be told apart from seed-to-seed noise; run more seeds "
            "before reading anything into these differences."
        )
    n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
    level = round(data.confidence * 100)
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r.verdict] += 1
    tally = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
    if widths:
        median = statistics.median(widths)
        span = f"{min(widths):.2f}–{max(widths):.2f}" if len(widths) > 1 else f"{widths[0]:.2f}"
        text = (
            f"{where}: {n_text} paired seeds; the {level}% intervals of Δ have half-widths {span} points "
            f"(median {median:.2f}), so a Δ smaller than about {median:.2f} points cannot be resolved from "
            f"seed-to-seed noise by this sweep ({tally})."
        )
    else:
        text = f"{where}: {n_text} paired seeds, but no Δ has an interval ({tally})."
    smallest = min(n for n in ns if n >= 2)
    if smallest <= 3:
        q = t_quantile(smallest - 1, data.confidence)
        text = (
            f"**Few seeds.** {text} With {smallest} seeds an interval is wide (its half-width is {q:.2f} "
            "standard errors); more seeds narrow it."
        )
    if 1 in ns:
        text += " Methods with a single shared seed have no interval at all."
    if any(r.comparison is not None and r.comparison.zero_spread for r in rows):
        text += (
            " Where every seed gave the same Δ (accuracies move in steps of 100 / test images), the spread "
            "is zero and a t-interval would be meaningless, so none is given."
        )
    return text


def _summary_cell(summary: Summary, best: bool) -> str:
    mean = format_number(summary.mean)
    mean = f"**{mean}**" if best else mean
    if summary.std is None:
        return f"{mean} (n=1)"
    return f"{mean} ± {format_number(summary.std)} (n={summary.n})"


def table1(data: ReportData, model: str) -> tuple[list[str], list[list[str]]]:
    """Table 1 of one model: ``(header, rows)`` with a mean and a Δ column per dataset."""
    columns = [c for c in data.columns if c.model == model]
    header = ["Method"]
    for c in columns:
        header += [f"{c.title} top-1 (%)", f"Δ vs max, {round(data.confidence * 100)}% CI (paired)"]
    keys: list[tuple[Any, ...]] = []
    titles: dict[tuple[Any, ...], str] = {}
    cells: dict[tuple[tuple[Any, ...], Column], AccuracyRow] = {}
    best: dict[Column, float] = {}
    for c in columns:
        rows = data.accuracy_in(c, table1_only=True)
        if rows:
            best[c] = max(r.summary.mean for r in rows)
        for r in rows:
            key = r.group.sort_key()
            if key not in titles:
                keys.append(key)
                titles[key] = r.group.title
            cells[(key, c)] = r
    out = []
    for key in sorted(keys):
        line = [titles[key]]
        for c in columns:
            r = cells.get((key, c))
            if r is None:
                line += ["—", "—"]
                continue
            line.append(_summary_cell(r.summary, math.isclose(r.summary.mean, best[c])))
            line.append("— (baseline)" if r.group.is_baseline else format_delta(r))
        out.append(line)
    return header, out


# ------------------------------------------------------------------------- the report's other tables

TableRows = tuple[list[str], list[list[str]]]


def variants_table(data: ReportData) -> TableRows:
    """Runs at non-default options that neither Table 1 nor a K × T grid shows, with their Δ to max."""
    header = [
        "Model, dataset",
        "Method",
        "Options",
        "top-1 (%)",
        "Seeds paired with max",
        "Δ vs max (paired)",
    ]
    in_grids = {id(g) for _, _, groups in ablation_grids(data) for g in groups}
    rows = []
    for column in data.columns:
        for r in data.accuracy_in(column):
            if not r.in_table1 and id(r.group) not in in_grids:
                paired = "—" if r.comparison is None else seed_list(r.comparison.seeds) or "none"
                rows.append(
                    [
                        column.full_title,
                        method_title(r.group.pool),
                        options_label(r.group.resolved_options),
                        _summary_cell(r.summary, False),
                        paired,
                        format_delta(r),
                    ]
                )
    return header, rows


def ablation_row_label(k: int) -> str:
    """``"K=2"``; the K = 1 row says that it is max pooling (T_1 = M, so y = M for every threshold)."""
    return "K=1 (= max pooling)" if k == 1 else f"K={k}"


def ablation_table(data: ReportData, column: Column, groups: Sequence[Group]) -> TableRows:
    """The K x T grid of mean top-1 as text (rows K, columns T)."""
    ks = sorted({g.resolved_options["k"] for g in groups})
    ts = sorted({g.resolved_options["threshold"] for g in groups})
    cells = {
        (g.resolved_options["k"], g.resolved_options["threshold"]): data.row_for(g).summary for g in groups
    }
    best = max(s.mean for s in cells.values())
    header = ["K \\ T", *[f"T={t:g}" for t in ts]]
    rows = []
    for k in ks:
        line = [ablation_row_label(k)]
        for t in ts:
            s = cells.get((k, t))
            line.append("—" if s is None else _summary_cell(s, math.isclose(s.mean, best)))
        rows.append(line)
    return header, rows


def params_table(data: ReportData, model: str) -> TableRows:
    """Learnable parameters per pooling layer and in total, one row per method (first dataset that has it)."""
    header = [
        "Method",
        "Pool layers",
        "Learnable params per pool layer",
        "Pool params",
        "All params",
        "Δ params vs max",
    ]
    seen: dict[tuple[Any, ...], OverheadRow] = {}
    for r in data.overhead:
        if r.group.column.model == model and data.row_for(r.group).in_table1:
            known = seen.get(r.group.sort_key())
            if known is None or (known.params_delta is None and r.params_delta is not None):
                seen[r.group.sort_key()] = r
    rows = []
    for key in sorted(seen):
        r = seen[key]
        per_layer = " / ".join(f"{p:,}" for p in r.layer_params) if r.layer_params else "—"
        rows.append(
            [
                r.group.title,
                "—" if r.pool_layers is None else str(r.pool_layers),
                per_layer,
                _int(r.pool_params),
                _int(r.params),
                "—" if r.params_delta is None else f"{r.params_delta:+,}",
            ]
        )
    return header, rows


def _int(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


def _rel(value: float | None, rel: float | None, unit: str, digits: int = 2) -> str:
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}{unit}"
    return f"{text} ({rel:.2f}×)" if rel is not None else text


def timing_table(data: ReportData, model: str) -> TableRows:
    """Seconds per epoch, images per second and peak memory, each with its ratio to max of the same sweep."""
    columns = [c for c in data.columns if c.model == model]
    header = ["Method"]
    for c in columns:
        header += [f"{c.title}: s/epoch (× max)", "images/s (× max)", "peak memory MiB (× max)"]
    by_key: dict[tuple[Any, ...], dict[Column, OverheadRow]] = defaultdict(dict)
    titles: dict[tuple[Any, ...], str] = {}
    for r in data.overhead:
        if r.group.column.model == model and data.row_for(r.group).in_table1:
            by_key[r.group.sort_key()][r.group.column] = r
            titles[r.group.sort_key()] = r.group.title
    rows = []
    for key in sorted(by_key):
        line = [titles[key]]
        for c in columns:
            r = by_key[key].get(c)
            if r is None:
                line += ["—"] * 3
                continue
            line += [
                _rel(r.epoch_seconds, r.epoch_seconds_rel, " s"),
                _rel(r.images_per_second, r.images_per_second_rel, "", 0),
                _rel(r.peak_memory_mib, r.peak_memory_rel, "", 0),
            ]
        rows.append(line)
    return header, rows


def shift_table(data: ReportData, column: Column) -> TableRows:
    """Consistency, its paired Δ to max and accuracy under each diagonal shift, per method."""
    rows_in = sorted((r for r in data.shift if r.group.column == column), key=lambda r: r.group.sort_key())
    shifts = sorted({k for r in rows_in for k in r.accuracy_by_shift})
    level = round(data.confidence * 100)
    header = [
        "Method",
        "Consistency (%)",
        f"Δ vs max, {level}% CI (paired)",
        *[f"top-1 @ {d} px" for d in shifts],
    ]
    rows = []
    for r in rows_in:
        c = r.comparison
        if r.group.is_baseline:
            delta = "— (baseline)"
        else:
            delta = format_comparison(c, comparison_verdict(c, None, 1.0 - data.confidence))
        acc = [format_number(r.accuracy_by_shift.get(d)) for d in shifts]
        rows.append([r.group.title, _summary_cell(r.summary, False), delta, *acc])
    return header, rows


def learned_table(data: ReportData, column: Column) -> TableRows:
    """Rows (method, parameter), columns pooling layers from input to output: ``mean [min, max]``."""
    rows_in = [r for r in data.learned if r.group.column == column and data.row_for(r.group).in_table1]
    depths = sorted({r.depth for r in rows_in})
    names: dict[int, str] = {}
    for r in rows_in:
        names.setdefault(r.depth, r.layer)
    header = ["Method", "Parameter", *[f"{d}: {names[d]}" for d in depths]]
    grouped: dict[tuple[Any, ...], dict[int, LearnedRow]] = defaultdict(dict)
    titles: dict[tuple[Any, ...], tuple[str, str]] = {}
    for r in rows_in:
        key = (*r.group.sort_key(), r.parameter)
        grouped[key][r.depth] = r
        titles[key] = (r.group.title, r.parameter)
    rows = []
    for key in sorted(grouped):
        cells = []
        for d in depths:
            r = grouped[key].get(d)
            cells.append("—" if r is None else f"{r.mean:.3f} [{r.minimum:.3f}, {r.maximum:.3f}]")
        rows.append([*titles[key], *cells])
    return header, rows


def problem_runs_table(data: ReportData) -> TableRows:
    """Failed, incomplete and unreadable runs, and finished runs with a problem (duplicates, bad "
    "shift.json)."""
    header = ["Run", "Status", "Model", "Dataset", "Method", "Seed", "What happened"]
    rows = []
    for run in sorted(data.runs, key=lambda r: str(r.path)):
        if run.status == "failed":
            detail = f"failed after {run.epochs_done} epoch(s): {run.error_line}"
        elif run.status == "diverged":
            detail = (
                f"diverged at {run.divergence}: training stopped there; its checkpoint holds the last "
                f"finite weights ({run.epochs_done} epoch(s)); left out of the statistics"
            )
        elif run.status == "incomplete":
            planned = f" of {run.epochs_planned}" if run.epochs_planned else ""
            detail = (
                f"no result.json or error.json (still running or killed); {run.epochs_done}{planned} "
                "epoch(s) in metrics.csv"
            )
        elif run.status == "unreadable":
            detail = "; ".join(run.problems)
        elif run.path in data.duplicates:
            detail = (
                f"same settings and seed as `{data.duplicates[run.path].name}`: left out of the statistics "
                "(the report keeps the first by path)"
            )
        elif run.problems:
            detail = "; ".join(run.problems)
        else:
            continue
        rows.append(
            [
                f"`{run.name}`",
                run.status,
                run.model or "?",
                run.dataset or "?",
                run.pool or "?",
                "?" if run.seed is None else str(run.seed),
                detail,
            ]
        )
    return header, rows
