"""Helpers shared by the pooling-layer tests: how to build any registered pool for a given window."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

import poolkit

ALL_POOLS = poolkit.list_pools()
STOCHASTIC = [n for n in ALL_POOLS if poolkit.get_pool_spec(n).stochastic]
DETERMINISTIC = [n for n in ALL_POOLS if n not in STOCHASTIC]
# Methods whose output is a max/average blend (A <= y <= M) or a weighted average (min <= y <= max).
BLENDS = ["tmaxavg", "soft_tmaxavg", "learnable_t", "channel_adaptive", "gated", "stochastic_mix", "mixed"]
WEIGHTED_AVERAGES = ["avg", "attention", "softpool", "lip", "stochastic", "gem"]
K_METHODS = ["tmaxavg", "soft_tmaxavg", "learnable_t"]
CHANNELS = 4


def reseed(value: int) -> None:
    """Seed torch's global CPU generator (what the pools draw from on CPU).

    ``torch.manual_seed`` also queues a CUDA seeding call with a formatted stack trace each time CUDA
    is not initialised, which makes thousands of calls (gradcheck's) slow; this seeds the same CPU
    generator without that. With CUDA available it seeds everything.
    """
    if torch.cuda.is_available():
        torch.manual_seed(value)
    else:
        torch.random.default_generator.manual_seed(value)


ADAPTIVE_POOLS = [n for n in ALL_POOLS if poolkit.get_pool_spec(n).supports_global]
#: Every form beyond the 2-D windowed one: (label, spatial_dims, adaptive).
FORMS = [
    ("1d", 1, False),
    ("3d", 3, False),
    ("adaptive1d", 1, True),
    ("adaptive2d", 2, True),
    ("adaptive3d", 3, True),
]
#: (method, form) pairs that exist: every method has the windowed forms, all but two the adaptive ones.
FORM_CASES = [(name, form) for form in FORMS for name in ALL_POOLS if not form[2] or name in ADAPTIVE_POOLS]
FORM_IDS = [f"{name}-{form[0]}" for name, form in FORM_CASES]


def options_for(name: str, kernel_size: Any, spatial_dims: int = 2) -> dict[str, Any]:
    """Options that keep a method valid for any window: K is clipped to the window's area."""
    if name in K_METHODS and kernel_size is not None:
        sizes = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else kernel_size
        return {"k": min(4, math.prod(sizes))}
    return {}


def build(
    name: str,
    kernel_size: Any = 2,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    channels: int = CHANNELS,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """A pool with reproducible initial weights (the seed fixes the conv parts' init)."""
    reseed(seed)
    opts = {**options_for(name, kernel_size), **options}
    return poolkit.create_pool(
        name, kernel_size, stride, padding, dilation, ceil_mode, channels=channels, **opts
    )


def perturb(module: nn.Module, seed: int = 1) -> nn.Module:
    """Move every learnable parameter away from its initial value (init values can hide bugs)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype))
    return module


def geometry_kwargs(module: nn.Module) -> dict[str, Any]:
    return {
        "kernel_size": module.kernel_size,
        "stride": module.stride,
        "padding": module.padding,
        "dilation": module.dilation,
        "ceil_mode": module.ceil_mode,
    }


def build_form(
    name: str,
    spatial_dims: int,
    adaptive: bool,
    kernel_size: Any = 2,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: bool = False,
    *,
    output_size: Any = 2,
    channels: int = CHANNELS,
    seed: int = 0,
    **options: Any,
) -> nn.Module:
    """A pool of any form with reproducible initial weights: windowed (geometry) or adaptive (output_size)."""
    reseed(seed)
    if adaptive:
        return poolkit.create_adaptive_pool(
            name, output_size, channels=channels, spatial_dims=spatial_dims, **options
        )
    opts = {**options_for(name, kernel_size, spatial_dims), **options}
    return poolkit.create_pool(
        name, kernel_size, stride, padding, dilation, ceil_mode, channels=channels, spatial_dims=spatial_dims,
        **opts,
    )  # fmt: skip
