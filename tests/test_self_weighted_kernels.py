"""The compiled SoftPool, stochastic-pooling (evaluation) and LP kernels against their layers' reference code.

``poolkit::window_self_weighted_mean`` (weights ``softmax``: SoftPool; ``relu``: stochastic pooling in
evaluation) and ``poolkit::window_power_sum`` (LP, ``nn.LPPool2d``'s rules) replace the eager code of
``soft_pool2d``, ``stochastic_pool2d(training=False)`` and ``lp_pool2d`` where :func:`kernel_path` says
``"compiled"``; that eager code (``POOLKIT_FUSED=off``) stays the oracle. Every test compares the two paths:
values and input gradients over the geometry grid of tests/test_fused.py, both layouts, every dtype, float64
gradcheck, opcheck, ``torch.compile(fullgraph=True)`` and ``torch.export``. Skipped where the C++ kernels
cannot be built.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from poolkit.kernels import cpu_kernels_available  # noqa: F401 (the skipif condition)
from poolkit.kernels.ops import window_power_sum_op, window_self_weighted_mean_op
from poolkit.layers.attention import soft_pool2d
from poolkit.layers.classic import lp_pool2d
from poolkit.layers.fused import kernel_path, use_fused_kernels
from poolkit.layers.literature import stochastic_pool2d
from poolkit.layers.windows import PoolGeometry, min_window_count
from pools import build, reseed

pytestmark = pytest.mark.skipif(
    "not cpu_kernels_available()", reason="the compiled CPU kernels could not be built here"
)

GEOMETRIES = list(itertools.product([2, 3, (2, 3)], [1, 2, 3], [0, 1], [1, 2], [False, True]))
SIZES = [(7, 9), (4, 5)]


def _soft(x: torch.Tensor, g: tuple) -> torch.Tensor:
    return soft_pool2d(x, *g)


def _stochastic(x: torch.Tensor, g: tuple) -> torch.Tensor:
    return stochastic_pool2d(x, *g, training=False)


def _lp(p: float) -> Callable[[torch.Tensor, tuple], torch.Tensor]:
    return lambda x, g: lp_pool2d(x, *g, norm_type=p)


def _input(name: str, h: int, w: int, dtype: torch.dtype, channels_last: bool) -> torch.Tensor:
    """Inputs that reach each method's special cases."""
    x = torch.randn(2, 3, h, w, dtype=torch.float64)
    if name == "stochastic":  # windows with no positive cell (the mean), ties at zero
        x = x.mul(1.5).round().sub(0.5)
    elif name in ("lp1.5", "lp2-zeros"):  # a non-integer p needs x >= 0; all-zero windows (gradient 0)
        x = F.relu(x.mul(1.5).round())
    x = x.to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


METHODS = {
    "softpool": _soft,
    "stochastic": _stochastic,
    "lp2": _lp(2.0),
    "lp3": _lp(3.0),  # odd p: negative sums keep their sign, NaN roots as torch
    "lp1.5": _lp(1.5),
    "lp2-zeros": _lp(2.0),
}


def _both_paths(fn: Callable, x: torch.Tensor, g: tuple) -> list[tuple[torch.Tensor, torch.Tensor]]:
    geometry = PoolGeometry.create(*g)
    results = []
    for mode in ("off", "on"):
        leaf = x.detach().clone().requires_grad_()
        with use_fused_kernels(mode):
            assert kernel_path(leaf, geometry) == ("native" if mode == "off" else "compiled")
            y = fn(leaf, g)
        probe = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
        (grad,) = torch.autograd.grad((y * probe).nansum(), leaf)
        results.append((y, grad))
    return results


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("name", list(METHODS))
def test_compiled_equals_the_reference_over_the_geometry_grid(name: str, channels_last: bool) -> None:
    reseed(20)
    checked = 0
    for g, (h, w) in itertools.product(GEOMETRIES, SIZES):
        try:
            geometry = PoolGeometry.create(*g)
            geometry.output_size(h, w)
        except ValueError:
            continue
        if min_window_count(geometry, h, w) == 0:
            continue
        x = _input(name, h, w, torch.float64, channels_last)
        (y0, g0), (y1, g1) = _both_paths(METHODS[name], x, g)
        context = f"{name} {g} on {h}x{w}"
        torch.testing.assert_close(y1, y0, equal_nan=True, msg=context)
        torch.testing.assert_close(g1, g0, equal_nan=True, msg=context)
        if channels_last and x.shape[1] > 1:
            assert y1.is_contiguous(memory_format=torch.channels_last), context
            assert g1.is_contiguous(memory_format=torch.channels_last), context
        checked += 1
    assert checked > 100


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["softpool", "stochastic", "lp2", "lp3"])
def test_compiled_low_precision_matches_the_reference(name: str, dtype: torch.dtype) -> None:
    reseed(21)
    x = _input(name, 8, 8, dtype, channels_last=False)
    (y0, g0), (y1, g1) = _both_paths(METHODS[name], x, (3, 2, 1))
    assert y1.dtype == g1.dtype == dtype
    # The reference works in x's dtype (softmax in float32), the kernel in float32: allow half's rounding.
    tolerance = {} if dtype == torch.float32 else {"atol": 3e-2, "rtol": 3e-2}
    torch.testing.assert_close(y1.float(), y0.float(), equal_nan=True, **tolerance)
    torch.testing.assert_close(g1.float(), g0.float(), equal_nan=True, **tolerance)


def test_softpool_is_stable_for_large_activations() -> None:
    values = [1000.0, 999.0, -1000.0, 998.0]
    e = torch.tensor([1.0, torch.e**-1, 0.0, torch.e**-2], dtype=torch.float64)
    expected = (e * torch.tensor(values, dtype=torch.float64)).sum() / e.sum()
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor(values, dtype=dtype).reshape(1, 1, 2, 2).requires_grad_()
        with use_fused_kernels("on"):
            y = soft_pool2d(x, 2)
            (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y.reshape(()), expected.to(dtype))
        assert torch.isfinite(grad).all()
        if dtype == torch.float64:  # a softmax-weighted mean: shifting every cell by t shifts y by t
            torch.testing.assert_close(grad.sum(), torch.tensor(1.0, dtype=dtype))


def test_stochastic_eval_hand_computed_values() -> None:
    # Window 1: relu mass 0.6 -> (0.01 + 0.04 + 0.0025 + 0.0625) / 0.6; window 2: no positive cell -> mean.
    x = torch.tensor([[[[0.1, 0.2, -1.0, -2.0], [0.05, 0.25, 0.0, -3.0]]]], requires_grad=True)
    with use_fused_kernels("on"):
        y = stochastic_pool2d(x, 2)
        (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.flatten(), torch.tensor([0.115 / 0.6, -1.5]))
    # dy/dx_i = (2 x_i - y) / D where x_i > 0, and 1/n in the window without mass.
    y1 = 0.115 / 0.6
    first = [(2 * v - y1) / 0.6 for v in (0.1, 0.2, 0.05, 0.25)]
    expected = torch.tensor([[first[0], first[1], 0.25, 0.25], [first[2], first[3], 0.25, 0.25]])
    torch.testing.assert_close(grad[0, 0], expected)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_lp_matches_torch_lppool2d_including_zero_windows_and_signs(p: float) -> None:
    reseed(22)
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    x[:, :, :2, :2] = 0.0  # an all-zero window: y = 0, gradient 0
    if p != 3.0:
        x = x.abs()  # torch gives NaN for negative sums with even p
    native = nn.LPPool2d(p, 2)
    leaf0, leaf1 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y0 = native(leaf0)
    with use_fused_kernels("on"):
        y1 = lp_pool2d(leaf1, 2, norm_type=p)
    probe = torch.randn_like(y0)
    (g0,) = torch.autograd.grad((y0 * probe).nansum(), leaf0)
    (g1,) = torch.autograd.grad((y1 * probe).nansum(), leaf1)
    torch.testing.assert_close(y1, y0, equal_nan=True)
    torch.testing.assert_close(g1, g0, equal_nan=True)
    assert (g1[:, :, :2, :2] == 0).all()


def _args(g: PoolGeometry, x: torch.Tensor) -> list[list[int]]:
    out = g.output_size(x.shape[-2], x.shape[-1])
    return [list(g.kernel_size), list(g.stride), list(g.padding), list(g.dilation), list(out)]


@pytest.mark.parametrize("name", ["softpool", "stochastic", "lp2", "lp3"])
def test_gradcheck_float64(name: str) -> None:
    reseed(23)
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    if name.startswith("lp"):
        x = x.abs().add(0.2)  # away from zero, where the root has no derivative
    if name == "stochastic":
        x[0, 0] = -x[0, 0].abs()  # windows without mass
    x.requires_grad_()
    for g in [(3, 2, 1), (2, 1, 0, 2, True)]:
        with use_fused_kernels("on"):
            assert kernel_path(x, PoolGeometry.create(*g)) == "compiled"
            assert torch.autograd.gradcheck(lambda t, g=g: METHODS[name](t, g), (x,))


@pytest.mark.parametrize(("dtype", "channels_last"), [(torch.float32, False), (torch.float64, True)])
def test_opcheck(dtype: torch.dtype, channels_last: bool) -> None:
    reseed(24)
    x = torch.randn(2, 3, 7, 8, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    for geometry in [(2, 2, 0, 1, False), (3, 2, 1, 1, True), ((2, 3), 1, (1, 1), 2, False)]:
        args = _args(PoolGeometry.create(*geometry), x)
        for weights in ("softmax", "relu"):
            torch.library.opcheck(window_self_weighted_mean_op, (x, weights, *args))
        positive = x.detach().abs().requires_grad_()  # opcheck compares without equal_nan: no NaN roots
        for p in (2.0, 3.0):
            torch.library.opcheck(window_power_sum_op, (positive, p, *args))


def test_an_unknown_weight_mode_is_a_clear_error() -> None:
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match="weights must be one of softmax, relu"):
        window_self_weighted_mean_op(x, "sigmoid", [2, 2], [2, 2], [0, 0], [1, 1], [2, 2])


class _OpRecorder:
    def __init__(self) -> None:
        self.targets: list[str] = []

    def __call__(self, gm: torch.fx.GraphModule, inputs: list[torch.Tensor]) -> torch.fx.GraphModule:
        self.targets += [str(node.target) for node in gm.graph.nodes if node.op == "call_function"]
        return gm


@pytest.mark.parametrize(
    ("name", "op", "train"),
    [("softpool", "window_self_weighted_mean", True), ("stochastic", "window_self_weighted_mean", False),
     ("lp", "window_power_sum", True)],
)  # fmt: skip
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_compile_fullgraph_sees_one_operator(name: str, op: str, train: bool, channels_last: bool) -> None:
    reseed(25)
    torch._dynamo.reset()  # every pool compiles the same forward code: a fresh recompile budget
    pool = build(name, 3, 2, 1).train(train)
    x = torch.rand(2, 4, 9, 8).sub(0.3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    recorder = _OpRecorder()
    results = []
    with use_fused_kernels("on"):
        for fn in (pool, torch.compile(pool, fullgraph=True, backend=recorder)):
            leaf = x.clone().requires_grad_()
            y = fn(leaf)
            results.append((y, torch.autograd.grad(y.square().sum(), leaf)[0]))
    assert sum(f"poolkit.{op}" in t for t in recorder.targets) == 1, recorder.targets
    torch.testing.assert_close(results[1][0], results[0][0])
    torch.testing.assert_close(results[1][1], results[0][1])


def test_aot_autograd_and_export_keep_the_operators() -> None:
    reseed(26)
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), build("softpool", 2), build("lp", 3, 2, 1))
    model.append(build("stochastic", 2)).eval()
    x = torch.randn(2, 3, 16, 16)
    with use_fused_kernels("on"):
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        leaf0, leaf1 = x.clone().requires_grad_(), x.clone().requires_grad_()
        grad0 = torch.autograd.grad(model(leaf0).sum(), leaf0)[0]
        grad1 = torch.autograd.grad(compiled(leaf1).sum(), leaf1)[0]
        exported = torch.export.export(model, (x,))
    torch.testing.assert_close(grad1, grad0)
    targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
    assert sum("poolkit.window_self_weighted_mean" in t for t in targets) == 2, targets
    assert sum("poolkit.window_power_sum" in t for t in targets) == 1, targets
    torch.testing.assert_close(exported.module()(x), expected)


@pytest.mark.parametrize("name", ["softpool", "stochastic", "lp3", "gem", "weighted"])
def test_short_rows_of_many_channels_take_the_channels_last_kernels(name: str) -> None:
    """NCHW inputs whose output rows are shorter than 4 with 16+ channels run channels_last internally."""
    from poolkit.layers.fused import window_power_mean, window_weighted_mean_fused

    reseed(27)
    weight = torch.rand(2, 1, 5, 6, dtype=torch.float64).add(0.1)
    methods = {
        **METHODS,
        "gem": lambda t, g: window_power_mean(t.abs(), PoolGeometry.create(*g), 2.5, 1e-6),
        "weighted": lambda t, g: window_weighted_mean_fused(t, weight, PoolGeometry.create(*g), 0.01),
    }
    for g in [(2, 2, 0, 1, False), (3, 2, 0, 1, True), (2, 2, 1, 2, False)]:
        x = _input(name, 5, 6, torch.float64, channels_last=False).repeat(1, 6, 1, 1)  # 18 channels
        assert PoolGeometry.create(*g).output_size(5, 6)[1] < 4
        (y0, g0), (y1, g1) = _both_paths(methods[name], x, g)
        torch.testing.assert_close(y1, y0, equal_nan=True, msg=str(g))
        torch.testing.assert_close(g1, g0, equal_nan=True, msg=str(g))
        assert y1.is_contiguous() and g1.is_contiguous()
