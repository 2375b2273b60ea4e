"""ResNet-18/34 with BasicBlocks (He et al. 2016), with a CIFAR or an ImageNet stem.

Where pooling sits in a ResNet:

* Inside the residual stages the network downsamples with stride-2 convolutions, never with a pool.
* ``stem="cifar"`` (3x3 stride-1 convolution, BatchNorm, ReLU; the usual CIFAR ResNet) has **no
  downsampling pool at all**: the ``pool`` argument then changes nothing, and only ``global_pool`` (the
  head) reaches a pooling method.
* ``stem="imagenet"`` (7x7 stride-2 convolution, BatchNorm, ReLU and a 3x3 stride-2 pool with padding 1)
  has exactly one downsampling pool, built by :func:`poolkit.create_pool`, so the chosen method replaces
  the stem's max pool. On 32x32 images it leaves 8x8 maps for the first stage and costs accuracy (the
  study's ~63% on CIFAR-100 is in line with this stem, not with the CIFAR one).
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Literal

from torch import Tensor, nn

from poolkit.models.common import ClassifierHead, check_pool, check_width, conv2d, scale_width
from poolkit.registry import PoolFactory, create_pool

__all__ = ["RESNET_BLOCKS", "BasicBlock", "ResNet", "resnet18", "resnet34"]

StemKind = Literal["cifar", "imagenet"]

#: BasicBlocks per stage.
RESNET_BLOCKS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
_STAGE_CHANNELS = (64, 128, 256, 512)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` with 3x3 convolutions.

    The shortcut is the identity, or ``Conv1x1(stride) - BatchNorm`` (``downsample``) when the stride or
    the channel count changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class ResNet(nn.Module):
    """A BasicBlock ResNet for small images; see the module docstring for where pooling happens.

    Module names: ``stem.{conv,bn,relu}`` (+ ``stem.pool`` with the ImageNet stem), ``layer{1..4}.{i}``,
    ``head.pool`` (the global pool) and ``head.fc``.

    Args:
        blocks: BasicBlocks per stage (see :data:`RESNET_BLOCKS`).
        num_classes: number of outputs.
        pool: the stem's pooling method (``stem="imagenet"`` only; a name, class or ``functools.partial``).
        width: multiplies every channel count (rounded half up, >= 1).
        in_channels: channels of the input images (1 for grayscale).
        stem: ``"cifar"`` or ``"imagenet"``.
        global_pool: the head's global pooling method.
        pool_options: the pool method's own options.

    Shape:
        (N, in_channels, H, W) -> (N, num_classes); H, W >= 8 (CIFAR stem) or >= 32 (ImageNet stem).

    Example:
        >>> import torch
        >>> model = resnet18(10, width=0.125, stem="imagenet", pool="avg")
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        blocks: Sequence[int],
        num_classes: int,
        *,
        pool: PoolFactory = "max",
        width: float = 1.0,
        in_channels: int = 3,
        stem: StemKind = "cifar",
        global_pool: str = "avg",
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        width = check_width(width)
        options = dict(pool_options or {})
        channels = scale_width(_STAGE_CHANNELS[0], width)
        if stem == "cifar":
            check_pool(pool, options)
            if pool != "max" or options:
                warnings.warn(
                    f"a ResNet with stem='cifar' has no downsampling pool, so pool={pool!r} and its options "
                    "change nothing; use stem='imagenet' to put the method in the stem, or global_pool= for "
                    "the head",
                    UserWarning,
                    stacklevel=2,
                )
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=conv2d(in_channels, channels, 3, padding=1, bias=False),
                    bn=nn.BatchNorm2d(channels),
                    relu=nn.ReLU(inplace=True),
                )
            )
        elif stem == "imagenet":
            self.stem = nn.Sequential(
                OrderedDict(
                    conv=conv2d(in_channels, channels, 7, stride=2, padding=3, bias=False),
                    bn=nn.BatchNorm2d(channels),
                    relu=nn.ReLU(inplace=True),
                    pool=create_pool(pool, 3, 2, 1, channels=channels, **options),
                )
            )
        else:
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        for s, (count, base) in enumerate(zip(blocks, _STAGE_CHANNELS, strict=True), start=1):
            out = scale_width(base, width)
            stride = 1 if s == 1 else 2
            layer = [BasicBlock(channels, out, stride)] + [BasicBlock(out, out) for _ in range(count - 1)]
            self.add_module(f"layer{s}", nn.Sequential(*layer))
            channels = out
        self.head = ClassifierHead(channels, num_classes, global_pool=global_pool)
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.head(x)


def _resnet(name: str, num_classes: int, **kwargs: Any) -> ResNet:
    return ResNet(RESNET_BLOCKS[name], num_classes, **kwargs)


def resnet18(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-18: (2, 2, 2, 2) BasicBlocks. ``kwargs`` as :class:`ResNet`.

    100 classes, width 1: 11,220,132 parameters with the CIFAR stem, 11,227,812 with the ImageNet stem
    (max pooling).
    """
    return _resnet("resnet18", num_classes, **kwargs)


def resnet34(num_classes: int, **kwargs: Any) -> ResNet:
    """ResNet-34: (3, 4, 6, 3) BasicBlocks. ``kwargs`` as :class:`ResNet`."""
    return _resnet("resnet34", num_classes, **kwargs)
