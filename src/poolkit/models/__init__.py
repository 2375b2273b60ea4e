"""Models whose downsampling pools are built by :func:`poolkit.create_pool`: VGG-BN and ResNet.

:func:`create_model` is the one factory the experiment harness uses; ``pool`` names any registered
method (``poolkit.list_pools()``), and the head's global pool is chosen separately with ``global_pool``.

Where the ``pool`` goes:

* ``vgg11/13/16/19``: the five 2x2 stride-2 pools closing each stage (the study's "pooling-heavy" net).
* ``resnet18/34`` with ``stem="imagenet"``: the stem's 3x3 stride-2 pool (padding 1).
* ``resnet18/34`` with ``stem="cifar"`` (the default): nowhere -- that ResNet downsamples only with
  strided convolutions, so ``pool`` changes nothing (a ``UserWarning`` says so when it is not ``"max"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from poolkit.models.common import ClassifierHead, check_width, scale_width
from poolkit.models.resnet import RESNET_BLOCKS, BasicBlock, ResNet, resnet18, resnet34
from poolkit.models.vgg import VGG, VGG_STAGES, vgg11, vgg13, vgg16, vgg19
from poolkit.registry import PoolFactory

__all__ = [
    "RESNET_BLOCKS",
    "VGG",
    "VGG_STAGES",
    "BasicBlock",
    "ClassifierHead",
    "ResNet",
    "create_model",
    "list_models",
    "pool_geometry",
    "resnet18",
    "resnet34",
    "scale_width",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
]

_MODELS: dict[str, Callable[..., nn.Module]] = {
    "vgg11": vgg11,
    "vgg13": vgg13,
    "vgg16": vgg16,
    "vgg19": vgg19,
    "resnet18": resnet18,
    "resnet34": resnet34,
}


def list_models() -> list[str]:
    """Every model name :func:`create_model` accepts, sorted.

    Example:
        >>> list_models()
        ['resnet18', 'resnet34', 'vgg11', 'vgg13', 'vgg16', 'vgg19']
    """
    return sorted(_MODELS)


def _check_model(name: str) -> None:
    if not isinstance(name, str) or name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(list_models())}")


def pool_geometry(name: str, stem: str = "cifar") -> tuple[int, int, int] | None:
    """``(kernel_size, stride, padding)`` of the downsampling pools of a model, or None if it has none.

    Lets a caller check pool options against the window they will really get (e.g. ``k`` of a top-k
    method must fit in the window) without building the model.

    Example:
        >>> pool_geometry("vgg16"), pool_geometry("resnet18", "imagenet"), pool_geometry("resnet18")
        ((2, 2, 0), (3, 2, 1), None)
    """
    _check_model(name)
    if name.startswith("vgg"):
        return (2, 2, 0)
    return (3, 2, 1) if stem == "imagenet" else None


def create_model(
    name: str,
    num_classes: int,
    pool: PoolFactory = "max",
    width: float = 1.0,
    in_channels: int = 3,
    *,
    head: str = "linear",
    stem: str = "cifar",
    global_pool: str = "avg",
    **pool_options: Any,
) -> nn.Module:
    """Build a model by name with every downsampling pool replaced by ``pool``.

    Args:
        name: one of :func:`list_models`.
        num_classes: number of outputs (>= 1).
        pool: the downsampling method: a name from ``poolkit.list_pools()``, a pool class or a
            ``functools.partial``. For a ResNet with the CIFAR stem it is unused (see the module docs).
        width: multiplies every channel count; ``round half up``, at least 1 channel (0.125 turns
            VGG16's 64..512 channels into 8..64 for CPU-scale runs).
        in_channels: channels of the input images (1 for grayscale data).
        head: ``"linear"`` (global pool + Linear) or ``"mlp"`` (global pool + VGG's 4096-4096
            classifier, scaled by ``width``; VGG only).
        stem: ``"cifar"`` or ``"imagenet"`` (ResNet only; see the module docs).
        global_pool: the head's global pool, any method :func:`poolkit.create_global_pool` accepts.
        **pool_options: the pool method's own options (``k=2``, ``threshold=0.3``...); they go to
            every downsampling pool, not to the head's global pool.

    Raises:
        ValueError: an unknown model, pool or global pool name (listing the valid ones), an unknown
            pool option, or an argument that does not apply to the model.

    Example:
        >>> import torch
        >>> model = create_model("vgg16", 100, pool="avg", width=0.125)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 100])
        >>> sum(p.numel() for p in create_model("vgg16", 100).parameters())
        14774436
    """
    _check_model(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f"in_channels must be a positive int (3 for RGB, 1 for grayscale), got {in_channels!r}"
        )
    check_width(width)
    if head not in ("linear", "mlp"):
        raise ValueError(f"head must be 'linear' or 'mlp', got {head!r}")
    if stem not in ("cifar", "imagenet"):
        raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
    common = {"pool": pool, "width": width, "in_channels": in_channels, "global_pool": global_pool}
    if name.startswith("vgg"):
        if stem != "cifar":
            raise ValueError(f"stem={stem!r} applies to ResNets only; {name} has no stem (use stem='cifar')")
        return _MODELS[name](num_classes, head=head, pool_options=pool_options, **common)
    if head != "linear":
        raise ValueError(f"head={head!r} applies to VGG only; {name} always has a linear head")
    return _MODELS[name](num_classes, stem=stem, pool_options=pool_options, **common)
