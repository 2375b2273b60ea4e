"""The report's content: which tables, figures and sentences it holds, in which order.

:func:`build_report` reads the run directories, writes the CSV tables and PNG figures, and renders
``report.md`` (figures linked as files) and ``report.html`` (figures embedded as base64 PNG, inline
CSS, no script and no external reference of any kind).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from poolkit.report import figures as figs
from poolkit.report import figures_accuracy as fig_acc
from poolkit.report import figures_behaviour as fig_beh
from poolkit.report import tables as tab
from poolkit.report.csvtables import write_atomic, write_tables
from poolkit.report.document import Bullets, Document, Heading, Image, Paragraph, Table
from poolkit.report.formatting import dataset_title, method_order, method_title, model_title
from poolkit.report.grouping import Column, ReportData, ablation_grids, collect
from poolkit.report.htmlpage import render_html
from poolkit.report.runs import load_runs

__all__ = ["build_report"]


def _figures(doc: Document, made: tuple[list[figs.FigureFile], list[str]]) -> None:
    files, skipped = made
    for f in files:
        doc.add(Image(f.path, f.title, f.caption))
    for reason in skipped:
        doc.add(Paragraph(f"**Figure skipped.** {reason}"))


def _column_tables(
    doc: Document,
    data: ReportData,
    table: Callable[[ReportData, Column], tab.TableRows],
) -> None:
    """One titled table per (model, dataset) column that ``table`` has rows for."""
    for column in data.columns:
        header, rows = table(data, column)
        if rows:
            doc.add(Heading(3, column.full_title))
            doc.add(Table(header, rows))


def _overview(doc: Document, data: ReportData, runs_dir: Path) -> None:
    status = Counter(r.status for r in data.runs)
    states = ("finished", "failed", "diverged", "incomplete", "unreadable")
    counts = ", ".join(f"{status.get(s, 0)} {s}" for s in states if s != "diverged" or status.get(s))
    doc.add(Paragraph(f"Read {len(data.runs)} run directories under `{runs_dir}`: {counts}."))
    if not data.runs:
        doc.add(
            Paragraph(
                "**No run directories were found** (a run directory holds config.yaml, metrics.csv, "
                "result.json or error.json). Only the method gallery, which needs no runs, is shown."
            )
        )
    finished = data.finished
    if finished:
        models = ", ".join(model_title(m) for m in sorted({r.model for r in finished if r.model}))
        datasets = ", ".join(dataset_title(d) for d in sorted({r.dataset for r in finished if r.dataset}))
        methods = sorted({r.pool for r in finished if r.pool}, key=method_order)
        seeds = ", ".join(str(s) for s in sorted({r.seed for r in finished if r.seed is not None}))
        devices = Counter(r.device or "unknown" for r in finished)
        doc.add(
            Bullets(
                [
                    f"Models: {models}; datasets: {datasets}.",
                    f"Methods: {', '.join(method_title(m) for m in methods)}.",
                    f"Seeds: {seeds}.",
                    "Devices: " + ", ".join(f"{d} ({n} runs)" for d, n in sorted(devices.items())) + ".",
                ]
            )
        )
    variants = sorted({c.variant for c in data.columns if c.variant})
    if variants:
        doc.add(
            Paragraph(
                "Runs of one model and dataset were trained with different settings; they are kept apart "
                "as separate columns: " + "; ".join(f"`{v}`" for v in variants) + "."
            )
        )
    level = round(data.confidence * 100)
    doc.add(
        Paragraph(
            "**How to read the statistics.** Accuracy is the last epoch's test top-1 (%), shown as mean ± "
            "sample standard deviation over seeds (n = seeds). Δ is the method minus max pooling, paired "
            "by seed (runs with the same seed share data order and augmentation): the mean of the per-seed "
            f"differences, its {level}% t-interval in brackets, the paired t-test p-value and, in "
            "parentheses, the Holm-adjusted p-value over the methods of that column. **(inconclusive)**: "
            "the interval contains 0, so the data cannot tell the method from max. **(not significant "
            "after Holm)**: the interval excludes 0 but the difference does not survive the correction for "
            "comparing several methods. With one seed there is no interval at all. See docs/report.md for "
            "the formulas."
        )
    )


def _table1(doc: Document, data: ReportData, figure_dir: Path) -> None:
    doc.add(Heading(2, "Table 1: top-1 accuracy by pooling method"))
    if not data.models:
        doc.add(Paragraph("No finished runs: Table 1 is empty."))
        return
    accuracy_figures = fig_acc.accuracy_figures(data, figure_dir)
    for model in data.models:
        doc.add(Heading(3, f"Table 1 ({model_title(model)}): test top-1 (%), best in bold"))
        doc.table(tab.table1(data, model))
        columns = [c for c in data.columns if c.model == model]
        sentences = [s for c in columns if (s := tab.resolution_sentence(data, c))]
        notes = [n for c in columns for n in data.notes.get(c, [])]
        for sentence in sentences:
            doc.add(Paragraph(sentence))
        if notes:
            doc.add(Paragraph("**Missing seeds or baselines** (Δ uses only the seeds both methods have):"))
            doc.add(Bullets(notes))
        files = [f for f in accuracy_figures[0] if f.path.name == f"fig2_accuracy_{model}.png"]
        _figures(doc, (files, []))
    header, rows = tab.variants_table(data)
    if rows:
        doc.add(Heading(3, "Other option settings"))
        doc.add(
            Paragraph(
                "Table 1 shows each method at its default options when such runs exist; runs at other "
                "options that the K × T section does not show are listed here, compared with max the same "
                "way (their Holm correction is over the option settings of one method)."
            )
        )
        doc.add(Table(header, rows))


def _sections(doc: Document, data: ReportData, figure_dir: Path) -> None:
    doc.add(Heading(2, "Architecture sensitivity"))
    _figures(doc, fig_acc.architecture_figure(data, figure_dir))

    doc.add(Heading(2, "Ablation: K × T"))
    grids = ablation_grids(data)
    _figures(doc, fig_acc.ablation_figures(data, figure_dir))
    for column, method, groups in grids:
        doc.add(
            Paragraph(
                f"{method_title(method)}, {column.full_title}: mean test top-1 (%) ± sample std (n "
                "seeds) per K (rows) and T (columns); best in bold."
            )
        )
        doc.table(tab.ablation_table(data, column, groups))

    doc.add(Heading(2, "Learning curves"))
    _figures(doc, fig_beh.learning_curve_figures(data, figure_dir))

    doc.add(Heading(2, "Computational overhead"))
    if data.overhead:
        excluded = {r.warmup_excluded for r in data.overhead}
        warmup = {
            frozenset({"all"}): "The first epoch of every run is left out of the timings as warm-up.",
            frozenset({"none"}): "No run has more than 2 epochs, so every epoch counts in the timings "
            "(the first epoch's warm-up is included).",
        }.get(
            frozenset(excluded),
            "The first epoch is left out of the timings as warm-up in runs with more than 2 epochs; "
            "shorter runs use every epoch.",
        )
        doc.add(
            Paragraph(
                "Seconds per epoch and images per second are means of metrics.csv's epoch_seconds and "
                "images_per_second; ×max is the ratio to max pooling's runs on the same model and dataset "
                "in the same sweep directory (so on the same machine; runs a sweep executes side by side "
                f"share it, which adds noise). {warmup} Peak memory is the device's peak allocation during "
                "training (— where the device does not report it)."
            )
        )
        devices = {r.device for r in data.finished}
        if len(devices) > 1:
            doc.add(
                Paragraph(
                    f"**Runs were measured on different devices** ({', '.join(sorted(map(str, devices)))}): "
                    "compare timings only within one sweep."
                )
            )
        for model in data.models:
            doc.add(Heading(3, f"{model_title(model)}: parameters"))
            doc.table(tab.params_table(data, model))
            doc.add(Heading(3, f"{model_title(model)}: speed and memory"))
            doc.table(tab.timing_table(data, model))
        notes = sorted({f"{r.group.column.full_title}: {r.note}." for r in data.overhead if r.note})
        if notes:
            doc.add(Bullets(notes))
    _figures(doc, fig_beh.overhead_figures(data, figure_dir))

    doc.add(Heading(2, "Shift consistency"))
    if data.shift:
        doc.add(
            Paragraph(
                "Consistency (Zhang 2019): for every test image two random circular shifts are drawn and "
                "classified; the percentage of images whose two top-1 classes agree. The accuracy columns "
                "shift every image by d pixels along both axes. Protocol and its differences from Zhang "
                "2019: docs/report.md."
            )
        )
        _column_tables(doc, data, tab.shift_table)
    _figures(doc, fig_beh.shift_figures(data, figure_dir))

    doc.add(Heading(2, "Learned pooling parameters"))
    if data.learned:
        doc.add(
            Paragraph(
                "Values of the learnable pooling parameters after training, per pooling layer (1 = nearest "
                "the input): mean [min, max] over channels and seeds. lambda and m are the weight on max "
                "(1 = max pooling, 0 = average pooling); threshold is T; p is GeM's exponent."
            )
        )
        _column_tables(doc, data, tab.learned_table)
    _figures(doc, fig_beh.learned_figures(data, figure_dir))


def _problems(doc: Document, data: ReportData) -> None:
    # Diverged runs are listed here too (the heading keeps its anchor for existing links).
    doc.add(Heading(2, "Failed, incomplete and unreadable runs"))
    header, rows = tab.problem_runs_table(data)
    if rows:
        doc.add(
            Paragraph(
                "These runs are not in the statistics above (except finished runs whose only problem is an "
                "optional file, which are)."
            )
        )
        doc.add(Table(header, rows))
    else:
        doc.add(Paragraph(f"None: all {len(data.runs)} runs finished and were read completely."))


def build_report(
    runs_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, confidence: float = 0.95
) -> Path:
    """Read every run directory under ``runs_dir`` and write the report into ``out_dir``.

    Writes ``report.md``, ``report.html`` (self-contained), ``figures/*.png`` and the tables as CSV:
    ``accuracy.csv`` (one row per model, dataset, variant, method and options), ``runs.csv`` (one row per
    run directory, every seed's values), ``overhead.csv`` and, when present, ``shift.csv`` and
    ``learned_parameters.csv``. Broken or unfinished runs are listed in the report, never fatal.

    Returns:
        the path of ``report.html`` (``report.md`` is beside it).

    Raises:
        ValueError: ``runs_dir`` is not a directory, or ``confidence`` is not in (0, 1).

    Example:
        >>> build_report("out/runs", "out/report")  # doctest: +SKIP
        PosixPath('out/report/report.html')
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), e.g. 0.95; got {confidence!r}")
    runs_dir = Path(runs_dir)
    out = Path(out_dir)
    runs = load_runs(runs_dir)
    data = collect(runs, confidence)
    figure_dir = out / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)

    doc = Document("poolkit report: pooling methods compared")
    _overview(doc, data, runs_dir)
    doc.add(Heading(2, "Figure 1: the pooling methods"))
    gallery = figs.gallery_figure(figure_dir)
    doc.add(Image(gallery.path, gallery.title, gallery.caption))
    _table1(doc, data, figure_dir)
    _sections(doc, data, figure_dir)
    _problems(doc, data)
    files = write_tables(data, out)
    doc.add(Heading(2, "Files"))
    doc.add(
        Bullets(
            [f"`{p.name}`: {_FILE_NOTES[name]}" for name, p in files.items()]
            + ["`figures/`: every figure as PNG."]
        )
    )

    write_atomic(out / "report.md", doc.to_markdown(out))
    return write_atomic(out / "report.html", render_html(doc))


_FILE_NOTES = {
    "accuracy": "one row per model, dataset, variant, method and options: mean, std, n, Δ, paired CI, p, "
    "Holm p",
    "runs": "one row per run directory with every seed's values and its status",
    "overhead": "parameters, timing and memory per method, with ratios to max",
    "shift": "shift consistency and accuracy by shift per method",
    "learned": "learned pooling parameters per method, layer and parameter",
}
