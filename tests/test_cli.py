"""The ``poolkit`` command: help for every sub-command, lazy loading, list, sweep/reproduce errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

import poolkit
import poolkit.report
from poolkit import cli
from poolkit.experiments import expand_sweep, load_sweep


def run(capsys, *argv):
    """``poolkit ARGV`` in this process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # --help and usage errors exit through argparse
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in ("train", "sweep", "reproduce", "report", "shift", "bench", "list"):
        assert name in out


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_sub_command_has_help(capsys, command):
    code, out, err = run(capsys, command, "--help")
    assert code == 0, err
    assert out.startswith(f"usage: poolkit {command}")


def test_no_command_prints_help_and_fails(capsys):
    code, _, err = run(capsys)
    assert code == 2 and "COMMAND" in err


def test_version(capsys):
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.strip() == f"poolkit {poolkit.__version__}"


def test_a_missing_command_module_fails_alone_with_a_message(capsys, monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "bench", cli._Command("poolkit.not_written_yet", "x"))
    code, _, err = run(capsys, "bench")
    assert code == 2
    assert "the 'bench' command is not available" in err and "poolkit.not_written_yet" in err
    # the other commands still work
    assert run(capsys, "list", "presets")[0] == 0


def test_help_does_not_import_the_commands(capsys):
    commands = ["poolkit.train", "poolkit.experiments", "poolkit.report", "poolkit.analysis", "poolkit.bench"]
    script = (
        "import sys\nfrom poolkit.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print(sorted(m for m in sys.modules if m.startswith(tuple({commands!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


def test_python_dash_m_poolkit():
    done = subprocess.run([sys.executable, "-m", "poolkit", "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == f"poolkit {poolkit.__version__}"


def test_list_pools(capsys):
    code, out, _ = run(capsys, "list", "pools")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    for name in poolkit.list_pools():
        assert name in rows
        assert poolkit.get_pool_spec(name).family in rows[name]
    assert rows["channel_adaptive"].split()[3] == "64"  # one lambda per channel at 64 channels
    assert rows["max"].split()[2:4] == ["Max", "0"]
    assert "1d,2d,3d,adaptive" in rows["gem"] and "adaptive" not in rows["blurmax"]
    code, out, _ = run(capsys, "list", "pools", "--family", "study")
    listed = {line.split()[0] for line in out.splitlines()[1:] if line.strip()} & set(poolkit.list_pools())
    assert listed == set(poolkit.list_pools("study"))


def test_list_everything(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for section in ("== pools ==", "== models ==", "== datasets ==", "== presets =="):
        assert section in out
    assert "mnist5k" in out and "vgg16" in out and "paper" in out and "96" in out


def test_sweep_needs_a_config(capsys):
    code, _, err = run(capsys, "sweep")
    assert code == 2 and "CONFIG (a YAML file) or --preset NAME" in err
    code, _, err = run(capsys, "sweep", "--preset", "nope")
    assert code == 2 and "unknown preset 'nope'; presets are: ablation, paper, quick" in err
    code, _, err = run(capsys, "sweep", "quick")
    assert code == 2 and "use --preset quick" in err


def test_reproduce_paper_says_which_data_dir_to_pass(capsys, tmp_path):
    code, _, err = run(capsys, "reproduce", "--preset", "paper", "--out", str(tmp_path))
    assert code == 2
    assert "poolkit reproduce --preset paper --data-dir" in err and "cifar-100-python" in err
    assert not any(tmp_path.iterdir())


def test_dry_run_lists_the_runs(capsys, tmp_path):
    code, out, _ = run(capsys, "reproduce", "--preset", "paper", "--dry-run", "--out", str(tmp_path))
    assert code == 0
    assert "96 runs" in out and "96 new" in out and out.count("cifar100_vgg16_") == 24
    assert "pass --data-dir DIR" in out
    assert not (tmp_path / "runs").exists()
    code, out, _ = run(
        capsys, "sweep", "--preset", "quick", "--dry-run", "--set", "seed=[0, 1]", "--out", str(tmp_path)
    )
    assert code == 0 and "18 runs" in out and "2 worker(s)" in out


def test_slurm_dry_run_shows_the_job_parameters(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "sweep",
        "--preset",
        "paper",
        "--dry-run",
        "--launcher",
        "slurm",
        "--data-dir",
        str(tmp_path),
        "--set",
        "slurm.partition=gpu",
    )
    assert code == 0 and "slurm_partition=gpu" in out and "gpus_per_node=1" in out


def test_bad_set_and_flag_combinations(capsys):
    code, _, err = run(capsys, "sweep", "--preset", "quick", "--set", "epochs")
    assert code == 2 and "expected KEY=VALUE" in err
    code, _, err = run(capsys, "sweep", "--preset", "quick", "--no-wait")
    assert code == 2 and "--no-wait applies to --launcher slurm only" in err
    code, _, err = run(capsys, "sweep", "--preset", "quick", "--workers", "0")
    assert code == 2 and "expected a positive integer" in err


def _finished_sweep(tmp_path):
    """A sweep file whose runs are all finished already (so reproduce only builds the report)."""
    doc = {"name": "done", "grid": {"dataset": "synthetic", "model": "vgg11", "pool": ["max", "avg"]}}
    config = tmp_path / "done.yaml"
    config.write_text(yaml.safe_dump(doc))
    for spec in expand_sweep(load_sweep(config)):
        run_dir = tmp_path / "out" / "runs" / spec.name
        run_dir.mkdir(parents=True)
        result = {"status": "finished", "run_id": spec.run_id, "test_top1": 50.0}
        (run_dir / "result.json").write_text(json.dumps(result))
    return config


def test_reproduce_builds_the_report(capsys, tmp_path, monkeypatch):
    calls = []

    def fake_build_report(runs_dir, out_dir):
        calls.append((runs_dir, out_dir))
        return out_dir / "report.html"

    monkeypatch.setattr(poolkit.report, "build_report", fake_build_report)
    config = _finished_sweep(tmp_path)
    code, out, _ = run(capsys, "reproduce", str(config), "--out", str(tmp_path / "out"))
    assert code == 0
    assert calls == [(tmp_path / "out" / "runs", tmp_path / "out" / "report")]
    assert (
        "2 skipped (finished before)" in out
        and f"Report: {tmp_path / 'out' / 'report' / 'report.html'}" in out
    )


def test_a_failing_report_keeps_the_runs_and_says_how_to_retry(capsys, tmp_path, monkeypatch):
    def broken(runs_dir, out_dir):
        raise RuntimeError("figure backend exploded")

    monkeypatch.setattr(poolkit.report, "build_report", broken)
    config = _finished_sweep(tmp_path)
    code, _, err = run(capsys, "reproduce", str(config), "--out", str(tmp_path / "out"))
    assert code == 1
    assert "figure backend exploded" in err and f"poolkit report {tmp_path / 'out' / 'runs'} --out" in err
