"""The one suite every registered pool must pass (a new method gets all of it by registering)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import poolkit
from poolkit.layers.windows import PoolGeometry, min_window_count
from pools import (
    ADAPTIVE_POOLS,
    ALL_POOLS,
    BLENDS,
    CHANNELS,
    DETERMINISTIC,
    FORM_CASES,
    FORM_IDS,
    FORMS,
    STOCHASTIC,
    WEIGHTED_AVERAGES,
    build,
    build_form,
    geometry_kwargs,
    perturb,
    reseed,
)

GRID = [
    (k, s, p, d, c)
    for k in range(1, 5)
    for s in range(1, 4)
    for p in range(0, k // 2 + 1)
    for d in (1, 2)
    for c in (False, True)
]


def _reference_shape(x: torch.Tensor, k: int, s: int, p: int, d: int, c: bool) -> torch.Size | None:
    try:
        return nn.MaxPool2d(k, s, p, d, ceil_mode=c)(x).shape
    except RuntimeError:
        return None


def _has_empty_window(x: torch.Tensor, k: int, s: int, p: int, d: int, c: bool) -> bool:
    return min_window_count(PoolGeometry.create(k, s, p, d, c), x.shape[-2], x.shape[-1]) == 0


@pytest.mark.parametrize("name", ALL_POOLS)
def test_shape_parity_with_maxpool_over_the_grid(name):
    """Every (kernel 1-4, stride 1-3, padding 0-k//2, dilation 1-2, ceil_mode) combination, two sizes."""
    torch.manual_seed(0)
    for height, width in ((7, 10), (3, 4)):
        x = torch.randn(2, CHANNELS, height, width)
        for k, s, p, d, c in GRID:
            expected = _reference_shape(x, k, s, p, d, c)
            pool = build(name, k, s, p, d, c).eval()
            if expected is None:
                with pytest.raises(ValueError, match="larger than the padded input"):
                    pool(x)
                continue
            y = pool(x)
            assert y.shape == expected, (name, k, s, p, d, c, (height, width))
            if not _has_empty_window(x, k, s, p, d, c):
                assert torch.isfinite(y).all(), (name, k, s, p, d, c, (height, width))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(ALL_POOLS),
    height=st.integers(1, 12),
    width=st.integers(1, 12),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    sh=st.integers(1, 4),
    sw=st.integers(1, 4),
    dilation=st.integers(1, 3),
    ceil_mode=st.booleans(),
    batched=st.booleans(),
    data=st.data(),
)
def test_shape_parity_hypothesis(name, height, width, kh, kw, sh, sw, dilation, ceil_mode, batched, data):
    ph = data.draw(st.integers(0, kh // 2))
    pw = data.draw(st.integers(0, kw // 2))
    x = torch.randn(2, CHANNELS, height, width) if batched else torch.randn(CHANNELS, height, width)
    args = ((kh, kw), (sh, sw), (ph, pw), dilation, ceil_mode)
    try:
        expected = nn.MaxPool2d(*args[:4], ceil_mode=ceil_mode)(x).shape
    except RuntimeError:
        expected = None
    pool = build(name, *args).eval()
    if expected is None:
        with pytest.raises(ValueError):
            pool(x)
    else:
        assert pool(x).shape == expected


def _gradcheck_module(
    name: str, module: nn.Module, x: torch.Tensor, *, include_params: bool = True, fast_mode: bool = False
) -> None:
    module = module.double()
    names = [n for n, _ in module.named_parameters()] if include_params else []
    params = [p.detach().clone().requires_grad_() for n, p in module.named_parameters() if n in names]

    def f(inp, *ps):
        reseed(1234)  # stochastic methods draw the same numbers on every call
        return torch.func.functional_call(module, dict(zip(names, ps, strict=True)), (inp,))

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-5, rtol=1e-3, fast_mode=fast_mode), (
        name
    )


@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("geometry", [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (2, 2, 1, 2, False)])
def test_gradcheck_float64(name, geometry):
    """Input and learnable parameters, in training mode, away from the methods' kinks."""
    gen = torch.Generator().manual_seed(3)
    # Distinct values in [0.35, 1.35]: no ties for max/top-k, far from T-Max-Avg's switch at T = 0.3.
    x = (torch.randperm(2 * 3 * 5 * 5, generator=gen).double() / (2 * 3 * 5 * 5) + 0.35).view(2, 3, 5, 5)
    x.requires_grad_()
    module = perturb(build(name, *geometry, channels=3).double()).train()
    # Stochastic Mix's Beta sampler is not a continuous function of theta for fixed random numbers
    # (rejection sampling), so finite differences cannot check d/dtheta there; see the Monte Carlo test.
    include_params = name != "stochastic_mix"
    _gradcheck_module(name, module, x, include_params=include_params)
    if name in STOCHASTIC:
        _gradcheck_module(name, module.eval(), x)


def test_stochastic_mix_theta_gradient_is_unbiased():
    """E[d y / d theta] under Beta rsample equals d E[y] / d theta = sigmoid'(theta) (M - A)."""
    pool = build("stochastic_mix", 2, channels=1).double()
    with torch.no_grad():
        pool.theta.fill_(0.4)
    x = torch.tensor([[[[0.1, 0.2], [0.05, 0.25]]]], dtype=torch.float64).expand(20000, 1, 2, 2)
    torch.manual_seed(0)
    pool.train()(x).mean().backward()
    m = torch.sigmoid(torch.tensor(0.4, dtype=torch.float64))
    expected = m * (1 - m) * (0.25 - 0.15)
    assert pool.theta.grad.item() == pytest.approx(expected.item(), rel=0.03)


@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("train", [False, True])
def test_module_equals_functional(name, train):
    module = perturb(build(name, 3, 2, 1, ceil_mode=True)).train(train)
    x = torch.randn(2, CHANNELS, 9, 8)
    spec = poolkit.get_pool_spec(name)
    torch.manual_seed(7)
    expected = module(x)
    torch.manual_seed(7)
    got = spec.functional(x, **geometry_kwargs(module), **module.functional_kwargs())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_train_and_eval_semantics(name):
    module = perturb(build(name, 2))
    x = torch.rand(4, CHANNELS, 8, 8) + 0.1
    module.eval()
    y_eval = module(x)
    torch.testing.assert_close(module(x), y_eval, rtol=0, atol=0)  # eval is deterministic
    module.train()
    torch.manual_seed(11)
    y_a = module(x)
    torch.manual_seed(11)
    y_b = module(x)
    torch.testing.assert_close(y_a, y_b, rtol=0, atol=0)  # reproducible under torch.manual_seed
    if name in STOCHASTIC:
        torch.manual_seed(12)
        assert not torch.equal(module(x), y_a), "training draws must depend on the global generator"
        assert not torch.equal(y_a, y_eval)
    else:
        torch.testing.assert_close(y_a, y_eval)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_state_dict_round_trip(name):
    source = perturb(build(name, 3, 2, 1, seed=0), seed=5).eval()
    target = build(name, 3, 2, 1, seed=1).eval()
    state = source.state_dict()
    assert "blur" not in state  # constant filters are non-persistent buffers
    target.load_state_dict(copy.deepcopy(state))
    x = torch.randn(2, CHANNELS, 9, 9)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    assert set(state) == {n for n, _ in source.named_parameters()} | {
        n for n, _ in source.named_buffers() if n.split(".")[-1] != "blur"
    }


@pytest.mark.parametrize("name", ALL_POOLS)
def test_channels_last_and_non_contiguous_input(name):
    module = perturb(build(name, 3, 2, 1)).eval()
    x = torch.randn(2, CHANNELS, 10, 9)
    expected = module(x)
    y = module(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-6)
    assert y.is_contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, CHANNELS, 10, 18)
    strided = wide[..., ::2]
    assert not strided.is_contiguous()
    torch.testing.assert_close(module(strided), module(strided.contiguous()), rtol=1e-5, atol=1e-6)
    transposed = torch.randn(2, CHANNELS, 9, 10).transpose(-1, -2)
    torch.testing.assert_close(module(transposed), module(transposed.contiguous()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_unbatched_input(name):
    module = perturb(build(name, 2)).eval()
    x = torch.randn(CHANNELS, 8, 6)
    y = module(x)
    assert y.shape == (CHANNELS, 4, 3)
    torch.testing.assert_close(y, module(x.unsqueeze(0))[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_float_dtypes(name, dtype):
    module = perturb(build(name, 2)).eval()
    x = torch.rand(2, CHANNELS, 8, 8) + 0.05
    reference = module(x)
    low = module.to(dtype)(x.to(dtype))
    assert low.dtype == dtype
    tol = {torch.float64: 1e-6, torch.float32: 1e-6, torch.bfloat16: 3e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(low.float(), reference, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_cpu_autocast_bfloat16(name):
    module = perturb(build(name, 2)).train()
    x = torch.rand(2, CHANNELS, 8, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x)
    assert torch.isfinite(y).all()
    y.float().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    module.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(x.detach())
    torch.testing.assert_close(y.float(), module(x.detach()), rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_cpu_autocast_in_a_model_is_finite_forward_and_backward(name, dtype):
    """The paper preset trains under float16 AMP on CUDA; CPU float16 autocast shows the same overflows.

    A narrow VGG11 at its initialisation, one forward and one backward under autocast: the output and
    every parameter's gradient are finite (LIP's instance norm gave NaN gradients in 45 tensors here).
    """
    from poolkit.models import create_model

    reseed(0)
    model = create_model("vgg11", 10, pool=name, width=0.25).train()
    gen = torch.Generator().manual_seed(1)
    x, target = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 10, (8,), generator=gen)
    with torch.autocast("cpu", dtype=dtype):
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out, target)
    assert torch.isfinite(out).all()
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not bad, bad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast(name, dtype):
    module = perturb(build(name, 2)).cuda().train()
    x = torch.rand(2, CHANNELS, 8, 8, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=dtype):
        y = module(x)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    module.eval()
    with torch.autocast("cuda", dtype=dtype):
        y = module(x.detach())
    torch.testing.assert_close(y.float(), module(x.detach()), rtol=5e-2, atol=5e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("geometry", [(2,), (3, 2, 1)], ids=["2x2", "3x3s2p1"])
def test_cuda_autocast_float16_input(name, geometry):
    """Under autocast the pool gets the float16 output of a convolution (CUDA autocast computes sum() in
    float32, so a reference path mixing it with a float16 maximum must not fail)."""
    module = perturb(build(name, *geometry)).cuda().train()
    x = torch.rand(2, CHANNELS, 9, 8, device="cuda", dtype=torch.float16, requires_grad=True)
    with torch.autocast("cuda", dtype=torch.float16):
        y = module(x)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_cuda_channels_last_gradients_equal_nchw(name):
    """The layout never changes a gradient on CUDA (CUDA avg_pool2d's channels_last backward with padding
    is wrong in some torch releases, pytorch/pytorch#188344; poolkit averages such inputs in NCHW)."""
    for geometry in [(2,), (3, 2, 1)]:
        module = perturb(build(name, *geometry)).cuda().double().train()
        x = torch.randn(2, CHANNELS, 9, 8, device="cuda", dtype=torch.float64)
        probe = torch.randn(module(x).shape, device="cuda", dtype=torch.float64)
        grads = []
        for channels_last in (False, True):
            leaf = x.contiguous(memory_format=torch.channels_last) if channels_last else x.clone()
            leaf.requires_grad_()
            module(leaf).backward(probe)
            grads.append(leaf.grad)
        torch.testing.assert_close(grads[1], grads[0], msg=lambda m, g=geometry: f"{name} {g}: {m}")


@pytest.mark.parametrize("name", ALL_POOLS)
def test_torch_compile_matches_eager(name):
    """Full-graph tracing in eval mode (aot_eager: dynamo + AOT autograd, without code generation)."""
    torch._dynamo.reset()
    module = perturb(build(name, 3, 2, 1)).eval()
    x = torch.randn(2, CHANNELS, 9, 9)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), module(x), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tmaxavg", "attention", "stochastic_mix", "softpool", "blurmax"])
def test_torch_compile_inductor_matches_eager(name):
    torch._dynamo.reset()
    module = perturb(build(name, 3, 2, 1)).eval()
    x = torch.randn(2, CHANNELS, 9, 9)
    torch.testing.assert_close(torch.compile(module)(x), module(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_torch_export_in_eval_mode(name):
    module = perturb(build(name, 3, 2, 1)).eval()
    x = torch.randn(2, CHANNELS, 9, 9)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), module(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_learnable_parameters_receive_gradients(name):
    module = perturb(build(name, 2)).train()
    if not list(module.parameters()):
        assert poolkit.get_pool_spec(name).cls(2, channels=CHANNELS).state_dict() == {}
        return
    torch.manual_seed(0)
    module(torch.randn(4, CHANNELS, 8, 8)).square().sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (name, pname)


@pytest.mark.parametrize("name", BLENDS)
@pytest.mark.parametrize("train", [False, True])
def test_blends_lie_between_average_and_max(name, train):
    module = perturb(build(name, 3, 2, 1, ceil_mode=True), seed=2).train(train)
    x = torch.randn(3, CHANNELS, 9, 10)
    torch.manual_seed(0)
    y = module(x)
    kw = geometry_kwargs(module)
    avg = poolkit.functional.avg_pool2d(x, **kw)
    mx = poolkit.functional.max_pool2d(x, **kw)
    assert (y >= avg - 1e-6).all() and (y <= mx + 1e-6).all()


@pytest.mark.parametrize("name", WEIGHTED_AVERAGES)
@pytest.mark.parametrize("train", [False, True])
def test_weighted_averages_lie_between_min_and_max(name, train):
    module = perturb(build(name, 3, 2, 1, ceil_mode=True), seed=2).train(train)
    x = torch.randn(3, CHANNELS, 9, 10)
    if name == "gem":
        x = x.abs() + 1e-3  # GeM is defined on positive activations (it clamps at eps)
    torch.manual_seed(0)
    y = module(x)
    kw = geometry_kwargs(module)
    mx = poolkit.functional.max_pool2d(x, **kw)
    mn = -poolkit.functional.max_pool2d(-x, **kw)
    slack = 1e-5 * (1 + x.abs().max())  # attention's eps shrinks the weighted mean by a relative 1e-6
    assert (y >= mn - slack).all() and (y <= mx + slack).all()


@pytest.mark.parametrize("name", ALL_POOLS)
def test_errors_name_the_problem(name):
    pool = build(name, 2)
    with pytest.raises(ValueError, match="4-D"):
        pool(torch.randn(8, 8))
    with pytest.raises(ValueError, match="4-D"):
        pool(torch.randn(1, 2, CHANNELS, 8, 8))
    with pytest.raises(ValueError, match="floating-point"):
        pool(torch.ones(1, CHANNELS, 8, 8, dtype=torch.int64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        pool(torch.randn(1, CHANNELS, 1, 8))
    with pytest.raises(ValueError, match="channels"):
        pool(torch.randn(1, CHANNELS + 1, 8, 8))
    with pytest.raises(ValueError, match="over half the kernel"):
        build(name, 2, padding=2)
    with pytest.raises(ValueError, match="positive"):
        build(name, 0)
    fn = poolkit.get_pool_spec(name).functional
    kwargs = pool.functional_kwargs()
    with pytest.raises(ValueError, match="4-D"):
        fn(torch.randn(8, 8), kernel_size=2, **kwargs)


@pytest.mark.parametrize("name", ["tmaxavg", "soft_tmaxavg", "learnable_t"])
def test_k_larger_than_the_window_is_an_error(name):
    with pytest.raises(ValueError, match="larger than the window"):
        build(name, 2, k=5)
    with pytest.raises(ValueError, match="positive int"):
        build(name, 2, k=0)


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("soft_tmaxavg", "tau"),
        ("learnable_t", "tau"),
        ("stochastic_mix", "kappa"),
        ("gem", "p"),
        ("lp", "norm_type"),
    ],
)
@pytest.mark.parametrize("value", [0.0, -1.0, float("nan"), float("inf")])
def test_non_positive_temperature_kappa_p_is_an_error(name, option, value):
    with pytest.raises(ValueError, match=f"{option} must be a positive number"):
        build(name, 2, **{option: value})


def test_channels_required_by_per_channel_methods():
    for name in ALL_POOLS:
        spec = poolkit.get_pool_spec(name)
        if spec.needs_channels:
            with pytest.raises(ValueError, match="channels="):
                poolkit.create_pool(name, 2)
        else:
            assert poolkit.create_pool(name, 2)(torch.rand(1, 3, 4, 4)).shape == (1, 3, 2, 2)


@pytest.mark.parametrize("name", ALL_POOLS)
def test_global_form(name):
    spec = poolkit.get_pool_spec(name)
    if not spec.supports_global:
        with pytest.raises(ValueError, match="no global or adaptive form"):
            poolkit.create_global_pool(name, channels=CHANNELS)
        return
    x = torch.rand(2, CHANNELS, 5, 7) + 0.1
    pool = poolkit.create_global_pool(name, channels=CHANNELS).eval()
    y = pool(x)
    assert y.shape == (2, CHANNELS, 1, 1)
    local = perturb(build(name, (5, 7), seed=0), seed=0).eval()
    pool = perturb(poolkit.create_global_pool(name, channels=CHANNELS), seed=0).eval()
    if name not in ("attention", "lip"):  # conv init differs between the two builds
        torch.testing.assert_close(pool(x), local(x))
    flat = poolkit.create_global_pool(name, channels=CHANNELS, flatten=True).eval()
    assert flat(x).shape == (2, CHANNELS)
    assert flat(x[0]).shape == (CHANNELS,)


def test_global_pool_names_required_by_the_harness():
    for name in ("avg", "max", "gem", "channel_adaptive", "stochastic_mix", "attention"):
        assert poolkit.create_global_pool(name, channels=8, flatten=True)(torch.rand(3, 8, 4, 4)).shape == (
            3,
            8,
        )


def test_registry_lists_every_method_sorted_with_the_issue_names():
    expected = {
        "max", "avg", "lp", "strided_conv", "tmaxavg", "soft_tmaxavg", "learnable_t", "channel_adaptive",
        "gated", "attention", "stochastic_mix", "mixed", "stochastic", "softpool", "lip", "gem", "blurmax",
    }  # fmt: skip
    assert set(poolkit.list_pools()) == expected
    assert poolkit.list_pools() == sorted(poolkit.list_pools())
    assert poolkit.list_pools("study") == sorted(
        ["tmaxavg", "soft_tmaxavg", "learnable_t", "channel_adaptive", "gated", "attention", "stochastic_mix"]
    )


def test_every_method_registers_one_label_and_a_formula_its_docstring_states():
    titles = [poolkit.get_pool_spec(n).title for n in ALL_POOLS]
    assert len(set(titles)) == len(titles)  # one display label per method, no two alike
    for name in ALL_POOLS:
        spec = poolkit.get_pool_spec(name)
        assert spec.title.strip() and spec.formula.strip(), name
        # The registered formula is the functional twin's docstring's, so the two cannot drift apart.
        first = (spec.functional.__doc__ or "").split("\n\n")[0].replace("\n", " ").replace("``", "")
        assert spec.formula in " ".join(first.split()), name
    assert poolkit.get_pool_spec("channel_adaptive").title == "Channel-Adaptive"
    assert poolkit.get_pool_spec("tmaxavg").formula == "y = M if M >= T else T_K"


@pytest.mark.parametrize("field", ["title", "formula"])
def test_register_pool_needs_a_label_and_a_formula(field):
    from poolkit.registry import register_pool

    kwargs = {"functional": poolkit.functional.max_pool2d, "family": "classic", "title": "X", "formula": "y"}
    kwargs[field] = " "
    with pytest.raises(ValueError, match=f"{field} must be a non-empty string"):
        register_pool("not_registered", **kwargs)
    assert "not_registered" not in poolkit.list_pools()


def test_create_pool_by_name_class_and_partial():
    import functools

    from poolkit.layers import TMaxAvgPool

    x = torch.rand(1, 2, 6, 6)
    by_name = poolkit.create_pool("tmaxavg", 2, k=2, threshold=0.5)
    by_class = poolkit.create_pool(TMaxAvgPool, 2, k=2, threshold=0.5)
    by_partial = poolkit.create_pool(functools.partial(TMaxAvgPool, k=2), 2, threshold=0.5)
    torch.testing.assert_close(by_name(x), by_class(x))
    torch.testing.assert_close(by_name(x), by_partial(x))
    assert isinstance(poolkit.create_pool(nn.MaxPool2d, 3, 2, 1), nn.MaxPool2d)


def test_unknown_name_and_option_errors_list_the_valid_ones():
    with pytest.raises(ValueError, match="valid names are: attention, avg, blurmax"):
        poolkit.create_pool("maxx", 2)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['kk'\].*k, threshold"):
        poolkit.create_pool("tmaxavg", 2, kk=3)
    with pytest.raises(ValueError, match="its options are: none"):
        poolkit.create_pool("max", 2, k=3)
    with pytest.raises(ValueError, match="registered name"):
        poolkit.create_pool(42, 2)


def test_pool_options_reports_defaults():
    assert poolkit.pool_options("tmaxavg") == {"k": 4, "threshold": 0.3}
    assert poolkit.pool_options("soft_tmaxavg") == {"k": 4, "threshold": 0.3, "tau": 0.1}
    assert poolkit.pool_options("learnable_t") == {"k": 4, "threshold": 0.3, "tau": 0.1, "per_channel": False}
    assert poolkit.pool_options("stochastic_mix") == {"kappa": 2.0, "per_channel": False}
    assert poolkit.pool_options("attention") == {"reduction": 4, "eps": 1e-6}
    assert poolkit.pool_options("gem") == {"p": 3.0, "eps": 1e-6}
    assert poolkit.pool_options("lp") == {"norm_type": 2.0}
    assert poolkit.pool_options("strided_conv") == {"depthwise": True}


def test_pools_expose_maxpool_attributes():
    for name, (k, s, p, d, c) in itertools.product(ALL_POOLS, [(3, 2, 1, 1, True)]):
        pool = build(name, k, s, p, d, c)
        assert pool.kernel_size == (3, 3) and pool.stride == (2, 2) and pool.padding == (1, 1)
        assert pool.dilation == (1, 1) and pool.ceil_mode is True
        assert "kernel_size=(3, 3)" in repr(pool)


# ------------------------------------------------------------------ every other form: 1-D, 3-D, adaptive
# The tests above run the 2-D windowed form; these run the same checks on every other form of every method
# (tests/pools.py: FORM_CASES), on sampled grids so that the 3-D forms stay cheap.

_NATIVE_MAX = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_NATIVE_ADAPTIVE_MAX = {1: nn.AdaptiveMaxPool1d, 2: nn.AdaptiveMaxPool2d, 3: nn.AdaptiveMaxPool3d}
_SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 4, 6)}


def _form_input(
    spatial_dims: int, *, batch: int = 2, channels: int = CHANNELS, seed: int = 0
) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, channels, *_SPATIAL[spatial_dims], generator=gen)


def _form_geometry(spatial_dims: int) -> dict:
    """A geometry with padding and ceil_mode (cut windows) for the windowed forms."""
    return {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}


def _build_case(name, form, **kwargs):
    _, dims, adaptive = form
    if adaptive:
        return build_form(name, dims, True, output_size=kwargs.pop("output_size", (3,) * dims), **kwargs)
    return build_form(name, dims, False, **{**_form_geometry(dims), **kwargs})


def _sampled_grid(spatial_dims: int, count: int, seed: int):
    """``count`` (kernel, stride, padding, dilation, ceil_mode) tuples with per-axis entries, sampled."""
    rng = __import__("random").Random(seed)
    cases = []
    for _ in range(count):
        k = tuple(rng.randint(1, 4) for _ in range(spatial_dims))
        cases.append((
            k,
            tuple(rng.randint(1, 3) for _ in range(spatial_dims)),
            tuple(rng.randint(0, kk // 2) for kk in k),
            rng.choice((1, 2)),
            rng.random() < 0.5,
        ))  # fmt: skip
    return cases


@pytest.mark.parametrize("name", ALL_POOLS)
@pytest.mark.parametrize("spatial_dims", [1, 3])
def test_form_shape_parity_with_maxpool_over_a_grid(name, spatial_dims):
    """40 (1-D) or 24 (3-D) geometries sampled per method, with per-axis tuples, against nn.MaxPool{n}d."""
    grid = _sampled_grid(spatial_dims, 40 if spatial_dims == 1 else 24, seed=len(name))
    sizes = [(10,), (3,)] if spatial_dims == 1 else [(5, 4, 6), (3, 2, 4)]
    for size in sizes:
        x = torch.randn(2, CHANNELS, *size)
        for k, s, p, d, c in grid:
            native = _NATIVE_MAX[spatial_dims](k, s, p, d, ceil_mode=c)
            try:
                expected = native(x).shape
            except RuntimeError:
                expected = None
            pool = build_form(name, spatial_dims, False, k, s, p, d, c).eval()
            if expected is None:
                with pytest.raises(ValueError, match="larger than the padded input"):
                    pool(x)
                continue
            y = pool(x)
            assert y.shape == expected, (name, k, s, p, d, c, size)
            g = PoolGeometry.create(k, s, p, d, c, spatial_dims)
            if min_window_count(g, *size) > 0:
                assert torch.isfinite(y).all(), (name, k, s, p, d, c, size)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(ALL_POOLS),
    spatial_dims=st.sampled_from([1, 3]),
    ceil_mode=st.booleans(),
    batched=st.booleans(),
    data=st.data(),
)
def test_form_shape_parity_hypothesis(name, spatial_dims, ceil_mode, batched, data):
    n = spatial_dims
    size = tuple(data.draw(st.integers(1, 9 if n == 1 else 5)) for _ in range(n))
    kernel = tuple(data.draw(st.integers(1, 4)) for _ in range(n))
    stride = tuple(data.draw(st.integers(1, 3)) for _ in range(n))
    padding = tuple(data.draw(st.integers(0, k // 2)) for k in kernel)
    dilation = data.draw(st.integers(1, 2))
    x = torch.randn(2, CHANNELS, *size) if batched else torch.randn(CHANNELS, *size)
    try:
        expected = _NATIVE_MAX[n](kernel, stride, padding, dilation, ceil_mode=ceil_mode)(x).shape
    except RuntimeError:
        expected = None
    pool = build_form(name, n, False, kernel, stride, padding, dilation, ceil_mode).eval()
    if expected is None:
        with pytest.raises(ValueError):
            pool(x)
    else:
        assert pool(x).shape == expected


@pytest.mark.parametrize("name", ADAPTIVE_POOLS)
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_adaptive_shape_parity_with_torch(name, spatial_dims):
    """Output sizes below, equal to and above the input's, and None (keep that axis), as torch's pools."""
    sizes = {1: [(7,), (1,)], 2: [(7, 5), (2, 9)], 3: [(5, 4, 3)]}[spatial_dims]
    outputs = {
        1: [1, 3, 7, 9, (None,)],
        2: [1, (3, 2), (7, 5), (4, None), (None, 8)],
        3: [1, (2, 3, 2), (None, 3, 4), (5, 4, 3)],
    }[spatial_dims]
    for size in sizes:
        x = torch.rand(2, CHANNELS, *size) + 0.1
        for out in outputs:
            torch_out = size[0] if out == (None,) else out  # AdaptiveMaxPool1d takes no None
            expected = _NATIVE_ADAPTIVE_MAX[spatial_dims](torch_out)(x).shape
            pool = build_form(name, spatial_dims, True, output_size=out).eval()
            y = pool(x)
            assert y.shape == expected, (name, out, size)
            assert torch.isfinite(y).all(), (name, out, size)
            assert pool(x[0]).shape == expected[1:]  # unbatched


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_adaptive_max_and_avg_equal_torch(spatial_dims):
    x = torch.randn(2, 3, *{1: (13,), 2: (11, 7), 3: (7, 5, 6)}[spatial_dims], dtype=torch.float64)
    fn_max = getattr(nn.functional, f"adaptive_max_pool{spatial_dims}d")
    fn_avg = getattr(nn.functional, f"adaptive_avg_pool{spatial_dims}d")
    for out in [1, 2, 3, 4, 5, 9, 14]:
        size = (out,) * spatial_dims
        torch.testing.assert_close(
            poolkit.create_adaptive_pool("max", size, spatial_dims=spatial_dims)(x), fn_max(x, size)
        )
        torch.testing.assert_close(
            poolkit.create_adaptive_pool("avg", size, spatial_dims=spatial_dims)(x), fn_avg(x, size)
        )


@pytest.mark.parametrize("name", [n for n in ADAPTIVE_POOLS if not poolkit.get_pool_spec(n).needs_channels])
def test_adaptive_windows_are_torchs(name):
    """Each output cell equals the global form of the method on its window [floor(iL/o), ceil((i+1)L/o))."""
    x = torch.rand(1, 2, 7, 5, dtype=torch.float64) + 0.1
    out = (3, 4)
    pool = build_form(name, 2, True, output_size=out, channels=2).double().eval()
    whole = build_form(name, 2, True, output_size=1, channels=2).double().eval()
    with torch.no_grad():
        for p, q in zip(pool.parameters(), whole.parameters(), strict=True):
            q.copy_(p)
    y = pool(x)
    for i in range(out[0]):
        for j in range(out[1]):
            rows = slice(i * 7 // out[0], -(-(i + 1) * 7 // out[0]))
            cols = slice(j * 5 // out[1], -(-(j + 1) * 5 // out[1]))
            torch.testing.assert_close(y[..., i, j], whole(x[..., rows, cols])[..., 0, 0])


@pytest.mark.parametrize("name", [n for n in ALL_POOLS if not poolkit.get_pool_spec(n).needs_channels])
def test_1d_pool_equals_the_2d_pool_with_kernel_1_by_k(name):
    """A 1-D pool on (N, C, L) is the 2-D pool with kernel (1, k) on (N, C, 1, L); 3-D (1, kh, kw) too."""
    x = torch.randn(2, CHANNELS, 11)
    for k, s, p, d, c in [(3, 2, 1, 1, True), (2, 2, 0, 1, False), (4, 1, 2, 2, False)]:
        opts = {"k": 2} if name in ("tmaxavg", "soft_tmaxavg", "learnable_t") else {}
        one = build_form(name, 1, False, k, s, p, d, c, **opts).eval()
        two = build_form(name, 2, False, (1, k), (1, s), (0, p), (1, d), c, **opts).eval()
        torch.testing.assert_close(one(x), two(x.unsqueeze(-2)).squeeze(-2), rtol=1e-6, atol=1e-7)
        if name in STOCHASTIC:  # training draws too, from the same generator state
            torch.manual_seed(3)
            y1 = one.train()(x)
            torch.manual_seed(3)
            torch.testing.assert_close(y1, two.train()(x.unsqueeze(-2)).squeeze(-2), rtol=1e-6, atol=1e-7)
    x3 = torch.randn(2, CHANNELS, 1, 6, 7)
    three = build_form(name, 3, False, (1, 3, 2), (1, 2, 2), (0, 1, 0), ceil_mode=True).eval()
    two = build_form(name, 2, False, (3, 2), (2, 2), (1, 0), ceil_mode=True).eval()
    if name != "blurmax":  # the 3-D blur also blurs along D (replicated here), so only the others are equal
        torch.testing.assert_close(three(x3), two(x3[:, :, 0]).unsqueeze(2), rtol=1e-6, atol=1e-7)


def test_forms_with_convolutional_parts_use_the_matching_conv():
    for dims, conv in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        assert isinstance(build_form("attention", dims, False).hidden, conv)
        assert isinstance(build_form("lip", dims, False).logit_conv, conv)
        assert build_form("gated", dims, False).weight.dim() == dims + 2
        assert build_form("strided_conv", dims, False, 3).weight.shape == (CHANNELS, 1, *(3,) * dims)
        assert build_form("blurmax", dims, False).blur.shape == (3,) * dims


@pytest.mark.parametrize(("name", "form"), FORM_CASES, ids=FORM_IDS)
def test_form_gradcheck_float64(name, form):
    """Input and learnable parameters, in training mode, on distinct values (no ties, away from kinks).

    gradcheck's fast mode (analytical against numerical Jacobian along random directions) keeps the 82 cases
    cheap; the 2-D tests above check full Jacobians.
    """
    _, dims, adaptive = form
    size = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}[dims]
    numel = 2 * math.prod(size)
    gen = torch.Generator().manual_seed(3)
    x = (torch.randperm(numel, generator=gen).double() / numel + 0.35).view(1, 2, *size).requires_grad_()
    if adaptive:
        module = build_form(name, dims, True, output_size=(2,) * dims, channels=2)
    else:
        module = build_form(name, dims, False, 3, 2, 1, channels=2)
    module = perturb(module.double()).train()
    _gradcheck_module(name, module, x, include_params=name != "stochastic_mix", fast_mode=True)
    if name in STOCHASTIC:
        _gradcheck_module(name, module.eval(), x, fast_mode=True)


@pytest.mark.parametrize(("name", "form"), FORM_CASES, ids=FORM_IDS)
def test_form_float_dtypes_and_bfloat16_autocast(name, form):
    """Half precision on CPU in every form (CPU avg_pool3d has no half kernel: poolkit averages in float32)"""
    _, dims, _ = form
    module = perturb(_build_case(name, form)).eval()
    x = torch.rand(2, CHANNELS, *_SPATIAL[dims]) + 0.05
    reference = module(x)
    for dtype, tol in ((torch.bfloat16, 3e-2), (torch.float16, 1e-2)):
        low = copy.deepcopy(module).to(dtype)(x.to(dtype))
        assert low.dtype == dtype
        torch.testing.assert_close(low.float(), reference, rtol=tol, atol=tol)
    module.train()
    xg = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = module(xg)
    y.float().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(xg.grad).all()


def _functional_args(module, form) -> dict:
    _, _, adaptive = form
    if adaptive:
        return {"output_size": module.output_size}
    return geometry_kwargs(module)


@pytest.mark.parametrize(("name", "form"), FORM_CASES, ids=FORM_IDS)
def test_form_module_equals_functional_and_unbatched(name, form):
    _, dims, adaptive = form
    module = perturb(_build_case(name, form)).train()
    x = _form_input(dims)
    twin = poolkit.functional.functional_for(name, dims, adaptive)
    assert twin.__name__.endswith(f"pool{dims}d") and twin.__name__.startswith("adaptive_") == adaptive
    torch.manual_seed(7)
    expected = module(x)
    torch.manual_seed(7)
    got = twin(x, **_functional_args(module, form), **module.functional_kwargs())
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    module.eval()
    torch.testing.assert_close(module(x[1]), module(x)[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("name", "form"), FORM_CASES, ids=FORM_IDS)
def test_form_errors_name_the_problem(name, form):
    _, dims, adaptive = form
    module = _build_case(name, form)
    with pytest.raises(ValueError, match=f"{dims + 2}-D"):
        module(torch.randn(1, CHANNELS, *(6,) * (dims + 1)))
    with pytest.raises(ValueError, match="floating-point"):
        module(torch.ones(1, CHANNELS, *(6,) * dims, dtype=torch.int64))
    with pytest.raises(ValueError, match="channels"):
        module(torch.randn(1, CHANNELS + 1, *(6,) * dims))
    twin = poolkit.functional.functional_for(name, dims, adaptive)
    with pytest.raises(ValueError, match=f"{twin.__name__} expects a {dims + 2}-D"):
        twin(
            torch.randn(1, CHANNELS, *(6,) * (dims + 1)),
            **_functional_args(module, form),
            **module.functional_kwargs(),
        )
    if adaptive:
        with pytest.raises(ValueError, match="output_size must be"):
            build_form(name, dims, True, output_size=(2,) * (dims + 1))
        with pytest.raises(ValueError, match="output_size must be"):
            build_form(name, dims, True, output_size=0)
    else:
        with pytest.raises(ValueError, match=f"tuple of {dims} ints"):
            build_form(name, dims, False, (2,) * (dims + 1))
        with pytest.raises(ValueError, match="larger than the padded input"):
            build_form(name, dims, False, 2)(torch.randn(1, CHANNELS, *(1,) * dims))


def test_registry_lists_the_forms_of_every_method():
    for name in ALL_POOLS:
        forms = poolkit.get_pool_spec(name).forms
        assert forms[:3] == ("1d", "2d", "3d")
        assert ("adaptive2d" in forms) == (name in ADAPTIVE_POOLS)
        for form in forms:
            dims, adaptive = int(form[-2]), form.startswith("adaptive")
            assert poolkit.functional.functional_for(name, dims, adaptive).__name__.endswith(f"{dims}d")


def test_twin_errors_name_the_twin_and_the_forms_shapes():
    x = torch.randn(2, 3, 8)
    with pytest.raises(ValueError, match=r"gated_pool1d: weight must be \(1, 3, 1\)"):
        poolkit.functional.gated_pool1d(x, 2, weight=torch.zeros(1, 3, 1, 1), bias=torch.zeros(1))
    with pytest.raises(ValueError, match="adaptive_t_max_avg_pool3d: k must be a positive int"):
        poolkit.functional.adaptive_t_max_avg_pool3d(torch.randn(1, 2, 3, 3, 3), 2, k=0)
    with pytest.raises(ValueError, match=r"strided_conv_pool3d: weight must be \(C, 1 or C, \*kernel_size\)"):
        poolkit.functional.strided_conv_pool3d(torch.randn(1, 2, 4, 4, 4), torch.zeros(2, 1, 2, 2), None, 2)


def test_forms_refused_with_a_clear_error():
    for name in ("strided_conv", "blurmax"):
        with pytest.raises(ValueError, match="no global or adaptive form"):
            poolkit.create_adaptive_pool(name, 2, channels=CHANNELS)
    with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
        poolkit.create_pool("max", 2, spatial_dims=4)
    with pytest.raises(ValueError, match="not both"):
        poolkit.layers.MaxPool(2, output_size=3)
    with pytest.raises(ValueError, match="no 3-D adaptive form"):
        poolkit.functional.functional_for("blurmax", 3, adaptive=True)


def _rotating_forms() -> list[tuple[str, tuple[str, int, bool]]]:
    """Every method once, each on the next form in turn (one without adaptive forms takes a windowed one), so
    that every method and every form is compiled and exported at a fraction of the full product's cost."""
    cases = []
    for turn, name in enumerate(ALL_POOLS):
        forms = [f for f in FORMS if not f[2] or name in ADAPTIVE_POOLS]
        cases.append((name, forms[turn % len(forms)]))
    return cases


_COMPILE_CASES = _rotating_forms()


@pytest.mark.parametrize(("name", "form"), _COMPILE_CASES, ids=[f"{n}-{f[0]}" for n, f in _COMPILE_CASES])
def test_form_torch_compile_and_export(name, form):
    """Full-graph aot_eager compile and torch.export in eval mode: every method on one of its other forms."""
    torch._dynamo.reset()
    module = perturb(_build_case(name, form)).eval()
    x = _form_input(form[1])
    expected = module(x)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), expected, rtol=1e-6, atol=1e-6)
    exported = torch.export.export(module, (x,))
    torch.testing.assert_close(exported.module()(x), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("name", "form"), FORM_CASES, ids=FORM_IDS)
def test_form_learnable_parameters_receive_gradients(name, form):
    module = perturb(_build_case(name, form)).train()
    if not list(module.parameters()):
        return
    torch.manual_seed(0)
    module(_form_input(form[1], batch=4)).square().sum().backward()
    for pname, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, (name, pname)


def test_global_form_is_the_adaptive_form_with_output_size_1():
    x = torch.rand(2, CHANNELS, 5, 7) + 0.1
    for dims, shape in ((1, (2, CHANNELS, 9)), (2, (2, CHANNELS, 5, 7)), (3, (2, CHANNELS, 3, 4, 5))):
        x = torch.rand(*shape) + 0.1
        gp = poolkit.create_global_pool("gem", spatial_dims=dims, flatten=True)
        ap = poolkit.create_adaptive_pool("gem", 1, spatial_dims=dims)
        torch.testing.assert_close(gp(x), ap(x).flatten(1))
        assert gp(x).shape == (2, CHANNELS)
