"""``TensorLoader``: batches of a whole-tensor split, airbench style (no DataLoader, no worker).

The uint8 split is moved to the device once. Each batch is gathered with one indexing operation,
cropped and flipped on uint8 (four times fewer bytes than float) and normalised last, so padding is
black, as with ``RandomCrop(padding=4)`` before ``Normalize``. Normalising per batch keeps memory at
one byte per pixel (Tiny ImageNet's train split: 1.2 GB as uint8, 4.9 GB as float32); normalising the
whole split once measured at most 0.06 s per 10,000 images faster on CPU (docs/datasets.md).

Determinism: the order and the augmentation of epoch ``e`` are drawn at the start of the epoch from a
dedicated CPU :class:`torch.Generator` seeded from ``(seed, e)`` only, never the global RNG. A run
resumed at epoch ``e`` therefore sees exactly the batches an uninterrupted run sees, on any device.
Each image's crop offset and flip are drawn per position in the epoch, so they do not depend on the
batch size or on how the epoch is shared between distributed ranks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from poolkit.data.augment import _affine, _apply_affine, _crop, _flip
from poolkit.data.base import ImageSplit

__all__ = ["TensorLoader", "epoch_generator"]


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator whose state depends only on ``(seed, epoch)`` (stable across Python versions)."""
    digest = hashlib.sha256(f"poolkit-epoch:{int(seed)}:{int(epoch)}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


class TensorLoader:
    """Batches of one split, shuffled and augmented per epoch for training, in order for evaluation.

    Args:
        split: the :class:`~poolkit.data.ImageSplit` (uint8 images).
        batch_size: images per batch.
        train: shuffle and augment (when ``augment``); else fixed order, no augmentation.
        mean, std: per-channel normalisation constants in ``[0, 1]`` units (``DatasetSplits.mean``/``std``).
        device: where the split is stored and batches are made.
        seed: with the epoch number, fixes order and augmentation.
        augment: random crop (``crop_padding``) and flip (``flip``) in training.
        flip: random horizontal flips (pass ``DatasetSplits.flip``: False for digits).
        crop_padding: zero padding of the random crop; 0 disables cropping.
        drop_last: drop the last incomplete (global) batch.
        channels_last: return batches in ``torch.channels_last`` memory format.
        dtype: floating dtype of the image batches.
        rank, world_size: for data-parallel training, this process's share of each epoch: positions
            ``rank, rank + world_size, ...`` of the epoch's order, so the ranks' ``b``-th batches together
            are the ``b``-th global batch of ``batch_size * world_size`` images and every image is used
            once per epoch (no padding, no repeats). In training every rank yields the same number of
            batches; the shares of the last global batch differ by at most one image (see
            :meth:`global_batch_count`), and a last global batch of fewer than ``world_size`` images is
            dropped so that no rank has an empty batch. In evaluation ranks differ by at most one image;
            sum the metrics over ranks.

    Shape:
        Yields ``(images, labels)``: ``(B, C, H, W)`` of ``dtype`` and ``(B,)`` int64, on ``device``.

    Example:
        >>> from poolkit.data import load_dataset
        >>> data = load_dataset("synthetic")
        >>> loader = TensorLoader(data.train, 128, train=True, mean=data.mean, std=data.std, flip=data.flip)
        >>> len(loader), [tuple(x.shape) for x, _ in loader.epoch(0)][0]
        (4, (128, 3, 32, 32))
    """

    def __init__(
        self,
        split: ImageSplit,
        batch_size: int,
        *,
        train: bool,
        mean: Sequence[float],
        std: Sequence[float],
        device: str | torch.device = "cpu",
        seed: int = 0,
        augment: bool = True,
        flip: bool = True,
        crop_padding: int = 4,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not isinstance(split, ImageSplit):
            raise ValueError(f"split must be an ImageSplit, got {type(split).__name__}")
        if len(split) == 0:
            raise ValueError("split is empty")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.crop_padding = _check_int("crop_padding", crop_padding, 0)
        self.seed = _check_int("seed", seed, -(2**63))
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank must be < world_size={world_size}, got {rank}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.train = bool(train)
        self.augment = bool(augment)
        self.flip = bool(flip)
        self.drop_last = bool(drop_last)
        self.channels_last = bool(channels_last)
        self.dtype = dtype
        self.device = torch.device(device)
        self.images = split.images.to(self.device)
        self.labels = split.labels.to(self.device)
        self._scale, self._bias = _affine(mean, std, split.channels, self.device)

    @property
    def dataset_size(self) -> int:
        """Number of images in the split."""
        return int(self.images.shape[0])

    @property
    def global_batch_size(self) -> int:
        """Images per step over every rank: ``batch_size * world_size``."""
        return self.batch_size * self.world_size

    def _used(self) -> int:
        """Positions of the epoch's order that are used (all but a dropped last global batch)."""
        n = self.dataset_size
        if not self.train:
            return n
        full, last = divmod(n, self.global_batch_size)
        if last and (self.drop_last or last < self.world_size):
            return full * self.global_batch_size
        return n

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch (after a dropped last batch, in training)."""
        return len(range(self.rank, self._used(), self.world_size))

    def global_batch_count(self, step: int) -> int:
        """Images in step ``step`` of a training epoch over every rank (``global_batch_size`` but for a
        shorter last step): what a step's summed loss is divided by to give the global batch's mean."""
        return max(0, min(self.global_batch_size, self._used() - step * self.global_batch_size))

    def __len__(self) -> int:
        """Batches per epoch (in training, the same on every rank)."""
        if self.train and self.world_size > 1:
            return -(-self._used() // self.global_batch_size)
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __repr__(self) -> str:
        return (
            f"TensorLoader(images={self.dataset_size}, batch_size={self.batch_size}, train={self.train}, "
            f"augment={self.augment and self.train}, flip={self.flip}, crop_padding={self.crop_padding}, "
            f"device={self.device}, seed={self.seed})"
        )

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        if self.train:
            raise TypeError("iterate a training loader with loader.epoch(e): its order depends on the epoch")
        return self.epoch(0)

    def _plan(self, epoch: int) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """This rank's ``(indices, crop offsets, flip mask)`` for ``epoch``, on the CPU."""
        n = self.dataset_size
        if not self.train:
            return torch.arange(n)[self.rank :: self.world_size], None, None
        g = epoch_generator(self.seed, epoch)
        order = torch.randperm(n, generator=g)
        augment = self.augment and self.crop_padding > 0
        offsets = torch.randint(0, 2 * self.crop_padding + 1, (n, 2), generator=g) if augment else None
        flips = torch.rand(n, generator=g) < 0.5 if self.augment and self.flip else None
        if self.world_size > 1:
            positions = torch.arange(self._used())[self.rank :: self.world_size]
            order = order[positions]
            offsets = offsets[positions] if offsets is not None else None
            flips = flips[positions] if flips is not None else None
        return order, offsets, flips

    def epoch(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield the ``(images, labels)`` batches of ``epoch`` (the same for the same ``(seed, epoch)``)."""
        _check_int("epoch", epoch, 0)
        order, offsets, flips = self._plan(epoch)
        order = order.to(self.device)
        if offsets is not None:
            offsets = offsets.to(self.device)
        if flips is not None:
            flips = flips.to(self.device)
        bs = self.batch_size
        for b in range(len(self)):
            batch = slice(b * bs, (b + 1) * bs)
            index = order[batch]
            images = self.images[index]
            if offsets is not None:
                images = _crop(images, offsets[batch], self.crop_padding)
            if flips is not None:
                images = _flip(images, flips[batch])
            images = _apply_affine(images, self._scale, self._bias, self.dtype)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, self.labels[index]
