"""The run config's keys, described once: each :class:`~poolkit.train.RunConfig` field carries a
:class:`Key` (its kind, allowed values, command-line flag, help and documentation) in its dataclass
metadata, and that one description drives

* validation: :func:`validate` checks every field in one loop (types first, then ranges and choices);
* the ``poolkit train`` flags (:func:`poolkit.train.cli.add_arguments` generates one per key);
* the options table of ``docs/training.md`` (:func:`docs_table`; a test keeps the page equal to it);
* the sweep schema (``poolkit.experiments.config``: which keys a ``train:`` section or a grid axis takes).

Example:
    >>> from poolkit.train import RunConfig
    >>> key = run_key(RunConfig, "momentum")
    >>> key.kind, key.flag, key.allowed
    ('float', '--momentum', 'in [0, 1)')
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "Key", "docs_table", "key_metadata", "run_field", "run_key", "run_keys", "validate"]


@dataclass(frozen=True)
class Kind:
    """A kind of value: how the docs name it, how a flag parses it, what it accepts."""

    doc_type: str
    cli_type: Callable[[str], Any] | None
    accepts: Callable[[Any], bool]
    expected: str
    normalise: Callable[[Any], Any] = lambda value: value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _plain_mapping(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return all(isinstance(k, str) for k in value)


#: The kinds of run-config values (``Key.kind``).
KINDS: dict[str, Kind] = {
    "str": Kind("str", str, lambda v: isinstance(v, str), "a string"),
    "bool": Kind("bool", None, lambda v: isinstance(v, bool), "true or false"),
    "int": Kind("int", int, _is_int, "an integer"),
    "float": Kind("float", float, _is_number, "a finite number", float),
    "path": Kind("str", str, lambda v: isinstance(v, (str, os.PathLike)), "a path", os.fspath),
    "count": Kind("int", int, lambda v: _is_int(v) and v >= 1, "a positive integer"),
    "options": Kind(
        "mapping", None, lambda v: isinstance(v, Mapping), "a mapping of option names to values", dict
    ),
    # Checked by _check_loggers (a single name becomes a one-name list; names from poolkit.tracking).
    "loggers": Kind("list of str", None, lambda v: True, "a list of logger names"),
}


@dataclass(frozen=True)
class Key:
    """What one run-config key accepts and how it is offered and documented.

    Attributes:
        kind: a name of :data:`KINDS` (``"float"``, ``"bool"``...).
        help: the help of its ``poolkit train`` flag.
        doc: its meaning in the docs table (the flag is appended).
        nullable: ``None`` (``null``) is accepted too.
        choices: the values it accepts (a string key).
        check: ``check(value, config) -> bool``, a range or a rule across keys; ``allowed`` says what it
            accepts, with ``{key}`` replaced by the config's values (``"in [0, epochs) = [0, {epochs})"``).
        flag: the command-line flag (default: ``--`` + the key with dashes).
        doc_flag: how the docs table writes the flag, when not just the flag.
        result: False for keys that do not change what a run computes (left out of the run id).
        grid: False for keys that cannot be a sweep's grid axis.
        names: ``names()`` lists the valid values of a name key (a registry: models, pools, datasets).
    """

    kind: str
    help: str
    doc: str
    nullable: bool = False
    choices: tuple[str, ...] = ()
    check: Callable[[Any, Any], bool] | None = None
    allowed: str = ""
    flag: str = ""
    doc_flag: str = ""
    result: bool = True
    grid: bool = True
    names: Callable[[], list[str]] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; kinds are: {', '.join(KINDS)}")
        if self.choices and not self.allowed:
            object.__setattr__(self, "allowed", f"one of: {', '.join(self.choices)}")
        if self.check is not None and not self.allowed:
            raise ValueError("a Key with a check needs allowed= (what the check accepts, for the message)")


def run_field(default: Any = dataclasses.MISSING, **meta: Any) -> Any:
    """A dataclass field with this default, carrying a :class:`Key` built from ``meta``."""
    return dataclasses.field(default=default, metadata=key_metadata(**meta))


def key_metadata(**meta: Any) -> dict[str, Key]:
    """A :class:`Key`, as the ``metadata`` of a ``dataclasses.field`` (for fields with a default_factory)."""
    return {"key": Key(**meta)}


@functools.cache
def run_keys(cls: type) -> tuple[tuple[str, Key], ...]:
    """``(name, Key)`` of every field of a config dataclass, in field order, each with its flag set."""
    out = []
    for f in dataclasses.fields(cls):
        spec: Key = f.metadata["key"]
        if not spec.flag:
            spec = dataclasses.replace(spec, flag="--" + f.name.replace("_", "-"))
        out.append((f.name, spec))
    return tuple(out)


def run_key(cls: type, name: str) -> Key:
    """The :class:`Key` of one field (``KeyError`` if there is none)."""
    return dict(run_keys(cls))[name]


def validate(config: Any) -> None:
    """Check and normalise every field of ``config`` (a frozen dataclass of :func:`run_field`s) in place.

    First every value's kind (``RunConfig: epochs must be an integer, got 2.5 (float)``), then, once all
    kinds are right, every choice and range (``RunConfig: momentum must be in [0, 1), got 1.0``) and name
    (``RunConfig: unknown model 'vgg17'; valid models are: ...``).
    """
    keys = run_keys(type(config))
    for name, spec in keys:
        value = getattr(config, name)
        if value is None and spec.nullable:
            continue
        kind = KINDS[spec.kind]
        if spec.kind == "loggers":
            value = _check_loggers(name, value)
        elif not kind.accepts(value):
            if spec.kind == "float" and isinstance(value, str) and _parses_as_float(value):
                raise ValueError(
                    f"RunConfig: {name} must be a number, got the string {value!r}; in YAML 1.1 a float "
                    f"needs a dot (write {float(value)!r}) or read the file with "
                    "poolkit.train.load_config_file"
                )
            expected = kind.expected + (" or null" if spec.nullable else "")
            raise ValueError(f"RunConfig: {name} must be {expected}, got {value!r} ({type(value).__name__})")
        value = kind.normalise(value)
        if spec.kind == "options" and not _plain_mapping(value):
            raise ValueError(
                f"RunConfig: {name} must be a mapping of option names to plain values (numbers, strings, "
                f"booleans), got {value!r} ({type(value).__name__})"
            )
        object.__setattr__(config, name, value)
    for name, spec in keys:
        value = getattr(config, name)
        if value is None and spec.nullable:
            continue
        ok = (not spec.choices or value in spec.choices) and (spec.check is None or spec.check(value, config))
        if not ok:
            allowed = spec.allowed.format(**{n: getattr(config, n) for n, _ in keys})
            raise ValueError(f"RunConfig: {name} must be {allowed}, got {value!r}")
        if spec.names is not None and value not in (names := spec.names()):
            raise ValueError(f"RunConfig: unknown {name} {value!r}; valid {name}s are: {', '.join(names)}")


def _check_loggers(name: str, value: Any) -> list[str]:
    """A list of logger names (a single name is a one-name list); duplicates dropped, order kept."""
    from poolkit.tracking.sinks import LOGGERS  # names only: imports neither TensorBoard nor MLflow

    names = [value] if isinstance(value, str) else value
    valid = ", ".join(sorted(LOGGERS))
    if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise ValueError(
            f"RunConfig: {name} must be a list of logger names ({valid}), got {value!r} "
            f"({type(value).__name__})"
        )
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        shown = ", ".join(map(repr, unknown))
        raise ValueError(f"RunConfig: unknown logger(s) {shown}; choose from: {valid}")
    return list(dict.fromkeys(names))


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------- the docs table


def _shown(value: Any) -> str:
    if value is dataclasses.MISSING:
        return "required"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    if isinstance(value, float):
        short = f"{value:.0e}".replace("e-0", "e-")  # 5e-4 rather than 0.0005
        return short if "e-" in short and float(short) == value else repr(value)
    return str(value) if not isinstance(value, list) else json.dumps(value)


def docs_table(cls: type) -> str:
    """The Markdown table of every key of ``cls``: key, type, default, meaning (flag).

    ``docs/training.md`` holds exactly this table (a test compares them); after changing a key, paste
    ``python -c "from poolkit.train.config import RunConfig; from poolkit.train.fields import docs_table;
    print(docs_table(RunConfig))"`` there.
    """
    rows = ["| key | type | default | meaning (flag) |", "| --- | --- | --- | --- |"]
    defaults = {f.name: _default(f) for f in dataclasses.fields(cls)}
    for name, spec in run_keys(cls):
        kind = KINDS[spec.kind].doc_type + (" / null" if spec.nullable else "")
        if spec.doc_flag:
            flag = spec.doc_flag
        elif spec.kind == "bool":
            flag = f"`{spec.flag}` / `--no-{spec.flag[2:]}`"
        else:
            flag = f"`{spec.flag}`"
        rows.append(f"| `{name}` | {kind} | {_shown(defaults[name])} | {spec.doc} ({flag}) |")
    return "\n".join(rows)


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
