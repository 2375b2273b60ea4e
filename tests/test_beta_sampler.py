"""Stochastic Mix's compiled Beta sampler (``poolkit::beta_rsample``): draws, distribution, gradient, tracing.

The operator must draw exactly what ``torch.distributions.Beta.rsample`` draws from the same generator state,
and its gradient must be the implicit-reparameterisation one, ``d lambda / d a = -(dI/da) / f(lambda)``:
checked against hand-computed closed forms, against finite differences of scipy's inverse CDF, and against
torch's own (approximate) ``_dirichlet_grad`` on the same samples.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import poolkit
from poolkit.kernels import cpu_kernels_available
from poolkit.kernels.ops import beta_rsample_backward_op, beta_rsample_op
from poolkit.layers.fused import use_fused_kernels
from poolkit.layers.sampling import MAX_COMPILED_KAPPA, beta_rsample, beta_sampler_path
from pools import build, reseed

needs_build = pytest.mark.skipif(
    not cpu_kernels_available(), reason="the C++ kernels could not be built here"
)
scipy_special = pytest.importorskip("scipy.special")
scipy_stats = pytest.importorskip("scipy.stats")


@pytest.fixture
def fresh_dynamo():
    """Compile from a clean cache and leave none behind (the recompile limit counts across tests)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _torch_draws(alpha: torch.Tensor, beta: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.distributions.Beta(alpha, beta, validate_args=False).rsample(shape)


def _per_sample_gradients(
    sampler, alpha: float, beta: float, n: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(lambda, d lambda/d alpha, d lambda/d beta) of n draws, one (alpha, beta) pair per draw."""
    a = torch.full((n,), alpha, dtype=dtype, requires_grad=True)
    b = torch.full((n,), beta, dtype=dtype, requires_grad=True)
    reseed(seed)
    lam = sampler(a, b)
    grad_a, grad_b = torch.autograd.grad(lam.sum(), [a, b])
    return lam.detach(), grad_a, grad_b


@needs_build
@pytest.mark.parametrize("kappa", [0.5, 2.0, 7.0, 100.0])
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_draws_are_torchs_draws(kappa: float, per_channel: bool, dtype: torch.dtype) -> None:
    """Same generator state in, same numbers and same generator state out (torch.manual_seed reproduces)."""
    theta = torch.linspace(-3, 3, 5, dtype=dtype) if per_channel else torch.tensor(0.4, dtype=dtype)
    m = torch.sigmoid(theta)
    alpha, beta = kappa * m, kappa * (1 - m)
    shape = (200,) if per_channel else (200, 3)
    reseed(5)
    expected, after_expected = _torch_draws(alpha, beta, shape), torch.rand(4)
    reseed(5)
    got, after_got = beta_rsample_op(alpha, beta, list(shape)), torch.rand(4)
    assert got.shape == expected.shape == (*shape, *alpha.shape) and got.dtype == dtype
    assert torch.equal(got, expected)
    assert torch.equal(after_got, after_expected)


@needs_build
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.3, 1.7), (4.0, 2.5), (45.0, 15.0)])
def test_draws_follow_the_beta_distribution(alpha: float, beta: float) -> None:
    """Moments and a Kolmogorov-Smirnov test against scipy.stats.beta (fixed seed: deterministic)."""
    reseed(11)
    lam = beta_rsample_op(
        torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64), [20000]
    )
    mean = alpha / (alpha + beta)
    var = alpha * beta / ((alpha + beta) ** 2 * (alpha + beta + 1))
    se_mean, se_var = math.sqrt(var / 20000), var * math.sqrt(2 / 20000) * 3  # var's se, loosely (non-normal)
    assert abs(lam.mean().item() - mean) < 5 * se_mean
    assert abs(lam.var().item() - var) < 5 * se_var
    assert scipy_stats.kstest(lam.numpy(), "beta", args=(alpha, beta)).pvalue > 1e-3


@needs_build
def test_gradient_hand_computed_closed_forms() -> None:
    """Beta(a, 1): lambda = u^(1/a), so d lambda/d a = -lambda ln(lambda) / a; Beta(1, b): lambda =
    1 - (1 - u)^(1/b), so d lambda/d b = (1 - lambda) ln(1 - lambda) / b.

    At a = 2, lambda = 0.5: -0.5 ln 0.5 / 2 = 0.1732868;
    at b = 3, lambda = 0.25: 0.75 ln 0.75 / 3 = -0.0719205.
    """
    one = torch.ones((), dtype=torch.float64)
    grad_a, _ = beta_rsample_backward_op(one, torch.tensor(0.5, dtype=torch.float64), 2 * one, one)
    assert grad_a.item() == pytest.approx(0.25 * math.log(2.0), rel=1e-12)
    assert grad_a.item() == pytest.approx(0.1732868, abs=1e-7)
    _, grad_b = beta_rsample_backward_op(one, torch.tensor(0.25, dtype=torch.float64), one, 3 * one)
    assert grad_b.item() == pytest.approx(0.75 * math.log(0.75) / 3, rel=1e-12)
    assert grad_b.item() == pytest.approx(-0.0719205, abs=1e-7)
    # Uniform(0, 1) = Beta(1, 1): d lambda/d a = -lambda ln(lambda) + ... checked on both halves
    x = torch.tensor([0.1, 0.3, 0.7, 0.9], dtype=torch.float64)
    for a, b in ((2.0, 1.0), (0.5, 1.0)):
        for value in x:
            ga, _ = beta_rsample_backward_op(one, value, a * one, b * one)
            assert ga.item() == pytest.approx(-value.item() * math.log(value.item()) / a, rel=1e-12)


@needs_build
@pytest.mark.parametrize(
    ("alpha", "beta"),
    [(1.0, 1.0), (0.3, 1.7), (1.7, 0.3), (5.0, 3.0), (0.05, 0.1), (20.0, 12.0), (150.0, 100.0)],
)
def test_gradient_is_the_derivative_of_the_inverse_cdf(alpha: float, beta: float) -> None:
    """d lambda/d a at fixed u equals the central difference of scipy's betaincinv(a, b, u) in a (and b)."""
    x = torch.tensor([0.002, 0.05, 0.2, 0.45, 0.5, 0.55, 0.8, 0.95, 0.998], dtype=torch.float64)
    x = x[
        (scipy_special.betainc(alpha, beta, x.numpy()) > 1e-12)
        & (scipy_special.betainc(beta, alpha, 1 - x.numpy()) > 1e-12)
    ]
    a = torch.full_like(x, alpha)
    b = torch.full_like(x, beta)
    one = torch.ones_like(x)
    grad_a, grad_b = beta_rsample_backward_op(one, x, a, b)  # one pair per sample: per-sample derivatives
    u = scipy_special.betainc(alpha, beta, x.numpy())
    h = 1e-5 * min(alpha, beta)
    fd_a = (scipy_special.betaincinv(alpha + h, beta, u) - scipy_special.betaincinv(alpha - h, beta, u)) / (
        2 * h
    )
    fd_b = (scipy_special.betaincinv(alpha, beta + h, u) - scipy_special.betaincinv(alpha, beta - h, u)) / (
        2 * h
    )
    torch.testing.assert_close(grad_a, torch.from_numpy(fd_a), rtol=1e-5, atol=0.0)
    torch.testing.assert_close(grad_b, torch.from_numpy(fd_b), rtol=1e-5, atol=0.0)


@needs_build
@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (0.4, 1.6), (3.5, 3.5), (18.0, 12.0)])
def test_gradient_of_the_same_samples_as_torchs_dirichlet_grad(alpha: float, beta: float) -> None:
    """Same draws, per-sample d lambda/d alpha and d lambda/d beta against torch's Beta.rsample backward.

    torch's ``_dirichlet_grad`` approximates (series, asymptotic and rational fits: up to ~1e-3 relative off
    the exact derivative that the previous test checks), so each sample may differ by 5e-3 and the median
    sample by 1e-3.
    """

    def torch_sampler(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return _torch_draws(a, b, ())

    def ours(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return beta_rsample_op(a, b, [])

    for dtype in (torch.float32, torch.float64):
        lam0, ga0, gb0 = _per_sample_gradients(torch_sampler, alpha, beta, 2000, dtype, seed=3)
        lam1, ga1, gb1 = _per_sample_gradients(ours, alpha, beta, 2000, dtype, seed=3)
        assert torch.equal(lam1, lam0)
        for got, expected in ((ga1, ga0), (gb1, gb0)):
            torch.testing.assert_close(got, expected, rtol=5e-3, atol=1e-7)
            assert ((got - expected).abs() / expected.abs()).median().item() < 1e-3


@needs_build
def test_gradient_sums_over_the_samples_of_each_pair() -> None:
    """A shared (scalar) pair sums every sample's term; per-channel pairs sum over the batch only."""
    reseed(2)
    alpha = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64)
    beta = torch.tensor([1.3, 2.0, 1.0], dtype=torch.float64)
    lam = beta_rsample_op(alpha, beta, [64])
    g = torch.randn_like(lam)
    grad_a, grad_b = beta_rsample_backward_op(g, lam, alpha, beta)
    for c in range(3):
        one_a, one_b = beta_rsample_backward_op(g[:, c], lam[:, c], alpha[c].expand(64), beta[c].expand(64))
        assert grad_a[c].item() == pytest.approx(one_a.sum().item(), rel=1e-12)
        assert grad_b[c].item() == pytest.approx(one_b.sum().item(), rel=1e-12)
    shared_a, _ = beta_rsample_backward_op(g[:, 1], lam[:, 1], alpha[1], beta[1])
    assert shared_a.item() == pytest.approx(grad_a[1].item(), rel=1e-12)


@needs_build
def test_a_point_mass_keeps_finite_values_and_a_zero_gradient() -> None:
    """beta = 0 (m = sigmoid(theta) rounds to 1): torch's clamp to 1 - ulp, and no NaN in the gradient."""
    alpha = torch.tensor(2.0, requires_grad=True)
    beta = torch.tensor(0.0, requires_grad=True)
    reseed(0)
    lam = beta_rsample_op(alpha, beta, [8])
    reseed(0)
    assert torch.equal(lam, _torch_draws(alpha.detach(), beta.detach(), (8,)))
    assert torch.all(lam == 1 - torch.finfo(torch.float32).eps / 2)
    grads = torch.autograd.grad(lam.sum(), [alpha, beta])
    assert all(g.item() == 0.0 for g in grads)


@needs_build
def test_opcheck() -> None:
    alpha = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64, requires_grad=True)
    beta = torch.tensor([1.5, 2.0, 0.7], dtype=torch.float64, requires_grad=True)
    # The draw is random, so the checks that run the operator twice and compare cannot apply to it.
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(beta_rsample_op, (alpha, beta, [4]), test_utils=checks)
    torch.library.opcheck(beta_rsample_op, (alpha[0].detach(), beta[0].detach(), [4, 3]), test_utils=checks)
    reseed(1)
    lam = beta_rsample_op(alpha.detach(), beta.detach(), [4])
    torch.library.opcheck(
        beta_rsample_backward_op, (torch.randn_like(lam), lam, alpha.detach(), beta.detach())
    )


@needs_build
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_stochastic_mix_gradcheck_float64(per_channel: bool) -> None:
    """The deterministic part (the blend of fixed draws) by finite differences in x, in float64."""
    pool = poolkit.create_pool("stochastic_mix", 2, channels=3, per_channel=per_channel).double().train()
    x = torch.randperm(2 * 3 * 6 * 6, generator=torch.Generator().manual_seed(0)).double() / 216 + 0.3
    x = x.view(2, 3, 6, 6).requires_grad_()

    def f(inp: torch.Tensor) -> torch.Tensor:
        reseed(9)  # the same draws on every call
        return pool(inp)

    assert beta_sampler_path(torch.zeros(3), torch.ones(3)) == "compiled"
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6, rtol=1e-4)


class _OpRecorder:
    """A torch.compile backend that records the operators of the graph and runs it unchanged."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.targets += [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
        return gm


@needs_build
@pytest.mark.parametrize("per_channel", [False, True], ids=["scalar", "per_channel"])
def test_torch_compile_fullgraph_sees_one_sampler_and_matches_eager(
    per_channel: bool, fresh_dynamo: None
) -> None:
    pool = poolkit.create_pool("stochastic_mix", 2, channels=4, per_channel=per_channel).train()
    with torch.no_grad():
        pool.theta.add_(0.3)
    x = torch.randn(3, 4, 6, 6)
    recorder = _OpRecorder()
    results = []
    for fn in (pool, torch.compile(pool, fullgraph=True, backend=recorder)):
        leaf = x.clone().requires_grad_()
        reseed(6)
        y = fn(leaf)
        results.append((y, torch.autograd.grad(y.square().sum(), [leaf, pool.theta])))
    assert sum("poolkit.beta_rsample" in t for t in recorder.targets) == 1, recorder.targets
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b)


@needs_build
def test_compiled_graph_draws_twice_for_two_identical_calls(fresh_dynamo: None) -> None:
    """The operator is tagged nondeterministic_seeded: two identical calls stay two draws under compile."""
    pool = poolkit.create_pool("stochastic_mix", 2).train()
    x = torch.rand(2, 3, 4, 4)
    compiled = torch.compile(lambda inp: pool(inp) - pool(inp), fullgraph=True, backend="aot_eager")
    reseed(0)
    assert compiled(x).abs().max().item() > 0


@needs_build
def test_torch_export_keeps_the_sampler(fresh_dynamo: None) -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build("stochastic_mix", 2)).train()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(model, (x,))
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert any("poolkit.beta_rsample" in t for t in targets), targets
    reseed(4)
    expected = model(x)
    reseed(4)
    torch.testing.assert_close(exported.module()(x), expected)


@pytest.mark.parametrize("mode", ["eager", "off"])
def test_other_modes_and_large_kappa_take_torchs_sampler(mode: str) -> None:
    alpha, beta = torch.tensor(1.0), torch.tensor(1.0)
    with use_fused_kernels(mode):
        assert beta_sampler_path(alpha, beta) == "native"
        reseed(3)
        got = beta_rsample(alpha, beta, (5,))
    reseed(3)
    assert torch.equal(got, _torch_draws(alpha, beta, (5,)))
    big = torch.tensor(MAX_COMPILED_KAPPA)
    assert beta_sampler_path(big, torch.tensor(1.0)) == "native"
    assert beta_sampler_path(alpha, beta, total=2 * MAX_COMPILED_KAPPA) == "native"
    assert beta_sampler_path(alpha.double(), beta) == "native"  # mixed dtypes
    if cpu_kernels_available():
        assert beta_sampler_path(alpha, beta) == "compiled"
