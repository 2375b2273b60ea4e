"""What every compiled operator of :mod:`poolkit.kernels` shares: the output layout rule and allocation.

The C++ kernels apply the same layout rule (``layout_of`` in window_stats.cpp); the fake kernels allocate
what the real ones return.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["accumulate_dtype", "empty_in", "empty_out", "grad_or_zeros", "memory_format"]


def memory_format(x: Tensor) -> torch.memory_format:
    """channels_last only when it is x's layout (C > 1, not NCHW-contiguous, channels_last-contiguous).

    The C++ kernels apply the same rule (``layout_of`` in window_stats.cpp).
    """
    if x.shape[1] > 1 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_out(x: Tensor, size: Sequence[int], dtype: torch.dtype | None = None) -> Tensor:
    shape = (x.shape[0], x.shape[1], *size)
    return torch.empty(shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format(x))


def empty_in(like: Tensor, size: Sequence[int], dtype: torch.dtype, channels_last: bool) -> Tensor:
    """An input-sized (N, C, *size) tensor in the given layout."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(
        (like.shape[0], like.shape[1], *size), dtype=dtype, device=like.device, memory_format=fmt
    )


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate in (and keep their float side outputs in): float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def grad_or_zeros(grad: Tensor | None, like: Tensor, dtype: torch.dtype) -> Tensor:
    """grad in dtype, or zeros of like's shape where autograd passed None."""
    if grad is None:
        return torch.zeros(like.shape, dtype=dtype, device=like.device)
    return grad.to(dtype)
