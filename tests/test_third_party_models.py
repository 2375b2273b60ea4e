"""swap_pooling on real third-party models: Hugging Face ResNet and RegNet, built from a config.

Random weights, no download (``HF_HUB_OFFLINE``). Skipped when ``transformers`` is not installed
(``pip install -e ".[models]"``). The stem pool (ResNet's ``MaxPool2d(3, 2, 1)``) and the head
(``AdaptiveAvgPool2d(1)``; RegNet's squeeze-excitation blocks pool with it too) are swapped, then the model
runs forward, backward and a few optimiser steps.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

import poolkit
from poolkit.layers import Pool2d

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip(
    "transformers",
    reason="needs the optional test extra: pip install -e '.[models]' (Hugging Face transformers)",
)


def _resnet() -> nn.Module:
    config = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3
    )
    return transformers.ResNetForImageClassification(config)


def _regnet() -> nn.Module:
    config = transformers.RegNetConfig(
        embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=3
    )
    return transformers.RegNetForImageClassification(config)


def _train_a_few_steps(model: nn.Module, pool_params: list[nn.Parameter]) -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    before = [p.detach().clone() for p in pool_params]
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        optimiser.zero_grad()
        loss = model(pixel_values=x, labels=labels).loss
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in pool_params)
        optimiser.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(b, p) for b, p in zip(before, pool_params, strict=True))
    model.eval()
    with torch.no_grad():
        assert model(pixel_values=x).logits.shape == (4, 3)


@pytest.mark.parametrize(("stem", "head"), [("stochastic_mix", "gem"), ("channel_adaptive", "attention")])
def test_huggingface_resnet_stem_and_head(stem, head):
    torch.manual_seed(0)
    model = _resnet()
    x = torch.randn(2, 3, 32, 32)
    shapes = {}
    for name in ("resnet.embedder.pooler", "resnet.pooler"):
        module = model.get_submodule(name)
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, o.shape))
    model(pixel_values=x)
    poolkit.swap_pooling(model, stem, targets=(nn.MaxPool2d,), example_input={"pixel_values": x})
    poolkit.swap_pooling(model, head, targets=(nn.AdaptiveAvgPool2d,), example_input={"pixel_values": x})
    stem_pool, head_pool = model.resnet.embedder.pooler, model.resnet.pooler
    assert stem_pool.registry_name == stem and stem_pool.kernel_size == (3, 3) and stem_pool.padding == (1, 1)
    assert head_pool.registry_name == head and head_pool.output_size == (1, 1)
    for name, module in (("resnet.embedder.pooler", stem_pool), ("resnet.pooler", head_pool)):
        got = {}
        handle = module.register_forward_hook(lambda m, i, o, got=got: got.__setitem__("shape", o.shape))
        model(pixel_values=x)
        handle.remove()
        assert got["shape"] == shapes[name]
    params = [p for m in model.modules() if isinstance(m, Pool2d) for p in m.parameters()]
    assert params
    _train_a_few_steps(model, params)


def test_huggingface_regnet_head_and_squeeze_excitation_pools():
    """RegNet has no stem pool (a strided conv); its head and every SE block pool with AdaptiveAvgPool2d."""
    torch.manual_seed(0)
    model = _regnet()
    x = torch.randn(2, 3, 32, 32)
    n_adaptive = sum(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    assert n_adaptive >= 2
    poolkit.swap_pooling(model, "gem", targets=(nn.AdaptiveAvgPool2d,), example_input={"pixel_values": x})
    pools = [m for m in model.modules() if isinstance(m, Pool2d)]
    assert len(pools) == n_adaptive and all(p.registry_name == "gem" for p in pools)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())
    _train_a_few_steps(model, [p.rho for p in pools])


def test_swapped_eval_model_stays_deterministic():
    model = _resnet().eval()
    x = torch.randn(2, 3, 32, 32)
    poolkit.swap_pooling(model, "stochastic", targets=(nn.MaxPool2d,))
    poolkit.swap_pooling(model, "stochastic_mix", targets=(nn.AdaptiveAvgPool2d,))
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(pixel_values=x).logits
        torch.manual_seed(2)
        torch.testing.assert_close(model(pixel_values=x).logits, first, rtol=0, atol=0)
