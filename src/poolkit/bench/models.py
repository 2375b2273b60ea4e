"""The model level of ``poolkit bench``: one training step per pool, interleaved round-robin with ``max``."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import poolkit
from poolkit.bench.timing import _error, _median_iqr, _resolve_device, _timed_steps

__all__ = ["ModelResult", "bench_models"]


@dataclass
class ModelResult:
    """One pool's training step.

    ``ms`` is the median over rounds of the time per step; ``ratio`` the median over rounds of the per-round
    ratio to ``max``, and ``ratio_q25`` / ``ratio_q75`` the interquartile range of those ratios.
    """

    model: str
    config: str
    layout: str
    amp: bool
    device: str
    pool: str
    ms: float | None = None
    iqr_ms: float | None = None
    ratio: float | None = None
    ratio_q25: float | None = None
    ratio_q75: float | None = None
    rounds: int = 0
    steps: int = 0
    params: int = 0
    error: str | None = None
    level: str = "model"


def bench_models(
    pools: Sequence[str],
    *,
    model: str = "vgg16",
    width: float = 1.0,
    batch_size: int = 128,
    image_size: int | None = None,
    num_classes: int | None = None,
    stem: str = "imagenet",
    device: str = "cpu",
    amp: bool = False,
    channels_last: bool = False,
    rounds: int = 10,
    steps: int | None = None,
    min_run_time: float = 0.2,
    warmup: int = 2,
    progress: Callable[[str], None] | None = None,
) -> list[ModelResult]:
    """Time one SGD training step of ``model`` with each pool, round-robin over ``rounds`` rounds.

    Every pool gets its own model, built from the same seed; after ``warmup`` steps each, round ``r`` times
    ``steps`` consecutive steps of every pool, in an order rotated by ``r`` (so that no pool always follows
    the same one), and divides each by ``max``'s time in that round. ``steps=None`` picks enough steps for
    ``min_run_time`` seconds per measurement from the warm-up of ``max``.

    Args:
        pools: registered pool names; ``max`` is always added first as the reference.
        model: a name of :func:`poolkit.models.list_models`; ResNets use ``stem`` (``"imagenet"``, the one
            with a pool, by default).
        width: channel multiplier (``--width``).
        batch_size, image_size, num_classes: the batch (image size and classes default to CIFAR-100's 32 and
            100 for VGG, Tiny ImageNet's 64 and 200 for ResNet).
        device: ``"cpu"``, ``"cuda"``...
        amp: autocast (bfloat16 on CPU, float16 with a GradScaler on CUDA).
        channels_last: input and model in channels_last.
    """
    from poolkit.models import create_model, get_model_spec

    spec = get_model_spec(model)  # ValueError listing the valid names
    names = list(dict.fromkeys(["max", *(poolkit.get_pool_spec(p).name for p in pools)]))
    dev = _resolve_device(device)
    image_size = image_size or spec.image_size
    num_classes = num_classes or spec.num_classes
    extra: dict[str, Any] = {"stem": stem} if len(spec.stems) > 1 else {}
    layout = "channels_last" if channels_last else "nchw"
    config = (
        f"{model}{f' stem={stem}' if extra else ''} width {width:g}, batch {batch_size}x3x{image_size}x"
        f"{image_size}, {num_classes} classes, {layout}{', amp' if amp else ''}"
    )
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(dev)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator).to(dev)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=memory_format)
    amp_dtype = torch.bfloat16 if dev.type == "cpu" else torch.float16

    def result(name: str, **values: Any) -> ModelResult:
        return ModelResult(
            model=model, config=config, layout=layout, amp=amp, device=str(dev), pool=name, **values
        )

    errors: dict[str, str] = {}
    step_fns: dict[str, Callable[[], None]] = {}
    params: dict[str, int] = {}
    warm: dict[str, float] = {}
    for name in names:
        if progress:
            progress(f"{model} build + warm-up {name}")
        try:
            torch.manual_seed(0)
            net = create_model(model, num_classes, pool=name, width=width, **extra)
            net = net.to(device=dev).to(memory_format=memory_format).train()  # type: ignore[call-overload]
            params[name] = sum(
                q.numel()
                for m in net.modules()
                if isinstance(m, poolkit.layers.Pool2d)
                for q in m.parameters()
            )
            optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
            scaler = torch.amp.GradScaler(dev.type, enabled=amp and amp_dtype == torch.float16)

            def step(net: nn.Module = net, optimizer: Any = optimizer, scaler: Any = scaler) -> None:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                    loss = F.cross_entropy(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()

            for _ in range(max(warmup, 1)):
                warm[name] = _timed_steps(step, 1, dev)
            step_fns[name] = step
        except Exception as exc:
            errors[name] = _error(exc)
    if steps is None:
        reference = warm.get("max") or (statistics.median(warm.values()) if warm else 1.0)
        steps = max(1, round(min_run_time / reference))
    times: dict[str, list[float]] = {n: [] for n in step_fns}
    ratios: dict[str, list[float]] = {n: [] for n in step_fns}
    order = list(step_fns)
    for r in range(rounds):
        this_round: dict[str, float] = {}
        shift = r % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            if progress:
                progress(f"{model} round {r + 1}/{rounds} {name}")
            try:
                this_round[name] = _timed_steps(step_fns[name], steps, dev)
            except Exception as exc:
                errors[name] = _error(exc)
        order = [n for n in order if n not in errors]
        for name, seconds in this_round.items():
            if name in errors:
                continue
            times[name].append(seconds)
            if "max" in this_round and "max" not in errors:
                ratios[name].append(seconds / this_round["max"])
    results: list[ModelResult] = []
    for name in names:
        if name in errors or not times.get(name):
            results.append(
                result(name, error=errors.get(name, "not timed (rounds=0)"), params=params.get(name, 0))
            )
            continue
        ms, q1, q3 = _median_iqr(times[name])
        values: dict[str, Any] = {"ms": ms * 1e3, "iqr_ms": (q3 - q1) * 1e3}
        if ratios[name]:
            values["ratio"], values["ratio_q25"], values["ratio_q75"] = _median_iqr(ratios[name])
        results.append(result(name, rounds=len(times[name]), steps=steps, params=params[name], **values))
    return results
