"""Tiny ImageNet (200 classes, 64x64 RGB) in its standard release layout.

Layout (``data_dir`` may be ``tiny-imagenet-200`` or its parent)::

    tiny-imagenet-200/
        wnids.txt                      the 200 WordNet ids, one per line
        words.txt                      optional: "<wnid>\\t<names>" lines, used for class names
        train/<wnid>/images/*.JPEG     500 images per class
        val/images/*.JPEG              10,000 images
        val/val_annotations.txt        "<file>\\t<wnid>\\t<box...>" lines

The official test set has no labels, so poolkit's **test split is the official validation set**
(10,000 images, 50 per class), as in most papers that report Tiny ImageNet accuracy. Classes are the
wnids in sorted order (the order an image-folder loader gives). The release holds some greyscale
JPEGs; every image is converted to RGB.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from poolkit.data.base import DatasetSplits, ImageSplit, make_splits
from poolkit.data.cache import cached_split, fingerprint
from poolkit.data.images import decode_images, is_image_file
from poolkit.errors import DataNotFoundError

__all__ = ["TINYIMAGENET_MEAN", "TINYIMAGENET_STD", "load_tinyimagenet"]

FOLDER = "tiny-imagenet-200"
# The constants most Tiny ImageNet code normalises with (train-set statistics, [0, 1] units).
TINYIMAGENET_MEAN = (0.4802, 0.4481, 0.3975)
TINYIMAGENET_STD = (0.2302, 0.2265, 0.2262)
_EXPECTED = "a JPEG of the Tiny ImageNet release"


def _find_root(data_dir: Path) -> Path:
    for candidate in (data_dir, data_dir / FOLDER):
        if (candidate / "wnids.txt").is_file():
            return candidate
    raise DataNotFoundError(
        f"{data_dir / FOLDER / 'wnids.txt'} not found: expected the extracted {FOLDER} folder or its parent "
        "(get http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it); pass --data-dir"
    )


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _class_names(root: Path, wnids: list[str]) -> list[str]:
    words_file = root / "words.txt"
    if not words_file.is_file():
        return list(wnids)
    words = {}
    for line in _read_lines(words_file):
        wnid, _, names = line.partition("\t")
        words[wnid] = names.strip()
    return [words.get(w) or w for w in wnids]


def _train_files(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    files: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(wnids):
        folder = root / "train" / wnid / "images"
        if not folder.is_dir():
            raise DataNotFoundError(f"{folder} not found: expected train/<wnid>/images/*.JPEG for every wnid")
        # Strings, not Path objects: 100,000 of them would dominate a warm (cached) load.
        images = sorted(os.path.join(folder, name) for name in os.listdir(folder) if is_image_file(name))
        if not images:
            raise ValueError(f"{folder} holds no JPEG image")
        files += images
        labels += [label] * len(images)
    return files, labels


def _val_files(root: Path, wnids: list[str]) -> tuple[list[str], list[int]]:
    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise DataNotFoundError(
            f"{annotations} not found: expected the release's val/val_annotations.txt next to val/images/"
        )
    index = {w: i for i, w in enumerate(wnids)}
    files: list[str] = []
    labels: list[int] = []
    for number, line in enumerate(_read_lines(annotations), start=1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{annotations}, line {number}: expected '<file>\\t<wnid>\\t...' with a wnid of "
                f"wnids.txt, got {line!r}"
            )
        files.append(os.path.join(root, "val", "images", fields[0]))
        labels.append(index[fields[1]])
    if not files:
        raise ValueError(f"{annotations} lists no image")
    return files, labels


def load_tinyimagenet(data_dir: str | Path) -> DatasetSplits:
    """Tiny ImageNet: 100,000 train images and, as the test split, the 10,000 official validation images.

    Raises:
        FileNotFoundError: the release (``wnids.txt``), a class folder, the validation annotations or
            an image is missing (the message names it).
        ValueError: an image cannot be decoded or has another size than the others.
    """
    root = _find_root(Path(data_dir).expanduser())
    wnids = sorted(_read_lines(root / "wnids.txt"))
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{root / 'wnids.txt'} lists a wnid twice")
    splits: dict[str, ImageSplit] = {}
    for split, (files, labels) in (("train", _train_files(root, wnids)), ("test", _val_files(root, wnids))):
        sources = [*files, os.path.join(root, "wnids.txt")]
        if split == "test":
            sources.append(os.path.join(root, "val", "val_annotations.txt"))
        splits[split] = cached_split(
            root,
            f"tinyimagenet-{split}",
            fingerprint(root, sources),
            lambda f=files, lab=labels: ImageSplit(
                decode_images(f, allow_gray=False, expected=_EXPECTED), torch.tensor(lab, dtype=torch.int64)
            ),
        )
    return make_splits(
        "tinyimagenet",
        splits["train"],
        splits["test"],
        _class_names(root, wnids),
        flip=True,
        mean=TINYIMAGENET_MEAN,
        std=TINYIMAGENET_STD,
    )
