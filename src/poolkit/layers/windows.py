"""Window machinery shared by every pool: geometry, output sizes, padding, counts, sums, top-k.

Every method in poolkit reduces the same windows as :class:`torch.nn.MaxPool2d` with the same
``kernel_size, stride, padding, dilation, ceil_mode``. This module is the one place where those
windows are defined, so that all methods agree on them:

* the output size follows PyTorch's rule exactly (including ``ceil_mode``'s "last window must start
  inside the input or the left padding");
* padded cells never win a maximum (they are ``-inf``) and never count in a sum or an average
  (they are ``0`` and are left out of the count ``n``).

Fast paths use PyTorch's native kernels (``max_pool2d``, ``avg_pool2d``); the general path unfolds the
windows into a trailing dimension of size ``kh * kw``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "PoolGeometry",
    "as_batched",
    "min_window_count",
    "pair",
    "restore",
    "unfold_windows",
    "window_count",
    "window_mask",
    "window_max",
    "window_mean",
    "window_sum",
    "window_topk_mean",
    "window_weighted_mean",
]

IntPair = tuple[int, int]
_F = TypeVar("_F", bound=Callable[..., Any])


def _memoize(maxsize: int) -> Callable[[_F], _F]:
    """``functools.lru_cache`` that ``torch.compile`` traces straight through (it ignores such caches)."""

    def decorator(fn: _F) -> _F:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any) -> Any:
            if torch.compiler.is_compiling():
                return fn(*args)
            return cached(*args)

        return wrapper  # type: ignore[return-value]

    return decorator


def pair(value: int | tuple[int, ...] | list[int], name: str) -> IntPair:
    """Return ``value`` as an ``(h, w)`` pair of Python ints, with a clear error for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        return (value, value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return (int(value[0]), int(value[1]))
    if isinstance(value, (tuple, list)) and len(value) == 1 and isinstance(value[0], int):
        return (int(value[0]), int(value[0]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _output_length(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """PyTorch's ``pooling_output_shape`` for one dimension (may return < 1 for invalid sizes)."""
    span = dilation * (kernel - 1) + 1
    numerator = size + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass(frozen=True)
class PoolGeometry:
    """The windows of a 2-D pooling layer, with ``nn.MaxPool2d``'s semantics.

    Build it with :meth:`create`, which validates the arguments and is cached, so calling it on
    every forward pass costs a dictionary look-up.

    Shape:
        For an input of spatial size ``(H, W)`` the output has size ``(H_out, W_out)`` with
        ``H_out = floor_or_ceil((H + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``,
        reduced by one in ``ceil_mode`` when the last window would start in the right padding.
    """

    kernel_size: IntPair
    stride: IntPair
    padding: IntPair
    dilation: IntPair
    ceil_mode: bool

    @staticmethod
    def create(
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        ceil_mode: bool = False,
    ) -> PoolGeometry:
        """Validate ``nn.MaxPool2d``-style arguments and return the geometry (cached).

        Raises:
            ValueError: non-positive kernel, stride or dilation; negative padding; or padding over
                half the kernel (PyTorch's rule ``padding <= kernel_size // 2``).
        """
        args = [tuple(a) if isinstance(a, list) else a for a in (kernel_size, stride, padding, dilation)]
        for name, value in zip(("kernel_size", "stride", "padding", "dilation"), args, strict=True):
            # Checked before the cache: True == 1 as a cache key, so create(True) would find create(1).
            if isinstance(value, bool) or (
                isinstance(value, tuple) and any(isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        try:
            return _create_geometry(*args, bool(ceil_mode))
        except TypeError as error:  # unhashable arguments
            raise ValueError(f"invalid pooling arguments {args}: {error}") from None

    @staticmethod
    def whole(height: int, width: int) -> PoolGeometry:
        """The geometry of global pooling: one window covering the whole ``height x width`` map."""
        return PoolGeometry.create((height, width), (height, width), 0, 1, False)

    @property
    def area(self) -> int:
        """Number of cells in a window (``kh * kw``), padding included."""
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def span(self) -> IntPair:
        """Extent of a window in input cells, dilation included."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation, strict=True))  # type: ignore[return-value]

    def axes(self, height: int, width: int) -> tuple[tuple[int, int, int, int, int], ...]:
        """Per axis, H then W: ``(size, kernel, stride, padding, dilation)`` for an input of that size."""
        return tuple(
            zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation, strict=True)
        )

    def output_size(self, height: int, width: int) -> IntPair:
        """Output ``(H_out, W_out)`` for an input of ``(height, width)``; ``ValueError`` if it is empty."""
        return _cached_output_size(self, height, width)

    def pads(self, height: int, width: int) -> tuple[int, int, int, int]:
        """``(left, right, top, bottom)`` padding so that unfolding yields exactly the output windows.

        The right/bottom side gets the extra cells that ``ceil_mode`` windows reach past the padding.
        """
        out_h, out_w = self.output_size(height, width)
        extra = []
        for size, out, step, span, pad in zip(
            (height, width), (out_h, out_w), self.stride, self.span, self.padding, strict=True
        ):
            extra.append(max(0, (out - 1) * step + span - (size + 2 * pad)))
        return (
            self.padding[1],
            self.padding[1] + extra[1],
            self.padding[0],
            self.padding[0] + extra[0],
        )

    def as_kwargs(self) -> dict[str, object]:
        """The ``nn.MaxPool2d`` keyword arguments of this geometry."""
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "ceil_mode": self.ceil_mode,
        }


@_memoize(maxsize=1024)
def _create_geometry(
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None,
    padding: int | tuple[int, int],
    dilation: int | tuple[int, int],
    ceil_mode: bool,
) -> PoolGeometry:
    kernel = pair(kernel_size, "kernel_size")
    step = kernel if stride is None or stride == () else pair(stride, "stride")
    pad = pair(padding, "padding")
    dil = pair(dilation, "dilation")
    for name, value in (("kernel_size", kernel), ("stride", step), ("dilation", dil)):
        if min(value) < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got {pad}")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"padding {pad} is over half the kernel {kernel}: padding must be at most "
            f"kernel_size // 2 (as in nn.MaxPool2d); use a smaller padding or a larger kernel"
        )
    return PoolGeometry(kernel, step, pad, dil, ceil_mode)


@_memoize(maxsize=4096)
def _cached_output_size(geometry: PoolGeometry, height: int, width: int) -> IntPair:
    out = tuple(_output_length(*axis, geometry.ceil_mode) for axis in geometry.axes(height, width))
    if min(out) < 1:
        raise ValueError(
            f"the pooling window (kernel_size={geometry.kernel_size}, dilation={geometry.dilation}) is "
            f"larger than the padded input of size {(height, width)} with padding={geometry.padding}: "
            f"the output would be {out}; use a larger input, a smaller kernel or more padding"
        )
    return out  # type: ignore[return-value]


def as_batched(x: Tensor, name: str) -> tuple[Tensor, bool]:
    """Check that ``x`` is a floating-point (C, H, W) or (N, C, H, W) tensor; return it 4-D.

    Returns the 4-D tensor and whether the input was unbatched (so :func:`restore` can undo it).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (3, 4):
        raise ValueError(
            f"{name} expects a 4-D (N, C, H, W) or 3-D unbatched (C, H, W) input, "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point input, got dtype {x.dtype}; use x.float()")
    if x.dim() == 3:
        return x.unsqueeze(0), True
    return x, False


def restore(y: Tensor, x: Tensor, unbatched: bool) -> Tensor:
    """Give ``y`` the memory format of the 4-D input ``x`` and drop the batch dim if it was added."""
    if (
        x.dim() == 4
        and x.shape[1] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not y.is_contiguous(memory_format=torch.channels_last)
    ):
        y = y.contiguous(memory_format=torch.channels_last)
    return y.squeeze(0) if unbatched else y


def window_max(x: Tensor, geometry: PoolGeometry) -> Tensor:
    """M: the maximum over each window's real cells (padding is ``-inf``), shape (N, C, H_out, W_out)."""
    g = geometry
    return F.max_pool2d(x, g.kernel_size, g.stride, g.padding, g.dilation, g.ceil_mode)


def window_sum(x: Tensor, geometry: PoolGeometry) -> Tensor:
    """The sum over each window's real cells (padding contributes 0)."""
    g = geometry
    if g.dilation == (1, 1):
        return F.avg_pool2d(
            x, g.kernel_size, g.stride, g.padding, g.ceil_mode, count_include_pad=True, divisor_override=1
        )
    return unfold_windows(x, g, 0.0).sum(-1)


def window_count(
    geometry: PoolGeometry, height: int, width: int, device: torch.device | None = None
) -> Tensor:
    """n: the number of real (non-padded) cells in each window, shape (H_out, W_out), int64."""
    return _window_count(geometry, height, width, torch.device("cpu") if device is None else device)


@_memoize(maxsize=256)
def _window_count(geometry: PoolGeometry, height: int, width: int, device: torch.device) -> Tensor:
    real_h, real_w = _real_cells(geometry, height, width, device)
    return real_h.sum(1)[:, None] * real_w.sum(1)[None, :]


@_memoize(maxsize=1024)
def min_window_count(geometry: PoolGeometry, height: int, width: int) -> int:
    """The smallest number of real cells in any window (0 only for all-padding dilated windows).

    Plain Python arithmetic, so that ``torch.compile`` folds it into a constant.
    """
    out = geometry.output_size(height, width)
    smallest = 1
    for n_out, (size, k, s, p, d) in zip(out, geometry.axes(height, width), strict=True):
        smallest *= min(sum(0 <= i * s - p + t * d < size for t in range(k)) for i in range(n_out))
    return smallest


def _real_cells(
    geometry: PoolGeometry, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Per dimension, a (out, kernel) bool table: is the t-th cell of the i-th window a real input cell."""
    out = geometry.output_size(height, width)
    tables = []
    for n_out, (size, k, s, p, d) in zip(out, geometry.axes(height, width), strict=True):
        pos = (
            torch.arange(n_out, device=device)[:, None] * s - p + torch.arange(k, device=device)[None, :] * d
        )
        tables.append((pos >= 0) & (pos < size))
    return tables[0], tables[1]


def window_mask(
    geometry: PoolGeometry, height: int, width: int, device: torch.device | None = None
) -> Tensor:
    """A bool mask (H_out, W_out, kh * kw): True where a window cell is a real input cell."""
    return _window_mask(geometry, height, width, torch.device("cpu") if device is None else device)


@_memoize(maxsize=256)
def _window_mask(geometry: PoolGeometry, height: int, width: int, device: torch.device) -> Tensor:
    real_h, real_w = _real_cells(geometry, height, width, device)
    mask = real_h[:, None, :, None] & real_w[None, :, None, :]
    return mask.reshape(mask.shape[0], mask.shape[1], -1)


def window_mean(x: Tensor, geometry: PoolGeometry) -> Tensor:
    """A: the mean over each window's real cells (``count_include_pad=False``).

    A window with no real cell (possible only with dilation, as in PyTorch) has mean 0.
    """
    g = geometry
    if g.dilation == (1, 1):
        return F.avg_pool2d(x, g.kernel_size, g.stride, g.padding, g.ceil_mode, count_include_pad=False)
    count = window_count(g, x.shape[-2], x.shape[-1], x.device).clamp_min(1)
    return window_sum(x, g) / count.to(x.dtype)


def window_weighted_mean(x: Tensor, weight: Tensor, geometry: PoolGeometry, eps: float = 0.0) -> Tensor:
    """``sum_R(weight * x) / (sum_R(weight) + eps)`` over each window's real cells.

    ``weight`` broadcasts against ``x`` (for example one map of shape (N, 1, H, W) for all channels).
    With ``eps == 0`` the caller must make sure that every window's weights have a positive sum.
    """
    numerator = window_sum(x * weight, geometry)
    denominator = window_sum(weight, geometry)
    if eps:
        denominator = denominator + eps
    return numerator / denominator


def unfold_windows(x: Tensor, geometry: PoolGeometry, fill: float) -> Tensor:
    """The windows of ``x`` as a trailing dimension: (N, C, H_out, W_out, kh * kw).

    Padded cells hold ``fill`` (``-inf`` for maxima and rankings, ``0`` for sums).
    """
    g = geometry
    height, width = x.shape[-2:]
    out_h, out_w = g.output_size(height, width)
    left, right, top, bottom = g.pads(height, width)
    if left or right or top or bottom:
        x = F.pad(x, (left, right, top, bottom), value=fill)
    (span_h, span_w), (kh, kw) = g.span, g.kernel_size
    windows = x.unfold(2, span_h, g.stride[0]).unfold(3, span_w, g.stride[1])
    if g.dilation != (1, 1):
        windows = windows[..., :: g.dilation[0], :: g.dilation[1]]
    windows = windows[:, :, :out_h, :out_w]
    return windows.reshape(*windows.shape[:4], kh * kw)


def window_topk_mean(x: Tensor, geometry: PoolGeometry, k: int) -> Tensor:
    """T_K: the mean of the ``k`` largest real cells of each window (``k`` clipped to the count ``n``).

    ``k >= kh * kw`` is the plain mean A and ``k == 1`` the maximum M; both use native kernels (M with
    max pooling's gradient rule: the first maximum in row-major order takes it all).

    For ``1 < k < kh * kw`` the gradient follows poolkit's one top-K tie rule, the same on every path
    (this reference, the fused CPU kernels): with t the K-th largest value of the window, each cell
    strictly above t gets ``g / K``, and the cells equal to t share the remaining ``(K - #above) / K * g``
    equally. The value is unchanged (the K largest values summed); only which tied cell receives the
    gradient is fixed, where ``topk`` would pick one of them arbitrarily. Written as
    ``y = (sum_{x > t} x + (K - #above) * mean_{x == t} x) / K`` with t detached.
    """
    g = geometry
    if k >= g.area:
        return window_mean(x, g)
    if k == 1:
        return window_max(x, g)
    height, width = x.shape[-2:]
    windows = unfold_windows(x, g, float("-inf"))
    kth = windows.detach().topk(k, dim=-1).values[..., k - 1 :]
    clipped = min_window_count(g, height, width) < k
    taken: Tensor | int = k
    if clipped:  # windows with fewer than K real cells take them all (t is then the -inf of padding)
        taken = window_count(g, height, width, x.device).clamp(max=k)[..., None].to(x.dtype)
        real = window_mask(g, height, width, x.device)
    above = windows > kth
    equal = windows == kth
    if clipped:
        equal = equal & real
    zero = windows.new_zeros(())
    above_sum = torch.where(above, windows, zero).sum(-1, keepdim=True)
    n_above = above.sum(-1, keepdim=True).to(x.dtype)
    n_equal = equal.sum(-1, keepdim=True).to(x.dtype)
    tied = torch.where(equal, windows, zero).sum(-1, keepdim=True) / n_equal.clamp_min(1)
    total = above_sum + (taken - n_above) * tied
    return (total / (taken.clamp_min(1) if clipped else taken)).squeeze(-1)  # type: ignore[union-attr]
