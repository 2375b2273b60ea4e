"""poolkit: pooling layers for CNNs as drop-in replacements for ``nn.MaxPool2d``, and a harness that
measures which one to use."""

from poolkit import layers  # noqa: F401  (registers every method)
from poolkit.registry import create_global_pool, create_pool, get_pool_spec, list_pools

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "create_global_pool",
    "create_pool",
    "get_pool_spec",
    "list_pools",
]
