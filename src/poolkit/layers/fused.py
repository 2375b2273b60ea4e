"""Window statistics in one pass (M and A, M and T_K, GeM power mean, weighted mean): choose the kernels.

The study's blends (T-Max-Avg with K = kh*kw, Soft T-Max-Avg, Learnable-T, Channel-Adaptive, Mixed, Gated,
Stochastic Mix) all need the window maximum M and the window mean A of the same windows, and the T-Max-Avg
family M and the top-K mean T_K. Calling ``F.max_pool2d`` and ``F.avg_pool2d`` separately costs two native
kernels forward and, worse, two native backward kernels that each allocate and zero an input-sized gradient
and scatter into it. Three paths compute the same values and gradients:

* ``"compiled"``: the custom operators of :mod:`poolkit.kernels` (C++ on CPU, Triton on CUDA): one read of
  the input forward, one write of the input gradient backward, the int32 index of the first maximum saved
  instead of the input;
* ``"eager"``: :func:`window_max_mean` views the input as ``kh * kw`` strided tensors, one per window cell
  (``x[..., i*d - p :: s, j*d - p :: s]`` restricted to the output positions where that cell is a real input
  cell), and reduces them with elementwise ``maximum`` and ``add``; backward writes the input gradient view
  by view: cell ``t`` of a window receives ``gM * [x_t is the window's first maximum] + gA / n``, where
  "first" follows ``max_pool2d``'s row-major tie rule (it saves the input and M);
* ``"native"``: ``(window_max, window_mean)``, i.e. ``F.max_pool2d`` and ``F.avg_pool2d``: the reference.

GeM's power mean (:func:`window_power_mean`), the weighted mean of attention and LIP
(:func:`window_weighted_mean_fused`), SoftPool's and stochastic pooling's self-weighted mean
(:func:`window_self_weighted_mean_compiled`) and LP's power sum (:func:`window_power_sum_compiled`) have a
compiled kernel and the reference only (no eager fused path); the last two are called by their layers when
:func:`kernel_path` says ``"compiled"``. So do Stochastic Mix's Beta draws (:mod:`poolkit.layers.sampling`).

Choice (:func:`set_fused_kernels` or the ``POOLKIT_FUSED`` environment variable): ``auto`` (the default)
takes the compiled kernels on CPU (the eager fused path when they cannot be built, with one warning) and the
native pair elsewhere (on an H200 the Triton kernels measured slower); ``on`` takes the compiled kernels where
they exist (the Triton ones on CUDA, with triton installed) and the eager fused path elsewhere;
``eager`` the eager fused path; ``off`` the native pair. :func:`kernel_path` says which path an input takes.
The tests compare every path with the native one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from poolkit.kernels.build import cpu_kernels_available, cuda_kernels_available
from poolkit.kernels.ops import (
    window_max_mean_op,
    window_max_topk_mean_op,
    window_power_mean_op,
    window_power_sum_op,
    window_self_weighted_mean_op,
    window_weighted_mean_op,
)
from poolkit.layers.windows import (
    PoolGeometry,
    _memoize,
    min_window_count,
    window_count,
    window_max,
    window_mean,
    window_topk_mean,
    window_weighted_mean,
)

__all__ = [
    "fused_kernel_mode",
    "fused_kernels_enabled",
    "kernel_path",
    "set_fused_kernels",
    "use_fused_kernels",
    "window_max_mean",
    "window_max_topk_mean",
    "window_power_mean",
    "window_power_sum_compiled",
    "window_self_weighted_mean_compiled",
    "window_topk_mean_fused",
    "window_weighted_mean_fused",
]

Mode = Literal["auto", "on", "eager", "off"]
KernelPath = Literal["compiled", "eager", "native"]
_MODES = ("auto", "on", "eager", "off")
#: Windows with more cells than this skip the eager fused path (it makes one pass per cell).
MAX_FUSED_AREA = 16
#: The dtypes of the compiled kernels.
COMPILED_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _mode_from_environment() -> Mode:
    value = os.environ.get("POOLKIT_FUSED", "auto").strip().lower()
    if value not in _MODES:
        raise ValueError(f"POOLKIT_FUSED={value!r} is not one of {', '.join(_MODES)}; unset it or pick one")
    return value  # type: ignore[return-value]


_state: dict[str, Mode] = {"mode": _mode_from_environment()}


def set_fused_kernels(mode: Mode | bool) -> None:
    """Choose the kernels of M/A and T_K for every pool: ``"auto"``, ``"on"``, ``"eager"`` or ``"off"``.

    See the module docstring for what each mode takes. ``True``/``False`` mean ``"on"``/``"off"``. The
    results are equal either way (up to float rounding of the sums); only speed and memory differ.
    """
    if isinstance(mode, bool):
        mode = "on" if mode else "off"
    if mode not in _MODES:
        raise ValueError(f"fused kernel mode must be one of {', '.join(_MODES)} or a bool, got {mode!r}")
    _state["mode"] = mode


def fused_kernel_mode() -> Mode:
    """The current mode of :func:`set_fused_kernels` (initially ``POOLKIT_FUSED``, default ``"auto"``)."""
    return _state["mode"]


@contextlib.contextmanager
def use_fused_kernels(mode: Mode | bool) -> Iterator[None]:
    """Context manager form of :func:`set_fused_kernels`; restores the previous mode on exit.

    Example:
        >>> x = torch.randn(1, 2, 4, 4)
        >>> g = PoolGeometry.create(2)
        >>> with use_fused_kernels("off"):
        ...     m_ref, a_ref = window_max_mean(x, g)
        >>> with use_fused_kernels("on"):
        ...     m, a = window_max_mean(x, g)
        >>> torch.equal(m, m_ref) and torch.allclose(a, a_ref)
        True
    """
    previous = _state["mode"]
    set_fused_kernels(mode)
    try:
        yield
    finally:
        _state["mode"] = previous


def kernel_path(x: Tensor, geometry: PoolGeometry, k: int | None = None) -> KernelPath:
    """The path that :func:`window_max_mean` (``k`` None) or :func:`window_max_topk_mean` takes for ``x``.

    Windows with fewer real cells than needed (none, or fewer than K) always take the native path.
    """
    mode = _state["mode"]
    if not isinstance(geometry, PoolGeometry) or geometry.spatial_dims != 2:
        return "native"  # 3-D and adaptive windows take the reference path (1-D pools arrive lifted to 2-D)
    if mode == "off":
        return "native"
    if min_window_count(geometry, x.shape[-2], x.shape[-1]) < (k or 1):
        return "native"
    if mode in ("auto", "on") and x.dtype in COMPILED_DTYPES:
        if x.device.type == "cpu" and cpu_kernels_available():
            return "compiled"
        if mode == "on" and x.device.type == "cuda" and cuda_kernels_available():
            return "compiled"  # the Triton kernels: opt-in (slower than native on an H200)
    if mode == "auto" and x.device.type != "cpu":
        return "native"
    if torch.compiler.is_compiling() or geometry.area > MAX_FUSED_AREA or geometry.area == 1:
        return "native"
    return "eager"


def fused_kernels_enabled(x: Tensor, geometry: PoolGeometry) -> bool:
    """Whether :func:`window_max_mean` takes a fused path (compiled or eager) for this input and geometry."""
    return kernel_path(x, geometry) != "native"


def geometry_args(geometry: PoolGeometry, x: Tensor) -> tuple[list[int], ...]:
    """Kernel, stride, padding, dilation and output size of ``geometry`` on ``x``, for the operators."""
    g = geometry
    out = g.output_size(x.shape[-2], x.shape[-1])
    return list(g.kernel_size), list(g.stride), list(g.padding), list(g.dilation), list(out)


def window_max_mean(x: Tensor, geometry: PoolGeometry) -> tuple[Tensor, Tensor]:
    """M and A of every window: ``(window_max(x, g), window_mean(x, g))``, computed together.

    Shape:
        (N, C, H, W) -> two (N, C, H_out, W_out) tensors in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
        >>> m, a = window_max_mean(x, PoolGeometry.create(2))
        >>> m.item(), a.item()
        (6.0, 3.0)
    """
    path = kernel_path(x, geometry)
    if path == "compiled":
        m, a, _ = window_max_mean_op(x, *geometry_args(geometry, x))
        return m, a
    if path == "eager":
        m, a = _MaxMean.apply(x, geometry)
        return m, a
    return window_max(x, geometry), window_mean(x, geometry)


def window_max_topk_mean(x: Tensor, geometry: PoolGeometry, k: int) -> tuple[Tensor, Tensor]:
    """M and T_K (the mean of the K largest real cells) of every window, in one pass where compiled.

    ``K >= kh * kw`` gives ``(M, A)`` and ``K == 1`` gives ``(M, M)``.

    Shape:
        (N, C, H, W) -> two (N, C, H_out, W_out) tensors in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[1.0, 4.0, 2.0], [3.0, 0.0, 5.0], [6.0, 7.0, 8.0]]]])
        >>> m, top = window_max_topk_mean(x, PoolGeometry.create(3), 4)
        >>> m.item(), top.item()   # 8 and (8 + 7 + 6 + 5) / 4
        (8.0, 6.5)
    """
    if k >= geometry.area:
        return window_max_mean(x, geometry)
    if k > 1 and kernel_path(x, geometry, k) == "compiled":
        m, top, *_ = window_max_topk_mean_op(x, k, *geometry_args(geometry, x))
        return m, top
    return window_max(x, geometry), window_topk_mean_fused(x, geometry, k)


def window_power_mean(x: Tensor, geometry: PoolGeometry, p: Tensor | float, eps: float) -> Tensor:
    """GeM's power mean ``y = (mean_R clamp(x, eps)^p)^(1/p)`` of every window, ``p`` a positive scalar.

    The compiled path (:func:`kernel_path` ``"compiled"``) computes it in one pass, with the gradients of x
    and p; every other path is the reference: the native ``avg_pool2d`` of ``clamp(x, eps)^p``, in float32
    for float16/bfloat16 inputs (x^p overflows float16 quickly) and cast back.

    Shape:
        (N, C, H, W) -> (N, C, H_out, W_out) in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(window_power_mean(x, PoolGeometry.create(2), 3.0, 1e-6).item(), 5)   # 0.1835855
        0.18359
    """
    if (not isinstance(p, Tensor) or p.numel() == 1) and kernel_path(x, geometry) == "compiled":
        exponent = p if isinstance(p, Tensor) else x.new_tensor(float(p), dtype=torch.float64)
        y, _, _ = window_power_mean_op(x, exponent.reshape(()), float(eps), *geometry_args(geometry, x))
        return y
    xf = x.float() if x.element_size() < 4 else x
    if isinstance(p, Tensor):
        p = p.to(xf.dtype)
    return window_mean(xf.clamp(min=eps).pow(p), geometry).pow(1.0 / p).to(x.dtype)


def window_weighted_mean_fused(x: Tensor, weight: Tensor, geometry: PoolGeometry, eps: float = 0.0) -> Tensor:
    """``sum_R(weight * x) / (sum_R(weight) + eps)`` of every window, in one pass where compiled.

    ``weight`` has x's shape or one map (N, 1, H, W) shared by the channels. Every other path (and any
    other weight shape) is :func:`poolkit.layers.windows.window_weighted_mean`, the reference.

    Shape:
        (N, C, H, W) and (N, C or 1, H, W) -> (N, C, H_out, W_out) in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
        >>> w = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
        >>> window_weighted_mean_fused(x, w, PoolGeometry.create(2)).item()   # (1 + 4) / 2
        2.5
    """
    if x.dim() != 4:
        return window_weighted_mean(x, weight, geometry, eps)
    n, c, h, w = x.shape
    if (
        weight.dim() == 4
        and tuple(weight.shape) in ((n, c, h, w), (n, 1, h, w))
        and weight.dtype == x.dtype
        and kernel_path(x, geometry) == "compiled"
    ):
        y, _ = window_weighted_mean_op(x, weight, float(eps), *geometry_args(geometry, x))
        return y
    return window_weighted_mean(x, weight, geometry, eps)


def window_self_weighted_mean_compiled(
    x: Tensor, geometry: PoolGeometry, weights: Literal["softmax", "relu"]
) -> Tensor:
    """``sum_R w x / sum_R w`` with ``w = exp(x - max_R x)`` (SoftPool) or ``relu(x)`` (stochastic pooling).

    The compiled operator ``poolkit::window_self_weighted_mean``: the weights are computed inside the kernel,
    one pass forward and one backward. ``"relu"`` gives the plain mean of a window whose relu mass is 0.
    Callers check ``kernel_path(x, geometry) == "compiled"`` first; their own code is the reference.

    Shape:
        (N, C, H, W) -> (N, C, H_out, W_out) in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> g = PoolGeometry.create(2)
        >>> y = window_self_weighted_mean_compiled(x, g, "relu") if kernel_path(x, g) == "compiled" else None
        >>> y is None or round(y.item(), 6) == 0.191667   # (0.01 + 0.04 + 0.0025 + 0.0625) / 0.6
        True
    """
    if kernel_path(x, geometry) != "compiled":
        raise RuntimeError(f"the compiled kernels do not serve this input ({kernel_path(x, geometry)} path)")
    y, _, _ = window_self_weighted_mean_op(x, weights, *geometry_args(geometry, x))
    return y


def window_power_sum_compiled(x: Tensor, geometry: PoolGeometry, p: float) -> Tensor:
    """LP pooling ``(sum_R x^p)^(1/p)`` as ``nn.LPPool2d`` (0 with gradient 0 where the sum is 0), compiled.

    The operator ``poolkit::window_power_sum``. Callers check ``kernel_path(x, geometry) == "compiled"``
    first; their own code is the reference.

    Shape:
        (N, C, H, W) -> (N, C, H_out, W_out) in the input's memory format.

    Example:
        >>> x = torch.tensor([[[[3.0, 0.0], [0.0, 4.0]]]])
        >>> g = PoolGeometry.create(2)
        >>> y = window_power_sum_compiled(x, g, 2.0) if kernel_path(x, g) == "compiled" else None
        >>> y is None or y.item() == 5.0
        True
    """
    if kernel_path(x, geometry) != "compiled":
        raise RuntimeError(f"the compiled kernels do not serve this input ({kernel_path(x, geometry)} path)")
    y, _ = window_power_sum_op(x, float(p), *geometry_args(geometry, x))
    return y


def window_topk_mean_fused(x: Tensor, geometry: PoolGeometry, k: int) -> Tensor:
    """T_K, the mean of the K largest cells of each window, for ``1 < K < kh * kw``.

    The compiled kernel keeps each window's K largest values sorted; so does the eager fused path while it
    streams the kh*kw cell views: a value v enters the sorted list t_1 >= ... >= t_K as
    ``t_l <- max(t_l, min(t_{l-1}, v))`` for every l at once (t_0 = +inf), three elementwise operations per
    cell instead of unfolding and sorting. Backward gives g/K to every cell above the K-th largest value t
    and shares the remaining ``(K - #above)/K * g`` equally among the cells equal to t. Falls back to
    :func:`poolkit.layers.windows.window_topk_mean` when the fused paths are off or a window has fewer
    than K real cells.

    Example:
        >>> x = torch.tensor([[[[1.0, 4.0, 2.0], [3.0, 0.0, 5.0], [6.0, 7.0, 8.0]]]])
        >>> with use_fused_kernels("on"):
        ...     window_topk_mean_fused(x, PoolGeometry.create(3), 4).item()   # (8 + 7 + 6 + 5) / 4
        6.5
    """
    if not 1 < k < geometry.area:
        return window_topk_mean(x, geometry, k)
    path = kernel_path(x, geometry, k)
    if path == "compiled":
        return window_max_topk_mean_op(x, k, *geometry_args(geometry, x))[1]
    if path == "eager":
        return _TopKMean.apply(x, geometry, k)  # type: ignore[no-any-return]
    return window_topk_mean(x, geometry, k)


# --------------------------------------------------------------------------------------------- views

_Cell = tuple[int, int, int, int, int, int]  # input start h, output lo h, output hi h, same for w


def _axis_cells(
    size: int, out: int, kernel: int, stride: int, pad: int, dilation: int
) -> list[tuple[int, int, int]]:
    """For each kernel offset along one axis: (first input index, first output, end output) it is real for."""
    cells = []
    for t in range(kernel):
        offset = t * dilation - pad  # output o reads input o * stride + offset
        lo = max(0, -(offset // stride))  # the first o with o * stride + offset >= 0
        hi = min(out, (size - 1 - offset) // stride + 1) if offset < size else 0
        cells.append((lo * stride + offset, lo, max(lo, hi)))
    return cells


@_memoize(maxsize=512)
def _plan(geometry: PoolGeometry, height: int, width: int) -> tuple[tuple[int, int], tuple[_Cell, ...], bool]:
    """Output size, the window cells in row-major order (empty ones dropped), and whether they tile the input.

    "Tile" means every input cell is in exactly one window cell, so the backward pass can write the
    gradient without zero-filling it first.
    """
    out_h, out_w = geometry.output_size(height, width)
    (ax_h, ax_w) = (
        _axis_cells(size, out, k, s, p, d)
        for (size, k, s, p, d), out in zip(geometry.axes(height, width), (out_h, out_w), strict=True)
    )
    cells = tuple(
        (hs, hlo, hhi, ws, wlo, whi)
        for hs, hlo, hhi in ax_h
        for ws, wlo, whi in ax_w
        if hhi > hlo and whi > wlo
    )
    tiles = (
        geometry.dilation == (1, 1)
        and geometry.padding == (0, 0)
        and geometry.stride == geometry.kernel_size
        and out_h * geometry.kernel_size[0] == height
        and out_w * geometry.kernel_size[1] == width
    )
    return (out_h, out_w), cells, tiles


def _view(x: Tensor, cell: _Cell, stride: tuple[int, int]) -> Tensor:
    hs, hlo, hhi, ws, wlo, whi = cell
    sh, sw = stride
    return x[:, :, hs : hs + sh * (hhi - hlo - 1) + 1 : sh, ws : ws + sw * (whi - wlo - 1) + 1 : sw]


def _sub(y: Tensor, cell: _Cell, out: tuple[int, int]) -> Tensor:
    """The part of an output-sized tensor that window cell ``cell`` covers (``y`` itself when all of it)."""
    _, hlo, hhi, _, wlo, whi = cell
    if (hlo, hhi, wlo, whi) == (0, out[0], 0, out[1]):
        return y
    return y[:, :, hlo:hhi, wlo:whi]


def _memory_format(x: Tensor) -> torch.memory_format:
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _MaxMean(torch.autograd.Function):
    """(M, A) of every window; see the module docstring for the method."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, geometry: PoolGeometry) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        height, width = x.shape[-2:]
        out, cells, _ = _plan(geometry, height, width)
        fmt = _memory_format(x)
        shape = (x.shape[0], x.shape[1], *out)
        m = torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)
        full = [i for i, c in enumerate(cells) if _sub(m, c, out) is m]
        if len(full) >= 2:
            first, second = (_view(x, cells[i], geometry.stride) for i in full[:2])
            torch.maximum(first, second, out=m)
            rest = [c for i, c in enumerate(cells) if i not in full[:2]]
        else:
            m.fill_(float("-inf"))
            rest = list(cells)
        for cell in rest:
            part = _sub(m, cell, out)
            torch.maximum(part, _view(x, cell, geometry.stride), out=part)
        if fmt == torch.channels_last and geometry.dilation == (1, 1):
            # The native average reads a channels_last input once, faster than kh*kw strided adds.
            g = geometry
            a = F.avg_pool2d(x, g.kernel_size, g.stride, g.padding, g.ceil_mode, count_include_pad=False)
        else:
            a = torch.empty_like(m)
            if len(full) >= 2:
                torch.add(first, second, out=a)
            else:
                a.zero_()
            for cell in rest:
                part = _sub(a, cell, out)
                part.add_(_view(x, cell, geometry.stride))
            _divide_by_count(a, geometry, height, width, a)
        ctx.geometry = geometry
        ctx.save_for_backward(x, m)
        ctx.set_materialize_grads(False)
        return m, a

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_m: Tensor | None, grad_a: Tensor | None) -> tuple[Tensor | None, None]:  # type: ignore[override]
        x, m = ctx.saved_tensors
        geometry: PoolGeometry = ctx.geometry
        if not ctx.needs_input_grad[0] or (grad_m is None and grad_a is None):
            return None, None
        height, width = x.shape[-2:]
        out, cells, tiles = _plan(geometry, height, width)
        fmt = _memory_format(x)
        grad_x = _grad_buffer(x, tiles, fmt)
        share = None  # gA / n, once per output cell
        if grad_a is not None:
            share = _divide_by_count(grad_a, geometry, height, width, torch.empty_like(m))
        if grad_m is not None:
            grad_m = grad_m.contiguous(memory_format=fmt)
        # hit: 1.0 where cell t holds its window's first maximum, kept in the gradient's dtype so that one
        # addcmul writes the cell's gradient.
        free: Tensor | None = None  # 1.0 where the window's first maximum is still to be found
        hit_buffer = torch.empty_like(m, memory_format=fmt) if grad_m is not None else None
        last = len(cells) - 1
        for index, cell in enumerate(cells):
            target = _view(grad_x, cell, geometry.stride)
            share_part = None if share is None else _sub(share, cell, out)
            if grad_m is None or hit_buffer is None:
                assert share_part is not None
                target.copy_(share_part) if tiles else target.add_(share_part)
                continue
            hit = _sub(hit_buffer, cell, out)
            _compare_into(hit, torch.eq, _view(x, cell, geometry.stride), _sub(m, cell, out), fmt)
            if free is not None:
                free_part = _sub(free, cell, out)
                hit.mul_(free_part)
                if index < last:
                    free_part.sub_(hit)
            elif index < last:
                free = torch.ones_like(m, memory_format=fmt)
                _sub(free, cell, out).sub_(hit)
            grad_m_part = _sub(grad_m, cell, out)
            if share_part is None:
                torch.mul(grad_m_part, hit, out=target) if tiles else target.addcmul_(grad_m_part, hit)
            elif tiles:
                torch.addcmul(share_part, grad_m_part, hit, out=target)
            else:  # one read-modify-write of the strided target instead of two
                target.add_(hit.mul_(grad_m_part).add_(share_part))
        return grad_x, None


class _TopKMean(torch.autograd.Function):
    """T_K of every window by a sorted insertion of the cell views; see :func:`window_topk_mean_fused`."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, geometry: PoolGeometry, k: int) -> Tensor:  # type: ignore[override]
        height, width = x.shape[-2:]
        out, cells, _ = _plan(geometry, height, width)
        fmt = _memory_format(x)
        shape = (x.shape[0], x.shape[1], *out)
        # top[l] holds the (l+1)-th largest value seen so far in each window (-inf until filled).
        top = [
            torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt).fill_(float("-inf"))
            for _ in range(k)
        ]
        # Buffers reused for every cell: fresh output-sized allocations would page-fault on each one.
        entering = [torch.empty_like(top[0]) for _ in range(k - 1)]
        for cell in cells:
            v = _view(x, cell, geometry.stride)
            parts = [_sub(t, cell, out) for t in top]
            # Every level takes the old value of the level above: compute all entering minima first.
            mins = [_sub(e, cell, out) for e in entering]
            for level in range(1, k):
                torch.minimum(parts[level - 1], v, out=mins[level - 1])
            torch.maximum(parts[0], v, out=parts[0])
            for level in range(1, k):
                torch.maximum(parts[level], mins[level - 1], out=parts[level])
        total = top[0].clone()
        for t in top[1:]:
            total.add_(t)
        ctx.geometry, ctx.k = geometry, k
        ctx.save_for_backward(x, top[k - 1])
        return total.mul_(1.0 / k)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None]:  # type: ignore[override]
        x, kth = ctx.saved_tensors
        geometry: PoolGeometry = ctx.geometry
        k: int = ctx.k
        if not ctx.needs_input_grad[0]:
            return None, None, None
        height, width = x.shape[-2:]
        out, cells, tiles = _plan(geometry, height, width)
        fmt = _memory_format(x)
        above = torch.zeros_like(kth, memory_format=fmt)  # cells > the K-th largest value, per window
        equal = torch.zeros_like(kth, memory_format=fmt)  # cells == it (at least one: the K-th itself)
        mask = torch.empty_like(kth, memory_format=fmt)
        for cell in cells:
            v, threshold = _view(x, cell, geometry.stride), _sub(kth, cell, out)
            region = _sub(mask, cell, out)
            _compare_into(region, torch.gt, v, threshold, fmt)
            _sub(above, cell, out).add_(region)
            _compare_into(region, torch.eq, v, threshold, fmt)
            _sub(equal, cell, out).add_(region)
        # Each cell equal to the K-th value takes an equal part of the K - (cells above) remaining places.
        grad_k = grad.contiguous(memory_format=fmt) * (1.0 / k)
        tie_grad = (k - above).div_(equal).mul_(grad_k)
        grad_x = _grad_buffer(x, tiles, fmt)
        tie = torch.empty_like(kth, memory_format=fmt)
        for cell in cells:
            v, threshold = _view(x, cell, geometry.stride), _sub(kth, cell, out)
            region, tie_part = _sub(mask, cell, out), _sub(tie, cell, out)
            _compare_into(region, torch.gt, v, threshold, fmt)
            region.mul_(_sub(grad_k, cell, out))
            _compare_into(tie_part, torch.eq, v, threshold, fmt)
            target = _view(grad_x, cell, geometry.stride)
            if tiles:
                torch.addcmul(region, _sub(tie_grad, cell, out), tie_part, out=target)
            else:
                target.add_(region.addcmul_(_sub(tie_grad, cell, out), tie_part))
        return grad_x, None, None


def _compare_into(mask: Tensor, compare: Any, view: Tensor, other: Tensor, fmt: torch.memory_format) -> None:
    """``mask = compare(view, other)`` as 0.0/1.0 in ``mask``'s dtype.

    With channels_last the cell views are dense along C and the comparison writes the float mask
    directly; an NCHW view strides along W, where comparing into a bool tensor and converting it is faster
    (measured on CPU: 7 + 2 ms against 18 ms for 2M elements).
    """
    if fmt == torch.channels_last:
        compare(view, other, out=mask)
    else:
        mask.copy_(compare(view, other))


def _grad_buffer(x: Tensor, tiles: bool, fmt: torch.memory_format) -> Tensor:
    """The input gradient to fill: uninitialised where the windows tile the input (every cell gets written
    once), zeros where they overlap or leave cells out (the cells are accumulated into)."""
    return torch.empty_like(x, memory_format=fmt) if tiles else torch.zeros_like(x, memory_format=fmt)


def _divide_by_count(y: Tensor, geometry: PoolGeometry, height: int, width: int, out: Tensor) -> Tensor:
    """``out = y / n``, n the number of real cells of each window (a constant when none is cut).

    ``out`` may be ``y`` itself (in place).
    """
    if min_window_count(geometry, height, width) == geometry.area:
        return torch.mul(y, 1.0 / geometry.area, out=out)
    return torch.div(y, window_count(geometry, height, width, device=y.device).to(y.dtype), out=out)
