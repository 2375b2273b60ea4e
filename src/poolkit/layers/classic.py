"""Classic pooling: max, average, power-average (LP) and the strided convolution that replaces pooling.

Notation (per output cell): R are the real (non-padded) input cells of its window, n = |R|.
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
from poolkit.layers.fused import kernel_path, window_power_sum_compiled
from poolkit.layers.windows import Geometry, PoolGeometry, _average, window_max, window_mean, window_sum
from poolkit.registry import register_pool

__all__ = [
    "AvgPool",
    "LPPool",
    "MaxPool",
    "StridedConvPool",
    "avg_pool2d",
    "lp_pool2d",
    "max_pool2d",
    "strided_conv_pool2d",
]


def max_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    form: PoolForm | None = None,
) -> Tensor:
    """Max pooling: ``y = max_{i in R} x_i`` (padding never wins).

    Shape:
        (N, C, H, W) -> (N, C, H_out, W_out) exactly as :class:`torch.nn.MaxPool2d`; (C, H, W) works too.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> max_pool2d(x, 2).item()
        0.25
    """
    name = form.name if form is not None and form.name else "max_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    return finish(window_max(x, g))


def _avg(x: Tensor, g: Geometry, count_include_pad: bool, divisor_override: int | None) -> Tensor:
    if divisor_override is not None:
        return window_sum(x, g) / divisor_override
    if count_include_pad and isinstance(g, PoolGeometry) and any(g.padding):
        # torch's divisor: the window's cells inside the padded input (ceil_mode overhang excluded).
        return _average(x, g, count_include_pad=True)
    return window_mean(x, g)


def _check_avg_options(
    count_include_pad: bool, divisor_override: int | None, g: PoolGeometry | None, method: str
) -> None:
    if divisor_override is not None and (
        isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override < 1
    ):
        raise ValueError(
            f"{method}: divisor_override must be None or a positive int, got {divisor_override!r}"
        )
    if count_include_pad and g is not None and g.dilation != (1,) * len(g.dilation):
        raise ValueError(
            f"{method}: count_include_pad=True is defined (as in torch's AvgPool2d) only without dilation, "
            f"got dilation={g.dilation}; use count_include_pad=False or dilation=1"
        )


def avg_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    count_include_pad: bool = False,
    divisor_override: int | None = None,
    form: PoolForm | None = None,
) -> Tensor:
    """Average pooling over the real cells: ``y = (1/n) sum_{i in R} x_i`` (``count_include_pad=False``).

    Unlike :func:`torch.nn.functional.avg_pool2d` it accepts ``dilation``, and by default it does not count
    the zero padding. ``count_include_pad=True`` divides by the window's cells inside the padded input and
    ``divisor_override=d`` by ``d``, exactly as :class:`torch.nn.AvgPool2d` (which
    :func:`poolkit.swap_pooling` relies on to keep a swapped ``AvgPool2d``'s output).

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(avg_pool2d(x, 2).item(), 6)
        0.15
        >>> round(avg_pool2d(x, 2, divisor_override=2).item(), 6)
        0.3
    """
    name = form.name if form is not None and form.name else "avg_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    _check_avg_options(count_include_pad, divisor_override, g, name)
    return finish(_avg(x, g, bool(count_include_pad), divisor_override))


def _lp(x: Tensor, g: Geometry, norm_type: float) -> Tensor:
    if kernel_path(x, g) == "compiled":  # one pass, the same rules (the operator's docstring)
        return window_power_sum_compiled(x, g, norm_type)
    total = window_sum(x.pow(norm_type), g)
    # The root's derivative is infinite at a zero sum; as nn.LPPool2d, an all-zero window gets gradient 0
    # (a where() on both sides, so that no inf * 0 reaches the backward pass).
    zero = total == 0
    return torch.where(zero, torch.zeros_like(total), torch.where(zero, 1.0, total).pow(1.0 / norm_type))


def lp_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    norm_type: float = 2.0,
    form: PoolForm | None = None,
) -> Tensor:
    """Power-average pooling as :class:`torch.nn.LPPool2d`: ``y = (sum_{i in R} x_i^p)^(1/p)``.

    ``p = norm_type``: ``p = 1`` is sum pooling, ``p -> inf`` tends to max pooling. As in PyTorch, a
    negative sum (odd ``p``, negative inputs) has no real root and gives NaN, and an all-zero window
    (y = 0, where the root is not differentiable) gets gradient 0. Padding adds nothing to the sum.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(lp_pool2d(x, 2).item(), 6)
        0.339117
    """
    name = form.name if form is not None and form.name else "lp_pool2d"
    check_positive(norm_type, "norm_type", name)
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    return finish(_lp(x, g, norm_type))


def _strided_conv(x: Tensor, g: PoolGeometry, weight: Tensor, bias: Tensor | None, groups: int) -> Tensor:
    pads = g.pads(*x.shape[2:])
    before, after = pads[0::2][::-1], pads[1::2][::-1]  # per axis, first axis first
    if before == after:
        return conv_nd(x, weight, bias, g.stride, before, g.dilation, groups)
    x = F.pad(x, pads)  # ceil_mode: the last windows reach past the padding
    return conv_nd(x, weight, bias, g.stride, 0, g.dilation, groups)


def strided_conv_pool2d(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    form: PoolForm | None = None,
) -> Tensor:
    """Strided convolution: ``y_c = sum_{c', i} w_{c c' i} x_{c' i} + b_c`` over the pool's windows.

    ``weight`` is (C, 1, kh, kw) for the depthwise form or (C, C, kh, kw) for the full form; zero
    padding (as any convolution). The output shape equals ``nn.MaxPool2d``'s, ``ceil_mode`` included.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(strided_conv_pool2d(x, torch.full((1, 1, 2, 2), 0.25), None, 2).item(), 6)
        0.15
    """
    name = form.name if form is not None and form.name else "strided_conv_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    channels, n = x.shape[1], form_dims(form)
    assert isinstance(g, PoolGeometry)
    kernel = g.kernel_size[-n:]
    if weight.dim() != n + 2 or tuple(weight.shape[2:]) != kernel or weight.shape[0] != channels:
        raise ValueError(
            f"{name}: weight must be (C, 1 or C, *kernel_size) = ({channels}, 1 or {channels}, "
            f"{', '.join(map(str, kernel))}) for an input of {channels} channels, "
            f"got {tuple(weight.shape)}"
        )
    if weight.shape[1] not in (1, channels):
        raise ValueError(f"{name}: weight.shape[1] must be 1 or {channels}, got {weight.shape[1]}")
    groups = channels if weight.shape[1] == 1 else 1
    return finish(_strided_conv(x, g, weight, bias, groups))


@register_pool(
    "max",
    functional=max_pool2d,
    family="classic",
    title="Max",
    formula="y = max_{i in R} x_i (padding never wins)",
)
class MaxPool(Pool2d):
    """Max pooling (the baseline): ``y = max_{i in R} x_i``. No learnable parameters.

    Example:
        >>> pool = MaxPool(2)
        >>> pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item()
        0.25
    """

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return window_max(x, geometry)


@register_pool(
    "avg",
    functional=avg_pool2d,
    family="classic",
    title="Average",
    formula="y = (1/n) sum_{i in R} x_i (count_include_pad=False)",
)
class AvgPool(Pool2d):
    """Average pooling over the real cells: ``y = (1/n) sum_{i in R} x_i``. No learnable parameters.

    Args:
        count_include_pad: divide by the window's cells inside the padded input, zero padding included,
            as :class:`torch.nn.AvgPool2d`'s default (default False: real cells only).
        divisor_override: divide every window's sum by this int instead (as ``nn.AvgPool2d``).

    Example:
        >>> round(AvgPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.15
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
        count_include_pad: bool = False,
        divisor_override: int | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        _check_avg_options(count_include_pad, divisor_override, self.geometry, type(self).__name__)
        if self.geometry is None and (count_include_pad or divisor_override is not None):
            raise ValueError(
                "AvgPool: the global form has no padding and one window per map; count_include_pad and "
                "divisor_override apply only to windowed pools"
            )
        self.count_include_pad = bool(count_include_pad)
        self.divisor_override = divisor_override

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _avg(x, geometry, self.count_include_pad, self.divisor_override)

    def functional_kwargs(self) -> dict[str, object]:
        return {"count_include_pad": self.count_include_pad, "divisor_override": self.divisor_override}

    def _option_repr(self) -> dict[str, object]:
        shown: dict[str, object] = {}
        if self.count_include_pad:
            shown["count_include_pad"] = True
        if self.divisor_override is not None:
            shown["divisor_override"] = self.divisor_override
        return shown


@register_pool(
    "lp", functional=lp_pool2d, family="classic", title="LP (p=2)", formula="y = (sum_{i in R} x_i^p)^(1/p)"
)
class LPPool(Pool2d):
    """Power-average pooling ``y = (sum_{i in R} x_i^p)^(1/p)`` with ``p = norm_type`` (default 2).

    Same output as :class:`torch.nn.LPPool2d`, plus ``padding``, ``dilation`` and ``ceil_mode``.

    Example:
        >>> round(LPPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.339117
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
        norm_type: float = 2.0,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        self.norm_type = float(check_positive(norm_type, "norm_type", type(self).__name__))

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _lp(x, geometry, self.norm_type)

    def functional_kwargs(self) -> dict[str, object]:
        return {"norm_type": self.norm_type}


@register_pool(
    "strided_conv",
    functional=strided_conv_pool2d,
    family="classic",
    title="Strided conv",
    formula="y_c = sum_{c', i} w_{c c' i} x_{c' i} + b_c over the pool's windows",
    supports_global=False,
)
class StridedConvPool(Pool2d):
    """The learnable alternative to pooling: a k x k convolution with the pool's stride and padding.

    ``depthwise=True`` (default) learns one k x k filter per channel (``C*k*k + C`` parameters);
    ``depthwise=False`` a full convolution (``C*C*k*k + C``). Initialised as average pooling
    (weights ``1/(kh*kw)``, bias 0) so that swapping it into a trained network starts from a
    sensible downsampling; zero padding counts in the sum, as in any convolution.

    Example:
        >>> pool = StridedConvPool(2, channels=1)
        >>> round(pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.15
    """

    needs_channels = True

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
        depthwise: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        if kernel_size is None:
            raise ValueError(
                "StridedConvPool has no global or adaptive form: its weights depend on the kernel size"
            )
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        assert self.geometry is not None and channels is not None
        self.depthwise = bool(depthwise)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(
            torch.empty(channels, 1 if self.depthwise else channels, *self.geometry.kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(channels, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Average-pooling initialisation: each output channel averages its own input channel."""
        with torch.no_grad():
            self.weight.zero_()
            area = math.prod(self.weight.shape[2:])
            if self.depthwise:
                self.weight.fill_(1.0 / area)
            else:
                idx = torch.arange(self.weight.shape[0])
                self.weight[idx, idx] = 1.0 / area
            self.bias.zero_()

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        groups = x.shape[1] if self.depthwise else 1
        return _strided_conv(x, geometry, self.weight, self.bias, groups)

    def functional_kwargs(self) -> dict[str, object]:
        return {"weight": self.weight, "bias": self.bias}

    def _option_repr(self) -> dict[str, object]:
        return {"depthwise": self.depthwise}
