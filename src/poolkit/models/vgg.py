"""CIFAR-style VGG with BatchNorm: five stages of 3x3 convolutions, each closed by a 2x2 stride-2 pool.

Every downsampling pool is built with :func:`poolkit.create_pool`, so any registered method replaces
max pooling: this is the "pooling-heavy" architecture of the study (five pooling layers).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from poolkit.models.common import ClassifierHead, HeadKind, check_width, conv2d, scale_width
from poolkit.registry import PoolFactory, create_pool

__all__ = ["VGG", "VGG_STAGES", "vgg11", "vgg13", "vgg16", "vgg19"]

#: Output channels of each convolution, per stage (Simonyan & Zisserman 2014, configurations A, B, D, E).
VGG_STAGES: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


class VGG(nn.Module):
    """VGG with BatchNorm for small images (CIFAR 32x32, Tiny ImageNet 64x64).

    Each stage is ``Conv3x3(bias=True) - BatchNorm - ReLU`` repeated, then a pool with kernel 2 and
    stride 2 built by ``create_pool(pool, 2, channels=<stage channels>, **pool_options)``. Five
    stages divide the resolution by 32: a 32x32 input leaves 1x1, a 64x64 input 2x2. The head globally
    pools what remains (``global_pool``) and classifies it (see :class:`ClassifierHead`).

    Module names: ``features.stage{1..5}.{conv,bn,relu}{i}``, ``features.stage{s}.pool``,
    ``head.pool`` (the global pool) and ``head.fc``.

    Args:
        stages: output channels of each convolution, per stage (see :data:`VGG_STAGES`).
        num_classes: number of outputs.
        pool: the downsampling method (a registered name, a pool class or a ``functools.partial``).
        width: multiplies every channel count, the MLP's hidden width included (rounded half up, >= 1).
        in_channels: channels of the input images (1 for grayscale).
        head: ``"linear"`` (global pool + one Linear) or ``"mlp"`` (global pool + the 4096-4096 classifier).
        global_pool: the head's global pooling method.
        pool_options: the pool method's own options (``k``, ``threshold``...).

    Shape:
        (N, in_channels, H, W) -> (N, num_classes), H and W >= 32.

    Example:
        >>> import torch
        >>> model = vgg11(10, pool="avg", width=0.125)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        stages: Sequence[Sequence[int]],
        num_classes: int,
        *,
        pool: PoolFactory = "max",
        width: float = 1.0,
        in_channels: int = 3,
        head: HeadKind = "linear",
        global_pool: str = "avg",
        pool_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        width = check_width(width)
        options = dict(pool_options or {})
        blocks: OrderedDict[str, nn.Module] = OrderedDict()
        channels = in_channels
        for s, convs in enumerate(stages, start=1):
            layers: OrderedDict[str, nn.Module] = OrderedDict()
            for i, out in enumerate(convs, start=1):
                out = scale_width(out, width)
                layers[f"conv{i}"] = conv2d(channels, out, 3, padding=1, bias=True)
                layers[f"bn{i}"] = nn.BatchNorm2d(out)
                layers[f"relu{i}"] = nn.ReLU(inplace=True)
                channels = out
            layers["pool"] = create_pool(pool, 2, 2, channels=channels, **options)
            blocks[f"stage{s}"] = nn.Sequential(layers)
        self.features = nn.Sequential(blocks)
        self.head = ClassifierHead(
            channels, num_classes, global_pool=global_pool, kind=head, hidden=scale_width(4096, width)
        )
        self.num_classes = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _vgg(name: str, num_classes: int, **kwargs: Any) -> VGG:
    return VGG(VGG_STAGES[name], num_classes, **kwargs)


def vgg11(num_classes: int, **kwargs: Any) -> VGG:
    """VGG11-BN (configuration A): 8 convolutions, 5 pools. ``kwargs`` as :class:`VGG`."""
    return _vgg("vgg11", num_classes, **kwargs)


def vgg13(num_classes: int, **kwargs: Any) -> VGG:
    """VGG13-BN (configuration B): 10 convolutions, 5 pools. ``kwargs`` as :class:`VGG`."""
    return _vgg("vgg13", num_classes, **kwargs)


def vgg16(num_classes: int, **kwargs: Any) -> VGG:
    """VGG16-BN (configuration D), the study's network: 13 convolutions, 5 pools.

    With the linear head and 100 classes it has 14,774,436 parameters (max pooling, width 1).
    """
    return _vgg("vgg16", num_classes, **kwargs)


def vgg19(num_classes: int, **kwargs: Any) -> VGG:
    """VGG19-BN (configuration E): 16 convolutions, 5 pools. ``kwargs`` as :class:`VGG`."""
    return _vgg("vgg19", num_classes, **kwargs)
