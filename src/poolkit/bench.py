"""``poolkit bench``: the speed of every pool, relative to native max pooling measured in the same run.

Two levels:

* ``layer`` (default): one pooling layer, forward or forward + backward, on a given input shape;
* ``model``: one SGD training step of a whole network (``poolkit.models``) with each pool.

Every figure is reported as time per call and as the ratio to ``max`` (PyTorch's native
``F.max_pool2d``) timed in the same process, with the same shapes, threads and device, so that
ratios are comparable across machines even when absolute times are not.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import benchmark

import poolkit
from poolkit.io import atomic_write_csv, atomic_write_json
from poolkit.registry import STUDY_METHODS

__all__ = ["BenchResult", "add_arguments", "bench_layers", "bench_models", "main"]


@dataclass
class BenchResult:
    """One timing: ``seconds`` is the median per call; ``ratio`` is relative to ``max`` in the same run."""

    level: str
    pool: str
    shape: str
    mode: str
    device: str
    dtype: str
    seconds: float
    iqr: float
    ratio: float
    params: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn: Callable[[], Any], device: torch.device, min_run_time: float) -> tuple[float, float]:
    """Median and interquartile range (seconds) of ``fn`` with ``torch.utils.benchmark``."""
    for _ in range(3):  # warm-up: allocator, autotuning, lazy initialisation
        fn()
    _sync(device)
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    measurement = timer.blocked_autorange(min_run_time=min_run_time)
    return measurement.median, measurement.iqr


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu"
        )
    return device


def _pool_options(name: str, kernel_size: int) -> dict[str, Any]:
    if name in ("tmaxavg", "soft_tmaxavg", "learnable_t"):
        return {"k": min(4, kernel_size * kernel_size)}
    return {}


def bench_layers(
    pools: Sequence[str],
    shapes: Sequence[tuple[int, int, int, int]],
    *,
    kernel_size: int = 2,
    stride: int | None = None,
    padding: int = 0,
    backward: bool = True,
    device: str = "auto",
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    compile: bool = False,
    min_run_time: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time each pool on each (N, C, H, W) shape; ``max`` is always timed first as the reference."""
    dev = _resolve_device(device)
    names = ["max", *[p for p in pools if p != "max"]]
    results: list[BenchResult] = []
    for shape in shapes:
        x = torch.randn(shape, device=dev, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        reference = None
        for name in names:
            torch.manual_seed(0)
            pool = poolkit.create_pool(
                name, kernel_size, stride, padding, channels=shape[1], **_pool_options(name, kernel_size)
            ).to(device=dev, dtype=dtype)
            pool.train(backward)
            module: nn.Module | Callable[..., torch.Tensor] = torch.compile(pool) if compile else pool
            if backward:
                inp = x.detach().requires_grad_()
                grad = torch.ones_like(module(inp))

                def step(module=module, inp=inp, grad=grad) -> None:
                    module(inp).backward(grad)

            else:

                def step(module=module, x=x) -> None:
                    with torch.no_grad():
                        module(x)

            seconds, iqr = _time(step, dev, min_run_time)
            reference = reference or seconds
            result = BenchResult(
                level="layer",
                pool=name,
                shape="x".join(map(str, shape)),
                mode="fwd+bwd" if backward else "fwd",
                device=str(dev),
                dtype=str(dtype).replace("torch.", ""),
                seconds=seconds,
                iqr=iqr,
                ratio=seconds / reference,
                params=sum(p.numel() for p in pool.parameters()),
            )
            results.append(result)
            if progress:
                progress(_format_row(result))
    return results


def bench_models(
    pools: Sequence[str],
    *,
    model: str = "vgg16",
    num_classes: int = 100,
    width: float = 1.0,
    batch_size: int = 128,
    image_size: int = 32,
    in_channels: int = 3,
    device: str = "auto",
    amp: bool = False,
    channels_last: bool = False,
    min_run_time: float = 1.0,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """Time one SGD training step (forward, loss, backward, update) of ``model`` with each pool."""
    from poolkit.models import create_model

    dev = _resolve_device(device)
    names = ["max", *[p for p in pools if p != "max"]]
    x = torch.randn(batch_size, in_channels, image_size, image_size, device=dev)
    y = torch.randint(0, num_classes, (batch_size,), device=dev)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    amp_dtype = torch.bfloat16 if dev.type == "cpu" else torch.float16
    reference = None
    results: list[BenchResult] = []
    for name in names:
        torch.manual_seed(0)
        net = (
            create_model(model, num_classes, pool=name, width=width, in_channels=in_channels).to(dev).train()
        )
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        scaler = torch.amp.GradScaler(dev.type, enabled=amp and amp_dtype == torch.float16)

        def step(net=net, optimizer=optimizer, scaler=scaler) -> None:
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp):
                loss = nn.functional.cross_entropy(net(x), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

        seconds, iqr = _time(step, dev, min_run_time)
        reference = reference or seconds
        pool_params = sum(
            p.numel() for m in net.modules() if isinstance(m, poolkit.layers.Pool2d) for p in m.parameters()
        )
        result = BenchResult(
            level="model",
            pool=name,
            shape=f"{model}@{width}:{batch_size}x{in_channels}x{image_size}x{image_size}",
            mode="train-step" + ("+amp" if amp else ""),
            device=str(dev),
            dtype="amp" if amp else "float32",
            seconds=seconds,
            iqr=iqr,
            ratio=seconds / reference,
            params=pool_params,
        )
        results.append(result)
        if progress:
            progress(_format_row(result))
    return results


def _format_row(r: BenchResult) -> str:
    return (
        f"{r.pool:<17} {r.shape:<28} {r.mode:<15} {r.seconds * 1e3:>10.3f} ms "
        f"(iqr {r.iqr * 1e3:.3f})  x{r.ratio:5.2f} vs max  params {r.params:,}"
    )


def environment() -> dict[str, Any]:
    """Where the numbers were measured: versions, CPU/GPU, threads."""
    info: dict[str, Any] = {
        "poolkit": poolkit.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _parse_shape(text: str) -> tuple[int, int, int, int]:
    parts = text.lower().replace(",", "x").split("x")
    if len(parts) != 4 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"shape {text!r} must be NxCxHxW, e.g. 128x64x32x32")
    return tuple(int(p) for p in parts)  # type: ignore[return-value]


# The inputs of VGG16's five pools on 32x32 CIFAR images (batch 128), and a CPU-sized version.
VGG16_SHAPES = [(128, 64, 32, 32), (128, 128, 16, 16), (128, 256, 8, 8), (128, 512, 4, 4), (128, 512, 2, 2)]
CPU_SHAPES = [(32, 64, 32, 32), (32, 256, 8, 8)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``poolkit bench`` command line."""
    parser.add_argument(
        "--level", choices=["layer", "model"], default="layer",
        help="time one pooling layer (default) or one training step of a whole model",
    )  # fmt: skip
    parser.add_argument(
        "--pools", nargs="+", default=None, metavar="NAME",
        help="pools to time (default: the study's eight for --level model, every registered pool for layer); "
        "'max' is always timed as the reference",
    )  # fmt: skip
    parser.add_argument(
        "--shape", type=_parse_shape, action="append", default=None, metavar="NxCxHxW",
        help="layer input shape, repeatable (default: VGG16's five pool inputs at batch 128 on GPU, "
        "two smaller shapes on CPU)",
    )  # fmt: skip
    parser.add_argument("--kernel-size", type=int, default=2, help="pool kernel size (default 2)")
    parser.add_argument("--stride", type=int, default=None, help="pool stride (default: kernel size)")
    parser.add_argument("--padding", type=int, default=0, help="pool padding (default 0)")
    parser.add_argument("--forward-only", action="store_true", help="time the forward pass only (no_grad)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], default="float32")
    parser.add_argument("--channels-last", action="store_true", help="channels_last input / model")
    parser.add_argument("--compile", action="store_true", help="torch.compile each layer first (layer level)")
    parser.add_argument("--model", default="vgg16", help="model for --level model (default vgg16)")
    parser.add_argument("--width", type=float, default=1.0, help="model width multiplier (default 1.0)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help="model batch size (default 128 GPU, 32 CPU)"
    )
    parser.add_argument("--image-size", type=int, default=32, help="model input size (default 32)")
    parser.add_argument("--amp", action="store_true", help="autocast for --level model (fp16 CUDA, bf16 CPU)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per entry")
    parser.add_argument("--out", type=Path, default=None, help="write results to this .csv or .json file")


def main(args: argparse.Namespace) -> int:
    """Run ``poolkit bench`` from parsed arguments; prints a table and optionally writes CSV/JSON."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _resolve_device(args.device)
    on_gpu = device.type == "cuda"
    unknown = [p for p in (args.pools or []) if p not in poolkit.list_pools()]
    if unknown:
        raise ValueError(f"unknown pool(s) {unknown}; valid names are: {', '.join(poolkit.list_pools())}")
    env = environment()
    print("# poolkit bench: " + ", ".join(f"{k}={v}" for k, v in env.items()), flush=True)

    def say(line: str) -> None:
        print(line, flush=True)

    if args.level == "model":
        results = bench_models(
            args.pools or STUDY_METHODS,
            model=args.model,
            width=args.width,
            batch_size=args.batch_size or (128 if on_gpu else 32),
            image_size=args.image_size,
            device=str(device),
            amp=args.amp,
            channels_last=args.channels_last,
            min_run_time=args.min_run_time or (2.0 if on_gpu else 1.0),
            progress=say,
        )
    else:
        results = bench_layers(
            args.pools or poolkit.list_pools(),
            args.shape or (VGG16_SHAPES if on_gpu else CPU_SHAPES),
            kernel_size=args.kernel_size,
            stride=args.stride,
            padding=args.padding,
            backward=not args.forward_only,
            device=str(device),
            dtype=getattr(torch, args.dtype),
            channels_last=args.channels_last,
            compile=args.compile,
            min_run_time=args.min_run_time or 0.5,
            progress=say,
        )
    if args.out:
        write_results(results, env, args.out)
        print(f"wrote {args.out}")
    return 0


def write_results(results: Sequence[BenchResult], env: dict[str, Any], path: Path) -> None:
    """CSV (one row per timing) or JSON (environment + rows), written atomically."""
    rows = [asdict(r) for r in results]
    if path.suffix == ".json":
        atomic_write_json(path, {"environment": env, "results": rows})
    else:
        atomic_write_csv(path, [f.name for f in fields(BenchResult)], rows)


if __name__ == "__main__":  # pragma: no cover
    cli = argparse.ArgumentParser(prog="poolkit bench", description=__doc__)
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
