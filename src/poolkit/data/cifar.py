"""CIFAR-10 and CIFAR-100 from their official python-pickle releases.

Layouts (``data_dir`` may be the extracted folder or its parent)::

    cifar-10-batches-py/   data_batch_1 ... data_batch_5, test_batch, batches.meta
    cifar-100-python/      train, test, meta

Each batch is a pickled dict with ``data`` (``N x 3072`` uint8: the red, green and blue 32x32 planes,
row-major) and ``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100). The batches are read with a
restricted unpickler that only rebuilds numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import codecs
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from poolkit.data.base import DatasetSplits, ImageSplit, make_splits
from poolkit.data.cache import cached_split, fingerprint
from poolkit.data.download import download_and_extract
from poolkit.errors import DataNotFoundError

__all__ = ["CIFAR10_RELEASE", "CIFAR100_RELEASE", "CifarRelease", "load_cifar10", "load_cifar100"]


@dataclass(frozen=True)
class CifarRelease:
    """Where a CIFAR release comes from and how its files are laid out."""

    name: str
    folder: str
    url: str
    md5: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# mean/std: per-channel pixel statistics of the 50,000 training images (population std), in [0, 1] units.
CIFAR10_RELEASE = CifarRelease(
    name="cifar10",
    folder="cifar-10-batches-py",
    url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_files=("test_batch",),
    meta_file="batches.meta",
    label_key="labels",
    names_key="label_names",
    mean=(0.49139968, 0.48215841, 0.44653091),
    std=(0.24703223, 0.24348513, 0.26158784),
)
CIFAR100_RELEASE = CifarRelease(
    name="cifar100",
    folder="cifar-100-python",
    url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train_files=("train",),
    test_files=("test",),
    meta_file="meta",
    label_key="fine_labels",
    names_key="fine_label_names",
    mean=(0.50707516, 0.48654887, 0.44091784),
    std=(0.26733429, 0.25643846, 0.27615047),
)


def _numpy_rebuilders() -> dict[tuple[str, str], Any]:
    core = getattr(np, "_core", None)
    if core is None:  # numpy < 2
        core = np.core
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # Python 3 pickles bytes with protocols < 3 as _codecs.encode(str, "latin1").
        ("_codecs", "encode"): codecs.encode,
    }
    # Pickles name numpy's internals by the module of the numpy that wrote them (1.x or 2.x).
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{module}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{module}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds dicts, lists, strings, numbers and numpy arrays, and nothing else."""

    _allowed = _numpy_rebuilders()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only numpy arrays and lists"
            ) from None


def _require(path: Path, release: CifarRelease) -> None:
    if not path.is_file():
        raise DataNotFoundError(
            f"{path} not found: the {release.folder} release holds "
            f"{', '.join(release.train_files + release.test_files + (release.meta_file,))}; "
            "extract the archive again, or remove the folder and download it again: poolkit train "
            "--download (download=True in Python, download: true in a config file)"
        )


def _read_pickle(path: Path, release: CifarRelease) -> dict[str, Any]:
    _require(path, release)
    try:
        # The releases were pickled by Python 2: latin1 turns their str keys and numpy buffers back
        # into str keys and bytes.
        content = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:
        raise ValueError(
            f"{path}: cannot read it ({type(exc).__name__}: {exc}); expected a python-pickle file from "
            f"{release.url.rsplit('/', 1)[-1]}"
        ) from None
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in content.items()}


def _read_batch(path: Path, release: CifarRelease, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _read_pickle(path, release)
    missing = [k for k in ("data", release.label_key) if k not in batch]
    if missing:
        raise ValueError(
            f"{path}: missing key(s) {missing}; a {release.name} batch has 'data' and '{release.label_key}'"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[release.label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}; expected uint8 of shape (N, 3072)")
    if labels.shape != (data.shape[0],):
        raise ValueError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{path}: labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return data, labels


def _decode_split(root: Path, files: tuple[str, ...], release: CifarRelease, num_classes: int) -> ImageSplit:
    batches = [_read_batch(root / name, release, num_classes) for name in files]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    images = torch.from_numpy(data).view(-1, 3, 32, 32)
    return ImageSplit(images.contiguous(), torch.from_numpy(labels))


def _find_root(data_dir: Path, release: CifarRelease, download: bool) -> Path:
    marker = release.train_files[0]
    for candidate in (data_dir, data_dir / release.folder):
        if (candidate / marker).is_file():
            return candidate
    if download:
        download_and_extract(release.url, release.md5, data_dir)
        if (data_dir / release.folder / marker).is_file():
            return data_dir / release.folder
        raise DataNotFoundError(
            f"{release.url} was extracted into {data_dir} but {data_dir / release.folder / marker} is missing"
        )
    raise DataNotFoundError(
        f"{data_dir / release.folder / marker} not found: expected the extracted {release.folder} folder "
        "or its parent; pass the folder that holds it as --data-dir, or add --download to fetch it there "
        "(download=True in Python, download: true in a config file)"
    )


def _load_cifar(release: CifarRelease, data_dir: str | Path, download: bool) -> DatasetSplits:
    root = _find_root(Path(data_dir).expanduser(), release, download)
    meta = _read_pickle(root / release.meta_file, release)
    if release.names_key not in meta:
        raise ValueError(f"{root / release.meta_file}: missing key '{release.names_key}'")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[release.names_key]]
    splits = {}
    for split, files in (("train", release.train_files), ("test", release.test_files)):
        sources = [root / name for name in files]
        for path in sources:
            _require(path, release)
        splits[split] = cached_split(
            root,
            f"{release.name}-{split}",
            fingerprint(root, sources, extra=str(len(classes))),
            lambda files=files: _decode_split(root, files, release, len(classes)),
        )
    return make_splits(
        release.name, splits["train"], splits["test"], classes, flip=True, mean=release.mean, std=release.std
    )


def load_cifar10(data_dir: str | Path, *, download: bool = False) -> DatasetSplits:
    """CIFAR-10: 50,000 train and 10,000 test RGB images of 32x32 in 10 classes.

    Args:
        data_dir: the extracted ``cifar-10-batches-py`` folder or its parent.
        download: if the release is not found, download the official archive into ``data_dir``
            (MD5-checked) and extract it there.
    """
    return _load_cifar(CIFAR10_RELEASE, data_dir, download)


def load_cifar100(data_dir: str | Path, *, download: bool = False) -> DatasetSplits:
    """CIFAR-100 (fine labels): 50,000 train and 10,000 test RGB images of 32x32 in 100 classes.

    Args:
        data_dir: the extracted ``cifar-100-python`` folder or its parent.
        download: if the release is not found, download the official archive into ``data_dir``
            (MD5-checked) and extract it there.
    """
    return _load_cifar(CIFAR100_RELEASE, data_dir, download)
