"""The base class of every poolkit pool: ``nn.MaxPool2d``'s arguments, input checks, global form."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from poolkit.layers.windows import PoolGeometry, as_batched, restore

__all__ = ["Pool2d", "channel_param", "check_k", "check_positive", "prepare"]

Size2 = int | tuple[int, int]


def prepare(
    x: Tensor,
    name: str,
    kernel_size: Size2,
    stride: Size2 | None,
    padding: Size2,
    dilation: Size2,
    ceil_mode: bool,
) -> tuple[Tensor, PoolGeometry, bool]:
    """What every functional twin does first: check ``x``, build the geometry, check the output size.

    Returns the 4-D input, the geometry and whether the input was unbatched.
    """
    x4, unbatched = as_batched(x, name)
    geometry = PoolGeometry.create(kernel_size, stride, padding, dilation, ceil_mode)
    geometry.output_size(x4.shape[-2], x4.shape[-1])
    return x4, geometry, unbatched


def check_positive(value: float, name: str, method: str) -> float:
    """``ValueError`` unless ``value`` is a finite positive number (temperatures, kappa, p, ...)."""
    if isinstance(value, Tensor):
        ok = bool(torch.isfinite(value).all() and (value > 0).all())
    else:
        ok = (
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and value > 0
            and value < float("inf")
        )
    if not ok:
        raise ValueError(f"{method}: {name} must be a positive number, got {value!r}")
    return value


def channel_param(value: Tensor | float, x: Tensor, name: str, method: str) -> Tensor | float:
    """Check a scalar-or-per-channel value against ``x``; return it broadcastable to (N, C, H, W).

    A float or 0-d tensor is returned as it is; a (C,) tensor becomes (1, C, 1, 1).
    """
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.dim() == 1 and value.shape[0] == x.shape[1]:
        return value.view(1, -1, 1, 1)
    raise ValueError(
        f"{method}: {name} must be a scalar or have one value per channel ({x.shape[1]}), got shape "
        f"{tuple(value.shape)}; build the module with channels={x.shape[1]}"
    )


def check_k(k: int, geometry: PoolGeometry | None, method: str) -> int:
    """``ValueError`` unless ``1 <= k <= kh * kw`` (K is then clipped per window to its real cells)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{method}: k must be a positive int, got {k!r}")
    if geometry is not None and k > geometry.area:
        raise ValueError(
            f"{method}: k={k} is larger than the window of {geometry.area} cells "
            f"(kernel_size={geometry.kernel_size}); use k <= {geometry.area} or a larger kernel"
        )
    return k


class Pool2d(nn.Module):
    """Base class: stores the window geometry and handles what every pool shares.

    Subclasses implement :meth:`pool`, which gets a 4-D input and a :class:`PoolGeometry`;
    :meth:`forward` adds the input checks, unbatched input and memory-format handling.

    ``kernel_size=None`` builds the global form (one window over the whole map), which is what
    :func:`poolkit.create_global_pool` uses.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: as :class:`torch.nn.MaxPool2d`.
        channels: number of input channels; required when ``needs_channels`` is True, and checked
            against the input whenever it is given.
    """

    needs_channels: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        kernel_size: int | tuple[int, int] | None,
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if kernel_size is None:
            self.geometry: PoolGeometry | None = None
        else:
            self.geometry = PoolGeometry.create(kernel_size, stride, padding, dilation, ceil_mode)
        if channels is not None and (
            isinstance(channels, bool) or not isinstance(channels, int) or channels < 1
        ):
            raise ValueError(f"{name}: channels must be a positive int, got {channels!r}")
        if self.needs_channels and channels is None:
            raise ValueError(
                f"{name} has per-channel or convolutional parts and needs channels=<number of input "
                f"channels> (swap_pooling finds it when given example_input=...)"
            )
        self.channels = channels

    # nn.MaxPool2d's attribute names, so code (and swap_pooling) can read any pool like a MaxPool2d.
    @property
    def kernel_size(self) -> tuple[int, int] | None:
        return None if self.geometry is None else self.geometry.kernel_size

    @property
    def stride(self) -> tuple[int, int] | None:
        return None if self.geometry is None else self.geometry.stride

    @property
    def padding(self) -> tuple[int, int]:
        return (0, 0) if self.geometry is None else self.geometry.padding

    @property
    def dilation(self) -> tuple[int, int]:
        return (1, 1) if self.geometry is None else self.geometry.dilation

    @property
    def ceil_mode(self) -> bool:
        return False if self.geometry is None else self.geometry.ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape (N, C, H, W) or (C, H, W); the output has ``nn.MaxPool2d``'s shape."""
        x4, unbatched = as_batched(x, type(self).__name__)
        if self.channels is not None and x4.shape[1] != self.channels:
            raise ValueError(
                f"{type(self).__name__} was built for channels={self.channels} but the input has "
                f"{x4.shape[1]} channels (shape {tuple(x.shape)}); rebuild it with channels={x4.shape[1]}"
            )
        geometry = self.geometry if self.geometry is not None else PoolGeometry.whole(*x4.shape[-2:])
        geometry.output_size(x4.shape[-2], x4.shape[-1])
        return restore(self.pool(x4, geometry), x4, unbatched)

    def pool(self, x: Tensor, geometry: PoolGeometry) -> Tensor:
        """Pool a checked 4-D input over the windows of ``geometry``."""
        raise NotImplementedError

    def functional_kwargs(self) -> dict[str, Any]:
        """The keyword arguments that make the functional twin compute what this module computes."""
        return {}

    def learned_values(self) -> dict[str, list[float]]:
        """Interpretable values of the learnable parameters (mix weights, thresholds, p), per layer."""
        return {}

    def extra_repr(self) -> str:
        parts = []
        if self.geometry is None:
            parts.append("global")
        else:
            g = self.geometry
            parts.append(f"kernel_size={g.kernel_size}, stride={g.stride}")
            if g.padding != (0, 0):
                parts.append(f"padding={g.padding}")
            if g.dilation != (1, 1):
                parts.append(f"dilation={g.dilation}")
            if g.ceil_mode:
                parts.append("ceil_mode=True")
        if self.channels is not None:
            parts.append(f"channels={self.channels}")
        parts.extend(f"{k}={v}" for k, v in self._option_repr().items())
        return ", ".join(parts)

    def _option_repr(self) -> dict[str, Any]:
        """Options shown by ``repr``: by default the plain (non-tensor) functional keyword arguments."""
        return {
            k: v for k, v in self.functional_kwargs().items() if k != "training" and not isinstance(v, Tensor)
        }
