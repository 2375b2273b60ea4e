"""The report's figures (matplotlib, Agg canvas; no pyplot state is touched).

Every figure is readable on its own: a title, axis labels with units and a legend. A method has one
colour in every figure (:func:`method_colour`). A figure whose runs are absent is skipped and the
reason returned, never drawn from made-up numbers.
"""

from __future__ import annotations

import functools
import inspect
import io
import math
import re
import textwrap
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from poolkit.report.csvtables import write_atomic
from poolkit.report.formatting import PARAMETER_MEANINGS, method_order, model_family, model_order, model_title
from poolkit.report.grouping import Column, Group, ReportData, ablation_grids

__all__ = [
    "GALLERY_INPUT",
    "FigureFile",
    "ablation_figures",
    "accuracy_figures",
    "architecture_figure",
    "gallery_figure",
    "gallery_outputs",
    "learned_figures",
    "learning_curve_figures",
    "method_colour",
    "overhead_figures",
    "shift_figures",
]

#: The 4x4 input of the method gallery (Figure 1). Its window maxima are 0.9, 0.8, 0.7 and 0.25, so the
#: threshold methods (default T = 0.3) take the max in three windows and the top-K mean in the fourth.
GALLERY_INPUT = (
    (0.1, 0.9, 0.3, 0.2),
    (0.4, 0.2, 0.8, 0.6),
    (0.7, 0.5, 0.1, 0.0),
    (0.3, 0.6, 0.2, 0.25),
)
GALLERY_SEED = 0

_FIXED_COLOURS = {
    "max": "#3b3b3b",
    "tmaxavg": "#1f77b4",
    "soft_tmaxavg": "#17becf",
    "channel_adaptive": "#2ca02c",
    "learnable_t": "#bcbd22",
    "gated": "#9467bd",
    "attention": "#d62728",
    "stochastic_mix": "#ff7f0e",
    "avg": "#8c564b",
    "lp": "#e377c2",
    "strided_conv": "#7f7f7f",
    "mixed": "#393b79",
    "gem": "#637939",
    "softpool": "#e7298a",
    "lip": "#7b4173",
    "stochastic": "#8c6d31",
    "blurmax": "#843c39",
}
_FALLBACK = (
    "#3182bd",
    "#31a354",
    "#756bb1",
    "#e6550d",
    "#636363",
    "#1b9e77",
    "#d95f02",
    "#7570b3",
    "#66a61e",
    "#a6761d",
)
_ZOOM_FROM_EPOCHS = 8
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_DPI = 130


def method_colour(method: str) -> str:
    """The colour of ``method`` in every figure: fixed for known methods, a stable hash otherwise."""
    return _FIXED_COLOURS.get(method) or _FALLBACK[zlib.crc32(method.encode()) % len(_FALLBACK)]


@dataclass(frozen=True)
class FigureFile:
    """A written figure: its path, a title and the caption the report prints under it."""

    path: Path
    title: str
    caption: str


def _render(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # Constrained layout already fits every label; "tight" would draw each figure a second time.
    tight = fig.get_layout_engine() is None
    fig.savefig(buffer, format="png", dpi=_DPI, bbox_inches="tight" if tight else None, facecolor="white")
    return buffer.getvalue()


def _save(fig: Figure, path: Path) -> Path:
    return write_atomic(path, _render(fig))


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def _beside(x: float, n: int) -> np.ndarray:
    """x positions for ``n`` single-seed dots just right of a mean marker at ``x`` (so neither hides)."""
    return x + 0.22 + (np.linspace(-0.07, 0.07, n) if n > 1 else np.zeros(1))


def _mean_marker(ax, x: float, summary, colour: str) -> None:
    """A method's mean as a dot, with its confidence interval as an error bar when there is one."""
    if summary.ci_low is None:
        ax.plot(x, summary.mean, "o", ms=8, color=colour)
        return
    yerr = [[summary.mean - summary.ci_low], [summary.ci_high - summary.mean]]
    ax.errorbar(x, summary.mean, yerr=yerr, fmt="o", ms=8, color=colour, capsize=5, lw=2)


def _cap_percent(ax) -> None:
    """Stop a percentage axis at 100: a t-interval from few seeds can reach past it, the data cannot."""
    low, high = ax.get_ylim()
    if high > 100.5:
        ax.set_ylim(low, 100.5)


def _title_list(groups: Sequence[Group]) -> list[str]:
    return [g.title.replace(" (baseline)", "\n(baseline)") for g in groups]


# -------------------------------------------------------------------------------- 1. the gallery


def _formula(functional: object) -> str:
    """The first paragraph of the functional twin's docstring, which carries the method's formula."""
    doc = inspect.getdoc(functional) or ""
    first = doc.split("\n\n")[0].replace("\n", " ")
    return re.sub(r"``(.*?)``", r"\1", first).replace(":class:", "").replace("`", "").replace("$", r"\$")


def gallery_outputs(methods: Sequence[str] | None = None) -> list[dict[str, object]]:
    """Each method applied to :data:`GALLERY_INPUT` with a 2x2 window, stride 2, default options, eval
    mode, learnable parts at their initialisation under ``torch.manual_seed(GALLERY_SEED)``.

    Returns one dict per method: ``name``, ``title``, ``family``, ``formula``, ``output`` (2x2 list) or
    ``error`` (why it could not be built).
    """
    import torch

    import poolkit

    names = list(methods) if methods is not None else poolkit.list_pools()
    family_rank = {"study": 0, "classic": 1, "literature": 2}
    specs = {n: poolkit.get_pool_spec(n) for n in names}
    names.sort(key=lambda n: (method_order(n)[0], family_rank.get(specs[n].family, 3), n))
    x = torch.tensor(GALLERY_INPUT, dtype=torch.float32).reshape(1, 1, 4, 4)
    out = []
    for name in names:
        spec = specs[name]
        entry: dict[str, object] = {
            "name": name,
            "title": spec.title,
            "family": spec.family,
            "formula": _formula(spec.functional),
        }
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                torch.manual_seed(GALLERY_SEED)
                pool = poolkit.create_pool(name, 2, channels=1).eval()
                entry["output"] = pool(x).reshape(2, 2).tolist()
        except Exception as exc:  # a method that cannot pool this input is shown as such, not hidden
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out.append(entry)
    return out


def _heatmap(ax, values: np.ndarray, vmin: float, vmax: float, fontsize: float) -> None:
    ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(values):
        shade = (v - vmin) / (vmax - vmin) if vmax > vmin else 0.5
        ax.text(
            j,
            i,
            f"{v:.2f}",
            ha="center",
            va="center",
            fontsize=fontsize,
            color="black" if shade > 0.6 else "white",
        )
    ax.set_xticks([])
    ax.set_yticks([])


def gallery_figure(out_dir: Path) -> FigureFile:
    """Figure 1: every registered method on the same 4x4 input (needs no runs)."""
    import poolkit

    path = write_atomic(out_dir / "fig1_method_gallery.png", _gallery_png(tuple(poolkit.list_pools())))
    caption = (
        "Each method pools the same 4×4 input with a 2×2 window and stride 2, with its default options, in "
        "eval mode. Methods with learnable or convolutional parts are shown at their initialisation (torch "
        f"seed {GALLERY_SEED}), not after training; stochastic methods show their eval-mode output. The "
        "text under each panel is the formula from the method's docstring (M = window max, A = window "
        "mean, T_K = mean of the top K, R = the window's cells)."
    )
    return FigureFile(path, "Method gallery", caption)


@functools.lru_cache(maxsize=2)
def _gallery_png(methods: tuple[str, ...]) -> bytes:
    """The gallery depends only on the registered methods, so one process draws it once."""
    entries = gallery_outputs(methods)
    cols = 5
    rows = math.ceil((len(entries) + 1) / cols)
    height = 3.6 * rows + 0.6
    fig = Figure(figsize=(3.3 * cols, height))
    grid = fig.add_gridspec(rows, cols, hspace=0.95, wspace=0.35, top=1 - 1.0 / height, bottom=0.7 / height)
    x = np.asarray(GALLERY_INPUT)
    vmin, vmax = float(x.min()), float(x.max())
    ax = fig.add_subplot(grid[0, 0])
    _heatmap(ax, x, vmin, vmax, 9)
    for k in (1.5,):
        ax.axhline(k, color="white", lw=3)
        ax.axvline(k, color="white", lw=3)
    ax.set_title("Input (4×4), 2×2 windows\nstride 2", fontsize=11, fontweight="bold")
    for index, entry in enumerate(entries, start=1):
        ax = fig.add_subplot(grid[index // cols, index % cols])
        ax.set_title(
            f"{entry['title']}\n[{entry['name']}, {entry['family']}]",
            fontsize=10,
            color=method_colour(str(entry["name"])),
            fontweight="bold",
        )
        if "output" in entry:
            _heatmap(ax, np.asarray(entry["output"]), vmin, vmax, 11)
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, _wrap(f"not shown: {entry['error']}", 30), ha="center", va="center", fontsize=8)
        ax.text(
            0.5,
            -0.06,
            _wrap(str(entry["formula"]), 40),
            transform=ax.transAxes,
            ha="center",
            va="top",
            fontsize=7.5,
            family="monospace",
        )
    fig.suptitle(
        "Figure 1. Pooling methods on one 4×4 input: 2×2 output of each (colour scale = input's range)",
        fontsize=14,
        y=1 - 0.2 / height,
    )
    return _render(fig)


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
                _mean_marker(ax, i, row.summary, colour)
                seeds = list(row.group.top1.values())
                ax.scatter(
                    _beside(i, len(seeds)),
                    seeds,
                    s=14,
                    color=colour,
                    alpha=0.45,
                    zorder=3,
                )
                if row.group.is_baseline:
                    ax.axhline(row.summary.mean, color=colour, ls="--", lw=1, alpha=0.7)
            ax.set_xticks(range(len(rows)), _title_list([r.group for r in rows]), rotation=40, ha="right")
            ns = sorted({r.summary.n for r in rows})
            n_text = f"n = {ns[0]}" if len(ns) == 1 else f"n = {ns[0]}–{ns[-1]}"
            ax.set_title(f"{column.title} ({n_text} seeds per method)")
            ax.set_ylabel("test top-1 accuracy (%)")
            _cap_percent(ax)
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
        path = _save(fig, out_dir / f"fig2_accuracy_{model}.png")
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
            marker = _MARKERS[models.index(column.model) % len(_MARKERS)]
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
            marker=_MARKERS[i % len(_MARKERS)],
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
    path = _save(fig, out_dir / "fig3_architecture_sensitivity.png")
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
        path = _save(fig, out_dir / f"fig4_ablation_{method}_{column.slug}.png")
        caption = (
            f"{title} on {column.full_title}: mean test top-1 over seeds for each (K, T); cell text = mean, "
            "sample std and number of seeds; red box = highest mean (not necessarily distinguishable from "
            "its neighbours: compare the stds); grey = no runs. K = 1 is max pooling for every T (the top-1 "
            "mean is the maximum); on 2x2 windows K = 4 is the plain mean and no K > 4 exists."
        )
        files.append(FigureFile(path, f"{title} K × T ablation, {column.full_title}", caption))
    return files, []


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
        path = _save(fig, out_dir / f"fig5_learning_curves_{column.slug}.png")
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
            marker = _MARKERS[j % len(_MARKERS)]
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
            Line2D(
                [], [], marker=_MARKERS[j % len(_MARKERS)], color="grey", mec="k", lw=0, ms=8, label=c.title
            )
            for j, c in enumerate(columns)
        ]
        time_ax.legend(handles=handles, title="dataset", fontsize=8, title_fontsize=8, loc="best")
        fig.suptitle(
            f"Figure 6. {model_title(model)}: computational overhead of each pooling method",
            fontsize=12,
            x=0.02,
            ha="left",
        )
        path = _save(fig, out_dir / f"fig6_overhead_{model}.png")
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
            _mean_marker(cons_ax, i, row.summary, colour)
            values = list(row.values.values())
            cons_ax.scatter(
                _beside(i, len(values)),
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
        cons_ax.set_xticks(range(len(rows)), _title_list([r.group for r in rows]), rotation=40, ha="right")
        cons_ax.set_ylabel("shift consistency (% of images, same top-1 class)")
        _cap_percent(cons_ax)
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
        path = _save(fig, out_dir / f"fig7_shift_{column.slug}.png")
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
        path = _save(fig, out_dir / f"fig8_learned_{column.slug}.png")
        caption = (
            f"{column.full_title}: value of each learned pooling parameter at the end of training, per "
            "pooling layer from input to output; line = mean over channels and seeds, band = lowest to "
            "highest value (over channels and seeds). For the blend weights, 1 means pure max pooling and "
            "0 pure averaging."
        )
        files.append(FigureFile(path, f"Learned parameters, {column.full_title}", caption))
    return files, skipped
