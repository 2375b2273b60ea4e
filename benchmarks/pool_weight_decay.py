"""Weight decay on pooling parameters: the tables and the figure of docs/results.md from a finished sweep.

    poolkit sweep configs/pool-weight-decay.yaml --data-dir /path/to/cifar10-dev --out results/pwd
    python benchmarks/pool_weight_decay.py results/pwd/runs --figure docs/figures/pool_weight_decay.png

Reads every ``result.json`` under RUNS_DIR (the runs of configs/pool-weight-decay.yaml: learnable methods x
``pool_weight_decay`` x seeds) and prints, as Markdown:

* test top-1 (last epoch) mean ± sd over seeds per method and ``pool_weight_decay``, with the paired
  difference (same seed) of decayed minus exempt;
* the learned value per pooling layer (GeM's p, Learnable-T's T, the blend weight lambda = sigmoid(theta),
  averaged over channels for Channel-Adaptive), mean ± sd over seeds, per setting;
* how far weight decay alone would move a parameter that gets no loss gradient, for this sweep's schedule and
  for the paper preset's (SGD with momentum on one scalar, the same cosine schedule).

The figure has one panel per method: the learned value per layer, with and without pool weight decay.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from poolkit.registry import get_pool_spec

#: The learned value shown per method: the key of ``result.json``'s ``learned`` values, the symbol after the
#: method's registered label (``PoolSpec.title``) and the initial value.
_SHOWN: dict[str, tuple[str, str, float]] = {
    "gem": ("p", "p", 3.0),
    "learnable_t": ("threshold", "T", 0.3),
    "channel_adaptive": ("lambda", "λ (mean over channels)", 0.5),
    "stochastic_mix": ("lambda", "λ", 0.5),
}
#: The key, the label (``"Channel-Adaptive λ (mean over channels)"``) and the initial value per method.
QUANTITY: dict[str, tuple[str, str, float]] = {
    name: (key, f"{get_pool_spec(name).title} {symbol}", init) for name, (key, symbol, init) in _SHOWN.items()
}


def load(runs_dir: Path) -> list[dict[str, Any]]:
    """Every finished ``result.json`` under ``runs_dir`` that has a ``pool_weight_decay``."""
    results = []
    for path in sorted(runs_dir.glob("*/result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        if result.get("status") == "finished" and "pool_weight_decay" in result:
            results.append(result)
    if not results:
        raise SystemExit(f"no finished run with a pool_weight_decay under {runs_dir}")
    return results


def layer_values(result: dict[str, Any]) -> list[float]:
    """The method's learned value per downsampling layer (channel mean), in module order."""
    key = QUANTITY[result["pool"]][0]
    return [
        statistics.fmean(layer["values"][key])
        for name, layer in result["learned"].items()
        if name != "head.pool" and key in layer["values"]
    ]


def _mean_sd(values: list[float], digits: int) -> str:
    if not values:
        return "—"
    if len(values) < 2:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def decay_factor(epochs: int, steps_per_epoch: int, lr: float, weight_decay: float, momentum: float) -> float:
    """What SGD (momentum, weight decay, cosine lr to 0 per step) does to a parameter without loss gradient:
    the factor ``w_end / w_start``."""
    total = epochs * steps_per_epoch
    w, buf = 1.0, 0.0
    for i in range(total):
        rate = lr * 0.5 * (1.0 + math.cos(math.pi * i / total))
        grad = weight_decay * w
        buf = grad if i == 0 else momentum * buf + grad
        w -= rate * buf
    return w


def tables(results: list[dict[str, Any]]) -> str:
    by: dict[tuple[str, float], dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in results:
        by[(r["pool"], float(r["pool_weight_decay"]))][int(r["seed"])] = r
    methods = [m for m in QUANTITY if any(k[0] == m for k in by)]
    settings = sorted({k[1] for k in by})
    lines = [
        "| Method | " + " | ".join(f"pool_weight_decay {s:g}" for s in settings) + " | Δ (decayed − exempt), "
        "paired by seed |",
        "| --- | " + " | ".join("---" for _ in settings) + " | --- |",
    ]
    for m in methods:
        cells = [_mean_sd([r["test_top1"] for r in by[(m, s)].values()], 2) for s in settings]
        exempt, decayed = by.get((m, min(settings)), {}), by.get((m, max(settings)), {})
        diffs = [decayed[s]["test_top1"] - exempt[s]["test_top1"] for s in sorted(set(exempt) & set(decayed))]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {_mean_sd(diffs, 2) if diffs else '—'} |")
    lines.append("")
    n_layers = max(len(layer_values(r)) for r in results)
    lines.append(
        "| Method (initial value) | pool_weight_decay | "
        + " | ".join(f"layer {i + 1}" for i in range(n_layers))
        + " |"
    )
    lines.append("| --- | --- | " + " | ".join("---" for _ in range(n_layers)) + " |")
    for m in methods:
        _, label, init = QUANTITY[m]
        for s in settings:
            if (m, s) not in by:
                continue
            per_layer = list(zip(*(layer_values(r) for r in by[(m, s)].values()), strict=True))
            cells = [_mean_sd(list(v), 3) for v in per_layer]
            lines.append(f"| {label} ({init:g}) | {s:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in QUANTITY if any(r["pool"] == m for r in results)]
    settings = sorted({float(r["pool_weight_decay"]) for r in results})
    fig, axes = plt.subplots(1, len(methods), figsize=(3.4 * len(methods), 3.2), squeeze=False)
    for ax, m in zip(axes[0], methods, strict=True):
        _, label, init = QUANTITY[m]
        for s, colour, offset in zip(settings, ("tab:blue", "tab:red"), (-0.08, 0.08), strict=False):
            runs = [layer_values(r) for r in results if r["pool"] == m and float(r["pool_weight_decay"]) == s]
            if not runs:
                continue
            layers = range(1, len(runs[0]) + 1)
            for values in runs:  # each seed, faint
                ax.plot([x + offset for x in layers], values, "o", color=colour, alpha=0.35, ms=3)
            means = [statistics.fmean(v) for v in zip(*runs, strict=True)]
            ax.plot(layers, means, "-", color=colour, label=f"pool_weight_decay {s:g}")
        ax.axhline(init, color="grey", lw=0.8, ls=":", label=f"initial value {init:g}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("pooling layer")
        ax.set_xticks(list(layers))
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Learned pooling parameters with and without weight decay (VGG11, 3 seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs_dir", type=Path, help="the sweep's runs/ directory")
    parser.add_argument("--figure", type=Path, help="write the figure (PNG) here")
    args = parser.parse_args(argv)
    results = load(args.runs_dir)
    print(tables(results))
    r = results[0]
    print()
    for name, epochs, steps, lr, wd in (
        ("this sweep", r["epochs"], 79, 0.05, 5e-4),
        ("paper preset (CIFAR-100)", 200, 391, 0.1, 5e-4),
    ):
        factor = decay_factor(epochs, steps, lr, wd, 0.9)
        print(f"decay alone, {name}: {epochs} epochs x {steps} steps, lr {lr}: factor {factor:.3g}")
    if args.figure:
        figure(results, args.figure)
        print(f"\nfigure: {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
