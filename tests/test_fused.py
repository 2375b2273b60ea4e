"""The fused M/A and top-K paths (``poolkit.layers.fused``: compiled C++ and eager) against the native one.

The reference is ``(window_max, window_mean)``: ``F.max_pool2d`` and ``F.avg_pool2d`` (unfolding for
dilation), and unfold + topk for T_K. Each fused path must give the same M exactly, the same A up to
summation order, and the same input gradient, including ``max_pool2d``'s rule for ties (the first maximum in
row-major order gets it). Every test runs on both fused paths (``path``: "eager" and "compiled"); the
compiled one is skipped where the C++ kernels cannot be built (tests/test_kernels.py covers that fallback).
"""

from __future__ import annotations

import itertools

import pytest
import torch

import poolkit
from poolkit.kernels import cpu_kernels_available
from poolkit.layers.fused import (
    fused_kernels_enabled,
    kernel_path,
    set_fused_kernels,
    use_fused_kernels,
    window_max_mean,
    window_max_topk_mean,
    window_topk_mean_fused,
)
from poolkit.layers.windows import PoolGeometry
from pools import BLENDS, build, reseed

GEOMETRIES = [
    (k, s, p, d, c)
    for k, s, p, d, c in itertools.product([2, 3, (2, 3)], [1, 2, 3], [0, 1], [1, 2], [False, True])
]
SIZES = [(7, 9), (8, 8), (4, 5)]
#: The mode that selects each fused path.
MODE = {"eager": "eager", "compiled": "on"}


@pytest.fixture(params=["eager", "compiled"])
def path(request: pytest.FixtureRequest) -> str:
    """A fused path to test; "compiled" is skipped where the C++ kernels cannot be built."""
    if request.param == "compiled" and not cpu_kernels_available():
        pytest.skip("the compiled CPU kernels could not be built here (no C++ compiler or ninja)")
    return str(request.param)


def _both_paths(x: torch.Tensor, g: PoolGeometry, weights: tuple[torch.Tensor, torch.Tensor], path: str):
    results = []
    for mode in ("off", MODE[path]):
        leaf = x.detach().clone().requires_grad_()
        with use_fused_kernels(mode):
            assert kernel_path(leaf, g) == ("native" if mode == "off" else path)
            m, a = window_max_mean(leaf, g)
        loss = (m * weights[0]).sum() + (a * weights[1]).sum()
        (grad,) = torch.autograd.grad(loss, leaf)
        results.append((m, a, grad))
    return results


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_fused_equals_native_pair_over_a_grid_of_windows(path: str, channels_last: bool, ties: bool) -> None:
    reseed(0)
    checked = 0
    for (k, s, p, d, c), (h, w) in itertools.product(GEOMETRIES, SIZES):
        try:
            g = PoolGeometry.create(k, s, p, d, c)
            out = g.output_size(h, w)
        except ValueError:
            continue
        if g.area > 1 and poolkit.layers.windows.min_window_count(g, h, w) == 0:
            continue
        x = torch.randn(2, 3, h, w, dtype=torch.float64)
        if ties:  # many equal maxima: small integers and zeros, as after a ReLU
            x = x.mul(1.5).round().clamp(min=0)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        weights = (torch.randn(2, 3, *out, dtype=torch.float64), torch.randn(2, 3, *out, dtype=torch.float64))
        (m0, a0, g0), (m1, a1, g1) = _both_paths(x, g, weights, path)
        context = f"geometry {g}, input {h}x{w}"
        assert torch.equal(m0, m1), context
        torch.testing.assert_close(a1, a0, msg=context)
        torch.testing.assert_close(g1, g0, msg=context)
        if channels_last:
            assert m1.is_contiguous(memory_format=torch.channels_last), context
            assert g1.is_contiguous(memory_format=torch.channels_last), context
        checked += 1
    assert checked > 150


def test_ties_go_to_the_first_maximum_like_max_pool2d(path: str) -> None:
    x = torch.tensor([[[[2.0, 2.0], [2.0, 1.0]]]], requires_grad=True)
    with use_fused_kernels(MODE[path]):
        m, a = window_max_mean(x, PoolGeometry.create(2))
    (grad,) = torch.autograd.grad(m.sum() + 0 * a.sum(), x)
    assert grad.tolist() == [[[[1.0, 0.0], [0.0, 0.0]]]]
    (grad_a,) = torch.autograd.grad(*window_max_mean(x, PoolGeometry.create(2))[1:], x)
    assert grad_a.tolist() == [[[[0.25, 0.25], [0.25, 0.25]]]]


@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_gradcheck_float64(path: str, k: int, s: int, p: int) -> None:
    reseed(1)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    g = PoolGeometry.create(k, s, p)
    with use_fused_kernels(MODE[path]):
        assert torch.autograd.gradcheck(lambda t: window_max_mean(t, g), (x,))


def test_only_one_output_used_still_gives_its_gradient(path: str) -> None:
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    g = PoolGeometry.create(2)
    with use_fused_kernels(MODE[path]):
        m, _ = window_max_mean(x, g)
        (grad_m,) = torch.autograd.grad(m.sum(), x)
        _, a = window_max_mean(x, g)
        (grad_a,) = torch.autograd.grad(a.sum(), x)
    assert torch.equal(grad_m.sum((-2, -1)), torch.full((2, 3), 9.0))
    torch.testing.assert_close(grad_a, torch.full_like(x, 0.25))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (3, 2, 1)])
def test_low_precision_dtypes(
    path: str, dtype: torch.dtype, channels_last: bool, k: int, s: int, p: int
) -> None:
    reseed(2)
    x = torch.randn(2, 4, 9, 8).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = PoolGeometry.create(k, s, p)
    results = []
    for mode in ("off", MODE[path]):
        leaf = x.clone().requires_grad_()
        with use_fused_kernels(mode):
            m, a = window_max_mean(leaf, g)
        weights = torch.linspace(-1, 1, m.numel()).view_as(m).to(dtype)
        (grad,) = torch.autograd.grad((m * weights).sum() + (a * weights.flip(-1)).sum(), leaf)
        results.append((m, a, grad))
    (m0, a0, g0), (m, a, grad) = results
    assert m.dtype == a.dtype == grad.dtype == dtype
    assert torch.equal(m, m0)
    # A and its gradient: the native kernels round differently (both within a few units of the last place).
    tolerance = {"atol": 2e-2, "rtol": 2e-2} if dtype != torch.float32 else {}
    torch.testing.assert_close(a.float(), a0.float(), **tolerance)
    torch.testing.assert_close(grad.float(), g0.float(), **tolerance)


@pytest.mark.parametrize("name", BLENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_blend_is_the_same_with_and_without_fused_kernels(
    path: str, name: str, channels_last: bool
) -> None:
    reseed(3)
    x = torch.randn(3, 4, 9, 8, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    outputs = []
    for mode in ("off", MODE[path]):
        pool = build(name, 3, 2, 1).double().train()
        leaf = x.clone().requires_grad_()
        with use_fused_kernels(mode):
            reseed(4)  # stochastic_mix draws its mixing weights
            y = pool(leaf)
        grads = torch.autograd.grad(y.square().sum(), [leaf, *pool.parameters()])
        outputs.append((y, grads))
    (y0, g0), (y1, g1) = outputs
    torch.testing.assert_close(y1, y0)  # stochastic_mix: the compiled sampler makes torch's very draws
    torch.testing.assert_close(g1[0], g0[0])
    # stochastic_mix's theta gradient passes through float32 lambda (theta.float() on both paths): torch sums
    # float32 per-sample terms, the compiled sampler sums in double and rounds once.
    float32 = {"rtol": 100 * torch.finfo(torch.float32).eps, "atol": 0.0}
    tolerance = float32 if name == "stochastic_mix" else {}
    for a, b in zip(g1[1:], g0[1:], strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def test_modes_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(1, 2, 4, 4)
    g = PoolGeometry.create(2)
    with use_fused_kernels("eager"):
        assert kernel_path(x, g) == "eager"
        assert kernel_path(x, PoolGeometry.create(5, 1, 2)) == "native"  # 25 cells: one pass per cell
        assert kernel_path(x, PoolGeometry.create(1)) == "native"
    with use_fused_kernels(False):
        assert not fused_kernels_enabled(x, g)
    compiled_or_eager = "compiled" if cpu_kernels_available() else "eager"
    with use_fused_kernels(True):
        assert kernel_path(x, g) == compiled_or_eager
        # 25 cells: the compiled kernels take any window; the eager path declines
        large = "compiled" if cpu_kernels_available() else "native"
        assert kernel_path(x, PoolGeometry.create(5, 1, 2)) == large
        assert kernel_path(x.to("meta"), g) == "eager"  # no compiled kernel for that device
        assert kernel_path(x, PoolGeometry.create(3), k=10) == "native"  # fewer than K cells
    with use_fused_kernels("auto"):
        assert kernel_path(x, g) == compiled_or_eager  # CPU
        assert not fused_kernels_enabled(x.to("meta"), g)  # any other device keeps the native pair
    with pytest.raises(ValueError, match="one of auto, on, eager, off"):
        set_fused_kernels("fast")  # type: ignore[arg-type]
    monkeypatch.setenv("POOLKIT_FUSED", "sometimes")
    with pytest.raises(ValueError, match="POOLKIT_FUSED='sometimes'"):
        poolkit.layers.fused._mode_from_environment()


def _saved_for_backward(fn, x: torch.Tensor) -> list[torch.Tensor]:
    saved: list[torch.Tensor] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return saved


def test_saved_for_backward_is_the_input_and_m_on_the_eager_path() -> None:
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    with use_fused_kernels("eager"):
        saved = _saved_for_backward(lambda t: window_max_mean(t, PoolGeometry.create(2)), x)
    assert [tuple(t.shape) for t in saved] == [(2, 8, 16, 16), (2, 8, 8, 8)]
    assert saved[0].data_ptr() == x.data_ptr()


def test_saved_for_backward_is_only_the_int32_index_on_the_compiled_path() -> None:
    if not cpu_kernels_available():
        pytest.skip("the compiled CPU kernels could not be built here")
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    with use_fused_kernels("on"):
        saved = _saved_for_backward(lambda t: window_max_mean(t, PoolGeometry.create(2)), x)
    assert [(tuple(t.shape), t.dtype) for t in saved] == [((2, 8, 8, 8), torch.int32)]
    # max_pool2d saves the input and int64 indices: 4 + 2 output-sized float32s against our 1.
    native = _saved_for_backward(lambda t: torch.nn.functional.max_pool2d(t, 2, return_indices=True)[0], x)
    assert sum(t.nbytes for t in saved) * 6 == sum(t.nbytes for t in native)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_fused_top_k_mean_equals_unfold_and_topk(path: str, channels_last: bool, ties: bool) -> None:
    reseed(5)
    checked = 0
    for (k, s, p, d, c), (h, w) in itertools.product(GEOMETRIES, SIZES[:2]):
        try:
            g = PoolGeometry.create(k, s, p, d, c)
            g.output_size(h, w)
        except ValueError:
            continue
        for top in range(2, g.area):
            if poolkit.layers.windows.min_window_count(g, h, w) < top:
                continue
            x = torch.randn(2, 3, h, w, dtype=torch.float64)
            if ties:
                x = x.mul(1.5).round().clamp(min=0)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            results = []
            for mode in ("off", MODE[path]):
                leaf = x.clone().requires_grad_()
                with use_fused_kernels(mode):
                    y = window_topk_mean_fused(leaf, g, top)
                weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
                results.append((y, torch.autograd.grad((y * weight).sum(), leaf)[0]))
            (y0, g0), (y1, g1) = results
            torch.testing.assert_close(y1, y0, msg=f"{g}, K={top}")
            # One tie rule on both paths: the cells equal to the K-th value share its remaining places.
            torch.testing.assert_close(g1, g0, msg=f"{g}, K={top}")
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("mode", ["on", "eager", "off"], ids=["compiled", "eager", "reference"])
def test_top_k_ties_share_the_remaining_places(mode: str) -> None:
    # top-4 of {2, 1, 1, 1, 1, 0, 0, 0, 0}: 2 and three of the four 1s; each 1 gets 3/4 of a quarter.
    x = torch.tensor([[[[1.0, 1.0, 1.0], [1.0, 0.0, 2.0], [0.0, 0.0, 0.0]]]], requires_grad=True)
    with use_fused_kernels(mode):
        y = window_topk_mean_fused(x, PoolGeometry.create(3), 4)
    assert y.item() == 1.25
    (grad,) = torch.autograd.grad(y, x)
    assert grad.tolist() == [[[[0.1875, 0.1875, 0.1875], [0.1875, 0.0, 0.25], [0.0, 0.0, 0.0]]]]


def test_top_k_tie_rule_on_clipped_windows() -> None:
    # 3x3 windows, stride 2, padding 1 on a 3x3 input: the corner window has 4 real cells {3, 3, 1, 3}.
    # K = 2 < 4 real cells: the three tied 3s share the two places; K = 5 is clipped to the 4 real cells.
    x = torch.tensor([[[[3.0, 3.0, 0.0], [1.0, 3.0, 0.0], [0.0, 0.0, 0.0]]]], requires_grad=True)
    g = PoolGeometry.create(3, 2, 1)
    y = poolkit.layers.windows.window_topk_mean(x, g, 2)  # top-2 of {3, 3, 1, 3}: the three 3s share
    assert y[0, 0, 0, 0].item() == 3.0
    (grad,) = torch.autograd.grad(y[0, 0, 0, 0], x)
    third = 1 / 3
    torch.testing.assert_close(
        grad, torch.tensor([[[[third, third, 0.0], [0.0, third, 0.0], [0.0, 0.0, 0.0]]]])
    )
    # K = 5 on a window of 4 real cells is clipped to 4: the mean of the real cells, each g / 4.
    y5 = poolkit.layers.windows.window_topk_mean(x, g, 5)
    assert y5[0, 0, 0, 0].item() == 2.5
    (grad5,) = torch.autograd.grad(y5[0, 0, 0, 0], x)
    torch.testing.assert_close(
        grad5, torch.tensor([[[[0.25, 0.25, 0.0], [0.25, 0.25, 0.0], [0.0, 0.0, 0.0]]]])
    )


@pytest.mark.parametrize(("k", "s", "p", "top"), [(3, 2, 1, 4), (3, 2, 1, 5), (2, 1, 0, 3)])
def test_reference_top_k_gradcheck_float64(k: int, s: int, p: int, top: int) -> None:
    reseed(7)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    g = PoolGeometry.create(k, s, p)
    assert torch.autograd.gradcheck(lambda t: poolkit.layers.windows.window_topk_mean(t, g, top), (x,))


@pytest.mark.parametrize(("k", "s", "p", "top"), [(3, 2, 1, 4), (3, 3, 0, 2), (2, 1, 0, 3)])
def test_top_k_gradcheck_float64(path: str, k: int, s: int, p: int, top: int) -> None:
    reseed(6)
    x = torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True)
    g = PoolGeometry.create(k, s, p)
    with use_fused_kernels(MODE[path]):
        assert torch.autograd.gradcheck(lambda t: window_max_topk_mean(t, g, top), (x,))
