"""From run records to the report's numbers: groups of seeds, paired comparisons, the rows of every table.

Runs are grouped by *column* (model, dataset, variant) and *method* (pool name and its non-default
options). ``variant`` names the config keys (epochs, width, lr, ...) that differ between the finished
runs of one model and dataset, so runs trained differently are never averaged together.
Table 1 compares every method of a column with that column's ``max`` group, paired by seed
(:func:`poolkit.report.stats.paired_comparison`), and Holm-corrects the p-values of the methods shown
in one column.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolkit.report.formatting import (
    BASELINE,
    dataset_order,
    dataset_title,
    method_order,
    method_title,
    model_order,
    model_title,
    seed_list,
    seed_word,
)
from poolkit.report.runs import RunRecord, canonical_options, resolved_options
from poolkit.report.stats import PairedComparison, Summary, holm, paired_comparison, summarize
from poolkit.train.config import NON_RESULT_KEYS

__all__ = [
    "AccuracyRow",
    "Column",
    "Group",
    "LearnedRow",
    "OverheadRow",
    "ReportData",
    "ShiftRow",
    "ablation_grids",
    "collect",
    "comparison_verdict",
]

#: Config keys that never change what a run computes, and the grouping keys themselves.
_NOT_A_VARIANT = NON_RESULT_KEYS | {
    "seed",
    "pool",
    "pool_options",
    "model",
    "dataset",
    "shift_eval",
    "progress",
}


@dataclass(frozen=True, order=True)
class Column:
    """One model, dataset and variant: the runs whose accuracies may be compared."""

    model: str
    dataset: str
    variant: str = ""

    @property
    def title(self) -> str:
        text = dataset_title(self.dataset)
        return f"{text} ({self.variant})" if self.variant else text

    @property
    def full_title(self) -> str:
        return f"{model_title(self.model)}, {self.title}"

    @property
    def slug(self) -> str:
        parts = [self.model, self.dataset]
        if self.variant:
            parts.append("".join(ch if ch.isalnum() or ch in ".-" else "_" for ch in self.variant))
        return "_".join(parts)

    def sort_key(self) -> tuple[Any, ...]:
        return (model_order(self.model), dataset_order(self.dataset), self.variant)


@dataclass
class Group:
    """The finished runs of one method (with one set of options) in one column, one per seed."""

    column: Column
    pool: str
    options: dict[str, Any]
    runs: list[RunRecord]
    duplicates: list[RunRecord] = field(default_factory=list)

    @property
    def title(self) -> str:
        return method_title(self.pool, self.options)

    @property
    def is_baseline(self) -> bool:
        return self.pool == BASELINE and not self.options

    @property
    def resolved_options(self) -> dict[str, Any]:
        return resolved_options(self.pool, self.options)

    @property
    def top1(self) -> dict[int, float]:
        return {r.seed: r.test_top1 for r in self.runs if r.seed is not None and r.test_top1 is not None}

    @property
    def seeds(self) -> list[int]:
        return sorted(self.top1)

    def sort_key(self) -> tuple[Any, ...]:
        """The study's method order, default options first, then by option values (numbers numerically)."""
        values = tuple(
            (
                k,
                (0, float(v), "")
                if isinstance(v, (int, float)) and not isinstance(v, bool)
                else (1, 0.0, str(v)),
            )
            for k, v in sorted(self.resolved_options.items())
        )
        return (method_order(self.pool), bool(self.options), values)


@dataclass
class AccuracyRow:
    """One group's accuracy and its paired comparison with the column's max group."""

    group: Group
    summary: Summary
    in_table1: bool
    comparison: PairedComparison | None = None
    p_holm: float | None = None
    family_size: int = 0
    verdict: str = ""


@dataclass
class OverheadRow:
    """Parameters, timing and memory of one group; ``*_rel`` are ratios to max of the same sweep."""

    group: Group
    pool_layers: int | None
    layer_params: list[int]
    pool_params: int | None
    params: int | None
    params_delta: int | None
    epoch_seconds: float | None
    epoch_seconds_rel: float | None
    images_per_second: float | None
    images_per_second_rel: float | None
    peak_memory_mib: float | None
    peak_memory_rel: float | None
    warmup_excluded: str  # "all", "none" or "some"
    note: str = ""


@dataclass
class ShiftRow:
    """Shift consistency of one group over its seeds, its paired Δ to max, and accuracy by shift."""

    group: Group
    summary: Summary
    values: dict[int, float]
    comparison: PairedComparison | None
    accuracy_by_shift: dict[int, float]
    max_shift: int | None
    images: int | None


@dataclass
class LearnedRow:
    """One learned parameter of one pooling layer of one group: mean, min, max over channels and seeds."""

    group: Group
    layer: str
    depth: int
    parameter: str
    mean: float
    minimum: float
    maximum: float
    count: int
    seeds: int


@dataclass
class ReportData:
    """Everything the tables and figures show, computed once from the run records."""

    runs: list[RunRecord]
    groups: list[Group]
    accuracy: list[AccuracyRow]
    overhead: list[OverheadRow]
    shift: list[ShiftRow]
    learned: list[LearnedRow]
    confidence: float
    notes: dict[Column, list[str]]
    #: run directory left out of the statistics -> the run of the same settings and seed that was kept
    duplicates: dict[Path, RunRecord]

    @property
    def finished(self) -> list[RunRecord]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def columns(self) -> list[Column]:
        return sorted({g.column for g in self.groups}, key=Column.sort_key)

    @property
    def models(self) -> list[str]:
        return sorted({c.model for c in self.columns}, key=model_order)

    def groups_in(self, column: Column) -> list[Group]:
        return sorted((g for g in self.groups if g.column == column), key=Group.sort_key)

    def accuracy_in(self, column: Column, table1_only: bool = False) -> list[AccuracyRow]:
        rows = [r for r in self.accuracy if r.group.column == column and (r.in_table1 or not table1_only)]
        return sorted(rows, key=lambda r: r.group.sort_key())

    def row_for(self, group: Group) -> AccuracyRow:
        return next(r for r in self.accuracy if r.group is group)


def _variant_labels(runs: Sequence[RunRecord]) -> dict[Path, str]:
    """Per run, the config keys that differ among the finished runs of its model and dataset."""
    by_md: dict[tuple[str, str], list[RunRecord]] = defaultdict(list)
    for run in runs:
        by_md[(run.model or "", run.dataset or "")].append(run)
    labels: dict[Path, str] = {}
    for same in by_md.values():
        keys = sorted({k for r in same for k in r.config} - _NOT_A_VARIANT)

        def canon(run: RunRecord, key: str) -> str:
            return json.dumps(run.config.get(key), sort_keys=True, default=str)

        varying = [k for k in keys if len({canon(r, k) for r in same}) > 1]
        for run in same:
            labels[run.path] = ", ".join(f"{k}={run.config.get(k)}" for k in varying)
    return labels


def _make_groups(finished: Sequence[RunRecord]) -> tuple[list[Group], dict[Path, RunRecord]]:
    labels = _variant_labels(finished)
    buckets: dict[tuple[Column, str, str], Group] = {}
    duplicates: dict[Path, RunRecord] = {}
    for run in sorted(finished, key=lambda r: str(r.path)):
        assert run.model and run.dataset and run.pool  # guaranteed for finished runs by read_run
        options = canonical_options(run.pool, run.pool_options)
        column = Column(run.model, run.dataset, labels[run.path])
        key = (column, run.pool, json.dumps(options, sort_keys=True, default=str))
        group = buckets.setdefault(key, Group(column, run.pool, options, []))
        kept = next((r for r in group.runs if r.seed == run.seed), None)
        if kept is not None:
            group.duplicates.append(run)
            duplicates[run.path] = kept
        else:
            group.runs.append(run)
    return sorted(buckets.values(), key=lambda g: (g.column.sort_key(), g.sort_key())), duplicates


def _in_table1(groups: Sequence[Group]) -> set[int]:
    """Table 1 shows each method at its default options when such runs exist, else every variant."""
    chosen: set[int] = set()
    by_method: dict[tuple[Column, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_method[(g.column, g.pool)].append(g)
    for variants in by_method.values():
        defaults = [g for g in variants if not g.options]
        chosen.update(id(g) for g in (defaults or variants))
    return chosen


def comparison_verdict(comparison: PairedComparison | None, p_holm: float | None, alpha: float) -> str:
    """The word Table 1 puts after a Δ: ``"significant"``, ``"inconclusive"`` (the interval holds 0),
    ``"not significant after Holm"`` (``p_holm >= alpha``), or why there is no interval."""
    if comparison is None:
        return ""
    if comparison.n == 0:
        return "no seed shared with max"
    if comparison.n == 1:
        return "n=1, no interval"
    if comparison.zero_spread:
        return f"same Δ for all {comparison.n} seeds, no interval"
    if comparison.inconclusive:
        return "inconclusive"
    if p_holm is not None and p_holm >= alpha:
        return "not significant after Holm"
    return "significant"


def _accuracy_rows(
    groups: Sequence[Group], confidence: float
) -> tuple[list[AccuracyRow], dict[Column, list[str]]]:
    table1 = _in_table1(groups)
    rows = [AccuracyRow(g, summarize(list(g.top1.values()), confidence), id(g) in table1) for g in groups]
    notes: dict[Column, list[str]] = defaultdict(list)
    by_column: dict[Column, list[AccuracyRow]] = defaultdict(list)
    for row in rows:
        by_column[row.group.column].append(row)
    for column, col_rows in by_column.items():
        baseline = next((r for r in col_rows if r.group.is_baseline), None)
        if baseline is None:
            notes[column].append(
                f"No {method_title(BASELINE)} runs for {column.full_title}: no Δ can be computed."
            )
            continue
        for row in col_rows:
            if row is baseline:
                continue
            row.comparison = paired_comparison(row.group.top1, baseline.group.top1, confidence)
            c = row.comparison
            if row.in_table1 and (c.only_a or c.only_b):
                parts = [f"paired on seed{'s' if c.n != 1 else ''} {seed_list(c.seeds) or 'none'}"]
                if c.only_b:
                    parts.append(f"{seed_word(c.only_b)} {seed_list(c.only_b)} only for max")
                if c.only_a:
                    parts.append(f"{seed_word(c.only_a)} {seed_list(c.only_a)} only for this method")
                notes[column].append(f"{row.group.title} ({column.title}): " + "; ".join(parts) + ".")
        # Holm families: Table 1's methods of the column; each method's other option settings apart.
        families: dict[str, list[AccuracyRow]] = defaultdict(list)
        for row in col_rows:
            if row.comparison is not None:
                families["table1" if row.in_table1 else f"variants:{row.group.pool}"].append(row)
        for family in families.values():
            adjusted = holm([r.comparison.p if r.comparison else None for r in family])
            size = sum(p is not None for p in adjusted)
            for row, p_adj in zip(family, adjusted, strict=True):
                row.p_holm = p_adj
                row.family_size = size
                row.verdict = comparison_verdict(row.comparison, p_adj, 1.0 - confidence)
    return rows, notes


def _mean(values: Iterable[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return sum(clean) / len(clean) if clean else None


def _same_sweep_ratio(
    group: Group, baseline: Group | None, value: Callable[[RunRecord], float | None]
) -> float | None:
    """Mean over sweeps of (group's mean / baseline's mean in the same sweep)."""
    if baseline is None:
        return None
    ratios = []
    for sweep in sorted({r.sweep for r in group.runs}):
        mine = _mean(value(r) for r in group.runs if r.sweep == sweep)
        ref = _mean(value(r) for r in baseline.runs if r.sweep == sweep)
        if mine is not None and ref:
            ratios.append(mine / ref)
    return _mean(ratios)


def _overhead_rows(groups: Sequence[Group]) -> list[OverheadRow]:
    rows = []
    baselines = {g.column: g for g in groups if g.is_baseline}
    for group in groups:
        base = baselines.get(group.column)
        first = group.runs[0]
        layers = first.result.get("pool_layers") if first.result else None
        layer_params = (
            [int(layer.get("params") or 0) for layer in layers if isinstance(layer, dict)]
            if isinstance(layers, list)
            else []
        )
        pool_params = first.value("pool_params")
        params = first.value("params")
        base_params = base.runs[0].value("params") if base else None

        def epoch_s(r: RunRecord) -> float | None:
            return r.steady("epoch_seconds")[0] or r.value("epoch_seconds_mean")

        def ips(r: RunRecord) -> float | None:
            return r.steady("images_per_second")[0] or r.value("images_per_second_mean")

        def memory(r: RunRecord) -> float | None:
            return r.peak_memory_bytes

        excluded = {r.steady("epoch_seconds")[1] for r in group.runs if r.column("epoch_seconds")}
        note = ""
        if base is None:
            note = "no max runs, so no ratios to max"
        elif not {r.sweep for r in group.runs} & {r.sweep for r in base.runs}:
            note = f"{group.title} has no max runs in the same sweep directory, so no timing ratio"
        mem = _mean(memory(r) for r in group.runs)
        rows.append(
            OverheadRow(
                group=group,
                pool_layers=len(layers) if isinstance(layers, list) else None,
                layer_params=layer_params,
                pool_params=int(pool_params) if pool_params is not None else None,
                params=int(params) if params is not None else None,
                params_delta=int(params - base_params)
                if params is not None and base_params is not None
                else None,
                epoch_seconds=_mean(epoch_s(r) for r in group.runs),
                epoch_seconds_rel=_same_sweep_ratio(group, base, epoch_s),
                images_per_second=_mean(ips(r) for r in group.runs),
                images_per_second_rel=_same_sweep_ratio(group, base, ips),
                peak_memory_mib=mem / 2**20 if mem is not None else None,
                peak_memory_rel=_same_sweep_ratio(group, base, memory),
                warmup_excluded="all"
                if excluded == {True}
                else "none"
                if excluded in ({False}, set())
                else "some",
                note=note,
            )
        )
    return rows


def _shift_rows(groups: Sequence[Group], confidence: float) -> list[ShiftRow]:
    consistency = {
        id(g): {r.seed: r.shift["consistency"] for r in g.runs if r.shift and r.seed is not None}
        for g in groups
    }
    baselines = {g.column: g for g in groups if g.is_baseline}
    rows = []
    for group in groups:
        values = consistency[id(group)]
        if not values:
            continue
        base = baselines.get(group.column)
        comparison = None
        if base is not None and base is not group and consistency[id(base)]:
            comparison = paired_comparison(values, consistency[id(base)], confidence)
        by_shift: dict[int, list[float]] = defaultdict(list)
        max_shifts, images = set(), set()
        for run in group.runs:
            if not run.shift:
                continue
            for k, v in run.shift["accuracy_by_shift"].items():
                if k.lstrip("-").isdigit():
                    by_shift[int(k)].append(v)
            max_shifts.add(run.shift.get("max_shift"))
            images.add(run.shift.get("images"))
        rows.append(
            ShiftRow(
                group=group,
                summary=summarize(list(values.values()), confidence),
                values=values,
                comparison=comparison,
                accuracy_by_shift={k: sum(v) / len(v) for k, v in sorted(by_shift.items())},
                max_shift=max_shifts.pop() if len(max_shifts) == 1 else None,
                images=images.pop() if len(images) == 1 else None,
            )
        )
    return rows


def _layer_order(run: RunRecord, learned: dict[str, Any]) -> list[str]:
    layers = run.result.get("pool_layers") if run.result else None
    names = (
        [str(layer.get("name")) for layer in layers if isinstance(layer, dict)]
        if isinstance(layers, list)
        else []
    )
    ordered = [n for n in names if n in learned]
    return ordered + [n for n in learned if n not in ordered]


def _learned_rows(groups: Sequence[Group]) -> list[LearnedRow]:
    rows = []
    for group in groups:
        collected: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
        order: list[str] = []
        for run in group.runs:
            learned = run.result.get("learned") if run.result else None
            if not isinstance(learned, dict):
                continue
            for layer in _layer_order(run, learned):
                entry = learned[layer]
                values = entry.get("values") if isinstance(entry, dict) else None
                if not isinstance(values, dict):
                    continue
                if layer not in order:
                    order.append(layer)
                for name, numbers in values.items():
                    flat = [
                        float(v)
                        for v in (numbers if isinstance(numbers, list) else [numbers])
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    ]
                    if flat:
                        collected[(layer, str(name))].append(flat)
        for (layer, name), per_seed in collected.items():
            every = [v for seed_values in per_seed for v in seed_values]
            rows.append(
                LearnedRow(
                    group=group,
                    layer=layer,
                    depth=order.index(layer) + 1,
                    parameter=name,
                    mean=sum(every) / len(every),
                    minimum=min(every),
                    maximum=max(every),
                    count=len(per_seed[0]),
                    seeds=len(per_seed),
                )
            )
    rows.sort(key=lambda r: (r.group.column.sort_key(), r.group.sort_key(), r.parameter, r.depth))
    return rows


def collect(runs: Sequence[RunRecord], confidence: float = 0.95) -> ReportData:
    """Group the finished runs and compute every table's numbers."""
    finished = [r for r in runs if r.status == "finished"]
    groups, duplicates = _make_groups(finished)
    accuracy, notes = _accuracy_rows(groups, confidence)
    return ReportData(
        runs=list(runs),
        groups=groups,
        accuracy=accuracy,
        overhead=_overhead_rows(groups),
        shift=_shift_rows(groups, confidence),
        learned=_learned_rows(groups),
        confidence=confidence,
        notes=dict(notes),
        duplicates=duplicates,
    )


def ablation_grids(data: ReportData) -> list[tuple[Column, str, list[Group]]]:
    """``(column, method, groups)`` for every method whose runs in a column vary both ``k`` and
    ``threshold`` (the study's K x T ablation of T-Max-Avg)."""
    out = []
    for column in data.columns:
        by_method: dict[str, list[Group]] = defaultdict(list)
        for g in data.groups_in(column):
            opts = g.resolved_options
            if "k" in opts and "threshold" in opts:
                by_method[g.pool].append(g)
        for method, groups in by_method.items():
            ks = {g.resolved_options["k"] for g in groups}
            ts = {g.resolved_options["threshold"] for g in groups}
            if len(ks) >= 2 and len(ts) >= 2:
                out.append((column, method, groups))
    return out
