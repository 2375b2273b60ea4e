"""poolkit bench: every pool is timed against max in the same run (no timing assertions)."""

from __future__ import annotations

import argparse
import json

import pytest

import poolkit
from poolkit import bench


def test_layer_bench_reports_ratios_to_max_for_every_pool(tmp_path):
    results = bench.bench_layers(poolkit.list_pools(), [(2, 4, 8, 8)], min_run_time=0.001, device="cpu")
    assert results[0].pool == "max"
    assert sorted(r.pool for r in results) == poolkit.list_pools()
    assert results[0].ratio == 1.0
    for r in results:
        assert r.seconds > 0 and r.ratio == pytest.approx(r.seconds / results[0].seconds)
        assert r.mode == "fwd+bwd" and r.shape == "2x4x8x8"
    assert {r.pool: r.params for r in results}["channel_adaptive"] == 4
    out = tmp_path / "bench.json"
    bench.write_results(results, bench.environment(), out)
    data = json.loads(out.read_text())
    assert data["environment"]["torch"] and len(data["results"]) == len(results)


def test_cli_forward_only_to_csv(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    out = tmp_path / "b.csv"
    args = parser.parse_args(
        ["--pools", "tmaxavg", "gated", "--shape", "2x3x6x6", "--forward-only", "--min-run-time", "0.001",
         "--device", "cpu", "--out", str(out)]
    )  # fmt: skip
    assert bench.main(args) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("level,pool,shape,mode") and len(lines) == 4
    assert "vs max" in capsys.readouterr().out


def test_bad_arguments_are_clear():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--shape", "2x3x6"])
    with pytest.raises(ValueError, match="valid names"):
        bench.main(parser.parse_args(["--pools", "nope", "--device", "cpu"]))


def test_model_bench_times_a_training_step_per_pool():
    results = bench.bench_models(
        ["gated", "stochastic_mix"],
        model="vgg11",
        width=0.0625,
        batch_size=4,
        device="cpu",
        min_run_time=0.001,
    )
    assert [r.pool for r in results] == ["max", "gated", "stochastic_mix"]
    assert results[0].ratio == 1.0 and all(r.seconds > 0 for r in results)
    assert results[1].params > 0 and results[0].params == 0
    assert results[1].mode == "train-step" and results[1].shape.startswith("vgg11@0.0625:4x3x32x32")
