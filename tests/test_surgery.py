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
    with pytest.raises(ValueError, match="kernel_size"):
        poolkit.swap_pooling(nn.Sequential(nn.AdaptiveAvgPool2d(1)), "avg", targets=(nn.AdaptiveAvgPool2d,))
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
