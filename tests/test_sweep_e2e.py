"""End to end through the real train_run: a mini sweep on the synthetic dataset, resumed after an
interruption, then the report through ``poolkit reproduce``."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from poolkit.cli import main
from poolkit.experiments import expand_sweep, load_sweep, run_sweep
from poolkit.train import train_run

MINI = {
    "name": "mini",
    "grid": {"dataset": ["synthetic"], "model": ["vgg11"], "pool": ["max", "stochastic_mix"], "seed": [0]},
    "train": {"epochs": 2, "width": 0.0625, "batch_size": 64, "lr": 0.05},
}


class _Stop(KeyboardInterrupt):
    pass


def _stop_after_first_epoch(epoch, row):
    raise _Stop


@pytest.mark.slow
def test_mini_sweep_resumes_and_reports(tmp_path, capsys):
    sweep = load_sweep(MINI)
    max_run, mix_run = expand_sweep(sweep)
    runs = tmp_path / "runs"
    # An interrupted run: one of its two epochs done, checkpoint.pt on disk.
    with pytest.raises(_Stop):
        train_run(mix_run.config, runs / mix_run.name, progress=False, on_epoch=_stop_after_first_epoch)
    assert (runs / mix_run.name / "checkpoint.pt").exists() and not (
        runs / mix_run.name / "result.json"
    ).exists()

    result = run_sweep(sweep, tmp_path, workers=2, stream=io.StringIO())
    assert result.exit_code == 0, result.summary()
    assert [p.status for p in result.planned] == ["new", "resume"]
    for spec in (max_run, mix_run):
        run_dir = runs / spec.name
        saved = json.loads((run_dir / "result.json").read_text())
        assert saved["run_id"] == spec.run_id and saved["pool"] == spec.config["pool"]
        assert 0 <= saved["test_top1"] <= 100
        assert yaml.safe_load((run_dir / "config.yaml").read_text()) == spec.config
        with (run_dir / "metrics.csv").open() as handle:
            assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    assert "resumed" in json.loads((runs / mix_run.name / "env.json").read_text())
    assert f"{saved['test_top1']:.2f}" in result.summary()

    # reproduce on the same directory: nothing to train, then the report
    config = tmp_path / "mini.yaml"
    config.write_text(yaml.safe_dump(MINI))
    capsys.readouterr()
    assert main(["reproduce", str(config), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "0 finished, 2 skipped (finished before), 0 failed" in out
    report = out.strip().splitlines()[-1]
    assert report.startswith("Report: ") and (tmp_path / "report").is_dir()
    assert any((tmp_path / "report").iterdir())
