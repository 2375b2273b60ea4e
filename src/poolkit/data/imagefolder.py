"""Any image classification dataset laid out as one folder per class.

Layout::

    root/train/<class>/<image>.png|.jpg|.jpeg
    root/test/<class>/...        (or root/val/<class>/... when there is no test/)

Classes are the sub-folders of ``train/`` in sorted order (label ``i`` is the ``i``-th name); images
may sit in nested folders below a class folder. ``test/`` may lack some classes but may not add any.
Every image of both splits must have the same size (nothing is resized). Images are converted to RGB
unless every image is greyscale, in which case the dataset has one channel. Hidden files are
skipped; other non-image files are skipped with a warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import torch

from poolkit.data.base import DatasetSplits, ImageSplit, make_splits
from poolkit.data.cache import cached_split, fingerprint
from poolkit.data.images import decode_images, is_image_file
from poolkit.errors import DataNotFoundError

__all__ = ["load_imagefolder"]

_LAYOUT = "expected root/train/<class>/<image> and root/test/<class>/<image> (or root/val/<class>/<image>)"


def _list_class(folder: Path) -> tuple[list[str], list[str]]:
    """``(images, skipped non-image files)`` below ``folder``, in sorted order.

    Paths are strings: building 100,000 ``Path`` objects would cost more than the warm cache load.
    """
    images, skipped = [], []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_image_file(name):
                images.append(os.path.join(dirpath, name))
            elif not name.startswith("."):
                skipped.append(os.path.join(dirpath, name))
    return images, skipped


def _list_split(
    split_dir: Path, classes: list[str], *, train: bool
) -> tuple[list[str], list[int], list[str]]:
    """Files, labels and skipped files of one split folder."""
    found = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(
            f"{split_dir} has class folder(s) {unknown} that {split_dir.parent / 'train'} lacks; "
            "the evaluation split may not add classes"
        )
    files: list[str] = []
    labels: list[int] = []
    skipped = [e.path for e in os.scandir(split_dir) if e.is_file() and not e.name.startswith(".")]
    for label, name in enumerate(classes):
        if name not in found:
            continue
        images, ignored = _list_class(split_dir / name)
        skipped += ignored
        if train and not images:
            raise ValueError(f"{split_dir / name} holds no JPEG or PNG image; {_LAYOUT}")
        files += images
        labels += [label] * len(images)
    if not files:
        raise ValueError(f"{split_dir} holds no JPEG or PNG image; {_LAYOUT}")
    return files, labels, skipped


def _decode(files: list[str], labels: list[int]) -> ImageSplit:
    return ImageSplit(decode_images(files, expected="a JPEG or PNG"), torch.tensor(labels, dtype=torch.int64))


def load_imagefolder(data_dir: str | Path) -> DatasetSplits:
    """Load an image-folder dataset (see the module docstring for the layout).

    The normalisation constants are the train split's per-channel mean and std; horizontal flips
    are allowed (``flip=True``).

    Raises:
        FileNotFoundError: ``root``, ``root/train`` or the evaluation folder is missing.
        ValueError: a file cannot be decoded, sizes differ, a class folder is empty, or the
            evaluation split has a class that train lacks (the message names the file or folder).
    """
    root = Path(data_dir).expanduser()
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataNotFoundError(f"{train_dir} not found: {_LAYOUT}; pass that root as --data-dir")
    eval_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if eval_dir is None:
        raise DataNotFoundError(
            f"{root / 'test'} not found (nor {root / 'val'}): {_LAYOUT}; pass that root as --data-dir"
        )
    classes = sorted(e.name for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"{train_dir} has no class folder: {_LAYOUT}")

    splits: dict[str, ImageSplit] = {}
    skipped: list[Path] = []
    first_file: dict[str, str] = {}
    for split, folder in (("train", train_dir), ("test", eval_dir)):
        files, labels, ignored = _list_split(folder, classes, train=split == "train")
        skipped += ignored
        first_file[split] = files[0]
        # Labels index the train classes, so the class list is part of what each split depends on.
        fp = fingerprint(root, files, extra=json.dumps([folder.name, classes]))
        splits[split] = cached_split(
            root, f"imagefolder-{split}", fp, lambda f=files, lab=labels: _decode(f, lab)
        )
    if skipped:
        warnings.warn(
            f"{root}: skipped {len(skipped)} file(s) that are not JPEG or PNG images, e.g. {skipped[0]}",
            UserWarning,
            stacklevel=2,
        )

    train, test = splits["train"], splits["test"]
    if train.image_size != test.image_size:
        raise ValueError(
            f"the images of {eval_dir} (e.g. {first_file['test']}) are "
            f"{test.image_size[0]}x{test.image_size[1]} (HxW) but those of {train_dir} "
            f"(e.g. {first_file['train']}) are "
            f"{train.image_size[0]}x{train.image_size[1]}; all images must share one size "
            "(poolkit does not resize: resize the dataset beforehand)"
        )
    # A split of only greyscale images decodes to one channel; if the other split has colour, both
    # become RGB (grey level in every channel, as Pillow converts L to RGB).
    if train.channels != test.channels:
        train, test = (
            ImageSplit(s.images.expand(-1, 3, -1, -1).contiguous() if s.channels == 1 else s.images, s.labels)
            for s in (train, test)
        )
    return make_splits("imagefolder", train, test, classes, flip=True)
