"""The report's tables as tidy CSV files: one row per group (accuracy, overhead, shift, learned
parameters) or per run, every number at full precision, None as an empty cell."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from poolkit.report.grouping import Group, ReportData

__all__ = [
    "ACCURACY_COLUMNS",
    "LEARNED_COLUMNS",
    "OVERHEAD_COLUMNS",
    "RUN_COLUMNS",
    "SHIFT_COLUMNS",
    "accuracy_records",
    "learned_records",
    "overhead_records",
    "run_records",
    "shift_records",
    "write_atomic",
    "write_csv",
    "write_tables",
]


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write ``data`` (text as UTF-8) atomically with :func:`poolkit.atomic.atomic_write_bytes`."""
    from poolkit.atomic import atomic_write_bytes

    atomic_write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def write_csv(path: str | os.PathLike[str], rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> Path:
    """A CSV with a header of ``columns`` (written by :func:`poolkit.atomic.atomic_write_csv`); a missing
    value or None becomes an empty cell, keys not in ``columns`` are left out, floats keep full precision."""
    from poolkit.atomic import atomic_write_csv

    cells = ({k: "" if row.get(k) is None else row.get(k) for k in columns} for row in rows)
    atomic_write_csv(path, columns, cells)
    return Path(path)


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
