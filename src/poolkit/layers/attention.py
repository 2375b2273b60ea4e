"""Weighted-average pooling: each cell of a window gets a positive weight; ``y = sum w x / sum w``.

* ``attention`` (the study's Attention-Weighted pooling): weights from a small 1x1-conv network.
* ``softpool`` (Stergiou et al. 2021): weights ``exp(x)``, i.e. a softmax over the window.
* ``lip`` (Gao et al. 2019, local importance pooling): weights ``exp(logit)`` from a conv block.

Every output of softpool and lip is a convex combination of its window's real cells, so
``min_R x <= y <= max_R x``. Attention's ``eps`` scales its convex combination by
``sum_R a / (sum_R a + eps)``, which is close to 1 only while the window's attention sum is large
against ``eps`` (see ``AttentionPool``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from poolkit.layers.base import (
    OutputSize,
    Pool2d,
    PoolForm,
    Size2,
    channel_view,
    conv_class,
    conv_nd,
    form_dims,
    prepare,
)
from poolkit.layers.fused import (
    kernel_path,
    window_self_weighted_mean_compiled,
    window_weighted_mean_fused,
)
from poolkit.layers.windows import (
    Geometry,
    min_window_count,
    unfold_windows,
    window_mask,
)
from poolkit.registry import register_pool

__all__ = [
    "AttentionPool",
    "LIPPool",
    "SoftPool",
    "attention_pool2d",
    "lip_pool2d",
    "soft_pool2d",
]


def _attention_map(x: Tensor, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor) -> Tensor:
    """a = sigmoid(Conv1x1(ReLU(Conv1x1(x)))), one map (N, 1, *spatial) shared by all channels."""
    hidden = F.relu(conv_nd(x, weight1, bias1))
    return torch.sigmoid(conv_nd(hidden, weight2, bias2))


def _attention(
    x: Tensor, g: Geometry, weight1: Tensor, bias1: Tensor, weight2: Tensor, bias2: Tensor, eps: float
) -> Tensor:
    return window_weighted_mean_fused(x, _attention_map(x, weight1, bias1, weight2, bias2), g, eps)


def attention_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    weight1: Tensor,
    bias1: Tensor,
    weight2: Tensor,
    bias2: Tensor,
    eps: float = 1e-6,
    form: PoolForm | None = None,
) -> Tensor:
    """Attention-Weighted: ``a = sigmoid(W2 ReLU(W1 x + b1) + b2)``, ``y = sum_R(x a) / (sum_R(a) + eps)``.

    ``weight1`` (h, C, 1, 1), ``bias1`` (h,), ``weight2`` (1, h, 1, 1), ``bias2`` (1,): two 1x1
    convolutions computing one attention map shared by all channels.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> w1 = torch.zeros(8, 1, 1, 1); w1[0] = 1.0     # hidden unit 0 = relu(x)
        >>> w2 = torch.zeros(1, 8, 1, 1); w2[0, 0] = 1.0  # a = sigmoid(relu(x))
        >>> y = attention_pool2d(x, 2, weight1=w1, bias1=torch.zeros(8), weight2=w2, bias2=torch.zeros(1))
        >>> round(y.item(), 6)
        0.152889
    """
    name = form.name if form is not None and form.name else "attention_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    if eps < 0:
        raise ValueError(f"{name}: eps must be >= 0, got {eps}")
    ones = (1,) * form_dims(form)
    if weight1.dim() != len(ones) + 2 or weight1.shape[1] != x.shape[1]:
        raise ValueError(
            f"{name}: weight1 must be (hidden, {x.shape[1]}, {', '.join(map(str, ones))}) for an "
            f"input of "
            f"{x.shape[1]} channels, got {tuple(weight1.shape)}"
        )
    return finish(_attention(x, g, weight1, bias1, weight2, bias2, eps))


def _soft(x: Tensor, g: Geometry) -> Tensor:
    if kernel_path(x, g) == "compiled":  # one pass; the weights exp(x - window max) computed in the kernel
        return window_self_weighted_mean_compiled(x, g, "softmax")
    windows = unfold_windows(x, g, 0.0)
    logits = windows
    if min_window_count(g, *x.shape[2:]) < g.area:
        # Padded cells must get zero weight: -inf logits there (their value 0 then adds nothing).
        mask = window_mask(g, *x.shape[2:], device=x.device)
        logits = windows.masked_fill(~mask, float("-inf"))
    # softmax subtracts each window's maximum, so no exp() can overflow; half types softmax in float32.
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32 if x.element_size() < 4 else None).to(x.dtype)
    return (weights * windows).sum(-1)


def soft_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    form: PoolForm | None = None,
) -> Tensor:
    """SoftPool: ``y = sum_R softmax_R(x)_i x_i = sum_R e^{x_i} x_i / sum_R e^{x_i}``.

    Computed with each window's maximum subtracted (a softmax), so large activations cannot overflow.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(soft_pool2d(x, 2).item(), 6)
        0.156239
    """
    name = form.name if form is not None and form.name else "soft_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    return finish(_soft(x, g))


_LIP_GATE = 12.0  # Gao et al.'s soft gate: logits = 12 * sigmoid(.) keeps exp(logit) in [1, e^12]


def _lip_logits(
    x: Tensor, conv_weight: Tensor, norm_weight: Tensor, norm_bias: Tensor, norm_eps: float
) -> Tensor:
    taps = conv_weight.shape[2:] if conv_weight.dim() == x.dim() else (1, *conv_weight.shape[2:])
    h = conv_nd(x, conv_weight, padding=tuple(t // 2 for t in taps))
    # Affine instance norm written out (F.group_norm refuses 1x1 maps; here they normalise to the bias).
    # In at least float32: its backward has (var + eps)^(-3/2), 3e7 for a constant map (LIP's start),
    # which overflows float16 to inf and turns the gradient into inf * 0 = NaN under float16 autocast.
    if h.element_size() < 4:
        h = h.float()
    var, mean = torch.var_mean(h, dim=tuple(range(2, h.dim())), keepdim=True, correction=0)
    h = (h - mean) * torch.rsqrt(var + norm_eps)
    h = h * channel_view(norm_weight.to(h.dtype), h) + channel_view(norm_bias.to(h.dtype), h)
    return _LIP_GATE * torch.sigmoid(h)


def _lip(
    x: Tensor, g: Geometry, conv_weight: Tensor, norm_weight: Tensor, norm_bias: Tensor, norm_eps: float
) -> Tensor:
    logits = _lip_logits(x, conv_weight, norm_weight, norm_bias, norm_eps)
    # Logits lie in [0, 12]; exp(logit - 12) in [e^-12, 1] gives the same ratio and fits float16.
    return window_weighted_mean_fused(x, torch.exp(logits - _LIP_GATE).to(x.dtype), g)


def lip_pool2d(
    input: Tensor,
    kernel_size: Size2,
    stride: Size2 | None = None,
    padding: Size2 = 0,
    dilation: Size2 = 1,
    ceil_mode: bool = False,
    *,
    conv_weight: Tensor,
    norm_weight: Tensor,
    norm_bias: Tensor,
    norm_eps: float = 1e-5,
    form: PoolForm | None = None,
) -> Tensor:
    """Local importance pooling: ``l = 12 sigmoid(IN(conv3x3(x)))``, ``y = sum_R e^l x / sum_R e^l``.

    ``conv_weight`` (C, C, 3, 3) (no bias), ``norm_weight``/``norm_bias`` (C,): an affine instance
    norm over each map; logits are per channel and per input cell.

    Example:
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> y = lip_pool2d(x, 2, conv_weight=torch.zeros(1, 1, 3, 3), norm_weight=torch.ones(1),
        ...                norm_bias=torch.zeros(1))   # constant logits: the plain average
        >>> round(y.item(), 6)
        0.15
    """
    name = form.name if form is not None and form.name else "lip_pool2d"
    x, g, finish = prepare(input, name, kernel_size, stride, padding, dilation, ceil_mode, form)
    channels = x.shape[1]
    if conv_weight.dim() != form_dims(form) + 2 or conv_weight.shape[:2] != (channels, channels):
        raise ValueError(
            f"{name}: conv_weight must be ({channels}, {channels}, k, ...) with one k per spatial axis "
            f"for an input of {channels} "
            f"channels, got {tuple(conv_weight.shape)}"
        )
    return finish(_lip(x, g, conv_weight, norm_weight, norm_bias, norm_eps))


@register_pool(
    "attention",
    functional=attention_pool2d,
    family="study",
    title="Attention-Weighted",
    formula="a = sigmoid(W2 ReLU(W1 x + b1) + b2), y = sum_R(x a) / (sum_R(a) + eps)",
)
class AttentionPool(Pool2d):
    """Attention-Weighted pooling (the study's eqs. 5-6).

    ``a = sigmoid(Conv1x1(ReLU(Conv1x1(x))))`` with hidden width ``max(C // reduction, 8)`` and one
    output map shared by all channels; ``y = sum_R(x a) / (sum_R(a) + eps)``. Both convolutions have a
    bias and PyTorch's default initialisation. Needs ``channels``.

    Parameters per layer: ``h (C + 2) + 1`` with ``h = max(C // reduction, 8)``.

    ``eps`` keeps the division defined, at a price: ``y = s * (sum_R x a / sum_R a)`` with
    ``s = sum_R a / (sum_R a + eps)``, a convex combination of the window shrunk towards 0 by ``s``. While
    the scores are not small (``sum_R a >> eps``) ``s ~ 1 - eps / sum_R a`` is about ``1 - 1e-6``; when the
    network drives every score of a window towards 0 the shrink is large (scores ``sigmoid(-14)`` on a 2x2
    window: ``s = 0.769``, so an all-ones window gives 0.769), and y may fall below the window's minimum.

    Example:
        >>> pool = AttentionPool(2, channels=16)
        >>> pool(torch.rand(2, 16, 8, 8)).shape
        torch.Size([2, 16, 4, 4])
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
        reduction: int = 4,
        eps: float = 1e-6,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            kernel_size, stride, padding, dilation, ceil_mode,
            channels=channels, spatial_dims=spatial_dims, output_size=output_size,
        )  # fmt: skip
        assert channels is not None
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"AttentionPool: reduction must be a positive int, got {reduction!r}")
        if not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"AttentionPool: eps must be a number >= 0, got {eps!r}")
        self.reduction = reduction
        self.eps = float(eps)
        hidden = max(channels // reduction, 8)
        conv = conv_class(spatial_dims)
        self.hidden = conv(channels, hidden, 1, device=device, dtype=dtype)
        self.score = conv(hidden, 1, 1, device=device, dtype=dtype)

    def attention_map(self, x: Tensor) -> Tensor:
        """The attention map ``a`` (N, 1, H, W) of an input (N, C, H, W)."""
        return _attention_map(x, self.hidden.weight, self.hidden.bias, self.score.weight, self.score.bias)

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return window_weighted_mean_fused(x, self.attention_map(x), geometry, self.eps)

    def functional_kwargs(self) -> dict[str, object]:
        return {
            "weight1": self.hidden.weight,
            "bias1": self.hidden.bias,
            "weight2": self.score.weight,
            "bias2": self.score.bias,
            "eps": self.eps,
        }

    def _option_repr(self) -> dict[str, object]:
        return {"reduction": self.reduction, "eps": self.eps}


@register_pool(
    "softpool",
    functional=soft_pool2d,
    family="literature",
    title="SoftPool",
    formula="y = sum_R softmax_R(x)_i x_i = sum_R e^{x_i} x_i / sum_R e^{x_i}",
)
class SoftPool(Pool2d):
    """SoftPool (Stergiou, Poppe & Kalliatakis, ICCV 2021): ``y = sum_R e^{x_i} x_i / sum_R e^{x_i}``.

    A softmax-weighted average of the window; numerically stable (window max subtracted).
    No learnable parameters.

    Example:
        >>> round(SoftPool(2)(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).item(), 6)
        0.156239
    """

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _soft(x, geometry)


@register_pool(
    "lip",
    functional=lip_pool2d,
    family="literature",
    title="LIP",
    formula="l = 12 sigmoid(IN(conv3x3(x))), y = sum_R e^l x / sum_R e^l",
)
class LIPPool(Pool2d):
    """Local importance pooling (Gao, Wang & Wu, ICCV 2019), its "simplified" logit module.

    ``l = 12 sigmoid(IN(Conv3x3(x)))`` (a C -> C convolution without bias, an affine instance norm,
    Gao et al.'s soft gate), ``y = sum_R e^l x / sum_R e^l``: a learned, per-channel importance map.
    The instance norm's affine weights live in a ``GroupNorm(C, C)`` (the same normalisation); it is
    computed directly so that 1x1 maps are defined (they normalise to the bias).
    The logit convolution starts at zero, as in the authors' code, so a new layer is exactly average
    pooling and learns its importance map from there. Needs ``channels``. Parameters per layer:
    ``9 C^2 + 2 C``.

    Example:
        >>> pool = LIPPool(2, channels=1)
        >>> x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
        >>> round(pool(x).item(), 6)   # at initialisation: the average
        0.15
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
        conv = conv_class(spatial_dims)
        self.logit_conv = conv(channels, channels, 3, padding=1, bias=False, device=device, dtype=dtype)
        self.logit_norm = nn.GroupNorm(channels, channels, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation: a zero logit convolution, so LIP starts as average pooling.

        With ``conv = 0`` every logit is ``12 sigmoid(bias) = 6``: equal weights, ``y = A`` exactly
        (Gao et al.'s code fills the logit convolution with zeros in ``init_layer``).
        """
        nn.init.zeros_(self.logit_conv.weight)
        self.logit_norm.reset_parameters()

    def pool(self, x: Tensor, geometry: Geometry) -> Tensor:
        return _lip(x, geometry, **self.functional_kwargs())  # type: ignore[arg-type]

    def functional_kwargs(self) -> dict[str, object]:
        return {
            "conv_weight": self.logit_conv.weight,
            "norm_weight": self.logit_norm.weight,
            "norm_bias": self.logit_norm.bias,
            "norm_eps": self.logit_norm.eps,
        }
