"""Decoding image files (JPEG, PNG) into one uint8 tensor with Pillow.

Decoding a small JPEG costs ~0.15 ms, mostly Pillow's Python-level header parsing, so threads do not
help; large datasets are decoded by a pool of forked worker processes instead (Linux only; set
``POOLKIT_DECODE_WORKERS=1`` to decode in the calling process).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

__all__ = ["IMAGE_EXTENSIONS", "decode_images", "is_image_file"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Modes whose pixels are one grey level; every other mode is converted to RGB.
_GRAY_MODES = frozenset({"1", "L", "LA"})
# Below this many images the start-up of worker processes costs more than it saves.
_PARALLEL_MIN_IMAGES = 2048


def is_image_file(name: str) -> bool:
    """Whether ``name`` has a JPEG or PNG extension (any case) and is not a hidden file."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _open_pixels(path: str, expected: str) -> tuple[np.ndarray, bool]:
    """``(pixels (H, W) for grey or (H, W, 3) for colour, is_gray)``; a clear ValueError if unreadable."""
    try:
        with Image.open(path) as image:
            if image.mode in _GRAY_MODES:
                return np.asarray(image.convert("L") if image.mode != "L" else image), True
            return np.asarray(image.convert("RGB") if image.mode != "RGB" else image), False
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"{path}: cannot decode image ({exc}); expected {expected}") from None


def _decode_chunk(
    paths: Sequence[str], size: tuple[int, int], reference: str, expected: str
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``paths`` into ``(N, H, W, 3)`` uint8 pixels (grey replicated) and an ``(N,)`` is-grey mask."""
    out = np.empty((len(paths), size[0], size[1], 3), dtype=np.uint8)
    gray = np.zeros(len(paths), dtype=bool)
    for i, path in enumerate(paths):
        pixels, gray[i] = _open_pixels(path, expected)
        if pixels.shape[:2] != size:
            raise ValueError(
                f"{path} is {pixels.shape[0]}x{pixels.shape[1]} (HxW) but {reference} is "
                f"{size[0]}x{size[1]}; "
                "all images of a dataset must share one size (poolkit does not resize: resize the "
                "dataset beforehand)"
            )
        out[i] = pixels[..., None] if gray[i] else pixels
    return out, gray


def _default_workers() -> int:
    env = os.environ.get("POOLKIT_DECODE_WORKERS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ValueError(f"POOLKIT_DECODE_WORKERS must be an integer, got {env!r}") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, 16)


def decode_images(
    paths: Sequence[str | Path],
    *,
    allow_gray: bool = True,
    size: tuple[int, int] | None = None,
    expected: str = "a JPEG or PNG",
    workers: int | None = None,
) -> Tensor:
    """Decode image files into one uint8 tensor of shape ``(N, C, H, W)``.

    Colour images (RGB, CMYK, palette, RGBA...) are converted to RGB. When ``allow_gray`` and every
    image is greyscale (Pillow mode ``L``, ``1`` or ``LA``) the result has one channel; otherwise
    greyscale images are converted to RGB (the grey level in every channel).

    Args:
        paths: the files, in the order of the result; at least one.
        allow_gray: return one channel when every image is greyscale.
        size: the ``(H, W)`` every image must have; default: the first image's.
        expected: what the files should be, for error messages.
        workers: decoding processes; default ``$POOLKIT_DECODE_WORKERS`` or the usable cores (max 16).

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: a file cannot be decoded, or its size differs from the others (the message names
            the file and the expected size).
    """
    names = [os.fspath(p) for p in paths]
    if not names:
        raise ValueError("decode_images needs at least one file")
    if size is None:
        first, _ = _open_pixels(names[0], expected)
        size = (int(first.shape[0]), int(first.shape[1]))
        reference = f"the first image {names[0]}"
    else:
        reference = "the expected size"
    workers = _default_workers() if workers is None else max(1, workers)
    use_processes = workers > 1 and len(names) >= _PARALLEL_MIN_IMAGES and sys.platform.startswith("linux")
    if use_processes:
        step = -(-len(names) // (workers * 4))
        chunks = [names[i : i + step] for i in range(0, len(names), step)]
        # fork (Linux only) starts workers without re-importing torch; they only run Pillow and numpy.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
            context = multiprocessing.get_context("fork")
            pixels = np.empty((len(names), size[0], size[1], 3), dtype=np.uint8)
            gray = np.empty(len(names), dtype=bool)
            with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                parts = pool.map(
                    _decode_chunk,
                    chunks,
                    [size] * len(chunks),
                    [reference] * len(chunks),
                    [expected] * len(chunks),
                )
                for start, (chunk_pixels, chunk_gray) in zip(range(0, len(names), step), parts, strict=True):
                    pixels[start : start + len(chunk_gray)] = chunk_pixels
                    gray[start : start + len(chunk_gray)] = chunk_gray
    else:
        pixels, gray = _decode_chunk(names, size, reference, expected)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2)
    if allow_gray and bool(gray.all()):
        images = images[:, :1]
    return images.contiguous()
