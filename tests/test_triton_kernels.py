"""The Triton kernels (``poolkit.kernels.triton_window``) against the eager reference, under the interpreter.

Triton runs its kernels on CPU tensors when ``TRITON_INTERPRET=1`` is set before it is imported, so these
tests need no GPU; they are skipped unless that variable is set or a CUDA device is present, and
triton is installed (CI runs them in a separate step: ``TRITON_INTERPRET=1 pytest
tests/test_triton_kernels.py``; on a GPU machine plain ``pytest tests/test_triton_kernels.py`` runs them on
the device). The interpreter is slow, so the tensors are small; the comparison is the same as
tests/test_fused.py's: M exactly, A and T_K up to summation order, the input gradient of both
(max_pool2d's first-maximum rule, the top-K tie rule).
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.nn.functional as F

from poolkit.layers.fused import use_fused_kernels, window_max_mean, window_max_topk_mean, window_power_mean
from poolkit.layers.windows import PoolGeometry, min_window_count, window_mean, window_weighted_mean
from pools import CHANNELS, DETERMINISTIC, build, perturb, reseed

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip("the Triton kernels need a CUDA device or TRITON_INTERPRET=1", allow_module_level=True)
_triton_window = pytest.importorskip("poolkit.kernels.triton_window", reason="triton is not installed")
_triton_lp_soft = pytest.importorskip("poolkit.kernels.triton_lp_soft", reason="triton is not installed")
DEVICE = "cpu" if INTERPRETED else "cuda"


class _OnDevice:
    """A Triton module's functions, called with their tensors on DEVICE and answering on the CPU."""

    def __init__(self, module) -> None:
        self._module = module

    def __getattr__(self, name: str):
        function = getattr(self._module, name)

        def call(*args):
            out = function(*[a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args])
            if isinstance(out, (tuple, list)):
                return tuple(o.cpu() for o in out)
            return out.cpu() if isinstance(out, torch.Tensor) else out

        return call


def _with(context: str):
    """assert_close's msg: the context first, then torch's own account of the mismatch."""
    return lambda message: f"{context}: {message}"


triton_window = _OnDevice(_triton_window)
triton_lp_soft = _OnDevice(_triton_lp_soft)

pytestmark = pytest.mark.slow

GEOMETRIES = [(2, 2, 0, 1, False), (3, 2, 1, 1, True), ((2, 3), 1, (1, 1), 2, False), (3, 3, 1, 1, True)]


def _args(g: PoolGeometry, h: int, w: int) -> list[list[int]]:
    out = g.output_size(h, w)
    return [list(g.kernel_size), list(g.stride), list(g.padding), list(g.dilation), list(out)]


def _input(h: int, w: int, dtype: torch.dtype, ties: bool, channels_last: bool) -> torch.Tensor:
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    if ties:  # many equal values, as after a ReLU
        x = x.mul(1.5).round().clamp(min=0)
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _reference(x: torch.Tensor, g: PoolGeometry, k: int | None, weights: tuple[torch.Tensor, torch.Tensor]):
    """(M, S, dx) of the eager path: S = A (k None) or T_K, dx of sum(wM M + wS S)."""
    leaf = x.clone().requires_grad_()
    with use_fused_kernels("eager" if k is not None else "off"):
        m, s = window_max_mean(leaf, g) if k is None else window_max_topk_mean(leaf, g, k)
    (grad,) = torch.autograd.grad((m * weights[0]).sum() + (s * weights[1]).sum(), leaf)
    return m, s, grad


@pytest.mark.parametrize(
    ("channels_last", "ties", "dtype"),
    [(False, False, torch.float64), (True, True, torch.float64), (False, True, torch.float32)],
    ids=["nchw-distinct-f64", "channels_last-ties-f64", "nchw-ties-f32"],
)
def test_triton_max_mean_equals_the_native_pair(channels_last: bool, ties: bool, dtype: torch.dtype) -> None:
    reseed(0)
    for geometry, (h, w) in itertools.product(GEOMETRIES, [(7, 6), (5, 5)]):
        g = PoolGeometry.create(*geometry)
        x = _input(h, w, dtype, ties, channels_last)
        args = _args(g, h, w)
        weights = (torch.randn(2, 3, *args[-1], dtype=dtype), torch.randn(2, 3, *args[-1], dtype=dtype))
        m0, a0, grad0 = _reference(x, g, None, weights)
        m, a, idx = triton_window.max_mean_forward(x, *args)
        grad = triton_window.max_mean_backward(weights[0], weights[1], idx, [h, w], *args[:4], channels_last)
        context = f"{g} on {h}x{w}"
        assert torch.equal(m, m0), context
        torch.testing.assert_close(a, a0, msg=_with(context))
        torch.testing.assert_close(grad, grad0, msg=_with(context))
        if channels_last:
            assert m.is_contiguous(memory_format=torch.channels_last)
            assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    ("channels_last", "ties"),
    [(False, False), (True, True), (False, True)],
    ids=["nchw", "channels_last-ties", "nchw-ties"],
)
def test_triton_top_k_equals_the_eager_path(channels_last: bool, ties: bool) -> None:
    reseed(1)
    for geometry, (h, w) in itertools.product(GEOMETRIES, [(7, 6)]):
        g = PoolGeometry.create(*geometry)
        for k in (2, 3):
            if k >= g.area or min_window_count(g, h, w) < k:
                continue
            x = _input(h, w, torch.float64, ties, channels_last)
            args = _args(g, h, w)
            weights = tuple(torch.randn(2, 3, *args[-1], dtype=x.dtype) for _ in range(2))
            m0, t0, grad0 = _reference(x, g, k, weights)
            m, t, idx, kth, tie = triton_window.max_topk_forward(x, k, *args)
            grad = triton_window.max_topk_backward(
                weights[0], weights[1], x, idx, kth, tie, k, *args[:4], channels_last
            )
            context = f"{g} on {h}x{w}, K={k}"
            assert torch.equal(m, m0), context
            torch.testing.assert_close(t, t0, msg=_with(context))
            torch.testing.assert_close(grad, grad0, msg=_with(context))


def test_triton_first_maximum_and_nan_follow_max_pool2d() -> None:
    x = torch.tensor([[[[2.0, 2.0, 1.0, float("nan")], [2.0, 1.0, float("nan"), 0.0]]]])
    args = [[2, 2], [2, 2], [0, 0], [1, 1], [1, 2]]
    m, _, idx = triton_window.max_mean_forward(x, *args)
    _, native_idx = F.max_pool2d(x, 2, return_indices=True)
    assert idx.tolist() == [[[[0, 2]]]]  # the first 2; the last NaN (cell 2 = row 1, col 0: native index 6)
    assert native_idx.tolist() == [[[[0, 6]]]]
    assert m[0, 0, 0, 0] == 2.0 and m[0, 0, 0, 1].isnan()
    m_top, *_ = triton_window.max_topk_forward(x, 2, *args)
    assert torch.equal(m_top.nan_to_num(), m.nan_to_num()) and m_top[0, 0, 0, 1].isnan()


def test_registering_the_cuda_kernels_is_idempotent() -> None:
    for module in (triton_window, triton_lp_soft, triton_window, triton_lp_soft):
        module.register_cuda_kernels()


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_triton_power_mean_equals_the_reference(channels_last: bool) -> None:
    reseed(2)
    p = torch.tensor(2.5, dtype=torch.float64)
    for geometry in GEOMETRIES:
        g = PoolGeometry.create(*geometry)
        x = F.relu(_input(7, 6, torch.float64, False, channels_last))  # zeros below eps
        args = _args(g, 7, 6)
        leaf = x.clone().requires_grad_()
        with use_fused_kernels("off"):
            y0 = window_power_mean(leaf, g, p, 1e-6)
        weight = torch.randn_like(y0)
        (grad0,) = torch.autograd.grad((y0 * weight).sum(), leaf)
        y, s, ds = triton_window.power_mean_forward(x, p, 1e-6, *args)
        grad = triton_window.power_mean_backward(weight, s, x, p, 1e-6, *args[:4], channels_last)
        z = x.clamp(min=1e-6)
        with use_fused_kernels("off"):
            s0 = window_mean(z.pow(2.5), g)
            ds0 = window_mean(z.pow(2.5) * z.log(), g)
        context = str(g)
        torch.testing.assert_close(y, y0, msg=_with(context))
        torch.testing.assert_close(s, s0, msg=_with(context))
        torch.testing.assert_close(ds, ds0, msg=_with(context))
        torch.testing.assert_close(grad, grad0, msg=_with(context))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("shared", [False, True], ids=["per_channel", "shared"])
def test_triton_weighted_mean_equals_the_reference(channels_last: bool, shared: bool) -> None:
    reseed(3)
    for geometry in GEOMETRIES:
        g = PoolGeometry.create(*geometry)
        x = _input(7, 6, torch.float64, False, channels_last)
        w = torch.rand(2, 1 if shared else 3, 7, 6, dtype=torch.float64).add(0.05)
        if channels_last:
            w = w.contiguous(memory_format=torch.channels_last)
        args = _args(g, 7, 6)
        leaf_x, leaf_w = x.clone().requires_grad_(), w.clone().requires_grad_()
        y0 = window_weighted_mean(leaf_x, leaf_w, g, 0.1)
        probe = torch.randn_like(y0)
        grad_x0, grad_w0 = torch.autograd.grad((y0 * probe).sum(), [leaf_x, leaf_w])
        y, d = triton_window.weighted_mean_forward(x, w, 0.1, *args)
        grad_x, grad_w = triton_window.weighted_mean_backward(probe, y, d, x, w, *args[:4], channels_last)
        assert grad_w.shape == w.shape
        context = str(g)
        torch.testing.assert_close(y, y0, msg=_with(context))
        torch.testing.assert_close(grad_x, grad_x0, msg=_with(context))
        torch.testing.assert_close(grad_w, grad_w0, msg=_with(context))


@pytest.mark.skipif(INTERPRETED, reason="compares CUDA modules: needs a CUDA device")
@pytest.mark.parametrize("name", DETERMINISTIC)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_every_pool_on_cuda_is_the_same_with_the_triton_kernels(name: str, channels_last: bool) -> None:
    """Each deterministic pool on CUDA: the Triton kernels (``on``) vs the native pair (``off``).

    Without TF32 convolutions: TF32 rounds each operand to 10 bits, so a last-bit difference in the pooling
    gradient can flip a rounding in a convolution's backward (LIP's logits) and move a few cells by 1e-4.
    """
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        _compare_paths_on_cuda(name, channels_last)


def _compare_paths_on_cuda(name: str, channels_last: bool) -> None:
    for geometry in [(2,), (3, 2, 1)]:
        module = perturb(build(name, *geometry)).cuda().train()
        x = torch.randn(4, CHANNELS, 13, 12, device="cuda")
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        results = []
        for mode in ("off", "on"):
            leaf = x.clone().requires_grad_()
            module.zero_grad()
            with use_fused_kernels(mode):
                y = module(leaf)
            y.backward(torch.ones_like(y))
            grads = [p.grad.clone() for p in module.parameters() if p.grad is not None]
            results.append((y.detach(), leaf.grad, grads))
        (y0, g0, p0), (y1, g1, p1) = results

        def context(message: str, geometry=geometry) -> str:
            return f"{name} {geometry}: {message}"

        torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5, msg=_with(context))
        torch.testing.assert_close(g1, g0, rtol=1e-4, atol=1e-5, msg=_with(context))
        for a, b in zip(p1, p0, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=_with(context))


def _layer_reference(fn, x: torch.Tensor, g: PoolGeometry, probe_seed: int):
    """(y, dx of sum(probe * y)) of a layer's eager reference code (``POOLKIT_FUSED=off``)."""
    leaf = x.clone().requires_grad_()
    with use_fused_kernels("off"):
        y = fn(leaf)
    probe = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(probe_seed))
    (grad,) = torch.autograd.grad((y * probe).nansum(), leaf)
    return y, grad, probe


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("weights", ["softmax", "relu"])
def test_triton_self_weighted_mean_equals_the_layers(channels_last: bool, weights: str) -> None:
    from poolkit.layers.attention import soft_pool2d
    from poolkit.layers.literature import stochastic_pool2d

    reseed(4)
    for geometry in GEOMETRIES:
        g = PoolGeometry.create(*geometry)
        x = _input(7, 6, torch.float64, False, channels_last)
        if weights == "relu":
            x = x.mul(1.5).round().sub(0.5)  # windows without a positive cell take the mean
        pool = soft_pool2d if weights == "softmax" else stochastic_pool2d
        y0, grad0, probe = _layer_reference(
            lambda t, pool=pool, geometry=geometry: pool(t, *geometry), x, g, 5
        )
        args = _args(g, 7, 6)
        y, d, m = triton_lp_soft.self_weighted_forward(x, weights, *args)
        grad = triton_lp_soft.self_weighted_backward(probe, y, d, m, x, weights, *args[:4], channels_last)
        context = f"{weights} {g}"
        torch.testing.assert_close(y, y0, msg=_with(context))
        torch.testing.assert_close(grad, grad0, msg=_with(context))
        if channels_last:
            assert grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("p", [2.0, 3.0, 1.5])
def test_triton_power_sum_equals_lp_pool2d(channels_last: bool, p: float) -> None:
    from poolkit.layers.classic import lp_pool2d

    reseed(5)
    for geometry in GEOMETRIES:
        g = PoolGeometry.create(*geometry)
        x = _input(7, 6, torch.float64, True, channels_last)  # zeros: all-zero windows (gradient 0)
        if p == 3.0:
            x = x - 0.5  # negative cells: an odd power keeps the sign
        y0, grad0, probe = _layer_reference(
            lambda t, geometry=geometry: lp_pool2d(t, *geometry, norm_type=p), x, g, 6
        )
        args = _args(g, 7, 6)
        y, s = triton_lp_soft.power_sum_forward(x, p, *args)
        grad = triton_lp_soft.power_sum_backward(probe, s, x, p, *args[:4], channels_last)
        context = f"p={p} {g}"
        torch.testing.assert_close(y, y0, equal_nan=True, msg=_with(context))
        torch.testing.assert_close(grad, grad0, equal_nan=True, msg=_with(context))
