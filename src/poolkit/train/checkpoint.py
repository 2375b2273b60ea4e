"""The training checkpoint (model, optimizer, scheduler, scaler, RNG states) and its previous generation.

Every file of a run directory is written atomically with :mod:`poolkit.atomic` (a temporary file in the
same directory moved into place with :func:`os.replace`), so a kill at any moment leaves either the
old file or the new one, never a half-written one. A checkpoint can still be damaged afterwards (a disk
that fills up or fails, a copy cut short), so :func:`save_checkpoint` keeps the previous one as
``checkpoint.prev.pt`` and :func:`load_latest_checkpoint` falls back to it.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poolkit.atomic import atomic_torch_save
from poolkit.errors import UserError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "capture_rng_state",
    "load_checkpoint",
    "load_latest_checkpoint",
    "previous_path",
    "restore_rng_state",
    "save_checkpoint",
]

#: Version of the checkpoint layout, stored in every checkpoint.
CHECKPOINT_FORMAT = 1


def capture_rng_state() -> dict[str, Any]:
    """Every random state training draws from: torch CPU, torch CUDA (all devices, when initialised),
    Python's ``random`` and NumPy's global generator.

    The data loader's generator is not included: it is re-created from ``(seed, epoch)`` every epoch.
    Everything is stored as tensors and plain Python values, so the checkpoint loads with
    ``torch.load(weights_only=True)``.
    """
    np_state = np.random.get_state(legacy=False)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None,
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
        else:
            # Resuming on a machine with another number of GPUs: restore the first one's stream.
            torch.cuda.set_rng_state(cuda_states[0].cpu())
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": np_state["bit_generator"],
            "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
            "has_gauss": np_state["has_gauss"],
            "gauss": np_state["gauss"],
        }
    )


def load_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`poolkit.train.train_run` (safely: ``weights_only=True``).

    Raises:
        ValueError: the file is not a poolkit checkpoint or has a newer format.
    """
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:
        # torch.load's messages run over many lines: the first says what is wrong.
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"{str(path)!r} is not a readable poolkit checkpoint: {reason}") from exc
    if not isinstance(ckpt, dict) or "format" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{str(path)!r} is not a poolkit checkpoint (no 'format'/'model' entries)")
    if ckpt["format"] > CHECKPOINT_FORMAT:
        raise ValueError(
            f"{str(path)!r} has checkpoint format {ckpt['format']}, newer than this poolkit reads "
            f"({CHECKPOINT_FORMAT}); upgrade poolkit"
        )
    return ckpt


class CheckpointError(UserError):
    """Neither the checkpoint nor its previous generation can be read: the run cannot be resumed."""


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where the previous generation of ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write ``state`` to ``path`` atomically, keeping the checkpoint it replaces as :func:`previous_path`.

    At every moment ``path`` is a complete checkpoint (the old or the new one): the old file is first
    hard-linked (copied where links are not supported) to a temporary name, moved onto
    ``checkpoint.prev.pt``, and only then the new one is moved onto ``path``.
    """
    path = Path(path)
    if path.is_file():
        keep = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.prev.tmp"
        try:
            try:
                os.link(path, keep)
            except OSError:
                shutil.copyfile(path, keep)
            os.replace(keep, previous_path(path))
        finally:
            with contextlib.suppress(FileNotFoundError):
                keep.unlink()
    atomic_torch_save(dict(state), path)


def load_latest_checkpoint(
    path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], str | None]:
    """The checkpoint at ``path``, or its previous generation when ``path`` is missing or damaged.

    Returns:
        ``(checkpoint, warning)``: ``warning`` is None when ``path`` was read, else one sentence saying
        which file was unreadable, why, and which epoch the run goes back to.

    Raises:
        CheckpointError: neither file can be read (the message gives both reasons and the fix).
    """
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            problems.append(f"{candidate.name} does not exist")
            continue
        try:
            ckpt = load_checkpoint(candidate, map_location=map_location)
        except ValueError as exc:
            problems.append(str(exc).splitlines()[0])
            continue
        if candidate == path:
            return ckpt, None
        warning = (
            f"{str(path)!r} cannot be used ({problems[0]}); resuming from the previous checkpoint "
            f"{candidate.name} (after epoch {ckpt.get('epoch')}), so one epoch is trained again"
        )
        return ckpt, warning
    raise CheckpointError(
        f"no readable checkpoint in {str(path.parent)!r}: {'; '.join(problems)}. The run cannot be resumed: "
        "delete the run directory (or its checkpoint files) to train it again from the start"
    )
