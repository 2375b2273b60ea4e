"""Pieces shared by the VGG and ResNet builders: width scaling, initialised layers, the classifier head."""

from __future__ import annotations

import math
from typing import Any, Literal

from torch import Tensor, nn

from poolkit.layers.global_pool import create_global_pool
from poolkit.registry import PoolFactory, pool_options

__all__ = [
    "ClassifierHead",
    "check_pool",
    "check_width",
    "conv2d",
    "scale_width",
]

HeadKind = Literal["linear", "mlp"]


def scale_width(channels: int, width: float) -> int:
    """``channels * width`` rounded half up to an int, and at least 1.

    Half up (not Python's banker's rounding) so that e.g. ``scale_width(12, 0.125) == 2``, and the
    floor of 1 keeps a very narrow network valid.

    Example:
        >>> scale_width(64, 0.125), scale_width(12, 0.125), scale_width(64, 0.001)
        (8, 2, 1)
    """
    return max(1, math.floor(channels * width + 0.5))


def check_width(width: float) -> float:
    """``ValueError`` unless ``width`` is a finite positive number."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not (0 < width < math.inf):
        raise ValueError(f"width must be a positive number (1.0 = the standard network), got {width!r}")
    return float(width)


def check_pool(pool: PoolFactory, options: dict[str, Any]) -> None:
    """Check a pool name and its options without building a layer (for networks that may not use it)."""
    if isinstance(pool, str):
        valid = pool_options(pool)  # raises ValueError listing the registered names
        unknown = sorted(set(options) - set(valid))
        if unknown:
            listed = ", ".join(valid) if valid else "none"
            raise ValueError(f"unknown option(s) {unknown} for pool {pool!r}; its options are: {listed}")


def conv2d(
    in_channels: int, out_channels: int, kernel_size: int, *, stride: int = 1, padding: int = 0, bias: bool
) -> nn.Conv2d:
    """A convolution with He (fan-out) initialisation, as torchvision's VGG and ResNet."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class ClassifierHead(nn.Module):
    """Global pooling of whatever spatial size remains, then a classifier.

    ``kind="linear"``: one ``Linear(channels, num_classes)``.
    ``kind="mlp"``: VGG's original classifier, ``Linear(channels, hidden) - ReLU - Dropout(0.5)``
    twice, then ``Linear(hidden, num_classes)``, applied to the globally pooled (1x1) features.

    Args:
        channels: channels of the last feature map.
        num_classes: number of outputs.
        global_pool: a method for :func:`poolkit.create_global_pool` (``"avg"``, ``"max"``, ``"gem"``...).
        kind: ``"linear"`` or ``"mlp"``.
        hidden: width of the MLP's hidden layers (ignored for ``"linear"``).

    Shape:
        (N, channels, H, W) -> (N, num_classes) for any H, W >= 1.
    """

    def __init__(
        self,
        channels: int,
        num_classes: int,
        *,
        global_pool: str = "avg",
        kind: HeadKind = "linear",
        hidden: int = 4096,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.pool = create_global_pool(global_pool, channels, flatten=True)
        if kind == "linear":
            self.fc: nn.Module = nn.Linear(channels, num_classes)
        elif kind == "mlp":
            self.fc = nn.Sequential(
                nn.Linear(channels, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, hidden),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_classes),
            )
        else:
            raise ValueError(f"head must be 'linear' or 'mlp', got {kind!r}")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(x))
