"""Max-average blends: ``y = lambda * M + (1 - lambda) * A`` with a learned, gated or sampled lambda.

Per output cell: M is the window maximum and A the mean of its real cells. lambda always lies in
[0, 1] by parameterisation (a sigmoid of an unconstrained parameter), never by clamping, so every
blend satisfies ``A <= y <= M``.

* ``mixed`` (Lee, Gallagher & Tu 2016): one lambda per layer.
* ``channel_adaptive`` (the study): one lambda per channel.
* ``gated`` (the study): one lambda per output cell from a 1x1 convolution of the window (shared by all
  channels).
* ``stochastic_mix`` (the study): lambda drawn from a Beta distribution in training, its mean in eval.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from poolkit.layers.base import (
    OutputSize,
    Pool2d,
    PoolForm,
    Size2,
    channel_param,
    channel_view,
    check_positive,
    conv_nd,
    form_dims,
    prepare,
)
from poolkit.layers.fused import window_max_mean
from poolkit.layers.gate import window_blend
from poolkit.layers.sampling import beta_rsample
from poolkit.layers.windows import Geometry
from poolkit.registry import register_pool

__all__ = [
    "ChannelAdaptivePool",
    "GatedPool",
    "MixedPool",
    "StochasticMixPool",
    "channel_adaptive_pool2d",
    "gated_pool2d",
    "mixed_pool2d",
    "stochastic_mix_pool2d",
]


def _blend(x: Tensor, g: Geometry, weight: Tensor) -> Tensor:
    """``lambda * M + (1 - lambda) * A`` with ``weight`` = lambda broadcastable to the output."""
    return window_blend(x, g, weight)


def _theta(theta: Tensor | float, x: Tensor, method: str) -> Tensor:
    """theta as a tensor on ``x``'s device: a scalar, or one value per channel (shape (C,))."""
    if not isinstance(theta, Tensor):
        theta = torch.tensor(float(theta), device=x.device)
    channel_param(theta, x, "theta", method)
    return theta


def _channel_view(weight: Tensor, x: Tensor) -> Tensor:
    """A scalar stays a scalar; a per-channel (C,) weight becomes (1, C, 1, ...), broadcast against ``x``."""
    return channel_view(weight, x)


def mixed_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    theta: Tensor | float = 0.0,
    form: PoolForm | None = None,
) -> Tensor:
    """Mixed max-average pooling: ``lambda = sigmoid(theta)``, ``y = lambda * M + (1 - lambda) * A``.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(mixed_pool2d(x, 2, theta=0.0).item(), 6)   # lambda = 0.5
        0.2
    """
    name = form.name if form is not None and form.name else "mixed_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    theta = _theta(theta, x, name)
    return finish(_blend(x, g, _channel_view(torch.sigmoid(theta), x)))


def channel_adaptive_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    theta: Tensor,
    form: PoolForm | None = None,
) -> Tensor:
    """Channel-Adaptive pooling: ``lambda_c = sigmoid(theta_c)``, ``y_c = lambda_c M_c + (1 - lambda_c) A_c``.

    ``theta`` has one value per channel (shape (C,)).

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(channel_adaptive_pool2d(x, 2, theta=torch.zeros(1)).item(), 6)
        0.2
    """
    name = form.name if form is not None and form.name else "channel_adaptive_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    theta = _theta(theta, x, name)
    if theta.dim() != 1:
        raise ValueError(f"{name}: theta must have one value per channel ({x.shape[1]},)")
    return finish(_blend(x, g, _channel_view(torch.sigmoid(theta), x)))


def _gated(x: Tensor, g: Geometry, weight: Tensor, bias: Tensor) -> Tensor:
    m, mean = window_max_mean(x, g)
    # The mean over the window of (w.x + b) equals w.(mean of x) + b: the gate costs a 1x1 conv of A.
    gate = torch.sigmoid(conv_nd(mean, weight, bias))
    return torch.lerp(mean, m, gate.to(mean.dtype))  # autocast runs the conv in low precision


def gated_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    weight: Tensor,
    bias: Tensor,
    form: PoolForm | None = None,
) -> Tensor:
    """Gated pooling: ``g = sigmoid(mean_R(w . x + b))``, ``y = g * M + (1 - g) * A``.

    ``w . x + b`` is a 1x1 convolution from C channels to 1 (``weight`` (1, C, 1, 1), ``bias`` (1,)):
    one gate per output cell, shared by all channels.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(gated_pool2d(x, 2, weight=torch.zeros(1, 1, 1, 1), bias=torch.zeros(1)).item(), 6)
        0.2
    """
    name = form.name if form is not None and form.name else "gated_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    expected = (1, x.shape[1], *(1,) * form_dims(form))
    if weight.shape != expected or bias.shape != (1,):
        raise ValueError(
            f"{name}: weight must be {expected} and bias (1,) for an input of "
            f"{x.shape[1]} channels, got {tuple(weight.shape)} and {tuple(bias.shape)}"
        )
    return finish(_gated(x, g, weight, bias))


def _sample_mix(theta: Tensor, kappa: float, batch: int, channels: int, spatial: int = 2) -> Tensor:
    """lambda ~ Beta(kappa m, kappa (1 - m)), m = sigmoid(theta): one draw per (sample, channel).

    On CPU the compiled sampler (:func:`poolkit.layers.sampling.beta_rsample`) makes the same draws as torch's
    ``Beta.rsample`` and computes the implicit-reparameterisation gradient itself.
    """
    m = torch.sigmoid(theta.float())
    shape = (batch, channels) if theta.dim() == 0 else (batch,)
    lam = beta_rsample(kappa * m, kappa * (1.0 - m), shape, total=kappa)
    return lam.view(batch, channels, *(1,) * spatial)


def stochastic_mix_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    theta: Tensor | float = 0.0,
    kappa: float = 2.0,
    training: bool = False,
    form: PoolForm | None = None,
) -> Tensor:
    """Stochastic Mix: ``y = lambda * M + (1 - lambda) * A`` with a random lambda in training.

    ``m = sigmoid(theta)`` (scalar, or per channel (C,)). Training: ``lambda ~ Beta(kappa m, kappa (1 - m))``
    drawn with ``rsample`` (reparameterised, so theta learns) from torch's global generator, one
    lambda per (sample, channel). Evaluation: ``lambda = m``, the mean of that Beta.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(stochastic_mix_pool2d(x, 2, theta=0.0).item(), 6)   # eval: lambda = 0.5
        0.2
    """
    name = form.name if form is not None and form.name else "stochastic_mix_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    check_positive(kappa, "kappa", name)
    theta = _theta(theta, x, name)
    return finish(_stochastic_mix(x, g, theta, kappa, training))


def _stochastic_mix(x: Tensor, g: Geometry, theta: Tensor, kappa: float, training: bool) -> Tensor:
    if training:
        return _blend(x, g, _sample_mix(theta, kappa, x.shape[0], x.shape[1], x.dim() - 2))
    return _blend(x, g, _channel_view(torch.sigmoid(theta), x))


class _ThetaBlend(Pool2d):
    """Shared by the blends whose lambda is ``sigmoid(theta)`` of a learnable scalar or (C,) theta."""

    def __init__(
        self,
        kernel_size: Size2 | None,
        stride: Size2 | None,
        padding: Size2,
        dilation: Size2,
        ceil_mode: bool,
        *,
        channels: int | None,
        spatial_dims: int,
        output_size: OutputSize,
        per_channel: bool,
        init_lambda: float,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> None:
        # Pool2d first: a class that always needs channels (ChannelAdaptivePool) gets its own message.
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        if per_channel and channels is None:
            raise ValueError(
                f"{type(self).__name__}(per_channel=True) needs channels=<number of input channels>"
            )
        self.per_channel = bool(per_channel)
        shape = (channels,) if per_channel else ()
        init = math.log(init_lambda / (1.0 - init_lambda))
        self.theta = nn.Parameter(torch.full(shape, init, device=device, dtype=dtype))

    def lam(self) -> Tensor:
        """lambda = sigmoid(theta), the weight on the maximum (per channel when ``per_channel``)."""
        return torch.sigmoid(self.theta)

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _blend(x, geometry, _channel_view(self.lam(), x))

    def learned_values(self) -> dict[str, list[float]]:
        return {"lambda": self.lam().detach().float().flatten().tolist()}

    def functional_kwargs(self) -> dict[str, object]:
        return {"theta": self.theta}


@register_pool(
    "mixed",
    functional=mixed_pool2d,
    family="literature",
    title="Mixed max-avg",
    formula="lambda = sigmoid(theta), y = lambda * M + (1 - lambda) * A",
)
class MixedPool(_ThetaBlend):
    """Mixed max-average pooling (Lee, Gallagher & Tu, AISTATS 2016).

    ``lambda = sigmoid(theta)``, ``y = lambda * M + (1 - lambda) * A``; theta starts at 0 (lambda = 0.5).
    Parameters per layer: 1 (C with ``per_channel=True``).

    Example:
        >>> round(MixedPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.2
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
        per_channel: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
            per_channel=per_channel, init_lambda=0.5, device=device, dtype=dtype,
        )  # fmt: skip

    def _option_repr(self) -> dict[str, object]:
        return {"per_channel": self.per_channel} if self.per_channel else {}


@register_pool(
    "channel_adaptive",
    functional=channel_adaptive_pool2d,
    family="study",
    title="Channel-Adaptive",
    formula="lambda_c = sigmoid(theta_c), y_c = lambda_c M_c + (1 - lambda_c) A_c",
)
class ChannelAdaptivePool(_ThetaBlend):
    """Channel-Adaptive pooling (the study's eq. 4): ``y_c = lambda_c M_c + (1 - lambda_c) A_c``.

    ``lambda_c = sigmoid(theta_c)``, theta initialised at 0 (lambda = 0.5). Needs ``channels``.
    Parameters per layer: C. It is :class:`MixedPool` with ``per_channel=True`` always (same parameter
    ``theta`` of shape (C,), so state dicts are interchangeable).

    Example:
        >>> pool = ChannelAdaptivePool(2, channels=1)
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.2
    """

    needs_channels = True

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
            per_channel=True, init_lambda=0.5, device=device, dtype=dtype,
        )  # fmt: skip


@register_pool(
    "gated",
    functional=gated_pool2d,
    family="study",
    title="Gated",
    formula="g = sigmoid(mean_R(w . x + b)), y = g * M + (1 - g) * A",
)
class GatedPool(Pool2d):
    """Gated pooling (the study): ``g = sigmoid(mean_R(w . x + b))``, ``y = g M + (1 - g) A``.

    ``w . x + b`` is a 1x1 convolution from C channels to one gate map; its weights and bias start at
    zero, so ``g = 0.5`` everywhere at initialisation. Needs ``channels``. Parameters per layer: C + 1.

    Example:
        >>> pool = GatedPool(2, channels=1)
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.2
    """

    needs_channels = True

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
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        assert channels is not None
        ones = (1,) * spatial_dims
        self.weight = nn.Parameter(torch.zeros(1, channels, *ones, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(1, device=device, dtype=dtype))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _gated(x, geometry, self.weight, self.bias)

    def functional_kwargs(self) -> dict[str, object]:
        return {"weight": self.weight, "bias": self.bias}


@register_pool(
    "stochastic_mix",
    functional=stochastic_mix_pool2d,
    family="study",
    title="Stochastic Mix",
    formula="y = lambda * M + (1 - lambda) * A with a random lambda in training",
    stochastic=True,
)
class StochasticMixPool(_ThetaBlend):
    """Stochastic Mix pooling (the study's eqs. 7-8): a max/average blend with a random weight in training.

    ``m = sigmoid(theta)`` with theta initialised at 0 (m = 0.5). Training: ``lambda ~ Beta(kappa m,
    kappa (1 - m))`` (``rsample``, so theta learns through the sample), one lambda per (sample,
    channel), drawn from torch's global generator; evaluation: ``lambda = m`` (the Beta's mean).
    ``kappa = 2`` makes lambda uniform on [0, 1] at initialisation. ``y = lambda M + (1 - lambda) A``.

    Parameters per layer: 1 (C with ``per_channel=True``).

    Example:
        >>> pool = StochasticMixPool(2).eval()
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.2
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
        kappa: float = 2.0,
        per_channel: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
            per_channel=per_channel, init_lambda=0.5, device=device, dtype=dtype,
        )  # fmt: skip
        self.kappa = float(check_positive(kappa, "kappa", type(self).__name__))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _stochastic_mix(x, geometry, self.theta, self.kappa, self.training)

    def functional_kwargs(self) -> dict[str, object]:
        return {"theta": self.theta, "kappa": self.kappa, "training": self.training}

    def _option_repr(self) -> dict[str, object]:
        return {"kappa": self.kappa, "per_channel": self.per_channel}
