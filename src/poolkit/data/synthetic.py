"""``synthetic``: a generated, learnable image dataset for tests and smoke runs (no files).

Class ``c`` of ``K`` is drawn as the sum of

* a grey grating oriented at ``180 * c / K`` degrees (3 cycles per image, random phase and contrast),
* a Gaussian blob of the class colour (hue ``c / K``) centred at angle ``360 * c / K`` degrees on a
  circle around the image centre (random jitter of about a pixel),
* a faint tint of the class colour over the whole image,
* a random brightness offset and Gaussian pixel noise.

Orientation, position and colour each identify the class, so a small CNN learns it within a couple of
epochs (with SGD, batch 64, lr 0.05 on the default 512 images, a 3-layer CNN with batch norm reaches
about 90% test accuracy after 2 epochs, one without batch norm about 50%; chance is 10%), while the
noise keeps it from being solved at initialisation. A horizontal flip turns one
class's pattern into another's, hence ``flip=False``. The same ``seed`` gives the same images.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from poolkit.data.base import DatasetSplits, ImageSplit, make_splits

__all__ = ["load_synthetic"]


def _class_colours(num_classes: int) -> Tensor:
    """``(K, 3)`` RGB colours of evenly spaced hues at full saturation and value."""
    hue = torch.arange(num_classes, dtype=torch.float64) / num_classes
    k = (torch.tensor([5.0, 3.0, 1.0], dtype=torch.float64) + hue[:, None] * 6) % 6
    return 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def _generate(
    labels: Tensor, num_classes: int, size: int, channels: int, noise: float, g: torch.Generator
) -> Tensor:
    n = len(labels)
    coords = torch.linspace(-1, 1, size, dtype=torch.float32)
    y, x = coords.view(1, size, 1), coords.view(1, 1, size)
    cls = labels.to(torch.float32)

    angle = (math.pi * cls / num_classes).view(n, 1, 1)
    phase = (2 * math.pi * torch.rand(n, generator=g, dtype=torch.float32)).view(n, 1, 1)
    contrast = (0.6 + 0.4 * torch.rand(n, generator=g, dtype=torch.float32)).view(n, 1, 1)
    grating = contrast * torch.cos(3 * math.pi * (x * torch.cos(angle) + y * torch.sin(angle)) + phase)

    where = 2 * math.pi * cls / num_classes
    jitter = 0.08 * torch.randn(n, 2, generator=g, dtype=torch.float32)
    cy = (0.5 * torch.sin(where) + jitter[:, 0]).view(n, 1, 1)
    cx = (0.5 * torch.cos(where) + jitter[:, 1]).view(n, 1, 1)
    blob = torch.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.2**2))

    colour = _class_colours(num_classes).to(torch.float32)[labels]
    if channels == 1:
        colour = colour.mean(dim=1, keepdim=True)
    colour = colour.view(n, channels, 1, 1)
    brightness = 0.1 * (2 * torch.rand(n, 1, 1, 1, generator=g, dtype=torch.float32) - 1)
    pixels = (
        0.35
        + brightness
        + 0.15 * (colour - 0.5)
        + 0.2 * grating[:, None]
        + 0.5 * blob[:, None] * colour
        + noise * torch.randn(n, channels, size, size, generator=g)
    )
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8)


def _balanced_labels(n: int, num_classes: int, g: torch.Generator) -> Tensor:
    return (torch.arange(n) % num_classes)[torch.randperm(n, generator=g)]


def load_synthetic(
    *,
    num_train: int = 512,
    num_test: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    noise: float = 0.15,
    seed: int = 0,
) -> DatasetSplits:
    """Generate the synthetic dataset (see the module docstring).

    Args:
        num_train, num_test: split sizes; classes are balanced (sizes differ by at most one).
        num_classes: number of classes ``K >= 2``.
        image_size: height and width.
        channels: 3 (RGB) or 1 (grey: the blob's brightness, not its hue, carries the colour cue).
        noise: standard deviation of the pixel noise, in ``[0, 1]`` pixel units.
        seed: the generator's seed; the same seed gives the same images.

    Example:
        >>> data = load_synthetic(num_train=20, num_test=10)
        >>> data.train.images.shape, data.test.labels.shape, data.flip
        (torch.Size([20, 3, 32, 32]), torch.Size([10]), False)
    """
    for name, value, low in (
        ("num_train", num_train, 1),
        ("num_test", num_test, 1),
        ("num_classes", num_classes, 2),
        ("image_size", image_size, 4),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    splits = []
    for n in (num_train, num_test):
        labels = _balanced_labels(n, num_classes, g)
        splits.append(ImageSplit(_generate(labels, num_classes, image_size, channels, noise, g), labels))
    classes = [f"pattern{c}" for c in range(num_classes)]
    return make_splits("synthetic", splits[0], splits[1], classes, flip=False)
