"""The documentation stays true: the README's code runs, every method is documented."""

from __future__ import annotations

import os
import re
from pathlib import Path

import poolkit

ROOT = Path(__file__).resolve().parents[1]


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_api_example_runs():
    blocks = _python_blocks((ROOT / "README.md").read_text())
    assert blocks, "README.md has no python example"
    namespace: dict[str, object] = {}
    for block in blocks:
        assert len(block.strip().splitlines()) <= 12
        exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["y"].shape == (8, 64, 16, 16)
    assert type(namespace["net"][2]).__name__ == "GatedPool"


def test_readme_quick_start_has_the_two_commands_and_ci_runs_them():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in quick.splitlines() if line.startswith("python3 -m venv")]
    assert len(commands) == 2
    assert commands[0].endswith("poolkit reproduce --preset quick")
    assert commands[1].endswith("pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci


def test_methods_doc_covers_every_registered_pool():
    text = (ROOT / "docs" / "methods.md").read_text()
    documented = set(re.findall(r"^### `([a-z_]+)`", text, flags=re.M))
    assert documented == set(poolkit.list_pools())
    for name in poolkit.list_pools():
        section = text.split(f"### `{name}`", 1)[1].split("\n### ", 1)[0]
        assert "Parameters" in section or "parameters" in section, name
        assert "Worked example" in section, name
        # the heading names the method by its registered label, the one the report and benchmarks print
        heading = section.split("\n", 1)[0].removeprefix(" — ")
        assert heading.lower().startswith(poolkit.get_pool_spec(name).title.lower()), (name, heading)


# ---------------------------------------------------------------------- docs/cluster.md
def _shell_commands(text: str) -> list[str]:
    """Every command line of the ```bash blocks (continuation lines joined)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #", 1)[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def _cluster_commands() -> list[list[str]]:
    import shlex

    return [shlex.split(c) for c in _shell_commands((ROOT / "docs" / "cluster.md").read_text())]


def test_cluster_doc_commands_are_accepted_by_the_real_parsers():
    from torch.distributed.run import parse_args as torchrun_parse

    from poolkit.cli import build_parser

    commands = _cluster_commands()
    programs = sorted({c[0] for c in commands})
    assert programs == ["poolkit", "torchrun"]
    seen = set()
    for argv in commands:
        if argv[0] == "torchrun":
            launch = torchrun_parse(argv[1:])
            assert launch.module and launch.training_script == "poolkit" and launch.standalone
            argv = ["poolkit", *launch.training_script_args]
        args = build_parser(argv[1]).parse_args(argv[1:])  # exits (fails the test) on an unknown flag
        seen.add(args.command)
        if args.command == "train":
            from poolkit.train.cli import config_from_args

            config_from_args(args)  # a valid run config
    assert seen == {"bench", "sweep", "reproduce", "train", "report"}


def test_cluster_doc_slurm_commands_run_against_a_stand_in_slurm(tmp_path, monkeypatch, capsys):
    """The dry run, the submissions and --status of the page, on the paper preset, with stand-ins for
    sbatch/sacct/srun (no cluster here); /data and results/ point into a temporary directory."""
    from poolkit.cli import main
    from test_sweep_slurm import _fake_slurm

    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir, "PENDING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    ran = 0
    for argv in _cluster_commands():
        if argv[0] != "poolkit" or argv[1] not in ("sweep", "reproduce"):
            continue
        runs_something = "--dry-run" in argv or "--no-wait" in argv or "--status" in argv
        if not runs_something:
            continue  # would wait for the jobs
        argv = [str(tmp_path / "data") if a == "/data" else a for a in argv]
        assert main(argv[1:]) == 0, argv
        out = capsys.readouterr()
        ran += 1
        if "--dry-run" in argv:
            assert "Sweep 'paper': 96 runs" in out.out and "slurm_partition=gpu" in out.out
            assert "timeout_min=720" in out.out and "source $HOME/venvs/poolkit/bin/activate" in out.out
        elif "--no-wait" in argv:
            assert "submitted 96 runs as job array 4242" in out.err
            script = (bin_dir / "submitted.sh").read_text()
            assert "#SBATCH --partition=gpu" in script and "#SBATCH --time=720" in script
            if "--tasks-per-node" in argv:
                assert "#SBATCH --ntasks-per-node=4" in script and "#SBATCH --gpus-per-node=4" in script
        else:
            assert "96 runs in results/paper/runs" in out.out and "queued" in out.out
    assert ran == 4  # dry run, submission, status, DDP submission


def test_cluster_doc_gpu_hour_estimate_runs_on_bench_output(tmp_path, monkeypatch, capsys):
    import json
    import math

    from poolkit.registry import STUDY_METHODS

    text = (ROOT / "docs" / "cluster.md").read_text()
    (snippet,) = [b for b in _python_blocks(text) if "GPU-hours" in b]
    per_step = {("vgg16", 32): 25.0, ("vgg16", 64): 90.0, ("resnet18", 32): 10.0, ("resnet18", 64): 30.0}
    for (model, size), ms in per_step.items():
        rows = [{"model": model, "pool": pool, "ms": ms * (1.5 if pool == "attention" else 1.0)}
                for pool in STUDY_METHODS]  # fmt: skip
        (tmp_path / f"bench-{model}-{size}.json").write_text(json.dumps({"model": rows}))
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "docs/cluster.md", "exec"), {})
    steps = {32: 391 + math.ceil(10_000 / 128) / 3, 64: 782 + math.ceil(10_000 / 128) / 3}
    expected = sum(
        ms * (1.5 if pool == "attention" else 1.0) / 1000 * steps[size] * 200 * 3 / 3600
        for (model, size), ms in per_step.items()
        for pool in STUDY_METHODS
    )
    assert capsys.readouterr().out.strip() == f"paper preset: {expected:.0f} GPU-hours"
    # the worked example of the page: 25 ms x 417 step-equivalents x 200 epochs
    assert "`25 ms x 417 x 200 = 2,085 s`, about 0.58 GPU-hours" in " ".join(text.split())
    assert round(25e-3 * 417 * 200) == 2085 and round(2085 / 3600, 2) == 0.58
    assert round(steps[32]) == 417 and round(steps[64]) == 808
