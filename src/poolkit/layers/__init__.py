"""Pooling layers: every method as a drop-in replacement for ``nn.MaxPool2d``.

Importing this package registers every method in :mod:`poolkit.registry`. One file per family:
``classic`` (max, avg, lp, strided_conv), ``threshold`` (tmaxavg, soft_tmaxavg, learnable_t),
``blend`` (mixed, channel_adaptive, gated, stochastic_mix), ``attention`` (attention, softpool, lip),
``literature`` (stochastic, gem, blurmax); ``windows`` holds the machinery they share, ``fused`` the
fused M/A kernels of the max/average blends and ``sampling`` Stochastic Mix's Beta draws.
"""

from poolkit.layers.attention import AttentionPool, LIPPool, SoftPool
from poolkit.layers.base import Pool2d
from poolkit.layers.blend import ChannelAdaptivePool, GatedPool, MixedPool, StochasticMixPool
from poolkit.layers.classic import AvgPool, LPPool, MaxPool, StridedConvPool
from poolkit.layers.fused import set_fused_kernels, use_fused_kernels, window_max_mean
from poolkit.layers.global_pool import GlobalPool2d, create_global_pool
from poolkit.layers.literature import BlurMaxPool, GeMPool, StochasticPool
from poolkit.layers.threshold import LearnableTPool, SoftTMaxAvgPool, TMaxAvgPool
from poolkit.layers.windows import PoolGeometry

__all__ = [
    "AttentionPool",
    "AvgPool",
    "BlurMaxPool",
    "ChannelAdaptivePool",
    "GatedPool",
    "GeMPool",
    "GlobalPool2d",
    "LIPPool",
    "LPPool",
    "LearnableTPool",
    "MaxPool",
    "MixedPool",
    "Pool2d",
    "PoolGeometry",
    "SoftPool",
    "SoftTMaxAvgPool",
    "StochasticMixPool",
    "StochasticPool",
    "StridedConvPool",
    "TMaxAvgPool",
    "create_global_pool",
    "set_fused_kernels",
    "use_fused_kernels",
    "window_max_mean",
]
