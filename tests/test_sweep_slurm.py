"""The SLURM launcher through submitit: parameters, the sbatch script (from the sweep file and from
the command-line flags), submission without waiting, no double submission, ``--status``, the debug
executor end to end, requeue-and-resume through checkpoint(), and a real sweep through submitit's local
executor with a run preempted mid-way, which ends with the same weights as the local launcher's."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import threading
import time
from pathlib import Path

import pytest
import submitit

from poolkit.cli import main as poolkit_main
from poolkit.experiments import expand_sweep, load_preset, load_sweep, run_sweep
from poolkit.experiments.config import SlurmOptions
from poolkit.experiments.launchers.slurm import SlurmRunTask, slurm_parameters
from poolkit.experiments.runner import LauncherError, execute_run
from poolkit.experiments.sweep import sweep_status
from poolkit.train.lock import LOCK_FILE, RunLock, read_lock
from test_sweep_launch import fake_train, sweep_of


def slurm_sweep(**slurm):
    doc = sweep_of(["max", "avg", "tmaxavg"]).to_dict()
    doc["slurm"] = slurm
    return load_sweep(doc)


def test_parameters_from_the_slurm_section():
    options = SlurmOptions(
        partition="gpu",
        gpus_per_node=1,
        cpus_per_task=8,
        mem_gb=32,
        timeout_min=720,
        array_parallelism=16,
        account="lab",
        qos="high",
        constraint="h100",
        setup=("module load cuda",),
        additional_parameters={"mail-type": "END"},
    )
    params = slurm_parameters(options, "poolkit-paper")
    assert params == {
        "name": "poolkit-paper",
        "timeout_min": 720,
        "nodes": 1,
        "tasks_per_node": 1,
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 16,
        "slurm_additional_parameters": {
            "account": "lab",
            "qos": "high",
            "constraint": "h100",
            "mail-type": "END",
        },
        "slurm_setup": ["module load cuda"],
    }
    # submitit accepts every one of them (unknown or mistyped names raise)
    submitit.AutoExecutor(folder="unused", cluster="debug").update_parameters(**params)


def test_paper_preset_asks_for_one_gpu_per_run(tmp_path):
    params = slurm_parameters(load_preset("paper", data_dir=tmp_path).slurm, "x")
    assert (params["gpus_per_node"], params["tasks_per_node"], params["timeout_min"]) == (1, 1, 720)


def test_no_slurm_here_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    with pytest.raises(LauncherError, match=r"needs a SLURM cluster.*--launcher local"):
        run_sweep(slurm_sweep(), tmp_path, launcher="slurm", train_fn=fake_train, stream=io.StringIO())


def _fake_slurm(bin_dir: Path, state: str) -> None:
    """``srun``, ``sbatch`` (keeps the script, prints a job id) and ``sacct`` (reports ``state``)."""
    bin_dir.mkdir()
    scripts = {
        "srun": "#!/bin/sh\nexit 0\n",
        "sbatch": f'#!/bin/sh\ncp "$1" {bin_dir}/submitted.sh\necho "Submitted batch job 4242"\n',
        "sacct": f"#!/bin/sh\nprintf 'JobID|State|NodeList\\n4242_0|{state}|n1\\n4242_1|{state}|n1\\n"
        f"4242_2|{state}|n1\\n'\n",
    }
    for name, text in scripts.items():
        path = bin_dir / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_submit_without_waiting_writes_the_job_array_and_is_not_resubmitted(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir, "RUNNING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = slurm_sweep(
        partition="gpu",
        gpus_per_node=1,
        cpus_per_task=8,
        mem_gb=32,
        timeout_min=720,
        array_parallelism=2,
        account="lab",
        qos="high",
        constraint="h100",
    )
    log = io.StringIO()
    result = run_sweep(sweep, tmp_path / "out", launcher="slurm", wait=False, train_fn=fake_train, stream=log)
    assert "submitted 3 runs as job array 4242" in log.getvalue() and "scancel 4242" in log.getvalue()
    assert sorted(result.pending) == sorted(s.name for s in result.specs) and result.outcomes == {}
    assert result.exit_code == 0
    script = (bin_dir / "submitted.sh").read_text()
    for line in [
        "#SBATCH --array=0-2%2",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --time=720",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --job-name=poolkit-launch",
        "#SBATCH --signal=USR2@90",
    ]:
        assert line in script, line
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())
    assert sorted(jobs.values()) == ["4242_0", "4242_1", "4242_2"]

    # A rerun while the jobs are still running submits nothing.
    (bin_dir / "submitted.sh").unlink()
    log = io.StringIO()
    again = run_sweep(sweep, tmp_path / "out", launcher="slurm", wait=False, train_fn=fake_train, stream=log)
    assert "3 runs are already queued or running" in log.getvalue()
    assert not (bin_dir / "submitted.sh").exists() and len(again.pending) == 3


def test_debug_executor_runs_the_array_and_records_failures(tmp_path):
    sweep = slurm_sweep(cluster="debug")
    result = run_sweep(sweep, tmp_path, launcher="slurm", train_fn=fake_train, stream=io.StringIO())
    statuses = {s.config["pool"]: result.outcomes[s.name].status for s in result.specs}
    assert statuses == {"max": "finished", "avg": "failed", "tmaxavg": "finished"}
    assert (
        json.loads((result.runs_dir / result.specs[1].name / "error.json").read_text())["type"]
        == "ValueError"
    )
    assert result.exit_code == 1
    # rerun: finished runs are skipped and nothing is submitted
    again = run_sweep(sweep, tmp_path, launcher="slurm", train_fn=fake_train, stream=io.StringIO())
    assert again.outcomes == {} and again.count("skipped") == 2


def test_checkpoint_requeues_the_same_run_which_resumes(tmp_path):
    spec = expand_sweep(sweep_of(["max"]))[0]
    run_dir = tmp_path / spec.name
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_text("1")  # the task was stopped after epoch 1
    task = SlurmRunTask(fake_train)
    delayed = task.checkpoint(spec, str(run_dir))
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is not task and isinstance(delayed.function, SlurmRunTask)
    assert delayed.args == (spec, str(run_dir))
    assert delayed.result()["status"] == "finished"
    assert json.loads((run_dir / "result.json").read_text())["resumed_from"] == 1


@pytest.mark.slow
def test_a_timed_out_local_job_requeues_itself_and_resumes(tmp_path, monkeypatch):
    """submitit's local executor sends the time-out signal 10 s into a 1-minute job, as SLURM does
    before the time limit; SlurmRunTask.checkpoint requeues the run, which resumes from its checkpoint."""
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.25")
    # the job's own interpreter must find fake_train, like the spawned workers do
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")])))
    spec = expand_sweep(sweep_of(["max"], epochs=48))[0]
    run_dir = tmp_path / "runs" / spec.name
    executor = submitit.LocalExecutor(folder=tmp_path / "slurm")
    executor.update_parameters(timeout_min=1, signal_delay_s=50)
    job = executor.submit(SlurmRunTask(fake_train), spec, str(run_dir))
    outcome = job.result()
    assert outcome["status"] == "finished"
    assert "Caught signal SIGUSR2" in job.stdout() + job.stderr() or "Requeued" in job.stdout() + job.stderr()
    result = json.loads((run_dir / "result.json").read_text())
    assert 0 < result["resumed_from"] < 48


def test_execute_run_outside_a_job_is_plain(tmp_path):
    spec = expand_sweep(sweep_of(["avg"]))[0]
    outcome = execute_run(spec, tmp_path / spec.name, fake_train)
    assert outcome.status == "failed" and outcome.error_type == "ValueError"
    assert (
        SlurmRunTask(fake_train, raise_on_failure=False)(spec, str(tmp_path / spec.name))["status"]
        == "failed"
    )
    with pytest.raises(RuntimeError, match="failed: ValueError: avg is broken on purpose"):
        SlurmRunTask(fake_train)(spec, str(tmp_path / spec.name))


@pytest.mark.slow
def test_tasks_per_node_runs_one_ddp_run(tmp_path):
    """Two tasks of one job train one run data-parallel (Gloo on CPU) through the real train_run."""
    sweep = load_sweep(
        {
            "name": "ddp",
            "grid": {"dataset": "synthetic", "model": "vgg11", "pool": "max"},
            "train": {"epochs": 1, "width": 0.0625, "batch_size": 64, "device": "cpu"},
            "slurm": {"cluster": "local", "tasks_per_node": 2, "timeout_min": 10},
        }
    )
    result = run_sweep(sweep, tmp_path, launcher="slurm", stream=io.StringIO())
    assert result.exit_code == 0, result.summary()
    saved = json.loads((result.runs_dir / result.specs[0].name / "result.json").read_text())
    assert saved["world_size"] == 2 and saved["run_id"] == result.specs[0].run_id


def test_command_line_flags_reach_the_sbatch_script_and_status_lists_the_jobs(tmp_path, monkeypatch, capsys):
    bin_dir = tmp_path / "bin"
    _fake_slurm(bin_dir, "PENDING")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "launch.yaml"
    config.write_text(json.dumps(slurm_sweep(partition="cpu", timeout_min=5).to_dict()))
    out = tmp_path / "out"
    command = [
        "sweep", str(config), "--out", str(out), "--launcher", "slurm", "--no-wait",
        "--partition", "gpu", "--time", "12:00:00", "--gpus-per-node", "4", "--tasks-per-node", "4",
        "--cpus-per-task", "8", "--mem-gb", "64", "--array-parallelism", "2", "--account", "lab",
        "--qos", "high", "--constraint", "h100", "--sbatch", "mail-type=END", "--sbatch", "exclusive",
        "--setup", "source ~/venv/bin/activate",
    ]  # fmt: skip
    assert poolkit_main(command) == 0
    captured = capsys.readouterr()
    assert "submitted 3 runs as job array 4242" in captured.err
    assert "jobs: 3 runs in job(s) 4242" in captured.out and "poolkit sweep --status" in captured.out
    script = (bin_dir / "submitted.sh").read_text()
    for line in [
        "#SBATCH --partition=gpu",  # the flag wins over the file's slurm.partition
        "#SBATCH --time=720",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=64GB",
        "#SBATCH --array=0-2%2",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --constraint=h100",
        "#SBATCH --mail-type=END",
        "#SBATCH --exclusive",
        "source ~/venv/bin/activate",
        f"#SBATCH --output={out / 'slurm'}/%A_%a/%A_%a_0_log.out",  # logs under the sweep directory
    ]:
        assert line in script, line
    saved = load_sweep(out / "runs" / "sweep.yaml")  # the flags are recorded with the sweep
    assert (saved.slurm.partition, saved.slurm.timeout_min, saved.slurm.tasks_per_node) == ("gpu", 720, 4)

    # --status from the output directory alone: every run is queued in job array 4242
    assert poolkit_main(["sweep", "--status", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "3 runs in" in table and "3 queued" in table
    assert sum(line.split()[1:2] == ["queued"] and "4242_" in line and "PENDING" in line
               for line in table.splitlines()) == 3  # fmt: skip


def test_slurm_flags_need_the_slurm_launcher_and_a_valid_time(tmp_path, capsys):
    config = tmp_path / "launch.yaml"
    config.write_text(json.dumps(slurm_sweep().to_dict()))
    assert poolkit_main(["sweep", str(config), "--out", str(tmp_path), "--partition", "gpu"]) == 2
    assert "--partition applies to --launcher slurm only" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        poolkit_main(["sweep", str(config), "--launcher", "slurm", "--time", "soon"])
    assert "expected minutes (720), HH:MM:SS" in capsys.readouterr().err


def test_status_tells_every_state_apart(tmp_path):
    sweep = sweep_of(["max", "avg", "gated", "tmaxavg", "stochastic_mix", "mixed"])
    specs = {s.config["pool"]: s for s in expand_sweep(sweep)}
    runs = tmp_path / "runs"
    for spec in specs.values():
        (runs / spec.name).mkdir(parents=True)
    finished = runs / specs["max"].name
    (finished / "result.json").write_text(json.dumps({"run_id": specs["max"].run_id, "test_top1": 91.5}))
    (runs / specs["avg"].name / "error.json").write_text(json.dumps({"type": "ValueError", "error": "bad"}))
    for pool in ("gated", "tmaxavg", "stochastic_mix"):
        (runs / specs[pool].name / "checkpoint.pt").write_text("1")
        (runs / specs[pool].name / "metrics.csv").write_text("epoch\n1\n")
    stale = runs / specs["tmaxavg"].name / LOCK_FILE
    stale.write_text(json.dumps({"host": "gone", "pid": 1, "started": 0, "heartbeat": 0, "token": "x"}))
    with RunLock(runs / specs["gated"].name):
        states = {s.spec.config["pool"]: s for s in sweep_status(list(specs.values()), tmp_path)}
    assert {pool: s.state for pool, s in states.items()} == {
        "max": "finished", "avg": "failed", "gated": "running", "tmaxavg": "stalled",
        "stochastic_mix": "resumable", "mixed": "not started",
    }  # fmt: skip
    assert states["max"].detail == "top-1 91.50%" and states["avg"].detail == "ValueError: bad"
    assert f"pid {os.getpid()}" in states["gated"].detail and states["gated"].epochs_done == 1
    assert "its lock expired" in states["tmaxavg"].detail and states["mixed"].job_id is None


# ---------------------------------------------------------------------- through submitit, for real
TINY_SWEEP = {
    "name": "tiny",
    "grid": {"dataset": "synthetic", "model": "vgg11", "pool": ["max", "avg", "stochastic_mix"]},
    "train": {"epochs": 2, "width": 0.0625, "batch_size": 64, "lr": 0.05, "threads": 1, "device": "cpu"},
    # the run that gets preempted trains longer, so the signal lands mid-run
    "overrides": [{"match": {"pool": "stochastic_mix"}, "set": {"epochs": 4}}],
    "slurm": {"cluster": "local", "timeout_min": 60},  # under 80% of it, a signal means preemption
}


def _preempt_after_first_epoch(run_dir: Path, sent: list[int]) -> None:
    """Send the preemption signal (SIGUSR2, as SLURM does) to the process training ``run_dir`` once
    its first epoch is checkpointed; the pid comes from the run's lock."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        holder = read_lock(run_dir)
        metrics = run_dir / "metrics.csv"
        if holder is not None and metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            os.kill(holder.pid, signal.SIGUSR2)
            sent.append(holder.pid)
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_submitit_local_sweep_with_a_preempted_run_equals_the_local_launcher(tmp_path):
    sweep = load_sweep(TINY_SWEEP)
    local = run_sweep(sweep, tmp_path / "local", workers=2, stream=io.StringIO())
    assert local.exit_code == 0, local.summary()

    target = next(s for s in local.specs if s.config["pool"] == "stochastic_mix")
    sent: list[int] = []
    preempter = threading.Thread(
        target=_preempt_after_first_epoch, args=(tmp_path / "slurm" / "runs" / target.name, sent)
    )
    preempter.start()
    log = io.StringIO()
    slurm = run_sweep(sweep, tmp_path / "slurm", launcher="slurm", stream=log)
    preempter.join()
    assert slurm.exit_code == 0, slurm.summary() + log.getvalue()
    assert {o.status for o in slurm.outcomes.values()} == {"finished"} and len(slurm.outcomes) == 3
    assert sorted(slurm.job_ids) == sorted(s.name for s in slurm.specs)

    # the preempted run was requeued by submitit and resumed from its checkpoint
    assert sent, "the run ended before it could be preempted"
    job = slurm.job_ids[target.name]
    job_log = "".join(
        (tmp_path / "slurm" / "slurm" / job / f"{job}_0_log.{x}").read_text() for x in ("out", "err")
    )
    assert "this job is preempted" in job_log and "Requeued job" in job_log
    env = json.loads((tmp_path / "slurm" / "runs" / target.name / "env.json").read_text())
    assert len(env.get("resumed", [])) == 1

    # the same runs, bit for bit, as with the local launcher
    for spec in slurm.specs:
        mine = json.loads((tmp_path / "slurm" / "runs" / spec.name / "result.json").read_text())
        theirs = json.loads((tmp_path / "local" / "runs" / spec.name / "result.json").read_text())
        assert mine["params_sha256"] == theirs["params_sha256"], spec.name
        assert (mine["test_loss"], mine["test_top1"]) == (theirs["test_loss"], theirs["test_top1"])
        assert not (tmp_path / "slurm" / "runs" / spec.name / LOCK_FILE).exists()
    assert "3 finished" in sweep_status_text(tmp_path / "slurm", sweep)


def sweep_status_text(out_dir, sweep):
    from poolkit.experiments.sweep import format_status

    return format_status(sweep_status(expand_sweep(sweep), out_dir), out_dir)
