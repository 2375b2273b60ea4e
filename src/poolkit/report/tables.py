"""From run records to the report's numbers: groups of seeds, paired comparisons, tidy rows, CSV files.

Runs are grouped by *column* (model, dataset, variant) and *method* (pool name and its non-default
options). ``variant`` names the config keys (epochs, width, lr, ...) that differ between the finished
runs of one model and dataset, so runs trained differently are never averaged together.
Table 1 compares every method of a column with that column's ``max`` group, paired by seed
(:func:`poolkit.report.stats.paired_comparison`), and Holm-corrects the p-values of the methods shown
in one column.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolkit.registry import STUDY_METHODS
from poolkit.report.runs import RunRecord, canonical_options, options_label, resolved_options
from poolkit.report.stats import PairedComparison, Summary, holm, paired_comparison, summarize, t_quantile
from poolkit.train.config import NON_RESULT_KEYS

__all__ = [
    "PARAMETER_MEANINGS",
    "STUDY_ORDER",
    "AccuracyRow",
    "Column",
    "Group",
    "LearnedRow",
    "OverheadRow",
    "ReportData",
    "ShiftRow",
    "ablation_grids",
    "ablation_row_label",
    "ablation_table",
    "accuracy_records",
    "collect",
    "dataset_title",
    "format_comparison",
    "format_delta",
    "learned_records",
    "learned_table",
    "method_order",
    "method_title",
    "model_family",
    "model_order",
    "model_title",
    "overhead_records",
    "params_table",
    "problem_runs_table",
    "resolution_sentence",
    "run_records",
    "shift_records",
    "shift_table",
    "table1",
    "timing_table",
    "variants_table",
    "write_atomic",
    "write_csv",
    "write_tables",
]

#: The study's order of methods in Table 1; any other method follows, sorted by name.
STUDY_ORDER = STUDY_METHODS
BASELINE = "max"

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
_DATASET_TITLES = {
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "tinyimagenet": "Tiny ImageNet",
    "mnist5k": "MNIST-5k",
    "synthetic": "Synthetic",
    "imagefolder": "ImageFolder",
}
_DATASET_ORDER = ("cifar10", "cifar100", "tinyimagenet")

#: What the learned values of the adaptive methods mean, for table captions and axis labels.
PARAMETER_MEANINGS = {
    "lambda": "weight on max (1 = max, 0 = average)",
    "m": "weight on max (1 = max, 0 = average)",
    "threshold": "threshold T (activation units)",
    "p": "GeM exponent p (1 = average, large = max)",
}


# ----------------------------------------------------------------------------------------- names


def method_title(pool: str, options: dict[str, Any] | None = None) -> str:
    """The registry's ``PoolSpec.title`` (the pool name for methods this poolkit does not know),
    ``"(baseline)"`` for max, and the non-default options in parentheses."""
    from poolkit.registry import get_pool_spec

    try:
        title = get_pool_spec(pool).title
    except ValueError:
        title = pool
    if pool == BASELINE and not options:
        return f"{title} (baseline)"
    return f"{title} ({options_label(options)})" if options else title


def model_title(model: str) -> str:
    """``vgg16`` -> ``VGG16``, ``resnet18`` -> ``ResNet18``."""
    if model.startswith("vgg"):
        return "VGG" + model[3:]
    if model.startswith("resnet"):
        return "ResNet" + model[6:]
    return model


def model_family(model: str) -> str:
    """``vgg``, ``resnet`` or the model's own name: what Figure 3 compares."""
    for family in ("vgg", "resnet"):
        if model.startswith(family):
            return family
    return model


def model_order(model: str) -> tuple[int, int, str]:
    """Sort key: VGG before ResNet (the study's order), then by depth (vgg11 < vgg16 < vgg19)."""
    family = model_family(model)
    rank = {"vgg": 0, "resnet": 1}.get(family, 2)
    digits = model[len(family) :]
    return (rank, int(digits) if digits.isdigit() else 0, model)


def dataset_title(dataset: str) -> str:
    """``cifar100`` -> ``CIFAR-100``; unknown names are kept as they are."""
    return _DATASET_TITLES.get(dataset, dataset)


def method_order(pool: str) -> tuple[int, str]:
    """Sort key: the study's order first, then every other method by name."""
    return (STUDY_ORDER.index(pool), "") if pool in STUDY_ORDER else (len(STUDY_ORDER), pool)


def _dataset_order(dataset: str) -> tuple[int, str]:
    return (
        (_DATASET_ORDER.index(dataset), "") if dataset in _DATASET_ORDER else (len(_DATASET_ORDER), dataset)
    )


def _fmt(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "—"
    if math.isinf(value):
        return "+∞" if value > 0 else "−∞"
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    return text.replace("-", "−")


def _fmt_p(p: float | None, prefix: str = "") -> str:
    """``p=0.031`` / ``p<0.001`` (with ``prefix="p"``), ``0.031`` / ``<0.001`` without."""
    if p is None:
        return "—"
    if p < 0.001:
        return f"{prefix}<0.001"
    return f"{prefix}={p:.3f}" if prefix else f"{p:.3f}"


def format_comparison(
    c: PairedComparison | None, verdict: str, p_holm: float | None = None, family_size: int = 0
) -> str:
    """``"+0.41 [−0.90, +1.72], p=0.310 (Holm 0.930) (inconclusive)"``: a paired Δ as the tables show it."""
    if c is None:
        return "—"
    if c.n == 0:
        return "no seed shared with max"
    text = _fmt(c.mean, sign=True)
    if c.ci_low is not None:
        text += f" [{_fmt(c.ci_low, sign=True)}, {_fmt(c.ci_high, sign=True)}]"
    if c.p is not None:
        text += f", {_fmt_p(c.p, 'p')}"
        if p_holm is not None and family_size > 1:
            text += f" (Holm {_fmt_p(p_holm)})"
    return text if verdict == "significant" else f"{text} ({verdict})"


def format_delta(row: AccuracyRow) -> str:
    """Table 1's Δ cell of ``row`` (see :func:`format_comparison`)."""
    return format_comparison(row.comparison, row.verdict, row.p_holm, row.family_size)


# ------------------------------------------------------------------------------------- grouping


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
        return (model_order(self.model), _dataset_order(self.dataset), self.variant)


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


def _verdict(comparison: PairedComparison | None, p_holm: float | None, alpha: float) -> str:
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
                parts = [f"paired on seed{'s' if c.n != 1 else ''} {_seed_list(c.seeds) or 'none'}"]
                if c.only_b:
                    parts.append(f"{_seed_word(c.only_b)} {_seed_list(c.only_b)} only for max")
                if c.only_a:
                    parts.append(f"{_seed_word(c.only_a)} {_seed_list(c.only_a)} only for this method")
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
                row.verdict = _verdict(row.comparison, p_adj, 1.0 - confidence)
    return rows, notes


def _seed_word(seeds: Sequence[int]) -> str:
    return "seed" if len(seeds) == 1 else "seeds"


def _seed_list(seeds: Iterable[int]) -> str:
    return ", ".join(str(s) for s in seeds)


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


# ------------------------------------------------------------------------------------------ files


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) atomically with :func:`poolkit.atomic.atomic_write_bytes`."""
    from poolkit.atomic import atomic_write_bytes

    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """A CSV with a header of ``columns``; None becomes an empty cell, floats keep full precision."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return write_atomic(path, buffer.getvalue())


def _group_fields(group: Group) -> dict[str, Any]:
    return {
        "model": group.column.model,
        "dataset": group.column.dataset,
        "variant": group.column.variant,
        "method": group.pool,
        "title": group.title,
        "pool_options": json.dumps(group.options, sort_keys=True, default=str),
    }


_GROUP_COLUMNS = ("model", "dataset", "variant", "method", "title", "pool_options")
ACCURACY_COLUMNS = (
    *_GROUP_COLUMNS,
    "in_table1",
    "n",
    "seeds",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "paired_n",
    "paired_seeds",
    "seeds_only_method",
    "seeds_only_max",
    "delta",
    "delta_std",
    "delta_ci_low",
    "delta_ci_high",
    "t",
    "p_value",
    "p_holm",
    "holm_family_size",
    "verdict",
)
RUN_COLUMNS = (
    "run",
    "path",
    "status",
    "model",
    "dataset",
    "variant",
    "method",
    "pool_options",
    "seed",
    "epochs",
    "epochs_done",
    "test_top1",
    "test_top5",
    "test_loss",
    "train_top1",
    "train_loss",
    "seconds",
    "epoch_seconds_steady",
    "images_per_second_steady",
    "peak_memory_bytes",
    "params",
    "pool_params",
    "shift_consistency",
    "device",
    "problem",
)
OVERHEAD_COLUMNS = (
    *_GROUP_COLUMNS,
    "n",
    "pool_layers",
    "pool_params_per_layer",
    "pool_params",
    "params",
    "params_delta",
    "epoch_seconds",
    "epoch_seconds_rel",
    "images_per_second",
    "images_per_second_rel",
    "peak_memory_mib",
    "peak_memory_rel",
    "warmup_epoch_excluded",
    "note",
)
SHIFT_COLUMNS = (
    *_GROUP_COLUMNS,
    "n",
    "seeds",
    "consistency",
    "consistency_std",
    "ci_low",
    "ci_high",
    "delta",
    "delta_ci_low",
    "delta_ci_high",
    "p_value",
    "max_shift",
    "images",
    "accuracy_by_shift",
)
LEARNED_COLUMNS = (
    *_GROUP_COLUMNS,
    "layer",
    "depth",
    "parameter",
    "mean",
    "min",
    "max",
    "values_per_seed",
    "seeds",
)


def accuracy_records(data: ReportData) -> list[dict[str, Any]]:
    """The rows of ``accuracy.csv``: one per model, dataset, variant, method and options."""
    out = []
    for row in sorted(data.accuracy, key=lambda r: (r.group.column.sort_key(), r.group.sort_key())):
        c, s = row.comparison, row.summary
        out.append(
            {
                **_group_fields(row.group),
                "in_table1": row.in_table1,
                "n": s.n,
                "seeds": " ".join(map(str, row.group.seeds)),
                "mean": s.mean,
                "std": s.std,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "paired_n": c.n if c else None,
                "paired_seeds": " ".join(map(str, c.seeds)) if c else None,
                "seeds_only_method": " ".join(map(str, c.only_a)) if c else None,
                "seeds_only_max": " ".join(map(str, c.only_b)) if c else None,
                "delta": c.mean if c else None,
                "delta_std": c.std if c else None,
                "delta_ci_low": c.ci_low if c else None,
                "delta_ci_high": c.ci_high if c else None,
                "t": c.t if c else None,
                "p_value": c.p if c else None,
                "p_holm": row.p_holm,
                "holm_family_size": row.family_size if c else None,
                "verdict": row.verdict or None,
            }
        )
    return out


def run_records(data: ReportData) -> list[dict[str, Any]]:
    """The rows of ``runs.csv``: one per run directory, every status, every seed's values."""
    variant = {r.path: g.column.variant for g in data.groups for r in g.runs + g.duplicates}
    out = []
    for run in sorted(data.runs, key=lambda r: str(r.path)):
        problem = (
            run.error_line
            if run.status in ("failed", "unreadable")
            else (f"diverged at {run.divergence}" if run.status == "diverged" else "; ".join(run.problems))
        )
        if run.path in data.duplicates:
            problem = (
                f"same settings and seed as {data.duplicates[run.path].name} (left out of the statistics)"
            )
        out.append(
            {
                "run": run.name,
                "path": str(run.path),
                "status": run.status,
                "model": run.model,
                "dataset": run.dataset,
                "variant": variant.get(run.path),
                "method": run.pool,
                "pool_options": json.dumps(run.pool_options, sort_keys=True, default=str),
                "seed": run.seed,
                "epochs": run.epochs_planned,
                "epochs_done": run.epochs_done,
                "test_top1": run.test_top1,
                "test_top5": run.value("test_top5"),
                "test_loss": run.value("test_loss"),
                "train_top1": run.value("train_top1"),
                "train_loss": run.value("train_loss"),
                "seconds": run.value("seconds"),
                "epoch_seconds_steady": run.steady("epoch_seconds")[0],
                "images_per_second_steady": run.steady("images_per_second")[0],
                "peak_memory_bytes": run.peak_memory_bytes,
                "params": run.value("params"),
                "pool_params": run.value("pool_params"),
                "shift_consistency": run.shift["consistency"] if run.shift else None,
                "device": run.device,
                "problem": problem or None,
            }
        )
    return out


def overhead_records(data: ReportData) -> list[dict[str, Any]]:
    """The rows of ``overhead.csv``: parameters, timing and memory per group, with ratios to max."""
    return [
        {
            **_group_fields(r.group),
            "n": len(r.group.runs),
            "pool_layers": r.pool_layers,
            "pool_params_per_layer": " ".join(map(str, r.layer_params)),
            "pool_params": r.pool_params,
            "params": r.params,
            "params_delta": r.params_delta,
            "epoch_seconds": r.epoch_seconds,
            "epoch_seconds_rel": r.epoch_seconds_rel,
            "images_per_second": r.images_per_second,
            "images_per_second_rel": r.images_per_second_rel,
            "peak_memory_mib": r.peak_memory_mib,
            "peak_memory_rel": r.peak_memory_rel,
            "warmup_epoch_excluded": r.warmup_excluded,
            "note": r.note or None,
        }
        for r in data.overhead
    ]


def shift_records(data: ReportData) -> list[dict[str, Any]]:
    """The rows of ``shift.csv``: consistency and accuracy by shift per group with shift.json files."""
    return [
        {
            **_group_fields(r.group),
            "n": r.summary.n,
            "seeds": " ".join(map(str, sorted(r.values))),
            "consistency": r.summary.mean,
            "consistency_std": r.summary.std,
            "ci_low": r.summary.ci_low,
            "ci_high": r.summary.ci_high,
            "delta": r.comparison.mean if r.comparison else None,
            "delta_ci_low": r.comparison.ci_low if r.comparison else None,
            "delta_ci_high": r.comparison.ci_high if r.comparison else None,
            "p_value": r.comparison.p if r.comparison else None,
            "max_shift": r.max_shift,
            "images": r.images,
            "accuracy_by_shift": json.dumps({str(k): v for k, v in r.accuracy_by_shift.items()}),
        }
        for r in data.shift
    ]


def learned_records(data: ReportData) -> list[dict[str, Any]]:
    """The rows of ``learned_parameters.csv``: one per group, pooling layer and parameter."""
    return [
        {
            **_group_fields(r.group),
            "layer": r.layer,
            "depth": r.depth,
            "parameter": r.parameter,
            "mean": r.mean,
            "min": r.minimum,
            "max": r.maximum,
            "values_per_seed": r.count,
            "seeds": r.seeds,
        }
        for r in data.learned
    ]


def write_tables(data: ReportData, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write every table as a tidy CSV into ``out_dir``; returns ``{name: path}``."""
    out = Path(out_dir)
    files = {
        "accuracy": write_csv(out / "accuracy.csv", accuracy_records(data), ACCURACY_COLUMNS),
        "runs": write_csv(out / "runs.csv", run_records(data), RUN_COLUMNS),
        "overhead": write_csv(out / "overhead.csv", overhead_records(data), OVERHEAD_COLUMNS),
    }
    if data.shift:
        files["shift"] = write_csv(out / "shift.csv", shift_records(data), SHIFT_COLUMNS)
    if data.learned:
        files["learned"] = write_csv(out / "learned_parameters.csv", learned_records(data), LEARNED_COLUMNS)
    return files


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
    mean = _fmt(summary.mean)
    mean = f"**{mean}**" if best else mean
    if summary.std is None:
        return f"{mean} (n=1)"
    return f"{mean} ± {_fmt(summary.std)} (n={summary.n})"


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
                paired = "—" if r.comparison is None else _seed_list(r.comparison.seeds) or "none"
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
            delta = format_comparison(c, _verdict(c, None, 1.0 - data.confidence))
        acc = [_fmt(r.accuracy_by_shift.get(d)) for d in shifts]
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
