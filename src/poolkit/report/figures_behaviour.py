"""The report's figures of how the methods train and behave: Figure 5 (learning curves), Figure 6
(overhead), Figure 7 (the shift probe) and Figure 8 (learned pooling values)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from poolkit.report.figures import (
    MARKERS,
    FigureFile,
    beside,
    cap_percent,
    mean_marker,
    method_colour,
    save_figure,
    title_list,
)
from poolkit.report.formatting import PARAMETER_MEANINGS, model_title
from poolkit.report.grouping import Group, ReportData

__all__ = ["learned_figures", "learning_curve_figures", "overhead_figures", "shift_figures"]

_ZOOM_FROM_EPOCHS = 8


# ------------------------------------------------------------------------------ 5. learning curves


def _curve(group: Group) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    per_epoch: dict[float, list[float]] = defaultdict(list)
    for run in group.runs:
        for row in run.metrics:
            if row.get("epoch") is not None and row.get("test_top1") is not None:
                per_epoch[row["epoch"]].append(row["test_top1"])
    epochs = np.array(sorted(per_epoch))
    values = [per_epoch[e] for e in epochs]
    return (
        epochs,
        np.array([np.mean(v) for v in values]),
        np.array([min(v) for v in values]),
        np.array([max(v) for v in values]),
    )


def learning_curve_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 5, one per column: test top-1 per epoch, mean over seeds with a min-max band."""
    files, skipped = [], []
    for column in data.columns:
        rows = data.accuracy_in(column, table1_only=True)
        curves = [(r.group, _curve(r.group)) for r in rows]
        curves = [(g, c) for g, c in curves if len(c[0]) >= 2]
        if not curves:
            skipped.append(f"{column.full_title}: no learning curve (metrics.csv has fewer than 2 epochs).")
            continue
        last = max(c[0][-1] for _, c in curves)
        # A zoom into the last quarter only shows something new when that quarter has a few epochs.
        zoomed = last >= _ZOOM_FROM_EPOCHS
        fig = Figure(figsize=(13 if zoomed else 9, 4.8), layout="constrained")
        if zoomed:
            full, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
            panels = (full, zoom)
        else:
            full = fig.subplots()
            panels = (full,)
        start = last - max(1.0, round(0.25 * last))
        zoom_values = []
        for group, (epochs, mean, low, high) in curves:
            colour = method_colour(group.pool)
            for ax in panels:
                ax.plot(epochs, mean, color=colour, lw=1.8, label=group.title if ax is full else None)
                if len(group.runs) > 1:
                    ax.fill_between(epochs, low, high, color=colour, alpha=0.15, lw=0)
            keep = epochs >= start
            zoom_values += list(low[keep]) + list(high[keep])
        if zoomed:
            zoom.set_xlim(start, last)
            pad = 0.05 * (max(zoom_values) - min(zoom_values) or 1.0)
            zoom.set_ylim(min(zoom_values) - pad, max(zoom_values) + pad)
            zoom.set_title(f"last quarter (epochs {start:g}–{last:g}), zoomed")
        for ax in panels:
            ax.set_xlabel("epoch")
            ax.set_ylabel("test top-1 accuracy (%)")
            ax.grid(alpha=0.3)
            ax.xaxis.get_major_locator().set_params(integer=True)
        if zoomed:
            full.set_title("whole run")
        fig.legend(
            loc="outside right center",
            fontsize=9,
            title="method (band: min–max over seeds)",
            title_fontsize=9,
        )
        fig.suptitle(
            f"Figure 5. Learning curves, {column.full_title}: test top-1 per epoch (mean over seeds)",
            fontsize=12,
            x=0.02,
            ha="left",
        )
        path = save_figure(fig, out_dir / f"fig5_learning_curves_{column.slug}.png")
        caption = (
            f"{column.full_title}: test top-1 after each epoch, mean over seeds (line) and the range from "
            "the lowest to the highest seed (band; no band for a single seed)."
        )
        if zoomed:
            caption += " The right panel zooms into the last quarter of training, where the methods differ."
        files.append(FigureFile(path, f"Learning curves, {column.full_title}", caption))
    if not data.columns:
        skipped.append("No finished runs: no learning curves.")
    return files, skipped


# -------------------------------------------------------------------------------------- 6. overhead


def overhead_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 6, one per model: training time per epoch relative to max, and learnable pool parameters."""
    files, skipped = [], []
    for model in data.models:
        columns = [c for c in data.columns if c.model == model]
        rows = [r for r in data.overhead if r.group.column.model == model and data.row_for(r.group).in_table1]
        if not rows:
            continue
        methods = sorted({(r.group.sort_key(), r.group.title, r.group.pool) for r in rows})
        index = {m[0]: i for i, m in enumerate(methods)}
        fig = Figure(figsize=(max(10.0, 1.3 * len(methods) + 3), 5.0), layout="constrained")
        time_ax, param_ax = fig.subplots(1, 2)
        has_time = False
        for j, column in enumerate(columns):
            marker = MARKERS[j % len(MARKERS)]
            for r in rows:
                if r.group.column != column or r.epoch_seconds_rel is None:
                    continue
                has_time = True
                x = index[r.group.sort_key()] + (j - (len(columns) - 1) / 2) * 0.18
                time_ax.plot(
                    x, r.epoch_seconds_rel, marker, ms=9, color=method_colour(r.group.pool), mec="k", mew=0.6
                )
        time_ax.axhline(1.0, color="k", lw=1, ls="--")
        time_ax.set_ylabel("training time per epoch relative to max (×)")
        time_ax.set_title("Training time per epoch (same sweep, ÷ max)")
        if not has_time:
            time_ax.text(
                0.5, 0.5, "no epoch timings in metrics.csv", transform=time_ax.transAxes, ha="center"
            )
        params: dict[tuple, int] = {}
        for r in rows:
            if r.pool_params is not None:
                params.setdefault(r.group.sort_key(), r.pool_params)
        xs = [index[k] for k in params]
        bars = param_ax.bar(
            xs, [params[k] for k in params], color=[method_colour(m[2]) for m in methods if m[0] in params]
        )
        for bar, value in zip(bars, params.values(), strict=True):
            param_ax.annotate(
                f"{value:,}",
                (bar.get_x() + bar.get_width() / 2, max(value, 0)),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        param_ax.set_yscale("symlog", linthresh=1)
        param_ax.set_ylim(0, max([*params.values(), 1]) * 8)
        param_ax.set_ylabel("learnable parameters in pooling layers (count, log)")
        param_ax.set_title("Learnable pooling parameters (whole model)")
        for ax in (time_ax, param_ax):
            ax.set_xticks(
                range(len(methods)),
                [m[1].replace(" (baseline)", "") for m in methods],
                rotation=40,
                ha="right",
            )
            ax.grid(axis="y", alpha=0.3)
        handles = [
            Line2D([], [], marker=MARKERS[j % len(MARKERS)], color="grey", mec="k", lw=0, ms=8, label=c.title)
            for j, c in enumerate(columns)
        ]
        time_ax.legend(handles=handles, title="dataset", fontsize=8, title_fontsize=8, loc="best")
        fig.suptitle(
            f"Figure 6. {model_title(model)}: computational overhead of each pooling method",
            fontsize=12,
            x=0.02,
            ha="left",
        )
        path = save_figure(fig, out_dir / f"fig6_overhead_{model}.png")
        caption = (
            f"{model_title(model)}. Left: mean training seconds per epoch divided by max pooling's, "
            "measured in the same sweep on the same model and dataset (first epoch left out as warm-up "
            "when a run has more than 2 epochs); marker = dataset. Right: learnable parameters in all "
            "pooling layers together (symmetric log scale; max has none)."
        )
        files.append(FigureFile(path, f"Overhead, {model_title(model)}", caption))
    if not files:
        skipped.append("No finished runs: no overhead figure.")
    return files, skipped


# ---------------------------------------------------------------------------------- 7. shift probe


def shift_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 7, one per column with shift.json files: consistency per method and accuracy vs shift."""
    if not data.shift:
        return [], [
            "No shift.json in any finished run: run `poolkit shift RUN_DIR` (or train with shift_eval: "
            "true) for the shift-consistency figure."
        ]
    files = []
    level = round(data.confidence * 100)
    for column in data.columns:
        rows = sorted((r for r in data.shift if r.group.column == column), key=lambda r: r.group.sort_key())
        if not rows:
            continue
        fig = Figure(figsize=(max(11.0, 0.8 * len(rows) + 7), 4.8), layout="constrained")
        cons_ax, acc_ax = fig.subplots(1, 2)
        for i, row in enumerate(rows):
            colour = method_colour(row.group.pool)
            mean_marker(cons_ax, i, row.summary, colour)
            values = list(row.values.values())
            cons_ax.scatter(
                beside(i, len(values)),
                values,
                s=14,
                color=colour,
                alpha=0.45,
            )
            shifts = sorted(row.accuracy_by_shift)
            acc_ax.plot(
                shifts,
                [row.accuracy_by_shift[k] for k in shifts],
                "o-",
                color=colour,
                lw=1.8,
                label=row.group.title,
            )
        cons_ax.set_xticks(range(len(rows)), title_list([r.group for r in rows]), rotation=40, ha="right")
        cons_ax.set_ylabel("shift consistency (% of images, same top-1 class)")
        cap_percent(cons_ax)
        shift_text = (
            f"random circular shifts up to ±{rows[0].max_shift} px" if rows[0].max_shift else "random shifts"
        )
        cons_ax.set_title(
            f"Consistency under two {shift_text}\n(dot: mean, bar: {level}% CI, small: seeds)", fontsize=10
        )
        acc_ax.set_xlabel("diagonal circular shift (pixels in x and in y)")
        acc_ax.set_ylabel("test top-1 accuracy (%), mean over seeds")
        acc_ax.set_title("Accuracy vs shift", fontsize=10)
        acc_ax.xaxis.get_major_locator().set_params(integer=True)
        acc_ax.legend(
            fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title="method", title_fontsize=8
        )
        for ax in (cons_ax, acc_ax):
            ax.grid(alpha=0.3)
        fig.suptitle(f"Figure 7. Shift invariance, {column.full_title}", fontsize=12, x=0.02, ha="left")
        path = save_figure(fig, out_dir / f"fig7_shift_{column.slug}.png")
        caption = (
            f"{column.full_title}. Left: how often the top-1 class agrees between two random circular "
            f"shifts of the same test image (Zhang 2019's consistency; mean over seeds, {level}% "
            "t-interval). Right: test accuracy when every image is shifted by d pixels along both axes."
        )
        files.append(FigureFile(path, f"Shift invariance, {column.full_title}", caption))
    return files, []


# -------------------------------------------------------------------------------- 8. learned values


def learned_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 8, one per column: each learned parameter (mean over channels and seeds) vs depth."""
    if not data.learned:
        return [], [
            "No learned pooling parameters in any result.json (no adaptive method with interpretable "
            "parameters was run): no learned-parameter figure."
        ]
    files, skipped = [], []
    for column in data.columns:
        rows = [r for r in data.learned if r.group.column == column and data.row_for(r.group).in_table1]
        if not rows:
            continue
        if max(r.depth for r in rows) == 1:
            skipped.append(
                f"{column.full_title}: a single pooling layer, so no value-vs-depth figure; the table above "
                "has its learned values."
            )
            continue
        parameters = sorted({r.parameter for r in rows})
        fig = Figure(figsize=(5.2 * len(parameters) + 2.5, 4.6), layout="constrained")
        axes = fig.subplots(1, len(parameters), squeeze=False)[0]
        for ax, parameter in zip(axes, parameters, strict=True):
            by_group: dict[int, list] = defaultdict(list)
            groups: dict[int, Group] = {}
            for r in rows:
                if r.parameter == parameter:
                    by_group[id(r.group)].append(r)
                    groups[id(r.group)] = r.group
            layer_names: dict[int, str] = {}
            for key, items in sorted(by_group.items(), key=lambda kv: groups[kv[0]].sort_key()):
                items.sort(key=lambda r: r.depth)
                depth = [r.depth for r in items]
                colour = method_colour(groups[key].pool)
                ax.plot(depth, [r.mean for r in items], "o-", color=colour, lw=1.8, label=groups[key].title)
                ax.fill_between(
                    depth,
                    [r.minimum for r in items],
                    [r.maximum for r in items],
                    color=colour,
                    alpha=0.15,
                    lw=0,
                )
                layer_names.update({r.depth: r.layer for r in items})
            if parameter in ("lambda", "m"):
                for level, text in ((1.0, "max"), (0.0, "average")):
                    ax.axhline(level, color="grey", ls=":", lw=1)
                    ax.annotate(
                        text,
                        (0.01, level),
                        xycoords=("axes fraction", "data"),
                        ha="left",
                        va="bottom",
                        fontsize=8,
                        color="grey",
                        xytext=(0, 2),
                        textcoords="offset points",
                    )
            ticks = sorted(layer_names)
            ax.set_xticks(ticks, [f"{d}\n{layer_names[d]}" for d in ticks], fontsize=8)
            ax.set_xlabel("pooling layer (1 = nearest the input)")
            meaning = PARAMETER_MEANINGS.get(parameter)
            ax.set_ylabel(f"{parameter} = {meaning}" if meaning else f"learned {parameter}", fontsize=9)
            ax.set_title(f"learned {parameter} per layer")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, loc="best")
        fig.suptitle(
            f"Figure 8. Learned pooling parameters after training, {column.full_title}",
            fontsize=12,
            x=0.02,
            ha="left",
        )
        path = save_figure(fig, out_dir / f"fig8_learned_{column.slug}.png")
        caption = (
            f"{column.full_title}: value of each learned pooling parameter at the end of training, per "
            "pooling layer from input to output; line = mean over channels and seeds, band = lowest to "
            "highest value (over channels and seeds). For the blend weights, 1 means pure max pooling and "
            "0 pure averaging."
        )
        files.append(FigureFile(path, f"Learned parameters, {column.full_title}", caption))
    return files, skipped
