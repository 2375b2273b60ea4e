"""Hand-computed values: the worked 2x2 example of docs/methods.md, padding, K clipping, sampling.

The worked example is one 2x2 window x = [[0.1, 0.2], [0.05, 0.25]]:
M = 0.25, A = 0.15, T_4 = A = 0.15, T_2 = (0.25 + 0.2) / 2 = 0.225, T = 0.3.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import poolkit
import poolkit.functional as PF
from pools import reseed

X = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]])
VALUES = [0.1, 0.2, 0.05, 0.25]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def pool_value(name: str, **options) -> float:
    torch.manual_seed(0)
    return poolkit.create_pool(name, 2, channels=1, **options).eval()(X).item()


# Defaults, at initialisation (learnable methods start as the formulas say).
WORKED_EXAMPLE = {
    "max": 0.25,
    "avg": 0.15,
    "lp": math.sqrt(0.01 + 0.04 + 0.0025 + 0.0625),  # 0.339116
    "strided_conv": 0.15,  # initialised as average pooling
    "tmaxavg": 0.15,  # M = 0.25 < T = 0.3, so T_4 = A
    "soft_tmaxavg": 0.15 + sigmoid(-0.5) * 0.10,  # alpha = sigmoid((0.25 - 0.3) / 0.1): 0.187754
    "learnable_t": 0.15 + sigmoid(-0.5) * 0.10,
    "channel_adaptive": 0.2,  # lambda = sigmoid(0) = 0.5
    "gated": 0.2,  # g = sigmoid(0) = 0.5
    "stochastic_mix": 0.2,  # eval: lambda = m = 0.5
    "mixed": 0.2,
    "stochastic": (0.01 + 0.04 + 0.0025 + 0.0625) / 0.6,  # sum relu(x) x / sum relu(x): 0.191667
    "softpool": sum(v * math.exp(v) for v in VALUES) / sum(math.exp(v) for v in VALUES),  # 0.156239
    "gem": ((0.001 + 0.008 + 0.000125 + 0.015625) / 4) ** (1 / 3),  # 0.183586
    "blurmax": 0.25,  # a single window: the dense max has one cell, the blur keeps it
}


@pytest.mark.parametrize(("name", "expected"), sorted(WORKED_EXAMPLE.items()))
def test_worked_example(name, expected):
    assert pool_value(name) == pytest.approx(expected, abs=1e-6)


def test_literal_numbers_of_the_worked_example():
    """The same numbers as printed in docs/methods.md, to 6 decimals."""
    literal = {
        "lp": 0.339116, "soft_tmaxavg": 0.187754, "stochastic": 0.191667,
        "softpool": 0.156239, "gem": 0.183586,
    }  # fmt: skip
    for name, value in literal.items():
        assert round(WORKED_EXAMPLE[name], 6) == value, name


def test_every_method_has_a_worked_example():
    hand_made = {"attention", "lip"}  # depend on conv weights: see the tests below
    assert set(WORKED_EXAMPLE) | hand_made == set(poolkit.list_pools())


def test_attention_with_chosen_weights():
    """W1 picks relu(x) into hidden unit 0, W2 reads it: a = sigmoid(x) for positive x."""
    pool = poolkit.create_pool("attention", 2, channels=1)
    with torch.no_grad():
        for p in pool.parameters():
            p.zero_()
        pool.hidden.weight[0, 0] = 1.0
        pool.score.weight[0, 0] = 1.0
    a = [sigmoid(v) for v in VALUES]  # 0.524979, 0.549834, 0.512497, 0.562177
    expected = sum(v * w for v, w in zip(VALUES, a, strict=True)) / (sum(a) + 1e-6)  # 0.152889
    assert pool(X).item() == pytest.approx(expected, abs=1e-6)
    assert round(expected, 6) == 0.152889
    assert pool.hidden.out_channels == 8  # max(C // reduction, 8) with C = 1


def test_attention_hidden_width_and_parameter_count():
    pool = poolkit.create_pool("attention", 2, channels=64)
    assert pool.hidden.out_channels == 16
    assert sum(p.numel() for p in pool.parameters()) == 16 * (64 + 2) + 1


def test_lip_with_identity_logit_conv():
    """conv = centre tap 1 -> h = x; instance norm; logits = 12 sigmoid(h_norm); weights e^logit."""
    pool = poolkit.create_pool("lip", 2, channels=1)
    with torch.no_grad():
        pool.logit_conv.weight.zero_()
        pool.logit_conv.weight[0, 0, 1, 1] = 1.0
    mean = 0.15
    var = sum((v - mean) ** 2 for v in VALUES) / 4  # 0.00625
    logits = [12 * sigmoid((v - mean) / math.sqrt(var + 1e-5)) for v in VALUES]
    weights = [math.exp(lg) for lg in logits]
    expected = sum(v * w for v, w in zip(VALUES, weights, strict=True)) / sum(weights)
    assert pool(X).item() == pytest.approx(expected, rel=1e-5)
    assert 0.15 < expected < 0.25  # importance favours the larger cells


def test_lip_starts_as_average_pooling():
    """The authors' initialisation (zero logit convolution): constant logits, y = A, on any input."""
    pool = poolkit.create_pool("lip", 2, channels=1)
    assert pool(X).item() == pytest.approx(0.15, abs=1e-6)  # the worked example of docs/methods.md
    assert not pool.logit_conv.weight.any()
    reseed(11)
    wide = poolkit.create_pool("lip", 3, 2, 1, channels=6)
    x = torch.randn(2, 6, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(
        wide.double()(x), torch.nn.functional.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    )
    assert sum(p.numel() for p in poolkit.create_pool("lip", 2, channels=8).parameters()) == 9 * 64 + 2 * 8


def test_attention_eps_shrinks_a_window_of_small_scores():
    """y = s * (convex combination), s = sum a / (sum a + eps): large when every score is tiny."""
    pool = poolkit.create_pool("attention", 2, channels=1)
    with torch.no_grad():
        for p in pool.parameters():
            p.zero_()
        pool.score.bias.fill_(-14.0)  # every score sigmoid(-14) = 8.3153e-7
    a = sigmoid(-14.0)
    expected = 4 * a / (4 * a + 1e-6)
    assert round(expected, 3) == 0.769
    y = pool(torch.ones(1, 1, 2, 2, dtype=torch.float64).float())
    assert y.item() == pytest.approx(expected, rel=1e-4)
    assert y.item() < 1.0  # below the window's minimum: the formula, not rounding


def test_lp_gradient_of_an_all_zero_window_is_zero_as_torch():
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    x[0, 0, 0, 0] = 2.0  # one non-zero window, three all-zero windows
    for p in (1.0, 2.0, 3.0):
        ours = x.clone().requires_grad_()
        theirs = x.clone().requires_grad_()
        y = poolkit.functional.lp_pool2d(ours, 2, norm_type=p)
        y_torch = torch.nn.LPPool2d(p, 2)(theirs)
        torch.testing.assert_close(y, y_torch)
        y.sum().backward()
        y_torch.sum().backward()
        assert torch.isfinite(ours.grad).all(), p
        torch.testing.assert_close(ours.grad, theirs.grad)
        assert ours.grad[0, 0, 0, 0].item() == pytest.approx(1.0)  # d/dx (x^p)^(1/p) = 1 for one cell


def test_threshold_switch_and_k():
    assert pool_value("tmaxavg", threshold=0.2) == pytest.approx(0.25)  # M >= T: the maximum
    assert pool_value("tmaxavg", k=2) == pytest.approx(0.225)  # T_2
    assert pool_value("tmaxavg", k=1) == pytest.approx(0.25)  # T_1 = M
    assert pool_value("tmaxavg", k=3) == pytest.approx((0.25 + 0.2 + 0.1) / 3)
    assert pool_value("soft_tmaxavg", k=2, tau=0.05) == pytest.approx(
        0.225 + sigmoid(-1.0) * (0.25 - 0.225), abs=1e-6
    )


def test_learned_parameters_move_the_formulas():
    pool = poolkit.create_pool("learnable_t", 2)
    with torch.no_grad():
        pool.threshold.fill_(0.2)
    assert pool(X).item() == pytest.approx(0.15 + sigmoid(0.5) * 0.1, abs=1e-6)  # 0.212246

    pool = poolkit.create_pool("channel_adaptive", 2, channels=1)
    with torch.no_grad():
        pool.theta.fill_(math.log(3.0))  # lambda = 0.75
    assert pool(X).item() == pytest.approx(0.225, abs=1e-6)
    assert pool.learned_values() == {"lambda": [pytest.approx(0.75)]}

    pool = poolkit.create_pool("gated", 2, channels=1)
    with torch.no_grad():
        pool.weight.fill_(2.0)
        pool.bias.fill_(-0.1)  # mean_R(2 x - 0.1) = 0.2
    assert pool(X).item() == pytest.approx(0.15 + sigmoid(0.2) * 0.1, abs=1e-6)  # 0.204983

    pool = poolkit.create_pool("strided_conv", 2, channels=1)
    with torch.no_grad():
        pool.weight.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))
        pool.bias.fill_(0.5)
    assert pool(X).item() == pytest.approx(0.1 + 0.25 + 0.5, abs=1e-6)

    pool = poolkit.create_pool("gem", 2, p=1.0)
    assert pool(X).item() == pytest.approx(0.15, abs=1e-6)  # p = 1: the mean
    assert pool.learned_values()["p"] == [pytest.approx(1.0)]


def test_padding_never_wins_a_max_nor_counts_in_an_average():
    """3x3 windows with padding 1 over a 2x2 input: every window holds the same 4 real cells."""
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    kw = {"kernel_size": 3, "stride": 1, "padding": 1}
    assert torch.equal(PF.max_pool2d(-x, **kw), torch.full((1, 1, 2, 2), -1.0))  # padding is not 0
    assert torch.allclose(PF.avg_pool2d(x, **kw), torch.full((1, 1, 2, 2), 2.5))  # not 10 / 9
    assert torch.allclose(PF.t_max_avg_pool2d(x, **kw, k=2, threshold=10.0), torch.full((1, 1, 2, 2), 3.5))
    # K = 6 is clipped to the n = 4 real cells: T_K = A.
    assert torch.allclose(PF.t_max_avg_pool2d(x, **kw, k=6, threshold=10.0), torch.full((1, 1, 2, 2), 2.5))
    assert torch.allclose(PF.mixed_pool2d(x, **kw, theta=0.0), torch.full((1, 1, 2, 2), 3.25))
    assert torch.allclose(PF.gem_pool2d(x, **kw, p=1.0), torch.full((1, 1, 2, 2), 2.5))
    assert torch.allclose(PF.lp_pool2d(x, **kw, norm_type=1.0), torch.full((1, 1, 2, 2), 10.0))
    soft = sum(v * math.exp(v) for v in (1, 2, 3, 4)) / sum(math.exp(v) for v in (1, 2, 3, 4))
    assert torch.allclose(PF.soft_pool2d(x, **kw), torch.full((1, 1, 2, 2), soft))
    assert torch.allclose(PF.stochastic_pool2d(x, **kw), torch.full((1, 1, 2, 2), 30.0 / 10.0))


def test_partial_windows_at_the_border():
    """Kernel 2, stride 2, padding 1 on a 3x3 input: windows of 1, 2, 2 and 4 real cells."""
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    kw = {"kernel_size": 2, "stride": 2, "padding": 1}
    assert PF.max_pool2d(x, **kw).flatten().tolist() == [1.0, 3.0, 7.0, 9.0]
    assert PF.avg_pool2d(x, **kw).flatten().tolist() == [1.0, 2.5, 5.5, 7.0]
    assert PF.t_max_avg_pool2d(x, **kw, k=3, threshold=100.0).flatten().tolist() == pytest.approx(
        [1.0, 2.5, 5.5, (9 + 8 + 6) / 3]
    )
    assert PF.soft_pool2d(x, **kw)[0, 0, 0, 0].item() == pytest.approx(1.0)


def test_blurmax_hand_computed():
    """x[i, j] = 4 i + j: dense 2x2 max D[i, j] = 5 + 4 i + j; [1, 2, 1] / 4 blur, reflect-padded."""
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert PF.max_pool2d(x, 2).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    assert PF.blur_max_pool2d(x, 2).flatten().tolist() == [7.5, 8.5, 11.5, 12.5]
    assert PF.blur_max_pool2d(x, 2, filter_size=1).flatten().tolist() == [5.0, 7.0, 13.0, 15.0]


def test_stochastic_pool_samples_with_relu_probabilities():
    x = X.expand(20000, 1, 2, 2)
    torch.manual_seed(0)
    y = PF.stochastic_pool2d(x, 2, training=True).flatten()
    for value, p in zip(VALUES, [0.1 / 0.6, 0.2 / 0.6, 0.05 / 0.6, 0.25 / 0.6], strict=True):
        assert (y == value).float().mean().item() == pytest.approx(p, abs=0.015)
    assert set(y.tolist()) <= set(torch.tensor(VALUES).tolist())


def test_stochastic_pool_is_uniform_when_nothing_is_positive():
    x = torch.tensor([[[[-1.0, -2.0], [-3.0, -4.0]]]])
    assert PF.stochastic_pool2d(x, 2).item() == pytest.approx(-2.5)
    torch.manual_seed(0)
    y = PF.stochastic_pool2d(x.expand(8000, 1, 2, 2), 2, training=True).flatten()
    for value in (-1.0, -2.0, -3.0, -4.0):
        assert (y == value).float().mean().item() == pytest.approx(0.25, abs=0.02)


def test_stochastic_mix_draws_beta_distributed_weights():
    """Training lambda ~ Beta(kappa m, kappa (1 - m)): uniform at init (kappa = 2, m = 0.5)."""
    x = X.expand(20000, 1, 2, 2)
    torch.manual_seed(0)
    y = PF.stochastic_mix_pool2d(x, 2, theta=0.0, kappa=2.0, training=True).flatten()
    lam = (y - 0.15) / 0.1
    assert lam.min() >= -1e-6 and lam.max() <= 1 + 1e-6
    assert lam.mean().item() == pytest.approx(0.5, abs=0.01)
    assert lam.var().item() == pytest.approx(1 / 12, abs=0.005)  # Uniform(0, 1)
    torch.manual_seed(0)
    sharp = PF.stochastic_mix_pool2d(x, 2, theta=math.log(3.0), kappa=1e5, training=True)
    assert sharp.mean().item() == pytest.approx(0.225, abs=1e-3)  # lambda concentrates at m = 0.75


def test_stochastic_mix_draws_one_lambda_per_sample_and_channel():
    x = torch.rand(3, 5, 4, 4)
    torch.manual_seed(0)
    y = PF.stochastic_mix_pool2d(x, 2, theta=0.0, training=True)
    lam = (y - PF.avg_pool2d(x, 2)) / (PF.max_pool2d(x, 2) - PF.avg_pool2d(x, 2))
    per_cell = lam.flatten(2)
    assert torch.allclose(per_cell, per_cell[..., :1].expand_as(per_cell), atol=1e-4)  # shared in a map
    assert per_cell[..., 0].unique().numel() == 15  # distinct across (sample, channel)


def test_channel_adaptive_is_the_per_channel_theta_blend_with_its_own_state_dict():
    from poolkit.layers import ChannelAdaptivePool, MixedPool

    pool = ChannelAdaptivePool(2, channels=3)
    assert {k: tuple(v.shape) for k, v in pool.state_dict().items()} == {"theta": (3,)}
    assert torch.equal(pool.theta, torch.zeros(3))
    mixed = MixedPool(2, channels=3, per_channel=True)
    with torch.no_grad():
        pool.theta.copy_(torch.tensor([-1.0, 0.0, 2.0]))
    mixed.load_state_dict(pool.state_dict())  # the two classes' state dicts are interchangeable
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    y, y_mixed = pool(x), mixed(x)
    lam = torch.sigmoid(pool.theta).view(1, 3, 1, 1)
    m, a = F.max_pool2d(x, 2), F.avg_pool2d(x, 2)
    torch.testing.assert_close(y, lam * m + (1 - lam) * a)  # y_c = lambda_c M_c + (1 - lambda_c) A_c
    torch.testing.assert_close(y, y_mixed)
    (grad,) = torch.autograd.grad(y.square().sum(), pool.theta)
    (grad_mixed,) = torch.autograd.grad(y_mixed.square().sum(), mixed.theta)
    torch.testing.assert_close(grad, grad_mixed)
    assert repr(pool) == "ChannelAdaptivePool(kernel_size=(2, 2), stride=(2, 2), channels=3)"
    with pytest.raises(ValueError, match="channels"):
        ChannelAdaptivePool(2)
