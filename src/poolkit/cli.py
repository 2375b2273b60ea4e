"""The ``poolkit`` command: one sub-command per job, each living in the module that owns the work.

=========== ================================== =====================================================
command     module                             does
=========== ================================== =====================================================
train       :mod:`poolkit.train.cli`           train one model into a run directory
sweep       :mod:`poolkit.experiments.cli`     run a grid of runs (local worker processes or SLURM)
reproduce   :mod:`poolkit.experiments.cli`     run a preset sweep, then write its report
report      :mod:`poolkit.report.cli`          tables, figures and statistics of a runs directory
shift       :mod:`poolkit.analysis.cli`        translation-invariance probe of a trained run
bench       :mod:`poolkit.bench`               speed of every pool relative to native max pooling
list        here                               pools, models, datasets and presets
=========== ================================== =====================================================

Each module exposes ``add_arguments(parser)`` and ``main(args) -> int``. Only the module of the
command being run is imported, so ``poolkit --help`` stays fast and a command whose module is missing
fails alone, with a message, instead of breaking the others.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType

from poolkit.errors import UserError
from poolkit.text import align_columns

__all__ = ["COMMANDS", "CommandUnavailable", "build_parser", "main"]


@dataclass(frozen=True)
class _Command:
    module: str
    help: str
    add_arguments: str = "add_arguments"
    main: str = "main"


#: Sub-command name -> where it lives and its one-line help.
COMMANDS: dict[str, _Command] = {
    "train": _Command("poolkit.train.cli", "train one model into a run directory"),
    "sweep": _Command(
        "poolkit.experiments.cli", "run a grid of training runs (local worker processes or SLURM)"
    ),
    "reproduce": _Command(
        "poolkit.experiments.cli",
        "reproduce an experiment: run a preset sweep, then write its report",
        "add_reproduce_arguments",
        "reproduce_main",
    ),
    "report": _Command(
        "poolkit.report.cli", "write the report (tables, figures, statistics) of a runs directory"
    ),
    "shift": _Command("poolkit.analysis.cli", "measure the translation invariance of a trained run"),
    "bench": _Command("poolkit.bench", "time every pool against native max pooling"),
    "list": _Command(
        "poolkit.cli", "list pools, models, datasets and presets", "_add_list_arguments", "_list_main"
    ),
}


class CommandUnavailable(Exception):
    """The module of a sub-command is not part of this installation."""


#: Third-party import name -> the extra that installs it. ``pip install poolkit`` is the core (torch and
#: numpy); the commands need the harness extra.
EXTRA_OF_PACKAGE: dict[str, str] = {
    **dict.fromkeys(("yaml", "tqdm", "PIL", "matplotlib", "scipy", "mlxtend", "submitit"), "harness"),
    **dict.fromkeys(("tensorboard", "mlflow", "sqlalchemy", "alembic"), "tracking"),
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The extra whose package ``exc`` is missing (None when it is not one of poolkit's extras)."""
    return EXTRA_OF_PACKAGE.get((exc.name or "").split(".")[0])


def _install_hint(command: str, exc: ModuleNotFoundError, extra: str) -> str:
    return (
        f"'poolkit {command}' needs the {extra} extra, which is not installed (no module named "
        f'{exc.name!r}): pip install "poolkit[{extra}]" (from a checkout: pip install -e ".[{extra}]")'
    )


def _load(name: str) -> tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]:
    command = COMMANDS[name]
    try:
        module: ModuleType = importlib.import_module(command.module)
    except ModuleNotFoundError as exc:
        # The command's own module (or a package above it) missing means "not available"; a missing
        # package of an extra names its pip command; any other missing module is a real error.
        extra = missing_extra(exc)
        if extra is not None:
            raise CommandUnavailable(_install_hint(name, exc, extra)) from None
        if exc.name is None or not command.module.startswith(exc.name):
            raise
        raise CommandUnavailable(
            f"the '{name}' command is not available in this installation: its module {command.module} "
            f"cannot be found ({exc})"
        ) from None
    try:
        return getattr(module, command.add_arguments), getattr(module, command.main)
    except AttributeError as exc:
        raise CommandUnavailable(
            f"the '{name}' command is not available: {command.module} lacks {exc.name}()"
        ) from None


def _version() -> str:
    from poolkit import __version__

    return f"poolkit {__version__}"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``poolkit`` parser; only ``command``'s arguments are added (its module is imported).

    Raises:
        CommandUnavailable: ``command``'s module is not installed.
    """
    parser = argparse.ArgumentParser(
        prog="poolkit",
        description="Pooling layers for CNNs, and the harness that measures which one to use.",
        epilog="Run 'poolkit COMMAND --help' for a command's options. "
        "Start with: poolkit reproduce --preset quick",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, spec in COMMANDS.items():
        child = sub.add_parser(name, help=spec.help, description=spec.help)
        if name == command:
            add_arguments, run = _load(name)
            add_arguments(child)
            child.set_defaults(_run=run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``poolkit`` command (and ``python -m poolkit``); returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    command = args_list[0] if args_list and args_list[0] in COMMANDS else None
    try:
        parser = build_parser(command)
    except CommandUnavailable as exc:
        print(f"poolkit: error: {exc}", file=sys.stderr)
        return 2
    args = parser.parse_args(args_list)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        # A problem the user can fix: one line naming it and the fix. Anything else is a bug: traceback.
        print(f"poolkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:  # a package of an extra imported on first use (e.g. matplotlib)
        extra = missing_extra(exc)
        if extra is None:
            raise
        print(f"poolkit: error: {_install_hint(args.command, exc, extra)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("poolkit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `poolkit list pools | head`
        return 0


# ----------------------------------------------------------------------------------------------------------
# poolkit list


_LIST_WHAT = ("pools", "models", "datasets", "presets")


def _add_list_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=_LIST_WHAT, help="what to list (default: everything)")
    parser.add_argument(
        "--family", choices=("classic", "study", "literature"), help="pools: only this family"
    )


def _table(rows: list[list[str]]) -> str:
    return "\n".join(align_columns(rows))


def _list_pools(family: str | None) -> str:
    import poolkit
    from poolkit.registry import pool_options

    channels = 64
    rows = [["name", "family", "title", f"params@{channels}ch", "stochastic", "forms", "options (defaults)"]]
    for name in poolkit.list_pools(family):  # type: ignore[arg-type]
        spec = poolkit.get_pool_spec(name)
        layer = poolkit.create_pool(name, 2, channels=channels)
        params = sum(p.numel() for p in layer.parameters() if p.requires_grad)
        options = ", ".join(f"{k}={v}" for k, v in pool_options(name).items()) or "-"
        forms = "1d,2d,3d" + (",adaptive" if spec.supports_global else "")
        stochastic = "yes" if spec.stochastic else "no"
        rows.append([name, spec.family, spec.title, str(params), stochastic, forms, options])
    note = (
        f"params@{channels}ch: learnable parameters of one 2x2 layer on {channels} channels "
        "(0 = a fixed operator). Families: classic, study (the adaptive-pooling study's 8), literature. "
        "Forms: create_pool(..., spatial_dims=1|2|3); adaptive: create_adaptive_pool(name, output_size)."
    )
    return _table(rows) + "\n\n" + note


def _list_models() -> str:
    from poolkit.models import get_model_spec, list_models

    rows = [["name", "downsampling pools"]]
    for name in list_models():
        spec = get_model_spec(name)
        counts = [str(len(spec.pools[stem].modules)) for stem in spec.stems]
        if len(spec.stems) > 1:
            counts = [f"{n} (stem {stem})" for n, stem in zip(counts, spec.stems, strict=True)]
        rows.append([name, ", ".join(counts)])
    return _table(rows) + "\n\nThe global pool of the head (global_pool, default avg) is not counted."


def _list_datasets() -> str:
    from poolkit.data import dataset_info, list_datasets

    rows = [["name", "title", "data_dir", "download"]]
    for name in list_datasets():
        info = dataset_info(name)
        where = info.hint if info.needs_data_dir else "not needed (embedded or generated)"
        rows.append([name, info.title, where, "yes" if info.downloadable else "no"])
    return _table(rows)


def _list_presets() -> str:
    from poolkit.experiments.config import list_presets, load_preset

    rows = [["name", "runs", "description"]]
    for name in list_presets():
        sweep = load_preset(name, allow_missing_data_dir=True)
        rows.append([name, str(sweep.size), " ".join((sweep.description or "").split())])
    return _table(rows) + "\n\nRun one with: poolkit reproduce --preset NAME (see docs/experiments.md)"


def _list_main(args: argparse.Namespace) -> int:
    sections: dict[str, Callable[[], str]] = {
        "pools": lambda: _list_pools(args.family),
        "models": _list_models,
        "datasets": _list_datasets,
        "presets": _list_presets,
    }
    chosen = [args.what] if args.what else list(_LIST_WHAT)
    blocks: list[str] = []
    for what in chosen:
        text = sections[what]()
        blocks.append(text if len(chosen) == 1 else f"== {what} ==\n{text}")
    print("\n\n".join(blocks))
    return 0
