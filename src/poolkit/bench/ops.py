"""The op level of ``poolkit bench``: the named cases, one pooling layer per row, timed against native max."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import poolkit
from poolkit.bench.timing import _error, _resolve_device, _time, _traffic, gbps, saved_tensor_bytes
from poolkit.layers.fused import fused_kernel_mode, use_fused_kernels

__all__ = [
    "CLONE",
    "COPY",
    "DEFAULT_CASES",
    "DTYPES",
    "KERNELS",
    "LAYOUTS",
    "MODES",
    "NATIVE",
    "OP_CASES",
    "OpCase",
    "OpResult",
    "bench_ops",
    "resolve_cases",
]


@dataclass(frozen=True)
class OpCase:
    """One pooling layer to time: input shape (N, C, *spatial) with 1, 2 or 3 spatial axes, a cubic window."""

    name: str
    shape: tuple[int, ...]
    kernel_size: int
    stride: int
    padding: int = 0
    note: str = ""

    @property
    def spatial_dims(self) -> int:
        """1, 2 or 3: the pool's form."""
        return len(self.shape) - 2

    @property
    def window(self) -> str:
        """``"2x2/2"``, ``"3x3/2 p1"``, ``"4/4"`` (1-D) or ``"2x2x2/2"`` (3-D)."""
        k = "x".join([str(self.kernel_size)] * self.spatial_dims)
        return f"{k}/{self.stride}" + (f" p{self.padding}" if self.padding else "")

    @property
    def shape_str(self) -> str:
        """``"128x64x32x32"``."""
        return "x".join(map(str, self.shape))

    def with_batch(self, batch: int) -> OpCase:
        """The same case at another batch size."""
        return replace(self, shape=(batch, *self.shape[1:]))


def _vgg_case(i: int, channels: int, size: int) -> OpCase:
    return OpCase(f"vgg16-{i}", (128, channels, size, size), 2, 2, 0, f"VGG16 pool {i} on 32x32 CIFAR images")


#: The named cases of ``--case``: VGG16's five 2x2/2 pools (batch 128, 32x32 input) and the ResNet
#: ImageNet-stem pool (3x3, stride 2, padding 1) as it runs on a 64x64 Tiny ImageNet image, whose stride-2
#: 7x7 stem convolution leaves 64 maps of 32x32.
OP_CASES: dict[str, OpCase] = {
    c.name: c
    for c in (
        _vgg_case(1, 64, 32),
        _vgg_case(2, 128, 16),
        _vgg_case(3, 256, 8),
        _vgg_case(4, 512, 4),
        _vgg_case(5, 512, 2),
        OpCase(
            "resnet-stem",
            (128, 64, 32, 32),
            3,
            2,
            1,
            "ResNet18 ImageNet-stem pool on 64x64 Tiny ImageNet images (after the stride-2 stem conv)",
        ),
        OpCase(
            "audio-1d",
            (32, 128, 4000),
            4,
            4,
            0,
            "1-D pool of an audio CNN: 128 feature maps of 4000 steps (0.25 s at 16 kHz), batch 32",
        ),
        OpCase(
            "video-3d",
            (8, 64, 16, 28, 28),
            2,
            2,
            0,
            "3-D pool of a video CNN (C3D's pool2 on 16-frame clips at 28x28), batch 8",
        ),
    )
}
#: The cases run when none is named: the 2-D ones (``--case audio-1d,video-3d`` adds the other forms).
DEFAULT_CASES: tuple[str, ...] = tuple(name for name, case in OP_CASES.items() if case.spatial_dims == 2)
LAYOUTS: tuple[str, ...] = ("nchw", "channels_last")
#: The dtypes of the default grid (``--dtype`` also accepts float16 and float64).
DTYPES: tuple[str, ...] = ("float32", "bfloat16")
_ALL_DTYPES = ("float32", "bfloat16", "float16", "float64")
MODES: tuple[str, ...] = ("fwd", "fwd+bwd", "memory")
#: The kernel paths of ``--kernels`` (the modes of :func:`poolkit.layers.fused.set_fused_kernels`). A pool's
#: row under the process's mode (``POOLKIT_FUSED``, by default ``auto``: compiled on CPU) is named after the
#: pool; under any other path it is ``"pool [path]"`` (``off``: the native pair).
KERNELS: tuple[str, ...] = ("auto", "on", "eager", "off")
#: Row names of the references timed in every group.
NATIVE = "F.max_pool2d"  # the reference row's name; 1-D and 3-D cases time F.max_pool1d/3d under it
COPY = "copy"
CLONE = "clone"


@dataclass
class OpResult:
    """One entry of the op grid.

    ``ratio`` is relative to :data:`NATIVE` in the same group and mode (time for ``fwd`` / ``fwd+bwd``, saved
    bytes for ``memory``). ``gbps`` counts the minimal traffic: input read + output written per forward, plus
    grad_out read + grad_input written for ``fwd+bwd`` (:func:`gbps`); ``copy_fraction`` divides it by the
    GB/s of the copy of the same tensor in the same group. ``error`` is set (and the figures are None) when
    the pool failed for this entry.
    """

    case: str
    shape: str
    window: str
    layout: str
    dtype: str
    device: str
    mode: str
    pool: str
    ms: float | None = None
    iqr_ms: float | None = None
    ratio: float | None = None
    gbps: float | None = None
    copy_fraction: float | None = None
    saved_bytes: int | None = None
    saved_extra_bytes: int | None = None
    saves_input: bool | None = None
    extra_ratio: float | None = None
    params: int = 0
    error: str | None = None
    level: str = "op"

    @property
    def group(self) -> tuple[str, str, str, str]:
        """(case, layout, dtype, device): the rows that share one input tensor and one reference."""
        return (self.case, self.layout, self.dtype, self.device)


def resolve_cases(
    names: Sequence[str] | None,
    shapes: Sequence[tuple[int, ...]] = (),
    *,
    kernel_size: int = 2,
    stride: int | None = None,
    padding: int = 0,
    batch: int | None = None,
) -> list[OpCase]:
    """The cases to run: named ones (every one when neither names nor shapes are given) and custom shapes.

    ``batch`` replaces the batch size of the named cases (custom shapes keep theirs). Raises ``ValueError``
    naming the valid cases for an unknown name.
    """
    if names is None and not shapes:
        names = list(DEFAULT_CASES)
    cases: list[OpCase] = []
    for name in names or []:
        if name not in OP_CASES:
            raise ValueError(f"unknown case {name!r}; valid cases are: {', '.join(OP_CASES)}")
        cases.append(OP_CASES[name].with_batch(batch) if batch else OP_CASES[name])
    for shape in shapes:
        cases.append(
            OpCase("x".join(map(str, shape)), shape, kernel_size, stride or kernel_size, padding, "custom")
        )
    return cases


def _pool_options(name: str, kernel_size: int, spatial_dims: int = 2) -> dict[str, Any]:
    """The default options, with a top-k ``k`` clipped to the window."""
    options = poolkit.pool_options(name)
    if "k" in options:
        return {"k": min(int(options["k"]), kernel_size**spatial_dims)}
    return {}


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


def _group_entries(pools: Sequence[str], modes: Sequence[str], paths: int = 1) -> int:
    timed = [m for m in modes if m != "memory"]
    return (2 if "fwd" in modes else 0) + (1 + len(pools) * paths) * (len(timed) + ("memory" in modes))


def bench_ops(
    pools: Sequence[str],
    cases: Sequence[OpCase],
    *,
    layouts: Sequence[str] = LAYOUTS,
    dtypes: Sequence[str] = DTYPES,
    modes: Sequence[str] = MODES,
    devices: Sequence[str] = ("cpu",),
    min_run_time: float = 0.2,
    compile: bool = False,
    kernels: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
    on_group: Callable[[list[OpResult]], None] | None = None,
) -> list[OpResult]:
    """Time every pool on the grid cases x layouts x dtypes x devices x modes (see :mod:`poolkit.bench`).

    Args:
        pools: registered pool names (``max`` included or not; :data:`NATIVE` is always the reference).
        cases: what to pool (:data:`OP_CASES` or custom :class:`OpCase`).
        layouts: ``"nchw"`` and/or ``"channels_last"`` (input, and the pool's 4-d weights).
        dtypes: dtype names (``"float32"``, ``"bfloat16"``, ...).
        modes: any of :data:`MODES`.
        devices: ``"cpu"``, ``"cuda"``...
        min_run_time: seconds of timing per entry at least (after warm-up; :data:`MIN_SAMPLES` samples
            at least).
        compile: ``torch.compile`` every pool and the native reference (the memory count stays eager).
        kernels: kernel paths of :data:`KERNELS` to time each pool with (default: the current mode only); a
            pool's row under the current mode is named after the pool, under any other path
            ``"pool [path]"`` (the targets read the plain rows).
        progress: called with a short label before each entry.
        on_group: called with each group's rows when the group is done (to print tables as they come).

    Returns:
        One :class:`OpResult` per (group, mode, pool), plus :data:`COPY` and :data:`CLONE` rows (``fwd``) per
        group; a pool that fails has rows with ``error`` set instead of crashing the run.
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid modes are: {', '.join(MODES)}")
    for layout in layouts:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; valid layouts are: {', '.join(LAYOUTS)}")
    kernels = list(kernels or [fused_kernel_mode()])
    for path in kernels:
        if path not in KERNELS:
            raise ValueError(f"unknown kernel path {path!r}; valid paths are: {', '.join(KERNELS)}")
    names = list(dict.fromkeys(poolkit.get_pool_spec(p).name for p in pools))
    results: list[OpResult] = []
    for device_name in devices:
        device = _resolve_device(device_name)
        for case in cases:
            # channels_last is a 4-D layout: the 1-D and 3-D cases run contiguous only.
            for layout in layouts if case.spatial_dims == 2 else [lay for lay in layouts if lay == "nchw"]:
                for dtype in dtypes:
                    rows = _bench_group(
                        names, case, layout, dtype, device, modes, min_run_time, compile, kernels, progress
                    )
                    results.extend(rows)
                    if on_group:
                        on_group(rows)
    return results


def _bench_group(
    names: Sequence[str],
    case: OpCase,
    layout: str,
    dtype_name: str,
    device: torch.device,
    modes: Sequence[str],
    min_run_time: float,
    compile: bool,
    paths: Sequence[str],
    progress: Callable[[str], None] | None,
) -> list[OpResult]:
    dtype = _dtype(dtype_name)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    generator = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(case.shape, generator=generator).to(device=device, dtype=dtype)
    x = x.contiguous(memory_format=memory_format)
    label = f"{case.name} {layout} {dtype_name} {device}"

    def row(mode: str, pool: str, **values: Any) -> OpResult:
        return OpResult(
            case=case.name,
            shape=case.shape_str,
            window=case.window,
            layout=layout,
            dtype=dtype_name,
            device=str(device),
            mode=mode,
            pool=pool,
            **values,
        )

    rows: list[OpResult] = []
    copy_gbps: float | None = None
    if "fwd" in modes:
        # The bandwidth reference: a copy into a preallocated buffer of the same layout moves exactly
        # x.nbytes in and out, with no allocation; clone() adds the allocation (and, on CPU, the first touch
        # of fresh pages) that every pool's output pays as well, and is shown for comparison.
        buffer = torch.empty_like(x)
        references: list[tuple[str, Callable[[], Tensor]]] = [
            (COPY, lambda: buffer.copy_(x)),
            (CLONE, x.clone),
        ]
        for name, reference in references:
            if progress:
                progress(f"{label} fwd {name}")
            seconds, iqr = _time(reference, device, min_run_time)
            rate = gbps(2 * x.nbytes, seconds)
            copy_gbps = copy_gbps or rate
            rows.append(row("fwd", name, ms=seconds * 1e3, iqr_ms=iqr * 1e3, gbps=rate))
        del buffer

    k, s, p = case.kernel_size, case.stride, case.padding
    dims = case.spatial_dims
    Built = tuple[Callable[[Tensor], Tensor], list[Tensor], int]
    native_max = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]

    def native() -> Built:
        return (lambda t: native_max(t, k, s, p)), [], 0

    def builder(name: str) -> Callable[[], Built]:
        def build() -> Built:
            torch.manual_seed(0)
            options = _pool_options(name, k, dims)
            pool = poolkit.create_pool(name, k, s, p, channels=case.shape[1], spatial_dims=dims, **options)
            pool = pool.to(device=device, dtype=dtype)
            pool = pool.to(memory_format=memory_format).train()  # type: ignore[call-overload]
            params = [q for q in pool.parameters() if q.requires_grad]
            return pool, params, sum(q.numel() for q in params)

        return build

    current = fused_kernel_mode()
    entries: list[tuple[str, Callable[[], Built], str]] = [(NATIVE, native, current)]
    for name in names:
        entries += [(name if path == current else f"{name} [{path}]", builder(name), path) for path in paths]

    for name, build, path in entries:
        try:
            pool, params, n_params = build()
        except Exception as exc:  # the pool cannot even be built (e.g. a dtype it refuses)
            rows.extend(row(mode, name, error=_error(exc)) for mode in modes)
            continue
        eager = _on_path(pool, path)
        fn = _on_path(torch.compile(pool), path) if compile else eager
        for mode in modes:
            if progress:
                progress(f"{label} {mode} {name}")
            try:
                if mode == "memory":
                    owned = [*pool.parameters(), *pool.buffers()] if isinstance(pool, nn.Module) else []
                    saved = saved_tensor_bytes(eager, x, owned)
                    rows.append(
                        row(
                            mode,
                            name,
                            saved_bytes=saved.total,
                            saved_extra_bytes=saved.extra,
                            saves_input=saved.saves_input,
                            params=n_params,
                        )
                    )
                    continue
                seconds, iqr, y = _time_entry(fn, params, x, mode, device, min_run_time)
                rate = gbps(_traffic(x, y, mode), seconds)
                rows.append(
                    row(
                        mode,
                        name,
                        ms=seconds * 1e3,
                        iqr_ms=iqr * 1e3,
                        gbps=rate,
                        copy_fraction=rate / copy_gbps if copy_gbps else None,
                        params=n_params,
                    )
                )
            except Exception as exc:
                rows.append(row(mode, name, error=_error(exc), params=n_params))
    _add_ratios(rows)
    return rows


def _on_path(fn: Callable[[Tensor], Tensor], path: str) -> Callable[[Tensor], Tensor]:
    """``fn`` run with the kernel path ``path`` (its forward picks the kernels; backward follows them)."""
    if path == fused_kernel_mode():
        return fn

    def run(x: Tensor) -> Tensor:
        with use_fused_kernels(path):  # type: ignore[arg-type]
            return fn(x)

    return run


def _time_entry(
    fn: Callable[[Tensor], Tensor],
    params: list[Tensor],
    x: Tensor,
    mode: str,
    device: torch.device,
    min_run_time: float,
) -> tuple[float, float, Tensor]:
    """Time one pool in ``fwd`` or ``fwd+bwd`` mode; also returns one output (for the byte count)."""
    if mode == "fwd":
        with torch.no_grad():
            y = fn(x)

        def step() -> None:
            with torch.no_grad():
                fn(x)

    else:
        inp = x.detach().requires_grad_()
        inputs = [inp, *params]
        y = fn(inp)
        grad_out = torch.randn_like(y)
        torch.autograd.grad(y, inputs, grad_out, allow_unused=True)

        def step() -> None:
            torch.autograd.grad(fn(inp), inputs, grad_out, allow_unused=True)

    seconds, iqr = _time(step, device, min_run_time)
    return seconds, iqr, y.detach()


def _add_ratios(rows: list[OpResult]) -> None:
    """Set ``ratio`` (and ``extra_ratio``) of every row to :data:`NATIVE` of the same group and mode."""
    reference = {(r.group, r.mode): r for r in rows if r.pool == NATIVE and r.error is None}
    for r in rows:
        ref = reference.get((r.group, r.mode))
        if ref is None or r.error is not None:
            continue
        if r.mode == "memory":
            if ref.saved_bytes and r.saved_bytes is not None:
                r.ratio = r.saved_bytes / ref.saved_bytes
            if ref.saved_extra_bytes and r.saved_extra_bytes is not None:
                r.extra_ratio = r.saved_extra_bytes / ref.saved_extra_bytes
        elif ref.ms and r.ms is not None:
            r.ratio = r.ms / ref.ms
