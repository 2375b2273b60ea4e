"""The window machinery against brute force: output sizes, counts, masks, unfolding, top-k."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from poolkit.layers.windows import (
    PoolGeometry,
    min_window_count,
    unfold_windows,
    window_count,
    window_mask,
    window_sum,
    window_topk_mean,
)

CASES = [
    (k, s, p, d, c, size)
    for k, s, d, c, size in itertools.product((1, 2, 3), (1, 2, 3), (1, 2), (False, True), (4, 7))
    for p in range(k // 2 + 1)
]


def brute_windows(x: torch.Tensor, g: PoolGeometry):
    """Yield ((i, j), list of real values) per output cell, straight from the definition."""
    height, width = x.shape[-2:]
    out_h, out_w = g.output_size(height, width)
    for i, j in itertools.product(range(out_h), range(out_w)):
        cells = []
        for a, b in itertools.product(range(g.kernel_size[0]), range(g.kernel_size[1])):
            r = i * g.stride[0] - g.padding[0] + a * g.dilation[0]
            c = j * g.stride[1] - g.padding[1] + b * g.dilation[1]
            if 0 <= r < height and 0 <= c < width:
                cells.append(x[r, c].item())
        yield (i, j), cells


@pytest.mark.parametrize(("k", "s", "p", "d", "c", "size"), CASES)
def test_against_brute_force(k, s, p, d, c, size):
    x2 = torch.randn(size, size + 1)
    try:
        expected_shape = nn.MaxPool2d(k, s, p, d, ceil_mode=c)(x2[None, None]).shape[-2:]
    except RuntimeError:
        with pytest.raises(ValueError):
            PoolGeometry.create(k, s, p, d, c).output_size(size, size + 1)
        return
    g = PoolGeometry.create(k, s, p, d, c)
    assert g.output_size(size, size + 1) == tuple(expected_shape)
    x = x2[None, None]
    counts = window_count(g, size, size + 1)
    mask = window_mask(g, size, size + 1)
    sums = window_sum(x, g)[0, 0]
    windows = unfold_windows(x, g, float("nan"))[0, 0]
    top2 = window_topk_mean(x, g, min(2, g.area))[0, 0]
    smallest = None
    for (i, j), cells in brute_windows(x2, g):
        assert counts[i, j] == len(cells)
        assert mask[i, j].sum() == len(cells)
        assert torch.isnan(windows[i, j]).sum() == g.area - len(cells)
        assert sorted(windows[i, j][~torch.isnan(windows[i, j])].tolist()) == pytest.approx(sorted(cells))
        assert sums[i, j].item() == pytest.approx(sum(cells), abs=1e-5)
        if cells:
            best = sorted(cells, reverse=True)[: min(2, g.area, len(cells))]
            assert top2[i, j].item() == pytest.approx(sum(best) / len(best), abs=1e-5)
        smallest = len(cells) if smallest is None else min(smallest, len(cells))
    assert min_window_count(g, size, size + 1) == smallest


def test_geometry_validation_and_cache():
    assert PoolGeometry.create(2) is PoolGeometry.create(2, None, 0, 1, False)
    assert PoolGeometry.create([3, 2], stride=[1, 2]).kernel_size == (3, 2)
    assert PoolGeometry.create((3, 2)).stride == (3, 2)
    for bad, match in [
        ({"kernel_size": 0}, "kernel_size must be positive"),
        ({"kernel_size": 2, "stride": 0}, "stride must be positive"),
        ({"kernel_size": 2, "padding": -1}, "non-negative"),
        ({"kernel_size": 3, "padding": 2}, "over half the kernel"),
        ({"kernel_size": 2, "dilation": 0}, "dilation must be positive"),
        ({"kernel_size": "2"}, "int or a tuple of 2 ints"),
        ({"kernel_size": (1, 2, 3)}, "int or a tuple of 2 ints"),
        ({"kernel_size": True}, "int or a tuple of 2 ints"),
    ]:
        with pytest.raises(ValueError, match=match):
            PoolGeometry.create(**bad)


def test_whole_map_geometry():
    g = PoolGeometry.whole(5, 7)
    assert g.output_size(5, 7) == (1, 1) and g.area == 35
