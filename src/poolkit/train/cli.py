"""``poolkit train``: one training run from command-line flags and/or a YAML config file.

Wired into the ``poolkit`` command by :mod:`poolkit.cli` (``add_arguments`` + ``main``); also runnable
as ``python -m poolkit.train.cli`` (which is what ``torchrun -m`` needs when ``poolkit`` is not a module
entry point).

Example:
    poolkit train --dataset synthetic --model vgg11 --width 0.125 --epochs 2 --out runs/demo
    poolkit train --config run.yaml --seed 1 --out runs/demo-s1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from poolkit.train.config import RunConfig, load_config_file, yaml_scalar

__all__ = ["add_arguments", "build_parser", "config_from_args", "main"]

# (flag, key, type, help) for every RunConfig key with a value; booleans get --flag/--no-flag.
_VALUE_FLAGS: list[tuple[str, str, Any, str]] = [
    (
        "--dataset",
        "dataset",
        str,
        "dataset name: cifar10, cifar100, tinyimagenet, imagefolder, mnist5k, synthetic",
    ),
    (
        "--data-dir",
        "data_dir",
        str,
        "folder with the dataset files (cifar10/cifar100/tinyimagenet/imagefolder)",
    ),
    ("--model", "model", str, "vgg11, vgg13, vgg16, vgg19, resnet18 or resnet34 (default vgg16)"),
    ("--pool", "pool", str, "downsampling pool method, a name from `poolkit.list_pools()` (default max)"),
    ("--global-pool", "global_pool", str, "the head's global pool method (default avg)"),
    ("--head", "head", str, "linear (global pool + Linear, default) or mlp (VGG's 4096-4096 classifier)"),
    ("--stem", "stem", str, "ResNet stem: cifar (no pool, default) or imagenet (7x7 conv + the pool)"),
    ("--width", "width", float, "multiplies every channel count (default 1.0)"),
    ("--epochs", "epochs", int, "number of epochs (default 200)"),
    ("--batch-size", "batch_size", int, "global batch size, split across torchrun processes (default 128)"),
    ("--lr", "lr", float, "peak learning rate of the cosine schedule (default 0.1)"),
    ("--momentum", "momentum", float, "SGD momentum (default 0.9)"),
    ("--weight-decay", "weight_decay", float, "SGD weight decay (default 5e-4)"),
    ("--warmup-epochs", "warmup_epochs", int, "epochs of linear warm-up before the cosine decay (default 0)"),
    ("--label-smoothing", "label_smoothing", float, "cross-entropy label smoothing in [0, 1) (default 0)"),
    (
        "--amp-dtype",
        "amp_dtype",
        str,
        "float16 (with GradScaler) or bfloat16, for --amp on CUDA (default float16)",
    ),
    ("--device", "device", str, "auto (default), cpu, cuda or cuda:N"),
    (
        "--seed",
        "seed",
        int,
        "seed of initialisation, data order, augmentation and stochastic pools (default 0)",
    ),
    ("--val-fraction", "val_fraction", float, "fraction of train held out as a validation split, [0, 0.5]"),
    ("--threads", "threads", int, "torch CPU threads for this run (default: leave as is)"),
]
_BOOL_FLAGS: list[tuple[str, str, str]] = [
    ("--download", "download", "download cifar10/cifar100 into --data-dir when missing (needs a network)"),
    ("--nesterov", "nesterov", "Nesterov momentum"),
    ("--amp", "amp", "mixed precision: CUDA float16/bfloat16 autocast, CPU bfloat16 autocast"),
    ("--channels-last", "channels_last", "channels_last memory format for the model and inputs"),
    ("--compile", "compile", "torch.compile the model"),
    ("--shift-eval", "shift_eval", "run the translation-invariance probe at the end (writes shift.json)"),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every ``poolkit train`` flag to ``parser``: unset flags fall back to --config, then defaults."""
    parser.add_argument(
        "--config", metavar="FILE.yaml",
        help="YAML mapping of run-config keys (dataset, model, pool, pool_options, ...); flags override it",
    )  # fmt: skip
    parser.add_argument(
        "--out", required=True, metavar="RUN_DIR", help="the run directory to write (created)"
    )
    for flag, key, kind, text in _VALUE_FLAGS:
        parser.add_argument(flag, dest=key, type=kind, default=None, metavar=key.upper(), help=text)
    parser.add_argument(
        "--pool-opt", dest="pool_opt", action="append", default=[], metavar="KEY=VALUE",
        help="an option of the pool method, e.g. --pool-opt k=2 --pool-opt threshold=0.3 "
        "(repeatable; values are YAML scalars; see `poolkit.registry.pool_options(name)`)",
    )  # fmt: skip
    for flag, key, text in _BOOL_FLAGS:
        parser.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, default=None, help=text)
    parser.add_argument(
        "--resume", action="store_true", help="continue an interrupted run from RUN_DIR/checkpoint.pt"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (log one line per epoch)")


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
    for key in [k for _, k, *_ in _VALUE_FLAGS] + [k for _, k, _ in _BOOL_FLAGS]:
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
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
    """Run ``poolkit train`` with parsed ``args``; returns the exit status (2 for a bad config)."""
    from poolkit.train.engine import train_run

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = config_from_args(args)
        result = train_run(cfg, args.out, resume=args.resume, progress=not args.no_progress)
    except ValueError as exc:
        print(f"poolkit train: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poolkit train: interrupted; continue with --resume", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(
            f"{args.out}: {result['model']} {result['pool']} on {result['dataset']}: test top-1 "
            f"{result['test_top1']:.2f}% (last epoch of {result['epochs']}), {result['seconds']:.1f}s"
        )
    return 0


def _entry(argv: Sequence[str] | None = None) -> int:
    return main(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(_entry())
