"""poolkit: pooling layers for CNNs as drop-in replacements for ``nn.MaxPool2d``, and a harness that
measures which one to use.

Example:
    >>> import torch, poolkit
    >>> pool = poolkit.create_pool("stochastic_mix", kernel_size=2, channels=64)
    >>> pool(torch.randn(8, 64, 32, 32)).shape
    torch.Size([8, 64, 16, 16])
    >>> pool3d = poolkit.create_pool("attention", kernel_size=2, channels=32, spatial_dims=3)
    >>> pool3d(torch.randn(2, 32, 8, 8, 8)).shape
    torch.Size([2, 32, 4, 4, 4])
    >>> poolkit.create_adaptive_pool("gem", output_size=(7, 7))(torch.rand(2, 512, 9, 9)).shape
    torch.Size([2, 512, 7, 7])
"""

import importlib
from types import ModuleType

from poolkit import functional, layers
from poolkit.layers.global_pool import create_global_pool
from poolkit.registry import (
    PoolSpec,
    create_adaptive_pool,
    create_pool,
    get_pool_spec,
    list_pools,
    pool_options,
    register_pool,
)
from poolkit.surgery import find_pools, swap_pooling

__version__ = "0.1.0"

# The harness packages load on first use (``poolkit.models.create_model(...)``), so that
# ``import poolkit`` for the layers alone stays light.
_LAZY_SUBMODULES = ("analysis", "bench", "data", "experiments", "models", "report", "train")


def __getattr__(name: str) -> ModuleType:
    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"poolkit.{name}")
    raise AttributeError(f"module 'poolkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_SUBMODULES])


__all__ = [
    "PoolSpec",
    "__version__",
    "create_adaptive_pool",
    "create_global_pool",
    "create_pool",
    "find_pools",
    "functional",
    "get_pool_spec",
    "layers",
    "list_pools",
    "pool_options",
    "register_pool",
    "swap_pooling",
]
