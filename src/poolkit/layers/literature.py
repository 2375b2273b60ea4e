"""Pooling methods from the literature: stochastic pooling, GeM and anti-aliased (blur) max pooling.

(The mixed max-average pool is in :mod:`poolkit.layers.blend`, SoftPool and LIP in
:mod:`poolkit.layers.attention`, next to the methods they share their machinery with.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poolkit.layers.base import (
    OutputSize,
    Pool2d,
    PoolForm,
    Size2,
    check_positive,
    conv_nd,
    form_dims,
    prepare,
)
from poolkit.layers.fused import kernel_path, window_power_mean, window_self_weighted_mean_compiled
from poolkit.layers.windows import (
    Geometry,
    PoolGeometry,
    min_window_count,
    unfold_windows,
    window_mask,
    window_mean,
    window_sum,
)
from poolkit.registry import register_pool

__all__ = [
    "BlurMaxPool",
    "GeMPool",
    "StochasticPool",
    "blur_max_pool2d",
    "gem_pool2d",
    "stochastic_pool2d",
]


def _stochastic(x: Tensor, g: Geometry, training: bool) -> Tensor:
    if not training:
        if kernel_path(x, g) == "compiled":  # one pass; the weights relu(x) computed in the kernel
            return window_self_weighted_mean_compiled(x, g, "relu")
        positive = F.relu(x)
        total = window_sum(positive, g)
        has_mass = total > 0
        # where() with a safe denominator: a 0/0 branch would poison the gradient even when unselected.
        weighted = window_sum(positive * x, g) / torch.where(has_mass, total, torch.ones_like(total))
        return torch.where(has_mass, weighted, window_mean(x, g))
    windows = unfold_windows(x, g, 0.0)
    mass = F.relu(windows.detach()).float()
    if min_window_count(g, *x.shape[2:]) < g.area:
        real = window_mask(g, *x.shape[2:], device=x.device).float()
    else:
        real = torch.ones((), device=x.device)
    # p_i = relu(x_i) / sum relu(x); uniform over the real cells when that sum is 0.
    mass = torch.where(mass.sum(-1, keepdim=True) > 0, mass, real.expand_as(mass))
    cdf = mass.cumsum(-1)
    u = torch.rand((*cdf.shape[:-1], 1), device=x.device, dtype=cdf.dtype) * cdf[..., -1:]
    index = (cdf <= u).sum(-1, keepdim=True).clamp_max(windows.shape[-1] - 1)
    return windows.gather(-1, index).squeeze(-1)


def stochastic_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    training: bool = False,
    form: PoolForm | None = None,
) -> Tensor:
    """Stochastic pooling: ``p_i = relu(x_i) / sum_R relu(x)``; ``y = x_j, j ~ p`` (train), ``sum_R p_i x_i``.

    Zeiler & Fergus, ICLR 2013. Evaluation returns the probability-weighted average; ``p`` is uniform
    over R when ``sum_R relu(x) = 0``; training draws the cell ``j`` from torch's global generator.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(stochastic_pool2d(x, 2).item(), 6)   # (0.01 + 0.04 + 0.0025 + 0.0625) / 0.6
        0.191667
    """
    name = form.name if form is not None and form.name else "stochastic_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    return finish(_stochastic(x, g, training))


def _gem(x: Tensor, g: Geometry, p: Tensor | float, eps: float) -> Tensor:
    # One pass where compiled; the reference pools low-precision inputs in float32 (x^p overflows float16).
    return window_power_mean(x, g, p, eps)


def gem_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    p: float | Tensor = 3.0,
    eps: float = 1e-6,
    form: PoolForm | None = None,
) -> Tensor:
    """Generalized-mean pooling: ``y = (mean_R clamp(x, eps)^p)^(1/p)``.

    ``p = 1`` is average pooling and ``p -> inf`` tends to max pooling.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(gem_pool2d(x, 2, p=3.0).item(), 5)   # 0.0061875^(1/3) = 0.1835855 (float32: +-2 ulp)
        0.18359
    """
    name = form.name if form is not None and form.name else "gem_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    check_positive(p, "p", name)
    check_positive(eps, "eps", name)
    return finish(_gem(x, g, p, eps))


def _binomial_filter(size: int, spatial_dims: int = 2) -> Tensor:
    """The normalised binomial filter of ``size`` taps per axis ((1 + z)^(size - 1) coefficients), shape
    ``(size,) * spatial_dims``."""
    row = torch.tensor([math.comb(size - 1, i) for i in range(size)], dtype=torch.float64)
    row = row / row.sum()
    filt = row
    for _ in range(spatial_dims - 1):
        filt = filt[..., None] * row
    return filt


def _blur_max(x: Tensor, g: PoolGeometry, blur: Tensor) -> Tensor:
    sizes = tuple(x.shape[2:])
    out = g.output_size(*sizes)
    n = len(sizes)
    while blur.dim() < n:  # a 1-D filter on a lifted (N, C, 1, L) input blurs along L only
        blur = blur.unsqueeze(0)
    taps = tuple(blur.shape)
    pads, blur_pads, keep = [], [], []
    for length, n_out, s, p, span, t in zip(sizes, out, g.stride, g.padding, g.span, taps, strict=True):
        before, after = (t - 1) // 2, t - 1 - (t - 1) // 2
        dense = length + 2 * p - span + 1  # positions of a stride-1 max pool
        needed = (n_out - 1) * s + 1  # the pool's own window starts are 0, s, ..., (n_out - 1) s
        extra = max(0, needed - dense)  # ceil_mode: the last window reaches past the padding
        pads.append((p, p + extra))
        blur_pads.append((before, after))
        keep.append(min(max(dense, needed), needed + after))
    x = F.pad(x, [v for pair in reversed(pads) for v in pair], value=float("-inf"))
    max_pool = F.max_pool2d if n == 2 else F.max_pool3d
    dense_max = max_pool(x, g.kernel_size, 1, 0, g.dilation)[(..., *(slice(0, k) for k in keep))]
    for axis, (k, pair) in enumerate(zip(keep, blur_pads, strict=True)):
        if max(pair) == 0:
            continue
        # Reflect (as Zhang's BlurPool) where the axis is long enough, else replicate; axis by axis, so that
        # a 1-D pool equals the 2-D pool with kernel (1, k).
        flat = [0] * (2 * n)
        flat[2 * (n - 1 - axis)], flat[2 * (n - 1 - axis) + 1] = pair
        dense_max = F.pad(dense_max, flat, mode="reflect" if k > max(pair) else "replicate")
    channels = dense_max.shape[1]
    weight = blur.to(dtype=dense_max.dtype, device=dense_max.device).expand(channels, 1, *taps)
    y = conv_nd(dense_max, weight, stride=g.stride, groups=channels)
    return y[(..., *(slice(0, o) for o in out))]


def blur_max_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    filter_size: int = 3,
    form: PoolForm | None = None,
) -> Tensor:
    """Anti-aliased max pooling (Zhang 2019): dense max (stride 1), then a binomial blur with the stride.

    The blur is centred on the pool's own window positions, so the output has ``nn.MaxPool2d``'s
    shape; the dense max map is reflect-padded for the blur (as Zhang's BlurPool), replicate-padded along
    an axis too short to reflect. The 1-D and 3-D forms blur along every spatial axis.
    ``filter_size = 1`` gives plain max pooling; 3 is the binomial [1, 2, 1] / 4 per axis.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> blur_max_pool2d(x, 2).item()   # one window: nothing to blur with
        0.25
    """
    name = form.name if form is not None and form.name else "blur_max_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    _check_filter_size(filter_size, name)
    assert isinstance(g, PoolGeometry)
    return finish(_blur_max(x, g, _binomial_filter(filter_size, form_dims(form))))


def _check_filter_size(filter_size: int, method: str) -> None:
    if isinstance(filter_size, bool) or not isinstance(filter_size, int) or not 1 <= filter_size <= 7:
        raise ValueError(f"{method}: filter_size must be an int from 1 to 7, got {filter_size!r}")


@register_pool(
    "stochastic",
    functional=stochastic_pool2d,
    family="literature",
    title="Stochastic",
    formula="p_i = relu(x_i) / sum_R relu(x); y = x_j, j ~ p (train), sum_R p_i x_i",
    stochastic=True,
)
class StochasticPool(Pool2d):
    """Stochastic pooling (Zeiler & Fergus, ICLR 2013).

    ``p_i = relu(x_i) / sum_R relu(x)`` (uniform over R when that sum is 0). Training samples one
    cell of each window with probability ``p`` (torch's global generator); evaluation returns the
    probability-weighted average ``sum_R p_i x_i``. No learnable parameters.

    Example:
        >>> pool = StochasticPool(2).eval()
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.191667
    """

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _stochastic(x, geometry, self.training)

    def functional_kwargs(self) -> dict[str, object]:
        return {"training": self.training}


@register_pool(
    "gem",
    functional=gem_pool2d,
    family="literature",
    title="GeM",
    formula="y = (mean_R clamp(x, eps)^p)^(1/p)",
)
class GeMPool(Pool2d):
    """Generalized-mean pooling (Radenović et al., TPAMI 2019): ``y = (mean_R clamp(x, eps)^p)^(1/p)``.

    ``p`` is learnable, initialised at ``p`` (default 3), and kept positive by parameterisation:
    ``p = softplus(rho)``. Parameters per layer: 1.

    Example:
        >>> round(GeMPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 5)
        0.18359
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
        p: float = 3.0,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        name = type(self).__name__
        check_positive(p, "p", name)
        self.eps = float(check_positive(eps, "eps", name))
        # softplus^-1(p) = log(exp(p) - 1), written to stay finite for large p.
        rho = p + math.log(-math.expm1(-p))
        self.rho = nn.Parameter(torch.tensor(rho, device=device, dtype=dtype))

    @property
    def p(self) -> Tensor:
        """The exponent ``p = softplus(rho)`` (always positive)."""
        return F.softplus(self.rho)

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _gem(x, geometry, self.p, self.eps)

    def functional_kwargs(self) -> dict[str, object]:
        return {"p": self.p, "eps": self.eps}

    def learned_values(self) -> dict[str, list[float]]:
        return {"p": [float(self.p.detach())]}


@register_pool(
    "blurmax",
    functional=blur_max_pool2d,
    family="literature",
    title="Blur-max",
    formula="dense max (stride 1), then a binomial blur with the stride",
    supports_global=False,
)
class BlurMaxPool(Pool2d):
    """Anti-aliased max pooling, MaxBlurPool (Zhang, "Making Convolutional Networks Shift-Invariant Again").

    A stride-1 max pool followed by a binomial low-pass filter applied with the pool's stride; the
    output shape equals ``nn.MaxPool2d``'s. ``filter_size`` taps per axis (default 3: [1, 2, 1] / 4).
    The filter is a non-persistent buffer (follows ``.to()``, stays out of ``state_dict``).
    No learnable parameters.

    Example:
        >>> pool = BlurMaxPool(2)
        >>> pool(torch.rand(1, 3, 8, 8)).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(
        self,
        kernel_size: Size2,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
        *,
        channels: int | None = None,
        spatial_dims: int = 2,
        output_size: OutputSize = None,
        filter_size: int = 3,
        device: torch.device | str | None = None,
    ) -> None:
        if kernel_size is None:
            raise ValueError(
                "BlurMaxPool has no global or adaptive form: it blurs a dense max map before striding, "
                "and adaptive windows have no stride"
            )
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        _check_filter_size(filter_size, type(self).__name__)
        self.filter_size = filter_size
        filt = _binomial_filter(filter_size, spatial_dims).to(device=device, dtype=torch.get_default_dtype())
        self.register_buffer("blur", filt, persistent=False)

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _blur_max(x, geometry, self.blur)

    def functional_kwargs(self) -> dict[str, object]:
        return {"filter_size": self.filter_size}
