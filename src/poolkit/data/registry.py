"""The dataset registry: ``load_dataset(name, ...)`` and ``list_datasets()``."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from poolkit.data.base import DatasetSplits, hold_out_validation
from poolkit.data.cifar import load_cifar10, load_cifar100
from poolkit.data.imagefolder import load_imagefolder
from poolkit.data.mnist import load_mnist5k
from poolkit.data.synthetic import load_synthetic
from poolkit.data.tinyimagenet import load_tinyimagenet

__all__ = ["DatasetInfo", "dataset_info", "list_datasets", "load_dataset"]


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset needs: ``data_dir`` (and what to pass there), whether it can be downloaded, and
    its ``title`` (how the report and ``poolkit list datasets`` write it: ``CIFAR-100``)."""

    load: Callable[..., DatasetSplits]
    title: str
    needs_data_dir: bool
    downloadable: bool
    # Constants computed from the train split are recomputed when a validation split is held out.
    stats_from_train: bool
    hint: str = ""


_DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        load_cifar10,
        title="CIFAR-10",
        needs_data_dir=True,
        downloadable=True,
        stats_from_train=False,
        hint="the extracted cifar-10-batches-py folder or its parent (or pass download=True)",
    ),
    "cifar100": DatasetInfo(
        load_cifar100,
        title="CIFAR-100",
        needs_data_dir=True,
        downloadable=True,
        stats_from_train=False,
        hint="the extracted cifar-100-python folder or its parent (or pass download=True)",
    ),
    "tinyimagenet": DatasetInfo(
        load_tinyimagenet,
        title="Tiny ImageNet",
        needs_data_dir=True,
        downloadable=False,
        stats_from_train=False,
        hint="the extracted tiny-imagenet-200 folder or its parent",
    ),
    "imagefolder": DatasetInfo(
        load_imagefolder,
        title="ImageFolder",
        needs_data_dir=True,
        downloadable=False,
        stats_from_train=True,
        hint="a folder with train/<class>/ and test/<class>/ (or val/<class>/) image folders",
    ),
    "mnist5k": DatasetInfo(
        load_mnist5k, title="MNIST-5k", needs_data_dir=False, downloadable=False, stats_from_train=True
    ),
    "synthetic": DatasetInfo(
        load_synthetic, title="Synthetic", needs_data_dir=False, downloadable=False, stats_from_train=True
    ),
}


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted.

    Example:
        >>> list_datasets()
        ['cifar10', 'cifar100', 'imagefolder', 'mnist5k', 'synthetic', 'tinyimagenet']
    """
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset name; ``ValueError`` listing the valid names otherwise.

    Example:
        >>> dataset_info("cifar100").needs_data_dir, dataset_info("mnist5k").needs_data_dir
        (True, False)
        >>> dataset_info("tinyimagenet").title
        'Tiny ImageNet'
    """
    info = _DATASETS.get(name) if isinstance(name, str) else None
    if info is None:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(list_datasets())}")
    return info


def load_dataset(
    name: str,
    data_dir: str | Path | None = None,
    *,
    download: bool = False,
    val_fraction: float = 0.0,
    seed: int = 0,
) -> DatasetSplits:
    """Load a dataset by name as whole uint8 tensors (decoded once, then cached next to the data).

    Args:
        name: one of :func:`list_datasets`.
        data_dir: where the files are; required by ``cifar10``, ``cifar100``, ``tinyimagenet`` and
            ``imagefolder``, ignored by ``mnist5k`` (embedded) and ``synthetic`` (generated).
        download: ``cifar10``/``cifar100`` only: fetch the official archive into ``data_dir`` if the
            release is not there.
        val_fraction: in ``[0, 1)``; when > 0, a stratified validation split of this fraction is held
            out of train (``splits.val``), chosen by ``seed``.
        seed: chooses the validation images (nothing else).

    Returns:
        A :class:`~poolkit.data.DatasetSplits`; its ``mean``/``std`` are the standard constants for
        CIFAR and Tiny ImageNet, and the train split's statistics (after any hold-out) otherwise.

    Raises:
        ValueError: unknown name (the message lists the valid ones), missing ``data_dir``, bad
            ``val_fraction``, ``download`` for a dataset that cannot be downloaded, or a corrupt file.
        FileNotFoundError: an expected file or folder is missing (the message names it).

    Example:
        >>> data = load_dataset("mnist5k", val_fraction=0.1, seed=0)
        >>> len(data.train), len(data.val), len(data.test)
        (3600, 400, 1000)
    """
    spec = dataset_info(name)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not 0 <= val_fraction < 1
    ):
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    if download and not spec.downloadable:
        downloadable = ", ".join(n for n in list_datasets() if _DATASETS[n].downloadable)
        raise ValueError(f"dataset {name!r} cannot be downloaded (only {downloadable} can); pass data_dir")
    if spec.needs_data_dir and data_dir is None:
        raise ValueError(f"dataset {name!r} needs data_dir: {spec.hint}")
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir must be a path (str or os.PathLike), got {type(data_dir).__name__}")
    if spec.downloadable:
        splits = spec.load(Path(data_dir), download=download)
    elif spec.needs_data_dir:
        splits = spec.load(Path(data_dir))
    else:
        splits = spec.load()
    if val_fraction > 0:
        splits = hold_out_validation(splits, float(val_fraction), seed, recompute_stats=spec.stats_from_train)
    return splits
