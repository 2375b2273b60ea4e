"""``poolkit shift CHECKPOINT_OR_RUN``: the translation-invariance probe of a trained run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poolkit.analysis.shift import SHIFT_FILE, probe_run, resolve_run_dir
from poolkit.errors import is_user_error

__all__ = ["add_arguments", "main"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sub-command's arguments to ``parser`` (``poolkit`` wires it as a sub-command)."""
    parser.add_argument(
        "target",
        type=Path,
        metavar="CHECKPOINT_OR_RUN",
        help="a run directory, or the checkpoint.pt inside one",
    )
    parser.add_argument(
        "--max-shift",
        type=int,
        default=None,
        metavar="N",
        help="largest shift in pixels along each axis for the consistency pairs (default: image size // 8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts (default 0)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    parser.add_argument(
        "--max-images", type=int, default=None, metavar="N", help="probe only the first N test images"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="the dataset's directory when it moved since training"
    )


def main(args: argparse.Namespace) -> int:
    """Run ``poolkit shift``; 0 on success, 2 when the run, its data or an argument is wrong."""
    try:
        run = resolve_run_dir(args.target)
        result = probe_run(
            run,
            device=args.device,
            max_shift=args.max_shift,
            seed=args.seed,
            batch_size=args.batch_size,
            max_images=args.max_images,
            data_dir=args.data_dir,
        )
    except ValueError as exc:
        if not is_user_error(exc):
            raise  # raised inside torch or another package: an internal error keeps its traceback
        print(f"poolkit shift: {exc}", file=sys.stderr)
        return 2
    by_shift = ", ".join(f"{d} px: {acc:.2f}%" for d, acc in result["accuracy_by_shift"].items())
    print(
        f"shift consistency {result['consistency']:.2f}% over {result['pairs']} image pairs (random "
        f"circular shifts up to ±{result['max_shift']} px, seed {result['seed']})"
    )
    print(f"top-1 under diagonal shifts: {by_shift}")
    print(f"wrote {run / SHIFT_FILE}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="poolkit shift", description=__doc__)
    add_arguments(_parser)
    raise SystemExit(main(_parser.parse_args()))
