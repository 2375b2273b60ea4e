"""Triton kernels of SoftPool, stochastic pooling (evaluation) and LP: the CUDA side of two operators.

The twins of the C++ kernels of ``poolkit::window_self_weighted_mean`` and ``poolkit::window_power_sum``
(formulas in :mod:`poolkit.kernels.ops`), with the same signatures:

* :func:`self_weighted_forward` -> (y, D, M) and :func:`self_weighted_backward` -> dx: the mean weighted by
  ``exp(x - window max)`` (SoftPool, ``"softmax"``) or ``relu(x)`` (stochastic pooling, ``"relu"``);
* :func:`power_sum_forward` -> (y, S) and :func:`power_sum_backward` -> dx: LP pooling as ``nn.LPPool2d``.

Same layout as :mod:`poolkit.kernels.triton_window` (whose helpers they use): one program per ``BLOCK``
outputs forward, per ``BLOCK`` inputs backward (gathering the windows that contain each cell, so dx is
written once), arithmetic in float32 (float64 for float64 inputs). Opt-in on CUDA like the others; tested
under ``TRITON_INTERPRET=1`` by tests/test_triton_kernels.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from poolkit.kernels.ops import SELF_WEIGHTS, accumulate_dtype, memory_format, self_weight_mode
from poolkit.kernels.triton_window import (
    BLOCK,
    _cell_of,
    _decompose,
    _geometry,
    _grid,
    _outputs,
    _window_count,
    _window_of,
)

__all__ = [
    "power_sum_backward",
    "power_sum_forward",
    "register_cuda_kernels",
    "self_weighted_backward",
    "self_weighted_forward",
]


@triton.jit
def _self_weighted_forward_kernel(
    x_ptr, y_ptr, d_ptr, m_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    RELU: tl.constexpr, CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """(y, D, M): weights exp(x - M) (softmax) or relu(x) (RELU; the plain mean where D = 0)."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    base = n * sxn + c * sxc
    best = tl.full([BLOCK], float("-inf"), acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=float("-inf")).to(acc_t)
            best = tl.where((v > best) | (v != v), v, best)
    num = tl.zeros([BLOCK], acc_t)
    den = tl.zeros([BLOCK], acc_t)
    sums = tl.zeros([BLOCK], acc_t)
    count = tl.zeros([BLOCK], tl.int32)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=0.0).to(acc_t)
            w = tl.where(real & (v > 0.0), v, 0.0) if RELU else tl.where(real, tl.exp(v - best), 0.0)
            num += w * v
            den += w
            sums += v
            count += real.to(tl.int32)
    safe = tl.where(den > 0.0, den, 1.0)
    y = num / safe
    if RELU:
        y = tl.where(den > 0.0, y, sums / tl.maximum(count, 1).to(acc_t))
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=live)
    tl.store(d_ptr + out, den, mask=live)
    tl.store(m_ptr + out, best.to(m_ptr.dtype.element_ty), mask=live)


@triton.jit
def _self_weighted_backward_kernel(
    gx_ptr, x_ptr, gy_ptr, y_ptr, d_ptr, m_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    RELU: tl.constexpr, CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx_i = sum_w a_w exp(x_i - M_w) (1 + x_i - y_w) (softmax) or, RELU,
    sum_w (D_w > 0 ? a_w [x_i > 0] (2 x_i - y_w) : gy_w / n_w), with a = gy / D."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, ih, iw = _decompose(i, C, H, W, CL)
    at_x = n * sxn + c * sxc + ih * sxh + iw * sxw
    v = tl.load(x_ptr + at_x, mask=live, other=0.0).to(acc_t)
    grad = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            oh, ow, ok = _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW)
            o = n * son + c * soc + oh * soh + ow * sow
            gy = tl.load(gy_ptr + o, mask=ok, other=0.0).to(acc_t)
            den = tl.load(d_ptr + o, mask=ok, other=1.0).to(acc_t)
            y = tl.load(y_ptr + o, mask=ok, other=0.0).to(acc_t)
            a = gy / tl.where(den > 0.0, den, 1.0)
            if RELU:
                count = _window_count(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DH, DW, BLOCK)
                share = tl.where(v > 0.0, a * (v + v - y), 0.0)
                share = tl.where(den > 0.0, share, gy / count.to(acc_t))
            else:
                m = tl.load(m_ptr + o, mask=ok, other=0.0).to(acc_t)
                share = a * tl.exp(v - m) * (1.0 + v - y)
            grad += tl.where(ok, share, 0.0)
    tl.store(gx_ptr + at_x, grad.to(gx_ptr.dtype.element_ty), mask=live)


@triton.jit
def _power_sum_forward_kernel(
    x_ptr, y_ptr, s_ptr, e_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """(y, S): S = sum_R x^p (torch.pow's real powers), y = S^(1/p), 0 where S = 0."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    p, root = tl.load(e_ptr), tl.load(e_ptr + 1)  # exponents in acc_t (see _exponents)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    base = n * sxn + c * sxc
    sums = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=0.0).to(acc_t)
            sums += tl.where(real, _real_pow(v, p), 0.0)
    y = tl.where(sums == 0.0, 0.0, _real_pow(sums, root))
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(y_ptr + out, y.to(y_ptr.dtype.element_ty), mask=live)
    tl.store(s_ptr + out, sums, mask=live)


@triton.jit
def _real_pow(v, p):
    """torch.pow(v, p) for a scalar p: |v|^p, negative v: the sign of an odd integer p, NaN for no integer."""
    magnitude = tl.exp(p * tl.log(tl.where(v == 0.0, 1.0, tl.abs(v))))  # 0 handled below
    magnitude = tl.where(v == 0.0, tl.where(p == 0.0, 1.0, tl.where(p > 0.0, 0.0, float("inf"))), magnitude)
    whole = tl.floor(p) == p
    odd = whole & (tl.floor(p * 0.5) * 2.0 != p)
    signed = tl.where(odd, -magnitude, magnitude)
    return tl.where(v < 0.0, tl.where(whole, signed, float("nan")), magnitude)


@triton.jit
def _power_sum_backward_kernel(
    gx_ptr, x_ptr, gy_ptr, s_ptr, e_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx_i = x_i^(p-1) sum over the windows w containing i of [S_w != 0] gy_w S_w^(1/p - 1)."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    root_grad, p_less_one = tl.load(e_ptr + 2), tl.load(e_ptr + 3)  # exponents in acc_t (see _exponents)
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, ih, iw = _decompose(i, C, H, W, CL)
    at_x = n * sxn + c * sxc + ih * sxh + iw * sxw
    grad = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            oh, ow, ok = _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW)
            o = n * son + c * soc + oh * soh + ow * sow
            gy = tl.load(gy_ptr + o, mask=ok, other=0.0).to(acc_t)
            s = tl.load(s_ptr + o, mask=ok, other=0.0).to(acc_t)
            share = gy * _real_pow(tl.where(s == 0.0, 1.0, s), root_grad)
            grad += tl.where(ok & (s != 0.0), share, 0.0)
    v = tl.load(x_ptr + at_x, mask=live, other=0.0).to(acc_t)
    tl.store(gx_ptr + at_x, (grad * _real_pow(v, p_less_one)).to(gx_ptr.dtype.element_ty), mask=live)


def self_weighted_forward(
    x: Tensor,
    weights: str,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, D, M) of the mean weighted by softmax or relu of x itself (see :mod:`poolkit.kernels.ops`)."""
    relu = self_weight_mode(weights) == SELF_WEIGHTS["relu"]
    y, d, m = _outputs(x, out_size, (x.dtype, accumulate_dtype(x.dtype), x.dtype))
    _self_weighted_forward_kernel[_grid(y.numel())](
        x, y, d, m, y.numel(), x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
        *x.stride(), *y.stride(), **_geometry(kernel, stride, padding, dilation), RELU=relu,
        CL=memory_format(x) == torch.channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return y, d, m


def self_weighted_backward(
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
    """dx of the self-weighted mean, written once."""
    relu = self_weight_mode(weights) == SELF_WEIGHTS["relu"]
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    # grad_y, y, d and m: same shape and format, so the same strides.
    grad_y, y, d, m = (t.contiguous(memory_format=fmt) for t in (grad_y.to(x.dtype), y, d, m))
    grad_x = torch.empty_like(x, memory_format=fmt)
    _self_weighted_backward_kernel[_grid(x.numel())](
        grad_x, x, grad_y, y, d, m, x.numel(), x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
        *x.stride(), *y.stride(), **_geometry(kernel, stride, padding, dilation), RELU=relu,
        CL=channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return grad_x


def _exponents(p: float, x: Tensor) -> Tensor:
    """(p, 1/p, 1/p - 1, p - 1) on x's device in the accumulation dtype.

    Computed here in double and passed as a tensor: a Python float argument reaches a compiled Triton kernel
    as float32, and float32's 1/3 made float64 LP gradients 1.6e-7 off (seen on an H200).
    """
    p = float(p)
    values = (p, 1.0 / p, 1.0 / p - 1.0, p - 1.0)
    return torch.tensor(values, dtype=accumulate_dtype(x.dtype), device=x.device)


def power_sum_forward(
    x: Tensor,
    p: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """(y, S) of LP pooling for every window (see :mod:`poolkit.kernels.ops`)."""
    y, s = _outputs(x, out_size, (x.dtype, accumulate_dtype(x.dtype)))
    _power_sum_forward_kernel[_grid(y.numel())](
        x, y, s, _exponents(p, x), y.numel(), x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
        *x.stride(), *y.stride(), **_geometry(kernel, stride, padding, dilation),
        CL=memory_format(x) == torch.channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return y, s


def power_sum_backward(
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
    """dx of LP pooling, written once."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    grad_y, s = (t.contiguous(memory_format=fmt) for t in (grad_y.to(x.dtype), s))
    grad_x = torch.empty_like(x, memory_format=fmt)
    _power_sum_backward_kernel[_grid(x.numel())](
        grad_x, x, grad_y, s, _exponents(p, x), x.numel(), x.shape[1], x.shape[2], x.shape[3],
        s.shape[2], s.shape[3],
        *x.stride(), *s.stride(), **_geometry(kernel, stride, padding, dilation),
        CL=channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return grad_x


_registered: list[bool] = []


def register_cuda_kernels() -> None:
    """Register these kernels as the CUDA implementation of their ``poolkit::`` operators (once)."""
    if _registered:
        return
    from poolkit.kernels import ops

    ops.window_self_weighted_mean_op.register_kernel("cuda")(self_weighted_forward)
    ops.window_self_weighted_mean_backward_op.register_kernel("cuda")(self_weighted_backward)
    ops.window_power_sum_op.register_kernel("cuda")(power_sum_forward)
    ops.window_power_sum_backward_op.register_kernel("cuda")(power_sum_backward)
    _registered.append(True)
