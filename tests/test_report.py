"""The report built from fabricated run directories (tests/test_report_fixtures.py)."""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats as sps

from poolkit.registry import get_pool_spec
from poolkit.report import build_report, cli, load_runs, read_run
from poolkit.report.figures import GALLERY_INPUT, gallery_outputs, method_colour
from poolkit.report.grouping import collect
from test_report_fixtures import STUDY_METHODS, make_run, make_study


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _row(rows: list[dict[str, str]], **match: str) -> dict[str, str]:
    found = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert len(found) == 1, (match, len(found))
    return found[0]


def seed_of(run: Path) -> int:
    return int(run.name.split("_s")[-1].split("_")[0])


def _top1(runs_dir: Path, dataset: str, model: str, pool: str) -> dict[int, float]:
    out = {}
    for run in runs_dir.glob(f"{dataset}_{model}_{pool}_s*"):
        result = run / "result.json"
        if result.is_file() and seed_of(run) < 3:  # seed 3 runs are the failed/incomplete/truncated ones
            data = json.loads(result.read_text())
            if not data["pool_options"]:
                out[data["seed"]] = data["test_top1"]
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study's sweep with a missing seed, a failed, an incomplete, a truncated and a duplicate run, and
    a T-Max-Avg K x T ablation."""
    root = tmp_path_factory.mktemp("study")
    runs = make_study(root)
    for path in runs.glob("tinyimagenet_vgg16_stochastic_mix_s2_*"):
        shutil.rmtree(path)
    make_run(runs, pool="gated", seed=3, state="failed", epochs=8)
    make_run(runs, pool="attention", seed=3, state="incomplete", epochs=30)
    make_run(runs, pool="soft_tmaxavg", seed=3, state="truncated", epochs=8)
    # a re-run of an existing run (same settings and seed) under another directory name
    original = next(runs.glob("cifar100_vgg16_max_s0_*"))
    shutil.copytree(original, runs / f"{original.name}_rerun")
    for k in (2, 4, 8):
        for t in (0.3, 0.5, 0.7):
            if (k, t) == (4, 0.3):
                continue  # T-Max-Avg's defaults: the main sweep's runs are that cell
            for seed in (0, 1):
                make_run(runs, pool="tmaxavg", seed=seed, epochs=8, pool_options={"k": k, "threshold": t},
                         top1=72.0 + 0.3 * (k == 4) - 0.5 * t + 0.1 * seed + 0.01 * k)  # fmt: skip
    make_run(runs, pool="stochastic_mix", seed=0, epochs=8, pool_options={"kappa": 4.0})
    out = root / "report"
    html_path = build_report(runs, out)
    return {
        "runs": runs,
        "out": out,
        "html": html_path.read_text(),
        "md": (out / "report.md").read_text(),
        "accuracy": _csv(out / "accuracy.csv"),
    }


def test_report_files_and_figures(study):
    out = study["out"]
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    for name in ("accuracy", "runs", "overhead", "shift", "learned_parameters"):
        assert (out / f"{name}.csv").is_file(), name
    expected = [
        "fig1_method_gallery",
        "fig2_accuracy_vgg16",
        "fig2_accuracy_resnet18",
        "fig3_architecture_sensitivity",
        "fig4_ablation_tmaxavg_vgg16_cifar100",
        "fig5_learning_curves_vgg16_cifar100",
        "fig5_learning_curves_vgg16_tinyimagenet",
        "fig5_learning_curves_resnet18_cifar100",
        "fig5_learning_curves_resnet18_tinyimagenet",
        "fig6_overhead_vgg16",
        "fig6_overhead_resnet18",
        "fig7_shift_vgg16_cifar100",
        "fig8_learned_vgg16_cifar100",
        "fig8_learned_vgg16_tinyimagenet",
    ]
    pngs = sorted(p.stem for p in (out / "figures").glob("*.png"))
    assert pngs == sorted(expected)
    for stem in expected:
        path = out / "figures" / f"{stem}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert path.stat().st_size > 20_000, stem
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.width >= 600 and image.height >= 300, (stem, image.size)
    # ResNet18 has one pooling layer: no value-vs-depth figure, and the report says why
    assert "ResNet18, CIFAR-100: a single pooling layer" in study["md"]


def test_html_is_self_contained(study):
    html = study["html"]
    assert not re.search(r"https?://", html)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    sources = re.findall(r'src="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert len(sources) == len(list((study["out"] / "figures").glob("*.png")))
    assert "<table>" in html and "<strong>" in html


def test_table1_means_and_paired_deltas_match_scipy(study):
    runs, rows = study["runs"], study["accuracy"]
    for dataset in ("cifar100", "tinyimagenet"):
        base = _top1(runs, dataset, "vgg16", "max")
        for pool in STUDY_METHODS[1:]:
            mine = _top1(runs, dataset, "vgg16", pool)
            row = _row(rows, model="vgg16", dataset=dataset, method=pool, in_table1="True")
            assert float(row["mean"]) == pytest.approx(np.mean(list(mine.values())))
            assert float(row["std"]) == pytest.approx(np.std(list(mine.values()), ddof=1))
            seeds = sorted(set(mine) & set(base))
            ref = sps.ttest_rel([mine[s] for s in seeds], [base[s] for s in seeds])
            ci = ref.confidence_interval(0.95)
            assert int(row["paired_n"]) == len(seeds)
            assert float(row["delta"]) == pytest.approx(np.mean([mine[s] - base[s] for s in seeds]))
            assert float(row["delta_ci_low"]) == pytest.approx(ci.low)
            assert float(row["delta_ci_high"]) == pytest.approx(ci.high)
            assert float(row["p_value"]) == pytest.approx(ref.pvalue)
            assert float(row["p_holm"]) >= float(row["p_value"])
            assert int(row["holm_family_size"]) == 7
            inconclusive = ci.low <= 0 <= ci.high
            assert (row["verdict"] == "inconclusive") == inconclusive


def test_markdown_shows_the_numbers_and_marks_inconclusive(study):
    md, rows = study["md"], study["accuracy"]
    table = md[md.index("### Table 1 (VGG16)") : md.index("### Table 1 (ResNet18)")]
    # the study's order of methods, titles from PoolSpec
    titles = ("Max (baseline)", "T-Max-Avg", "Soft T-Max-Avg", "Channel-Adaptive", "Learnable-T", "Gated",
              "Attention-Weighted", "Stochastic Mix")  # fmt: skip
    positions = [table.index(f"| {title}") for title in titles]
    assert positions == sorted(positions)
    for row in rows:
        if row["model"] != "vgg16" or row["in_table1"] != "True" or row["method"] == "max":
            continue
        mean = f"{float(row['mean']):.2f}".replace("-", "−")
        assert f"{mean}** ± " in table or f"{mean} ± {float(row['std']):.2f} (n={row['n']})" in table
        delta = f"{float(row['delta']):+.2f}".replace("-", "−")
        low = f"{float(row['delta_ci_low']):+.2f}".replace("-", "−")
        high = f"{float(row['delta_ci_high']):+.2f}".replace("-", "−")
        cell = next(line for line in table.splitlines() if line.startswith(f"| {row['title']} |"))
        assert f"{delta} [{low}, {high}]" in cell
        column = 2 if row["dataset"] == "cifar100" else 4
        delta_cell = cell.split(" | ")[column]
        assert ("(inconclusive)" in delta_cell) == (row["verdict"] == "inconclusive"), delta_cell
    assert "(inconclusive)" in table
    # best mean per column in bold
    best = max(float(r["mean"]) for r in rows if r["model"] == "vgg16" and r["dataset"] == "cifar100"
               and r["in_table1"] == "True")  # fmt: skip
    assert f"**{best:.2f}**" in table


def test_small_n_and_missing_seeds_are_said(study):
    md = study["md"]
    assert "Few seeds." in md
    assert "VGG16, Tiny ImageNet: n = 2–3 paired seeds" in md
    assert "With 2 seeds an interval is wide (its half-width is 12.71 standard errors)" in md
    row = _row(study["accuracy"], model="vgg16", dataset="tinyimagenet", method="stochastic_mix")
    assert row["paired_n"] == "2" and row["seeds_only_max"] == "2"
    assert "Stochastic Mix (Tiny ImageNet): paired on seeds 0, 1; seed 2 only for max." in md
    # the resolvable size is the median half-width of the column's intervals
    widths = [
        (float(r["delta_ci_high"]) - float(r["delta_ci_low"])) / 2
        for r in study["accuracy"]
        if r["model"] == "vgg16"
        and r["dataset"] == "tinyimagenet"
        and r["in_table1"] == "True"
        and r["delta"]
    ]
    assert f"a Δ smaller than about {np.median(widths):.2f} points cannot be resolved" in md


def test_failed_incomplete_unreadable_and_duplicate_runs_are_listed(study):
    md = study["md"]
    section = md[md.index("## Failed, incomplete and unreadable runs") :]
    assert (
        "failed after 2 epoch(s): OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" in section
    )
    assert "second line of detail" not in section
    assert "2 of 30 epoch(s) in metrics.csv" in section
    assert "result.json cannot be read" in section
    assert (
        f"same settings and seed as `{next(study['runs'].glob('cifar100_vgg16_max_s0_*')).name}`" in section
    )
    runs_csv = _csv(study["out"] / "runs.csv")
    assert len(runs_csv) == len([p for p in study["runs"].iterdir() if p.is_dir()])
    statuses = {r["status"] for r in runs_csv}
    assert statuses == {"finished", "failed", "incomplete", "unreadable"}
    finished = sum(r["status"] == "finished" for r in runs_csv)
    assert f"{len(runs_csv)} run directories" in md
    assert f"{finished} finished, 1 failed, 1 incomplete, 1 unreadable" in md


def test_overhead_leaves_out_the_warmup_epoch(study):
    rows = _csv(study["out"] / "overhead.csv")
    mix = _row(rows, model="vgg16", dataset="cifar100", method="stochastic_mix", pool_options="{}")
    # epoch 1 takes 3x as long; epochs 2..8 take 10.7 s (the fixture's 10 * (1 + 0.01 * 7))
    assert float(mix["epoch_seconds"]) == pytest.approx(10.7)
    assert float(mix["epoch_seconds_rel"]) == pytest.approx(1.07)
    assert float(mix["images_per_second_rel"]) == pytest.approx(1 / 1.07)
    assert mix["warmup_epoch_excluded"] == "all"
    adaptive = _row(rows, model="vgg16", dataset="cifar100", method="channel_adaptive")
    assert adaptive["pool_params"] == "1472" and adaptive["pool_params_per_layer"] == "64 128 256 512 512"
    assert "The first epoch of every run is left out of the timings as warm-up." in study["md"]
    assert "| Channel-Adaptive | 5 | 64 / 128 / 256 / 512 / 512 | 1,472 |" in study["md"]


def test_learned_parameters_and_shift_tables(study):
    learned = _csv(study["out"] / "learned_parameters.csv")
    row = _row(learned, model="vgg16", dataset="cifar100", method="channel_adaptive", layer="features.6")
    runs = [
        json.loads(p.read_text())
        for p in study["runs"].glob("cifar100_vgg16_channel_adaptive_s*/result.json")
    ]
    values = [v for r in runs for v in r["learned"]["features.6"]["values"]["lambda"]]
    assert float(row["mean"]) == pytest.approx(np.mean(values))
    assert float(row["min"]) == pytest.approx(min(values)) and float(row["max"]) == pytest.approx(max(values))
    assert row["depth"] == "1" and row["parameter"] == "lambda" and row["seeds"] == "3"
    assert (
        _row(learned, model="vgg16", dataset="cifar100", method="learnable_t", layer="features.43")["depth"]
        == "5"
    )

    shift = _csv(study["out"] / "shift.csv")
    base = _row(shift, model="vgg16", dataset="cifar100", method="max")
    assert float(base["consistency"]) == pytest.approx(np.mean([80.0, 80.5, 81.0]))
    assert json.loads(base["accuracy_by_shift"])["0"] == pytest.approx(72.7)
    assert "## Shift consistency" in study["md"] and "top-1 @ 4 px" in study["md"]


def test_ablation_grid(study):
    md = study["md"]
    assert "| K \\ T | T=0.3 | T=0.5 | T=0.7 |" in md
    k4 = next(line for line in md.splitlines() if line.startswith("| K=4 |"))
    assert "(n=3)" in k4.split(" | ")[1], "the main sweep's default T-Max-Avg runs fill the K=4, T=0.3 cell"
    assert "**" in k4, "the best cell is K = 4"
    # the grid's runs are not repeated in "Other option settings"; a lone option setting is listed there
    assert "### Other option settings" in md
    others = md[md.index("### Other option settings") : md.index("## Architecture sensitivity")]
    assert "T-Max-Avg" not in others and "Stochastic Mix | kappa=4.0" in others


def test_ablation_labels_the_k1_row_as_max_pooling(tmp_path):
    runs = tmp_path / "runs"
    for k in (1, 2):
        for t in (0.3, 0.6):
            make_run(runs, pool="tmaxavg", seed=0, epochs=2, pool_options={"k": k, "threshold": t},
                     top1=70.0 + k + t)  # fmt: skip
    md = (build_report(runs, tmp_path / "report").parent / "report.md").read_text()
    assert "| K=1 (= max pooling) |" in md
    assert "| K=2 |" in md


def test_single_seed_sweep_says_no_interval(tmp_path):
    runs = tmp_path / "runs"
    for pool, top1 in (("max", 70.0), ("tmaxavg", 70.4), ("channel_adaptive", 71.1)):
        make_run(runs, pool=pool, seed=0, top1=top1, epochs=2)
    out = build_report(runs, tmp_path / "report").parent
    md = (out / "report.md").read_text()
    assert "n = 1 seed per method, so there is no confidence interval and no p-value" in md
    assert "+1.10 (n=1, no interval)" in md and "+0.40 (n=1, no interval)" in md
    assert "No ResNet runs: architecture sensitivity needs both VGG and ResNet runs" in md
    assert "No ablation runs" in md
    assert "No shift.json in any finished run" in md
    assert "No run has more than 2 epochs" in md
    figures = {p.stem for p in (out / "figures").glob("*.png")}
    assert "fig3_architecture_sensitivity" not in figures and "fig2_accuracy_vgg16" in figures
    row = _row(_csv(out / "accuracy.csv"), method="channel_adaptive")
    assert row["n"] == "1" and row["std"] == "" and row["delta_ci_low"] == "" and row["p_value"] == ""


def test_empty_and_missing_runs_dir(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    out = build_report(tmp_path / "empty", tmp_path / "report").parent
    md = (out / "report.md").read_text()
    assert "**No run directories were found**" in md
    assert (out / "figures" / "fig1_method_gallery.png").is_file()
    with pytest.raises(ValueError, match="not a directory"):
        build_report(tmp_path / "missing", tmp_path / "r2")

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args([str(tmp_path / "missing")])) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_cli_default_out_dir(tmp_path, capsys):
    runs = tmp_path / "sweep" / "runs"
    make_run(runs, pool="max", seed=0, epochs=1)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.main(parser.parse_args([str(runs)])) == 0
    assert (tmp_path / "sweep" / "report" / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out
    assert cli.default_out_dir(tmp_path / "x") == tmp_path / "x" / "report"


def test_read_run_never_crashes(tmp_path):
    good = make_run(tmp_path, pool="max", seed=0, epochs=3)
    assert read_run(good).status == "finished"
    broken = make_run(tmp_path, pool="gated", seed=1, epochs=3)
    (broken / "config.yaml").write_text("dataset: [unclosed\n")
    record = read_run(broken)
    assert record.status == "unreadable" and "config.yaml cannot be read" in record.problems[0]
    no_seed = make_run(tmp_path, pool="gated", seed=2, epochs=3)
    for name in ("config.yaml", "result.json"):
        text = (no_seed / name).read_text()
        (no_seed / name).write_text(
            text.replace("seed: 2", "seed: two").replace('"seed": 2', '"seed": "two"')
        )
    assert "integer seed" in " ".join(read_run(no_seed).problems)
    bad_shift = make_run(tmp_path, pool="gated", seed=3, epochs=3)
    (bad_shift / "shift.json").write_text("{not json")
    record = read_run(bad_shift)
    assert record.status == "finished" and record.shift is None and "shift.json" in record.problems[0]
    holes = make_run(tmp_path, pool="avg", seed=4, epochs=3)
    lines = (holes / "metrics.csv").read_text().splitlines()
    lines[2] = ",".join("" if i in (7, 8) else v for i, v in enumerate(lines[2].split(",")))
    (holes / "metrics.csv").write_text("\n".join(lines) + "\n")
    record = read_run(holes)
    assert record.status == "finished" and len(record.column("epoch_seconds")) == 2
    statuses = {r.seed if r.seed is not None else "?": r.status for r in load_runs(tmp_path)}
    assert statuses == {0: "finished", 1: "unreadable", "?": "unreadable", 3: "finished", 4: "finished"}


def test_variants_are_kept_apart(tmp_path):
    for epochs in (2, 4):
        for pool, top1 in (("max", 70.0 + epochs), ("gated", 70.5 + epochs)):
            for seed in (0, 1):
                make_run(tmp_path, pool=pool, seed=seed, top1=top1 + 0.1 * seed, epochs=epochs)
    data = collect(load_runs(tmp_path))
    assert sorted(c.variant for c in data.columns) == ["epochs=2", "epochs=4"]
    for row in data.accuracy:
        assert row.summary.n == 2
        if row.comparison is not None:
            assert row.comparison.mean == pytest.approx(0.5)


def test_gallery_outputs_and_colours():
    entries = {e["name"]: e for e in gallery_outputs()}
    x = np.asarray(GALLERY_INPUT)
    windows = [x[i : i + 2, j : j + 2] for i in (0, 2) for j in (0, 2)]
    assert np.allclose(np.ravel(entries["max"]["output"]), [w.max() for w in windows])
    assert np.allclose(np.ravel(entries["avg"]["output"]), [w.mean() for w in windows])
    # the gallery is deterministic, learnable parts included
    again = {e["name"]: e for e in gallery_outputs()}
    assert all(again[n].get("output") == e.get("output") for n, e in entries.items())
    assert all("formula" in e and e["formula"] for e in entries.values())
    # the panels' text and titles are the registry's, not parsed from docstrings
    assert entries["channel_adaptive"]["formula"] == get_pool_spec("channel_adaptive").formula
    assert entries["tmaxavg"]["title"] == "T-Max-Avg"
    assert method_colour("max") == method_colour("max") != method_colour("stochastic_mix")
    assert method_colour("some_new_method") == method_colour("some_new_method")
