"""Model surgery: replace the pooling layers of any existing model with a poolkit method."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn

from poolkit.registry import PoolFactory, create_adaptive_pool, create_pool, get_pool_spec

__all__ = ["find_pools", "swap_pooling"]

_POOL_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


def find_pools(
    model: nn.Module, targets: Iterable[type[nn.Module]] = (nn.MaxPool2d,)
) -> list[tuple[str, nn.Module]]:
    """The ``(qualified name, module)`` pairs of ``model`` that are instances of ``targets``."""
    targets = tuple(targets)
    return [(name, m) for name, m in model.named_modules() if name and isinstance(m, targets)]


def _method_class(method: PoolFactory) -> type | None:
    """The pool class that ``method`` builds (None for a foreign callable)."""
    if isinstance(method, str):
        return get_pool_spec(method).cls
    target = getattr(method, "func", method)
    return target if isinstance(target, type) else None


def _method_label(method: PoolFactory) -> str:
    cls = _method_class(method)
    return repr(method) if isinstance(method, str) else (cls.__name__ if cls else repr(method))


_SPATIAL_DIMS: dict[type[nn.Module], int] = {
    nn.MaxPool1d: 1, nn.MaxPool2d: 2, nn.MaxPool3d: 3,
    nn.AvgPool1d: 1, nn.AvgPool2d: 2, nn.AvgPool3d: 3,
    nn.LPPool1d: 1, nn.LPPool2d: 2,
    nn.AdaptiveMaxPool1d: 1, nn.AdaptiveMaxPool2d: 2, nn.AdaptiveMaxPool3d: 3,
    nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3,
}  # fmt: skip
if hasattr(nn, "LPPool3d"):
    _SPATIAL_DIMS[nn.LPPool3d] = 3


def _spatial_dims(module: nn.Module) -> int:
    """The number of spatial axes a pooling layer works on (2 for an unknown MaxPool2d-like class)."""
    for cls in type(module).__mro__:
        if cls in _SPATIAL_DIMS:
            return _SPATIAL_DIMS[cls]
    return int(getattr(module, "spatial_dims", 2))


def _pool_arguments(name: str, module: nn.Module, method: PoolFactory) -> dict[str, Any]:
    """The arguments that rebuild ``module``'s windows with ``method``: ``create_pool``'s for a windowed
    layer, ``create_adaptive_pool``'s (``output_size``) for an adaptive one, ``spatial_dims`` for both.

    Options of the target that the method cannot honour raise a ``ValueError`` naming the option and the fix.
    """
    from poolkit.layers.classic import AvgPool, LPPool

    cls = _method_class(method)
    label = _method_label(method)
    kind = type(module).__name__
    dims = _spatial_dims(module)
    if getattr(module, "return_indices", False):
        raise ValueError(
            f"{name}: {kind}(return_indices=True) feeds a MaxUnpool and cannot be replaced; "
            f"exclude it from targets"
        )
    kernel = getattr(module, "kernel_size", None)
    output_size = getattr(module, "output_size", None)
    if kernel is None and output_size is not None:  # adaptive and global pools
        if isinstance(output_size, (tuple, list)):
            output_size = tuple(output_size)
        return {"output_size": output_size, "spatial_dims": dims}
    if kernel is None:
        raise ValueError(
            f"{name}: {kind} has neither kernel_size nor output_size, so it is not a pool that "
            f"swap_pooling can replace; remove it from targets"
        )
    arguments: dict[str, Any] = {"kernel_size": kernel, "spatial_dims": dims}
    for arg in _POOL_ARGS[1:]:
        if hasattr(module, arg):
            arguments[arg] = getattr(module, arg)
    if arguments.get("stride") is None:
        arguments["stride"] = kernel
    padded = any(p > 0 for p in nn.modules.utils._ntuple(dims)(arguments.get("padding", 0)))
    if isinstance(module, nn.modules.pooling._AvgPoolNd):
        divisor = getattr(module, "divisor_override", None)  # AvgPool1d has none
        if cls is not None and issubclass(cls, AvgPool):
            arguments["count_include_pad"] = bool(module.count_include_pad)
            arguments["divisor_override"] = divisor
        elif divisor is not None:
            raise ValueError(
                f"{name}: {kind}(divisor_override={divisor}) divides every window by a "
                f"constant, which {label} cannot honour; swap it to 'avg' (which honours it) or set "
                f"divisor_override=None on the layer first"
            )
        elif module.count_include_pad and padded:
            raise ValueError(
                f"{name}: {kind}(count_include_pad=True) counts its zero padding as cells, which "
                f"{label} cannot honour (poolkit's methods never count padding); swap it to 'avg' (which "
                f"honours it) or set count_include_pad=False on the layer first"
            )
    if isinstance(module, nn.modules.pooling._LPPoolNd):
        if arguments.get("ceil_mode"):
            raise ValueError(
                f"{name}: {kind}(ceil_mode=True) rescales its cut-off last windows (torch computes it "
                f"from an average times the full window size), which poolkit's lp cannot honour; "
                f"use ceil_mode=False"
            )
        if cls is not None and issubclass(cls, LPPool):
            arguments["norm_type"] = float(module.norm_type)
        else:
            raise ValueError(
                f"{name}: {kind}(norm_type={module.norm_type}) is a power average that {label} cannot "
                f"honour; swap it to 'lp' (which takes its norm_type), or remove {kind} from targets"
            )
    return arguments


def _input_channels(model: nn.Module, layers: list[nn.Module], example_input: Any) -> dict[int, set[int]]:
    """Run ``example_input`` once and record, per layer id, the channel counts it receives."""
    seen: dict[int, set[int]] = {id(m): set() for m in layers}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        dims = _spatial_dims(module)
        if isinstance(x, Tensor) and x.dim() in (dims + 1, dims + 2):
            seen[id(module)].add(int(x.shape[-1 - dims]))

    handles = [m.register_forward_pre_hook(hook) for m in layers]
    modes = {m: m.training for m in model.modules()}  # restore each module's own mode afterwards
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(example_input, (tuple, list)):
                model(*example_input)
            elif isinstance(example_input, dict):
                model(**example_input)
            else:
                model(example_input)
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return seen


def _factory_kwargs(module: nn.Module, example_input: Any) -> dict[str, Any]:
    """Put a new layer where its surroundings live: the device/dtype of the first floating-point parameter or
    buffer of ``module`` (the replaced layer's parent, then the model), else of the example input."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return {"device": tensor.device, "dtype": tensor.dtype}
    if isinstance(example_input, Tensor) and example_input.is_floating_point():
        return {"device": example_input.device, "dtype": example_input.dtype}
    return {}


def _parents(model: nn.Module) -> dict[int, nn.Module]:
    """For each child module's id, the first module that holds it."""
    parents: dict[int, nn.Module] = {}
    for parent in model.modules():
        for child in parent._modules.values():
            if child is not None:
                parents.setdefault(id(child), parent)
    return parents


def swap_pooling(
    model: nn.Module,
    method: PoolFactory,
    *,
    targets: Iterable[type[nn.Module]] = (nn.MaxPool2d,),
    example_input: Any = None,
    **options: Any,
) -> nn.Module:
    """Replace every ``targets`` layer of ``model`` in place by ``method``, keeping its geometry.

    Every instance of a target class, also inside nested modules and ``nn.Sequential``, becomes the matching
    form of the method: a windowed layer (``nn.MaxPool1d/2d/3d``, ``nn.AvgPool1d/2d/3d``, ``nn.LPPool1d/2d``)
    becomes ``create_pool(method, kernel_size, stride, padding, dilation, ceil_mode, channels=C,
    spatial_dims=n, **options)``, an adaptive one (``nn.AdaptiveMaxPool1d/2d/3d``,
    ``nn.AdaptiveAvgPool1d/2d/3d``: the heads of torchvision, timm and Hugging Face models) becomes
    ``create_adaptive_pool(method, output_size, channels=C, spatial_dims=n, **options)``.
    A module object used in several places stays shared (one replacement for it). When the method
    needs channel counts (``PoolSpec.needs_channels``), they come from one forward pass of
    ``example_input`` in eval mode under ``torch.no_grad()``.

    The swap changes nothing but the pooling method: each new layer takes the replaced layer's train/eval
    mode and the device and dtype of its parent module (else of the model, else of ``example_input``).
    Options of a target that the method cannot honour are a ``ValueError`` naming the option and the fix
    (``nn.AvgPool2d``'s ``count_include_pad``/``divisor_override``, honoured by ``"avg"``; ``nn.LPPool2d``'s
    ``norm_type``, honoured by ``"lp"``; ``return_indices``).

    Args:
        model: any ``nn.Module``; modified in place and returned.
        method: a registered name, a pool class or a ``functools.partial``.
        targets: the layer classes to replace (default ``(nn.MaxPool2d,)``; add ``nn.AvgPool2d``,
            ``nn.AdaptiveAvgPool2d``, ``nn.MaxPool1d``... or poolkit pool classes).
        example_input: an input for ``model`` (a tensor, a tuple of positional inputs or a dict of
            keyword inputs), needed only when the method needs channel counts.
        **options: the method's own options.

    Returns:
        The same model.

    Raises:
        ValueError: the method needs channels and no ``example_input`` was given, or a target layer
            was not reached by the example forward pass, or a shared layer sees different channel
            counts; an unknown method or option.

    Example:
        >>> import torch, poolkit
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.MaxPool2d(2), nn.Flatten())
        >>> net = poolkit.swap_pooling(net, "gated", example_input=torch.randn(1, 3, 8, 8))
        >>> type(net[1]).__name__, net[1].channels
        ('GatedPool', 8)
    """
    targets = tuple(targets)
    if not targets:
        raise ValueError("targets must name at least one layer class, e.g. (nn.MaxPool2d,)")
    found = find_pools(model, targets)
    if not found:
        return model
    unique: dict[int, tuple[str, nn.Module]] = {}
    for name, module in found:
        unique.setdefault(id(module), (name, module))

    needs_channels = _needs_channels(method, options)
    channels: dict[int, int | None] = {key: None for key in unique}
    if needs_channels:
        if example_input is None:
            names = ", ".join(name for name, _ in unique.values())
            raise ValueError(
                f"pool {method!r} needs the channel count of each layer it replaces ({names}); pass "
                f"example_input=<a tensor the model accepts, e.g. torch.randn(1, 3, 32, 32)> so "
                f"swap_pooling can find them with one forward pass"
            )
        seen = _input_channels(model, [m for _, m in unique.values()], example_input)
        for key, (name, _) in unique.items():
            counts = seen[key]
            if not counts:
                raise ValueError(
                    f"{name} was not reached by the forward pass of example_input, so its channel "
                    f"count is unknown; pass an example_input that runs through it"
                )
            if len(counts) > 1:
                raise ValueError(
                    f"{name} is one module used with different channel counts {sorted(counts)}; "
                    f"{method!r} has per-channel parts, so give each use its own pooling module"
                )
            channels[key] = counts.pop()

    parents = _parents(model)
    replacements: dict[int, nn.Module] = {}
    for key, (name, module) in unique.items():
        arguments = _pool_arguments(name, module, method)
        if "output_size" in arguments:
            new = create_adaptive_pool(method, **arguments, channels=channels[key], **options)
        else:
            new = create_pool(method, **arguments, channels=channels[key], **options)
        factory = _factory_kwargs(parents[key], None) or _factory_kwargs(model, example_input)
        new = new.to(**factory) if factory else new
        replacements[key] = new.train(module.training)  # an eval model stays in eval

    for parent in model.modules():
        # _modules, not named_children(): the latter skips a module object the second time it appears.
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])
    return model


def _needs_channels(method: PoolFactory, options: dict[str, Any]) -> bool:
    """Whether ``method`` must be told its channel count (per-channel options count too)."""
    if isinstance(method, str):
        spec = get_pool_spec(method)
        return spec.needs_channels or bool(options.get("per_channel", False))
    target = getattr(method, "func", method)
    keywords = getattr(method, "keywords", {}) or {}
    if bool(options.get("per_channel", keywords.get("per_channel", False))):
        return True
    return bool(getattr(target, "needs_channels", False))
