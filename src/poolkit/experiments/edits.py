"""Edits of a sweep document before it is validated: ``--set KEY=VALUE`` and ``${data_dir}``."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from poolkit.experiments.schema import SweepConfigError

__all__ = [
    "DATA_DIR_VAR",
    "apply_sets",
    "find_placeholders",
    "missing_data_dir_message",
    "parse_set",
    "substitute",
]

DATA_DIR_VAR = "${data_dir}"


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


def apply_sets(doc: dict[str, Any], sets: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Apply ``--set`` edits to a raw sweep document (returns a new document).

    ``section.key=value`` edits that section (``grid.seed=[0]``, ``train.epochs=2``,
    ``slurm.partition=gpu``, ``local.workers=2``); ``name``/``description`` set the top-level value;
    a bare run key that is a grid axis replaces the axis; any other bare run key is forced on every
    run (appended as a last, match-all override, so it beats the file's overrides).
    """
    doc = copy.deepcopy(doc)
    from poolkit.train.config import RunConfig

    run_keys = RunConfig.keys()
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


def find_placeholders(node: Any, where: str = "") -> list[tuple[str, str]]:
    """``(location, text)`` of every string that contains ``${data_dir}``."""
    found = []
    if isinstance(node, Mapping):
        for k, v in node.items():
            found += find_placeholders(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += find_placeholders(v, f"{where}[{i}]")
    elif isinstance(node, str) and DATA_DIR_VAR in node:
        found.append((where, node))
    return found


def substitute(node: Any, data_dir: str) -> Any:
    if isinstance(node, dict):
        return {k: substitute(v, data_dir) for k, v in node.items()}
    if isinstance(node, list):
        return [substitute(v, data_dir) for v in node]
    if isinstance(node, str):
        return node.replace(DATA_DIR_VAR, data_dir)
    return node


def missing_data_dir_message(doc: Mapping[str, Any], name: str, preset: str | None) -> str:
    uses = []
    for item in doc.get("overrides") or []:
        if not isinstance(item, Mapping):
            continue
        for key, value in (item.get("set") or {}).items():
            if isinstance(value, str) and DATA_DIR_VAR in value:
                match = item.get("match") or {}
                scope = ", ".join(f"{k}={v}" for k, v in match.items()) or "every run"
                uses.append(f"  {key} = {value}   (for {scope})")
    for where, value in find_placeholders({k: v for k, v in doc.items() if k != "overrides"}):
        uses.append(f"  {where} = {value}")
    command = f"poolkit reproduce --preset {preset}" if preset else "poolkit sweep CONFIG"
    return (
        f"sweep {name!r} needs the data root: pass --data-dir DIR (e.g. `{command} --data-dir /data`). "
        f"The sweep reads:\n" + "\n".join(uses) + "\nwith ${data_dir} replaced by DIR."
    )
