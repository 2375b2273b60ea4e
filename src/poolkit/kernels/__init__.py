"""Compiled kernels of the window statistics that every adaptive pool is built from.

* :mod:`~poolkit.kernels.build`: builds ``window_stats.cpp`` and ``beta_sampler.cpp`` (C++, OpenMP; one
  extension) on first use into torch's extension cache, reports the build time, and falls back to the eager
  path with one warning;
* :mod:`~poolkit.kernels.ops`: the custom operators ``poolkit::window_max_mean``,
  ``window_max_topk_mean``, ``window_max_mean_blend`` and ``window_max_topk_blend`` (the blends and the
  T-Max-Avg family, gate included), ``window_power_mean`` (GeM), ``window_weighted_mean`` (attention, LIP),
  ``window_self_weighted_mean`` (SoftPool, stochastic pooling in evaluation), ``window_power_sum`` (LP) and
  Stochastic Mix's sampler ``beta_rsample``, fake kernels and autograd registered, one node each under
  ``torch.compile`` and ``torch.export``;
* :mod:`~poolkit.kernels.triton_window` and :mod:`~poolkit.kernels.triton_lp_soft`: the window statistics in
  Triton, registered as their CUDA kernels (opt-in with ``POOLKIT_FUSED=on``: measured on an H200 they are
  slower than the native pair, see docs/benchmarks.md; needs ``pip install triton``).

The pools reach them through :mod:`poolkit.layers.fused`, which chooses between the compiled kernels, the
eager fused path and the native pair (``POOLKIT_FUSED``, :func:`poolkit.layers.fused.set_fused_kernels`).
"""

from poolkit.kernels.build import KernelStatus, cpu_kernels_available, cuda_kernels_available, kernel_status

__all__ = ["KernelStatus", "cpu_kernels_available", "cuda_kernels_available", "kernel_status"]
