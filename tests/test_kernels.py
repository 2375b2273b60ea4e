"""The compiled window kernels (``poolkit.kernels``) as operators: opcheck, compile, export, fallback.

The value/gradient comparisons with the native reference over the full geometry grid are in
tests/test_fused.py (its ``compiled`` path); these tests cover what is specific to the custom operators.
Every test that needs the C++ build is skipped where it cannot be built; the fallback test runs everywhere.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import poolkit
from poolkit.kernels import build as kernel_build
from poolkit.kernels import cpu_kernels_available, kernel_status
from poolkit.kernels.ops import (
    GATES,
    window_max_mean_blend_op,
    window_max_mean_op,
    window_max_topk_blend_op,
    window_max_topk_mean_op,
    window_power_mean_grad_p_op,
    window_power_mean_op,
    window_weighted_mean_op,
)
from poolkit.layers.fused import (
    kernel_path,
    use_fused_kernels,
    window_max_mean,
    window_max_topk_mean,
    window_power_mean,
    window_weighted_mean_fused,
)
from poolkit.layers.gate import window_blend
from poolkit.layers.windows import PoolGeometry, min_window_count
from pools import build, reseed

needs_build = pytest.mark.skipif(
    "not cpu_kernels_available()", reason="the compiled CPU kernels could not be built here"
)


def _args(g: PoolGeometry, x: torch.Tensor) -> list[list[int]]:
    out = g.output_size(x.shape[-2], x.shape[-1])
    return [list(g.kernel_size), list(g.stride), list(g.padding), list(g.dilation), list(out)]


OPCHECK_CASES = [
    ((2, 2, 0, 1, False), torch.float32, False),
    ((3, 2, 1, 1, True), torch.float64, True),
    (((2, 3), 1, (1, 1), 2, False), torch.float32, True),
]


@needs_build
@pytest.mark.parametrize(("geometry", "dtype", "channels_last"), OPCHECK_CASES)
def test_opcheck_both_operators(geometry: tuple, dtype: torch.dtype, channels_last: bool) -> None:
    reseed(0)
    g = PoolGeometry.create(*geometry)
    x = torch.randn(2, 3, 7, 8, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    torch.library.opcheck(window_max_mean_op, (x, *_args(g, x)))
    torch.library.opcheck(window_max_topk_mean_op, (x, 2, *_args(g, x)))


class _OpRecorder:
    """A torch.compile backend that records the graph's call targets and runs the graph as it is."""

    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
        self.targets += [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
        return gm


@needs_build
@pytest.mark.parametrize(
    ("name", "op"), [("channel_adaptive", "window_max_mean_blend"), ("tmaxavg", "window_max_topk_blend")]
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_torch_compile_fullgraph_sees_one_operator(name: str, op: str, channels_last: bool) -> None:
    reseed(1)
    pool = build(name, 3, 2, 1).double()
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    recorder = _OpRecorder()
    results = []
    with use_fused_kernels("on"):
        for fn in (pool, torch.compile(pool, fullgraph=True, backend=recorder)):
            leaf = x.clone().requires_grad_()
            y = fn(leaf)
            results.append((y, torch.autograd.grad(y.square().sum(), [leaf, *pool.parameters()])))
    assert sum(f"poolkit.{op}" in t for t in recorder.targets) == 1, recorder.targets
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0)
    for a, b in zip(g1, g0, strict=True):
        torch.testing.assert_close(a, b)


@needs_build
def test_aot_autograd_traces_forward_and_backward_through_the_fake_kernels() -> None:
    reseed(2)
    pool = build("soft_tmaxavg", 3, 2, 1)
    x = torch.randn(2, 4, 9, 8).contiguous(memory_format=torch.channels_last)
    with use_fused_kernels("on"):
        compiled = torch.compile(pool, fullgraph=True, backend="aot_eager")
        leaf = x.clone().requires_grad_()
        grad = torch.autograd.grad(compiled(leaf).sum(), leaf)[0]
        leaf0 = x.clone().requires_grad_()
        grad0 = torch.autograd.grad(pool(leaf0).sum(), leaf0)[0]
    torch.testing.assert_close(grad, grad0)
    assert grad.is_contiguous(memory_format=torch.channels_last)


@needs_build
def test_torch_export_keeps_the_operator() -> None:
    reseed(3)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build("mixed", 2), build("learnable_t", 3, 2, 1))
    x = torch.randn(2, 3, 16, 16)
    with use_fused_kernels("on"):
        exported = torch.export.export(model.eval(), (x,))
        expected = model(x)
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert any("poolkit.window_max_mean_blend" in t for t in targets), targets
    assert any("poolkit.window_max_topk_blend" in t for t in targets), targets
    torch.testing.assert_close(exported.module()(x), expected)


@needs_build
def test_top_k_tie_gradient_is_the_eager_paths_rule_exactly() -> None:
    reseed(4)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64).mul(1.5).round().clamp(min=0)  # many ties
    g = PoolGeometry.create(3, 2, 1)
    grads = []
    for mode in ("eager", "on"):
        leaf = x.clone().requires_grad_()
        with use_fused_kernels(mode):
            _, top = window_max_topk_mean(leaf, g, 4)
        weight = torch.linspace(-1, 1, top.numel(), dtype=top.dtype).view_as(top)
        grads.append(torch.autograd.grad((top * weight).sum(), leaf)[0])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@needs_build
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_max_of_the_top_k_operator_follows_max_pool2d(channels_last: bool) -> None:
    reseed(5)
    x = torch.randn(2, 3, 8, 7).mul(1.5).round()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = PoolGeometry.create(3, 2, 1, 1, True)
    leaf, leaf0 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with use_fused_kernels("on"):
        m, _ = window_max_topk_mean(leaf, g, 3)
    m0 = F.max_pool2d(leaf0, 3, 2, 1, ceil_mode=True)
    weight = torch.randn_like(m0)
    assert torch.equal(m, m0)
    # The same cells get the same terms; a cell that is the maximum of several windows sums them in
    # another order than max_pool2d's backward, hence closeness rather than bit equality.
    torch.testing.assert_close(
        torch.autograd.grad((m * weight).sum(), leaf)[0], torch.autograd.grad((m0 * weight).sum(), leaf0)[0]
    )


@needs_build
def test_windows_larger_than_the_eager_limit() -> None:
    reseed(6)
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    g = PoolGeometry.create(5, 1, 2)  # 25 cells: the eager fused path declines, the compiled one takes it
    with use_fused_kernels("on"):
        assert kernel_path(x, g) == "compiled"
        assert torch.autograd.gradcheck(lambda t: window_max_mean(t, g), (x.clone().requires_grad_(),))
        m, top = window_max_topk_mean(x, g, 9)
    with use_fused_kernels("off"):
        m0, top0 = window_max_topk_mean(x, g, 9)
    assert torch.equal(m, m0)
    torch.testing.assert_close(top, top0)


@needs_build
def test_nan_wins_the_maximum_and_takes_its_gradient_like_max_pool2d() -> None:
    x = torch.tensor([[[[1.0, float("nan")], [3.0, 2.0]]]])
    leaf, leaf0 = x.clone().requires_grad_(), x.clone().requires_grad_()
    with use_fused_kernels("on"):
        m, a = window_max_mean(leaf, PoolGeometry.create(2))
    m0 = F.max_pool2d(leaf0, 2)
    assert m.isnan().all() and a.isnan().all() and m0.isnan().all()
    assert torch.equal(torch.autograd.grad(m.sum(), leaf)[0], torch.autograd.grad(m0.sum(), leaf0)[0])


def test_a_failed_build_warns_once_and_falls_back_to_the_eager_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler() -> None:
        raise RuntimeError("Error building extension 'poolkit_window_stats': c++: command not found")

    monkeypatch.setattr(kernel_build, "_status", kernel_build.KernelStatus())
    monkeypatch.setattr(kernel_build, "_compile", no_compiler)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    g = PoolGeometry.create(2)
    with use_fused_kernels("auto"), pytest.warns(RuntimeWarning, match="could not be built") as record:
        assert kernel_path(x, g) == "eager"
        m, a = window_max_mean(x, g)
        pool = poolkit.create_pool("tmaxavg", 3, 2, 1)
        y = pool(x)
    assert len(record) == 1 and "c++: command not found" in str(record[0].message)
    assert "pip install ninja" in str(record[0].message)
    assert kernel_status().state == "failed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning
        assert not cpu_kernels_available()
    torch.testing.assert_close(m, F.max_pool2d(x, 2))
    torch.testing.assert_close(a, F.avg_pool2d(x, 2))
    with use_fused_kernels("off"):
        torch.testing.assert_close(y, pool(x))
    with use_fused_kernels("off"), warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernel_path(x, g) == "native"  # POOLKIT_FUSED=off never asks for the build


@needs_build
def test_status_reports_the_build_time() -> None:
    status = kernel_status()
    assert status.state == "ready" and status.seconds is not None and status.seconds >= 0
    assert "ready" in status.describe()


# ------------------------------------------------------------------------------------ power mean (GeM)

POWER_GEOMETRIES = [
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, True),
    ((2, 3), 1, (1, 1), 2, False),
    (3, 1, 1, 1, False),
]


def _power_mean_both_paths(x: torch.Tensor, g: PoolGeometry, p: float, eps: float):
    results = []
    for mode in ("off", "on"):
        leaf = x.clone().requires_grad_()
        exponent = torch.tensor(p, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
        exponent.requires_grad_()
        with use_fused_kernels(mode):
            assert kernel_path(leaf, g) == ("native" if mode == "off" else "compiled")
            y = window_power_mean(leaf, g, exponent, eps)
        weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        results.append((y, *torch.autograd.grad((y * weight).sum(), [leaf, exponent])))
    return results


@needs_build
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("p", [3.0, 1.5])
def test_power_mean_equals_the_reference_with_gradients_of_x_and_p(channels_last: bool, p: float) -> None:
    reseed(7)
    for geometry, (h, w) in itertools.product(POWER_GEOMETRIES, [(7, 9), (4, 5)]):
        g = PoolGeometry.create(*geometry)
        x = F.relu(torch.randn(2, 3, h, w, dtype=torch.float64))  # zeros below eps, as after a ReLU
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        (y0, gx0, gp0), (y1, gx1, gp1) = _power_mean_both_paths(x, g, p, 1e-6)
        context = f"{g} on {h}x{w}, p={p}"
        torch.testing.assert_close(y1, y0, msg=context)
        torch.testing.assert_close(gx1, gx0, msg=context)
        torch.testing.assert_close(gp1, gp0, msg=context)
        if channels_last:
            assert y1.is_contiguous(memory_format=torch.channels_last)
            assert gx1.is_contiguous(memory_format=torch.channels_last)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_power_mean_low_precision(dtype: torch.dtype) -> None:
    reseed(8)
    x = torch.rand(2, 4, 8, 8).mul(3).to(dtype)
    (y0, gx0, gp0), (y1, gx1, gp1) = _power_mean_both_paths(x, PoolGeometry.create(3, 2, 1), 3.0, 1e-6)
    assert y1.dtype == gx1.dtype == dtype
    tolerance = {} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(y1.float(), y0.float(), **tolerance)
    torch.testing.assert_close(gx1.float(), gx0.float(), **tolerance)
    torch.testing.assert_close(gp1, gp0, rtol=2e-2, atol=1e-3)


@needs_build
def test_power_mean_gradcheck_and_opcheck() -> None:
    reseed(9)
    x = torch.rand(2, 3, 7, 6, dtype=torch.float64).add(0.1).requires_grad_()
    p = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    g = PoolGeometry.create(3, 2, 1)
    with use_fused_kernels("on"):
        assert torch.autograd.gradcheck(lambda t, q: window_power_mean(t, g, q, 1e-6), (x, p))
    torch.library.opcheck(window_power_mean_op, (x, p, 1e-6, *_args(g, x)))
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(window_power_mean_op, (cl, p, 1e-6, *_args(g, cl)))


@needs_build
def test_gem_pool_compiles_to_one_operator_and_learns_p() -> None:
    reseed(10)
    pool = build("gem", 3, 2, 1)
    x = F.relu(torch.randn(2, 4, 9, 8))
    recorder = _OpRecorder()
    with use_fused_kernels("on"):
        compiled = torch.compile(pool, fullgraph=True, backend=recorder)
        grads = [torch.autograd.grad(fn(x).sum(), list(pool.parameters())) for fn in (pool, compiled)]
    assert sum("poolkit.window_power_mean" in t for t in recorder.targets) == 1, recorder.targets
    torch.testing.assert_close(grads[1], grads[0])
    assert grads[0][0].abs() > 0


# ---------------------------------------------------------------------------------------- weighted mean


@needs_build
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
def test_weighted_mean_equals_the_reference_with_gradients(channels_last: bool, shared: bool) -> None:
    reseed(11)
    for geometry, (h, w), eps in itertools.product(POWER_GEOMETRIES, [(7, 9), (4, 5)], [0.0, 0.1]):
        g = PoolGeometry.create(*geometry)
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        weight = torch.rand(2, 1 if shared else 3, h, w, dtype=torch.float64).add(0.05)
        if channels_last:
            x, weight = (t.contiguous(memory_format=torch.channels_last) for t in (x, weight))
        results = []
        for mode in ("off", "on"):
            leaf_x, leaf_w = x.clone().requires_grad_(), weight.clone().requires_grad_()
            with use_fused_kernels(mode):
                y = window_weighted_mean_fused(leaf_x, leaf_w, g, eps)
            probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
            results.append((y, *torch.autograd.grad((y * probe).sum(), [leaf_x, leaf_w])))
        context = f"{g} on {h}x{w}, eps={eps}"
        for got, expected in zip(results[1], results[0], strict=True):
            torch.testing.assert_close(got, expected, msg=context)
        if channels_last:
            assert results[1][0].is_contiguous(memory_format=torch.channels_last)


@needs_build
def test_weighted_mean_gradcheck_and_opcheck() -> None:
    reseed(12)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    shared = torch.rand(2, 1, 7, 6, dtype=torch.float64).add(0.1).requires_grad_()
    g = PoolGeometry.create(3, 2, 1)
    with use_fused_kernels("on"):
        assert torch.autograd.gradcheck(lambda a, b: window_weighted_mean_fused(a, b, g, 0.01), (x, shared))
    torch.library.opcheck(window_weighted_mean_op, (x, shared, 0.01, *_args(g, x)))
    per_channel = torch.rand(2, 3, 7, 6, dtype=torch.float64).add(0.1).requires_grad_()
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    per_channel = per_channel.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(window_weighted_mean_op, (cl, per_channel, 0.0, *_args(g, cl)))


@needs_build
@pytest.mark.parametrize("name", ["attention", "lip"])
def test_attention_pools_compile_to_one_weighted_mean(name: str) -> None:
    reseed(13)
    pool = build(name, 3, 2, 1)
    x = torch.randn(2, 4, 9, 8)
    recorder = _OpRecorder()
    with use_fused_kernels("on"):
        compiled = torch.compile(pool, fullgraph=True, backend=recorder)
        outputs = []
        for fn in (pool, compiled):
            leaf = x.clone().requires_grad_()
            y = fn(leaf)
            outputs.append((y, torch.autograd.grad(y.square().sum(), [leaf, *pool.parameters()])))
    assert sum("poolkit.window_weighted_mean" in t for t in recorder.targets) == 1, recorder.targets
    torch.testing.assert_close(outputs[1][0], outputs[0][0])
    for got, expected in zip(outputs[1][1], outputs[0][1], strict=True):
        torch.testing.assert_close(got, expected)


# ---------------------------------------------------------------------------------------------- blends

#: (k, gate, parameter shape) for x of (N, C) = (3, 5): every gate on both statistics, and a parameter per
#: layer, per channel and per (sample, channel).
BLEND_CASES = [
    (None, "lerp", ()),
    (None, "lerp", (1, 5, 1, 1)),
    (None, "lerp", (3, 5, 1, 1)),
    (None, "hard", ()),
    (None, "soft", (1, 5, 1, 1)),
    (2, "lerp", (3, 5, 1, 1)),
    (2, "hard", ()),
    (3, "soft", ()),
    (3, "soft", (1, 5, 1, 1)),
]
BLEND_GEOMETRIES = [
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 1, 1, 1, True),
    ((2, 3), 1, (1, 1), 2, False),
]


def _blend_and_grads(x, g, p0, k, gate, mode, weight):
    leaf, p = x.clone().requires_grad_(), p0.clone().requires_grad_()
    with use_fused_kernels(mode):
        y = window_blend(leaf, g, p, k=k, gate=gate, tau=0.3)
    gx, gp = torch.autograd.grad((y * weight).sum(), [leaf, p], allow_unused=True, materialize_grads=True)
    return y, gx, gp  # the hard gate's threshold gets no gradient: zeros on both paths


@needs_build
@pytest.mark.parametrize(("k", "gate", "p_shape"), BLEND_CASES)
@pytest.mark.parametrize("geometry", BLEND_GEOMETRIES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_blend_operators_equal_the_reference(k, gate, p_shape, geometry, channels_last: bool) -> None:
    """y, dx and dp of the one-operator blends against M/S from the native pair and the gate in torch ops."""
    reseed(7)
    g = PoolGeometry.create(*geometry)
    x = torch.randn(3, 5, 9, 8, dtype=torch.float64).mul(2).round().div(2)  # ties, so the tie rules count
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    p0 = torch.rand(p_shape, dtype=torch.float64)
    out = g.output_size(9, 8)
    weight = torch.randn(3, 5, *out, dtype=torch.float64)
    with use_fused_kernels("on"):
        compiled = kernel_path(x, g, k if k and k < g.area else None) == "compiled"
    y, gx, gp = _blend_and_grads(x, g, p0, k, gate, "on", weight)
    y0, gx0, gp0 = _blend_and_grads(x, g, p0, k, gate, "off", weight)
    assert compiled or min_window_count(g, 9, 8) < (k or 1)  # only windows with fewer than K cells decline
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gp, gp0, rtol=1e-12, atol=1e-12)
    if compiled:
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        assert y.is_contiguous(memory_format=fmt) and gx.is_contiguous(memory_format=fmt)


@needs_build
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("k", "gate"), [(None, "lerp"), (2, "hard"), (2, "soft")])
def test_blend_operators_low_precision(dtype: torch.dtype, k: int | None, gate: str) -> None:
    """Low precision: the compiled blend computes in float32 and rounds once; the reference rounds each op."""
    reseed(8)
    g = PoolGeometry.create(3, 2, 1)
    x = torch.randn(2, 4, 9, 9).contiguous(memory_format=torch.channels_last).to(dtype)
    p0 = torch.rand(1, 4, 1, 1)  # a float32 parameter, as the pools hold it
    weight = torch.randn(2, 4, 5, 5).to(dtype)
    y, gx, gp = _blend_and_grads(x, g, p0, k, gate, "on", weight)
    y0, gx0, gp0 = _blend_and_grads(x, g, p0, k, gate, "off", weight)
    assert y.dtype == gx.dtype == dtype and gp.dtype == torch.float32
    eps = torch.finfo(dtype).eps  # a few roundings of values of order 1 apart
    torch.testing.assert_close(y.float(), y0.float(), rtol=4 * eps, atol=4 * eps)
    torch.testing.assert_close(gx.float(), gx0.float(), rtol=8 * eps, atol=8 * eps)
    torch.testing.assert_close(gp, gp0, rtol=16 * eps, atol=16 * eps * gp0.abs().max().item())


@needs_build
@pytest.mark.parametrize(("k", "gate"), [(None, "lerp"), (None, "soft"), (2, "hard"), (2, "soft")])
def test_blend_operators_gradcheck_and_opcheck(k: int | None, gate: str) -> None:
    reseed(9)
    g = PoolGeometry.create(3, 2, 1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    p = torch.rand(2, 3, 1, 1, dtype=torch.float64, requires_grad=True)
    with use_fused_kernels("on"):
        assert torch.autograd.gradcheck(lambda t, q: window_blend(t, g, q, k=k, gate=gate, tau=0.5), (x, p))
    args = (x, p.detach().reshape(2, 3).requires_grad_(), *([k] if k else []), GATES[gate], 0.5, *_args(g, x))
    op = window_max_topk_blend_op if k else window_max_mean_blend_op
    torch.library.opcheck(op, args)
    cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(op, (cl, *args[1:]))


@needs_build
def test_blend_operator_keeps_the_gradient_of_an_infinite_maximum_finite() -> None:
    """dy/dM of a lerp blend is lam, whatever M - S (the saved dy/dq) is: inf must not leak as inf * 0."""
    x = torch.tensor([[[[float("inf"), 1.0], [2.0, 3.0]]]], requires_grad=True)
    with use_fused_kernels("on"):
        y = window_blend(x, PoolGeometry.create(2), torch.tensor(0.25))
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(grad, torch.tensor([[[[0.4375, 0.1875], [0.1875, 0.1875]]]]))


def test_blend_with_a_parameter_per_output_cell_takes_the_reference() -> None:
    """A parameter the operators cannot take (one per output cell) is blended by the reference ops."""
    reseed(10)
    x, p = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 2, 2)
    g = PoolGeometry.create(2)
    with use_fused_kernels("on"):
        y = window_blend(x, g, p, gate="soft", tau=0.5)
    with use_fused_kernels("off"):
        y0 = window_blend(x, g, p, gate="soft", tau=0.5)
    torch.testing.assert_close(y, y0)


@needs_build
def test_power_mean_grad_p_operator_equals_its_formula() -> None:
    reseed(14)
    x = torch.rand(2, 3, 8, 6, dtype=torch.float64).add(0.05)
    p = torch.tensor(2.5, dtype=torch.float64)
    g = PoolGeometry.create(3, 2, 1)
    y, s, ds = window_power_mean_op(x, p, 1e-6, *_args(g, x))
    grad_y = torch.randn_like(y)
    expected = (grad_y * s.pow(1 / p) * (ds / (p * s) - s.log() / (p * p))).sum()
    torch.testing.assert_close(window_power_mean_grad_p_op(grad_y, s, ds, p), expected)
    torch.library.opcheck(window_power_mean_grad_p_op, (grad_y, s, ds, p))
    cl = x.contiguous(memory_format=torch.channels_last)
    _, s_cl, ds_cl = window_power_mean_op(cl, p.float(), 1e-6, *_args(g, cl))
    torch.testing.assert_close(
        window_power_mean_grad_p_op(grad_y.float(), s_cl.float(), ds_cl.float(), p), expected.float()
    )
