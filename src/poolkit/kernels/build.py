"""Build (once, cached) and load the C++ window kernels; report the build time; fall back with one warning.

The CPU kernels live in two C++ files next to this module, built together as one extension:
``window_stats.cpp`` (the window statistics) and ``beta_sampler.cpp`` (Stochastic Mix's Beta draws and their
gradient). The first call of
:func:`cpu_kernels_available` in a process compiles it with ``torch.utils.cpp_extension.load`` (ninja and the
system C++ compiler, OpenMP on) into torch's extension cache (``TORCH_EXTENSIONS_DIR``, by default
``~/.cache/torch_extensions``), which rebuilds only when the source or the compiler flags change, and loads it
as the operators ``torch.ops.poolkit_cpu.*``. On x86-64 it is compiled for the machine's own instruction set
(``-march=native``: AVX2/AVX-512 where present; it made the channels_last backward 10x faster than SSE2 on
an AMD EPYC), so the cached build is named after the CPU's feature flags and torch's version: a home
directory shared by different CPUs gets one build per CPU kind, never a binary that the CPU cannot run, and
a torch upgrade rebuilds. The time the build
took is logged once at INFO and kept in :func:`kernel_status` (``poolkit bench`` prints it in its header).

When the build fails (no compiler, no ninja), :func:`cpu_kernels_available` returns False, emits ONE
``RuntimeWarning`` that names the cause and the fix, and every pool keeps the eager path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["KernelStatus", "cpu_kernels_available", "cuda_kernels_available", "kernel_status"]

_LOG = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("window_stats.cpp")
#: Every C++ source of the extension (one build, one cache entry).
SOURCES = (SOURCE, Path(__file__).with_name("beta_sampler.cpp"))
#: The name of the extension in torch's cache (a new source gets a new versioned build there).
EXTENSION = "poolkit_window_stats"
LDFLAGS = ("-fopenmp",)


def _native_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64")


def compiler_flags() -> list[str]:
    """``-O3 -fopenmp``, and ``-march=native`` on x86-64."""
    return ["-O3", "-fopenmp", *(["-march=native"] if _native_x86() else [])]


def extension_name() -> str:
    """The cache name of the build: :data:`EXTENSION` and a hash of torch's version, the CPU's flags and the
    sources' contents.

    torch's cache rebuilds when the source or the flags change, not when torch does (the include paths of a
    venv stay the same across an upgrade), and ``-march=native`` binaries are only valid on their CPU kind.
    The sources are in the name too, so that two checkouts of different versions sharing one cache (two
    branches, two venvs) each keep their own build instead of rebuilding over each other's, which also
    loaded a build of the other version's sources when both built at once.
    """
    flags = platform.processor()
    if _native_x86():
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = line
                    break
    sources = hashlib.sha1()
    for path in SOURCES:
        with contextlib.suppress(OSError):
            sources.update(path.read_bytes())
    key = f"{torch.__version__}|{platform.machine()}|{flags}|{sources.hexdigest()}"
    return f"{EXTENSION}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


@dataclass
class KernelStatus:
    """Where the compiled CPU kernels stand in this process.

    ``state`` is ``"not built"`` (not asked for yet), ``"ready"`` or ``"failed"``; ``seconds`` is the time the
    build (or the load of a cached build) took; ``error`` the cause of a failure.
    """

    state: str = "not built"
    seconds: float | None = None
    error: str | None = None

    def describe(self) -> str:
        """One line for a report header, e.g. ``"ready (built or loaded in 21.3 s)"``."""
        if self.state == "ready":
            return f"ready (built or loaded from the cache in {self.seconds:.1f} s)"
        if self.state == "failed":
            return f"unavailable, eager fallback ({self.error})"
        return "not built yet"


_status = KernelStatus()
_lock = threading.Lock()


def kernel_status() -> KernelStatus:
    """The state of the compiled CPU kernels (see :class:`KernelStatus`); builds nothing."""
    return _status


@contextlib.contextmanager
def _ninja_on_path() -> Iterator[None]:
    """Put the ``ninja`` package's binary on PATH while building (a venv's bin is not always there)."""
    try:
        import ninja  # type: ignore[import-untyped]

        directory = str(ninja.BIN_DIR)
    except (ImportError, AttributeError):
        yield
        return
    previous = os.environ.get("PATH", "")
    os.environ["PATH"] = directory + os.pathsep + previous
    try:
        yield
    finally:
        os.environ["PATH"] = previous


def _compile() -> None:
    """Compile (or load from the cache) :data:`SOURCES` and register ``torch.ops.poolkit_cpu``."""
    from torch.utils import cpp_extension

    with _ninja_on_path():
        cpp_extension.load(
            name=extension_name(),
            sources=[str(path) for path in SOURCES],
            extra_cflags=compiler_flags(),
            extra_ldflags=list(LDFLAGS),
            is_python_module=False,
            verbose=False,
        )


def _summary(error: Exception) -> str:
    """The cause of a failed build in a few hundred characters: the first line and the last two (a compiler
    error ends with its cause, e.g. ``c++: not found``, after the long command line)."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 3:
        lines = [lines[0][:150] + " ...", *lines[-2:]]
    return f"{type(error).__name__}: " + " | ".join(line[:300] for line in lines)


@torch.compiler.assume_constant_result
def cpu_kernels_available() -> bool:
    """Whether the compiled CPU kernels are loaded, building them on the first call.

    Under ``torch.compile`` this runs at trace time and its answer is a constant of the graph.
    A failed build warns once and is not retried in this process.
    """
    if _status.state != "not built":
        return _status.state == "ready"
    with _lock:
        if _status.state == "not built":
            start = time.perf_counter()
            try:
                _compile()
            except Exception as error:  # no compiler, no ninja, a broken toolchain: keep the eager path
                _status.state, _status.error = "failed", _summary(error)
                warnings.warn(
                    "poolkit: the compiled CPU window kernels could not be built, so the pools use the "
                    f"slower eager path ({_status.error}). Install a C++ compiler (gcc/g++) and ninja "
                    "(pip install ninja) to get them, or set POOLKIT_FUSED=eager to silence this warning.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            else:
                _status.state = "ready"
            _status.seconds = time.perf_counter() - start
            if _status.state == "ready":
                _LOG.info("poolkit: compiled CPU window kernels ready in %.1f s", _status.seconds)
    return _status.state == "ready"


_cuda: dict[str, bool] = {}


@torch.compiler.assume_constant_result
def cuda_kernels_available() -> bool:
    """Whether the Triton kernels can serve CUDA tensors: CUDA present and triton importable.

    The first True answer registers them as the CUDA kernels of the ``poolkit::`` operators. No warning
    when triton is missing: on CUDA the native pair is the default and the Triton kernels are opt-in.
    """
    if "available" not in _cuda:
        available = False
        if torch.cuda.is_available():
            try:
                from poolkit.kernels import triton_lp_soft, triton_window
            except ImportError:
                pass
            else:
                triton_window.register_cuda_kernels()
                triton_lp_soft.register_cuda_kernels()
                available = True
        _cuda["available"] = available
    return _cuda["available"]
