"""Compiled kernels of the window statistics that every adaptive pool is built from.

* :mod:`~poolkit.kernels.build`: builds ``window_stats.cpp`` (C++, OpenMP) on first use into torch's
  extension cache, reports the build time, and falls back to the eager path with one warning;
* :mod:`~poolkit.kernels.ops`: the custom operators ``poolkit::window_max_mean``,
  ``window_max_topk_mean``, ``window_power_mean`` (GeM), ``window_weighted_mean`` (attention, LIP),
  ``window_self_weighted_mean`` (SoftPool, stochastic pooling in evaluation) and ``window_power_sum`` (LP),
  fake kernels and autograd registered, one node each under ``torch.compile`` and ``torch.export``;
* :mod:`~poolkit.kernels.triton_window` and :mod:`~poolkit.kernels.triton_lp_soft`: the same operators in
  Triton, registered as their CUDA kernels (opt-in with ``POOLKIT_FUSED=on`` until measured on a GPU; needs
  ``pip install triton``).

The pools reach them through :mod:`poolkit.layers.fused`, which chooses between the compiled kernels, the
eager fused path and the native pair (``POOLKIT_FUSED``, :func:`poolkit.layers.fused.set_fused_kernels`).
"""

from poolkit.kernels.build import KernelStatus, cpu_kernels_available, cuda_kernels_available, kernel_status

__all__ = ["KernelStatus", "cpu_kernels_available", "cuda_kernels_available", "kernel_status"]
