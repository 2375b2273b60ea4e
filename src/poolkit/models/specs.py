"""The model registry: one :class:`ModelSpec` per model name, the one place that knows a model's family,
its display title, which heads and stems it takes, and where its downsampling pools sit.

Everything that used to test ``name.startswith("vgg")`` asks the spec instead: :func:`create_model` and
the run config (heads, stems, pool windows), ``poolkit list models`` (pool counts), the report (titles,
families, order) and ``poolkit bench`` (default image size and classes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from poolkit.models.resnet import resnet18, resnet34
from poolkit.models.vgg import VGG_STAGES, vgg11, vgg13, vgg16, vgg19

__all__ = [
    "FAMILIES",
    "HEADS",
    "STEMS",
    "ModelSpec",
    "PoolSites",
    "families_with",
    "get_model_spec",
    "list_models",
]

#: Every head any model takes, and every stem (a model's own are in :attr:`ModelSpec.heads`/``stems``).
HEADS: tuple[str, ...] = ("linear", "mlp")
STEMS: tuple[str, ...] = ("cifar", "imagenet")


@dataclass(frozen=True)
class PoolSites:
    """Where a model's downsampling pools are, for one stem.

    ``geometry`` is the ``(kernel_size, stride, padding)`` shared by every one of them (None when there
    is none) and ``modules`` their module names in the built model (the head's global pool not counted).
    """

    geometry: tuple[int, int, int] | None
    modules: tuple[str, ...]


@dataclass(frozen=True)
class ModelSpec:
    """What poolkit knows about one model.

    Attributes:
        name: the name :func:`poolkit.models.create_model` takes (``"vgg16"``).
        family: ``"vgg"`` or ``"resnet"``: what the report's architecture figure compares.
        family_title: the family as text (``"VGG"``, ``"ResNet"``).
        title: the model as text (``"VGG16"``).
        depth: the number in the name (11, 16, 18...): the order inside a family.
        builder: ``builder(num_classes, **kwargs)`` builds the model.
        heads: the heads it takes (``head=``), the first is the default.
        stems: the stems it takes (``stem=``), the first is the default.
        pools: the :class:`PoolSites` of each stem.
        image_size, num_classes: the dataset it is benchmarked on by default (CIFAR-100's 32x32 and 100
            classes for VGG, Tiny ImageNet's 64x64 and 200 for ResNet).

    Example:
        >>> spec = get_model_spec("resnet18")
        >>> spec.title, spec.family, spec.stems, spec.pools["imagenet"].geometry
        ('ResNet18', 'resnet', ('cifar', 'imagenet'), (3, 2, 1))
    """

    name: str
    family: str
    family_title: str
    title: str
    depth: int
    builder: Callable[..., nn.Module]
    heads: tuple[str, ...]
    stems: tuple[str, ...]
    pools: Mapping[str, PoolSites]
    image_size: int
    num_classes: int

    def sites(self, stem: str) -> PoolSites:
        """The pools of the model built with ``stem``; ``ValueError`` for a stem it does not take."""
        if stem not in self.pools:
            raise ValueError(
                f"stem={stem!r} applies to {' and '.join(f + 's' for f in families_with(stem=stem))} only; "
                f"{self.name} has no {stem!r} stem (use stem={self.stems[0]!r})"
            )
        return self.pools[stem]


def _vgg_spec(name: str, builder: Callable[..., nn.Module]) -> ModelSpec:
    stages = len(VGG_STAGES[name])
    sites = PoolSites((2, 2, 0), tuple(f"features.stage{s}.pool" for s in range(1, stages + 1)))
    return ModelSpec(
        name=name,
        family="vgg",
        family_title="VGG",
        title="VGG" + name[3:],
        depth=int(name[3:]),
        builder=builder,
        heads=("linear", "mlp"),
        stems=("cifar",),
        pools={"cifar": sites},
        image_size=32,
        num_classes=100,
    )


def _resnet_spec(name: str, builder: Callable[..., nn.Module]) -> ModelSpec:
    return ModelSpec(
        name=name,
        family="resnet",
        family_title="ResNet",
        title="ResNet" + name[6:],
        depth=int(name[6:]),
        builder=builder,
        heads=("linear",),
        stems=("cifar", "imagenet"),
        pools={"cifar": PoolSites(None, ()), "imagenet": PoolSites((3, 2, 1), ("stem.pool",))},
        image_size=64,
        num_classes=200,
    )


_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _vgg_spec("vgg11", vgg11),
        _vgg_spec("vgg13", vgg13),
        _vgg_spec("vgg16", vgg16),
        _vgg_spec("vgg19", vgg19),
        _resnet_spec("resnet18", resnet18),
        _resnet_spec("resnet34", resnet34),
    )
}

#: The model families in the study's order (VGG, the "pooling-heavy" net, before ResNet).
FAMILIES: tuple[str, ...] = tuple(dict.fromkeys(spec.family for spec in _SPECS.values()))


def list_models() -> list[str]:
    """Every model name :func:`poolkit.models.create_model` accepts, sorted.

    Example:
        >>> list_models()
        ['resnet18', 'resnet34', 'vgg11', 'vgg13', 'vgg16', 'vgg19']
    """
    return sorted(_SPECS)


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a model name; ``ValueError`` listing the valid names otherwise.

    Example:
        >>> get_model_spec("vgg16").title, get_model_spec("vgg16").pools["cifar"].geometry
        ('VGG16', (2, 2, 0))
    """
    spec = _SPECS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ValueError(f"unknown model {name!r}; valid models are: {', '.join(list_models())}")
    return spec


def families_with(**attribute: Any) -> list[str]:
    """Titles of the families of which some model takes ``head=`` or ``stem=`` the given value.

    Example:
        >>> families_with(head="mlp"), families_with(stem="imagenet")
        (['VGG'], ['ResNet'])
    """
    ((key, value),) = attribute.items()
    plural = {"head": "heads", "stem": "stems"}[key]
    titles = (s.family_title for s in _SPECS.values() if value in getattr(s, plural))
    return list(dict.fromkeys(titles))
