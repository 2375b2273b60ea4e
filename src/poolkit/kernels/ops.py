"""The window statistics as PyTorch custom operators: one operator forward, one backward, fake kernels too.

The operators, each computing several statistics of the same windows in one pass over the input. This module
defines the first two; :mod:`~poolkit.kernels.ops_blend`, :mod:`~poolkit.kernels.ops_weighted` and
:mod:`~poolkit.kernels.ops_sampler` the others, and every one of them is importable from here:

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

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from poolkit.kernels.layout import accumulate_dtype, empty_in, empty_out, grad_or_zeros, memory_format
from poolkit.kernels.ops_blend import (
    GATES,
    window_max_mean_blend_backward_op,
    window_max_mean_blend_op,
    window_max_topk_blend_backward_op,
    window_max_topk_blend_op,
)
from poolkit.kernels.ops_sampler import beta_rsample_backward_op, beta_rsample_op
from poolkit.kernels.ops_weighted import (
    SELF_WEIGHTS,
    self_weight_mode,
    window_power_mean_backward_op,
    window_power_mean_grad_p_op,
    window_power_mean_op,
    window_power_sum_backward_op,
    window_power_sum_op,
    window_self_weighted_mean_backward_op,
    window_self_weighted_mean_op,
    window_weighted_mean_backward_op,
    window_weighted_mean_op,
)

__all__ = [
    "GATES",
    "SELF_WEIGHTS",
    "accumulate_dtype",
    "beta_rsample_backward_op",
    "beta_rsample_op",
    "memory_format",
    "self_weight_mode",
    "window_max_mean_backward_op",
    "window_max_mean_blend_backward_op",
    "window_max_mean_blend_op",
    "window_max_mean_op",
    "window_max_topk_blend_backward_op",
    "window_max_topk_blend_op",
    "window_max_topk_mean_backward_op",
    "window_max_topk_mean_op",
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
    return empty_out(x, out_size), empty_out(x, out_size), empty_out(x, out_size, torch.int32)


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
    return empty_in(index, in_size, grad_m.dtype, channels_last=args[-1])


def _setup_max_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor, Tensor]) -> None:
    x, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(output[2])
    ctx.in_size = tuple(x.shape[-2:])
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)
    ctx.dtype = x.dtype


def _backward_max_mean(ctx: Any, grad_m: Tensor | None, grad_a: Tensor | None, _: Any) -> tuple[Any, ...]:
    (index,) = ctx.saved_tensors
    grad_m = grad_or_zeros(grad_m, index, ctx.dtype)
    grad_a = grad_or_zeros(grad_a, index, ctx.dtype)
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
        empty_out(x, out_size),
        empty_out(x, out_size),
        empty_out(x, out_size, torch.int32),
        empty_out(x, out_size),
        empty_out(x, out_size, accumulate_dtype(x.dtype)),
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
    return empty_in(x, x.shape[-2:], grad_m.dtype, channels_last=args[-1])


def _setup_max_topk(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
    x, k, kernel, stride, padding, dilation, _ = inputs
    _, _, index, kth, tie = output
    ctx.save_for_backward(x, index, kth, tie)
    ctx.k = k
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_max_topk(ctx: Any, grad_m: Tensor | None, grad_t: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, index, kth, tie = ctx.saved_tensors
    grad_m = grad_or_zeros(grad_m, index, x.dtype)
    grad_t = grad_or_zeros(grad_t, index, x.dtype)
    grad = window_max_topk_mean_backward_op(grad_m, grad_t, x, index, kth, tie, ctx.k, *ctx.geometry)
    return grad, None, None, None, None, None, None


window_max_topk_mean_op.register_autograd(_backward_max_topk, setup_context=_setup_max_topk)
