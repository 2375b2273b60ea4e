"""The blend operators: the whole pool ``y = lam M + (1 - lam) S``, one pass each way.

See :mod:`poolkit.kernels.ops` for the operators' formulas.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from poolkit.kernels.layout import accumulate_dtype, empty_in, empty_out, memory_format

__all__ = [
    "GATES",
    "window_max_mean_blend_backward_op",
    "window_max_mean_blend_op",
    "window_max_topk_blend_backward_op",
    "window_max_topk_blend_op",
]


# ---------------------------------------------------------------------------------------------- blends

#: The gates of the blend operators: how lambda follows from the parameter q (see the module docstring).
GATES = {"lerp": 0, "hard": 1, "soft": 2}


def _blend_fakes(x: Tensor, out_size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y, index, lambda and dy/dq, as the C++ kernels allocate them."""
    acc = accumulate_dtype(x.dtype)
    return (
        empty_out(x, out_size),
        empty_out(x, out_size, torch.int32),
        empty_out(x, out_size, acc),
        empty_out(x, out_size, acc),
    )


@torch.library.custom_op("poolkit::window_max_mean_blend", mutates_args=(), device_types="cpu")
def window_max_mean_blend_op(
    x: Tensor,
    p: Tensor,
    gate: int,
    tau: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(y, index, lambda, dy/dq): the blend of M and A of every window; see the module docstring."""
    outputs = torch.ops.poolkit_cpu.max_mean_blend_forward(
        x, p, gate, tau, kernel, stride, padding, dilation, out_size
    )
    return tuple(outputs)  # type: ignore[return-value]


@window_max_mean_blend_op.register_fake
def _(x: Tensor, p: Tensor, gate: int, tau: float, *geometry: Any) -> Any:
    return _blend_fakes(x, geometry[-1])


@torch.library.custom_op("poolkit::window_max_mean_blend_backward", mutates_args=(), device_types="cpu")
def window_max_mean_blend_backward_op(
    grad_y: Tensor,
    index: Tensor,
    lam: Tensor,
    cp: Tensor,
    gate: int,
    p_size: Sequence[int],
    p_grad: bool,
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, dp) of :func:`window_max_mean_blend_op`; dp (p_size, zeros unless p_grad) in lam's dtype."""
    gx, gp = torch.ops.poolkit_cpu.max_mean_blend_backward(
        grad_y,
        index,
        lam,
        cp,
        gate,
        p_size,
        p_grad,
        in_size,
        kernel,
        stride,
        padding,
        dilation,
        channels_last,
    )
    return gx, gp


@window_max_mean_blend_backward_op.register_fake
def _(grad_y: Tensor, index: Tensor, lam: Tensor, cp: Tensor, gate: int, p_size: Any, p_grad: bool,
      in_size: Any, *args: Any) -> Any:  # fmt: skip
    return empty_in(index, in_size, grad_y.dtype, channels_last=args[-1]), lam.new_empty(tuple(p_size))


def _setup_blend(ctx: Any, x: Tensor, p: Tensor, gate: int, geometry: tuple[Any, ...]) -> None:
    ctx.gate = gate
    ctx.p_size = tuple(p.shape)
    ctx.p_dtype = p.dtype
    ctx.dtype = x.dtype
    ctx.geometry = (*geometry, memory_format(x) == torch.channels_last)


def _setup_max_mean_blend(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, p, gate, _, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(*output[1:])
    ctx.in_size = tuple(x.shape[-2:])
    _setup_blend(ctx, x, p, gate, (kernel, stride, padding, dilation))


def _parameter_grad(ctx: Any, gp: Tensor) -> Tensor | None:
    return gp.to(ctx.p_dtype) if ctx.needs_input_grad[1] else None


def _backward_max_mean_blend(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    if grad_y is None:
        return (None,) * 9
    index, lam, cp = ctx.saved_tensors
    gx, gp = window_max_mean_blend_backward_op(
        grad_y.to(ctx.dtype), index, lam, cp, ctx.gate, ctx.p_size, ctx.needs_input_grad[1], ctx.in_size,
        *ctx.geometry,
    )  # fmt: skip
    return gx, _parameter_grad(ctx, gp), None, None, None, None, None, None, None


window_max_mean_blend_op.register_autograd(_backward_max_mean_blend, setup_context=_setup_max_mean_blend)


@torch.library.custom_op("poolkit::window_max_topk_blend", mutates_args=(), device_types="cpu")
def window_max_topk_blend_op(
    x: Tensor,
    p: Tensor,
    k: int,
    gate: int,
    tau: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, index, kth, tie, lambda, dy/dq): the blend of M and T_K of every window (module docstring)."""
    outputs = torch.ops.poolkit_cpu.max_topk_blend_forward(
        x, p, k, gate, tau, kernel, stride, padding, dilation, out_size
    )
    return tuple(outputs)  # type: ignore[return-value]


@window_max_topk_blend_op.register_fake
def _(x: Tensor, p: Tensor, k: int, gate: int, tau: float, *geometry: Any) -> Any:
    y, index, lam, cp = _blend_fakes(x, geometry[-1])
    return (
        y,
        index,
        empty_out(x, geometry[-1]),
        empty_out(x, geometry[-1], accumulate_dtype(x.dtype)),
        lam,
        cp,
    )


@torch.library.custom_op("poolkit::window_max_topk_blend_backward", mutates_args=(), device_types="cpu")
def window_max_topk_blend_backward_op(
    grad_y: Tensor,
    x: Tensor,
    index: Tensor,
    kth: Tensor,
    tie: Tensor,
    lam: Tensor,
    cp: Tensor,
    gate: int,
    p_size: Sequence[int],
    p_grad: bool,
    k: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """(dx, dp) of :func:`window_max_topk_blend_op`; dp (p_size, zeros unless p_grad) in lam's dtype."""
    gx, gp = torch.ops.poolkit_cpu.max_topk_blend_backward(
        grad_y, x, index, kth, tie, lam, cp, gate, p_size, p_grad, k, kernel, stride, padding, dilation,
        channels_last,
    )  # fmt: skip
    return gx, gp


@window_max_topk_blend_backward_op.register_fake
def _(grad_y: Tensor, x: Tensor, index: Tensor, kth: Tensor, tie: Tensor, lam: Tensor, cp: Tensor, gate: int,
      p_size: Any, *args: Any) -> Any:  # fmt: skip
    return empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1]), lam.new_empty(tuple(p_size))


def _setup_max_topk_blend(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, p, k, gate, _, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, *output[1:])
    ctx.k = k
    _setup_blend(ctx, x, p, gate, (kernel, stride, padding, dilation))


def _backward_max_topk_blend(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    if grad_y is None:
        return (None,) * 10
    x, index, kth, tie, lam, cp = ctx.saved_tensors
    gx, gp = window_max_topk_blend_backward_op(
        grad_y.to(x.dtype), x, index, kth, tie, lam, cp, ctx.gate, ctx.p_size, ctx.needs_input_grad[1], ctx.k,
        *ctx.geometry,
    )  # fmt: skip
    return gx, _parameter_grad(ctx, gp), None, None, None, None, None, None, None, None


window_max_topk_blend_op.register_autograd(_backward_max_topk_blend, setup_context=_setup_max_topk_blend)
