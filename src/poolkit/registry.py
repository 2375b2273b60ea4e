"""The registry of pooling methods: a factory by name, class or ``functools.partial``.

Every method registers itself with :func:`register_pool` next to its definition; the rest of poolkit
(models, surgery, the experiment harness) builds pools only through :func:`create_pool`, so a newly
registered method is available everywhere at once.

The registry sits below the layers: every layer module imports it to register itself, and it imports
no layer (``tests/test_architecture.py``); :func:`poolkit.create_global_pool`, which wraps an adaptive
pool in :class:`~poolkit.layers.GlobalPool2d`, lives next to that class in :mod:`poolkit.layers.global_pool`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from torch import nn

if TYPE_CHECKING:
    from poolkit.layers.base import Pool2d

__all__ = [
    "STUDY_METHODS",
    "PoolFactory",
    "PoolSpec",
    "create_adaptive_pool",
    "create_pool",
    "get_pool_spec",
    "list_pools",
    "pool_options",
    "register_pool",
]

Family = Literal["classic", "study", "literature"]

#: The adaptive-pooling study's eight methods in the order of its Table 1 (``max`` is its baseline).
STUDY_METHODS: tuple[str, ...] = (
    "max",
    "tmaxavg",
    "soft_tmaxavg",
    "channel_adaptive",
    "learnable_t",
    "gated",
    "attention",
    "stochastic_mix",
)
PoolFactory = str | type[nn.Module] | functools.partial
_GEOMETRY_ARGS = (
    "kernel_size", "stride", "padding", "dilation", "ceil_mode", "channels", "device", "dtype",
    "spatial_dims", "output_size",
)  # fmt: skip


@dataclass(frozen=True)
class PoolSpec:
    """What the registry knows about one method.

    Attributes:
        name: the registry key (``"tmaxavg"``).
        cls: the ``nn.Module`` class, a subclass of :class:`poolkit.layers.base.Pool2d`.
        functional: the functional twin in :mod:`poolkit.functional`.
        family: ``"classic"``, ``"study"`` (the adaptive-pooling study's eight) or ``"literature"``.
        title: the method's display label, the one name every table, figure and benchmark uses
            (``"Channel-Adaptive"``); the report writes nothing else for a method.
        formula: the method's output for one window in short plain text (M = window max, A = window
            mean, R = the window's real cells), as the report's gallery prints it.
        needs_channels: whether ``channels=`` is required (per-channel or convolutional parts).
        stochastic: whether training mode draws random numbers.
        supports_global: whether it has the adaptive forms (:func:`create_adaptive_pool`, and
            :func:`poolkit.create_global_pool`, their ``output_size=1`` case).
    """

    name: str
    cls: type[Pool2d]
    functional: Callable[..., Any]
    family: Family
    title: str
    formula: str
    needs_channels: bool
    stochastic: bool
    supports_global: bool

    @property
    def forms(self) -> tuple[str, ...]:
        """The forms of the method: ``"1d"``, ``"2d"``, ``"3d"`` (windowed) and, for all but ``strided_conv``
        and ``blurmax``, ``"adaptive1d"``, ``"adaptive2d"``, ``"adaptive3d"`` (global = output_size 1).

        Example:
            >>> import poolkit
            >>> poolkit.get_pool_spec("gem").forms
            ('1d', '2d', '3d', 'adaptive1d', 'adaptive2d', 'adaptive3d')
        """
        windowed = ("1d", "2d", "3d")
        return windowed + (("adaptive1d", "adaptive2d", "adaptive3d") if self.supports_global else ())


_REGISTRY: dict[str, PoolSpec] = {}
_T = TypeVar("_T", bound=type)


def register_pool(
    name: str,
    *,
    functional: Callable[..., Any],
    family: Family,
    title: str,
    formula: str,
    stochastic: bool = False,
    supports_global: bool = True,
) -> Callable[[_T], _T]:
    """Class decorator that registers a :class:`~poolkit.layers.base.Pool2d` subclass under ``name``.

    ``title`` (the display label) and ``formula`` (one window's output in plain text) are required:
    the report and the benchmarks read them from here, never from their own copies.

    Example:
        >>> import poolkit
        >>> spec = poolkit.get_pool_spec("channel_adaptive")
        >>> spec.title, spec.formula
        ('Channel-Adaptive', 'lambda_c = sigmoid(theta_c), y_c = lambda_c M_c + (1 - lambda_c) A_c')
    """
    for field, value in (("title", title), ("formula", formula)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f"register_pool({name!r}): {field} must be a non-empty string, got {value!r}; "
                f"give the method's {'display label' if field == 'title' else 'one-window formula'}"
            )

    def decorator(cls: _T) -> _T:
        if name in _REGISTRY and _REGISTRY[name].cls is not cls:
            raise ValueError(f"pool name {name!r} is already registered to {_REGISTRY[name].cls.__name__}")
        _REGISTRY[name] = PoolSpec(
            name=name,
            cls=cls,  # type: ignore[arg-type]
            functional=functional,
            family=family,
            title=title,
            formula=formula,
            needs_channels=bool(getattr(cls, "needs_channels", False)),
            stochastic=stochastic,
            supports_global=supports_global,
        )
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def list_pools(family: Family | None = None) -> list[str]:
    """Every registered method name, sorted (optionally only one ``family``).

    Example:
        >>> import poolkit
        >>> "stochastic_mix" in poolkit.list_pools()
        True
    """
    return sorted(n for n, spec in _REGISTRY.items() if family is None or spec.family == family)


def get_pool_spec(name: str) -> PoolSpec:
    """The :class:`PoolSpec` of a registered name; ``ValueError`` listing valid names otherwise."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown pool {name!r}; valid names are: {', '.join(list_pools())}")
    return _REGISTRY[name]


def pool_options(name: str) -> dict[str, Any]:
    """The method's own options and their defaults (beyond the ``nn.MaxPool2d`` arguments)."""
    return _own_options(get_pool_spec(name).cls)


def _own_options(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {
        n: p.default
        for n, p in params.items()
        if n != "self" and n not in _GEOMETRY_ARGS and p.kind is not inspect.Parameter.VAR_KEYWORD
    }


def _check_options(cls: type, label: str, options: dict[str, Any]) -> None:
    valid = _own_options(cls)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        listed = ", ".join(valid) if valid else "none"
        raise ValueError(f"unknown option(s) {unknown} for pool {label}; its options are: {listed}")


def _is_poolkit_class(target: Any) -> bool:
    return inspect.isclass(target) and hasattr(target, "registry_name")


def create_pool(
    method: PoolFactory,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] | None = None,
    padding: int | tuple[int, ...] = 0,
    dilation: int | tuple[int, ...] = 1,
    ceil_mode: bool = False,
    *,
    channels: int | None = None,
    spatial_dims: int = 2,
    **options: Any,
) -> nn.Module:
    """Build a pooling layer from a registered name, a class or a ``functools.partial``.

    Args:
        method: a name from :func:`list_pools`, a pool class, or a ``functools.partial`` of one.
        kernel_size, stride, padding, dilation, ceil_mode: as :class:`torch.nn.MaxPool1d`/``2d``/``3d``
            (ints, or tuples of length ``spatial_dims``).
        channels: the number of input channels; required by methods with per-channel or
            convolutional parts (see ``PoolSpec.needs_channels``), checked against the input by all.
        spatial_dims: 1 for (N, C, L) inputs, 2 (default) for (N, C, H, W), 3 for (N, C, D, H, W);
            every registered method has all three forms.
        **options: the method's own options (``k``, ``threshold``, ``tau``, ...).

    Raises:
        ValueError: an unknown name (the message lists the valid ones), an unknown option, a
            missing ``channels``, or ``spatial_dims`` other than 1, 2, 3.

    Example:
        >>> import torch, poolkit
        >>> pool = poolkit.create_pool("tmaxavg", kernel_size=2, k=2, threshold=0.5)
        >>> pool(torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])).flatten().tolist()
        [0.22499999403953552]
        >>> poolkit.create_pool("stochastic_mix", kernel_size=4, spatial_dims=1)(torch.randn(8, 64, 32)).shape
        torch.Size([8, 64, 8])
    """
    geometry = {"stride": stride, "padding": padding, "dilation": dilation, "ceil_mode": ceil_mode}
    form = {"channels": channels, "spatial_dims": spatial_dims}
    if isinstance(method, str):
        cls = get_pool_spec(method).cls
        _check_options(cls, repr(method), options)
        return cls(kernel_size, **geometry, **form, **options)
    if isinstance(method, functools.partial):
        target = method.func
        if _is_poolkit_class(target):
            _check_options(target, target.__name__, options)
            return method(kernel_size, **geometry, **form, **options)
        if spatial_dims != 2:
            raise ValueError(
                f"create_pool: spatial_dims={spatial_dims} needs a poolkit method; a partial of "
                f"{getattr(target, '__name__', target)!r} gets only the geometry"
            )
        return method(kernel_size, **geometry, channels=channels, **options)
    if inspect.isclass(method) and issubclass(method, nn.Module):
        if _is_poolkit_class(method):
            _check_options(method, method.__name__, options)
            return method(kernel_size, **geometry, **form, **options)
        # A foreign class such as nn.MaxPool2d or nn.AvgPool1d: pass what its signature accepts (its own
        # class fixes its number of spatial dims).
        accepted = inspect.signature(method.__init__).parameters
        kwargs = {k: v for k, v in {**geometry, "channels": channels}.items() if k in accepted}
        return method(kernel_size, **kwargs, **options)
    raise ValueError(
        f"create_pool expects a registered name, an nn.Module class or a functools.partial, got "
        f"{type(method).__name__}; valid names are: {', '.join(list_pools())}"
    )


def _adaptive_spec(method: str) -> PoolSpec:
    spec = get_pool_spec(method)
    if not spec.supports_global:
        valid = [n for n in list_pools() if _REGISTRY[n].supports_global]
        raise ValueError(
            f"pool {method!r} has no global or adaptive form (its weights or filter depend on a fixed "
            f"window and stride); adaptive pools are: {', '.join(valid)}"
        )
    return spec


def create_adaptive_pool(
    method: PoolFactory,
    output_size: int | tuple[int | None, ...],
    *,
    channels: int | None = None,
    spatial_dims: int = 2,
    **options: Any,
) -> nn.Module:
    """An adaptive pool: like ``nn.AdaptiveAvgPool{spatial_dims}d(output_size)``, with any method.

    Output cell ``i`` of an axis of length ``L`` pools the input cells ``floor(i L / out)`` to
    ``ceil((i + 1) L / out) - 1``, exactly PyTorch's adaptive windows; ``max`` and ``avg`` equal
    ``F.adaptive_max_pool{n}d`` and ``F.adaptive_avg_pool{n}d``. ``output_size`` is an int or one int per
    spatial axis, None keeping that axis's input size. ``output_size=1`` is the global form
    (:func:`poolkit.create_global_pool`). Options clipped to the window (T-Max-Avg's K) are clipped per
    window. Every method but ``strided_conv`` and ``blurmax`` has this form.

    Example:
        >>> import torch, poolkit
        >>> head = poolkit.create_adaptive_pool("gem", output_size=(7, 7))
        >>> head(torch.rand(2, 512, 15, 15)).shape
        torch.Size([2, 512, 7, 7])
        >>> poolkit.create_adaptive_pool("max", (None, 3))(torch.rand(1, 2, 5, 7)).shape
        torch.Size([1, 2, 5, 3])
    """
    target: Any
    if isinstance(method, str):
        target = _adaptive_spec(method).cls
        _check_options(target, repr(method), options)
        build: Any = target
    elif isinstance(method, functools.partial) and _is_poolkit_class(method.func):
        target, build = method.func, method
        _check_options(target, target.__name__, options)
    elif _is_poolkit_class(method):
        target = build = method
        _check_options(target, target.__name__, options)
    else:
        raise ValueError(
            f"create_adaptive_pool expects a registered name, a poolkit pool class or a functools.partial "
            f"of one, got {method!r}; valid names are: {', '.join(list_pools())}"
        )
    if target.registry_name:
        _adaptive_spec(target.registry_name)
    pool = build(None, channels=channels, spatial_dims=spatial_dims, output_size=output_size, **options)
    return pool  # type: ignore[no-any-return]
