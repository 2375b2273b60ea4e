"""The translation-invariance probe: shift consistency (Zhang 2019) and accuracy under small shifts.

Protocol (see ``docs/report.md``):

* **Consistency.** For each test image two shifts ``(dy1, dx1)`` and ``(dy2, dx2)`` are drawn
  independently and uniformly from the integers in ``[-max_shift, max_shift]``; the image is shifted
  circularly by each (:func:`torch.roll` semantics: content leaving one side re-enters on the other),
  both copies are classified, and consistency is the percentage of images whose two top-1 classes
  agree. This is Zhang's "classification consistency" (ICML 2019, "Making Convolutional Networks
  Shift-Invariant Again"), which on ImageNet compares two random 224x224 crops of a 256x256 image
  (offsets up to 32 px). Here the images are the dataset's own size (32 or 64 px), so there is no room
  for crops; a circular shift keeps every pixel and the image size, adds no padding content that the
  network never saw in training, and makes an exactly shift-invariant network (circular padding and
  global average pooling) score exactly 100%. Its cost is a seam where the borders meet.
* **Accuracy under shift.** Top-1 accuracy with every image circularly shifted by ``d`` pixels along
  both axes, for ``d`` in ``0..4`` (``d = 0`` is the ordinary test accuracy).
* **Determinism.** The shifts come from a CPU :class:`torch.Generator` seeded with ``seed`` and depend
  only on ``seed`` and the number of images, never on the batch size or the device.

``max_shift`` defaults to ``image_size // 8`` (4 px at 32x32, 8 px at 64x64): Zhang's 32 px at 224
is one seventh of the image, and an eighth keeps the shifted object well inside the frame.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from poolkit.rundir import CHECKPOINT_FILE, CONFIG_FILE, SHIFT_FILE, RunDir

__all__ = [
    "DIAGONAL_SHIFTS",
    "SHIFT_FILE",
    "default_max_shift",
    "probe_model",
    "probe_run",
    "resolve_run_dir",
    "shift_images",
]

#: The diagonal shifts (pixels along both axes) of ``accuracy_by_shift``.
DIAGONAL_SHIFTS = (0, 1, 2, 3, 4)


def default_max_shift(image_size: int | Sequence[int]) -> int:
    """``min(H, W) // 8``, at least 1: 4 px for 32x32 images, 8 px for 64x64.

    Example:
        >>> default_max_shift(32), default_max_shift((64, 64)), default_max_shift(5)
        (4, 8, 1)
    """
    side = min(image_size) if isinstance(image_size, Sequence) else int(image_size)
    return max(1, side // 8)


def shift_images(images: Tensor, dy: Tensor | int, dx: Tensor | int) -> Tensor:
    """Shift each image of ``(B, C, H, W)`` circularly by its own ``(dy[b], dx[b])`` pixels.

    ``out[b, :, i, j] == images[b, :, (i - dy[b]) % H, (j - dx[b]) % W]``, which is
    ``torch.roll(images[b], (dy[b], dx[b]), dims=(1, 2))`` for every ``b``: positive ``dy`` moves content
    down, positive ``dx`` moves it right. ``dy``/``dx`` are ints (the same shift for every image) or
    integer tensors of shape ``(B,)``.

    Example:
        >>> x = torch.arange(4.0).view(1, 1, 1, 4)
        >>> shift_images(x, 0, 1).flatten().tolist()
        [3.0, 0.0, 1.0, 2.0]
    """
    if images.dim() != 4:
        raise ValueError(f"shift_images expects images of shape (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if isinstance(dy, int) and isinstance(dx, int):
        return torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    dy = torch.as_tensor(dy, device=images.device).expand(b).long()
    dx = torch.as_tensor(dx, device=images.device).expand(b).long()
    rows = (torch.arange(h, device=images.device)[None, :] - dy[:, None]) % h
    cols = (torch.arange(w, device=images.device)[None, :] - dx[:, None]) % w
    out = images.gather(2, rows[:, None, :, None].expand(b, c, h, w))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def probe_model(
    model: nn.Module,
    split: Any,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    max_shift: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    max_images: int | None = None,
    diagonal_shifts: Sequence[int] = DIAGONAL_SHIFTS,
) -> dict[str, Any]:
    """Shift consistency and accuracy under diagonal shifts of a classifier on one split.

    Args:
        model: maps normalised ``(B, C, H, W)`` float images to ``(B, num_classes)`` logits. It is run in
            eval mode (its mode is restored afterwards), on ``device`` when given (the model is moved
            there) or else on the device of its parameters.
        split: an object with ``images`` (uint8 ``(N, C, H, W)``) and ``labels`` (int64 ``(N,)``), e.g.
            ``DatasetSplits.test``.
        mean, std: per-channel normalisation in ``[0, 1]`` pixel units (``DatasetSplits.mean``/``std``).
        max_shift: largest shift in pixels along each axis for the consistency pairs (default
            :func:`default_max_shift` of the image size).
        seed: seeds the shifts; the result depends only on it, the model and the images.
        batch_size: images per forward pass (memory only; results do not depend on it).
        max_images: probe only the first ``max_images`` images (default: all).
        diagonal_shifts: the ``d`` of ``accuracy_by_shift`` (shift by ``d`` pixels along both axes).

    Returns:
        ``{"consistency": percent, "pairs": N, "max_shift": int, "accuracy_by_shift": {"0": percent, ...},
        "images": N, "seed": seed, "shift": "circular"}`` (the ``shift.json`` format).

    Example:
        >>> from types import SimpleNamespace
        >>> split = SimpleNamespace(images=torch.randint(0, 256, (8, 1, 16, 16), dtype=torch.uint8),
        ...                         labels=torch.zeros(8, dtype=torch.long))
        >>> gap = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
        >>> probe_model(gap, split, [0.5], [0.25])["consistency"]
        100.0
    """
    images, labels = getattr(split, "images", None), getattr(split, "labels", None)
    if not isinstance(images, Tensor) or images.dim() != 4 or images.dtype != torch.uint8:
        raise ValueError("probe_model needs split.images as a uint8 tensor of shape (N, C, H, W)")
    if not isinstance(labels, Tensor) or labels.shape != images.shape[:1]:
        raise ValueError(f"probe_model needs split.labels of shape ({images.shape[0]},), one label per image")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    from poolkit.data import normalize

    if max_images is not None:
        if isinstance(max_images, bool) or not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images must be a positive int or None, got {max_images!r}")
        images, labels = images[:max_images], labels[:max_images]
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError("probe_model needs at least one image")
    if max_shift is None:
        max_shift = default_max_shift((h, w))
    if isinstance(max_shift, bool) or not isinstance(max_shift, int) or max_shift < 0:
        raise ValueError(f"max_shift must be a non-negative int (pixels), got {max_shift!r}")
    shifts = [int(d) for d in diagonal_shifts]

    if device is not None:
        model = model.to(device)
    run_device = _model_device(model)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(-max_shift, max_shift + 1, (n, 4), generator=generator)

    agree = 0
    correct = dict.fromkeys(shifts, 0)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, n, batch_size):
                # Normalising commutes with a circular shift, so each batch is normalised once.
                x = normalize(images[start : start + batch_size].to(run_device), mean, std)
                y = labels[start : start + batch_size].to(run_device)
                o = offsets[start : start + batch_size].to(run_device)
                first = model(shift_images(x, o[:, 0], o[:, 1])).argmax(dim=1)
                second = model(shift_images(x, o[:, 2], o[:, 3])).argmax(dim=1)
                agree += int((first == second).sum())
                for d in shifts:
                    correct[d] += int((model(shift_images(x, d, d)).argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return {
        "consistency": 100.0 * agree / n,
        "pairs": n,
        "max_shift": max_shift,
        "accuracy_by_shift": {str(d): 100.0 * correct[d] / n for d in shifts},
        "images": n,
        "seed": seed,
        "shift": "circular",
    }


def resolve_run_dir(path: str | os.PathLike[str]) -> Path:
    """The run directory of ``path``: a run directory itself, or a ``checkpoint.pt`` inside one.

    Raises:
        ValueError: ``path`` is neither (the message says what a run directory holds).
    """
    path = Path(path)
    if path.is_file():
        if not RunDir(path.parent).config.is_file():
            raise ValueError(
                f"{str(path)!r} is a file but its directory has no {CONFIG_FILE}; give a run directory or "
                f"the {CHECKPOINT_FILE} inside one"
            )
        return path.parent
    if path.is_dir():
        if not RunDir(path).checkpoint.is_file():
            raise ValueError(
                f"{str(path)!r} has no {CHECKPOINT_FILE}: it is not a (started) run directory; give a "
                "directory written by `poolkit train --out DIR` or a sweep"
            )
        return path
    raise ValueError(f"{str(path)!r} does not exist; give a run directory or the checkpoint.pt inside one")


def probe_run(
    run_dir: str | os.PathLike[str],
    *,
    device: str | torch.device | None = None,
    max_shift: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
    max_images: int | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    write: bool = True,
    model: nn.Module | None = None,
) -> dict[str, Any]:
    """Probe a run's trained model on its dataset's test split and write ``shift.json`` beside it.

    The model comes from :func:`poolkit.train.load_run`; the dataset named in ``config.yaml``
    is loaded with the run's ``val_fraction`` and ``seed``, so the normalisation is the one the model was
    trained with.

    Args:
        run_dir: a run directory, or the ``checkpoint.pt`` inside one.
        device: where to run the model (default: CUDA when available, else the CPU).
        data_dir: where the dataset lies when it moved since training (default: the config's data_dir).
        write: write ``run_dir/shift.json`` atomically (default True).
        model: the run's trained model when the caller holds it already (right after training); it is
            then used as it is (on its own device unless ``device`` is given) instead of being read
            back from ``checkpoint.pt``.
        max_shift, seed, batch_size, max_images: as :func:`probe_model`.

    Returns:
        the dict written to ``shift.json`` (see :func:`probe_model`).

    Example:
        >>> probe_run("runs/cifar100_vgg16_max_s0_1a2b3c4d5e")  # doctest: +SKIP
        {'consistency': 88.1, 'pairs': 10000, 'max_shift': 4, 'accuracy_by_shift': {...}, ...}
    """
    from poolkit.data import load_dataset
    from poolkit.train.config import RunConfig, load_config_file
    from poolkit.train.engine import load_run

    if model is not None:
        run = RunDir(run_dir)
        cfg = RunConfig.from_stored(load_config_file(run.config))
        if device is not None:
            model = model.to(device)
    else:
        run = RunDir(resolve_run_dir(run_dir))
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg = load_run(run.path, device=device)
    data = load_dataset(
        cfg.dataset,
        data_dir if data_dir is not None else cfg.data_dir,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )
    result = probe_model(
        model,
        data.test,
        data.mean,
        data.std,
        max_shift=max_shift,
        seed=seed,
        batch_size=batch_size,
        max_images=max_images,
    )
    if write:
        run.write_shift(result)
    return result
