"""The model and dataset registries: each ModelSpec agrees with the model it builds, and every caller that
used to test ``name.startswith("vgg")`` (create_model, RunConfig, ``poolkit list``, the report, bench)
asks the spec; datasets carry their title."""

from __future__ import annotations

import ast
import doctest
from pathlib import Path

import pytest
from torch import nn

from poolkit.cli import main as poolkit_main
from poolkit.data import dataset_info, list_datasets
from poolkit.layers import GlobalPool2d, Pool2d
from poolkit.models import (
    FAMILIES,
    HEADS,
    STEMS,
    create_model,
    get_model_spec,
    list_models,
    pool_geometry,
)
from poolkit.models import specs as specs_module
from poolkit.report.formatting import dataset_title, model_family, model_order, model_title

SRC = Path(__file__).resolve().parents[1] / "src" / "poolkit"


def _downsampling_pools(model: nn.Module) -> dict[str, Pool2d]:
    inside_global = {id(m.pool) for m in model.modules() if isinstance(m, GlobalPool2d)}
    return {n: m for n, m in model.named_modules() if isinstance(m, Pool2d) and id(m) not in inside_global}


@pytest.mark.parametrize("name", list_models())
def test_each_spec_describes_the_model_it_builds(name: str) -> None:
    spec = get_model_spec(name)
    assert spec.name == name and spec.family in FAMILIES and spec.stems and spec.heads
    assert set(spec.stems) <= set(STEMS) and set(spec.heads) <= set(HEADS)
    assert set(spec.pools) == set(spec.stems)
    for stem in spec.stems:
        model = create_model(name, 10, width=0.0625, stem=stem)
        pools = _downsampling_pools(model)
        sites = spec.pools[stem]
        assert tuple(pools) == sites.modules, (name, stem)
        for pool in pools.values():  # every site has the spec's window
            assert sites.geometry == (pool.kernel_size[0], pool.stride[0], pool.padding[0])
        assert sites.geometry is None or pools
        assert pool_geometry(name, stem) == sites.geometry
    for head in spec.heads:
        create_model(name, 10, width=0.0625, head=head)


def test_titles_families_and_order() -> None:
    titles = {name: get_model_spec(name).title for name in list_models()}
    assert titles == {
        "resnet18": "ResNet18",
        "resnet34": "ResNet34",
        "vgg11": "VGG11",
        "vgg13": "VGG13",
        "vgg16": "VGG16",
        "vgg19": "VGG19",
    }
    assert FAMILIES == ("vgg", "resnet")
    assert specs_module.families_with(head="mlp") == ["VGG"]
    assert specs_module.families_with(stem="imagenet") == ["ResNet"]
    assert specs_module.families_with(stem="cifar") == ["VGG", "ResNet"]
    # The report asks the registry, and keeps a model it does not know as it is, last.
    assert [model_title(m) for m in ("vgg16", "resnet18", "mynet")] == ["VGG16", "ResNet18", "mynet"]
    assert [model_family(m) for m in ("vgg19", "resnet34", "mynet")] == ["vgg", "resnet", "mynet"]
    assert sorted(["resnet34", "mynet", "vgg19", "resnet18", "vgg11", "vgg16"], key=model_order) == [
        "vgg11",
        "vgg16",
        "vgg19",
        "resnet18",
        "resnet34",
        "mynet",
    ]


def test_unknown_model_lists_the_valid_names() -> None:
    for bad in ("vgg17", 16, None):
        with pytest.raises(ValueError, match=r"unknown model .*; valid models are: resnet18, resnet34"):
            get_model_spec(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="stem='imagenet' applies to ResNets only; vgg16 has no 'imagenet'"):
        pool_geometry("vgg16", "imagenet")


def test_datasets_carry_their_title() -> None:
    titles = {name: dataset_info(name).title for name in list_datasets()}
    assert titles == {
        "cifar10": "CIFAR-10",
        "cifar100": "CIFAR-100",
        "imagefolder": "ImageFolder",
        "mnist5k": "MNIST-5k",
        "synthetic": "Synthetic",
        "tinyimagenet": "Tiny ImageNet",
    }
    assert dataset_title("cifar100") == "CIFAR-100" and dataset_title("svhn") == "svhn"
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; valid names: cifar10, cifar100"):
        dataset_info("svhn")


def test_poolkit_list_reads_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    assert poolkit_main(["list", "models"]) == 0
    lines = [line.split(None, 1) for line in capsys.readouterr().out.splitlines() if line.strip()]
    rows = {parts[0]: parts[1] for parts in lines if parts[0] in list_models()}
    assert set(rows) == set(list_models())
    assert rows["vgg16"].strip() == "5"
    assert rows["resnet18"].strip() == "0 (stem cifar), 1 (stem imagenet)"
    assert poolkit_main(["list", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "Tiny ImageNet" in out and "CIFAR-100" in out


def test_no_module_tests_a_model_name_prefix() -> None:
    """Model families are looked up (``get_model_spec(name).family``), never guessed from the name."""
    bad = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "startswith"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in ("vgg", "resnet")
            ):
                bad.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert bad == [], "use poolkit.models.get_model_spec(name) instead"


def test_docstring_examples() -> None:
    result = doctest.testmod(specs_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
