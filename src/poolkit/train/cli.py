"""``poolkit train``: one training run from command-line flags and/or a YAML config file.

Wired into the ``poolkit`` command by :mod:`poolkit.cli` (``add_arguments`` + ``main``); also runnable
as ``python -m poolkit.train.cli`` (which is what ``torchrun -m`` needs when ``poolkit`` is not a module
entry point).

Example:
    poolkit train --dataset synthetic --model vgg11 --width 0.125 --epochs 2 --out runs/demo
    poolkit train --config run.yaml --seed 1 --out runs/demo-s1
    poolkit train --config run.yaml --nproc 4 --out runs/demo-ddp     # DDP on 4 GPUs of this machine

Exit status: 0 done, 2 invalid config, data or directory (a message names the problem and the fix),
3 the run diverged (its training loss became NaN or infinite; the message says at which epoch and step),
75 the run directory is being trained by another process (its lock is held; try again later),
130 interrupted; with ``--nproc``, a failing process's own status.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from poolkit.errors import is_user_error
from poolkit.tracking.sinks import LOGGERS
from poolkit.train.config import RunConfig, load_config_file, yaml_scalar
from poolkit.train.fields import KINDS, run_keys

__all__ = [
    "EXIT_BUSY",
    "EXIT_DIVERGED",
    "add_arguments",
    "add_run_config_flags",
    "build_parser",
    "config_from_args",
    "launch_processes",
    "main",
    "positive_int",
]

#: Exit status when the run directory is being trained by another process (BSD's EX_TEMPFAIL).
EXIT_BUSY = 75
#: Exit status when the run diverged (its training loss became NaN or infinite).
EXIT_DIVERGED = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``poolkit train`` flag to ``parser``: unset flags fall back to --config, then defaults."""
    parser.add_argument(
        "--config", metavar="FILE.yaml",
        help="YAML mapping of run-config keys (dataset, model, pool, pool_options, ...); flags override it",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="the run directory to write (created)"
    )
    add_run_config_flags(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from RUN_DIR/checkpoint.pt"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log one line per epoch)")
    parser.add_argument(
        "--nproc", type=positive_int, default=None, metavar="N",
        help="train data-parallel on N processes of this machine (one per GPU; Gloo on CPU), started "
        "with torchrun's launcher (torch.distributed.run --standalone); --batch-size stays the global "
        "batch and must be divisible by N. Multi-node: use torchrun or --launcher slurm instead",
    )  # fmt: skip


def add_run_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`RunConfig` key, generated from the key's metadata (:mod:`poolkit.train.fields`):
    ``--flag VALUE`` of the key's type, ``--flag/--no-flag`` for booleans, repeatable ``--pool-opt
    KEY=VALUE`` and ``--logger NAME``. Every default is None: an unset flag leaves the key to --config."""
    for name, spec in run_keys(RunConfig):
        if spec.kind == "bool":
            parser.add_argument(
                spec.flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=spec.help
            )
        elif spec.kind == "options":
            parser.add_argument(
                spec.flag, dest="pool_opt", action="append", default=[], metavar="KEY=VALUE", help=spec.help
            )
        elif spec.kind == "loggers":
            parser.add_argument(
                spec.flag, dest=name, action="append", default=None, choices=sorted(LOGGERS), help=spec.help
            )
        else:
            kind = KINDS[spec.kind].cli_type
            parser.add_argument(
                spec.flag, dest=name, type=kind, default=None, metavar=name.upper(), help=spec.help
            )


def positive_int(text: str) -> int:
    """argparse type: a positive integer, with a message naming the bad value."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser for ``python -m poolkit.train.cli``."""
    parser = argparse.ArgumentParser(
        prog="poolkit train",
        description="Train one model and write a run directory (config.yaml, env.json, metrics.csv, "
        "checkpoint.pt, result.json).",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated :class:`RunConfig` of parsed arguments: --config file, then flags on top."""
    data: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for name, spec in run_keys(RunConfig):
        value = getattr(args, name, None)
        if spec.kind == "loggers" and value:
            data[name] = list(value)
        elif spec.kind not in ("loggers", "options") and value is not None:
            data[name] = value
    if args.pool_opt:
        options = dict(data.get("pool_options") or {})
        for item in args.pool_opt:
            key, sep, text = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--pool-opt expects KEY=VALUE (e.g. k=2), got {item!r}")
            options[key.strip()] = yaml_scalar(text.strip())
        data["pool_options"] = options
    return RunConfig.from_dict(data)


def main(args: argparse.Namespace) -> int:
    """Run ``poolkit train`` with parsed ``args``; returns the exit status (see the module docstring)."""
    from poolkit.train.distributed import launch_rank, launched_distributed
    from poolkit.train.engine import RunDiverged
    from poolkit.train.lock import RunLockError

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = config_from_args(args)
        nproc = getattr(args, "nproc", None) or 1
        if nproc > 1:
            if launched_distributed():
                raise ValueError(
                    "--nproc starts its own processes; it cannot be used inside torchrun or a multi-task job "
                    f"(WORLD_SIZE={os.environ.get('WORLD_SIZE')}); drop --nproc"
                )
            _check_gpus(cfg, nproc)
            if cfg.batch_size % nproc:
                raise ValueError(
                    f"--batch-size {cfg.batch_size} must be divisible by --nproc {nproc} (the batch size is "
                    "the global batch, shared equally by the processes)"
                )
            # Rank 0 prints the result line.
            return launch_processes(cfg, args.out, nproc, resume=args.resume, progress=not args.no_progress)
        from poolkit.experiments.runner import train_and_probe

        result = train_and_probe(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except RunDiverged as exc:
        print(f"poolkit train: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except ValueError as exc:
        if not is_user_error(exc):
            raise  # raised inside torch or another package: an internal error keeps its traceback
        print(f"poolkit train: error: {exc}", file=sys.stderr)
        return 2
    except RunLockError as exc:
        print(f"poolkit train: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt:
        print("poolkit train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if launch_rank() == 0:
        _print_result(args.out, result)
    return 0


def _check_gpus(cfg: RunConfig, nproc: int) -> None:
    """With CUDA, each process needs a GPU of its own (NCCL refuses two ranks on one device)."""
    import torch

    if cfg.device == "cpu" or not torch.cuda.is_available():
        return
    visible = torch.cuda.device_count()
    if nproc > visible:
        raise ValueError(
            f"--nproc {nproc} needs {nproc} GPUs (one per process) but {visible} are visible; use "
            f"--nproc {visible}, or --device cpu to train on the CPU with Gloo"
        )


def _print_result(out: str, result: dict[str, Any]) -> None:
    world = f" on {result['world_size']} processes" if result.get("world_size", 1) > 1 else ""
    print(
        f"{out}: {result['model']} {result['pool']} on {result['dataset']}: test top-1 "
        f"{result['test_top1']:.2f}% (last epoch of {result['epochs']}){world}, {result['seconds']:.1f}s"
    )


def launch_processes(
    config: RunConfig, out: str | os.PathLike[str], nproc: int, *, resume: bool = False, progress: bool = True
) -> int:
    """Train ``config`` into ``out`` on ``nproc`` processes of this machine with torchrun's launcher.

    This is ``torchrun --standalone --nproc-per-node NPROC -m poolkit.train.cli --config C --out OUT``
    run through :func:`torch.distributed.run.run` (the elastic agent, a local c10d rendezvous on a free
    port), where ``C`` is the validated config written to a temporary file. Each process trains with
    ``train_run``, which joins the process group (NCCL on GPUs, Gloo on CPU).

    Returns:
        0 when every process succeeded; otherwise the exit status of the first process that failed
        (128 + N for a process killed by signal N), or 128 + N when this launcher was stopped by signal N.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    folder = Path(tempfile.mkdtemp(prefix="poolkit-nproc-"))
    set_threads = False
    try:
        config_file = folder / "run-config.yaml"
        config_file.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
        worker_args = ["--config", str(config_file), "--out", os.fspath(out)]
        worker_args += ["--resume"] if resume else []
        worker_args += [] if progress else ["--no-progress"]
        set_threads = "OMP_NUM_THREADS" not in os.environ
        if set_threads:
            # torchrun would set 1 (with a warning); share this machine's cores instead.
            os.environ["OMP_NUM_THREADS"] = str(max(1, _cores() // nproc))
        torchrun_args = parse_args(
            ["--standalone", f"--nproc-per-node={nproc}", "-m", "poolkit.train.cli", *worker_args]
        )
        try:
            run(torchrun_args)
        except ChildFailedError as exc:
            rank, failure = exc.get_first_failure()
            code = failure.exitcode
            print(
                f"poolkit train: process {rank} of {nproc} failed with exit status {code}"
                + (f" ({failure.message})" if code < 0 and failure.message else ""),
                file=sys.stderr,
            )
            return 128 - code if code < 0 else code
        except SignalException as exc:
            print(f"poolkit train: stopped by {signal.Signals(exc.sigval).name}; continue with --resume",
                  file=sys.stderr)  # fmt: skip
            return 128 + int(exc.sigval)
        return 0
    finally:
        if set_threads:
            os.environ.pop("OMP_NUM_THREADS", None)
        shutil.rmtree(folder, ignore_errors=True)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _entry(argv: Sequence[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(_entry())
