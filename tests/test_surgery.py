"""swap_pooling: replaces every target layer, keeps the geometry, finds channel counts."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

import poolkit
from poolkit.layers import GatedPool, Pool2d, TMaxAvgPool


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, pool: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


def make_net() -> nn.Module:
    return nn.Sequential(
        Block(3, 8, nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.MaxPool2d(3, 2, 1, ceil_mode=True)),
        Block(16, 12, nn.MaxPool2d(kernel_size=2, stride=1, padding=1, dilation=2)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(12, 5),
    )


@pytest.mark.parametrize("name", poolkit.list_pools())
def test_every_maxpool_is_replaced_and_shapes_hold(name):
    torch.manual_seed(0)
    net = make_net()
    x = torch.randn(2, 3, 17, 15)
    reference = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    shapes = {}
    hooks = [
        m.register_forward_hook(lambda m, i, o, k=k: shapes.__setitem__(k, o.shape))
        for k, m in enumerate(reference)
    ]
    net(x)
    for h in hooks:
        h.remove()
    options = {"k": 2} if name in ("tmaxavg", "soft_tmaxavg", "learnable_t") else {}
    poolkit.swap_pooling(net, name, example_input=x, **options)
    pools = [m for m in net.modules() if isinstance(m, Pool2d)]
    assert len(pools) == 3 and not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    for k, (old, new) in enumerate(zip(reference, pools, strict=True)):
        assert new.kernel_size == nn.modules.utils._pair(old.kernel_size)
        assert new.stride == nn.modules.utils._pair(old.stride)
        assert new.padding == nn.modules.utils._pair(old.padding)
        assert new.dilation == nn.modules.utils._pair(old.dilation)
        assert new.ceil_mode == old.ceil_mode
        captured = {}

        def record(module, inputs, output, captured=captured):
            captured["shape"] = output.shape

        handle = new.register_forward_hook(record)
        net.eval()(x)
        handle.remove()
        assert captured["shape"] == shapes[k]
    assert [p.channels for p in pools] == (
        [8, 16, 12] if poolkit.get_pool_spec(name).needs_channels else [None] * 3
    )


def test_returns_the_same_model_and_reaches_nested_modules():
    net = make_net()
    assert poolkit.swap_pooling(net, "avg") is net
    assert isinstance(net[0].pool, poolkit.layers.AvgPool)
    assert isinstance(net[1][1], poolkit.layers.AvgPool)


def test_missing_example_input_says_to_pass_it():
    with pytest.raises(ValueError, match="pass example_input="):
        poolkit.swap_pooling(make_net(), "gated")
    with pytest.raises(ValueError, match="pass example_input="):
        poolkit.swap_pooling(make_net(), "learnable_t", per_channel=True)


class WithUnusedPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = make_net()
        self.unused = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_layer_not_reached_by_the_example_input():
    with pytest.raises(ValueError, match="unused was not reached"):
        poolkit.swap_pooling(WithUnusedPool(), "channel_adaptive", example_input=torch.randn(1, 3, 16, 16))


def test_shared_module_stays_shared_and_mixed_channels_are_refused():
    shared = nn.MaxPool2d(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), shared, nn.Conv2d(4, 4, 1), shared)
    poolkit.swap_pooling(net, "channel_adaptive", example_input=torch.randn(1, 3, 8, 8))
    assert net[1] is net[3] and isinstance(net[1], poolkit.layers.ChannelAdaptivePool)

    shared = nn.MaxPool2d(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), shared, nn.Conv2d(4, 6, 1), shared)
    with pytest.raises(ValueError, match="different channel counts"):
        poolkit.swap_pooling(net, "channel_adaptive", example_input=torch.randn(1, 3, 8, 8))
    net = poolkit.swap_pooling(net, "max")  # parameter-free methods can stay shared
    assert net[1] is net[3]


def test_targets_other_classes_and_factories():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.AvgPool2d(2), nn.MaxPool2d(2))
    poolkit.swap_pooling(net, functools.partial(TMaxAvgPool, k=2), targets=(nn.AvgPool2d,))
    assert isinstance(net[1], TMaxAvgPool) and net[1].k == 2 and isinstance(net[2], nn.MaxPool2d)
    poolkit.swap_pooling(
        net, GatedPool, targets=(TMaxAvgPool, nn.MaxPool2d), example_input=torch.randn(1, 3, 8, 8)
    )
    assert isinstance(net[1], GatedPool) and isinstance(net[2], GatedPool)


def test_refuses_what_it_cannot_replace():
    net = nn.Sequential(nn.MaxPool2d(2, return_indices=True))
    with pytest.raises(ValueError, match="return_indices"):
        poolkit.swap_pooling(net, "avg")
    with pytest.raises(ValueError, match="neither kernel_size nor output_size"):
        poolkit.swap_pooling(nn.Sequential(nn.Identity()), "avg", targets=(nn.Identity,))
    with pytest.raises(ValueError, match="no global or adaptive form"):
        poolkit.swap_pooling(
            nn.Sequential(nn.AdaptiveAvgPool2d(1)), "blurmax", targets=(nn.AdaptiveAvgPool2d,)
        )
    with pytest.raises(ValueError, match="return_indices"):
        poolkit.swap_pooling(
            nn.Sequential(nn.AdaptiveMaxPool2d(2, return_indices=True)),
            "max",
            targets=(nn.AdaptiveMaxPool2d,),
        )
    with pytest.raises(ValueError, match="valid names"):
        poolkit.swap_pooling(make_net(), "nope")


def test_new_layers_follow_the_model_dtype_and_training_modes_are_kept():
    net = make_net().double()
    net[0].eval()  # a frozen sub-block must stay frozen
    poolkit.swap_pooling(net, "attention", example_input=torch.randn(1, 3, 16, 16, dtype=torch.float64))
    assert net[0].pool.hidden.weight.dtype == torch.float64
    assert net.training and not net[0].training and net[1].training
    net(torch.randn(2, 3, 16, 16, dtype=torch.float64)).sum().backward()


def test_training_a_swapped_model_updates_the_pool():
    torch.manual_seed(0)
    net = make_net()
    poolkit.swap_pooling(net, "channel_adaptive", example_input=torch.randn(1, 3, 16, 16))
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    before = net[0].pool.theta.detach().clone()
    loss = nn.functional.cross_entropy(net(torch.randn(8, 3, 16, 16)), torch.arange(8) % 5)
    loss.backward()
    opt.step()
    assert not torch.equal(before, net[0].pool.theta)


# ------------------------------------------------------- the swap changes nothing but the pooling method


@pytest.mark.parametrize("name", ["stochastic", "stochastic_mix"])
def test_new_layers_take_the_mode_of_the_layer_they_replace(name):
    net = make_net().eval()
    poolkit.swap_pooling(net, name, example_input=torch.randn(1, 3, 16, 16))
    pools = [m for m in net.modules() if isinstance(m, Pool2d)]
    assert pools and not any(p.training for p in pools)
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(0)
    first = net(x)
    torch.manual_seed(1)
    torch.testing.assert_close(net(x), first, rtol=0, atol=0)  # an eval model does not sample

    net = make_net().train()
    net[0].eval()
    poolkit.swap_pooling(net, name)
    assert not net[0].pool.training and net[1][1].training


def test_new_layers_take_the_dtype_of_their_surroundings():
    net = make_net()
    net[1].double()  # one block in float64, the rest float32
    poolkit.swap_pooling(net, "mixed")  # learnable, needs no forward pass
    assert net[1][1].theta.dtype == torch.float64
    assert net[0].pool.theta.dtype == torch.float32


@pytest.mark.parametrize(
    "layer",
    [
        nn.AvgPool2d(3, 2, 1),  # torch's default count_include_pad=True, with padding
        nn.AvgPool2d(3, 2, 1, ceil_mode=True),
        nn.AvgPool2d(2, 2, 1, ceil_mode=True, count_include_pad=True),
        nn.AvgPool2d(3, 2, 0, ceil_mode=True),
        nn.AvgPool2d(3, 2, 1, count_include_pad=False),
        nn.AvgPool2d(3, 2, 1, divisor_override=2),
        nn.AvgPool2d(2, divisor_override=3),
    ],
)
def test_avgpool_swapped_to_avg_keeps_its_output(layer):
    x = torch.randn(2, 3, 9, 8)
    expected = layer(x)
    net = poolkit.swap_pooling(nn.Sequential(layer), "avg", targets=(nn.AvgPool2d,))
    assert isinstance(net[0], poolkit.layers.AvgPool)
    torch.testing.assert_close(net(x), expected)


def test_avgpool_options_other_methods_cannot_honour_are_errors():
    with pytest.raises(ValueError, match="count_include_pad"):
        poolkit.swap_pooling(nn.Sequential(nn.AvgPool2d(3, 2, 1)), "gem", targets=(nn.AvgPool2d,))
    with pytest.raises(ValueError, match="divisor_override"):
        poolkit.swap_pooling(
            nn.Sequential(nn.AvgPool2d(2, divisor_override=3)), "max", targets=(nn.AvgPool2d,)
        )
    # Without padding, count_include_pad changes nothing (the divisor counts only real cells): accepted.
    net = poolkit.swap_pooling(nn.Sequential(nn.AvgPool2d(2)), "gem", targets=(nn.AvgPool2d,))
    assert isinstance(net[0], poolkit.layers.GeMPool)
    net = poolkit.swap_pooling(
        nn.Sequential(nn.AvgPool2d(3, 2, 1, count_include_pad=False)), "gem", targets=(nn.AvgPool2d,)
    )
    assert isinstance(net[0], poolkit.layers.GeMPool)


def test_lppool_keeps_its_norm_type_or_is_refused():
    layer = nn.LPPool2d(3, 2, stride=2)
    x = torch.rand(2, 3, 8, 8)
    expected = layer(x)
    net = poolkit.swap_pooling(nn.Sequential(layer), "lp", targets=(nn.LPPool2d,))
    assert net[0].norm_type == 3.0
    torch.testing.assert_close(net(x), expected)
    with pytest.raises(ValueError, match="norm_type"):
        poolkit.swap_pooling(nn.Sequential(nn.LPPool2d(3, 2)), "max", targets=(nn.LPPool2d,))
    with pytest.raises(ValueError, match="ceil_mode"):
        poolkit.swap_pooling(nn.Sequential(nn.LPPool2d(2, 3, ceil_mode=True)), "lp", targets=(nn.LPPool2d,))


def test_avg_count_include_pad_and_divisor_override_equal_torch():
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    for args in [(3, 2, 1, False), (3, 2, 1, True), (2, 2, 1, True), (3, 1, 1, False)]:
        for cip, div in [(True, None), (False, None), (True, 5), (False, 2)]:
            expected = nn.functional.avg_pool2d(x, *args, count_include_pad=cip, divisor_override=div)
            got = poolkit.functional.avg_pool2d(
                x, args[0], args[1], args[2], ceil_mode=args[3], count_include_pad=cip, divisor_override=div
            )
            torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="divisor_override must be"):
        poolkit.create_pool("avg", 2, divisor_override=0)
    with pytest.raises(ValueError, match="count_include_pad=True is defined"):
        poolkit.create_pool("avg", 3, padding=1, dilation=2, count_include_pad=True)


# ----------------------------------------------------------- every form: 1-D, 3-D and adaptive targets

_TORCH_FORMS = [
    (nn.MaxPool1d(3, 2, 1, ceil_mode=True), (2, 4, 11)),
    (nn.MaxPool3d((1, 3, 2), (1, 2, 2), (0, 1, 1)), (2, 4, 3, 8, 7)),
    (nn.AvgPool1d(3, 2, 1), (2, 4, 11)),
    (nn.AvgPool3d(3, 2, 1, ceil_mode=True, count_include_pad=False), (2, 4, 6, 7, 5)),
    (nn.AvgPool3d(2, divisor_override=3), (2, 4, 4, 4, 6)),
    (nn.LPPool1d(2, 3, stride=2), (2, 4, 11)),
    (nn.AdaptiveMaxPool1d(4), (2, 4, 11)),
    (nn.AdaptiveMaxPool2d((3, None)), (2, 4, 7, 5)),
    (nn.AdaptiveMaxPool3d((2, 3, 4)), (2, 4, 5, 7, 9)),
    (nn.AdaptiveAvgPool1d(1), (2, 4, 11)),
    (nn.AdaptiveAvgPool2d((7, 7)), (2, 4, 9, 15)),
    (nn.AdaptiveAvgPool3d(1), (2, 4, 3, 5, 6)),
]


@pytest.mark.parametrize(("layer", "shape"), _TORCH_FORMS, ids=[type(m).__name__ for m, _ in _TORCH_FORMS])
def test_every_torch_pooling_form_is_swapped_to_the_matching_form(layer, shape):
    """max/avg/lp keep the layer's output exactly; a learnable method keeps its shape and gets channels."""
    x = torch.randn(*shape).abs() + 0.1
    expected = layer(x)
    kind = type(layer).__name__
    same = "avg" if "Avg" in kind else "lp" if "LP" in kind else "max"
    net = poolkit.swap_pooling(nn.Sequential(copy_of(layer)), same, targets=(type(layer),))
    assert isinstance(net[0], Pool2d) and net[0].spatial_dims == len(shape) - 2
    torch.testing.assert_close(net(x), expected)
    if same == "lp":
        return
    net = nn.Sequential(nn.Conv1d(4, 4, 1) if len(shape) == 3 else nn.Identity(), copy_of(layer))
    padded = any(nn.modules.utils._ntuple(len(shape) - 2)(getattr(layer, "padding", 0)))
    if getattr(layer, "divisor_override", None) or (getattr(layer, "count_include_pad", False) and padded):
        with pytest.raises(ValueError, match=r"divisor_override|count_include_pad"):
            poolkit.swap_pooling(net, "channel_adaptive", targets=(type(layer),), example_input=x)
        return
    poolkit.swap_pooling(net, "channel_adaptive", targets=(type(layer),), example_input=x)
    assert net[1].channels == 4 and net(x).shape == expected.shape


def copy_of(layer: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(layer)


def test_adaptive_head_of_a_classifier_becomes_gem():
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    x = torch.randn(2, 3, 12, 10)
    poolkit.swap_pooling(net, "gem", targets=(nn.AdaptiveAvgPool2d,), example_input=x)
    assert isinstance(net[2], poolkit.layers.GeMPool) and net[2].output_size == (1, 1)
    net(x).sum().backward()
    assert net[2].rho.grad is not None


def test_audio_net_swap_of_maxpool1d():
    wave = torch.randn(2, 1, 64)
    audio_net = nn.Sequential(
        nn.Conv1d(1, 6, 5, padding=2), nn.MaxPool1d(4), nn.Conv1d(6, 6, 3), nn.MaxPool1d(2)
    )
    shapes = [audio_net[:2](wave).shape, audio_net(wave).shape]
    poolkit.swap_pooling(audio_net, "channel_adaptive", targets=(nn.MaxPool1d,), example_input=wave)
    assert [audio_net[1].channels, audio_net[3].channels] == [6, 6]
    assert isinstance(audio_net[1].theta, nn.Parameter) and audio_net[1].kernel_size == (4,)
    assert [audio_net[:2](wave).shape, audio_net(wave).shape] == shapes


def test_poolkit_forms_can_be_targets_too():
    net = nn.Sequential(
        poolkit.create_adaptive_pool("max", (2, 3)), poolkit.create_pool("max", 2, spatial_dims=1)
    )
    poolkit.swap_pooling(net, "avg", targets=(poolkit.layers.MaxPool,))
    assert net[0].output_size == (2, 3) and net[1].kernel_size == (2,) and net[1].spatial_dims == 1
