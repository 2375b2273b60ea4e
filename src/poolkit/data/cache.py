"""Decode once, load fast: a per-split cache of decoded uint8 tensors.

Each split of a file-based dataset is decoded once and saved with :func:`torch.save` as
``<data root>/.poolkit-cache/<name>-<split>.pt``. The file records a fingerprint of its sources (their
paths relative to the data root, sizes and modification times, plus whatever else the labels depend
on), so a changed dataset is decoded again; comparing it costs one ``stat`` per source file.

When the data root cannot be written (a read-only share, for instance, or a folder without any write
permission bit, which counts as read-only even for root), the cache goes to a user directory instead:
``$POOLKIT_CACHE`` if set, else ``$XDG_CACHE_HOME/poolkit`` or ``~/.cache/poolkit``, in a sub-folder
named after the data root and a hash of its absolute path.
Cache files are written atomically (:func:`poolkit.atomic.atomic_torch_save`), so an interrupted
write never leaves a half-written cache behind, and several processes may fill the cache at once.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from poolkit.atomic import atomic_torch_save
from poolkit.data.base import ImageSplit
from poolkit.errors import DataNotFoundError

__all__ = [
    "CACHE_DIRNAME",
    "cache_locations",
    "cached_split",
    "fingerprint",
    "user_cache_dir",
]

CACHE_DIRNAME = ".poolkit-cache"
# Bump when the meaning of a cached file changes (decoding rules, payload keys): old files are ignored.
_CACHE_FORMAT = 1


def fingerprint(root: Path, files: Iterable[str | Path], extra: str = "") -> str:
    """SHA-256 of the files' paths (relative to ``root``), sizes and modification times, and ``extra``.

    Raises:
        FileNotFoundError: a file does not exist (its path is in the message).
    """
    digest = hashlib.sha256(f"poolkit-cache-{_CACHE_FORMAT}\n{extra}\n".encode())
    prefix = os.path.join(os.fspath(root), "")
    for file in files:
        path = os.fspath(file)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise DataNotFoundError(
                f"{path} not found: the dataset lists it but the file is missing"
            ) from None
        # Plain prefix stripping: os.path.relpath costs more than the stat for 100,000 files.
        relative = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root)
        digest.update(f"{relative}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def user_cache_dir(data_root: Path) -> Path:
    """Fallback cache folder of ``data_root``, in ``$POOLKIT_CACHE`` or ``~/.cache/poolkit``."""
    base = os.environ.get("POOLKIT_CACHE")
    if base:
        parent = Path(base).expanduser()
    else:
        parent = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "poolkit"
    absolute = str(Path(data_root).expanduser().resolve())
    key = hashlib.sha256(absolute.encode()).hexdigest()[:16]
    return parent / f"{Path(absolute).name or 'root'}-{key}"


def cache_locations(data_root: Path) -> list[Path]:
    """Where the cache of ``data_root`` is looked for, in order: next to the data, then the user folder."""
    return [Path(data_root) / CACHE_DIRNAME, user_cache_dir(data_root)]


def _may_write(folder: Path) -> bool:
    """Whether poolkit may add files to ``folder``.

    Besides the OS's answer, a folder with no write permission bit at all counts as read-only: it
    was marked so on purpose, and root (for whom every folder is writable) must respect that too.
    """
    try:
        return os.access(folder, os.W_OK) and bool(folder.stat().st_mode & 0o222)
    except OSError:
        return False


def _read(path: Path, key: str, fp: str) -> ImageSplit | None:
    if not path.is_file():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if (
            payload.get("format") != _CACHE_FORMAT
            or payload.get("key") != key
            or payload.get("fingerprint") != fp
        ):
            return None
        return ImageSplit(payload["images"], payload["labels"])
    except Exception:
        # A truncated or foreign file is a cache miss: it is decoded again and overwritten.
        return None


def cached_split(data_root: Path, key: str, fp: str, decode: Callable[[], ImageSplit]) -> ImageSplit:
    """Return the split cached under ``key`` if its fingerprint is ``fp``; else ``decode()`` and cache it.

    Args:
        data_root: the dataset's folder; the cache lives in ``data_root/.poolkit-cache`` or, when that
            cannot be written, in :func:`user_cache_dir`.
        key: file stem, e.g. ``"cifar10-train"``.
        fp: the sources' :func:`fingerprint`.
        decode: builds the split from the sources (only called on a miss).

    A cache that cannot be written anywhere is not an error: a warning says so and the decoded split
    is returned.
    """
    locations = cache_locations(data_root)
    for folder in locations:
        split = _read(folder / f"{key}.pt", key, fp)
        if split is not None:
            return split
    split = decode()
    payload = {
        "format": _CACHE_FORMAT,
        "key": key,
        "fingerprint": fp,
        "source": str(Path(data_root).expanduser().resolve()),
        "images": split.images.contiguous(),
        "labels": split.labels.contiguous(),
    }
    errors = []
    for folder in locations:
        if folder.parent == Path(data_root) and not _may_write(Path(data_root)):
            errors.append(f"{data_root} is read-only")
            continue
        try:
            atomic_torch_save(payload, folder / f"{key}.pt")
            return split
        except OSError as exc:
            errors.append(f"{folder}: {exc}")
    warnings.warn(
        f"could not cache the decoded {key} split ({'; '.join(errors)}); the next load decodes it again. "
        "Set POOLKIT_CACHE to a writable folder to fix this.",
        RuntimeWarning,
        stacklevel=2,
    )
    return split
