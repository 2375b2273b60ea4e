"""The ``poolkit bench`` command line: its options, and the run from parsed arguments to tables and files."""

from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import poolkit
from poolkit.atomic import atomic_write_text
from poolkit.bench.models import ModelResult, bench_models
from poolkit.bench.ops import (
    _ALL_DTYPES,
    DTYPES,
    KERNELS,
    LAYOUTS,
    MODES,
    NATIVE,
    OP_CASES,
    OpResult,
    _group_entries,
    bench_ops,
    resolve_cases,
)
from poolkit.bench.output import (
    environment,
    format_model_table,
    format_op_group,
    format_targets,
    load_results,
    markdown_report,
    write_results,
)
from poolkit.bench.targets import TARGET_METHODS, TargetResult, evaluate_targets
from poolkit.bench.timing import _resolve_device
from poolkit.errors import is_user_error
from poolkit.layers.fused import fused_kernel_mode
from poolkit.registry import STUDY_METHODS

__all__ = ["add_arguments", "expand_pools", "main"]


class _ListAction(argparse.Action):
    """A repeatable option whose values may be comma lists: ``--case a,b --case c`` -> ``[a, b, c]``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        items = list(getattr(namespace, self.dest) or [])
        for value in values if isinstance(values, list) else [values]:
            items.extend(v.strip() for v in str(value).split(",") if v.strip())
        setattr(namespace, self.dest, items)


def _parse_shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) not in (3, 4, 5) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(
            f"shape {text!r} must be NxCxL, NxCxHxW or NxCxDxHxW (1-, 2- or 3-D pools), e.g. 128x64x32x32"
        )
    return tuple(int(p) for p in parts)


def expand_pools(names: Sequence[str] | None) -> list[str]:
    """``--pools``: every registered pool by default; ``study`` and ``targets`` expand to their methods."""
    if not names:
        return poolkit.list_pools()
    groups = {"study": list(STUDY_METHODS), "targets": list(TARGET_METHODS)}
    return list(dict.fromkeys(p for n in names for p in groups.get(n, [n])))


def _check_names(kind: str, names: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {unknown}; valid {kind}s are: {', '.join(valid)}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``poolkit bench`` command line."""
    parser.add_argument(
        "--level", choices=["op", "layer", "model", "all"], default="op",
        help="op (default; 'layer' is an alias): the pooling layers on the grid, with memory; model: one "
        "training step of a whole network; all: both, then the targets",
    )  # fmt: skip
    parser.add_argument(
        "--pools", nargs="+", action=_ListAction, default=None, metavar="NAME",
        help="pools to measure, space or comma separated (default: every registered pool); 'study' stands "
        "for the study's eight methods and 'targets' for the methods the targets judge; native "
        f"{NATIVE} is always the op reference and 'max' the model reference",
    )  # fmt: skip
    op = parser.add_argument_group("op level")
    op.add_argument(
        "--case", action=_ListAction, default=None, metavar="NAME",
        help=f"named cases, repeatable or comma list (default: the 2-D ones; all: {', '.join(OP_CASES)})",
    )  # fmt: skip
    op.add_argument(
        "--shape", type=_parse_shape, action="append", default=None, metavar="NxCxHxW",
        help="a custom input shape (repeatable; NxCxL or NxCxDxHxW for 1-D and 3-D pools) pooled with "
        "--kernel-size/--stride/--padding; replaces the "
        "named cases unless --case is given too",
    )  # fmt: skip
    op.add_argument("--kernel-size", type=int, default=2, help="window of --shape (default 2)")
    op.add_argument("--stride", type=int, default=None, help="stride of --shape (default: kernel size)")
    op.add_argument("--padding", type=int, default=0, help="padding of --shape (default 0)")
    op.add_argument("--batch", type=int, default=None, help="batch size of the named cases (default 128)")
    op.add_argument(
        "--layout", action=_ListAction, default=None, metavar="NAME",
        help=f"memory layouts, repeatable or comma list: {', '.join(LAYOUTS)} (default both)",
    )  # fmt: skip
    op.add_argument(
        "--dtype", action=_ListAction, default=None, metavar="NAME",
        help=f"dtypes, repeatable or comma list: {', '.join(_ALL_DTYPES)} (default float32,bfloat16)",
    )  # fmt: skip
    op.add_argument(
        "--mode", action=_ListAction, default=None, metavar="NAME",
        help=f"what to measure, repeatable or comma list: {', '.join(MODES)} (default all three)",
    )  # fmt: skip
    op.add_argument("--forward-only", action="store_true", help="same as --mode fwd")
    op.add_argument(
        "--compile", action="store_true", help="torch.compile every pool and the native reference"
    )
    op.add_argument(
        "--kernels", action=_ListAction, default=None, metavar="PATH",
        help="kernel paths to time every pool with, repeatable or comma list: "
        f"{', '.join(KERNELS)} (default: POOLKIT_FUSED, itself auto by default: the compiled kernels on "
        "CPU); a path other than that one adds rows 'pool [path]': --kernels auto,eager,off compares the "
        "compiled kernels, the eager fused path and the native pair",
    )  # fmt: skip
    model = parser.add_argument_group("model level")
    model.add_argument(
        "--model", action=_ListAction, default=None, metavar="NAME",
        help="models, repeatable or comma list (default vgg16); ResNets get the ImageNet stem (--stem)",
    )  # fmt: skip
    model.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1.0)")
    model.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    model.add_argument(
        "--image-size", type=int, default=None, help="input size (default 32 for VGG, 64 for ResNet)"
    )
    model.add_argument(
        "--num-classes", type=int, default=None, help="classes (default 100 for VGG, 200 for ResNet)"
    )
    model.add_argument("--stem", choices=["imagenet", "cifar"], default="imagenet", help="ResNet stem")
    model.add_argument("--channels-last", action="store_true", help="input and model in channels_last")
    model.add_argument("--amp", action="store_true", help="autocast: bfloat16 on CPU, float16 on CUDA")
    model.add_argument("--rounds", type=int, default=10, help="round-robin rounds (default 10)")
    model.add_argument("--warmup", type=int, default=2, help="warm-up steps per pool (default 2)")
    model.add_argument(
        "--steps", type=int, default=None,
        help="steps per measurement (default: enough for --min-run-time, at least 1)",
    )  # fmt: skip
    parser.add_argument(
        "--device", action=_ListAction, default=None, metavar="NAME",
        help="cpu, cuda, cuda:N; repeatable or comma list (default: op level cpu and cuda when present, "
        "model level cuda when present, else cpu)",
    )  # fmt: skip
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument(
        "--min-run-time", type=float, default=None,
        help="seconds of timing per op entry (default 0.2) or per model measurement (default 0.2)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write everything as JSON")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="PATH", help="write rows to a .csv or .json file"
    )
    parser.add_argument(
        "--markdown", type=Path, default=None, metavar="PATH", help="write the tables as markdown"
    )
    parser.add_argument(
        "--targets-from", type=Path, nargs="+", default=None, metavar="JSON",
        help="measure nothing: evaluate the targets of earlier --json files together (e.g. an op run and two "
        "model runs); --json/--markdown then write the combined results",
    )  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def main(args: argparse.Namespace) -> int:
    """Run ``poolkit bench`` from parsed arguments: tables on stdout, progress on stderr, files as asked."""
    try:
        return _main(args)
    except ValueError as exc:
        if not is_user_error(exc):
            raise  # raised inside torch or another package: an internal error keeps its traceback
        print(f"poolkit bench: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    command = _command_line(args)
    if args.targets_from:
        loaded_op, loaded_model, loaded_env, commands = load_results(args.targets_from)
        loaded_targets = evaluate_targets(loaded_op, loaded_model)
        print(format_targets(loaded_targets))
        _write_outputs(args, loaded_env, loaded_op, loaded_model, loaded_targets, commands)
        return 0
    for option, value in (
        ("--batch", args.batch),
        ("--batch-size", args.batch_size),
        ("--rounds", args.rounds),
        ("--warmup", args.warmup),
        ("--steps", args.steps),
        ("--threads", args.threads),
        ("--width", args.width),
        ("--min-run-time", args.min_run_time),
    ):
        if value is not None and value <= 0:
            raise ValueError(f"{option} must be positive, got {value}")
    if args.threads:
        torch.set_num_threads(args.threads)
    pools = expand_pools(args.pools)
    _check_names("pool", pools, poolkit.list_pools())
    levels = {"op": ["op"], "layer": ["op"], "model": ["model"], "all": ["op", "model"]}[args.level]
    modes = ["fwd"] if args.forward_only else (args.mode or list(MODES))
    _check_names("mode", modes, MODES)
    layouts = args.layout or list(LAYOUTS)
    _check_names("layout", layouts, LAYOUTS)
    dtypes = args.dtype or list(DTYPES)
    _check_names("dtype", dtypes, _ALL_DTYPES)
    kernels = args.kernels or [fused_kernel_mode()]
    _check_names("kernel path", kernels, KERNELS)
    models = args.model or ["vgg16"]
    from poolkit.models import list_models

    _check_names("model", models, list_models())
    cases = resolve_cases(
        args.case,
        args.shape or (),
        kernel_size=args.kernel_size,
        stride=args.stride,
        padding=args.padding,
        batch=args.batch,
    )
    cuda = torch.cuda.is_available()
    op_devices = args.device or (["cpu", "cuda"] if cuda else ["cpu"])
    model_devices = args.device or (["cuda"] if cuda else ["cpu"])
    for d in {*op_devices, *model_devices}:
        _resolve_device(d)
    env = environment()
    print("# poolkit bench: " + ", ".join(f"{k}={v}" for k, v in env.items() if v is not None), flush=True)

    op_rows: list[OpResult] = []
    model_rows: list[ModelResult] = []
    total = 0
    if "op" in levels:
        groups = len(cases) * len(layouts) * len(dtypes) * len(op_devices)
        total += groups * _group_entries(pools, modes, len(kernels))
    if "model" in levels:
        total += len(models) * len(model_devices) * (len(set(pools) | {"max"}) * (1 + max(args.rounds, 0)))
    with _progress(total, disable=args.no_progress) as tick:
        if "op" in levels:

            def show(rows: list[OpResult]) -> None:
                _print(format_op_group(rows) + "\n")

            op_rows = bench_ops(
                pools,
                cases,
                layouts=layouts,
                dtypes=dtypes,
                modes=modes,
                devices=op_devices,
                min_run_time=args.min_run_time or 0.2,
                compile=args.compile,
                kernels=kernels,
                progress=tick,
                on_group=show,
            )
        if "model" in levels:
            for device in model_devices:
                for name in models:
                    rows = bench_models(
                        pools,
                        model=name,
                        width=args.width,
                        batch_size=args.batch_size,
                        image_size=args.image_size,
                        num_classes=args.num_classes,
                        stem=args.stem,
                        device=device,
                        amp=args.amp,
                        channels_last=args.channels_last,
                        rounds=args.rounds,
                        steps=args.steps,
                        warmup=args.warmup,
                        min_run_time=args.min_run_time or 0.2,
                        progress=tick,
                    )
                    model_rows += rows
                    _print(format_model_table(rows) + "\n")
    targets = evaluate_targets(op_rows, model_rows)
    print(format_targets(targets), flush=True)
    _write_outputs(args, env, op_rows, model_rows, targets, command)
    return 0


def _command_line(args: argparse.Namespace) -> str:
    """The command that produced the results (for the JSON and markdown files), when it can be known."""
    argv = getattr(args, "_argv", None)
    if argv is None and sys.argv[1:2] == ["bench"]:
        argv = sys.argv[2:]
    return "" if argv is None else "poolkit bench " + shlex.join(argv)


def _write_outputs(
    args: argparse.Namespace,
    env: dict[str, Any],
    op_rows: Sequence[OpResult],
    model_rows: Sequence[ModelResult],
    targets: Sequence[TargetResult],
    command: str,
) -> None:
    for path in (args.json, args.out):
        if path is not None:
            write_results(path, env, op_rows, model_rows, targets, command)
            print(f"wrote {path}")
    if args.markdown is not None:
        atomic_write_text(args.markdown, markdown_report(env, op_rows, model_rows, targets, command))
        print(f"wrote {args.markdown}")


def _print(text: str) -> None:
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


@contextlib.contextmanager
def _progress(total: int, disable: bool) -> Iterator[Callable[[str], None]]:
    """A tqdm bar on stderr; yields ``tick(label)``, called before each entry."""
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    # disable=None: no bar when stderr is not a terminal (logs, CI).
    bar = tqdm(
        total=total, file=sys.stderr, disable=True if disable else None, leave=False, dynamic_ncols=True
    )
    started = False

    def tick(label: str) -> None:
        nonlocal started
        if started:
            bar.update(1)
        started = True
        bar.set_description_str(label, refresh=False)

    try:
        yield tick
    finally:
        bar.close()
