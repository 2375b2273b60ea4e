"""The report's figures (matplotlib, Agg canvas; no pyplot state is touched).

Every figure is readable on its own: a title, axis labels with units and a legend. A method has one
colour in every figure (:func:`method_colour`). A figure whose runs are absent is skipped and the
reason returned, never drawn from made-up numbers.

This module holds what every figure shares (colours, markers, saving) and Figure 1, the method gallery;
:mod:`poolkit.report.figures_accuracy` draws Figures 2-4 (accuracy, architecture, ablation) and
:mod:`poolkit.report.figures_behaviour` Figures 5-8 (learning curves, overhead, shift, learned values).
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from poolkit.registry import PoolSpec
from poolkit.report.csvtables import write_atomic
from poolkit.report.formatting import method_order
from poolkit.report.grouping import Group

__all__ = [
    "GALLERY_INPUT",
    "MARKERS",
    "FigureFile",
    "beside",
    "cap_percent",
    "gallery_figure",
    "gallery_outputs",
    "mean_marker",
    "method_colour",
    "save_figure",
    "title_list",
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
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
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


def save_figure(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``path``."""
    return write_atomic(path, _render(fig))


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) or text


def beside(x: float, n: int) -> np.ndarray:
    """x positions for ``n`` single-seed dots just right of a mean marker at ``x`` (so neither hides)."""
    return x + 0.22 + (np.linspace(-0.07, 0.07, n) if n > 1 else np.zeros(1))


def mean_marker(ax, x: float, summary, colour: str) -> None:
    """A method's mean as a dot, with its confidence interval as an error bar when there is one."""
    if summary.ci_low is None:
        ax.plot(x, summary.mean, "o", ms=8, color=colour)
        return
    yerr = [[summary.mean - summary.ci_low], [summary.ci_high - summary.mean]]
    ax.errorbar(x, summary.mean, yerr=yerr, fmt="o", ms=8, color=colour, capsize=5, lw=2)


def cap_percent(ax) -> None:
    """Stop a percentage axis at 100: a t-interval from few seeds can reach past it, the data cannot."""
    low, high = ax.get_ylim()
    if high > 100.5:
        ax.set_ylim(low, 100.5)


def title_list(groups: Sequence[Group]) -> list[str]:
    """The groups' titles as x tick labels, ``(baseline)`` on a line of its own."""
    return [g.title.replace(" (baseline)", "\n(baseline)") for g in groups]


# -------------------------------------------------------------------------------- 1. the gallery


def _formula(spec: PoolSpec) -> str:
    """The method's registered formula (``PoolSpec.formula``), ``$`` escaped for matplotlib's mathtext."""
    return spec.formula.replace("$", r"\$")


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
            "formula": _formula(spec),
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
        "text under each panel is the method's registered formula (M = window max, A = window "
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
