"""The base class of every poolkit pool: ``nn.MaxPool1d/2d/3d``'s arguments, input checks, adaptive forms."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poolkit.layers.windows import (
    AdaptiveGeometry,
    Geometry,
    PoolGeometry,
    as_batched,
    restore,
)

__all__ = [
    "OutputSize",
    "Pool",
    "Pool2d",
    "PoolForm",
    "adaptive_limit",
    "channel_param",
    "channel_view",
    "check_k",
    "check_output_size",
    "check_positive",
    "check_spatial_dims",
    "conv_nd",
    "form_dims",
    "prepare",
]

Size2 = int | tuple[int, ...]
#: ``output_size`` of an adaptive pool: an int, or one int or None per spatial axis (None keeps that axis).
OutputSize = int | tuple[int | None, ...] | None


@dataclass(frozen=True)
class PoolForm:
    """Which form of a method a functional twin computes (the 1-D, 3-D and adaptive twins set it).

    Attributes:
        spatial_dims: 1 for (N, C, L), 2 for (N, C, H, W), 3 for (N, C, D, H, W) inputs.
        output_size: for the adaptive form, the output's spatial size (as ``nn.AdaptiveAvgPool{n}d``);
            None for the windowed form.
        name: the twin's name, used in error messages.
    """

    spatial_dims: int = 2
    output_size: tuple[int | None, ...] | None = None
    name: str | None = None


def form_dims(form: PoolForm | None) -> int:
    """The spatial dims of a functional call (2 when no form is given)."""
    return 2 if form is None else form.spatial_dims


def check_spatial_dims(spatial_dims: int, method: str) -> int:
    """``ValueError`` unless ``spatial_dims`` is 1, 2 or 3."""
    if isinstance(spatial_dims, bool) or spatial_dims not in (1, 2, 3):
        raise ValueError(f"{method}: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def check_output_size(output_size: OutputSize, spatial_dims: int, method: str) -> tuple[int | None, ...]:
    """``output_size`` as one positive int or None per spatial axis (as torch's adaptive pools accept it)."""
    n = spatial_dims
    if output_size is None:
        raise ValueError(f"{method}: output_size must be given for the adaptive form")
    values = (output_size,) * n if isinstance(output_size, int) else output_size
    if (
        isinstance(output_size, bool)
        or not isinstance(values, (tuple, list))
        or len(values) != n
        or not all(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= 1) for v in values)
    ):
        raise ValueError(
            f"{method}: output_size must be a positive int or a tuple of {n} positive ints or None "
            f"(None keeps that axis's size), got {output_size!r}"
        )
    return tuple(values)


def _finisher(xb: Tensor, unbatched: bool, lifted: bool) -> Callable[[Tensor], Tensor]:
    def finish(y: Tensor) -> Tensor:
        return restore(y.squeeze(-2) if lifted else y, xb, unbatched)

    return finish


def _lift(xb: Tensor, geometry: Geometry) -> tuple[Tensor, Geometry, bool]:
    """A 1-D input (N, C, L) runs as the 2-D (N, C, 1, L) with kernel (1, k): the same windows, exactly."""
    if geometry.spatial_dims == 1:
        return xb.unsqueeze(-2), geometry.lifted(), True
    return xb, geometry, False


def prepare(
    x: Tensor,
    name: str,
    kernel_size: Size2 | None,
    stride: Size2 | None,
    padding: Size2,
    dilation: Size2,
    ceil_mode: bool,
    form: PoolForm | None = None,
) -> tuple[Tensor, Geometry, Callable[[Tensor], Tensor]]:
    """What every functional twin does first: check ``x``, build the geometry, check the output size.

    Returns the batched input (a 1-D input lifted to (N, C, 1, L)), the geometry of its windows, and
    ``finish``, which turns the pooled tensor back into the caller's form (drops the lifted axis and the
    batch dim of an unbatched input, keeps channels_last).
    """
    form = form or PoolForm()
    name = form.name or name
    xb, unbatched = as_batched(x, name, form.spatial_dims)
    sizes = tuple(xb.shape[2:])
    geometry: Geometry
    if form.output_size is not None:
        geometry = AdaptiveGeometry.create(sizes, check_output_size(form.output_size, len(sizes), name))
    else:
        if kernel_size is None:
            raise ValueError(f"{name}: kernel_size must be given (use the adaptive_ twin for an output_size)")
        geometry = PoolGeometry.create(kernel_size, stride, padding, dilation, ceil_mode, form.spatial_dims)
    geometry.output_size(*sizes)
    x_run, g_run, lifted = _lift(xb, geometry)
    return x_run, g_run, _finisher(xb, unbatched, lifted)


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


def channel_view(value: Tensor, x: Tensor) -> Tensor:
    """A (C,) tensor viewed as (1, C, 1, ...) to broadcast against ``x``; a 0-d tensor stays as it is."""
    return value.view(1, -1, *(1,) * (x.dim() - 2)) if value.dim() else value


def channel_param(value: Tensor | float, x: Tensor, name: str, method: str) -> Tensor | float:
    """Check a scalar-or-per-channel value against ``x``; return it broadcastable to (N, C, *spatial).

    A float or 0-d tensor is returned as it is; a (C,) tensor becomes (1, C, 1, ...).
    """
    if not isinstance(value, Tensor) or value.dim() == 0:
        return value
    if value.dim() == 1 and value.shape[0] == x.shape[1]:
        return channel_view(value, x)
    raise ValueError(
        f"{method}: {name} must be a scalar or have one value per channel ({x.shape[1]}), got shape "
        f"{tuple(value.shape)}; build the module with channels={x.shape[1]}"
    )


def conv_nd(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
) -> Tensor:
    """``F.conv2d`` or ``F.conv3d`` by the input's rank; a 1-D weight (O, I, k) on a lifted (N, C, 1, L) input
    runs as (O, I, 1, k), which is the same convolution."""
    spatial = x.dim() - 2
    if weight.dim() == spatial + 1:
        weight = weight.unsqueeze(2)
    conv = F.conv2d if spatial == 2 else F.conv3d
    return conv(
        x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding, dilation, groups
    )


def conv_class(spatial_dims: int) -> type[nn.Conv1d] | type[nn.Conv2d] | type[nn.Conv3d]:
    """``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``: the convolution that matches a pool's form."""
    return {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def adaptive_limit(geometry: Geometry, form: PoolForm | None) -> PoolGeometry | None:
    """The geometry that bounds window options such as K: None for adaptive forms (K clipped per window)."""
    if form is not None and form.output_size is not None:
        return None
    return geometry if isinstance(geometry, PoolGeometry) else None


def check_k(k: int, geometry: PoolGeometry | None, method: str) -> int:
    """``ValueError`` unless ``1 <= k <= area`` (K is then clipped per window to its real cells)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{method}: k must be a positive int, got {k!r}")
    if geometry is not None and k > geometry.area:
        raise ValueError(
            f"{method}: k={k} is larger than the window of {geometry.area} cells "
            f"(kernel_size={geometry.kernel_size}); use k <= {geometry.area} or a larger kernel"
        )
    return k


class Pool2d(nn.Module):
    """Base class of every pool, in all its forms: stores the windows and handles what every pool shares.

    Subclasses implement :meth:`pool`, which gets a batched input and its windows (a :class:`PoolGeometry`
    or, for adaptive output sizes, an :class:`AdaptiveGeometry`); :meth:`forward` adds the input checks,
    unbatched input, memory format, and runs 1-D pools as 2-D pools of (N, C, 1, L) with kernel (1, k).

    Forms:
        * windowed (``kernel_size`` given): ``nn.MaxPool{n}d``'s arguments and output shape, n =
          ``spatial_dims`` (default 2);
        * adaptive (``kernel_size=None``): ``output_size`` as ``nn.AdaptiveAvgPool{n}d`` (an int, or a tuple
          with None for "keep this axis"); ``output_size=None`` means 1, the global form that
          :func:`poolkit.create_global_pool` uses.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: as :class:`torch.nn.MaxPool2d` (tuples of
            length ``spatial_dims``).
        channels: number of input channels; required when ``needs_channels`` is True, and checked
            against the input whenever it is given.
        spatial_dims: 1, 2 or 3.
        output_size: the adaptive form's output size (only with ``kernel_size=None``).
    """

    needs_channels: ClassVar[bool] = False
    registry_name: ClassVar[str] = ""

    def __init__(
        self,
        kernel_size: Size2 | None,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        spatial_dims: int = 2,
        output_size: OutputSize = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.spatial_dims = check_spatial_dims(spatial_dims, name)
        self.output_size: tuple[int | None, ...] | None
        if kernel_size is None:
            self.geometry: PoolGeometry | None = None
            size = 1 if output_size is None else output_size
            self.output_size = check_output_size(size, spatial_dims, name)
        else:
            if output_size is not None:
                raise ValueError(
                    f"{name}: give kernel_size (windowed form) or output_size (adaptive form), not both"
                )
            self.geometry = PoolGeometry.create(
                kernel_size, stride, padding, dilation, ceil_mode, spatial_dims
            )
            self.output_size = None
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

    @property
    def is_adaptive(self) -> bool:
        """Whether this is the adaptive (or global) form."""
        return self.geometry is None

    # nn.MaxPool2d's attribute names, so code (and swap_pooling) can read any pool like a MaxPool2d.
    @property
    def kernel_size(self) -> tuple[int, ...] | None:
        return None if self.geometry is None else self.geometry.kernel_size

    @property
    def stride(self) -> tuple[int, ...] | None:
        return None if self.geometry is None else self.geometry.stride

    @property
    def padding(self) -> tuple[int, ...]:
        return (0,) * self.spatial_dims if self.geometry is None else self.geometry.padding

    @property
    def dilation(self) -> tuple[int, ...]:
        return (1,) * self.spatial_dims if self.geometry is None else self.geometry.dilation

    @property
    def ceil_mode(self) -> bool:
        return False if self.geometry is None else self.geometry.ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        """Pool ``x`` of shape (N, C, *spatial) or (C, *spatial); the output has torch's pooling shape."""
        name = type(self).__name__
        xb, unbatched = as_batched(x, name, self.spatial_dims)
        if self.channels is not None and xb.shape[1] != self.channels:
            raise ValueError(
                f"{name} was built for channels={self.channels} but the input has "
                f"{xb.shape[1]} channels (shape {tuple(x.shape)}); rebuild it with channels={xb.shape[1]}"
            )
        sizes = tuple(xb.shape[2:])
        geometry: Geometry
        if self.geometry is not None:
            geometry = self.geometry
        else:
            assert self.output_size is not None
            geometry = AdaptiveGeometry.create(sizes, self.output_size)
        geometry.output_size(*sizes)
        x_run, g_run, lifted = _lift(xb, geometry)
        return _finisher(xb, unbatched, lifted)(self.pool(x_run, g_run))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        """Pool a checked batched input (4-D, or 5-D for 3-D pools) over the windows of ``geometry``."""
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
            assert self.output_size is not None
            if all(o == 1 for o in self.output_size):
                parts.append("global")
            else:
                parts.append(f"output_size={self.output_size}")
        else:
            g = self.geometry
            parts.append(f"kernel_size={g.kernel_size}, stride={g.stride}")
            if any(g.padding):
                parts.append(f"padding={g.padding}")
            if g.dilation != (1,) * len(g.dilation):
                parts.append(f"dilation={g.dilation}")
            if g.ceil_mode:
                parts.append("ceil_mode=True")
        if self.spatial_dims != 2:
            parts.append(f"spatial_dims={self.spatial_dims}")
        if self.channels is not None:
            parts.append(f"channels={self.channels}")
        parts.extend(f"{k}={v}" for k, v in self._option_repr().items())
        return ", ".join(parts)

    def _option_repr(self) -> dict[str, Any]:
        """Options shown by ``repr``: by default the plain (non-tensor) functional keyword arguments."""
        return {
            k: v for k, v in self.functional_kwargs().items() if k != "training" and not isinstance(v, Tensor)
        }


#: The base class under a form-neutral name (it serves 1-, 2- and 3-D, windowed and adaptive pools).
Pool = Pool2d
