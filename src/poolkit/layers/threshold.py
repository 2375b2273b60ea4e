"""Threshold pooling from the adaptive-pooling study: T-Max-Avg, Soft T-Max-Avg and Learnable-T.

Per output cell: M is the window maximum and T_K the mean of its K largest real cells (K clipped to
the n real cells). T-Max-Avg keeps the maximum when it is large enough (M >= T) and otherwise falls
back to the top-K mean; the soft forms replace the switch by a sigmoid so the threshold can learn.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from poolkit.layers.base import (
    OutputSize,
    Pool2d,
    PoolForm,
    Size2,
    adaptive_limit,
    channel_param,
    channel_view,
    check_k,
    check_positive,
    prepare,
)
from poolkit.layers.gate import window_blend
from poolkit.layers.windows import Geometry
from poolkit.registry import register_pool

__all__ = [
    "LearnableTPool",
    "SoftTMaxAvgPool",
    "TMaxAvgPool",
    "learnable_t_pool2d",
    "soft_t_max_avg_pool2d",
    "t_max_avg_pool2d",
]


def _t_max_avg(x: Tensor, g: Geometry, k: int, threshold: Tensor | float) -> Tensor:
    return window_blend(x, g, threshold, k=k, gate="hard")


def _soft_t_max_avg(x: Tensor, g: Geometry, k: int, threshold: Tensor | float, tau: float) -> Tensor:
    return window_blend(x, g, threshold, k=k, gate="soft", tau=tau)


def t_max_avg_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    k: int = 4,
    threshold: float = 0.3,
    form: PoolForm | None = None,
) -> Tensor:
    """T-Max-Avg: ``y = M if M >= T else T_K``.

    Args:
        k: K, how many of the largest cells to average when the maximum is below the threshold.
        threshold: T.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(t_max_avg_pool2d(x, 2, k=4, threshold=0.3).item(), 6)   # M = 0.25 < T: T_4 = A
        0.15
        >>> round(t_max_avg_pool2d(x, 2, k=2, threshold=0.3).item(), 6)   # T_2 = (0.25 + 0.2) / 2
        0.225
    """
    name = form.name if form is not None and form.name else "t_max_avg_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    check_k(k, adaptive_limit(g, form), name)
    return finish(_t_max_avg(x, g, k, threshold))


def soft_t_max_avg_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    k: int = 4,
    threshold: float | Tensor = 0.3,
    tau: float = 0.1,
    form: PoolForm | None = None,
) -> Tensor:
    """Soft T-Max-Avg: ``alpha = sigmoid((M - T) / tau)``, ``y = alpha * M + (1 - alpha) * T_K``.

    ``threshold`` may be a float, a 0-d tensor or one value per channel (shape (C,)).

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(soft_t_max_avg_pool2d(x, 2).item(), 6)   # alpha = sigmoid(-0.5) = 0.377541
        0.187754
    """
    name = form.name if form is not None and form.name else "soft_t_max_avg_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    check_k(k, adaptive_limit(g, form), name)
    check_positive(tau, "tau", name)
    t = channel_param(threshold, x, "threshold", name)
    return finish(_soft_t_max_avg(x, g, k, t, tau))


def learnable_t_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    threshold: Tensor,
    k: int = 4,
    tau: float = 0.1,
    form: PoolForm | None = None,
) -> Tensor:
    """Learnable-T: ``alpha = sigmoid((M - T)/tau)``, ``y = alpha M + (1-alpha) T_K`` with a learned tensor T.

    T is a parameter: a scalar or one value per channel.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(learnable_t_pool2d(x, 2, threshold=torch.tensor(0.3)).item(), 6)
        0.187754
    """
    name = form.name if form is not None and form.name else "learnable_t_pool2d"
    if not isinstance(threshold, Tensor):
        raise ValueError(f"{name}: threshold must be a tensor (use soft_t_max_avg_pool2d for a float)")
    return soft_t_max_avg_pool2d(
        input, kernel_size, stride, padding, dilation, ceil_mode, k=k, threshold=threshold, tau=tau, form=form
    )


@register_pool(
    "tmaxavg",
    functional=t_max_avg_pool2d,
    family="study",
    title="T-Max-Avg",
    formula="y = M if M >= T else T_K",
)
class TMaxAvgPool(Pool2d):
    """T-Max-Avg pooling (the study's eq. 2): ``y = M if M >= T else T_K``. No learnable parameters.

    Args:
        k: K (default 4); must not exceed the window's ``kh * kw`` cells.
        threshold: T (default 0.3).

    Example:
        >>> pool = TMaxAvgPool(2, k=2, threshold=0.3)
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.225
    """

    def __init__(
        self,
        kernel_size: Size2 | None,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        spatial_dims: int = 2,
        output_size: OutputSize = None,
        k: int = 4,
        threshold: float = 0.3,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        self.k = check_k(k, self.geometry, type(self).__name__)
        self.threshold = float(threshold)

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _t_max_avg(x, geometry, self.k, self.threshold)

    def functional_kwargs(self) -> dict[str, object]:
        return {"k": self.k, "threshold": self.threshold}


@register_pool(
    "soft_tmaxavg",
    functional=soft_t_max_avg_pool2d,
    family="study",
    title="Soft T-Max-Avg",
    formula="alpha = sigmoid((M - T) / tau), y = alpha * M + (1 - alpha) * T_K",
)
class SoftTMaxAvgPool(Pool2d):
    """Soft T-Max-Avg (the study's eq. 3): ``alpha = sigmoid((M - T)/tau)``, ``y = alpha M + (1-alpha) T_K``.

    No learnable parameters; gradients reach every top-K cell and the maximum.

    Args:
        k: K (default 4). threshold: T (default 0.3). tau: temperature > 0 (default 0.1).

    Example:
        >>> round(SoftTMaxAvgPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.187754
    """

    def __init__(
        self,
        kernel_size: Size2 | None,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        spatial_dims: int = 2,
        output_size: OutputSize = None,
        k: int = 4,
        threshold: float = 0.3,
        tau: float = 0.1,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        self.k = check_k(k, self.geometry, type(self).__name__)
        self.threshold = float(threshold)
        self.tau = float(check_positive(tau, "tau", type(self).__name__))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _soft_t_max_avg(x, geometry, self.k, self.threshold, self.tau)

    def functional_kwargs(self) -> dict[str, object]:
        return {"k": self.k, "threshold": self.threshold, "tau": self.tau}


@register_pool(
    "learnable_t",
    functional=learnable_t_pool2d,
    family="study",
    title="Learnable-T",
    formula="alpha = sigmoid((M - T)/tau), y = alpha M + (1-alpha) T_K with a learned tensor T",
)
class LearnableTPool(Pool2d):
    """Learnable-T: Soft T-Max-Avg whose threshold T is a learnable parameter initialised at ``threshold``.

    One T per layer, or one per channel with ``per_channel=True`` (then ``channels`` is required).
    T needs no range: any real threshold is meaningful.

    Parameters per layer: 1, or C with ``per_channel=True``.

    Example:
        >>> pool = LearnableTPool(2)
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.187754
        >>> pool.learned_values()
        {'threshold': [0.30000001192092896]}
    """

    def __init__(
        self,
        kernel_size: Size2 | None,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        spatial_dims: int = 2,
        output_size: OutputSize = None,
        k: int = 4,
        threshold: float = 0.3,
        tau: float = 0.1,
        per_channel: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if per_channel and channels is None:
            raise ValueError("LearnableTPool(per_channel=True) needs channels=<number of input channels>")
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        self.k = check_k(k, self.geometry, type(self).__name__)
        self.tau = float(check_positive(tau, "tau", type(self).__name__))
        self.per_channel = bool(per_channel)
        shape = (channels,) if per_channel else ()
        self.threshold = nn.Parameter(torch.full(shape, float(threshold), device=device, dtype=dtype))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        t = channel_view(self.threshold, x)
        return _soft_t_max_avg(x, geometry, self.k, t, self.tau)

    def functional_kwargs(self) -> dict[str, object]:
        return {"threshold": self.threshold, "k": self.k, "tau": self.tau}

    def learned_values(self) -> dict[str, list[float]]:
        return {"threshold": self.threshold.detach().float().flatten().tolist()}

    def _option_repr(self) -> dict[str, object]:
        return {"k": self.k, "tau": self.tau, "per_channel": self.per_channel}
