"""Stochastic Mix's Beta draws with their implicit-reparameterisation gradient.

See :mod:`poolkit.kernels.ops` for the operators' formulas.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "beta_rsample_backward_op",
    "beta_rsample_op",
]


# ------------------------------------------------------------------------------------- Beta draws


@torch.library.custom_op(
    "poolkit::beta_rsample",
    mutates_args=(),
    device_types="cpu",
    tags=(torch.Tag.nondeterministic_seeded,),  # never merged with an identical call, never replayed
)
def beta_rsample_op(alpha: Tensor, beta: Tensor, sample_shape: Sequence[int]) -> Tensor:
    """``lambda ~ Beta(alpha, beta)`` of shape ``sample_shape + alpha.shape``, reparameterised.

    Draws from torch's default CPU generator exactly the numbers that
    ``torch.distributions.Beta(alpha, beta).rsample(sample_shape)`` draws (so ``torch.manual_seed``
    reproduces them); the gradient to alpha and beta is the implicit one, ``d lambda / d a = -(dI/da) / f``
    (see the module docstring), computed by :func:`beta_rsample_backward_op`.
    """
    sample: Tensor = torch.ops.poolkit_cpu.beta_rsample_forward(alpha, beta, sample_shape)
    return sample


@beta_rsample_op.register_fake
def _(alpha: Tensor, beta: Tensor, sample_shape: Sequence[int]) -> Tensor:
    return alpha.new_empty((*sample_shape, *alpha.shape))


@torch.library.custom_op("poolkit::beta_rsample_backward", mutates_args=(), device_types="cpu")
def beta_rsample_backward_op(
    grad: Tensor, sample: Tensor, alpha: Tensor, beta: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sum g dlambda/dalpha, sum g dlambda/dbeta)`` over the samples of each (alpha, beta) pair."""
    grad_alpha, grad_beta = torch.ops.poolkit_cpu.beta_rsample_backward(grad, sample, alpha, beta)
    return grad_alpha, grad_beta


@beta_rsample_backward_op.register_fake
def _(grad: Tensor, sample: Tensor, alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(alpha), torch.empty_like(beta)


def _setup_beta_rsample(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
    alpha, beta, _ = inputs
    ctx.save_for_backward(output, alpha, beta)


def _backward_beta_rsample(ctx: Any, grad: Tensor | None) -> tuple[Any, ...]:
    sample, alpha, beta = ctx.saved_tensors
    if grad is None or not any(ctx.needs_input_grad[:2]):
        return None, None, None
    grad_alpha, grad_beta = beta_rsample_backward_op(grad, sample, alpha, beta)
    return grad_alpha, grad_beta, None


beta_rsample_op.register_autograd(_backward_beta_rsample, setup_context=_setup_beta_rsample)


def _keep_draws_apart_under_compile() -> None:
    """List the sampler among AOTAutograd's random operators, which its common-subexpression pass keeps.

    That pass (torch 2.13) does not read the ``nondeterministic_seeded`` tag: without this, two identical
    calls in one compiled training graph (a Stochastic Mix module reused on same-sized inputs) would share
    their draws. torch's own ``Beta.rsample`` (``_sample_dirichlet``) is not on the list and has that problem.
    """
    with contextlib.suppress(ImportError, AttributeError):
        from torch._functorch import compile_utils

        if torch.ops.poolkit.beta_rsample not in compile_utils.rand_ops:
            compile_utils.rand_ops.append(torch.ops.poolkit.beta_rsample)


_keep_draws_apart_under_compile()
