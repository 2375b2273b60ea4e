"""The report's accuracy figures: Figure 2 (accuracy per method), Figure 3 (architecture sensitivity)
and Figure 4 (the K x T ablation). The colours, markers and saving they share live in
:mod:`poolkit.report.figures`."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

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
from poolkit.report.formatting import model_family, model_order, model_title
from poolkit.report.grouping import Column, ReportData, ablation_grids

__all__ = ["ablation_figures", "accuracy_figures", "architecture_figure"]


# ----------------------------------------------------------------------- 2. accuracy per method


def accuracy_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 2, one per model: top-1 per method, one panel per dataset; 95% t-interval error bars."""
    files, skipped = [], []
    level = round(data.confidence * 100)
    for model in data.models:
        columns = [c for c in data.columns if c.model == model]
        width = max(5.5, 0.6 * _max_methods(data, columns) + 2.0)
        fig = Figure(figsize=(width * len(columns), 5.2), layout="constrained")
        axes = fig.subplots(1, len(columns), squeeze=False)[0]
        for ax, column in zip(axes, columns, strict=True):
            rows = data.accuracy_in(column, table1_only=True)
            for i, row in enumerate(rows):
                colour = method_colour(row.group.pool)
                mean_marker(ax, i, row.summary, colour)
                seeds = list(row.group.top1.values())
                ax.scatter(
                    beside(i, len(seeds)),
                    seeds,
                    s=14,
                    color=colour,
                    alpha=0.45,
                    zorder=3,
                )
                if row.group.is_baseline:
                    ax.axhline(row.summary.mean, color=colour, ls="--", lw=1, alpha=0.7)
            ax.set_xticks(range(len(rows)), title_list([r.group for r in rows]), rotation=40, ha="right")
            ns = sorted({r.summary.n for r in rows})
            n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
            ax.set_title(f"{column.title} ({n_text} seeds per method)")
            ax.set_ylabel("test top-1 accuracy (%)")
            cap_percent(ax)
            ax.grid(axis="y", alpha=0.3)
        handles = [
            Line2D([], [], marker="o", color="k", lw=2, label=f"mean ± {level}% t-interval"),
            Line2D([], [], marker="o", color="k", lw=0, alpha=0.45, ms=4, label="single seed"),
            Line2D([], [], color="k", ls="--", lw=1, label="max (baseline) mean"),
        ]
        fig.legend(handles=handles, loc="outside lower center", fontsize=9, ncol=3, frameon=False)
        fig.suptitle(
            f"Figure 2. {model_title(model)}: test top-1 by pooling method", fontsize=13, x=0.02, ha="left"
        )
        path = save_figure(fig, out_dir / f"fig2_accuracy_{model}.png")
        caption = (
            f"{model_title(model)}: mean last-epoch test top-1 over seeds (big dot) with the {level}% "
            "t-interval of the mean (error bar, n-1 degrees of freedom; none when n = 1) and each seed "
            "(small dots). Dashed line: the max baseline's mean. The intervals are not paired; Table 1's Δ "
            "intervals are."
        )
        files.append(FigureFile(path, f"Accuracy by method, {model_title(model)}", caption))
    if not data.models:
        skipped.append("No finished runs: the accuracy figure needs at least one.")
    return files, skipped


def _max_methods(data: ReportData, columns: Sequence[Column]) -> int:
    return max((len(data.accuracy_in(c, table1_only=True)) for c in columns), default=1)


# ------------------------------------------------------------------- 3. architecture sensitivity


def architecture_figure(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 3: Δ to max per method for each architecture trained on the same dataset."""
    by_setting: dict[tuple[str, str], list[Column]] = defaultdict(list)
    for column in data.columns:
        by_setting[(column.dataset, column.variant)].append(column)
    shared = {k: v for k, v in by_setting.items() if len({c.model for c in v}) >= 2}
    if not shared:
        families = {model_family(m) for m in data.models}
        if families == {"vgg"}:
            reason = (
                "No ResNet runs: architecture sensitivity needs both VGG and ResNet runs on the same dataset."
            )
        elif families == {"resnet"}:
            reason = (
                "No VGG runs: architecture sensitivity needs both VGG and ResNet runs on the same dataset."
            )
        elif not families:
            reason = (
                "No finished runs: architecture sensitivity needs VGG and ResNet runs on the same dataset."
            )
        else:
            reason = (
                "No dataset was trained with more than one architecture: architecture sensitivity needs "
                "e.g. VGG and ResNet runs on the same dataset."
            )
        return [], [reason]
    level = round(data.confidence * 100)
    settings = sorted(shared, key=lambda k: shared[k][0].sort_key())
    fig = Figure(figsize=(6.5 * len(settings), 5.2), layout="constrained")
    axes = fig.subplots(1, len(settings), squeeze=False)[0]
    models = sorted({c.model for cols in shared.values() for c in cols}, key=model_order)
    for ax, setting in zip(axes, settings, strict=True):
        columns = sorted(shared[setting], key=lambda c: model_order(c.model))
        methods: list[tuple[tuple, str, str]] = []
        for column in columns:
            for row in data.accuracy_in(column, table1_only=True):
                key = row.group.sort_key()
                if not row.group.is_baseline and key not in [m[0] for m in methods]:
                    methods.append((key, row.group.title, row.group.pool))
        methods.sort()
        width = 0.7 / len(columns)
        for j, column in enumerate(columns):
            rows = {r.group.sort_key(): r for r in data.accuracy_in(column, table1_only=True)}
            marker = MARKERS[models.index(column.model) % len(MARKERS)]
            for i, (key, _, pool) in enumerate(methods):
                row = rows.get(key)
                if row is None or row.comparison is None or row.comparison.mean is None:
                    continue
                c = row.comparison
                x = i - 0.35 + width * (j + 0.5)
                colour = method_colour(pool)
                face = colour if j == 0 else "white"
                if c.ci_low is not None:
                    ax.errorbar(
                        x,
                        c.mean,
                        yerr=[[c.mean - c.ci_low], [c.ci_high - c.mean]],
                        fmt=marker,
                        ms=8,
                        color=colour,
                        mfc=face,
                        capsize=4,
                        lw=1.8,
                    )
                else:
                    ax.plot(x, c.mean, marker, ms=8, color=colour, mfc=face)
        ax.axhline(0, color="k", lw=1)
        ax.set_xticks(range(len(methods)), [m[1] for m in methods], rotation=40, ha="right")
        ax.set_ylabel("Δ test top-1 vs max (percentage points)")
        ax.set_title(columns[0].title)
        ax.grid(axis="y", alpha=0.3)
    handles = [
        Line2D(
            [],
            [],
            marker=MARKERS[i % len(MARKERS)],
            color="k",
            mfc="k" if i == 0 else "white",
            lw=0,
            ms=8,
            label=model_title(m),
        )
        for i, m in enumerate(models)
    ]
    handles.append(Line2D([], [], color="k", lw=1.8, label=f"{level}% CI of Δ, paired by seed"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9)
    fig.suptitle(
        "Figure 3. Architecture sensitivity: Δ top-1 to max pooling per method (colour = method)",
        fontsize=13,
        x=0.02,
        ha="left",
    )
    fig.set_layout_engine("constrained")
    path = save_figure(fig, out_dir / "fig3_architecture_sensitivity.png")
    caption = (
        "Δ = method − max in test top-1, paired by seed, for each architecture (marker) on the same "
        f"dataset; error bars are the paired {level}% t-interval (none when only one seed is shared). An "
        "interval crossing the zero line means the data do not tell the method from max."
    )
    return [FigureFile(path, "Architecture sensitivity", caption)], []


# ------------------------------------------------------------------------------- 4. K x T ablation


def ablation_figures(data: ReportData, out_dir: Path) -> tuple[list[FigureFile], list[str]]:
    """Figure 4: heat map of mean top-1 over (K, T) for a method whose runs vary both."""
    grids = ablation_grids(data)
    if not grids:
        return [], [
            "No ablation runs: the K × T heat map needs T-Max-Avg runs whose pool_options vary both k and "
            "threshold (at least two values of each)."
        ]
    files = []
    for column, method, groups in grids:
        ks = sorted({g.resolved_options["k"] for g in groups})
        ts = sorted({g.resolved_options["threshold"] for g in groups})
        grid = np.full((len(ks), len(ts)), np.nan)
        labels: dict[tuple[int, int], str] = {}
        for g in groups:
            i, j = ks.index(g.resolved_options["k"]), ts.index(g.resolved_options["threshold"])
            row = data.row_for(g)
            grid[i, j] = row.summary.mean
            spread = f"±{row.summary.std:.2f}" if row.summary.std is not None else ""
            labels[(i, j)] = f"{row.summary.mean:.2f}\n{spread} n={row.summary.n}".replace("\n ", "\n")
        fig = Figure(figsize=(min(13.0, 1.05 * len(ts) + 3.2), 0.85 * len(ks) + 2.2), layout="constrained")
        ax = fig.subplots()
        masked = np.ma.masked_invalid(grid)
        image = ax.imshow(masked, cmap=colormaps["viridis"].with_extremes(bad="#dddddd"), aspect="auto")
        finite = grid[np.isfinite(grid)]
        lo, hi = float(finite.min()), float(finite.max())
        for (i, j), value in np.ndenumerate(grid):
            if math.isnan(value):
                ax.text(j, i, "no runs", ha="center", va="center", fontsize=8, color="#555555")
                continue
            shade = (value - lo) / (hi - lo) if hi > lo else 0.5
            ax.text(
                j,
                i,
                labels[(i, j)],
                ha="center",
                va="center",
                fontsize=8.5,
                color="black" if shade > 0.6 else "white",
            )
        best = np.unravel_index(np.nanargmax(grid), grid.shape)
        ax.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
        ax.set_xticks(range(len(ts)), [f"{t:g}" for t in ts])
        ax.set_yticks(range(len(ks)), [f"{k} (= max)" if k == 1 else str(k) for k in ks])
        ax.set_xlabel("threshold T (activation units)")
        ax.set_ylabel("K (number of top values averaged)")
        bar = fig.colorbar(image, ax=ax)
        bar.set_label("test top-1 accuracy (%), mean over seeds")
        base = next((r for r in data.accuracy_in(column) if r.group.is_baseline), None)
        base_text = f"; max baseline {base.summary.mean:.2f}%" if base else ""
        title = groups[0].title.split(" (")[0]
        ax.set_title(f"Figure 4. {title} K × T ablation\n{column.full_title}{base_text}", fontsize=11)
        path = save_figure(fig, out_dir / f"fig4_ablation_{method}_{column.slug}.png")
        caption = (
            f"{title} on {column.full_title}: mean test top-1 over seeds for each (K, T); cell text = mean, "
            "sample std and number of seeds; red box = highest mean (not necessarily distinguishable from "
            "its neighbours: compare the stds); grey = no runs. K = 1 is max pooling for every T (the top-1 "
            "mean is the maximum); on 2x2 windows K = 4 is the plain mean and no K > 4 exists."
        )
        files.append(FigureFile(path, f"{title} K × T ablation, {column.full_title}", caption))
    return files, []
