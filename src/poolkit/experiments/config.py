"""The sweep configuration: its YAML schema, validation and presets (``--set`` edits and ``${data_dir}``
are :mod:`poolkit.experiments.edits`, the ``local:``/``slurm:`` sections
:mod:`poolkit.experiments.launch_options`).

A sweep is a YAML mapping (see ``docs/experiments.md`` for the full schema)::

    name: quick
    grid:                         # the product of these axes; a scalar is a one-value axis
      dataset: [mnist5k]
      model: [vgg11]
      pool:                       # a name, or {name: ..., options: {key: value or [values]}}
        - max
        - {name: tmaxavg, options: {k: [1, 2], threshold: 0.3}}
      seed: [0, 1, 2]
    train: {epochs: 4, width: 0.25}          # RunConfig keys shared by every run
    overrides:                    # applied in order to the runs whose grid values match
      - match: {dataset: cifar100}
        set: {data_dir: "${data_dir}/cifar-100-python"}
    local: {workers: 2}           # the local launcher's default number of worker processes
    slurm: {partition: gpu, gpus_per_node: 1, timeout_min: 600}

Everything is checked before anything runs: an unknown key or a bad value raises
:class:`SweepConfigError` (a ``ValueError``) naming where it is in the file and what is allowed.
Run-level rules (types, ranges, names of models and datasets) are checked by
``RunConfig.from_dict`` on every expanded run in :func:`poolkit.experiments.grid.expand_sweep`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from poolkit.experiments.edits import (
    DATA_DIR_VAR,
    apply_sets,
    find_placeholders,
    missing_data_dir_message,
    parse_set,
    substitute,
)
from poolkit.experiments.launch_options import (
    LocalOptions,
    SlurmOptions,
    parse_local,
    parse_slurm,
    parse_time_limit,
)
from poolkit.experiments.schema import SweepConfigError, as_list, check_keys, check_mapping, fail

if TYPE_CHECKING:
    from poolkit.train.fields import Key

__all__ = [
    "SWEEP_KEYS",
    "LocalOptions",
    "Override",
    "PoolEntry",
    "SlurmOptions",
    "SweepConfig",
    "SweepConfigError",
    "list_presets",
    "load_preset",
    "load_sweep",
    "parse_set",
    "parse_time_limit",
    "preset_path",
    "run_config_keys",
    "update_slurm",
]

#: The top-level keys of a sweep file.
SWEEP_KEYS = ("name", "description", "grid", "train", "overrides", "local", "slurm")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ----------------------------------------------------------------------------------------------------------
# Run-level knowledge: RunConfig's field metadata (poolkit.train.fields), imported lazily (`poolkit --help`
# must stay fast).


def _run_keys() -> tuple[tuple[str, Key], ...]:
    from poolkit.train.config import RunConfig
    from poolkit.train.fields import run_keys

    return run_keys(RunConfig)


def run_config_keys() -> list[str]:
    """Every key a run config accepts (``poolkit.train.config.RunConfig.keys()``), in order."""
    return [name for name, _ in _run_keys()]


def _environment_keys() -> frozenset[str]:
    """Run keys that do not change results (``Key.result`` false, left out of the run id): they cannot be
    grid axes, because two runs differing only in them would be the same run."""
    return frozenset(name for name, spec in _run_keys() if not spec.result)


def _grid_axis_keys() -> list[str]:
    """Run keys a grid may vary: those that change results, except ``pool_options`` (``Key.grid`` false:
    options belong to each entry of ``grid.pool``)."""
    return [name for name, spec in _run_keys() if spec.result and spec.grid]


def _known_names(key: str) -> list[str] | None:
    """The valid names of a name-valued run key (``Key.names``: pools, models, datasets), to reject typos
    in ``match``; None for any other key."""
    spec = dict(_run_keys()).get(key)
    return spec.names() if spec is not None and spec.names is not None else None


# ----------------------------------------------------------------------------------------------------------
# The parts of a sweep.


def _compact(values: list[Any]) -> Any:
    """A one-value list as the value itself (unless the value is a list, which must stay nested)."""
    return values[0] if len(values) == 1 and not isinstance(values[0], list) else list(values)


@dataclass(frozen=True)
class PoolEntry:
    """One entry of ``grid.pool``: a method and its options; list-valued options expand as a grid.

    Example:
        >>> PoolEntry("tmaxavg", {"k": [1, 2], "threshold": [0.3]}).expand()
        [('tmaxavg', {'k': 1, 'threshold': 0.3}), ('tmaxavg', {'k': 2, 'threshold': 0.3})]
    """

    name: str
    options: dict[str, list[Any]] = field(default_factory=dict)

    def expand(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (name, options) combination this entry stands for, in option order."""
        keys = list(self.options)
        return [
            (self.name, dict(zip(keys, values, strict=True)))
            for values in itertools.product(*(self.options[k] for k in keys))
        ]

    def to_yaml(self) -> str | dict[str, Any]:
        if not self.options:
            return self.name
        return {"name": self.name, "options": {k: _compact(v) for k, v in self.options.items()}}


@dataclass(frozen=True)
class Override:
    """Settings for the runs whose grid/train values match: ``match`` maps a key to allowed values
    (an empty ``match`` matches every run); ``set`` maps run keys to values."""

    match: dict[str, list[Any]]
    set: dict[str, Any]

    def matches(self, run: Mapping[str, Any]) -> bool:
        return all(run.get(key) in values for key, values in self.match.items())

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.match:
            out["match"] = {k: _compact(v) for k, v in self.match.items()}
        out["set"] = dict(self.set)
        return out


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: build it with :func:`load_sweep`, :func:`load_preset` or :meth:`from_dict`.

    ``grid`` maps each axis (a run key) to its values, ``pool`` values being :class:`PoolEntry`;
    ``train`` holds the keys shared by every run; ``overrides`` apply in order.
    Expand it into runs with :func:`poolkit.experiments.expand_sweep`.
    """

    name: str
    grid: dict[str, list[Any]]
    train: dict[str, Any] = field(default_factory=dict)
    overrides: tuple[Override, ...] = ()
    local: LocalOptions = field(default_factory=LocalOptions)
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    description: str | None = None

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, default_name: str | None = None) -> SweepConfig:
        """Validate a parsed sweep document (``${data_dir}`` must already be substituted)."""
        return _parse_sweep(doc, default_name, allow_placeholders=False)

    def to_dict(self) -> dict[str, Any]:
        """The sweep as a YAML-ready mapping; ``SweepConfig.from_dict(s.to_dict()) == s``."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        out["grid"] = {
            axis: [v.to_yaml() for v in values] if axis == "pool" else list(values)
            for axis, values in self.grid.items()
        }
        if self.train:
            out["train"] = dict(self.train)
        if self.overrides:
            out["overrides"] = [o.to_yaml() for o in self.overrides]
        if self.local != LocalOptions():
            out["local"] = dataclasses.asdict(self.local)
        slurm = self.slurm.to_yaml()
        if slurm:
            out["slurm"] = slurm
        return out

    def to_yaml(self) -> str:
        """:meth:`to_dict` as YAML (what ``OUT/runs/sweep.yaml`` holds; loadable with :func:`load_sweep`)."""
        return yaml.dump(self.to_dict(), Dumper=_SweepDumper, sort_keys=False, width=110, allow_unicode=True)

    @property
    def size(self) -> int:
        """The number of runs the grid expands to."""
        n = 1
        for axis, values in self.grid.items():
            n *= sum(len(v.expand()) for v in values) if axis == "pool" else len(values)
        return n


class _SweepDumper(yaml.SafeDumper):
    """Block mappings, and flow style for lists of plain values (``seed: [0, 1, 2]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(not isinstance(v, dict | list) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_SweepDumper.add_representer(list, _represent_list)


# ----------------------------------------------------------------------------------------------------------
# Parsing and validation.


def _check_unique(values: list[Any], where: str) -> None:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            shown = v.to_yaml() if isinstance(v, PoolEntry) else v
            raise fail(where, f"{shown!r} is listed twice")
        seen.append(v)


def _parse_pool_entry(entry: Any, where: str) -> PoolEntry:
    from poolkit import list_pools
    from poolkit.registry import pool_options

    if isinstance(entry, str):
        name, raw_options = entry, {}
    elif isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"name", "options"})
        if unknown:
            raise fail(where, f"unknown key(s) {unknown}; a pool entry has 'name' and optional 'options'")
        if "name" not in entry:
            raise fail(where, "a pool entry mapping needs a 'name' (e.g. {name: tmaxavg, options: {k: 2}})")
        name, raw_options = entry["name"], check_mapping(entry.get("options"), f"{where}.options")
    else:
        raise fail(where, f"expected a pool name or {{name: ..., options: {{...}}}}, got {entry!r}")
    if not isinstance(name, str) or name not in list_pools():
        raise fail(f"{where}", f"unknown pool {name!r}; valid names are: {', '.join(list_pools())}")
    valid = pool_options(name)
    options: dict[str, list[Any]] = {}
    for key, value in raw_options.items():
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise fail(
                f"{where}.options.{key}", f"unknown option for pool {name!r}; its options are: {listed}"
            )
        values = as_list(value)
        if not values:
            raise fail(f"{where}.options.{key}", "an empty list of values (give at least one)")
        _check_unique(values, f"{where}.options.{key}")
        options[key] = values
    return PoolEntry(name, options)


def _parse_grid(raw: Any) -> dict[str, list[Any]]:
    grid_raw = check_mapping(raw, "grid")
    axis_keys = _grid_axis_keys()
    for key in grid_raw:
        if key == "pool_options":
            raise fail(
                "grid.pool_options",
                "pool options belong to a pool entry: grid.pool: [{name: tmaxavg, options: {k: [1, 2]}}]",
            )
        if key in _environment_keys():
            raise fail(
                f"grid.{key}",
                "cannot be a grid axis (it does not change results, so every value "
                "would be the same run); set it in 'train' or with --set",
            )
    check_keys(grid_raw, "grid", axis_keys)
    grid: dict[str, list[Any]] = {}
    for key, value in grid_raw.items():
        values = as_list(value)
        if not values:
            raise fail(f"grid.{key}", "an empty axis (give at least one value)")
        if key == "pool":
            entries = [_parse_pool_entry(v, f"grid.pool[{i}]") for i, v in enumerate(values)]
            _check_unique(entries, "grid.pool")
            grid[key] = entries
        else:
            for i, v in enumerate(values):
                if isinstance(v, Mapping | list):
                    raise fail(f"grid.{key}[{i}]", f"expected a single value, got {v!r}")
            _check_unique(values, f"grid.{key}")
            names = _known_names(key)
            if names is not None:
                for v in values:
                    if v not in names:
                        raise fail(f"grid.{key}", f"unknown {key} {v!r}; valid names are: {', '.join(names)}")
            grid[key] = values
    return grid


def _parse_train(raw: Any, grid: Mapping[str, Any]) -> dict[str, Any]:
    train = dict(check_mapping(raw, "train"))
    check_keys(train, "train", run_config_keys())
    for key in train:
        if key in grid:
            raise fail(f"train.{key}", f"{key!r} is also a grid axis; keep it in one place")
    if "pool_options" in train and "pool" in grid:
        raise fail(
            "train.pool_options",
            "pool options belong to each pool entry of grid.pool: {name: tmaxavg, options: {k: 2}}",
        )
    return train


def _parse_overrides(raw: Any, grid: Mapping[str, Any]) -> tuple[Override, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise fail("overrides", f"expected a list of {{match: ..., set: ...}} entries, got {raw!r}")
    keys = run_config_keys()
    out = []
    for i, item in enumerate(raw):
        where = f"overrides[{i}]"
        item = check_mapping(item, where)
        unknown = sorted(set(item) - {"match", "set"})
        if unknown:
            raise fail(where, f"unknown key(s) {unknown}; an override has 'match' (optional) and 'set'")
        match_raw = check_mapping(item.get("match"), f"{where}.match")
        check_keys(match_raw, f"{where}.match", keys)
        match: dict[str, list[Any]] = {}
        for key, value in match_raw.items():
            values = as_list(value)
            names = _known_names(key)
            for v in values:
                if names is not None and v not in names:
                    raise fail(
                        f"{where}.match.{key}", f"unknown {key} {v!r}; valid names are: {', '.join(names)}"
                    )
            match[key] = values
        if "set" not in item:
            raise fail(where, "an override needs 'set' (the keys it changes)")
        set_ = dict(check_mapping(item["set"], f"{where}.set"))
        if not set_:
            raise fail(f"{where}.set", "an empty 'set' (give the keys this override changes)")
        check_keys(set_, f"{where}.set", keys)
        for key in set_:
            if key in grid:
                raise fail(
                    f"{where}.set.{key}",
                    f"{key!r} is a grid axis; an override cannot change it "
                    "(restrict the axis instead, e.g. --set grid.{key}=[...])".replace("{key}", key),
                )
            if key == "pool_options":
                raise fail(f"{where}.set.pool_options", "pool options belong to each pool entry of grid.pool")
        out.append(Override(match, set_))
    return tuple(out)


def _parse_sweep(doc: Any, default_name: str | None, *, allow_placeholders: bool) -> SweepConfig:
    doc = check_mapping(doc, "sweep")
    unknown = [k for k in doc if k not in SWEEP_KEYS]
    if unknown:
        raise fail(unknown[0], f"unknown top-level key; valid keys are: {', '.join(SWEEP_KEYS)}")
    unresolved = find_placeholders(doc)
    if unresolved and not allow_placeholders:
        raise fail(unresolved[0][0], f"{DATA_DIR_VAR} is not substituted (load the file with load_sweep)")
    name = doc.get("name", default_name)
    if name is None:
        raise fail("name", "a sweep needs a name (name: my-sweep); it names the default output directory")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise fail("name", f"expected a name of letters, digits, '.', '_' or '-', got {name!r}")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise fail("description", f"expected text, got {description!r}")
    grid = _parse_grid(doc.get("grid"))
    return SweepConfig(
        name=name,
        grid=grid,
        train=_parse_train(doc.get("train"), grid),
        overrides=_parse_overrides(doc.get("overrides"), grid),
        local=parse_local(doc.get("local")),
        slurm=parse_slurm(doc.get("slurm")),
        description=description,
    )


def update_slurm(sweep: SweepConfig, changes: Mapping[str, Any]) -> SweepConfig:
    """A copy of ``sweep`` with keys of its ``slurm`` section changed, validated as the file's section
    is (the ``poolkit sweep`` flags ``--partition``, ``--time``, ... go through here).

    Example:
        >>> sweep = update_slurm(load_preset("quick"), {"partition": "gpu", "timeout_min": 60})
        >>> sweep.slurm.partition, sweep.slurm.timeout_min
        ('gpu', 60)
    """
    if not changes:
        return sweep
    doc = sweep.slurm.to_yaml()
    doc.update(changes)
    return dataclasses.replace(sweep, slurm=parse_slurm(doc))


# ----------------------------------------------------------------------------------------------------------
# Loading files and presets.


def _read_yaml(path: Path) -> dict[str, Any]:
    from poolkit.train.config import load_config_file

    if not path.is_file():
        raise SweepConfigError(
            f"sweep file {str(path)!r} does not exist (for a shipped sweep use --preset NAME; "
            f"presets: {', '.join(list_presets())})"
        )
    try:
        # The run config's loader: it reads 5e-4 as a float (plain YAML 1.1 reads it as text).
        return load_config_file(path)
    except ValueError as exc:
        raise SweepConfigError(str(exc).replace("config file", "sweep file", 1)) from None


def load_sweep(
    source: str | os.PathLike[str] | Mapping[str, Any],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
    allow_missing_data_dir: bool = False,
    _preset: str | None = None,
) -> SweepConfig:
    """Read, edit and validate a sweep.

    Args:
        source: a YAML file, or an already parsed mapping.
        data_dir: replaces every ``${data_dir}`` in the file (the ``--data-dir`` flag).
        sets: ``--set`` edits, ``"KEY=VALUE"`` strings (see :func:`parse_set` and ``docs/experiments.md``).
        allow_missing_data_dir: keep ``${data_dir}`` as is when ``data_dir`` is None (for a dry run)
            instead of raising.

    Raises:
        SweepConfigError: the file is missing or invalid, or it uses ``${data_dir}`` and no
            ``data_dir`` was given (the message lists what the sweep reads from it).

    Example:
        >>> sweep = load_preset("quick")
        >>> sweep.name, sweep.size
        ('quick', 9)
    """
    if isinstance(source, Mapping):
        doc, default_name = copy.deepcopy(dict(source)), None
    else:
        path = Path(source)
        doc, default_name = _read_yaml(path), path.stem
    if not isinstance(doc, dict):
        raise SweepConfigError(f"a sweep file holds a mapping (name:, grid:, ...), got {type(doc).__name__}")
    doc = apply_sets(doc, parse_set(sets))
    if find_placeholders(doc):
        if data_dir is not None:
            doc = substitute(doc, str(Path(data_dir).expanduser()))
        elif not allow_missing_data_dir:
            raise SweepConfigError(missing_data_dir_message(doc, doc.get("name", default_name), _preset))
    elif data_dir is not None:
        # The file does not use ${data_dir}: the flag is the default data directory of every run
        # (the lowest-precedence place, so the file's overrides still choose per dataset).
        train = doc.get("train")
        doc["train"] = {
            **(train if isinstance(train, dict) else {}),
            "data_dir": str(Path(data_dir).expanduser()),
        }
    return _parse_sweep(doc, default_name, allow_placeholders=allow_missing_data_dir)


def list_presets() -> list[str]:
    """The names of the sweeps shipped with poolkit (``--preset NAME``), sorted."""
    folder = resources.files("poolkit.experiments") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str) -> Path:
    """The file of a shipped preset; ``ValueError`` listing the presets for an unknown name."""
    presets = list_presets()
    if name not in presets:
        raise SweepConfigError(f"unknown preset {name!r}; presets are: {', '.join(presets)}")
    return Path(str(resources.files("poolkit.experiments") / "presets" / f"{name}.yaml"))


def load_preset(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    sets: Sequence[str] = (),
    allow_missing_data_dir: bool = False,
) -> SweepConfig:
    """Load a shipped preset (``quick``, ``paper``, ``ablation``) with :func:`load_sweep`."""
    return load_sweep(
        preset_path(name),
        data_dir=data_dir,
        sets=sets,
        allow_missing_data_dir=allow_missing_data_dir,
        _preset=name,
    )
