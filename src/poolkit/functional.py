"""The functional twin of every pooling method in every form, named as ``torch.nn.functional`` names its own.

Each windowed twin takes ``nn.MaxPool{n}d``'s arguments plus the method's options; each adaptive twin takes
``output_size`` (as ``F.adaptive_avg_pool{n}d``) plus the options. Learnable methods take their parameters
as tensors (``theta``, ``threshold``, ``weight``...), so a module's forward equals its twin called with the
module's parameters (``module.functional_kwargs()``); :func:`functional_for` finds the twin of a form.

| registry name      | 2-D twin                    | other forms                                          |
| ------------------ | --------------------------- | ---------------------------------------------------- |
| max                | max_pool2d                  | max_pool1d, max_pool3d, adaptive_max_pool1d/2d/3d    |
| avg                | avg_pool2d                  | avg_pool1d, avg_pool3d, adaptive_avg_pool1d/2d/3d    |
| lp                 | lp_pool2d                   | lp_pool1d, lp_pool3d, adaptive_lp_pool1d/2d/3d       |
| strided_conv       | strided_conv_pool2d         | strided_conv_pool1d, strided_conv_pool3d             |
| tmaxavg            | t_max_avg_pool2d            | t_max_avg_pool1d/3d, adaptive_t_max_avg_pool1d/2d/3d |
| soft_tmaxavg       | soft_t_max_avg_pool2d       | ... and so on: ``<name>1d``, ``<name>3d``,           |
| learnable_t        | learnable_t_pool2d          | ``adaptive_<name>1d/2d/3d``                          |
| channel_adaptive   | channel_adaptive_pool2d     |                                                      |
| gated              | gated_pool2d                |                                                      |
| attention          | attention_pool2d            |                                                      |
| stochastic_mix     | stochastic_mix_pool2d       |                                                      |
| mixed              | mixed_pool2d                |                                                      |
| stochastic         | stochastic_pool2d           |                                                      |
| softpool           | soft_pool2d                 |                                                      |
| lip                | lip_pool2d                  |                                                      |
| gem                | gem_pool2d                  |                                                      |
| blurmax            | blur_max_pool2d             | blur_max_pool1d, blur_max_pool3d (no adaptive form)  |
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import Tensor

from poolkit.layers.attention import attention_pool2d, lip_pool2d, soft_pool2d
from poolkit.layers.base import OutputSize, PoolForm
from poolkit.layers.blend import channel_adaptive_pool2d, gated_pool2d, mixed_pool2d, stochastic_mix_pool2d
from poolkit.layers.classic import avg_pool2d, lp_pool2d, max_pool2d, strided_conv_pool2d
from poolkit.layers.literature import blur_max_pool2d, gem_pool2d, stochastic_pool2d
from poolkit.layers.threshold import learnable_t_pool2d, soft_t_max_avg_pool2d, t_max_avg_pool2d
from poolkit.registry import get_pool_spec

_WINDOWED_2D: tuple[Callable[..., Tensor], ...] = (
    attention_pool2d,
    avg_pool2d,
    blur_max_pool2d,
    channel_adaptive_pool2d,
    gated_pool2d,
    gem_pool2d,
    learnable_t_pool2d,
    lip_pool2d,
    lp_pool2d,
    max_pool2d,
    mixed_pool2d,
    soft_pool2d,
    soft_t_max_avg_pool2d,
    stochastic_mix_pool2d,
    stochastic_pool2d,
    strided_conv_pool2d,
    t_max_avg_pool2d,
)
_NO_ADAPTIVE = (blur_max_pool2d, strided_conv_pool2d)
_SHAPES = {1: "(N, C, L)", 2: "(N, C, H, W)", 3: "(N, C, D, H, W)"}


def _signature_without_form(fn: Callable[..., Any], drop: tuple[str, ...] = ()) -> inspect.Signature:
    params = [p for n, p in inspect.signature(fn).parameters.items() if n != "form" and n not in drop]
    return inspect.signature(fn).replace(parameters=params)


def _windowed_twin(fn2d: Callable[..., Tensor], spatial_dims: int) -> Callable[..., Tensor]:
    name = fn2d.__name__[:-2] + f"{spatial_dims}d"

    def twin(*args: Any, **kwargs: Any) -> Tensor:
        # The 2-D twin's own argument order (strided_conv_pool2d takes weight and bias first).
        return fn2d(*args, form=PoolForm(spatial_dims, None, name), **kwargs)

    twin.__name__ = twin.__qualname__ = name
    twin.__doc__ = (
        f"The {spatial_dims}-D form of :func:`{fn2d.__name__}`: the same formula over the windows of "
        f"``nn.MaxPool{spatial_dims}d`` on {_SHAPES[spatial_dims]} inputs (unbatched too); tuples have "
        f"{spatial_dims} entries, and tensor parameters of convolutional parts have {spatial_dims} "
        f"spatial axes."
    )
    twin.__signature__ = _signature_without_form(fn2d)  # type: ignore[attr-defined]
    return twin


def _adaptive_twin(fn2d: Callable[..., Tensor], spatial_dims: int) -> Callable[..., Tensor]:
    name = "adaptive_" + fn2d.__name__[:-2] + f"{spatial_dims}d"

    def twin(input: Tensor, output_size: OutputSize, **options: Any) -> Tensor:
        if output_size is None:
            raise ValueError(f"{name}: output_size must be given")
        size = (output_size,) * spatial_dims if isinstance(output_size, int) else tuple(output_size)
        return fn2d(input, kernel_size=None, form=PoolForm(spatial_dims, size, name), **options)

    twin.__name__ = twin.__qualname__ = name
    twin.__doc__ = (
        f"The adaptive {spatial_dims}-D form of :func:`{fn2d.__name__}`: the same formula over PyTorch's "
        f"adaptive windows ``[floor(i L / out), ceil((i + 1) L / out))`` per axis, output "
        f"(N, C, *output_size) as ``F.adaptive_avg_pool{spatial_dims}d`` (None in ``output_size`` keeps "
        f"that axis)."
    )
    drop = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
    base = _signature_without_form(fn2d, drop)
    params = list(base.parameters.values())
    output = inspect.Parameter(
        "output_size", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="OutputSize"
    )
    twin.__signature__ = base.replace(parameters=[params[0], output, *params[1:]])  # type: ignore[attr-defined]
    return twin


_TWINS: dict[tuple[str, int, bool], Callable[..., Tensor]] = {}
for _fn in _WINDOWED_2D:
    _base = _fn.__name__[:-2]
    _TWINS[(_base, 2, False)] = _fn
    for _dims in (1, 3):
        _TWINS[(_base, _dims, False)] = _windowed_twin(_fn, _dims)
    if _fn not in _NO_ADAPTIVE:
        for _dims in (1, 2, 3):
            _TWINS[(_base, _dims, True)] = _adaptive_twin(_fn, _dims)
for _twin in _TWINS.values():
    globals()[_twin.__name__] = _twin
del _fn, _base, _dims, _twin


def functional_for(name: str, spatial_dims: int = 2, adaptive: bool = False) -> Callable[..., Tensor]:
    """The functional twin of registered method ``name`` in one form.

    Example:
        >>> functional_for("tmaxavg", 1).__name__, functional_for("gem", 3, adaptive=True).__name__
        ('t_max_avg_pool1d', 'adaptive_gem_pool3d')
    """
    base = get_pool_spec(name).functional.__name__[:-2]
    key = (base, spatial_dims, bool(adaptive))
    if key not in _TWINS:
        forms = sorted(f"{'adaptive ' if a else ''}{d}-D" for b, d, a in _TWINS if b == base)
        raise ValueError(
            f"pool {name!r} has no {key[1]}-D {'adaptive ' if adaptive else ''}form; its forms: {forms}"
        )
    return _TWINS[key]


__all__ = sorted([*(twin.__name__ for twin in _TWINS.values()), "functional_for"])
