"""poolkit.models: parameter counts, shapes, where the pools go, and that every registered pool drops in."""

from __future__ import annotations

import doctest
import importlib
import warnings

import pytest
import torch
from torch import nn

import poolkit
from poolkit.layers import GlobalPool2d, Pool2d
from poolkit.models import VGG_STAGES, create_model, list_models, pool_geometry, scale_width


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def downsampling_pools(model: nn.Module) -> dict[str, Pool2d]:
    """Pool2d layers outside the head's global pool."""
    inside_global = {id(m.pool) for m in model.modules() if isinstance(m, GlobalPool2d)}
    return {n: m for n, m in model.named_modules() if isinstance(m, Pool2d) and id(m) not in inside_global}


# ---------------------------------------------------------------------- sizes
def test_vgg16_has_the_reference_parameter_count() -> None:
    assert n_params(create_model("vgg16", 100)) == 14_774_436


def test_resnet18_parameter_counts_for_both_stems() -> None:
    assert n_params(create_model("resnet18", 100)) == 11_220_132
    assert n_params(create_model("resnet18", 100, stem="imagenet")) == 11_227_812


def test_vgg16_mlp_head_adds_the_4096_4096_classifier() -> None:
    linear = n_params(create_model("vgg16", 100))
    mlp = n_params(create_model("vgg16", 100, head="mlp"))
    assert mlp - linear == (512 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 100 + 100) - (512 * 100 + 100)


@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19", "resnet18", "resnet34"])
@pytest.mark.parametrize("size", [32, 64])
def test_output_shape(name: str, size: int) -> None:
    model = create_model(name, 7, width=0.125)
    assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


@pytest.mark.parametrize("size", [32, 64])
def test_output_shape_with_imagenet_stem_mlp_head_and_grayscale(size: int) -> None:
    x = torch.randn(3, 1, size, size)
    assert create_model("resnet18", 5, width=0.125, in_channels=1, stem="imagenet")(x).shape == (3, 5)
    assert create_model("vgg11", 5, width=0.125, in_channels=1, head="mlp")(x).shape == (3, 5)


def test_width_scales_every_channel_count_rounding_half_up() -> None:
    assert [scale_width(c, 0.125) for c in (64, 12, 4, 3)] == [8, 2, 1, 1]
    assert scale_width(64, 1e-6) == 1
    model = create_model("vgg16", 10, width=0.3)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    expected = [scale_width(c, 0.3) for stage in VGG_STAGES["vgg16"] for c in stage]
    assert convs == expected == [19, 19, 38, 38, 77, 77, 77, 154, 154, 154, 154, 154, 154]
    resnet = create_model("resnet18", 10, width=0.25)
    assert resnet.head.fc.in_features == 128 and resnet.stem.conv.out_channels == 16


def test_same_seed_same_initialisation() -> None:
    torch.manual_seed(3)
    a = create_model("vgg11", 10, pool="attention", width=0.125)
    torch.manual_seed(3)
    b = create_model("vgg11", 10, pool="attention", width=0.125)
    assert all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


# ---------------------------------------------------------------------- where the pools go
@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19"])
def test_vgg_has_five_pools_of_the_chosen_method(name: str) -> None:
    model = create_model(name, 10, pool="tmaxavg", width=0.125, k=2, threshold=0.1)
    pools = downsampling_pools(model)
    assert list(pools) == [f"features.stage{s}.pool" for s in range(1, 6)]
    for pool in pools.values():
        assert pool.registry_name == "tmaxavg"
        assert (pool.kernel_size, pool.stride, pool.k, pool.threshold) == ((2, 2), (2, 2), 2, 0.1)
    channels = [pools[f"features.stage{s}.pool"].channels for s in range(1, 6)]
    assert channels == [scale_width(stage[-1], 0.125) for stage in VGG_STAGES[name]]


def test_imagenet_stem_places_the_chosen_method() -> None:
    for method in ("avg", "stochastic_mix", "tmaxavg"):
        model = create_model("resnet18", 10, pool=method, width=0.125, stem="imagenet")
        pools = downsampling_pools(model)
        assert list(pools) == ["stem.pool"]
        stem_pool = pools["stem.pool"]
        assert stem_pool.registry_name == method
        assert (stem_pool.kernel_size, stem_pool.stride, stem_pool.padding) == ((3, 3), (2, 2), (1, 1))
        assert pool_geometry("resnet18", "imagenet") == (3, 2, 1)


def test_cifar_stem_resnet_has_no_downsampling_pool_and_warns_when_a_pool_is_asked_for() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = create_model("resnet18", 10, width=0.125)  # the default pool: silent
    assert downsampling_pools(model) == {}
    assert pool_geometry("resnet18") is None
    with pytest.warns(UserWarning, match="no downsampling pool"):
        create_model("resnet34", 10, pool="gated", width=0.125)


def test_global_pool_swaps_the_heads_pool() -> None:
    for name in ("vgg11", "resnet18"):
        model = create_model(name, 10, width=0.125, global_pool="gem")
        assert isinstance(model.head.pool, GlobalPool2d) and model.head.pool.method == "gem"
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert create_model("vgg11", 10, width=0.125).head.pool.method == "avg"


@pytest.mark.parametrize("pool", poolkit.list_pools())
def test_every_registered_pool_trains_in_vgg11(pool: str) -> None:
    torch.manual_seed(0)
    model = create_model("vgg11", 10, pool=pool, width=0.125).train()
    assert {p.registry_name for p in downsampling_pools(model).values()} == {pool}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)


# ---------------------------------------------------------------------- errors
def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="valid models are: resnet18, resnet34, vgg11"):
        create_model("vgg17", 10)
    assert list_models() == ["resnet18", "resnet34", "vgg11", "vgg13", "vgg16", "vgg19"]
    with pytest.raises(ValueError, match=r"valid names are: .*max"):
        create_model("vgg11", 10, pool="maximum")
    with pytest.raises(ValueError, match="valid names are"):  # checked even where the pool is unused
        create_model("resnet18", 10, pool="maximum")
    with pytest.raises(ValueError, match="unknown option"):
        create_model("vgg11", 10, pool="tmaxavg", width=0.125, kk=2)
    with pytest.raises(ValueError, match="global"):
        create_model("vgg11", 10, width=0.125, global_pool="strided_conv")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "resnet18", "head": "mlp"}, "VGG only"),
        ({"name": "vgg11", "stem": "imagenet"}, "ResNets only"),
        ({"name": "vgg11", "head": "conv"}, "'linear' or 'mlp'"),
        ({"name": "resnet18", "stem": "tiny"}, "'cifar' or 'imagenet'"),
        ({"name": "vgg11", "width": 0}, "width must be a positive number"),
        ({"name": "vgg11", "width": float("nan")}, "width must be a positive number"),
        ({"name": "vgg11", "num_classes": 0}, "num_classes"),
        ({"name": "vgg11", "in_channels": 1.0}, "in_channels"),
    ],
)
def test_bad_arguments_are_rejected_with_a_clear_message(kwargs: dict, match: str) -> None:
    args = {"num_classes": 10, "width": 0.125, **kwargs}
    with pytest.raises(ValueError, match=match):
        create_model(**args)


@pytest.mark.parametrize(
    "name", ["poolkit.models", "poolkit.models.common", "poolkit.models.vgg", "poolkit.models.resnet"]
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, name
