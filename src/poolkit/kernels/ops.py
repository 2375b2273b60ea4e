"""The window statistics as PyTorch custom operators: one operator forward, one backward, fake kernels too.

Two operators, each computing several statistics of the same windows in one pass over the input:

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

* ``poolkit::window_power_mean(x, p, eps, ...) -> (y, S, S')``: GeM, ``y = S^(1/p)`` with
  ``S = mean_R z^p``, ``z = max(x, eps)``, and ``S' = mean_R z^p ln z``. Backward:
  ``dx_i = z_i^(p-1) [x_i >= eps] sum_w gy_w S_w^(1/p - 1) / n_w`` and
  ``dp = sum gy y (S'/(p S) - ln S / p^2)``.
  Saved: the input, S and S' (float32, float64 for float64 inputs), p.
* ``poolkit::window_weighted_mean(x, w, eps, ...) -> (y, D)``: ``y = sum_R w x / D``, ``D = sum_R w + eps``,
  w of x's shape or (N, 1, H, W) shared by the channels. Backward, with ``a = gy / D``:
  ``dx_i = w_i sum_w a_w`` and ``dw_i = x_i sum_w a_w - sum_w a_w y_w`` (summed over channels for a shared
  w). Saved: x, w, y and D.

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
    "accumulate_dtype",
    "beta_rsample_op",
    "memory_format",
    "window_max_mean_op",
    "window_max_topk_mean_op",
    "window_power_mean_op",
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
        q = p.to(s.dtype)
        y = s.pow(1.0 / q)
        grad_p = (grad_y.to(s.dtype) * y * (ds / (q * s) - s.log() / (q * q))).sum()
        grad_p = grad_p.to(p.dtype).reshape(p.shape)
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
    """(dx, dw at x's shape) of :func:`window_weighted_mean_op`, each written once."""
    gx, gw = torch.ops.poolkit_cpu.weighted_mean_backward(
        grad_y, y, d, x, w, kernel, stride, padding, dilation, channels_last
    )
    return gx, gw


@window_weighted_mean_backward_op.register_fake
def _(grad_y: Tensor, y: Tensor, d: Tensor, x: Tensor, w: Tensor, *args: Any) -> Any:
    return tuple(_empty_in(x, x.shape[-2:], x.dtype, channels_last=args[-1]) for _ in range(2))


def _setup_weighted_mean(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, w, _, kernel, stride, padding, dilation, _ = inputs
    ctx.save_for_backward(x, w, *output)
    ctx.geometry = (kernel, stride, padding, dilation, memory_format(x) == torch.channels_last)


def _backward_weighted_mean(ctx: Any, grad_y: Tensor | None, *_: Any) -> tuple[Any, ...]:
    x, w, y, d = ctx.saved_tensors
    if grad_y is None or not any(ctx.needs_input_grad[:2]):
        return None, None, None, None, None, None, None, None
    gx, gw = window_weighted_mean_backward_op(grad_y, y, d, x, w, *ctx.geometry)
    if w.shape[1] != x.shape[1]:  # one weight map shared by the channels
        gw = gw.sum(1, keepdim=True)
    return gx, gw.to(w.dtype), None, None, None, None, None, None


window_weighted_mean_op.register_autograd(_backward_weighted_mean, setup_context=_setup_weighted_mean)


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
