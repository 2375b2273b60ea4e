"""Measuring primitives of ``poolkit bench``: timers, bandwidth and traffic, saved-tensor bytes, devices."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["MIN_SAMPLES", "SAMPLE_SECONDS", "SavedBytes", "gbps", "saved_tensor_bytes"]


@dataclass(frozen=True)
class SavedBytes:
    """What a forward keeps for backward: every saved tensor's storage counted once, in bytes."""

    total: int
    extra: int
    saves_input: bool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Each timing sample is this long at least (back-to-back calls), so that timer and synchronization
#: overheads stay negligible for microsecond-sized calls.
SAMPLE_SECONDS = 1e-3
#: Samples per entry at least, however long ``min_run_time`` is.
MIN_SAMPLES = 5


def _time(fn: Callable[[], Any], device: torch.device, min_run_time: float) -> tuple[float, float]:
    """Median and interquartile range (seconds per call) of ``fn``.

    Two warm-up calls (allocator, lazy initialisation, autotuning); then samples of ``n`` back-to-back
    calls, ``n`` chosen from one more call so that a sample lasts :data:`SAMPLE_SECONDS` at least, until
    both :data:`MIN_SAMPLES` samples and ``min_run_time`` seconds are reached. CUDA is synchronized around
    each sample (not between its calls, which queue as they would in a network).
    """
    for _ in range(2):
        fn()
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    single = time.perf_counter() - start
    number = max(1, math.ceil(SAMPLE_SECONDS / max(single, 1e-9)))
    samples: list[float] = []
    began = time.perf_counter()
    while len(samples) < MIN_SAMPLES or time.perf_counter() - began < min_run_time:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        _sync(device)
        samples.append((time.perf_counter() - start) / number)
    median, q1, q3 = _median_iqr(samples)
    return median, q3 - q1


def gbps(nbytes: int, seconds: float) -> float:
    """Achieved bandwidth in GB/s (10^9 bytes per second) for ``nbytes`` moved in ``seconds``."""
    return nbytes / seconds / 1e9


def _traffic(x: Tensor, y: Tensor, mode: str) -> int:
    """Minimal bytes moved: x read + y written; fwd+bwd adds grad_out read + grad_input written."""
    forward = x.nbytes + y.nbytes
    return forward if mode == "fwd" else 2 * forward


def _storage(t: Tensor) -> tuple[int, int] | None:
    """(data_ptr, nbytes) of a tensor's storage; None for a tensor without a plain one."""
    try:
        s = t.untyped_storage()
    except Exception:  # wrapper subclasses, meta tensors...
        return None
    return s.data_ptr(), s.nbytes()


def saved_tensor_bytes(
    fn: Callable[[Tensor], Tensor], x: Tensor, exclude: Iterable[Tensor] = ()
) -> SavedBytes:
    """Bytes that ``fn(x)`` saves for backward, with ``x`` requiring grad.

    Every tensor autograd saves goes through ``torch.autograd.graph.saved_tensors_hooks``; each distinct
    storage (``untyped_storage().data_ptr()``) is counted once, whole (a saved view keeps its whole
    storage alive). The input counts like any other saved tensor when the graph saves it (native
    ``max_pool2d`` saves its input and int64 indices); ``extra`` is the total without the input's storage.
    The storages of ``exclude`` (a module's parameters and buffers, which exist whether or not a graph
    saves them) are not counted; a converted copy of them (a cast, a reshape that copies) is.
    """
    inp = x.detach().requires_grad_()
    skip = {st[0] for t in exclude if (st := _storage(t)) is not None}
    kept: list[Tensor] = []  # held until counted, so that no storage address is reused meanwhile
    storages: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        kept.append(t)
        st = _storage(t)
        if st is not None and st[0] not in skip:
            storages.setdefault(*st)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(inp)
    input_ptr = inp.untyped_storage().data_ptr()
    total = sum(storages.values())
    saves_input = input_ptr in storages
    extra = total - (storages[input_ptr] if saves_input else 0)
    kept.clear()
    del y
    return SavedBytes(total=total, extra=extra, saves_input=saves_input)


def _median_iqr(values: Sequence[float]) -> tuple[float, float, float]:
    """Median, first and third quartile (inclusive method; a single value is its own quartiles)."""
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q1, q3


def _timed_steps(step: Callable[[], None], n: int, device: torch.device) -> float:
    """Seconds per step over ``n`` consecutive steps (CUDA synchronized at both ends)."""
    _sync(device)
    start = time.perf_counter()
    for _ in range(n):
        step()
    _sync(device)
    return (time.perf_counter() - start) / n


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu"
        )
    return device


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]
