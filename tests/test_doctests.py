"""Run the docstring examples of the public modules (they print real numbers)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "poolkit",
    "poolkit.registry",
    "poolkit.surgery",
    "poolkit.layers.classic",
    "poolkit.layers.threshold",
    "poolkit.layers.blend",
    "poolkit.layers.attention",
    "poolkit.layers.literature",
    "poolkit.layers.fused",
    "poolkit.layers.global_pool",
    "poolkit.kernels.ops",
    "poolkit.text",
    "poolkit.errors",
    "poolkit.rundir",
    "poolkit.tracking.events",
    "poolkit.tracking.metrics_csv",
    "poolkit.tracking.progress",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.NORMALIZE_WHITESPACE, extraglobs={"torch": __import__("torch")}
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
    assert result.attempted > 0 or name == "poolkit.layers"
