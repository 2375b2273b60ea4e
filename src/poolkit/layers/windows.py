"""Window machinery shared by every pool: geometry, output sizes, padding, counts, sums, top-k.

Every method in poolkit reduces the same windows as :class:`torch.nn.MaxPool1d/2d/3d` with the same
``kernel_size, stride, padding, dilation, ceil_mode``, or as ``nn.AdaptiveMaxPool1d/2d/3d`` for an
``output_size``. This module is the one place where those windows are defined, so that all methods agree
on them:

* the output size follows PyTorch's rule exactly (including ``ceil_mode``'s "last window must start
  inside the input or the left padding"), and adaptive windows are PyTorch's
  ``[floor(i L / out), ceil((i + 1) L / out))``;
* padded cells never win a maximum (they are ``-inf``) and never count in a sum or an average
  (they are ``0`` and are left out of the count ``n``).

Every helper works on any number of spatial axes (a :class:`PoolGeometry` with one entry per axis); the
layers run 1-D pools as 2-D pools of (N, C, 1, L) with kernel (1, k), which is exact. Fast paths use
PyTorch's native kernels (``max_pool2d``, ``avg_pool3d``, ``adaptive_max_pool2d``...); the general path
unfolds the windows into a trailing dimension of size ``area``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AdaptiveGeometry",
    "Geometry",
    "PoolGeometry",
    "as_batched",
    "min_window_count",
    "ntuple",
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
Sizes = tuple[int, ...]
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


def ntuple(value: int | tuple[int, ...] | list[int], n: int, name: str) -> Sizes:
    """Return ``value`` as a tuple of ``n`` Python ints (one per spatial axis), with a clear error otherwise.

    An int, or a tuple of one int, is repeated on every axis.
    """
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if isinstance(value, int):
        return (value,) * n
    if (
        isinstance(value, (tuple, list))
        and len(value) in (1, n)
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return tuple(int(v) for v in value) * (n if len(value) == 1 else 1)
    raise ValueError(f"{name} must be an int or a tuple of {n} ints (one per spatial axis), got {value!r}")


def pair(value: int | tuple[int, ...] | list[int], name: str) -> IntPair:
    """Return ``value`` as an ``(h, w)`` pair of Python ints, with a clear error for anything else."""
    return ntuple(value, 2, name)  # type: ignore[return-value]


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
    """The windows of a 1-, 2- or 3-D pooling layer, with ``nn.MaxPool1d/2d/3d``'s semantics.

    Every field is a tuple with one entry per spatial axis (``spatial_dims`` of them). Build it with
    :meth:`create`, which validates the arguments and is cached, so calling it on every forward pass costs
    a dictionary look-up.

    Shape:
        For an input of spatial size ``(L_1, ..., L_n)`` the output has, per axis,
        ``L_out = floor_or_ceil((L + 2 * padding - dilation * (kernel - 1) - 1) / stride) + 1``,
        reduced by one in ``ceil_mode`` when the last window would start in the right padding.
    """

    kernel_size: Sizes
    stride: Sizes
    padding: Sizes
    dilation: Sizes
    ceil_mode: bool

    @staticmethod
    def create(
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] | None = None,
        padding: int | tuple[int, ...] = 0,
        dilation: int | tuple[int, ...] = 1,
        ceil_mode: bool = False,
        spatial_dims: int = 2,
    ) -> PoolGeometry:
        """Validate ``nn.MaxPool{spatial_dims}d``-style arguments and return the geometry (cached).

        Raises:
            ValueError: non-positive kernel, stride or dilation; negative padding; padding over
                half the kernel (PyTorch's rule ``padding <= kernel_size // 2``); a tuple of the wrong length.
        """
        args = [tuple(a) if isinstance(a, list) else a for a in (kernel_size, stride, padding, dilation)]
        for name, value in zip(("kernel_size", "stride", "padding", "dilation"), args, strict=True):
            # Checked before the cache: True == 1 as a cache key, so create(True) would find create(1).
            if isinstance(value, bool) or (
                isinstance(value, tuple) and any(isinstance(v, bool) for v in value)
            ):
                raise ValueError(f"{name} must be an int or a tuple of {spatial_dims} ints, got {value!r}")
        if spatial_dims not in (1, 2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        try:
            return _create_geometry(*args, bool(ceil_mode), spatial_dims)
        except TypeError as error:  # unhashable arguments
            raise ValueError(f"invalid pooling arguments {args}: {error}") from None

    @staticmethod
    def whole(*sizes: int) -> PoolGeometry:
        """The geometry of global pooling: one window covering the whole map of spatial size ``sizes``."""
        return PoolGeometry.create(sizes, sizes, 0, 1, False, len(sizes))

    @property
    def spatial_dims(self) -> int:
        """The number of spatial axes (1, 2 or 3)."""
        return len(self.kernel_size)

    @property
    def area(self) -> int:
        """Number of cells in a window (the product of the kernel sizes), padding included."""
        return math.prod(self.kernel_size)

    @property
    def span(self) -> Sizes:
        """Extent of a window in input cells, dilation included."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation, strict=True))

    def axes(self, *sizes: int) -> tuple[tuple[int, int, int, int, int], ...]:
        """Per axis, in order: ``(size, kernel, stride, padding, dilation)`` for an input of that size."""
        return tuple(zip(sizes, self.kernel_size, self.stride, self.padding, self.dilation, strict=True))

    def output_size(self, *sizes: int) -> Sizes:
        """The output's spatial size for an input of spatial size ``sizes``; ``ValueError`` if it is empty."""
        return _cached_output_size(self, *sizes)

    def pads(self, *sizes: int) -> tuple[int, ...]:
        """``F.pad`` amounts (last axis first, ``(left, right)`` per axis) so that unfolding yields exactly
        output windows; for 2-D that is ``(left, right, top, bottom)``.

        The right side of each axis gets the extra cells that ``ceil_mode`` windows reach past the padding.
        """
        out = self.output_size(*sizes)
        amounts: list[int] = []
        for size, n_out, step, span, pad in zip(
            sizes, out, self.stride, self.span, self.padding, strict=True
        ):
            extra = max(0, (n_out - 1) * step + span - (size + 2 * pad))
            amounts = [pad, pad + extra, *amounts]
        return tuple(amounts)

    def lifted(self) -> PoolGeometry:
        """A 1-D geometry as the 2-D one that pools (N, C, 1, L) identically: kernel (1, k), stride (1, s)."""
        if self.spatial_dims != 1:
            return self
        return PoolGeometry.create(
            (1, *self.kernel_size), (1, *self.stride), (0, *self.padding), (1, *self.dilation), self.ceil_mode
        )


@_memoize(maxsize=1024)
def _create_geometry(
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None,
    padding: int | tuple[int, ...],
    dilation: int | tuple[int, ...],
    ceil_mode: bool,
    spatial_dims: int,
) -> PoolGeometry:
    n = spatial_dims
    kernel = ntuple(kernel_size, n, "kernel_size")
    step = kernel if stride is None or stride == () else ntuple(stride, n, "stride")
    pad = ntuple(padding, n, "padding")
    dil = ntuple(dilation, n, "dilation")
    for name, value in (("kernel_size", kernel), ("stride", step), ("dilation", dil)):
        if min(value) < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    if min(pad) < 0:
        raise ValueError(f"padding must be non-negative, got {pad}")
    if any(p > k // 2 for p, k in zip(pad, kernel, strict=True)):
        raise ValueError(
            f"padding {pad} is over half the kernel {kernel}: padding must be at most "
            f"kernel_size // 2 (as in nn.MaxPool{n}d); use a smaller padding or a larger kernel"
        )
    return PoolGeometry(kernel, step, pad, dil, ceil_mode)


@_memoize(maxsize=4096)
def _cached_output_size(geometry: PoolGeometry, *sizes: int) -> Sizes:
    if len(sizes) != geometry.spatial_dims:
        raise ValueError(f"a {geometry.spatial_dims}-D pool got an input of spatial size {sizes}")
    out = tuple(_output_length(*axis, geometry.ceil_mode) for axis in geometry.axes(*sizes))
    if min(out) < 1:
        raise ValueError(
            f"the pooling window (kernel_size={geometry.kernel_size}, dilation={geometry.dilation}) is "
            f"larger than the padded input of size {sizes} with padding={geometry.padding}: "
            f"the output would be {out}; use a larger input, a smaller kernel or more padding"
        )
    return out


def _adaptive_bounds(size: int, out: int) -> tuple[tuple[int, int], ...]:
    """PyTorch's adaptive windows on one axis: ``[floor(i L / out), ceil((i + 1) L / out))`` per output i."""
    return tuple(((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out))


@dataclass(frozen=True)
class AdaptiveGeometry:
    """The windows of an adaptive pool for one input size: as ``nn.AdaptiveMaxPool{n}d`` computes them.

    Output cell ``i`` of an axis of length ``L`` pools ``[floor(i L / out), ceil((i + 1) L / out))``: windows
    of varying length that may overlap by one cell. Build it with :meth:`create`, which returns a plain
    :class:`PoolGeometry` (kernel = stride = L / out, so every fast path applies) when every axis divides
    evenly.
    """

    input_size: Sizes
    out_size: Sizes

    @staticmethod
    def create(input_size: Sizes, output_size: tuple[int | None, ...]) -> PoolGeometry | AdaptiveGeometry:
        """The windows of ``output_size`` (None keeps an axis's input size) on an input of ``input_size``."""
        return _create_adaptive(tuple(input_size), tuple(output_size))

    @property
    def spatial_dims(self) -> int:
        """The number of spatial axes (1, 2 or 3)."""
        return len(self.input_size)

    @property
    def bounds(self) -> tuple[tuple[tuple[int, int], ...], ...]:
        """Per axis, per output cell: the window's ``(start, end)`` input indices."""
        return tuple(
            _adaptive_bounds(size, out) for size, out in zip(self.input_size, self.out_size, strict=True)
        )

    @property
    def kernel_size(self) -> Sizes:
        """Per axis, the longest window."""
        return tuple(max([e - s for s, e in axis]) for axis in self.bounds)

    @property
    def area(self) -> int:
        """Cells of the largest window (every window has at most this many real cells)."""
        return math.prod(self.kernel_size)

    def output_size(self, *sizes: int) -> Sizes:
        """The output's spatial size; ``sizes`` must be the input size this geometry was built for."""
        if tuple(sizes) != self.input_size:
            raise ValueError(f"adaptive windows built for input {self.input_size} got an input of {sizes}")
        return self.out_size

    def lifted(self) -> AdaptiveGeometry:
        """A 1-D geometry as the 2-D one that pools (N, C, 1, L) identically."""
        if self.spatial_dims != 1:
            return self
        return AdaptiveGeometry((1, *self.input_size), (1, *self.out_size))


@_memoize(maxsize=1024)
def _create_adaptive(
    input_size: Sizes, output_size: tuple[int | None, ...]
) -> PoolGeometry | AdaptiveGeometry:
    out = tuple(size if o is None else o for size, o in zip(input_size, output_size, strict=True))
    if all([size % o == 0 for size, o in zip(input_size, out, strict=True)]):
        kernel = tuple(size // o for size, o in zip(input_size, out, strict=True))
        return PoolGeometry.create(kernel, kernel, 0, 1, False, len(kernel))
    return AdaptiveGeometry(input_size, out)


Geometry = PoolGeometry | AdaptiveGeometry


def as_batched(x: Tensor, name: str, spatial_dims: int = 2) -> tuple[Tensor, bool]:
    """Check that ``x`` is a floating-point batched or unbatched input with ``spatial_dims`` spatial axes.

    Returns the batched tensor (N, C, *spatial) and whether the input was unbatched (so :func:`restore`
    can undo it).
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    n = spatial_dims
    axes = {1: "L", 2: "H, W", 3: "D, H, W"}[n]
    if x.dim() not in (n + 1, n + 2):
        raise ValueError(
            f"{name} expects a {n + 2}-D (N, C, {axes}) or {n + 1}-D unbatched (C, {axes}) input, "
            f"got {x.dim()}-D with shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} expects a floating-point input, got dtype {x.dtype}; use x.float()")
    if x.dim() == n + 1:
        return x.unsqueeze(0), True
    return x, False


def restore(y: Tensor, x: Tensor, unbatched: bool) -> Tensor:
    """Give ``y`` the memory format of the batched input ``x`` and drop the batch dim if it was added."""
    if (
        x.dim() == 4
        and y.dim() == 4
        and x.shape[1] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
        and not y.is_contiguous(memory_format=torch.channels_last)
    ):
        y = y.contiguous(memory_format=torch.channels_last)
    return y.squeeze(0) if unbatched else y


def _native(kind: str, spatial_dims: int) -> Callable[..., Tensor]:
    """``F.max_pool2d``, ``F.avg_pool3d``, ``F.adaptive_avg_pool2d``... (1-D pools run lifted to 2-D)."""
    return getattr(F, f"{kind}{spatial_dims}d")  # type: ignore[no-any-return]


def _native_average(g: PoolGeometry, x: Tensor) -> bool:
    """Whether ``F.avg_pool{n}d`` computes this geometry: no dilation, and (``avg_pool3d`` refuses it) no
    3-D input smaller than the kernel before padding."""
    if g.dilation != (1,) * g.spatial_dims:
        return False
    return g.spatial_dims != 3 or all([s >= k for s, k in zip(x.shape[2:], g.kernel_size, strict=True)])


def _average(x: Tensor, g: PoolGeometry, **options: Any) -> Tensor:
    """``F.avg_pool2d``/``F.avg_pool3d`` of the geometry; CPU ``avg_pool3d`` has no half-precision kernel, so
    float16/bfloat16 inputs are averaged in float32 there and cast back."""
    if g.spatial_dims == 3 and x.device.type == "cpu" and x.element_size() < 4:
        return _average(x.float(), g, **options).to(x.dtype)
    pool = _native("avg_pool", g.spatial_dims)
    if _cuda_channels_last_padding_bug(x, g):
        y = pool(x.contiguous(), g.kernel_size, g.stride, g.padding, g.ceil_mode, **options)
        return y.contiguous(memory_format=torch.channels_last)
    return pool(x, g.kernel_size, g.stride, g.padding, g.ceil_mode, **options)


def _cuda_channels_last_padding_bug(x: Tensor, g: PoolGeometry) -> bool:
    """Whether CUDA ``avg_pool2d``'s backward would be wrong for x: channels_last input, padding > 0.

    Its channels_last backward kernel forgets the padding offset (pytorch/pytorch#188344: silently wrong
    input gradients; seen on an H200 with torch 2.11.0+cu130, error 0.6 in float64 for a 3x3/2 p1 window).
    Such inputs are averaged in NCHW (one copy each way), whose kernel is right.
    """
    return (
        g.spatial_dims == 2
        and x.device.type == "cuda"
        and any(g.padding)
        and torch.is_grad_enabled()
        and x.requires_grad
        and x.shape[1] > 1
        and not x.is_contiguous()
        and x.is_contiguous(memory_format=torch.channels_last)
    )


def window_max(x: Tensor, geometry: Geometry) -> Tensor:
    """M: the maximum over each window's real cells (padding is ``-inf``), shape (N, C, *out)."""
    g = geometry
    if isinstance(g, AdaptiveGeometry):
        return _native("adaptive_max_pool", g.spatial_dims)(x, g.out_size)
    return _native("max_pool", g.spatial_dims)(x, g.kernel_size, g.stride, g.padding, g.dilation, g.ceil_mode)


def window_sum(x: Tensor, geometry: Geometry) -> Tensor:
    """The sum over each window's real cells (padding contributes 0)."""
    g = geometry
    if isinstance(g, AdaptiveGeometry):
        count = window_count(g, *x.shape[2:], device=x.device)
        return _native("adaptive_avg_pool", g.spatial_dims)(x, g.out_size) * count.to(x.dtype)
    if _native_average(g, x):
        return _average(x, g, count_include_pad=True, divisor_override=1)
    return unfold_windows(x, g, 0.0).sum(-1).to(x.dtype)  # x's dtype under CUDA autocast too


def window_count(geometry: Geometry, *sizes: int, device: torch.device | None = None) -> Tensor:
    """n: the number of real (non-padded) cells in each window, shape (*out), int64."""
    return _window_count(geometry, *sizes, torch.device("cpu") if device is None else device)


@_memoize(maxsize=256)
def _window_count(geometry: Geometry, *args: Any) -> Tensor:
    *sizes, device = args
    tables = _real_cells(geometry, tuple(sizes), device)
    count = torch.ones((), dtype=torch.int64, device=device)
    for axis, table in enumerate(tables):
        shape = [1] * len(tables)
        shape[axis] = -1
        count = count * table.sum(1).view(shape)
    return count


@_memoize(maxsize=1024)
def min_window_count(geometry: Geometry, *sizes: int) -> int:
    """The smallest number of real cells in any window (0 only for all-padding dilated windows).

    Plain Python arithmetic, so that ``torch.compile`` folds it into a constant.
    """
    if isinstance(geometry, AdaptiveGeometry):
        geometry.output_size(*sizes)
        return math.prod([min([e - s for s, e in axis]) for axis in geometry.bounds])
    out = geometry.output_size(*sizes)
    smallest = 1
    for n_out, (size, k, s, p, d) in zip(out, geometry.axes(*sizes), strict=True):
        smallest *= min(sum(0 <= i * s - p + t * d < size for t in range(k)) for i in range(n_out))
    return smallest


def _axis_index(geometry: Geometry, sizes: Sizes, device: torch.device) -> tuple[tuple[Tensor, Tensor], ...]:
    """Per axis, an (out, kernel) int64 table of input positions and a bool table: which are real cells."""
    out = geometry.output_size(*sizes)
    tables = []
    if isinstance(geometry, AdaptiveGeometry):
        for axis, k in zip(geometry.bounds, geometry.kernel_size, strict=True):
            start = torch.tensor([s for s, _ in axis], device=device)[:, None]
            end = torch.tensor([e for _, e in axis], device=device)[:, None]
            pos = start + torch.arange(k, device=device)[None, :]
            tables.append((pos, pos < end))
        return tuple(tables)
    for n_out, (size, k, s, p, d) in zip(out, geometry.axes(*sizes), strict=True):
        pos = (
            torch.arange(n_out, device=device)[:, None] * s - p + torch.arange(k, device=device)[None, :] * d
        )
        tables.append((pos, (pos >= 0) & (pos < size)))
    return tuple(tables)


def _real_cells(geometry: Geometry, sizes: Sizes, device: torch.device) -> tuple[Tensor, ...]:
    """Per axis, a (out, kernel) bool table: is the t-th cell of the i-th window a real input cell."""
    return tuple(real for _, real in _axis_index(geometry, sizes, device))


def window_mask(geometry: Geometry, *sizes: int, device: torch.device | None = None) -> Tensor:
    """A bool mask (*out, area): True where a window cell is a real input cell (row-major cell order)."""
    return _window_mask(geometry, *sizes, torch.device("cpu") if device is None else device)


@_memoize(maxsize=256)
def _window_mask(geometry: Geometry, *args: Any) -> Tensor:
    *sizes, device = args
    tables = _real_cells(geometry, tuple(sizes), device)
    n = len(tables)
    mask = torch.ones((), dtype=torch.bool, device=device)
    for axis, table in enumerate(tables):
        # out axes first (0..n-1), then the kernel axes (n..2n-1)
        shape = [1] * (2 * n)
        shape[axis], shape[n + axis] = table.shape
        mask = mask & table.view(shape)
    out = mask.shape[:n]
    return mask.reshape(*out, -1)


def window_mean(x: Tensor, geometry: Geometry) -> Tensor:
    """A: the mean over each window's real cells (``count_include_pad=False``).

    A window with no real cell (possible only with dilation, as in PyTorch) has mean 0.
    """
    g = geometry
    if isinstance(g, AdaptiveGeometry):
        return _native("adaptive_avg_pool", g.spatial_dims)(x, g.out_size)
    if _native_average(g, x):
        return _average(x, g, count_include_pad=False)
    count = window_count(g, *x.shape[2:], device=x.device).clamp_min(1)
    return window_sum(x, g) / count.to(x.dtype)


def window_weighted_mean(x: Tensor, weight: Tensor, geometry: Geometry, eps: float = 0.0) -> Tensor:
    """``sum_R(weight * x) / (sum_R(weight) + eps)`` over each window's real cells.

    ``weight`` broadcasts against ``x`` (for example one map of shape (N, 1, H, W) for all channels).
    With ``eps == 0`` the caller must make sure that every window's weights have a positive sum.
    """
    numerator = window_sum(x * weight, geometry)
    denominator = window_sum(weight, geometry)
    if eps:
        denominator = denominator + eps
    return numerator / denominator


def unfold_windows(x: Tensor, geometry: Geometry, fill: float) -> Tensor:
    """The windows of ``x`` as a trailing dimension: (N, C, *out, area), cells in row-major order.

    Padded cells (and, for adaptive windows, the cells past a shorter window's end) hold ``fill``
    (``-inf`` for maxima and rankings, ``0`` for sums).
    """
    g = geometry
    sizes = tuple(x.shape[2:])
    out = g.output_size(*sizes)
    n = len(sizes)
    if isinstance(g, AdaptiveGeometry):
        windows = x
        for axis, (pos, _) in enumerate(_axis_index(g, sizes, x.device)):
            dim = 2 + 2 * axis  # earlier axes have become (out, kernel) pairs
            picked = windows.index_select(dim, pos.clamp_max(sizes[axis] - 1).flatten())
            windows = picked.unflatten(dim, tuple(pos.shape))
        order = [0, 1, *range(2, 2 + 2 * n, 2), *range(3, 3 + 2 * n, 2)]
        windows = windows.permute(order).reshape(*x.shape[:2], *out, -1)
        mask = window_mask(g, *sizes, device=x.device)
        return windows.masked_fill(~mask, fill)
    pads = g.pads(*sizes)
    if any(pads):
        x = F.pad(x, pads, value=fill)
    windows = x
    for axis in range(n):
        windows = windows.unfold(2 + axis, g.span[axis], g.stride[axis])
    if g.dilation != (1,) * n:
        windows = windows[(..., *(slice(None, None, d) for d in g.dilation))]
    windows = windows[(slice(None), slice(None), *(slice(0, o) for o in out))]
    return windows.reshape(*windows.shape[: 2 + n], g.area)


def window_topk_mean(x: Tensor, geometry: Geometry, k: int) -> Tensor:
    """T_K: the mean of the ``k`` largest real cells of each window (``k`` clipped to the count ``n``).

    ``k >= area`` is the plain mean A and ``k == 1`` the maximum M; both use native kernels (M with
    max pooling's gradient rule: the first maximum in row-major order takes it all).

    For ``1 < k < area`` the gradient follows poolkit's one top-K tie rule, the same on every path
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
    sizes = tuple(x.shape[2:])
    windows = unfold_windows(x, g, float("-inf"))
    kth = windows.detach().topk(k, dim=-1).values[..., k - 1 :]
    clipped = min_window_count(g, *sizes) < k
    taken: Tensor | int = k
    if clipped:  # windows with fewer than K real cells take them all (t is then the -inf of padding)
        taken = window_count(g, *sizes, device=x.device).clamp(max=k)[..., None].to(x.dtype)
        real = window_mask(g, *sizes, device=x.device)
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
    # CUDA autocast runs sum() in float32: return x's dtype, as the native M and A do.
    return (total / (taken.clamp_min(1) if clipped else taken)).squeeze(-1).to(x.dtype)  # type: ignore[union-attr]
