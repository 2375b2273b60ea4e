"""Stochastic Mix's Beta draws: the compiled sampler or torch's ``Beta.rsample``, chosen like the kernels.

:func:`beta_rsample` draws ``lambda ~ Beta(alpha, beta)`` with a reparameterised gradient. Both paths make
the same draws from torch's default generator; the compiled operator ``poolkit::beta_rsample``
(:mod:`poolkit.kernels.ops`, ``beta_sampler.cpp``) computes the exact implicit-reparameterisation gradient
itself, cheaper than torch's approximate per-sample ``_dirichlet_grad``. :func:`beta_sampler_path` says
which path serves given parameters (``POOLKIT_FUSED``, :func:`poolkit.layers.fused.set_fused_kernels`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from poolkit.kernels.build import cpu_kernels_available
from poolkit.kernels.ops import beta_rsample_op
from poolkit.layers.fused import KernelPath, fused_kernel_mode

__all__ = ["MAX_COMPILED_KAPPA", "beta_rsample", "beta_sampler_path"]

#: The largest kappa = alpha + beta that the compiled Beta sampler serves (its gradient series grows with it).
MAX_COMPILED_KAPPA = 256.0


def beta_sampler_path(alpha: Tensor, beta: Tensor, total: float | None = None) -> KernelPath:
    """``"compiled"`` when :func:`beta_rsample` takes the C++ sampler for these parameters, else ``"native"``.

    The compiled sampler serves CPU float32/float64 parameters of one shape with
    ``alpha + beta <= MAX_COMPILED_KAPPA`` (``total``, when the caller knows it, else read from the tensors;
    under ``torch.compile`` only a given ``total`` counts) in the modes ``auto`` and ``on``; ``eager``,
    ``off``, other devices and larger concentrations take torch's ``Beta.rsample``.
    """
    if fused_kernel_mode() not in ("auto", "on") or alpha.device.type != "cpu" or beta.device.type != "cpu":
        return "native"
    if alpha.dtype not in (torch.float32, torch.float64) or alpha.dtype != beta.dtype:
        return "native"
    if alpha.shape != beta.shape:
        return "native"
    if total is None:
        if torch.compiler.is_compiling():
            return "native"
        total = float((alpha + beta).max()) if alpha.numel() else 0.0
    if not total <= MAX_COMPILED_KAPPA:
        return "native"
    return "compiled" if cpu_kernels_available() else "native"


def beta_rsample(
    alpha: Tensor, beta: Tensor, sample_shape: tuple[int, ...], *, total: float | None = None
) -> Tensor:
    """``lambda ~ Beta(alpha, beta)``, shape ``sample_shape + alpha.shape``, reparameterised (rsample).

    The same draws from torch's default generator on either path: the compiled operator
    :func:`poolkit.kernels.ops.beta_rsample_op` draws exactly the numbers of
    ``torch.distributions.Beta(alpha, beta).rsample(sample_shape)``, and computes the implicit gradient
    ``d lambda / d alpha = -(dI/d alpha) / f(lambda)`` itself (I the regularised incomplete beta function,
    f the density) instead of torch's per-sample ``_dirichlet_grad``. ``total``: ``alpha + beta`` when the
    caller knows it as a number (Stochastic Mix's kappa); see :func:`beta_sampler_path`.

    Shape:
        alpha and beta of one shape P (Stochastic Mix: () or (C,)) -> ``(*sample_shape, *P)``.

    Example:
        >>> alpha, beta = torch.tensor(2.0), torch.tensor(3.0)
        >>> _ = torch.manual_seed(0)
        >>> ours = beta_rsample(alpha, beta, (4,))
        >>> _ = torch.manual_seed(0)
        >>> torch.equal(ours, torch.distributions.Beta(alpha, beta).rsample((4,)))
        True
    """
    if beta_sampler_path(alpha, beta, total) == "compiled":
        return beta_rsample_op(alpha, beta, list(sample_shape))
    return torch.distributions.Beta(alpha, beta, validate_args=False).rsample(sample_shape)
