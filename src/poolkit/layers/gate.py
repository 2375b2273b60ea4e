"""The blends of the window maximum M with the window mean A or the top-K mean T_K, one operator each way.

``y = lambda * M + (1 - lambda) * S``, S = A or T_K, with lambda from a parameter by a gate: the study's
blends (Mixed, Channel-Adaptive, Stochastic Mix) and its T-Max-Avg family (T-Max-Avg, Soft T-Max-Avg,
Learnable-T) are all this one function. On the compiled CPU path the gate runs inside the window kernels
(``poolkit::window_max_mean_blend`` and ``poolkit::window_max_topk_blend``, :mod:`poolkit.kernels.ops`), so a
pool costs one operator forward and one backward; on every other path it is the reference: M and S from
:mod:`poolkit.layers.fused` and the gate as torch ops.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from poolkit.kernels.ops import GATES, accumulate_dtype, window_max_mean_blend_op, window_max_topk_blend_op
from poolkit.layers.fused import geometry_args, kernel_path, window_max_mean, window_max_topk_mean
from poolkit.layers.windows import Geometry

__all__ = ["Gate", "window_blend"]

Gate = Literal["lerp", "hard", "soft"]


def window_blend(
    x: Tensor,
    geometry: Geometry,
    param: Tensor | float,
    *,
    k: int | None = None,
    gate: Gate = "lerp",
    tau: float = 1.0,
) -> Tensor:
    """``y = lambda * M + (1 - lambda) * S`` of every window: the blends and the T-Max-Avg family in one call.

    S is the window mean A (``k`` None, or ``k >= kh * kw``) or the top-K mean T_K; lambda follows from
    ``param`` (a float, a 0-d tensor, or a tensor broadcastable to (N, C, 1, 1): one value per channel or
    per (sample, channel)) by the gate:

    * ``"lerp"``: ``lambda = param`` (Mixed, Channel-Adaptive, Stochastic Mix), ``torch.lerp(S, M, lambda)``;
    * ``"hard"``: ``lambda = [M >= param]`` (T-Max-Avg), ``torch.where(M >= T, M, S)``;
    * ``"soft"``: ``lambda = sigmoid((M - param) / tau)`` (Soft T-Max-Avg, Learnable-T).

    On the compiled CPU path (:func:`kernel_path` ``"compiled"``) one operator computes y with its
    gradients for x and param (forward: one pass over the input; backward: one write of the input gradient;
    saved: the index of the maximum, lambda and dy/dparam per output, plus x, the K-th value and the tie
    share for T_K). Every other path (CUDA included) is the reference: :func:`window_max_mean` or
    :func:`window_max_topk_mean` and the gate as elementwise torch ops.

    Shape:
        (N, C, H, W) -> (N, C, H_out, W_out) in the input's memory format.

    Example:
        >>> from poolkit.layers.windows import PoolGeometry
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(window_blend(x, PoolGeometry.create(2), 0.5).item(), 6)   # (0.25 + 0.15) / 2
        0.2
        >>> round(window_blend(x, PoolGeometry.create(2), 0.3, k=2, gate="hard").item(), 6)   # M < 0.3: T_2
        0.225
    """
    topk = k is not None and k < geometry.area
    # The blend operators are C++ only: on CUDA "compiled" means the Triton M/A and T_K kernels.
    compiled = x.device.type == "cpu" and kernel_path(x, geometry, k if topk else None) == "compiled"
    if k != 1 and compiled:
        p = _param_matrix(param, x, gate)
        if p is not None:
            args = geometry_args(geometry, x)
            if topk:
                return window_max_topk_blend_op(x, p, k, GATES[gate], float(tau), *args)[0]
            return window_max_mean_blend_op(x, p, GATES[gate], float(tau), *args)[0]
    m, s = window_max_mean(x, geometry) if k is None else window_max_topk_mean(x, geometry, k)
    s = s.to(m.dtype)  # torch.lerp needs one dtype (CUDA autocast computes some sums in float32)
    if gate == "lerp":
        return torch.lerp(s, m, param.to(x.dtype) if isinstance(param, Tensor) else float(param))
    if gate == "hard":
        return torch.where(m >= param, m, s)
    if isinstance(param, Tensor):
        param = param.to(m.dtype)
    return torch.lerp(s, m, torch.sigmoid((m - param) / tau))


def _param_matrix(param: Tensor | float, x: Tensor, gate: Gate) -> Tensor | None:
    """The blend parameter as the (1 or N, 1 or C) matrix of the blend operators; None if it is not one.

    A float threshold of the hard gate is rounded to x's dtype, as ``M >= T`` compares it in torch.
    """
    if not isinstance(param, Tensor):
        dtype = x.dtype if gate == "hard" else accumulate_dtype(x.dtype)
        return torch.full((1, 1), float(param), dtype=dtype)
    if not param.is_floating_point() or param.device != x.device:
        return None
    n, c = x.shape[:2]
    if param.dim() == 0:
        return param.reshape(1, 1)
    if param.dim() == 1 and param.shape[0] in (1, c):
        return param.reshape(1, -1)
    shape = tuple(param.shape)
    if len(shape) == x.dim() and shape[0] in (1, n) and shape[1] in (1, c) and all(d == 1 for d in shape[2:]):
        return param.reshape(shape[0], shape[1])
    return None
