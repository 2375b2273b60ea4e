"""Pooling layers: every method as a drop-in replacement for ``nn.MaxPool2d``.

Importing this package registers every method in :mod:`poolkit.registry`.
"""

from poolkit.layers.base import Pool2d
from poolkit.layers.classic import AvgPool, LPPool, MaxPool, StridedConvPool
from poolkit.layers.windows import PoolGeometry

__all__ = [
    "AvgPool",
    "LPPool",
    "MaxPool",
    "Pool2d",
    "PoolGeometry",
    "StridedConvPool",
]
