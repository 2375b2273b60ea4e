"""Fabricated run directories for the report's tests (files exactly as docs/architecture.md describes).

No test lives here; tests/test_report*.py import :func:`make_run` and :func:`make_study`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

VGG_POOLS = ("features.6", "features.13", "features.23", "features.33", "features.43")
VGG_CHANNELS = (64, 128, 256, 512, 512)
RESNET_POOLS = ("maxpool",)
RESNET_CHANNELS = (64,)

#: learnable parameters per pooling layer of each method, as a function of the layer's channels.
_PARAMS = {
    "max": lambda c: 0,
    "tmaxavg": lambda c: 0,
    "soft_tmaxavg": lambda c: 0,
    "channel_adaptive": lambda c: c,
    "learnable_t": lambda c: 1,
    "gated": lambda c: c + 1,
    "attention": lambda c: c * (c // 4) * 2 + c // 4 + c,
    "stochastic_mix": lambda c: 1,
}


def _config(
    model: str, dataset: str, pool: str, seed: int, epochs: int, options: dict[str, Any]
) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "data_dir": "/data",
        "download": False,
        "model": model,
        "pool": pool,
        "pool_options": options,
        "global_pool": "avg",
        "head": "linear",
        "stem": "cifar",
        "width": 1.0,
        "epochs": epochs,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "nesterov": False,
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "amp": True,
        "amp_dtype": "float16",
        "channels_last": False,
        "compile": False,
        "device": "cuda",
        "seed": seed,
        "val_fraction": 0.0,
        "shift_eval": False,
        "threads": None,
    }


def _learned(pool: str, layers: tuple[str, ...], channels: tuple[int, ...], seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for depth, (name, c) in enumerate(zip(layers, channels, strict=True)):
        if pool == "channel_adaptive":
            # lambda drifts from 0.5 towards max with depth; the spread over channels is fixed.
            centre = 0.5 + 0.08 * depth + 0.01 * seed
            values = {"lambda": [round(centre + 0.1 * ((i % 5) - 2) / 2, 4) for i in range(c)]}
        elif pool == "learnable_t":
            values = {"threshold": [0.3 + 0.05 * depth]}
        elif pool == "stochastic_mix":
            values = {"lambda": [0.6 - 0.05 * depth]}
        else:
            continue
        out[name] = {"method": pool, "values": values}
    return out


def make_run(
    root: Path,
    *,
    model: str = "vgg16",
    dataset: str = "cifar100",
    pool: str = "max",
    seed: int = 0,
    top1: float = 70.0,
    epochs: int = 4,
    pool_options: dict[str, Any] | None = None,
    state: str = "finished",
    epoch_seconds: float = 10.0,
    peak_memory: int = 2**30,
    shift: dict[str, Any] | None = None,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Write one run directory under ``root`` whose last epoch's test top-1 is ``top1``.

    ``state``: "finished" (result.json), "failed" (error.json after 2 epochs), "incomplete" (2 epochs of
    metrics.csv only), "truncated" (a half-written result.json).
    Epoch 1 takes three times ``epoch_seconds`` (warm-up); images/s follows from 50,000 images per epoch.
    """
    options = dict(pool_options or {})
    config = _config(model, dataset, pool, seed, epochs, options)
    config.update(extra_config or {})
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    run = root / f"{dataset}_{model}_{pool}_s{seed}_{digest}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = epochs if state in ("finished", "truncated") else min(2, epochs)
    rows = []
    for epoch in range(1, done + 1):
        acc = top1 - 40.0 * (1.0 - epoch / epochs) ** 2
        seconds = epoch_seconds * (3.0 if epoch == 1 else 1.0)
        rows.append(
            f"{epoch},{2.0 - epoch * 0.1:.3f},{acc + 5:.3f},{1.5:.3f},{acc:.4f},{acc + 15:.3f},0.05,"
            f"{seconds:.4f},{50000 / seconds:.2f},{peak_memory}"
        )
    header = (
        "epoch,train_loss,train_top1,test_loss,test_top1,test_top5,lr,epoch_seconds,images_per_second,"
        "peak_memory_bytes"
    )
    (run / "metrics.csv").write_text("\n".join([header, *rows]) + "\n")
    if state == "failed":
        (run / "error.json").write_text(
            json.dumps(
                {
                    "error": "CUDA out of memory. Tried to allocate 2.00 GiB\nsecond line of detail",
                    "type": "OutOfMemoryError",
                    "traceback": "Traceback (most recent call last): ...",
                    "time": "2025-01-01T00:00:00",
                }
            )
        )
    if state not in ("finished", "truncated"):
        return run
    layers, channels = (
        (VGG_POOLS, VGG_CHANNELS) if model.startswith("vgg") else (RESNET_POOLS, RESNET_CHANNELS)
    )
    per_layer = [_PARAMS.get(pool, lambda c: 0)(c) for c in channels]
    result = {
        "status": "finished",
        "run_id": digest,
        "model": model,
        "dataset": dataset,
        "pool": pool,
        "pool_options": options,
        "seed": seed,
        "width": 1.0,
        "epochs": epochs,
        "test_top1": top1,
        "test_top5": top1 + 15,
        "test_loss": 1.5,
        "train_top1": top1 + 5,
        "train_loss": 1.0,
        "val_top1": None,
        "seconds": epoch_seconds * (epochs + 2),
        "epoch_seconds_mean": epoch_seconds,
        "images_per_second_mean": 50000 / epoch_seconds,
        "peak_memory_bytes": peak_memory,
        "params": 15_000_000 + sum(per_layer),
        "pool_params": sum(per_layer),
        "pool_layers": [
            {"name": n, "method": pool, "params": p} for n, p in zip(layers, per_layer, strict=True)
        ],
        "learned": _learned(pool, layers, channels, seed),
        "device": "NVIDIA H100 80GB HBM3",
        "amp": True,
    }
    text = json.dumps(result, indent=2)
    (run / "result.json").write_text(text[: len(text) // 2] if state == "truncated" else text)
    if shift is not None:
        (run / "shift.json").write_text(json.dumps(shift))
    return run


STUDY_METHODS = (
    "max",
    "tmaxavg",
    "soft_tmaxavg",
    "channel_adaptive",
    "learnable_t",
    "gated",
    "attention",
    "stochastic_mix",
)
#: The study's Table 1 (VGG16), as the means the fabricated seeds are spread around.
STUDY_VGG = {
    "cifar100": (72.70, 72.82, 73.38, 73.74, 73.11, 73.38, 73.74, 74.11),
    "tinyimagenet": (59.51, 59.32, 59.81, 59.56, 60.94, 61.00, 61.38, 61.54),
}
SEED_OFFSETS = (-0.3, 0.1, 0.2)


def make_study(
    root: Path,
    *,
    seeds: tuple[int, ...] = (0, 1, 2),
    resnet: bool = True,
    shift: bool = True,
    epochs: int = 8,
) -> Path:
    """A sweep like the study's: VGG16 (and ResNet18) on CIFAR-100 and Tiny ImageNet, the 8 methods, 3 seeds.

    Seed s of every method gets the study's mean plus SEED_OFFSETS[s] plus a small method-specific wiggle,
    so the paired differences have a known, non-zero spread.
    """
    runs = root / "runs"
    for dataset, means in STUDY_VGG.items():
        for index, (pool, mean) in enumerate(zip(STUDY_METHODS, means, strict=True)):
            for seed in seeds:
                wiggle = 0.02 * (((index + 1) * (seed + 3) * 37) % 11 - 5)
                shift_data = None
                if shift and dataset == "cifar100":
                    base = 80.0 + 2 * index + seed * 0.5
                    shift_data = {
                        "consistency": base,
                        "pairs": 10000,
                        "max_shift": 4,
                        "images": 10000,
                        "seed": 0,
                        "accuracy_by_shift": {str(d): mean - 0.4 * d * (1 - index / 10) for d in range(5)},
                    }
                make_run(
                    runs,
                    model="vgg16",
                    dataset=dataset,
                    pool=pool,
                    seed=seed,
                    top1=round(mean + SEED_OFFSETS[seed % 3] + wiggle, 3),
                    epoch_seconds=10.0 * (1 + 0.01 * index),
                    shift=shift_data,
                    epochs=epochs,
                )
                if resnet:
                    make_run(
                        runs,
                        model="resnet18",
                        dataset=dataset,
                        pool=pool,
                        seed=seed,
                        top1=round(63.0 + 0.1 * (mean - means[0]) + SEED_OFFSETS[seed % 3] - wiggle, 3),
                        epoch_seconds=8.0,
                        epochs=epochs,
                    )
    return runs
