"""The window statistics as PyTorch custom operators: one operator forward, one backward, fake kernels too.

Six operators, each computing several statistics of the same windows in one pass over the input:

* ``poolkit::window_max_mean(x, kernel, stride, padding, dilation, out_size) -> (M, A, index)``:
  ``M = max_R x`` and ``A = sum_R x / n`` over each window's real cells R (n = |R|, padding never wins the
  maximum and never counts), and the int32 position ``th * kw + tw`` of the window's first maximum in
  row-major order (``max_pool2d``'s tie rule; a NaN wins). Backward:
  ``dx_i = sum over windows w containing i of (gM_w [i = index_w] + gA_w / n_w)``. Saved for backward: the
  index only (int32, output-sized), against ``max_pool2d``'s input and int64 indices.
* ``poolkit::window_max_topk_mean(x, k, ...) -> (M, T, index, kth, tie)``: M and its index as above and
  ``T = (1/K) sum of the K largest cells`` (``1 < K``, every window with at least K real cells); ``kth`` is
  the K-th largest value t and ``tie = (K - #{x > t}) / (K #{x = t})``. Backward: gM to the first maximum,
  ``gT / K`` to every cell above t and ``gT * tie`` to every cell equal to it (the cells equal to t share the
  ``K - #above`` remaining places equally). Saved: the input, the index, kth and tie.
* ``poolkit::window_max_mean_blend(x, p, gate, tau, ...) -> (y, index, lam, cP)`` and
  ``poolkit::window_max_topk_blend(x, p, k, gate, tau, ...) -> (y, index, kth, tie, lam, cP)``: the whole
  blend ``y = lam M + (1 - lam) S`` (S = A, or T_K) in the same one pass, so that a pool is one operator
  each way with no elementwise ops around it. ``p`` is (1 or N, 1 or C): one parameter q per layer,
  channel or (sample, channel). The gate (:data:`GATES`): ``lerp`` ``lam = q`` (``torch.lerp(S, M, q)``,
  Mixed, Channel-Adaptive, Stochastic Mix); ``hard`` ``lam = [M >= q]`` (T-Max-Avg); ``soft``
  ``lam = sigmoid((M - q) / tau)`` (Soft T-Max-Avg, Learnable-T). Saved per output: lam and
  ``cP = dy/dq`` (``M - S``, 0, ``-(M - S) lam (1 - lam) / tau``), from which ``dy/dM = lam - [soft] cP`` and
  ``dy/dS = 1 - lam``. Backward: the statistics' input gradient with ``gM = gy dy/dM`` and
  ``gS = gy dy/dS`` computed inside the gather (one write of dx), and ``dq = sum gy cP`` over the outputs of
  each parameter entry. Saved: index, lam, cP (plus x, kth, tie for T_K).

* ``poolkit::window_power_mean(x, p, eps, ...) -> (y, S, S')``: GeM, ``y = S^(1/p)`` with
  ``S = mean_R z^p``, ``z = max(x, eps)``, and ``S' = mean_R z^p ln z``. Backward:
  ``dx_i = z_i^(p-1) [x_i >= eps] sum_w gy_w S_w^(1/p - 1) / n_w`` and
  ``dp = sum gy y (S'/(p S) - ln S / p^2)`` (its own operator, ``poolkit::window_power_mean_grad_p``, one
  pass over the output-sized gy, S and S'). Saved: the input, S and S' (float32, float64 for float64
  inputs), p.
* ``poolkit::window_weighted_mean(x, w, eps, ...) -> (y, D)``: ``y = sum_R w x / D``, ``D = sum_R w + eps``,
  w of x's shape or (N, 1, H, W) shared by the channels. Backward, with ``a = gy / D``:
  ``dx_i = w_i sum_w a_w`` and ``dw_i = x_i sum_w a_w - sum_w a_w y_w`` (summed over the channels inside
  the kernel for a shared w, which gets its (N, 1, H, W) gradient directly). Saved: x, w, y and D.
* ``poolkit::window_self_weighted_mean(x, weights, ...) -> (y, D, M)``: the weighted mean
  ``y = sum_R w x / D``, ``D = sum_R w``, with weights computed from x inside the kernel (one pass, no
  weight tensor in memory):
  ``"softmax"`` (SoftPool) ``w = exp(x - M)``, M the window maximum, so that no exp overflows (M cancels in
  y); ``"relu"`` (stochastic pooling in evaluation) ``w = relu(x)``, and the plain mean of the real cells
  where D = 0. Backward, with ``a = gy / D``: softmax ``dx_i = sum_w a_w exp(x_i - M_w) (1 + x_i - y_w)``;
  relu ``dx_i = sum_w (D_w > 0 ? a_w [x_i > 0] (2 x_i - y_w) : gy_w / n_w)``. Saved: x, y, D and M.
  (A separate operator, not window_weighted_mean with a weight tensor: that would need one more input-sized
  pass to compute the weights and one more backward pass for their chain rule, and SoftPool's stable
  weights need the window maximum before the exponentials, which only the kernel has.)
* ``poolkit::window_power_sum(x, p, ...) -> (y, S)``: LP pooling as ``nn.LPPool2d``, ``S = sum_R x^p`` with
  torch.pow's real powers (a negative x keeps its sign for an integer p, NaN for another p),
  ``y = S^(1/p)``, and ``y = 0`` with gradient 0 where ``S = 0``. p is a float constant (``norm_type``).
  Backward: ``dx_i = x_i^(p-1) sum_w [S_w != 0] gy_w S_w^(1/p - 1)``. Saved: x and S.

* ``poolkit::beta_rsample(alpha, beta, sample_shape) -> lambda``: Stochastic Mix's mixing weights,
  ``lambda ~ Beta(alpha, beta)`` of shape ``sample_shape + alpha.shape`` (alpha and beta of one shape, float32
  or float64, few: one pair per layer or per channel), drawn from torch's default CPU generator exactly as
  ``torch.distributions.Beta(alpha, beta).rsample(sample_shape)`` draws them (``beta_sampler.cpp``).
  Backward (implicit reparameterisation, u = I_lambda(a, b) held fixed):
  ``d lambda/d a = -(dI/da)/f(lambda)``, ``d lambda/d b = -(dI/db)/f(lambda)`` (I the regularised incomplete
  beta function, f the Beta density), from the positive series of I differentiated term by term, whose
  coefficients are tabulated once per (a, b) pair; summed over the samples of each pair. Saved: lambda.

Shapes: x (N, C, H, W) -> outputs (N, C, H_out, W_out) with ``out_size = (H_out, W_out)`` from
:meth:`poolkit.layers.windows.PoolGeometry.output_size`; outputs are channels_last when x is (the rule of
:func:`memory_format`), float outputs in x's dtype, ``tie`` in float32 (float64 for float64 inputs).

The CPU implementation is the C++ of ``window_stats.cpp`` (:mod:`poolkit.kernels.build`); other devices
have none, so callers check :func:`poolkit.kernels.build.cpu_kernels_available` and the device first.
``torch.compile(fullgraph=True)`` and ``torch.export`` see each operator as one node.

Example:
    >>> from poolkit.kernels.build import cpu_kernels_available
    >>> x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    >>> if cpu_kernels_available():
    ...     m, a, index = torch.ops.poolkit.window_max_mean(x, [2, 2], [2, 2], [0, 0], [1, 1], [1, 1])
    ...     print(m.item(), a.item(), index.item())
    ... else:
    ...     print(6.0, 3.0, 3)
    6.0 3.0 3
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "GATES",
    "accumulate_dtype",
    "beta_rsample_op",
    "memory_format",
    "window_max_mean_blend_op",
    "window_max_mean_op",
    "window_max_topk_blend_op",
    "window_max_topk_mean_op",
    "window_power_mean_op",
    "window_power_sum_op",
    "window_self_weighted_mean_op",
    "window_weighted_mean_op",
]


def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last only when it is x's layout (C > 1, not NCHW-contiguous, channels_last-contiguous).

    The C++ kernels apply the same rule (``layout_of`` in window_stats.cpp).
    """
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _empty(x: Tensor, size: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    shape = (x.shape[0], x.shape[1], *size)
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format(x))


def _empty_in(like: Tensor, size: Sequence[int], dtype: torch.dtype, channels_last: bool) -> Tensor:
    """An input-sized (N, C, *size) tensor in the given layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(
        (like.shape[0], like.shape[1], *size), dtype=dtype, device=like.device, memory_format=fmt
    )


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and keep their float side outputs in): float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# ------------------------------------------------------------------------------------------- max and mean


@torch.library.custom_op("poolkit::window_max_mean", mutates_args=(), device_types="cpu")
def window_max_mean_op(
    x: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(M, A, index) of every window; see the module docstring."""
    m, a, index = torch.ops.poolkit_cpu.max_mean_forward(x, kernel, stride, padding, dilation, out_size)
    return m, a, index


@window_max_mean_op.register_fake
def _(x: Tensor, kernel: Any, stride: Any, padding: Any, dilation: Any, out_size: Sequence[int]) -> Any:
    return _empty(x, out_size), _empty(x, out_size), _empty(x, out_size, torch.int32)


@torch.library.custom_op("poolkit::window_max_mean_backward", mutates_args=(), device_types="cpu")
def window_max_mean_backward_op(
    grad_m: Tensor,
    grad_a: Tensor,
    index: Tensor,
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """The input gradient of :func:`window_max_mean_op`, written once (each cell gathers its windows).

    ``channels_last``: the layout of the forward input (an output of 1x1 windows cannot tell it).
    """
    grad: Tensor = torch.ops.poolkit_cpu.max_mean_backward(
        grad_m, grad_a, index, in_size, kernel, stride, padding, dilation, channels_last
    )
    return grad


@window_max_mean_backward_op.register_fake
def _(grad_m: Tensor, grad_a: Tensor, index: Tensor, in_size: Sequence[int], *args: Any) -> Tensor:
    return _empty_in(index, in_size, grad_m.dtype, channels_last=args[-1])


def _setup_max_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(output[2])
    ctx.in_size = tuple(x.shape[-2:])
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)
    ctx.dtype = x.dtype


def _grad_or_zeros(grad: Tensor | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    if grad is None:
        return torch.zeros(like.shape, dtype=dtype, device=like.device)
    return grad.to(dtype)


def _backward_max_mean(ctx: Any, grad_m: Tensor | None, grad_a: Tensor | None, _: Any) -> tuple[Any, ...]:
    (index,) = ctx.saved_tensors
    grad_m = _grad_or_zeros(grad_m, index, ctx.dtype)
    grad_a = _grad_or_zeros(grad_a, index, ctx.dtype)
    grad = window_max_mean_backward_op(grad_m, grad_a, index, ctx.in_size, *ctx.geometry)
    return grad, None, None, None, None, None


window_max_mean_op.register_autograd(_backward_max_mean, setup_context=_setup_max_mean)


# ----------------------------------------------------------------------------------------- max and top-K


@torch.library.custom_op("poolkit::window_max_topk_mean", mutates_args=(), device_types="cpu")
def window_max_topk_mean_op(
    x: Tensor,
    k: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(M, T_K, index, kth, tie) of every window; see the module docstring."""
    outputs = torch.ops.poolkit_cpu.max_topk_forward(x, k, kernel, stride, padding, dilation, out_size)
    return tuple(outputs)  # type: ignore[return-value]


@window_max_topk_mean_op.register_fake
def _(x: Tensor, k: int, kernel: Any, stride: Any, padding: Any, dilation: Any, out_size: Any) -> Any:
    return (
        _empty(x, out_size),
        _empty(x, out_size),
        _empty(x, out_size, torch.int32),
        _empty(x, out_size),
        _empty(x, out_size, accumulate_dtype(x.dtype)),
    )


@torch.library.custom_op("poolkit::window_max_topk_mean_backward", mutates_args=(), device_types="cpu")
def window_max_topk_mean_backward_op(
    grad_m: Tensor,
    grad_t: Tensor,
    x: Tensor,
    index: Tensor,
    kth: Tensor,
    tie: Tensor,
    k: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """The input gradient of :func:`window_max_topk_mean_op`, written once (``channels_last``: x's layout)."""
    grad: Tensor = torch.ops.poolkit_cpu.max_topk_backward(
        grad_m, grad_t, x, index, kth, tie, k, kernel, stride, padding, dilation, channels_last
    )
    return grad


@window_max_topk_mean_backward_op.register_fake
def _(grad_m: Tensor, grad_t: Tensor, x: Tensor, index: Tensor, *args: Any) -> Tensor:
    return _empty_in(x, x.shape[-2:], grad_m.dtype, channels_last=args[-1])


def _setup_max_topk(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, k, kernel, stride, padding, dilation, _ = inputs
    _, _, index, kth, tie = output
    ctx.save_for_backward(x, index, kth, tie)
    ctx.k = k
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_max_topk(ctx: Any, grad_m: Tensor | None, grad_t: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, index, kth, tie = ctx.saved_tensors
    grad_m = _grad_or_zeros(grad_m, index, x.dtype)
    grad_t = _grad_or_zeros(grad_t, index, x.dtype)
    grad = window_max_topk_mean_backward_op(grad_m, grad_t, x, index, kth, tie, ctx.k, *ctx.geometry)
    return grad, None, None, None, None, None, None


window_max_topk_mean_op.register_autograd(_backward_max_topk, setup_context=_setup_max_topk)


# ---------------------------------------------------------------------------------------------- blends

#: The gates of the blend operators: how lambda follows from the parameter q (see the module docstring).
GATES = {"lerp": 0, "hard": 1, "soft": 2}


def _blend_fakes(x: Tensor, out_size: Sequence[int]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """y, index, lambda and dy/dq, as the C++ kernels allocate them."""
    acc = accumulate_dtype(x.dtype)
    return (
        _empty(x, out_size),
        _empty(x, out_size, torch.int32),
        _empty(x, out_size, acc),
        _empty(x, out_size, acc),
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
    return _empty_in(index, in_size, grad_y.dtype, channels_last=args[-1]), lam.new_empty(tuple(p_size))


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
    return y, index, _empty(x, geometry[-1]), _empty(x, geometry[-1], accumulate_dtype(x.dtype)), lam, cp


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
    return _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1]), lam.new_empty(tuple(p_size))


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
    return _empty(x, out_size), _empty(x, out_size, acc), _empty(x, out_size, acc)


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
    return _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


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
    return _empty(x, out_size), _empty(x, out_size, accumulate_dtype(x.dtype))


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
    grad_x = _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])
    if w.shape[1] == x.shape[1]:
        return grad_x, _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])
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
    return _empty(x, out_size), _empty(x, out_size, accumulate_dtype(x.dtype)), _empty(x, out_size)


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
    return _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


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
    return _empty(x, out_size), _empty(x, out_size, accumulate_dtype(x.dtype))


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
    return _empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1])


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


# ------------------------------------------------------------------------------------- Beta draws


@torch.library.custom_op(
    "poolkit::beta_rsample",
    mutates_args=(),
    device_types="cpu",
    tags=(torch.Tag.nondeterministic_seeded,),  # never merged with an identical call, never replayed
)
def beta_rsample_op(alpha: Tensor, beta: Tensor, sample_shape: Sequence[int]) -> Tensor:
    """``lambda ~ Beta(alpha, beta)`` of shape ``sample_shape + alpha.shape``, reparameterised.

    Draws from torch's default CPU generator exactly the numbers that
    ``torch.distributions.Beta(alpha, beta).rsample(sample_shape)`` draws (so ``torch.manual_seed``
    reproduces them); the gradient to alpha and beta is the implicit one, ``d lambda / d a = -(dI/da) / f``
    (see the module docstring), computed by :func:`beta_rsample_backward_op`.
    """
    sample: Tensor = torch.ops.poolkit_cpu.beta_rsample_forward(alpha, beta, sample_shape)
    return sample


@beta_rsample_op.register_fake
def _(alpha: Tensor, beta: Tensor, sample_shape: Sequence[int]) -> Tensor:
    return alpha.new_empty((*sample_shape, *alpha.shape))


@torch.library.custom_op("poolkit::beta_rsample_backward", mutates_args=(), device_types="cpu")
def beta_rsample_backward_op(
    grad: Tensor, sample: Tensor, alpha: Tensor, beta: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sum g dlambda/dalpha, sum g dlambda/dbeta)`` over the samples of each (alpha, beta) pair."""
    grad_alpha, grad_beta = torch.ops.poolkit_cpu.beta_rsample_backward(grad, sample, alpha, beta)
    return grad_alpha, grad_beta


@beta_rsample_backward_op.register_fake
def _(grad: Tensor, sample: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(alpha), torch.empty_like(beta)


def _setup_beta_rsample(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    alpha, beta, _ = inputs
    ctx.save_for_backward(output, alpha, beta)


def _backward_beta_rsample(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:
    sample, alpha, beta = ctx.saved_tensors
    if grad is None or not any(ctx.needs_input_grad[:2]):
        return None, None, None
    grad_alpha, grad_beta = beta_rsample_backward_op(grad, sample, alpha, beta)
    return grad_alpha, grad_beta, None


beta_rsample_op.register_autograd(_backward_beta_rsample, setup_context=_setup_beta_rsample)


def _keep_draws_apart_under_compile() -> None:
    """List the sampler among AOTAutograd's random operators, which its common-subexpression pass keeps.

    That pass (torch 2.13) does not read the ``nondeterministic_seeded`` tag: without this, two identical
    calls in one compiled training graph (a Stochastic Mix module reused on same-sized inputs) would share
    their draws. torch's own ``Beta.rsample`` (``_sample_dirichlet``) is not on the list and has that problem.
    """
    with contextlib.suppress(ImportError, AttributeError):
        from torch._functorch import compile_utils

        if torch.ops.poolkit.beta_rsample not in compile_utils.rand_ops:
            compile_utils.rand_ops.append(torch.ops.poolkit.beta_rsample)


_keep_draws_apart_under_compile()
