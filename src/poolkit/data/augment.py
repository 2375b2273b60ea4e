"""Augmentation and normalisation of whole batches of images, vectorised (no Python loop per image).

Crops and flips work on any dtype (uint8 included, which moves four times fewer bytes than float),
on any device. Random draws come from an explicit :class:`torch.Generator`, never the global RNG;
they are drawn on the generator's device and moved to the batch's, so the same generator state gives
the same augmentation on CPU and GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["crop_at", "flip_where", "normalize", "random_crop", "random_flip"]


def _check_batch(images: Tensor, name: str) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{name} expects a batch of shape (B, C, H, W), got {shape}")


def _check_padding(padding: int) -> None:
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be an int >= 0, got {padding!r}")


def crop_at(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """Crop each image at its own offset from the zero-padded batch, keeping the size.

    Image ``b`` of the result is ``F.pad(images, [padding] * 4)[b, :, dy:dy + H, dx:dx + W]`` with
    ``(dy, dx) = offsets[b]``; ``(padding, padding)`` leaves an image unchanged, ``(0, 0)`` shifts
    its content ``padding`` pixels down and right. No loop over images.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        offsets: int tensor ``(B, 2)`` of ``(dy, dx)`` in ``[0, 2 * padding]``.
        padding: zero padding on every side.

    Example:
        >>> x = torch.arange(4, dtype=torch.uint8).view(1, 1, 2, 2)
        >>> crop_at(x, torch.tensor([[0, 1]]), padding=1)
        tensor([[[[0, 0],
                  [0, 1]]]], dtype=torch.uint8)
    """
    _check_batch(images, "crop_at")
    _check_padding(padding)
    b = images.shape[0]
    if offsets.shape != (b, 2) or offsets.dtype.is_floating_point:
        raise ValueError(
            f"offsets must be an int tensor of shape ({b}, 2), got {offsets.dtype} {tuple(offsets.shape)}"
        )
    if b and (int(offsets.min()) < 0 or int(offsets.max()) > 2 * padding):
        raise ValueError(f"offsets must lie in [0, {2 * padding}] for padding={padding}")
    return _crop(images, offsets, padding)


def _crop(images: Tensor, offsets: Tensor, padding: int) -> Tensor:
    """:func:`crop_at` without the checks (each check of a GPU tensor's values waits for the GPU)."""
    if padding == 0:
        return images
    b, c, h, w = images.shape
    span = 2 * padding + 1
    padded = F.pad(images, (padding, padding, padding, padding))
    sb, sc, sh, sw = padded.stride()
    # A view of all span x span crops of every image; one indexing picks each image's crop. On CPU
    # this is twice as fast as two gathers, and ten times faster than masking per offset (airbench).
    windows = padded.as_strided((b, span, span, c, h, w), (sb, sh, sw, sc, sh, sw))
    offsets = offsets.to(device=images.device, dtype=torch.int64)
    return windows[torch.arange(b, device=images.device), offsets[:, 0], offsets[:, 1]]


def flip_where(images: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images where ``mask`` is True.

    Args:
        images: ``(B, C, H, W)``, any dtype.
        mask: bool tensor ``(B,)``.
    """
    _check_batch(images, "flip_where")
    if mask.shape != (images.shape[0],) or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a bool tensor of shape ({images.shape[0]},), got {mask.dtype} {tuple(mask.shape)}"
        )
    return _flip(images, mask)


def _flip(images: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.to(images.device).view(-1, 1, 1, 1), images.flip(-1), images)


def random_crop(images: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    """Random crop with zero padding (``RandomCrop(size, padding)``) of every image of a batch.

    Each image gets an independent offset, uniform over the ``(2 * padding + 1) ** 2`` positions;
    see :func:`crop_at`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> random_crop(torch.ones(8, 3, 32, 32), 4, g).shape
        torch.Size([8, 3, 32, 32])
    """
    _check_batch(images, "random_crop")
    _check_padding(padding)
    if padding == 0:
        return images
    offsets = torch.randint(
        0, 2 * padding + 1, (images.shape[0], 2), generator=generator, device=generator.device
    )
    return _crop(images, offsets, padding)


def random_flip(images: Tensor, generator: torch.Generator, p: float = 0.5) -> Tensor:
    """Mirror each image of a batch left-right with probability ``p``, independently."""
    _check_batch(images, "random_flip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    mask = torch.rand(images.shape[0], generator=generator, device=generator.device) < p
    return _flip(images, mask)


def normalize(
    images: Tensor, mean: Sequence[float], std: Sequence[float], dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(images / 255 - mean) / std`` per channel, as ``dtype``.

    Args:
        images: uint8 (or float in 0-255 units) ``(B, C, H, W)``.
        mean, std: ``C`` values in ``[0, 1]`` pixel units.

    Example:
        >>> x = torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1)
        >>> normalize(x, mean=[0.5, 0.5], std=[0.5, 0.25]).flatten().round(decimals=4)
        tensor([-1.,  2.])
    """
    _check_batch(images, "normalize")
    scale, bias = _affine(mean, std, images.shape[1], images.device)
    return _apply_affine(images, scale, bias, dtype)


def _affine(
    mean: Sequence[float], std: Sequence[float], channels: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """``(scale, bias)``, each ``(1, C, 1, 1)``: ``pixel * scale + bias == (pixel / 255 - mean) / std``."""
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need {channels} values (one per channel), got {len(mean)} and {len(std)}"
        )
    if any(not s > 0 for s in std):
        raise ValueError(f"every std must be > 0, got {tuple(std)}")
    mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float64)
    std_t = torch.tensor([float(s) for s in std], dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(torch.float32).view(1, channels, 1, 1).to(device)
    bias = (-mean_t / std_t).to(torch.float32).view(1, channels, 1, 1).to(device)
    return scale, bias


def _apply_affine(images: Tensor, scale: Tensor, bias: Tensor, dtype: torch.dtype) -> Tensor:
    out = torch.addcmul(bias, images.to(torch.float32), scale)
    return out if dtype == torch.float32 else out.to(dtype)
