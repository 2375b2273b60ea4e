"""Triton kernels of the window statistics: the CUDA implementation of the ``poolkit::`` custom operators.

The C++ CPU kernels' computations (``window_stats.cpp``; SoftPool's and LP's: ``triton_lp_soft``), with the
same signatures, so that :func:`register_cuda_kernels` can register them as the CUDA kernels of the
operators of :mod:`poolkit.kernels.ops`:

* :func:`max_mean_forward` -> (M, A, index) and :func:`max_mean_backward` -> dx, for the blends;
* :func:`max_topk_forward` -> (M, T_K, index, kth, tie) and :func:`max_topk_backward` -> dx, for T-Max-Avg;
* :func:`power_mean_forward` -> (y, S, S') and :func:`power_mean_backward` -> dx, for GeM;
* :func:`weighted_mean_forward` -> (y, D) and :func:`weighted_mean_backward` -> (dx, dw), for attention/LIP.

One program handles ``BLOCK`` outputs (forward) or inputs (backward), in the tensor's memory order (C
fastest for channels_last), and reads through the tensors' strides. Forward loops over the kh*kw window taps
(top-K loads the window as a [BLOCK, kh*kw] tile and sorts it); backward gathers, for each input cell, the
windows that contain it, so the input gradient is written once with no atomics. Arithmetic in float32
(float64 for float64 inputs).

They are opt-in on CUDA (``POOLKIT_FUSED=on``); the CUDA default stays the native pair until
``poolkit bench --device cuda`` has measured them on a GPU. Without a GPU they run, slowly, on CPU tensors
under Triton's interpreter (``TRITON_INTERPRET=1`` set before triton is imported), which is how
tests/test_triton_kernels.py checks them against the eager reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

from poolkit.kernels.ops import accumulate_dtype, memory_format

__all__ = [
    "max_mean_backward",
    "max_mean_forward",
    "max_topk_backward",
    "max_topk_forward",
    "power_mean_backward",
    "power_mean_forward",
    "register_cuda_kernels",
    "weighted_mean_backward",
    "weighted_mean_forward",
]

BLOCK = 128


@triton.jit
def _decompose(i, C, H, W, CL: tl.constexpr):
    """(n, c, h, w) of the flat position i of an (N, C, H, W) tensor in memory order."""
    if CL:
        c = i % C
        rest = i // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = i % W
        rest = i // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


@triton.jit
def _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW):
    """The input cell (ih, iw) that tap (th, tw) of window (oh, ow) reads, and whether it is not padding."""
    ih = oh * SH - PH + th * DH
    iw = ow * SW - PW + tw * DW
    return ih, iw, live & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)


@triton.jit
def _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW):
    """The window (oh, ow) whose tap (th, tw) reads input cell (ih, iw), and whether that window exists."""
    num_h = ih + PH - th * DH
    num_w = iw + PW - tw * DW
    oh = num_h // SH
    ow = num_w // SW
    ok = live & (num_h >= 0) & (num_h % SH == 0) & (oh < OH) & (num_w >= 0) & (num_w % SW == 0) & (ow < OW)
    return oh, ow, ok


@triton.jit
def _max_mean_forward_kernel(
    x_ptr, m_ptr, a_ptr, idx_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    best = tl.full([BLOCK], float("-inf"), acc_t)
    sums = tl.zeros([BLOCK], acc_t)
    count = tl.zeros([BLOCK], tl.int32)
    where = tl.full([BLOCK], -1, tl.int32)
    base = n * sxn + c * sxc
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=0.0).to(acc_t)
            # max_pool2d's rule: the first real cell until a strictly larger one (a NaN always wins)
            take = real & ((v > best) | (v != v))
            where = tl.where(real & (where < 0), th * KW + tw, where)
            where = tl.where(take, th * KW + tw, where)
            best = tl.where(take, v, best)
            sums += tl.where(real, v, 0.0)
            count += real.to(tl.int32)
    out = n * son + c * soc + oh * soh + ow * sow
    mean = sums / tl.maximum(count, 1).to(acc_t)
    tl.store(m_ptr + out, best.to(m_ptr.dtype.element_ty), mask=live)
    tl.store(a_ptr + out, mean.to(a_ptr.dtype.element_ty), mask=live)
    tl.store(idx_ptr + out, where, mask=live)


@triton.jit
def _max_topk_forward_kernel(
    x_ptr, m_ptr, t_ptr, idx_ptr, kth_ptr, tie_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, AREA: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    cell = tl.arange(0, AREA)  # window cells in row-major order, padded to a power of two
    ih = oh[:, None] * SH - PH + (cell // KW)[None, :] * DH
    iw = ow[:, None] * SW - PW + (cell % KW)[None, :] * DW
    real = live[:, None] & (cell < KH * KW)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    base = (n * sxn + c * sxc)[:, None]
    v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=float("-inf")).to(acc_t)
    # M and its index with max_pool2d's rule: the first maximum; with NaNs, NaN and the last NaN.
    nan = real & (v != v)
    finite_max = tl.max(tl.where(nan, float("-inf"), v), axis=1)
    first = tl.min(tl.where(real & (v == finite_max[:, None]), cell[None, :], AREA), axis=1)
    has_nan = tl.max(nan.to(tl.int32), axis=1) > 0
    last_nan = tl.max(tl.where(nan, cell[None, :], -1), axis=1)
    m = tl.where(has_nan, float("nan"), finite_max)
    where = tl.where(has_nan, last_nan, first)
    # T_K from the sorted window; the cells equal to the K-th value t share the K - #above remaining places.
    ranked = tl.sort(v, dim=1, descending=True)
    column = cell[None, :]
    kth = tl.sum(tl.where(column == K - 1, ranked, 0.0), axis=1)
    top = tl.sum(tl.where(column < K, ranked, 0.0), axis=1) / K
    above = tl.sum((real & (v > kth[:, None])).to(acc_t), axis=1)
    equal = tl.sum((real & (v == kth[:, None])).to(acc_t), axis=1)
    tie = (K - above) / (K * tl.maximum(equal, 1.0))
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(m_ptr + out, m.to(m_ptr.dtype.element_ty), mask=live)
    tl.store(t_ptr + out, top.to(t_ptr.dtype.element_ty), mask=live)
    tl.store(idx_ptr + out, where.to(tl.int32), mask=live)
    tl.store(kth_ptr + out, kth.to(kth_ptr.dtype.element_ty), mask=live)
    tl.store(tie_ptr + out, tie.to(tie_ptr.dtype.element_ty), mask=live)


@triton.jit
def _window_backward_kernel(
    gx_ptr, gm_ptr, gs_ptr, idx_ptr, x_ptr, kth_ptr, tie_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    K: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    TOPK: tl.constexpr, CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx of one input cell: the sum over the windows that contain it (gathered, written once).

    Each window passes gM if the cell is its first maximum, plus gS * share: 1/n for the mean (TOPK false),
    1/K above the K-th value and ``tie`` equal to it for the top-K mean (TOPK true).
    """
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, ih, iw = _decompose(i, C, H, W, CL)
    at_x = n * sxn + c * sxc + ih * sxh + iw * sxw
    grad = tl.zeros([BLOCK], acc_t)
    if TOPK:
        v = tl.load(x_ptr + at_x, mask=live, other=0.0).to(acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            oh, ow, ok = _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW)
            o = n * son + c * soc + oh * soh + ow * sow
            hit = tl.load(idx_ptr + o, mask=ok, other=-1) == th * KW + tw
            grad += tl.where(hit, tl.load(gm_ptr + o, mask=ok, other=0.0).to(acc_t), 0.0)
            gs = tl.load(gs_ptr + o, mask=ok, other=0.0).to(acc_t)
            if TOPK:
                t = tl.load(kth_ptr + o, mask=ok, other=0.0).to(acc_t)
                tie = tl.load(tie_ptr + o, mask=ok, other=0.0).to(acc_t)
                share = tl.where(v > t, 1.0 / K, tl.where(v == t, tie, 0.0))
            else:  # 1 / n, n the real cells of window (oh, ow)
                count_h = tl.zeros([BLOCK], tl.int32)
                for t in tl.static_range(KH):
                    r = oh * SH - PH + t * DH
                    count_h += ((r >= 0) & (r < H)).to(tl.int32)
                count_w = tl.zeros([BLOCK], tl.int32)
                for t in tl.static_range(KW):
                    r = ow * SW - PW + t * DW
                    count_w += ((r >= 0) & (r < W)).to(tl.int32)
                share = 1.0 / tl.maximum(count_h * count_w, 1).to(acc_t)
            grad += tl.where(ok, gs * share, 0.0)
    tl.store(gx_ptr + at_x, grad.to(gx_ptr.dtype.element_ty), mask=live)


def _geometry(kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int]):
    return {
        "KH": int(kernel[0]), "KW": int(kernel[1]), "SH": int(stride[0]), "SW": int(stride[1]),
        "PH": int(padding[0]), "PW": int(padding[1]), "DH": int(dilation[0]), "DW": int(dilation[1]),
    }  # fmt: skip


def _grid(total: int) -> tuple[int]:
    return (triton.cdiv(total, BLOCK),)


def _outputs(x: Tensor, out_size: Sequence[int], dtypes: Sequence[torch.dtype]) -> list[Tensor]:
    fmt = memory_format(x)
    shape = (x.shape[0], x.shape[1], int(out_size[0]), int(out_size[1]))
    return [torch.empty(shape, dtype=d, device=x.device, memory_format=fmt) for d in dtypes]


def max_mean_forward(
    x: Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(M, A, index) of every window (see :mod:`poolkit.kernels.ops`); outputs in x's memory format."""
    m, a, idx = _outputs(x, out_size, (x.dtype, x.dtype, torch.int32))
    _max_mean_forward_kernel[_grid(m.numel())](
        x, m, a, idx, m.numel(), x.shape[1], x.shape[2], x.shape[3], m.shape[2], m.shape[3],
        *x.stride(), *m.stride(), **_geometry(kernel, stride, padding, dilation),
        CL=memory_format(x) == torch.channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return m, a, idx


def max_topk_forward(
    x: Tensor,
    k: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(M, T_K, index, kth, tie) of every window (see :mod:`poolkit.kernels.ops`)."""
    acc = accumulate_dtype(x.dtype)
    m, t, idx, kth, tie = _outputs(x, out_size, (x.dtype, x.dtype, torch.int32, x.dtype, acc))
    area = triton.next_power_of_2(int(kernel[0]) * int(kernel[1]))
    _max_topk_forward_kernel[_grid(m.numel())](
        x, m, t, idx, kth, tie, m.numel(), x.shape[1], x.shape[2], x.shape[3], m.shape[2], m.shape[3],
        *x.stride(), *m.stride(), K=int(k), **_geometry(kernel, stride, padding, dilation), AREA=area,
        CL=memory_format(x) == torch.channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return m, t, idx, kth, tie


def _backward(
    grad_m: Tensor,
    grad_s: Tensor,
    idx: Tensor,
    x: Tensor | None,
    kth: Tensor | None,
    tie: Tensor | None,
    k: int,
    in_size: Sequence[int],
    geometry: dict[str, int],
    channels_last: bool,
) -> Tensor:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    # Same shape and memory format -> same strides: one set of output strides serves all output tensors.
    idx, grad_m, grad_s = (t.contiguous(memory_format=fmt) for t in (idx, grad_m, grad_s))
    shape = (idx.shape[0], idx.shape[1], int(in_size[0]), int(in_size[1]))
    grad_x = torch.empty(shape, dtype=grad_m.dtype, device=idx.device, memory_format=fmt)
    topk = x is not None
    if topk:
        assert kth is not None and tie is not None
        x, kth, tie = (t.contiguous(memory_format=fmt) for t in (x, kth, tie))
    else:
        x = kth = tie = grad_m  # not read
    _window_backward_kernel[_grid(grad_x.numel())](
        grad_x, grad_m, grad_s, idx, x, kth, tie, grad_x.numel(), shape[1], shape[2], shape[3],
        idx.shape[2], idx.shape[3], *grad_x.stride(), *idx.stride(), K=int(k), **geometry, TOPK=topk,
        CL=channels_last, DOUBLE=grad_m.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return grad_x


def max_mean_backward(
    grad_m: Tensor,
    grad_a: Tensor,
    idx: Tensor,
    in_size: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """dx of (M, A): gM to each window's first maximum plus gA / n to every real cell."""
    geometry = _geometry(kernel, stride, padding, dilation)
    return _backward(grad_m, grad_a, idx, None, None, None, 1, in_size, geometry, channels_last)


def max_topk_backward(
    grad_m: Tensor,
    grad_t: Tensor,
    x: Tensor,
    idx: Tensor,
    kth: Tensor,
    tie: Tensor,
    k: int,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    channels_last: bool,
) -> Tensor:
    """dx of (M, T_K): gM to the first maximum, gT / K above the K-th value, gT * tie equal to it."""
    geometry = _geometry(kernel, stride, padding, dilation)
    return _backward(grad_m, grad_t, idx, x, kth, tie, k, x.shape[-2:], geometry, channels_last)


@triton.jit
def _power_mean_forward_kernel(
    x_ptr, p_ptr, y_ptr, s_ptr, ds_ptr, eps,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    p = tl.load(p_ptr).to(acc_t)
    sums = tl.zeros([BLOCK], acc_t)
    dsums = tl.zeros([BLOCK], acc_t)
    count = tl.zeros([BLOCK], tl.int32)
    base = n * sxn + c * sxc
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=real, other=1.0).to(acc_t)
            z = tl.where(v < eps, eps, v)  # clamp(x, min=eps); a NaN stays NaN
            lz = tl.log(z)
            zp = tl.exp(p * lz)
            sums += tl.where(real, zp, 0.0)
            dsums += tl.where(real, zp * lz, 0.0)
            count += real.to(tl.int32)
    n_real = tl.maximum(count, 1).to(acc_t)
    mean = tl.where(live, sums / n_real, 1.0)  # lanes past the end: no log(0)
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(y_ptr + out, tl.exp(tl.log(mean) / p).to(y_ptr.dtype.element_ty), mask=live)
    tl.store(s_ptr + out, mean, mask=live)
    tl.store(ds_ptr + out, dsums / n_real, mask=live)


@triton.jit
def _power_mean_backward_kernel(
    gx_ptr, x_ptr, gy_ptr, s_ptr, p_ptr, eps,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """dx_i = z_i^(p-1) [x_i >= eps] sum over the windows w containing i of gy_w S_w^(1/p - 1) / n_w."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, ih, iw = _decompose(i, C, H, W, CL)
    p = tl.load(p_ptr).to(acc_t)
    at_x = n * sxn + c * sxc + ih * sxh + iw * sxw
    grad = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            oh, ow, ok = _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW)
            o = n * son + c * soc + oh * soh + ow * sow
            gy = tl.load(gy_ptr + o, mask=ok, other=0.0).to(acc_t)
            mean = tl.load(s_ptr + o, mask=ok, other=1.0).to(acc_t)
            count = _window_count(oh, ow, H, W, KH, KW, SH, SW, PH, PW, DH, DW, BLOCK)
            grad += tl.where(ok, gy * tl.exp((1.0 / p - 1.0) * tl.log(mean)) / count.to(acc_t), 0.0)
    v = tl.load(x_ptr + at_x, mask=live, other=1.0).to(acc_t)
    z = tl.where(v < eps, eps, v)
    factor = tl.where(v >= eps, tl.exp((p - 1.0) * tl.log(z)), 0.0)
    tl.store(gx_ptr + at_x, (grad * factor).to(gx_ptr.dtype.element_ty), mask=live)


@triton.jit
def _window_count(
    oh, ow, H, W,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """n: the real cells of window (oh, ow) (at least 1)."""
    count_h = tl.zeros([BLOCK], tl.int32)
    for t in tl.static_range(KH):
        r = oh * SH - PH + t * DH
        count_h += ((r >= 0) & (r < H)).to(tl.int32)
    count_w = tl.zeros([BLOCK], tl.int32)
    for t in tl.static_range(KW):
        r = ow * SW - PW + t * DW
        count_w += ((r >= 0) & (r < W)).to(tl.int32)
    return tl.maximum(count_h * count_w, 1)


@triton.jit
def _weighted_mean_forward_kernel(
    x_ptr, w_ptr, y_ptr, d_ptr, eps,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, swn, swc, swh, sww, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, oh, ow = _decompose(i, C, OH, OW, CL)
    num = tl.zeros([BLOCK], acc_t)
    den = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            ih, iw, real = _cell_of(oh, ow, th, tw, live, H, W, SH, SW, PH, PW, DH, DW)
            v = tl.load(x_ptr + n * sxn + c * sxc + ih * sxh + iw * sxw, mask=real, other=0.0).to(acc_t)
            w = tl.load(w_ptr + n * swn + c * swc + ih * swh + iw * sww, mask=real, other=0.0).to(acc_t)
            num += w * v
            den += w
    den += eps
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(y_ptr + out, (num / den).to(y_ptr.dtype.element_ty), mask=live)
    tl.store(d_ptr + out, den, mask=live)


@triton.jit
def _weighted_mean_backward_kernel(
    gx_ptr, gw_ptr, x_ptr, w_ptr, gy_ptr, y_ptr, d_ptr,
    total, C, H, W, OH, OW,
    sxn, sxc, sxh, sxw, swn, swc, swh, sww, son, soc, soh, sow,
    KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
    CL: tl.constexpr, DOUBLE: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """With a = gy / D: dx_i = w_i sum_w a_w, dw_i = x_i sum_w a_w - sum_w a_w y_w (dw at x's shape)."""
    acc_t = tl.float64 if DOUBLE else tl.float32
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    live = i < total
    n, c, ih, iw = _decompose(i, C, H, W, CL)
    sum_a = tl.zeros([BLOCK], acc_t)
    sum_b = tl.zeros([BLOCK], acc_t)
    for th in tl.static_range(KH):
        for tw in tl.static_range(KW):
            oh, ow, ok = _window_of(ih, iw, th, tw, live, OH, OW, SH, SW, PH, PW, DH, DW)
            o = n * son + c * soc + oh * soh + ow * sow
            share = tl.load(gy_ptr + o, mask=ok, other=0.0).to(acc_t) / tl.load(d_ptr + o, mask=ok, other=1.0)
            sum_a += share
            sum_b += share * tl.load(y_ptr + o, mask=ok, other=0.0).to(acc_t)
    at_x = n * sxn + c * sxc + ih * sxh + iw * sxw
    v = tl.load(x_ptr + at_x, mask=live, other=0.0).to(acc_t)
    w = tl.load(w_ptr + n * swn + c * swc + ih * swh + iw * sww, mask=live, other=0.0).to(acc_t)
    tl.store(gx_ptr + at_x, (sum_a * w).to(gx_ptr.dtype.element_ty), mask=live)
    tl.store(gw_ptr + at_x, (sum_a * v - sum_b).to(gw_ptr.dtype.element_ty), mask=live)


def power_mean_forward(
    x: Tensor,
    p: Tensor,
    eps: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor, Tensor]:
    """(y, S, S') of GeM for every window (see :mod:`poolkit.kernels.ops`)."""
    acc = accumulate_dtype(x.dtype)
    y, s, ds = _outputs(x, out_size, (x.dtype, acc, acc))
    _power_mean_forward_kernel[_grid(y.numel())](
        x, p.to(device=x.device, dtype=acc), y, s, ds, float(eps), y.numel(), x.shape[1], x.shape[2],
        x.shape[3], y.shape[2], y.shape[3], *x.stride(), *y.stride(),
        **_geometry(kernel, stride, padding, dilation), CL=memory_format(x) == torch.channels_last,
        DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return y, s, ds


def power_mean_backward(
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
    """dx of GeM's power mean, written once (the gradient of p comes from S and S' in Python)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    s = s.contiguous(memory_format=fmt)
    grad_y = grad_y.to(x.dtype).contiguous(memory_format=fmt)  # same shape and format as s: same strides
    grad_x = torch.empty_like(x, memory_format=fmt)
    _power_mean_backward_kernel[_grid(x.numel())](
        grad_x, x, grad_y, s, p.to(device=x.device, dtype=s.dtype), float(eps), x.numel(), x.shape[1],
        x.shape[2], x.shape[3], s.shape[2], s.shape[3], *x.stride(), *s.stride(),
        **_geometry(kernel, stride, padding, dilation), CL=channels_last, DOUBLE=x.dtype == torch.float64,
        BLOCK=BLOCK,
    )  # fmt: skip
    return grad_x


def weighted_mean_forward(
    x: Tensor,
    w: Tensor,
    eps: float,
    kernel: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int],
) -> tuple[Tensor, Tensor]:
    """(y, D) of the weighted mean of every window; w of x's shape or (N, 1, H, W) (read with stride 0)."""
    acc = accumulate_dtype(x.dtype)
    y, d = _outputs(x, out_size, (x.dtype, acc))
    weights = w.to(x.dtype).expand(x.shape)
    _weighted_mean_forward_kernel[_grid(y.numel())](
        x, weights, y, d, float(eps), y.numel(), x.shape[1], x.shape[2], x.shape[3], y.shape[2], y.shape[3],
        *x.stride(), *weights.stride(), *y.stride(), **_geometry(kernel, stride, padding, dilation),
        CL=memory_format(x) == torch.channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return y, d


def weighted_mean_backward(
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
    """(dx, dw of w's shape) of the weighted mean (a shared w's dw summed over the channels)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=fmt)
    weights = w.to(x.dtype).expand(x.shape)
    # grad_y, y and d: same shape and format, so the same strides.
    grad_y, y, d = (t.contiguous(memory_format=fmt) for t in (grad_y.to(x.dtype), y, d))
    grad_x = torch.empty_like(x, memory_format=fmt)
    grad_w = torch.empty_like(x, memory_format=fmt)
    _weighted_mean_backward_kernel[_grid(x.numel())](
        grad_x, grad_w, x, weights, grad_y, y, d, x.numel(), x.shape[1], x.shape[2], x.shape[3],
        y.shape[2], y.shape[3], *x.stride(), *weights.stride(), *y.stride(),
        **_geometry(kernel, stride, padding, dilation),
        CL=channels_last, DOUBLE=x.dtype == torch.float64, BLOCK=BLOCK,
    )  # fmt: skip
    return grad_x, grad_w if w.shape[1] == x.shape[1] else grad_w.sum(1, keepdim=True)  # dw: w's shape


_registered: list[bool] = []


def register_cuda_kernels() -> None:
    """Register these kernels as the CUDA implementation of the ``poolkit::`` operators (once)."""
    if _registered:
        return
    from poolkit.kernels import ops

    ops.window_max_mean_op.register_kernel("cuda")(max_mean_forward)
    ops.window_max_mean_backward_op.register_kernel("cuda")(max_mean_backward)
    ops.window_max_topk_mean_op.register_kernel("cuda")(max_topk_forward)
    ops.window_max_topk_mean_backward_op.register_kernel("cuda")(max_topk_backward)
    ops.window_power_mean_op.register_kernel("cuda")(power_mean_forward)
    ops.window_power_mean_backward_op.register_kernel("cuda")(power_mean_backward)
    ops.window_weighted_mean_op.register_kernel("cuda")(weighted_mean_forward)
    ops.window_weighted_mean_backward_op.register_kernel("cuda")(weighted_mean_backward)
    _registered.append(True)
