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

from typing import Any

from torch import nn

from poolkit.models.common import ClassifierHead, check_width, scale_width
from poolkit.models.resnet import RESNET_BLOCKS, BasicBlock, ResNet, resnet18, resnet34
from poolkit.models.specs import (
    FAMILIES,
    HEADS,
    STEMS,
    ModelSpec,
    PoolSites,
    families_with,
    get_model_spec,
    list_models,
)
from poolkit.models.vgg import VGG, VGG_STAGES, vgg11, vgg13, vgg16, vgg19
from poolkit.registry import PoolFactory

__all__ = [
    "FAMILIES",
    "HEADS",
    "RESNET_BLOCKS",
    "STEMS",
    "VGG",
    "VGG_STAGES",
    "BasicBlock",
    "ClassifierHead",
    "ModelSpec",
    "PoolSites",
    "ResNet",
    "create_model",
    "get_model_spec",
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


def pool_geometry(name: str, stem: str = "cifar") -> tuple[int, int, int] | None:
    """``(kernel_size, stride, padding)`` of the downsampling pools of a model, or None if it has none.

    Lets a caller check pool options against the window they will really get (e.g. ``k`` of a top-k
    method must fit in the window) without building the model. ``ValueError`` for a stem the model
    does not take.

    Example:
        >>> pool_geometry("vgg16"), pool_geometry("resnet18", "imagenet"), pool_geometry("resnet18")
        ((2, 2, 0), (3, 2, 1), None)
    """
    return get_model_spec(name).sites(stem).geometry


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
    spec = get_model_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(
            f"in_channels must be a positive int (3 for RGB, 1 for grayscale), got {in_channels!r}"
        )
    check_width(width)
    if head not in HEADS:
        raise ValueError(f"head must be {' or '.join(map(repr, HEADS))}, got {head!r}")
    if stem not in STEMS:
        raise ValueError(f"stem must be {' or '.join(map(repr, STEMS))}, got {stem!r}")
    if head not in spec.heads:
        raise ValueError(
            f"head={head!r} applies to {' and '.join(families_with(head=head))} only; {name} always has a "
            f"{spec.heads[0]} head"
        )
    spec.sites(stem)  # ValueError for a stem the model does not take
    common = {"pool": pool, "width": width, "in_channels": in_channels, "global_pool": global_pool}
    if len(spec.heads) > 1:
        common["head"] = head
    if len(spec.stems) > 1:
        common["stem"] = stem
    return spec.builder(num_classes, pool_options=pool_options, **common)
