"""poolkit bench: the op grid, memory counting, the targets and the CLI (no timing assertions)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import poolkit
from poolkit import bench
from poolkit.bench import NATIVE, ModelResult, OpCase, OpResult
from poolkit.bench.timing import _traffic
from poolkit.layers.fused import use_fused_kernels

TINY = OpCase("tiny", (2, 4, 8, 8), 2, 2)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser


def test_op_grid_has_a_row_per_pool_layout_dtype_mode_with_ratios_to_native_max():
    pools = poolkit.list_pools()
    rows = bench.bench_ops(pools, [TINY], dtypes=("float32", "bfloat16"), min_run_time=0.001)
    timed = [r for r in rows if r.pool not in (bench.COPY, bench.CLONE)]
    keys = [(r.pool, r.layout, r.dtype, r.mode) for r in timed]
    expected = {
        (p, layout, dtype, mode)
        for p in [NATIVE, *pools]
        for layout in ("nchw", "channels_last")
        for dtype in ("float32", "bfloat16")
        for mode in bench.MODES
    }
    assert len(keys) == len(set(keys)) and set(keys) == expected
    assert all(r.error is None for r in rows), [r.error for r in rows if r.error]
    # copy and clone once per group, forward only
    refs = [(r.pool, r.layout, r.dtype, r.mode) for r in rows if r.pool in (bench.COPY, bench.CLONE)]
    assert len(refs) == 8 and {m for *_, m in refs} == {"fwd"}
    for r in timed:
        ref = next(n for n in timed if n.pool == NATIVE and n.group == r.group and n.mode == r.mode)
        if r.mode == "memory":
            assert (
                r.ms is None and r.saved_bytes and r.ratio == pytest.approx(r.saved_bytes / ref.saved_bytes)
            )
            continue
        copy = next(n for n in rows if n.pool == bench.COPY and n.group == r.group)
        assert r.ms > 0 and r.iqr_ms >= 0 and r.ratio == pytest.approx(r.ms / ref.ms)
        assert r.copy_fraction == pytest.approx(r.gbps / copy.gbps)
        # GB/s of the minimal traffic: input read + output written (x2 with the backward pass)
        itemsize = 4 if r.dtype == "float32" else 2
        traffic = (2 * 4 * 8 * 8 + 2 * 4 * 4 * 4) * itemsize * (1 if r.mode == "fwd" else 2)
        assert r.gbps == pytest.approx(traffic / (r.ms / 1e3) / 1e9)
    assert all(r.ratio == 1.0 for r in timed if r.pool == NATIVE)
    params = {r.pool: r.params for r in timed}
    assert params["channel_adaptive"] == 4 and params[NATIVE] == 0 and params["max"] == 0


def test_named_cases_and_batch():
    cases = bench.resolve_cases(None)
    assert [c.name for c in cases] == ["vgg16-1", "vgg16-2", "vgg16-3", "vgg16-4", "vgg16-5", "resnet-stem"]
    assert {"audio-1d", "video-3d"} <= set(bench.OP_CASES)  # named, not in the default run
    assert cases[0].shape == (128, 64, 32, 32) and cases[4].shape == (128, 512, 2, 2)
    stem = bench.OP_CASES["resnet-stem"]
    assert (stem.kernel_size, stem.stride, stem.padding, stem.window) == (3, 2, 1, "3x3/2 p1")
    small = bench.resolve_cases(["vgg16-2", "resnet-stem"], [(1, 2, 5, 5)], kernel_size=3, batch=4)
    assert [c.shape for c in small] == [(4, 128, 16, 16), (4, 64, 32, 32), (1, 2, 5, 5)]
    assert (small[2].kernel_size, small[2].stride) == (3, 3)
    with pytest.raises(ValueError, match=r"valid cases are: vgg16-1, .*resnet-stem"):
        bench.resolve_cases(["vgg16-6"])


def test_saved_bytes_of_native_max_are_input_plus_int64_indices():
    x = torch.randn(2, 4, 8, 8)
    saved = bench.saved_tensor_bytes(lambda t: F.max_pool2d(t, 2, 2), x)
    input_bytes, indices_bytes = 2 * 4 * 8 * 8 * 4, 2 * 4 * 4 * 4 * 8
    assert saved == bench.SavedBytes(total=input_bytes + indices_bytes, extra=indices_bytes, saves_input=True)
    rows = bench.bench_ops(["max"], [TINY], layouts=["nchw"], dtypes=["float32"], modes=["memory"])
    native = next(r for r in rows if r.pool == NATIVE)
    assert (native.saved_bytes, native.saved_extra_bytes, native.saves_input) == (3072, 1024, True)


def test_saved_bytes_known_by_construction():
    x = torch.randn(3, 5)  # 60 bytes
    # x * x saves x twice: one storage, counted once
    assert bench.saved_tensor_bytes(lambda t: t * t, x) == bench.SavedBytes(60, 0, True)
    # exp saves its result, not its input
    assert bench.saved_tensor_bytes(lambda t: t.exp(), x) == bench.SavedBytes(60, 60, False)
    # a saved view keeps its whole storage: t[:1] * w saves the view of x (all 60 bytes) and w
    w = torch.randn(1, 5, requires_grad=True)  # 20 bytes
    assert bench.saved_tensor_bytes(lambda t: t[:1] * w, x) == bench.SavedBytes(80, 20, True)
    # parameters (which exist anyway) are excluded on request
    assert bench.saved_tensor_bytes(lambda t: t[:1] * w, x, [w]) == bench.SavedBytes(60, 0, True)
    # nothing that needs saving
    assert bench.saved_tensor_bytes(lambda t: t + 1, x) == bench.SavedBytes(0, 0, False)


def test_pool_groups_expand():
    assert bench.expand_pools(None) == poolkit.list_pools()
    assert bench.expand_pools(["study", "gem", "max"]) == [*poolkit.registry.STUDY_METHODS, "gem"]
    assert bench.expand_pools(["targets"]) == list(bench.TARGET_METHODS)
    # issue 11 judges the study's methods (max is the reference), mixed and gem
    assert set(bench.TARGET_METHODS) == {*poolkit.registry.STUDY_METHODS, "mixed", "gem"} - {"max"}


def test_gbps_arithmetic():
    assert bench.gbps(2_000_000_000, 1.0) == 2.0
    assert bench.gbps(3_000_000, 0.001) == pytest.approx(3.0)
    x, y = torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 4, 4)
    assert _traffic(x, y, "fwd") == 2048 + 512
    assert _traffic(x, y, "fwd+bwd") == 2 * (2048 + 512)


def _op(pool, mode="fwd+bwd", case="vgg16-1", layout="nchw", dtype="float32", **values):
    return OpResult(case, "1x1x2x2", "2x2/2", layout, dtype, "cpu", mode, pool, **values)


def _model(pool, ratio, model="vgg16"):
    return ModelResult(model, f"{model} width 1", "nchw", False, "cpu", pool, ms=100.0, ratio=ratio,
                       ratio_q25=ratio - 0.01, ratio_q75=ratio + 0.01, rounds=10, steps=1)  # fmt: skip


def test_targets_are_evaluated_from_rows():
    ops = [
        _op("tmaxavg", ratio=1.2),
        _op("tmaxavg", ratio=1.24, case="vgg16-3", layout="channels_last", dtype="bfloat16"),
        _op("tmaxavg", ratio=1.9, case="resnet-stem"),  # the stem's own, looser target for top-K
        _op("tmaxavg", ratio=2.9, case="vgg16-5"),
        _op("tmaxavg", ratio=9.0, case="custom"),  # a --shape case: not judged
        _op("mixed", ratio=1.1),
        _op("mixed", error="RuntimeError: no bf16", dtype="bfloat16"),
        _op("mixed", ratio=1.6, case="resnet-stem"),
        _op("gated", ratio=2.5, case="vgg16-2"),
        _op("tmaxavg", "memory", ratio=1.1),
        _op("channel_adaptive", "memory", ratio=1.1),
    ]
    models = [
        _model("channel_adaptive", 1.015),
        _model("tmaxavg", 1.06),
        _model("tmaxavg", 1.04, "resnet18"),
    ]
    targets = {(t.target, t.method): t for t in bench.evaluate_targets(ops, models)}
    t = targets["fwd+bwd ≤ 1.25× max (VGG16 cases)", "tmaxavg"]
    assert (t.status, t.value, t.where) == ("met", 1.24, "vgg16-3, channels_last, bfloat16")
    assert t.line() == (
        "fwd+bwd ≤ 1.25× max (VGG16 cases): tmaxavg worst 1.24× (vgg16-3, channels_last, bfloat16) met"
    )
    assert targets["fwd+bwd ≤ 2× max (ResNet stem)", "tmaxavg"].status == "met"
    assert targets["fwd+bwd ≤ 3× max (small tensors)", "tmaxavg"].value == 2.9
    assert targets["fwd+bwd ≤ 1.5× max (ResNet stem)", "mixed"].status == "not met"
    assert targets["fwd+bwd ≤ 2× max (large cases, convolutions included)", "gated"].status == "not met"
    assert targets["fwd+bwd ≤ 1.5× max (large cases)", "gem"].status == "missing"
    mixed = targets["fwd+bwd ≤ 1.25× max (VGG16 cases)", "mixed"]
    assert mixed.status == "error" and "no bf16" in mixed.where
    assert targets["vgg16 step ≤ +2% vs max", "channel_adaptive"].status == "met"
    assert "+1.5%" in targets["vgg16 step ≤ +2% vs max", "channel_adaptive"].line()
    step = targets["vgg16 step ≤ +2% vs max", "tmaxavg"]
    assert step.status == "not met" and step.value == 1.06  # the resnet18 row is judged on its own
    assert targets["resnet18 step ≤ +5% vs max", "tmaxavg"].status == "met"
    assert targets["vgg16 step ≤ +2% vs max", "stochastic_mix"].status == "missing"
    assert targets["saved for backward ≤ 2× max", "tmaxavg"].status == "met"
    assert targets["saved for backward ≤ 1× max", "channel_adaptive"].status == "not met"  # blends: ≤ 1×
    text = bench.format_targets(list(targets.values()))
    assert "not measured in this run for" in text and "stochastic_mix" in text
    assert bench.evaluate_targets() and all(t.status == "missing" for t in bench.evaluate_targets())


def test_a_failing_pool_gives_error_entries_not_a_crash(monkeypatch):
    create = poolkit.create_pool

    class NoBF16(nn.Module):
        def forward(self, x):
            if x.dtype == torch.bfloat16:
                raise TypeError("bfloat16 is not supported here")
            return F.avg_pool2d(x, 2)

    monkeypatch.setattr(
        poolkit, "create_pool", lambda name, *a, **k: NoBF16() if name == "gem" else create(name, *a, **k)
    )
    small = OpCase("vgg16-5", (2, 4, 8, 8), 2, 2)  # named as a judged case (small tensors)
    rows = bench.bench_ops(["gem", "tmaxavg"], [small], layouts=["nchw"], min_run_time=0.001)
    gem = {(r.dtype, r.mode): r for r in rows if r.pool == "gem"}
    assert all(gem["bfloat16", m].error == "TypeError: bfloat16 is not supported here" for m in bench.MODES)
    assert all(gem["float32", m].error is None for m in bench.MODES)
    assert all(r.error is None for r in rows if r.pool == "tmaxavg")
    table = bench.format_op_group([r for r in rows if r.dtype == "bfloat16"])
    assert "gem fwd: error: TypeError: bfloat16 is not supported here" in table
    target = {t.method: t for t in bench.evaluate_targets(rows) if t.target.startswith("fwd+bwd")}["gem"]
    assert target.status == "error" and "bfloat16" in target.where


def test_cli_json_markdown_csv_and_targets_from(tmp_path, capsys):
    out, md, csv = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.csv"
    args = _parser().parse_args(
        ["--pools", "tmaxavg,gated", "--case", "vgg16-5", "--batch", "2", "--layout", "nchw",
         "--dtype", "float32", "--min-run-time", "0.001", "--no-progress", "--json", str(out),
         "--markdown", str(md), "--out", str(csv)]
    )  # fmt: skip
    args._argv = ["--pools", "tmaxavg,gated", "..."]  # what the wrappers in benchmarks/ record
    assert bench.main(args) == 0
    stdout = capsys.readouterr().out
    assert "== vgg16-5 · 2x512x2x2 · 2x2/2 · nchw · float32 · cpu ==" in stdout and "Targets:" in stdout
    data = json.loads(out.read_text())
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["cpu"] and env["threads"] >= 1 and "gpu" in env
    pools = {r["pool"] for r in data["op"]}
    assert pools == {bench.COPY, bench.CLONE, NATIVE, "tmaxavg", "gated"}
    assert {t["method"] for t in data["targets"]} >= {"tmaxavg", "gated"}
    text = md.read_text()
    assert text.startswith("Measured ") and "| pool | fwd ms |" in text and "### Targets" in text
    lines = csv.read_text().splitlines()
    assert lines[0].startswith("level,case,shape") and len(lines) == 1 + len(data["op"])
    assert bench.main(_parser().parse_args(["--targets-from", str(out)])) == 0
    assert "fwd+bwd ≤ 3× max (small tensors): tmaxavg worst" in capsys.readouterr().out
    op, model, loaded_env, command = bench.load_results([out, out])
    assert len(op) == 2 * len(data["op"]) and model == [] and loaded_env == env
    assert command.splitlines() == [data["command"]] * 2 and data["command"].startswith(
        "poolkit bench --pools"
    )
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a 'poolkit bench --json' file"):
        bench.load_results([tmp_path / "other.json"])
    with pytest.raises(ValueError, match="cannot read"):
        bench.load_results([md])


def test_model_level_round_robin_for_vgg16_and_resnet18():
    for model, pool in (("vgg16", "gated"), ("resnet18", "stochastic_mix")):
        rows = bench.bench_models(
            [pool], model=model, width=0.0625, batch_size=2, image_size=32, rounds=2, steps=1, warmup=1
        )
        assert [r.pool for r in rows] == ["max", pool]
        assert all(r.error is None and r.ms > 0 and r.rounds == 2 and r.steps == 1 for r in rows)
        assert rows[0].ratio == 1.0 and rows[0].params == 0 and rows[1].params > 0
        assert all(r.ratio_q25 <= r.ratio <= r.ratio_q75 for r in rows)
        assert rows[0].config.startswith(model)
    assert "stem=imagenet" in rows[0].config and "200 classes" in rows[0].config
    table = bench.format_model_table(rows)
    assert "× max (median of rounds)" in table and "stochastic_mix" in table


def test_kernel_paths_add_rows_per_pool_and_the_environment_names_the_kernels():
    with use_fused_kernels("auto"):  # the plain rows are the current mode's
        rows = bench.bench_ops(
            ["channel_adaptive", "tmaxavg"],
            [TINY],
            layouts=["channels_last"],
            dtypes=["float32"],
            modes=["fwd+bwd", "memory"],
            kernels=("auto", "eager", "off"),
            min_run_time=0.001,
        )
    pools = {r.pool for r in rows}
    assert pools == {
        NATIVE,
        *(f"{p}{suffix}" for p in ("channel_adaptive", "tmaxavg") for suffix in ("", " [eager]", " [off]")),
    }
    assert all(r.error is None and r.ratio is not None for r in rows)
    with pytest.raises(ValueError, match="unknown kernel path 'fast'"):
        bench.bench_ops(["max"], [TINY], kernels=("fast",))
    with use_fused_kernels("auto"):
        env = bench.environment()
    assert env["fused"] == "auto"
    assert env["compiled_kernels"].startswith(("ready", "unavailable"))


def test_unknown_names_are_clear(capsys):
    parser = _parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["--shape", "2x3"])  # 3 to 5 axes: NxCxL, NxCxHxW, NxCxDxHxW
    assert bench.main(parser.parse_args(["--pools", "nope", "--device", "cpu"])) == 2
    assert "valid pools are: attention" in capsys.readouterr().err
    assert bench.main(parser.parse_args(["--case", "vgg16-1,nope"])) == 2
    assert "unknown case 'nope'; valid cases are: vgg16-1" in capsys.readouterr().err
    assert bench.main(parser.parse_args(["--level", "model", "--model", "vgg99"])) == 2
    assert "valid models are" in capsys.readouterr().err
    assert bench.main(parser.parse_args(["--layout", "nhwc"])) == 2
    assert "valid layouts are: nchw, channels_last" in capsys.readouterr().err
    assert bench.main(parser.parse_args(["--rounds", "0"])) == 2
    assert "--rounds must be positive" in capsys.readouterr().err
    assert bench.main(parser.parse_args(["--kernels", "auto,fast"])) == 2
    assert "valid kernel paths are: auto, on, eager, off" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"valid pools|valid names"):
        bench.bench_ops(["nope"], [TINY])


def test_1d_and_3d_cases_run_at_tiny_size():
    """The audio-1d and video-3d cases (at batch 1, shrunk) and custom 1-D/3-D shapes time every form."""
    audio, video = bench.OP_CASES["audio-1d"], bench.OP_CASES["video-3d"]
    assert (audio.spatial_dims, audio.window, video.spatial_dims, video.window) == (1, "4/4", 3, "2x2x2/2")
    cases = [
        bench.OpCase("audio-tiny", (1, 2, 16), audio.kernel_size, audio.stride),
        bench.OpCase("video-tiny", (1, 2, 4, 4, 4), video.kernel_size, video.stride),
        *bench.resolve_cases([], [(1, 2, 9), (1, 2, 3, 4, 5)], kernel_size=2),
    ]
    rows = bench.bench_ops(
        ["max", "tmaxavg", "attention"],
        cases,
        dtypes=["float32"],
        modes=["fwd", "fwd+bwd"],
        min_run_time=0.001,
    )
    pooled = [r for r in rows if r.pool in ("max", "tmaxavg", "attention", NATIVE)]
    assert {r.layout for r in rows} == {"nchw"}  # channels_last is 4-D only
    assert len(pooled) == 4 * 4 * 2 and all(r.error is None and r.ratio is not None for r in pooled)
    assert {r.window for r in rows} >= {"4/4", "2x2x2/2", "2/2"}
