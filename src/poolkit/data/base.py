"""The containers every dataset loader returns, and the helpers they share.

A dataset is held as whole uint8 tensors, never as per-image Python objects: :class:`ImageSplit` is one
split (``images`` of shape ``(N, C, H, W)``, ``labels`` of shape ``(N,)``) and :class:`DatasetSplits`
bundles the splits with what a model and a loader need to know (classes, channels, size, normalisation
constants, whether horizontal flips are a valid augmentation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

__all__ = [
    "DatasetSplits",
    "ImageSplit",
    "channel_stats",
    "hold_out_validation",
    "make_splits",
    "stratified_split",
]


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"{str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return type(value).__name__


@dataclass(frozen=True, repr=False)
class ImageSplit:
    """One split of an image dataset, as two tensors.

    Args:
        images: uint8 tensor of shape ``(N, C, H, W)``, pixel values 0-255.
        labels: int64 tensor of shape ``(N,)``, class indices.

    Example:
        >>> split = ImageSplit(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
        >>> split
        ImageSplit(images=uint8[4, 3, 8, 8], labels=int64[4])
        >>> len(split), split.image_size, split.channels
        (4, (8, 8), 3)
    """

    images: Tensor
    labels: Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"ImageSplit.images must be a uint8 tensor of shape (N, C, H, W), got {_describe(images)}"
            )
        if not isinstance(labels, Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(
                f"ImageSplit.labels must be an int64 tensor of shape (N,), got {_describe(labels)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"ImageSplit has {images.shape[0]} images but {labels.shape[0]} labels; they must match"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        shape = ", ".join(str(s) for s in self.images.shape)
        return f"ImageSplit(images=uint8[{shape}], labels=int64[{len(self)}])"

    @property
    def channels(self) -> int:
        """Number of channels ``C``."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (int(self.images.shape[2]), int(self.images.shape[3]))

    def subset(self, indices: Tensor | Sequence[int]) -> ImageSplit:
        """The images at ``indices`` (in that order), as a new split."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageSplit(self.images[index], self.labels[index])

    def class_counts(self, num_classes: int) -> Tensor:
        """Number of images of each class, an int64 tensor of shape ``(num_classes,)``."""
        return torch.bincount(self.labels, minlength=num_classes)


@dataclass(frozen=True, repr=False)
class DatasetSplits:
    """A loaded dataset: its splits and what a model and a loader need to know about it.

    Attributes:
        name: the registry name (``"cifar100"``, ...).
        train, test: the splits; ``val`` is ``None`` unless a validation split was held out of train.
        num_classes, in_channels: as a model's constructor wants them.
        image_size: ``(H, W)``, shared by every image of every split.
        mean, std: per-channel normalisation constants in ``[0, 1]`` pixel units (pixel / 255).
        classes: ``num_classes`` class names, index ``i`` names label ``i``.
        flip: whether a horizontal flip keeps an image's class (False for digits and for the
            synthetic patterns), i.e. whether :class:`~poolkit.data.TensorLoader` may flip.
    """

    name: str
    train: ImageSplit
    test: ImageSplit
    val: ImageSplit | None
    num_classes: int
    in_channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: list[str]
    flip: bool

    def __post_init__(self) -> None:
        if len(self.classes) != self.num_classes:
            raise ValueError(f"{self.name}: {len(self.classes)} class names for {self.num_classes} classes")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{self.name}: mean and std need {self.in_channels} values (one per channel), "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"{self.name}: every std must be > 0, got {self.std}")
        for split_name, split in self.splits().items():
            if split.channels != self.in_channels or split.image_size != self.image_size:
                raise ValueError(
                    f"{self.name}: the {split_name} images are {split.channels}x{split.image_size[0]}x"
                    f"{split.image_size[1]} (CxHxW) but the dataset is {self.in_channels}x"
                    f"{self.image_size[0]}x{self.image_size[1]}"
                )
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= self.num_classes):
                raise ValueError(
                    f"{self.name}: {split_name} labels must lie in [0, {self.num_classes}), "
                    f"got [{int(split.labels.min())}, {int(split.labels.max())}]"
                )

    def __repr__(self) -> str:
        val = repr(self.val) if self.val is not None else "None"
        return (
            f"DatasetSplits(name={self.name!r}, train={self.train!r}, test={self.test!r}, val={val}, "
            f"num_classes={self.num_classes}, in_channels={self.in_channels}, image_size={self.image_size}, "
            f"mean={tuple(round(m, 4) for m in self.mean)}, std={tuple(round(s, 4) for s in self.std)}, "
            f"flip={self.flip})"
        )

    def splits(self) -> dict[str, ImageSplit]:
        """The splits present, by name: ``train``, ``test`` and, when held out, ``val``."""
        out = {"train": self.train, "test": self.test}
        if self.val is not None:
            out["val"] = self.val
        return out


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, in ``[0, 1]`` units.

    Exact: computed from a 256-bin histogram per channel in float64, so it needs no float copy of
    the images.

    Args:
        images: uint8 tensor of shape ``(N, C, H, W)`` with ``N >= 1``.

    Example:
        >>> channel_stats(torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1))
        ((0.5,), (0.5,))
    """
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(
            f"channel_stats needs a non-empty uint8 (N, C, H, W) tensor, got {_describe(images)}"
        )
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].reshape(-1).cpu(), minlength=256).to(torch.float64)
        total = hist.sum()
        mean = (hist * values).sum() / total
        var = (hist * (values - mean) ** 2).sum() / total
        means.append(float(mean))
        stds.append(float(var.sqrt()))
    return tuple(means), tuple(stds)


def make_splits(
    name: str,
    train: ImageSplit,
    test: ImageSplit,
    classes: Sequence[str],
    *,
    flip: bool,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> DatasetSplits:
    """Assemble a :class:`DatasetSplits`; ``mean``/``std`` default to the train split's statistics."""
    if (mean is None) != (std is None):
        raise ValueError("give both mean and std, or neither (then they are computed from the train split)")
    if mean is None or std is None:
        mean, std = channel_stats(train.images)
    return DatasetSplits(
        name=name,
        train=train,
        test=test,
        val=None,
        num_classes=len(classes),
        in_channels=train.channels,
        image_size=train.image_size,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=list(classes),
        flip=flip,
    )


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices ``0..N-1`` into ``(kept, held_out)`` with each class held out in proportion.

    ``round(fraction * N)`` indices are held out in total; each class contributes ``fraction`` of its
    images (largest-remainder rounding, so the total is exact) but always keeps at least one. Which
    images are held out depends only on ``labels``, ``fraction`` and ``seed``. Both index tensors are
    sorted, so both splits keep the original order.

    Example:
        >>> kept, held = stratified_split(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), 0.25, seed=0)
        >>> len(kept), len(held), torch.bincount(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])[held]).tolist()
        (6, 2, [1, 1])
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    labels = labels.cpu()
    classes, counts = torch.unique(labels, return_counts=True)
    exact = counts.to(torch.float64) * fraction
    quota = exact.floor().to(torch.int64)
    total = round(fraction * len(labels))
    # Largest remainder: the classes whose exact share was rounded down the most get the leftovers.
    remainder = exact - quota
    order = sorted(range(len(classes)), key=lambda i: (-float(remainder[i]), i))
    for i in order[: max(0, total - int(quota.sum()))]:
        quota[i] += 1
    quota = torch.minimum(quota, counts - 1)
    if int(quota.sum()) == 0:
        raise ValueError(
            f"a validation fraction of {fraction} holds out no image of {len(labels)} "
            f"(every class needs at least 2 images and fraction * N >= 0.5)"
        )
    generator = torch.Generator().manual_seed(seed)
    held = []
    for cls, k in zip(classes.tolist(), quota.tolist(), strict=True):
        members = torch.nonzero(labels == cls).flatten()
        held.append(members[torch.randperm(len(members), generator=generator)[:k]])
    held_out = torch.cat(held).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).flatten(), held_out


def hold_out_validation(
    splits: DatasetSplits, fraction: float, seed: int, *, recompute_stats: bool
) -> DatasetSplits:
    """Take a stratified validation split out of ``splits.train`` (see :func:`stratified_split`).

    With ``recompute_stats`` the normalisation constants are recomputed from the remaining train
    images, so that nothing of the validation images leaks into training.
    """
    kept, held = stratified_split(splits.train.labels, fraction, seed)
    train = splits.train.subset(kept)
    mean, std = channel_stats(train.images) if recompute_stats else (splits.mean, splits.std)
    return replace(splits, train=train, val=splits.train.subset(held), mean=mean, std=std)
