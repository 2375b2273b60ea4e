"""Output of ``poolkit bench``: text and markdown tables, the environment, JSON/CSV files and reading them."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

import poolkit
from poolkit.atomic import atomic_write_csv, atomic_write_json
from poolkit.bench.models import ModelResult
from poolkit.bench.ops import CLONE, COPY, OpResult
from poolkit.bench.targets import TargetResult
from poolkit.text import align_columns
from poolkit.train.environment import cpu_name

__all__ = [
    "environment",
    "format_model_table",
    "format_op_group",
    "format_targets",
    "load_results",
    "markdown_report",
    "write_results",
]


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return (
        "-"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:{spec}}{suffix}"
    )


def _op_table_rows(rows: Sequence[OpResult]) -> tuple[list[str], list[list[str]], list[str]]:
    """Header, cells and footnotes of one group's table (one line per pool, modes as columns)."""
    header = ["pool", "fwd ms", "fwd ×max", "fwd GB/s (% copy)", "fwd+bwd ms", "×max", "saved MiB", "×max"]
    by_pool: dict[str, dict[str, OpResult]] = {}
    for r in rows:
        by_pool.setdefault(r.pool, {})[r.mode] = r
    cells: list[list[str]] = []
    notes: list[str] = []
    for pool, modes in by_pool.items():
        f, b, m = modes.get("fwd"), modes.get("fwd+bwd"), modes.get("memory")

        bandwidth = "-"
        if f is not None and f.gbps is not None:
            bandwidth = f"{f.gbps:.1f}" + (f" ({f.copy_fraction:.0%})" if f.copy_fraction is not None else "")
        line = [
            pool,
            "error" if _err(f) else _fmt(f.ms if f else None, ".3f"),
            "error" if _err(f) else _fmt(f.ratio if f else None, ".2f", "×"),
            "error" if _err(f) else bandwidth,
            "error" if _err(b) else _fmt(b.ms if b else None, ".3f"),
            "error" if _err(b) else _fmt(b.ratio if b else None, ".2f", "×"),
            "error"
            if _err(m)
            else _fmt(m.saved_bytes / 2**20 if m and m.saved_bytes is not None else None, ".2f"),
            "error" if _err(m) else _fmt(m.ratio if m else None, ".2f", "×"),
        ]
        cells.append(line)
        for entry in (f, b, m):
            if entry is not None and entry.error is not None:
                notes.append(f"{pool} {entry.mode}: error: {entry.error}")
    return header, cells, notes


def _err(r: OpResult | None) -> bool:
    """Whether an entry exists and failed."""
    return r is not None and r.error is not None


def _group_title(r: OpResult) -> str:
    shape = "" if r.shape == r.case else f"{r.shape} · "
    return f"{r.case} · {shape}{r.window} · {r.layout} · {r.dtype} · {r.device}"


def format_op_group(rows: Sequence[OpResult]) -> str:
    """One group's rows as a plain-text table (title line, header, one line per pool, error notes)."""
    if not rows:
        return ""
    header, cells, notes = _op_table_rows(rows)
    text = [f"== {_group_title(rows[0])} ==", *align_columns([header, *cells], right=True), *notes]
    return "\n".join(text)


def format_model_table(rows: Sequence[ModelResult], markdown: bool = False) -> str:
    """Model-level rows as a table, one block per configuration."""
    out: list[str] = []
    configs = list(dict.fromkeys((r.config, r.device) for r in rows))
    header = [
        "pool",
        "ms / step",
        "IQR ms",
        "× max (median of rounds)",
        "IQR of ratio",
        "rounds × steps",
        "pool params",
    ]
    for config, device in configs:
        cells = []
        for r in rows:
            if (r.config, r.device) != (config, device):
                continue
            if r.error is not None:
                cells.append([r.pool, f"error: {r.error}", "", "", "", "", str(r.params)])
                continue
            spread = (
                f"{r.ratio_q25:.3f}..{r.ratio_q75:.3f}"
                if r.ratio_q25 is not None and r.ratio_q75 is not None
                else "-"
            )
            cells.append(
                [
                    r.pool,
                    _fmt(r.ms, ".1f"),
                    _fmt(r.iqr_ms, ".1f"),
                    _fmt(r.ratio, ".3f", "×"),
                    spread,
                    f"{r.rounds} × {r.steps}",
                    f"{r.params:,}",
                ]
            )
        title = f"{config} · {device}"
        out.append(
            _markdown_table(f"#### Training step: {title}", header, cells)
            if markdown
            else _text_table(f"== training step: {title} ==", header, cells)
        )
    return "\n\n".join(out)


def _text_table(title: str, header: list[str], cells: list[list[str]]) -> str:
    return "\n".join([title, *align_columns([header, *cells], right=True)])


def _markdown_table(title: str, header: list[str], cells: list[list[str]], notes: Sequence[str] = ()) -> str:
    lines = [title, "", "| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines.extend("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in cells)
    if notes:
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
    return "\n".join(lines)


def format_targets(targets: Sequence[TargetResult], markdown: bool = False) -> str:
    """One line per measured target; the methods not measured are listed together at the end."""
    bullet = "- " if markdown else "  "
    lines = [bullet + t.line() for t in targets if t.status != "missing"]
    missing: dict[str, list[str]] = {}
    for t in targets:
        if t.status == "missing":
            missing.setdefault(t.target, []).append(t.method)
    for target, methods in missing.items():
        lines.append(f"{bullet}{target}: not measured in this run for {', '.join(methods)}")
    met = sum(t.status == "met" for t in targets)
    evaluated = sum(t.status != "missing" for t in targets)
    head = f"Targets: {met} of {evaluated} measured met"
    return (f"### {head}\n\n" if markdown else f"== {head} ==\n") + "\n".join(lines)


def _groups(rows: Sequence[OpResult]) -> Iterator[list[OpResult]]:
    order = list(dict.fromkeys(r.group for r in rows))
    for g in order:
        yield [r for r in rows if r.group == g]


def _summary_cells(rows: Sequence[OpResult], mode: str) -> tuple[list[str], list[list[str]]]:
    """Worst ratio over cases per pool (rows) and layout · dtype · device (columns)."""
    columns = list(dict.fromkeys((r.layout, r.dtype, r.device) for r in rows))
    pools = list(dict.fromkeys(r.pool for r in rows if r.pool not in (COPY, CLONE)))
    header = ["pool", *(" · ".join(p for p in c if p != "cpu") for c in columns)]
    cells = []
    for pool in pools:
        line = [pool]
        for c in columns:
            sel = [
                r for r in rows if r.pool == pool and r.mode == mode and (r.layout, r.dtype, r.device) == c
            ]
            if any(r.error for r in sel):
                line.append("error")
            elif sel and all(r.ratio is not None for r in sel):
                worst = max(sel, key=lambda r: r.ratio or 0.0)
                line.append(f"{worst.ratio:.2f}× ({worst.case})")
            else:
                line.append("-")
        cells.append(line)
    return header, cells


def markdown_report(
    env: dict[str, Any],
    op_rows: Sequence[OpResult] = (),
    model_rows: Sequence[ModelResult] = (),
    targets: Sequence[TargetResult] = (),
    command: str = "",
) -> str:
    """The whole run as markdown (headings from level 3 down), to paste under docs/benchmarks.md's results."""
    parts = [_markdown_environment(env, command)]
    if targets:
        parts.append(format_targets(targets, markdown=True))
    if model_rows:
        parts.append(
            "### Model level: one training step per pool, × max (median of interleaved rounds)\n\n"
            + format_model_table(model_rows, markdown=True)
        )
    if op_rows:
        for mode, what in (
            ("fwd+bwd", "forward + backward time"),
            ("fwd", "forward time"),
            ("memory", "saved bytes"),
        ):
            if any(r.mode == mode for r in op_rows):
                header, cells = _summary_cells(op_rows, mode)
                title = f"### Op level, {what} × native max: worst case over the cases"
                parts.append(_markdown_table(title, header, cells))
        details = ["### Op level, every case", ""]
        for group in _groups(op_rows):
            header, cells, notes = _op_table_rows(group)
            copy = next((r for r in group if r.pool == COPY), None)
            title = f"#### {_group_title(group[0])}"
            if copy is not None and copy.ms is not None and copy.gbps is not None:
                clone = next((r for r in group if r.pool == CLONE), None)
                clone_ms = f", clone {clone.ms:.3f} ms" if clone is not None and clone.ms is not None else ""
                title += f"\n\ncopy {copy.ms:.3f} ms = {copy.gbps:.1f} GB/s{clone_ms}"
            details.append(
                _markdown_table(title, header, [c for c in cells if c[0] not in (COPY, CLONE)], notes)
            )
            details.append("")
        parts.append("\n".join(details).rstrip())
    return "\n\n".join(parts) + "\n"


def _markdown_environment(env: dict[str, Any], command: str) -> str:
    gpu = env.get("gpu") or "none"
    lines = [
        f"Measured {env.get('date', '?')} on **{env.get('cpu', '?')}** "
        f"({env.get('cpu_count', '?')} logical CPUs, "
        f"{env.get('threads', '?')} torch threads), GPU: {gpu}; torch {env.get('torch', '?')}, "
        f"poolkit {env.get('poolkit', '?')}"
        + (f" (commit {env['commit']})" if env.get("commit") else "")
        + ".",
    ]
    if command:
        lines += ["", "```bash", command, "```"]
    return "\n".join(lines)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Where the numbers were measured: versions, CPU model and cores, threads, GPU, date, commit."""
    info: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "poolkit": poolkit.__version__,
        "commit": _git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "threads": torch.get_num_threads(),
        "gpu": None,
    }
    info.update(_kernels())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def _kernels() -> dict[str, Any]:
    """The kernel mode and, where it uses them, the compiled CPU kernels' state and one-time build time."""
    from poolkit.kernels import cpu_kernels_available, kernel_status
    from poolkit.layers.fused import fused_kernel_mode

    mode = fused_kernel_mode()
    info: dict[str, Any] = {"fused": mode}
    if mode in ("auto", "on"):
        cpu_kernels_available()  # builds them now, so that the build is not timed as a pool
        info["compiled_kernels"] = kernel_status().describe()
    return info


def _clean(value: Any) -> Any:
    """NaN / infinity -> None (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_results(
    path: Path,
    env: dict[str, Any],
    op_rows: Sequence[OpResult] = (),
    model_rows: Sequence[ModelResult] = (),
    targets: Sequence[TargetResult] = (),
    command: str = "",
) -> None:
    """Write the results atomically.

    ``.json``: environment, command, op and model rows, targets. Any other suffix: CSV, one line per row with
    the op and model columns together (``level`` first).
    """
    op = [{k: _clean(v) for k, v in asdict(r).items()} for r in op_rows]
    model = [{k: _clean(v) for k, v in asdict(r).items()} for r in model_rows]
    if path.suffix == ".json":
        atomic_write_json(
            path,
            {
                "environment": env,
                "command": command,
                "op": op,
                "model": model,
                "targets": [{k: _clean(v) for k, v in asdict(t).items()} for t in targets],
            },
        )
        return
    columns = ["level"]
    for cls in (OpResult, ModelResult):
        columns += [f.name for f in fields(cls) if f.name not in columns]
    rows = [{c: ("" if d.get(c) is None else d.get(c)) for c in columns} for d in (*op, *model)]
    atomic_write_csv(path, columns, rows)


def load_results(paths: Sequence[Path]) -> tuple[list[OpResult], list[ModelResult], dict[str, Any], str]:
    """The rows of one or more ``--json`` files, to evaluate (and write up) separate runs together.

    Returns the op rows, the model rows, the environment of the first file and the files' commands (one a
    line). Raises ``ValueError`` for a file that is not a ``poolkit bench --json`` file.
    """
    op: list[OpResult] = []
    model: list[ModelResult] = []
    env: dict[str, Any] = {}
    commands: list[str] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {path}: {exc}") from None
        if not isinstance(data, dict) or "op" not in data or "model" not in data:
            raise ValueError(f"{path} is not a 'poolkit bench --json' file (no 'op' and 'model' rows)")
        op += [OpResult(**r) for r in data["op"]]
        model += [ModelResult(**r) for r in data["model"]]
        env = env or dict(data.get("environment") or {})
        if data.get("command"):
            commands.append(str(data["command"]))
    return op, model, env, "\n".join(commands)
