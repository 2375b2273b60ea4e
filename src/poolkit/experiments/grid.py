"""Sweep grids: expanding a :class:`~poolkit.experiments.config.SweepConfig` into runs, and naming them.

A sweep expands into :class:`RunSpec` s, one validated ``RunConfig`` each, in launch order. Every run
lives in ``OUT/runs/<dataset>_<model>_<pool>_s<seed>_<id>/`` (:func:`run_dir_name`) where ``<id>`` is
``RunConfig.run_id()``, so rerunning a sweep finds its runs again.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from poolkit.experiments.config import PoolEntry, SweepConfig, SweepConfigError

__all__ = ["RunSpec", "expand_sweep", "run_dir_name"]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep.

    Attributes:
        config: the fully resolved run config (``RunConfig.to_dict()``): what ``config.yaml`` will hold.
        run_id: ``RunConfig.run_id()``, the first 10 hex digits of the config's SHA-256.
        name: the run directory's name, ``<dataset>_<model>_<pool>_s<seed>_<run_id>``.
        method: the pool and the options the sweep gave it, e.g. ``tmaxavg(k=2, threshold=0.3)``.
        variant: other run keys that vary across the sweep (besides dataset, model, pool and seed),
            e.g. ``width=0.5``; empty when none do.
    """

    config: dict[str, Any]
    run_id: str
    name: str
    method: str
    variant: str = ""

    def __str__(self) -> str:
        extra = f" [{self.variant}]" if self.variant else ""
        c = self.config
        return f"{c['dataset']} {c['model']} {self.method}{extra} seed {c['seed']}"


def run_dir_name(config: Mapping[str, Any], run_id: str) -> str:
    """``<dataset>_<model>_<pool>_s<seed>_<run_id>`` for a resolved run config."""
    return f"{config['dataset']}_{config['model']}_{config['pool']}_s{config['seed']}_{run_id}"


def _method_label(pool: str, options: Mapping[str, Any]) -> str:
    if not options:
        return pool
    return f"{pool}({', '.join(f'{k}={v}' for k, v in options.items())})"


def _grid_points(sweep: SweepConfig) -> Iterator[dict[str, Any]]:
    """Every combination of the grid's values; seed is the outermost axis, so an interrupted sweep has
    finished whole seeds of every configuration rather than every seed of a few."""
    axes = sorted(sweep.grid, key=lambda a: a != "seed")
    choices: list[list[Any]] = []
    for axis in axes:
        if axis == "pool":
            choices.append([p for entry in sweep.grid[axis] for p in _as_entry(entry).expand()])
        else:
            choices.append(list(sweep.grid[axis]))
    for combo in itertools.product(*choices):
        point: dict[str, Any] = {}
        for axis, value in zip(axes, combo, strict=True):
            if axis == "pool":
                point["pool"], point["pool_options"] = value
            else:
                point[axis] = value
        yield point


def _as_entry(entry: PoolEntry | str) -> PoolEntry:
    return entry if isinstance(entry, PoolEntry) else PoolEntry(entry)


def expand_sweep(sweep: SweepConfig) -> list[RunSpec]:
    """Every run of a sweep, validated with ``RunConfig.from_dict``, in launch order.

    Precedence, lowest first: RunConfig defaults, ``train``, the grid point, then each matching
    override in file order. Overrides match on the values from ``train`` and the grid (the RunConfig
    default for a key set in neither).

    Raises:
        SweepConfigError: a run is invalid (the message names the run and the key), or two grid points
            are the same run.

    Example:
        >>> from poolkit.experiments import load_preset
        >>> runs = expand_sweep(load_preset("quick"))
        >>> len(runs), runs[0].name.startswith("mnist5k_vgg11_")
        (9, True)
    """
    from poolkit.train.config import RunConfig

    defaults = _run_defaults()
    specs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for point in _grid_points(sweep):
        base = {**sweep.train, **point}
        values = dict(base)
        for override in sweep.overrides:
            # Match against the defaults too, so `match: {stem: cifar}` also finds runs that leave
            # stem at its default.
            if override.matches({**defaults, **base}):
                values.update(override.set)
        pool = values.get("pool", defaults["pool"])
        method = _method_label(pool, values.get("pool_options", {}))
        where = ", ".join(
            f"{k}={method if k == 'pool' else v}" for k, v in point.items() if k != "pool_options"
        )
        try:
            config = RunConfig.from_dict(values)
        except ValueError as exc:
            raise SweepConfigError(f"sweep {sweep.name!r}, run {{{where}}}: {exc}") from None
        run_id = config.run_id()
        if run_id in seen:
            raise SweepConfigError(
                f"sweep {sweep.name!r}: the grid points {{{seen[run_id]}}} and {{{where}}} give the same run "
                f"(id {run_id}); remove one of them"
            )
        seen[run_id] = where
        resolved = config.to_dict()
        specs.append(RunSpec(resolved, run_id, run_dir_name(resolved, run_id), method))
    return _with_variants(specs)


def _run_defaults() -> dict[str, Any]:
    import dataclasses

    from poolkit.train.config import RunConfig

    out: dict[str, Any] = {}
    for f in dataclasses.fields(RunConfig):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _with_variants(specs: list[RunSpec]) -> list[RunSpec]:
    """Name the run keys that vary among runs of one dataset, model, method and seed (e.g. a ``width``
    axis). Keys that differ only between datasets or models (an override's ``epochs`` for Tiny
    ImageNet) are not variants: they do not split a row of the results table."""
    from poolkit.train.config import NON_RESULT_KEYS

    fixed = {"dataset", "model", "pool", "pool_options", "seed", *NON_RESULT_KEYS}
    keys = [k for k in (specs[0].config if specs else {}) if k not in fixed]
    groups: dict[tuple[Any, ...], list[RunSpec]] = {}
    for spec in specs:
        c = spec.config
        groups.setdefault((c["dataset"], c["model"], spec.method, c["seed"]), []).append(spec)

    def varies(key: str) -> bool:
        return any(len({json.dumps(s.config[key], sort_keys=True) for s in g}) > 1 for g in groups.values())

    varying = [k for k in keys if varies(k)]
    if not varying:
        return specs
    return [
        RunSpec(s.config, s.run_id, s.name, s.method, ", ".join(f"{k}={s.config[k]}" for k in varying))
        for s in specs
    ]
