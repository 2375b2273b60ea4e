"""The weighted and power window means: GeM, attention and LIP, SoftPool and stochastic pooling, LP.

See :mod:`poolkit.kernels.ops` for the operators' formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from poolkit.kernels.layout import accumulate_dtype, empty_in, empty_out, memory_format

__all__ = [
    "SELF_WEIGHTS",
    "self_weight_mode",
    "window_power_mean_backward_op",
    "window_power_mean_grad_p_op",
    "window_power_mean_op",
    "window_power_sum_backward_op",
    "window_power_sum_op",
    "window_self_weighted_mean_backward_op",
    "window_self_weighted_mean_op",
    "window_weighted_mean_backward_op",
    "window_weighted_mean_op",
]


# ------------------------------------------------------------------------------------------ power mean


@torch.library.custom_op("poolkit::window_power_mean", mutates_args=(), device_types="cpu")
def window_power_mean_op(
    x: Tensor,
    p: Tensor,
    eps: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, S, S') of GeM for every window; see the module docstring."""
    outputs = torch.ops.poolkit_cpu.power_mean_forward(x, p, eps, kernel, stride, padding, dilation, out_size)
    return tuple(outputs)  # type: ignore[return-value]


@window_power_mean_op.register_fake
def _(x: Tensor, p: Tensor, eps: float, *geometry: Any) -> Any:
    out_size, acc = geometry[-1], accumulate_dtype(x.dtype)
    return empty_out(x, out_size), empty_out(x, out_size, acc), empty_out(x, out_size, acc)


@torch.library.custom_op("poolkit::window_power_mean_backward", mutates_args=(), device_types="cpu")
def window_power_mean_backward_op(
    grad_y: Tensor,
    s: Tensor,
    x: Tensor,
    p: Tensor,
    eps: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """The input gradient of :func:`window_power_mean_op`, written once (``channels_last``: x's layout)."""
    grad: Tensor = torch.ops.poolkit_cpu.power_mean_backward(
        grad_y, s, x, p, eps, kernel, stride, padding, dilation, channels_last
    )
    return grad


@window_power_mean_backward_op.register_fake
def _(grad_y: Tensor, s: Tensor, x: Tensor, *args: Any) -> Tensor:
    return empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


@torch.library.custom_op("poolkit::window_power_mean_grad_p", mutates_args=(), device_types="cpu")
def window_power_mean_grad_p_op(grad_y: Tensor, s: Tensor, ds: Tensor, p: Tensor) -> Tensor:
    """GeM's ``dL/dp = sum gy y (S'/(p S) - ln S / p^2)``, ``y = S^(1/p)``: one pass (0-dim, S's dtype)."""
    grad: Tensor = torch.ops.poolkit_cpu.power_mean_grad_p(grad_y, s, ds, p)
    return grad


@window_power_mean_grad_p_op.register_fake
def _(grad_y: Tensor, s: Tensor, ds: Tensor, p: Tensor) -> Tensor:
    return s.new_empty(())


@window_power_mean_grad_p_op.register_kernel("cuda")
def _(grad_y: Tensor, s: Tensor, ds: Tensor, p: Tensor) -> Tensor:
    q = p.to(s.dtype)  # the same formula in torch operations (CUDA has no compiled kernel for it)
    return (grad_y.to(s.dtype) * s.pow(1.0 / q) * (ds / (q * s) - s.log() / (q * q))).sum()


def _setup_power_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, p, eps, kernel, stride, padding, dilation, _ = inputs
    _, s, ds = output
    ctx.save_for_backward(x, p, s, ds)
    ctx.eps = eps
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_power_mean(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, p, s, ds = ctx.saved_tensors
    if grad_y is None:
        return None, None, None, None, None, None, None, None
    grad_x = None
    if ctx.needs_input_grad[0]:
        grad_x = window_power_mean_backward_op(grad_y, s, x, p, ctx.eps, *ctx.geometry)
    grad_p = None
    if ctx.needs_input_grad[1]:
        grad_p = window_power_mean_grad_p_op(grad_y, s, ds, p).to(p.dtype).reshape(p.shape)
    return grad_x, grad_p, None, None, None, None, None, None


window_power_mean_op.register_autograd(_backward_power_mean, setup_context=_setup_power_mean)


# ------------------------------------------------------------------------------------- weighted mean


@torch.library.custom_op("poolkit::window_weighted_mean", mutates_args=(), device_types="cpu")
def window_weighted_mean_op(
    x: Tensor,
    w: Tensor,
    eps: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """(y, D) of the weighted mean of every window; see the module docstring."""
    y, d = torch.ops.poolkit_cpu.weighted_mean_forward(x, w, eps, kernel, stride, padding, dilation, out_size)
    return y, d


@window_weighted_mean_op.register_fake
def _(x: Tensor, w: Tensor, eps: float, *geometry: Any) -> Any:
    out_size = geometry[-1]
    return empty_out(x, out_size), empty_out(x, out_size, accumulate_dtype(x.dtype))


@torch.library.custom_op("poolkit::window_weighted_mean_backward", mutates_args=(), device_types="cpu")
def window_weighted_mean_backward_op(
    grad_y: Tensor,
    y: Tensor,
    d: Tensor,
    x: Tensor,
    w: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, dw) of :func:`window_weighted_mean_op`, each written once (dw of w's shape)."""
    gx, gw = torch.ops.poolkit_cpu.weighted_mean_backward(
        grad_y, y, d, x, w, kernel, stride, padding, dilation, channels_last
    )
    return gx, gw


@window_weighted_mean_backward_op.register_fake
def _(grad_y: Tensor, y: Tensor, d: Tensor, x: Tensor, w: Tensor, *args: Any) -> Any:
    grad_x = empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])
    if w.shape[1] == x.shape[1]:
        return grad_x, empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])
    return grad_x, x.new_empty((x.shape[0], 1, *x.shape[-2:]))  # a shared weight: dw summed over channels


def _setup_weighted_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, w, _, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, w, *output)
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_weighted_mean(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, w, y, d = ctx.saved_tensors
    if grad_y is None or not any(ctx.needs_input_grad[:2]):
        return None, None, None, None, None, None, None, None
    gx, gw = window_weighted_mean_backward_op(grad_y, y, d, x, w, *ctx.geometry)
    return gx, gw.to(w.dtype), None, None, None, None, None, None


window_weighted_mean_op.register_autograd(_backward_weighted_mean, setup_context=_setup_weighted_mean)


# --------------------------------------------------------------------------------- self-weighted mean

#: The weights of :func:`window_self_weighted_mean_op`, by name, as the C++ kernels number them.
SELF_WEIGHTS = {"softmax": 0, "relu": 1}


def self_weight_mode(weights: str) -> int:
    """The kernels' number of a weight name of :data:`SELF_WEIGHTS`; a ValueError names the valid ones."""
    if weights not in SELF_WEIGHTS:
        names = ", ".join(SELF_WEIGHTS)
        raise ValueError(f"self-weighted mean: weights must be one of {names}, got {weights!r}")
    return SELF_WEIGHTS[weights]


@torch.library.custom_op("poolkit::window_self_weighted_mean", mutates_args=(), device_types="cpu")
def window_self_weighted_mean_op(
    x: Tensor,
    weights: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, D, M) of the mean weighted by ``softmax`` or ``relu`` of x itself; see the module docstring."""
    outputs = torch.ops.poolkit_cpu.self_weighted_forward(
        x, self_weight_mode(weights), kernel, stride, padding, dilation, out_size
    )
    return tuple(outputs)  # type: ignore[return-value]


@window_self_weighted_mean_op.register_fake
def _(x: Tensor, weights: str, *geometry: Any) -> Any:
    self_weight_mode(weights)
    out_size = geometry[-1]
    return empty_out(x, out_size), empty_out(x, out_size, accumulate_dtype(x.dtype)), empty_out(x, out_size)


@torch.library.custom_op("poolkit::window_self_weighted_mean_backward", mutates_args=(), device_types="cpu")
def window_self_weighted_mean_backward_op(
    grad_y: Tensor,
    y: Tensor,
    d: Tensor,
    m: Tensor,
    x: Tensor,
    weights: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """The input gradient of :func:`window_self_weighted_mean_op`, written once (``channels_last``: x's
    layout)."""
    grad: Tensor = torch.ops.poolkit_cpu.self_weighted_backward(
        grad_y, y, d, m, x, self_weight_mode(weights), kernel, stride, padding, dilation, channels_last
    )
    return grad


@window_self_weighted_mean_backward_op.register_fake
def _(grad_y: Tensor, y: Tensor, d: Tensor, m: Tensor, x: Tensor, *args: Any) -> Tensor:
    return empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


def _setup_self_weighted_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, weights, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, *output)
    ctx.weights = weights
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_self_weighted_mean(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, y, d, m = ctx.saved_tensors
    if grad_y is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None, None
    grad = window_self_weighted_mean_backward_op(grad_y, y, d, m, x, ctx.weights, *ctx.geometry)
    return grad, None, None, None, None, None, None


window_self_weighted_mean_op.register_autograd(
    _backward_self_weighted_mean, setup_context=_setup_self_weighted_mean
)


# ---------------------------------------------------------------------------------------- power sum


@torch.library.custom_op("poolkit::window_power_sum", mutates_args=(), device_types="cpu")
def window_power_sum_op(
    x: Tensor,
    p: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """(y, S) of LP pooling for every window; see the module docstring."""
    y, s = torch.ops.poolkit_cpu.power_sum_forward(x, p, kernel, stride, padding, dilation, out_size)
    return y, s


@window_power_sum_op.register_fake
def _(x: Tensor, p: float, *geometry: Any) -> Any:
    out_size = geometry[-1]
    return empty_out(x, out_size), empty_out(x, out_size, accumulate_dtype(x.dtype))


@torch.library.custom_op("poolkit::window_power_sum_backward", mutates_args=(), device_types="cpu")
def window_power_sum_backward_op(
    grad_y: Tensor,
    s: Tensor,
    x: Tensor,
    p: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """The input gradient of :func:`window_power_sum_op`, written once (``channels_last``: x's layout)."""
    grad: Tensor = torch.ops.poolkit_cpu.power_sum_backward(
        grad_y, s, x, p, kernel, stride, padding, dilation, channels_last
    )
    return grad


@window_power_sum_backward_op.register_fake
def _(grad_y: Tensor, s: Tensor, x: Tensor, *args: Any) -> Tensor:
    return empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


def _setup_power_sum(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, p, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, output[1])
    ctx.p = p
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_power_sum(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, s = ctx.saved_tensors
    if grad_y is None or not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None, None
    grad = window_power_sum_backward_op(grad_y, s, x, ctx.p, *ctx.geometry)
    return grad, None, None, None, None, None, None


window_power_sum_op.register_autograd(_backward_power_sum, setup_context=_setup_power_sum)
