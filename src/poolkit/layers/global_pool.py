"""Global pooling: one window covering the whole feature map, for any method with a global form."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from poolkit.layers.base import Pool2d
from poolkit.registry import create_adaptive_pool

__all__ = ["GlobalPool2d", "create_global_pool"]


class GlobalPool2d(nn.Module):
    """Pools each (H, W) map to one value with a poolkit method (see :func:`poolkit.create_global_pool`).

    The wrapped pool was built with ``kernel_size=None``, so its window is the whole input map, whatever
    its size. Options that are clipped to the window (T-Max-Avg's K) are clipped to ``H * W``.

    Shape:
        (N, C, H, W) -> (N, C, 1, 1), or (N, C) with ``flatten=True``; (C, H, W) -> (C, 1, 1) or (C,);
        1-D and 3-D pools likewise.
    """

    def __init__(self, pool: Pool2d, *, flatten: bool = False) -> None:
        super().__init__()
        if pool.geometry is not None:
            raise ValueError("GlobalPool2d wraps a pool built with kernel_size=None (use create_global_pool)")
        self.pool = pool
        self.flatten = bool(flatten)

    @property
    def method(self) -> str:
        """The registry name of the wrapped method."""
        return self.pool.registry_name

    def forward(self, x: Tensor) -> Tensor:
        y = self.pool(x)
        return y.flatten(-1 - self.pool.spatial_dims) if self.flatten else y

    def learned_values(self) -> dict[str, list[float]]:
        return self.pool.learned_values()

    def extra_repr(self) -> str:
        return f"flatten={self.flatten}"


def create_global_pool(
    method: str = "avg",
    channels: int | None = None,
    *,
    flatten: bool = False,
    spatial_dims: int = 2,
    **options: Any,
) -> GlobalPool2d:
    """Global pooling: one window covering the whole feature map (``create_adaptive_pool(..., 1)``).

    Output is (N, C, 1, ...), or (N, C) with ``flatten=True``. Every registered method whose learnable
    parts do not depend on the window size is accepted (all but ``strided_conv`` and ``blurmax``).

    Example:
        >>> import torch, poolkit
        >>> gp = poolkit.create_global_pool("gem", flatten=True)
        >>> gp(torch.ones(2, 3, 5, 5)).shape
        torch.Size([2, 3])
    """
    inner = create_adaptive_pool(method, 1, channels=channels, spatial_dims=spatial_dims, **options)
    return GlobalPool2d(inner, flatten=flatten)  # type: ignore[arg-type]
