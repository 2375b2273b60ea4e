"""The sweep configuration: its YAML schema, validation, ``--set`` edits, ``${data_dir}`` and presets.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

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
_DATA_DIR_VAR = "${data_dir}"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class SweepConfigError(ValueError):
    """A sweep file is invalid. The message names the key (``grid.pool[1].options.k``) and the fix."""


# ----------------------------------------------------------------------------------------------------------
# Run-level knowledge, borrowed from poolkit.train (imported lazily: `poolkit --help` must stay fast).


def run_config_keys() -> list[str]:
    """Every key a run config accepts (``poolkit.train.config.RunConfig.keys()``), in order."""
    from poolkit.train.config import RunConfig

    return RunConfig.keys()


def _environment_keys() -> frozenset[str]:
    """Run keys that do not change results (left out of the run id): they cannot be grid axes,
    because two runs differing only in them would be the same run."""
    from poolkit.train.config import NON_RESULT_KEYS

    return NON_RESULT_KEYS


def _grid_axis_keys() -> list[str]:
    return [k for k in run_config_keys() if k not in _environment_keys() and k != "pool_options"]


def _known_names(key: str) -> list[str] | None:
    """The valid names of a name-valued run key (to reject typos in ``match``), or None."""
    if key == "pool":
        from poolkit import list_pools

        return list_pools()
    if key == "model":
        from poolkit.models import list_models

        return list_models()
    if key == "dataset":
        from poolkit.data import list_datasets

        return list_datasets()
    return None


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
class LocalOptions:
    """The ``local:`` section: defaults of the local launcher (command-line flags win)."""

    workers: int = 1


@dataclass(frozen=True)
class SlurmOptions:
    """The ``slurm:`` section: how ``--launcher slurm`` submits the sweep's job array (via submitit).

    ``account``, ``qos`` and ``constraint`` are passed as additional ``#SBATCH`` parameters;
    ``tasks_per_node > 1`` runs each run as a DDP job of that many processes (one per GPU);
    ``cluster`` is submitit's executor: ``slurm`` (default), or ``local``/``debug`` to try a sweep out
    on one machine.
    """

    partition: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    timeout_min: int = 24 * 60
    array_parallelism: int | None = None
    tasks_per_node: int = 1
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    job_name: str | None = None
    setup: tuple[str, ...] = ()
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    cluster: str = "slurm"

    def to_yaml(self) -> dict[str, Any]:
        default = SlurmOptions()
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != getattr(default, f.name):
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out


_SLURM_TYPES: dict[str, tuple[type, ...]] = {
    "partition": (str,),
    "gpus_per_node": (int,),
    "cpus_per_task": (int,),
    "mem_gb": (int, float),
    "timeout_min": (int,),
    "array_parallelism": (int,),
    "tasks_per_node": (int,),
    "account": (str,),
    "qos": (str,),
    "constraint": (str,),
    "job_name": (str,),
    "setup": (list,),
    "additional_parameters": (dict,),
    "cluster": (str,),
}
_SLURM_CLUSTERS = ("slurm", "local", "debug")


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


def _fail(where: str, problem: str) -> SweepConfigError:
    return SweepConfigError(f"{where}: {problem}" if where else problem)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(where, f"expected a mapping (key: value), got {type(value).__name__} {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(where, f"keys must be strings, got {key!r}")
    return value


def _check_run_keys(keys: Iterable[str], where: str, allowed: Sequence[str], hint: str = "") -> None:
    for key in keys:
        if key not in allowed:
            extra = f" ({hint})" if hint else ""
            raise _fail(f"{where}.{key}", f"unknown key{extra}; valid keys are: {', '.join(allowed)}")


def _check_unique(values: list[Any], where: str) -> None:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            shown = v.to_yaml() if isinstance(v, PoolEntry) else v
            raise _fail(where, f"{shown!r} is listed twice")
        seen.append(v)


def _parse_pool_entry(entry: Any, where: str) -> PoolEntry:
    from poolkit import list_pools
    from poolkit.registry import pool_options

    if isinstance(entry, str):
        name, raw_options = entry, {}
    elif isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"name", "options"})
        if unknown:
            raise _fail(where, f"unknown key(s) {unknown}; a pool entry has 'name' and optional 'options'")
        if "name" not in entry:
            raise _fail(where, "a pool entry mapping needs a 'name' (e.g. {name: tmaxavg, options: {k: 2}})")
        name, raw_options = entry["name"], _check_mapping(entry.get("options"), f"{where}.options")
    else:
        raise _fail(where, f"expected a pool name or {{name: ..., options: {{...}}}}, got {entry!r}")
    if not isinstance(name, str) or name not in list_pools():
        raise _fail(f"{where}", f"unknown pool {name!r}; valid names are: {', '.join(list_pools())}")
    valid = pool_options(name)
    options: dict[str, list[Any]] = {}
    for key, value in raw_options.items():
        if key not in valid:
            listed = ", ".join(valid) if valid else "none"
            raise _fail(
                f"{where}.options.{key}", f"unknown option for pool {name!r}; its options are: {listed}"
            )
        values = _as_list(value)
        if not values:
            raise _fail(f"{where}.options.{key}", "an empty list of values (give at least one)")
        _check_unique(values, f"{where}.options.{key}")
        options[key] = values
    return PoolEntry(name, options)


def _parse_grid(raw: Any) -> dict[str, list[Any]]:
    grid_raw = _check_mapping(raw, "grid")
    axis_keys = _grid_axis_keys()
    for key in grid_raw:
        if key == "pool_options":
            raise _fail(
                "grid.pool_options",
                "pool options belong to a pool entry: grid.pool: [{name: tmaxavg, options: {k: [1, 2]}}]",
            )
        if key in _environment_keys():
            raise _fail(
                f"grid.{key}",
                "cannot be a grid axis (it does not change results, so every value "
                "would be the same run); set it in 'train' or with --set",
            )
    _check_run_keys(grid_raw, "grid", axis_keys)
    grid: dict[str, list[Any]] = {}
    for key, value in grid_raw.items():
        values = _as_list(value)
        if not values:
            raise _fail(f"grid.{key}", "an empty axis (give at least one value)")
        if key == "pool":
            entries = [_parse_pool_entry(v, f"grid.pool[{i}]") for i, v in enumerate(values)]
            _check_unique(entries, "grid.pool")
            grid[key] = entries
        else:
            for i, v in enumerate(values):
                if isinstance(v, Mapping | list):
                    raise _fail(f"grid.{key}[{i}]", f"expected a single value, got {v!r}")
            _check_unique(values, f"grid.{key}")
            names = _known_names(key)
            if names is not None:
                for v in values:
                    if v not in names:
                        raise _fail(
                            f"grid.{key}", f"unknown {key} {v!r}; valid names are: {', '.join(names)}"
                        )
            grid[key] = values
    return grid


def _parse_train(raw: Any, grid: Mapping[str, Any]) -> dict[str, Any]:
    train = dict(_check_mapping(raw, "train"))
    _check_run_keys(train, "train", run_config_keys())
    for key in train:
        if key in grid:
            raise _fail(f"train.{key}", f"{key!r} is also a grid axis; keep it in one place")
    if "pool_options" in train and "pool" in grid:
        raise _fail(
            "train.pool_options",
            "pool options belong to each pool entry of grid.pool: {name: tmaxavg, options: {k: 2}}",
        )
    return train


def _parse_overrides(raw: Any, grid: Mapping[str, Any]) -> tuple[Override, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise _fail("overrides", f"expected a list of {{match: ..., set: ...}} entries, got {raw!r}")
    keys = run_config_keys()
    out = []
    for i, item in enumerate(raw):
        where = f"overrides[{i}]"
        item = _check_mapping(item, where)
        unknown = sorted(set(item) - {"match", "set"})
        if unknown:
            raise _fail(where, f"unknown key(s) {unknown}; an override has 'match' (optional) and 'set'")
        match_raw = _check_mapping(item.get("match"), f"{where}.match")
        _check_run_keys(match_raw, f"{where}.match", keys)
        match: dict[str, list[Any]] = {}
        for key, value in match_raw.items():
            values = _as_list(value)
            names = _known_names(key)
            for v in values:
                if names is not None and v not in names:
                    raise _fail(
                        f"{where}.match.{key}", f"unknown {key} {v!r}; valid names are: {', '.join(names)}"
                    )
            match[key] = values
        if "set" not in item:
            raise _fail(where, "an override needs 'set' (the keys it changes)")
        set_ = dict(_check_mapping(item["set"], f"{where}.set"))
        if not set_:
            raise _fail(f"{where}.set", "an empty 'set' (give the keys this override changes)")
        _check_run_keys(set_, f"{where}.set", keys)
        for key in set_:
            if key in grid:
                raise _fail(
                    f"{where}.set.{key}",
                    f"{key!r} is a grid axis; an override cannot change it "
                    "(restrict the axis instead, e.g. --set grid.{key}=[...])".replace("{key}", key),
                )
            if key == "pool_options":
                raise _fail(
                    f"{where}.set.pool_options", "pool options belong to each pool entry of grid.pool"
                )
        out.append(Override(match, set_))
    return tuple(out)


def _parse_local(raw: Any) -> LocalOptions:
    local = _check_mapping(raw, "local")
    _check_run_keys(local, "local", ["workers"])
    workers = local.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise _fail("local.workers", f"expected an integer >= 1, got {workers!r}")
    return LocalOptions(workers=workers)


def _parse_slurm(raw: Any) -> SlurmOptions:
    slurm = dict(_check_mapping(raw, "slurm"))
    _check_run_keys(slurm, "slurm", list(_SLURM_TYPES))
    for key, value in slurm.items():
        types = _SLURM_TYPES[key]
        if value is None and SlurmOptions.__dataclass_fields__[key].default is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise _fail(f"slurm.{key}", f"expected {expected}, got {value!r}")
        if types[0] in (int, float) and value <= 0:
            raise _fail(f"slurm.{key}", f"expected a positive number, got {value!r}")
    if "setup" in slurm:
        if not all(isinstance(s, str) for s in slurm["setup"]):
            raise _fail("slurm.setup", "expected a list of shell commands (strings)")
        slurm["setup"] = tuple(slurm["setup"])
    if "additional_parameters" in slurm:
        slurm["additional_parameters"] = dict(slurm["additional_parameters"])
    if slurm.get("cluster", "slurm") not in _SLURM_CLUSTERS:
        raise _fail(
            "slurm.cluster", f"expected one of {', '.join(_SLURM_CLUSTERS)}, got {slurm['cluster']!r}"
        )
    return SlurmOptions(**slurm)


def _parse_sweep(doc: Any, default_name: str | None, *, allow_placeholders: bool) -> SweepConfig:
    doc = _check_mapping(doc, "sweep")
    unknown = [k for k in doc if k not in SWEEP_KEYS]
    if unknown:
        raise _fail(unknown[0], f"unknown top-level key; valid keys are: {', '.join(SWEEP_KEYS)}")
    unresolved = _find_placeholders(doc)
    if unresolved and not allow_placeholders:
        raise _fail(unresolved[0][0], f"{_DATA_DIR_VAR} is not substituted (load the file with load_sweep)")
    name = doc.get("name", default_name)
    if name is None:
        raise _fail("name", "a sweep needs a name (name: my-sweep); it names the default output directory")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise _fail("name", f"expected a name of letters, digits, '.', '_' or '-', got {name!r}")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise _fail("description", f"expected text, got {description!r}")
    grid = _parse_grid(doc.get("grid"))
    return SweepConfig(
        name=name,
        grid=grid,
        train=_parse_train(doc.get("train"), grid),
        overrides=_parse_overrides(doc.get("overrides"), grid),
        local=_parse_local(doc.get("local")),
        slurm=_parse_slurm(doc.get("slurm")),
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
    return dataclasses.replace(sweep, slurm=_parse_slurm(doc))


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def parse_time_limit(text: str) -> int:
    """A SLURM time limit in minutes (seconds round up): ``720``, ``90:00`` (minutes:seconds),
    ``12:00:00`` (hours:minutes:seconds), ``1-00``, ``1-12:00`` or ``1-12:00:00`` (days-hours...).

    Example:
        >>> [parse_time_limit(t) for t in ("720", "12:00:00", "1-00", "1-06:30", "0:30")]
        [720, 720, 1440, 1830, 1]
    """
    match = _TIME_RE.match(str(text).strip())
    if not match:
        raise SweepConfigError(
            f"time limit {text!r}: expected minutes (720), HH:MM:SS (12:00:00) or D-HH[:MM[:SS]] (1-00)"
        )
    days, a, b, c = match.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:
        hours, minutes, seconds = [*parts, 0, 0][:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(parts) == 1:
        total = parts[0] * 60
    elif len(parts) == 2:
        total = parts[0] * 60 + parts[1]
    else:
        total = parts[0] * 3600 + parts[1] * 60 + parts[2]
    minutes_total = -(-total // 60)
    if minutes_total < 1:
        raise SweepConfigError(f"time limit {text!r}: must be at least one minute")
    return minutes_total


# ----------------------------------------------------------------------------------------------------------
# --set edits and ${data_dir}.


def parse_set(items: Iterable[str]) -> list[tuple[str, Any]]:
    """Parse ``KEY=VALUE`` strings; VALUE is read as YAML (``3``, ``0.1``, ``true``, ``[0, 1]``, text).

    Example:
        >>> parse_set(["epochs=2", "grid.seed=[0, 1]", "slurm.partition=gpu"])
        [('epochs', 2), ('grid.seed', [0, 1]), ('slurm.partition', 'gpu')]
    """
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SweepConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. --set epochs=2)")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise SweepConfigError(f"--set {item!r}: VALUE is not valid YAML ({exc})") from None
        out.append((key, _yaml12_floats(value)))
    return out


def _yaml12_floats(value: Any) -> Any:
    """Read ``1e-3`` as a float, as the sweep file's loader does (plain YAML 1.1 keeps it text)."""
    from poolkit.train.config import yaml_scalar

    if isinstance(value, list):
        return [_yaml12_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: _yaml12_floats(v) for k, v in value.items()}
    if isinstance(value, str):
        parsed = yaml_scalar(value)
        return parsed if isinstance(parsed, float) else value
    return value


def _apply_sets(doc: dict[str, Any], sets: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Apply ``--set`` edits to a raw sweep document (returns a new document).

    ``section.key=value`` edits that section (``grid.seed=[0]``, ``train.epochs=2``,
    ``slurm.partition=gpu``, ``local.workers=2``); ``name``/``description`` set the top-level value;
    a bare run key that is a grid axis replaces the axis; any other bare run key is forced on every
    run (appended as a last, match-all override, so it beats the file's overrides).
    """
    doc = copy.deepcopy(doc)
    run_keys = run_config_keys()
    for key, value in sets:
        head, dot, rest = key.partition(".")
        if dot:
            if head not in ("grid", "train", "local", "slurm") or not rest or "." in rest:
                raise SweepConfigError(
                    f"--set {key}=...: a dotted key is SECTION.KEY with SECTION one of grid, train, local, "
                    "slurm (e.g. --set grid.seed=[0] or --set slurm.partition=gpu)"
                )
            section = doc.get(head)
            if section is None:
                section = doc[head] = {}
            if not isinstance(section, dict):
                raise SweepConfigError(f"--set {key}=...: the file's {head!r} is not a mapping")
            section[rest] = value
        elif key in ("name", "description"):
            doc[key] = value
        elif key in run_keys:
            grid = doc.get("grid") or {}
            if isinstance(grid, dict) and key in grid:
                grid[key] = value
            else:
                doc.setdefault("overrides", None)
                doc["overrides"] = [*(doc["overrides"] or []), {"set": {key: value}}]
        else:
            raise SweepConfigError(
                f"--set {key}=...: unknown key; use a run key ({', '.join(run_keys)}), name, description, "
                "or SECTION.KEY with SECTION one of grid, train, local, slurm"
            )
    return doc


def _find_placeholders(node: Any, where: str = "") -> list[tuple[str, str]]:
    """``(location, text)`` of every string that contains ``${data_dir}``."""
    found = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            found += _find_placeholders(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _find_placeholders(v, f"{where}[{i}]")
    elif isinstance(node, str) and _DATA_DIR_VAR in node:
        found.append((where, node))
    return found


def _substitute(node: Any, data_dir: str) -> Any:
    if isinstance(node, dict):
        return {k: _substitute(v, data_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, data_dir) for v in node]
    if isinstance(node, str):
        return node.replace(_DATA_DIR_VAR, data_dir)
    return node


def _missing_data_dir_message(doc: Mapping[str, Any], name: str, preset: str | None) -> str:
    uses = []
    for item in doc.get("overrides") or []:
        if not isinstance(item, Mapping):
            continue
        for key, value in (item.get("set") or {}).items():
            if isinstance(value, str) and _DATA_DIR_VAR in value:
                match = item.get("match") or {}
                scope = ", ".join(f"{k}={v}" for k, v in match.items()) or "every run"
                uses.append(f"  {key} = {value}   (for {scope})")
    for where, value in _find_placeholders({k: v for k, v in doc.items() if k != "overrides"}):
        uses.append(f"  {where} = {value}")
    command = f"poolkit reproduce --preset {preset}" if preset else "poolkit sweep CONFIG"
    return (
        f"sweep {name!r} needs the data root: pass --data-dir DIR (e.g. `{command} --data-dir /data`). "
        f"The sweep reads:\n" + "\n".join(uses) + "\nwith ${data_dir} replaced by DIR."
    )


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
    doc = _apply_sets(doc, parse_set(sets))
    if _find_placeholders(doc):
        if data_dir is not None:
            doc = _substitute(doc, str(Path(data_dir).expanduser()))
        elif not allow_missing_data_dir:
            raise SweepConfigError(_missing_data_dir_message(doc, doc.get("name", default_name), _preset))
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
