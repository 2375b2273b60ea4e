"""What every part of a sweep file's parser shares: :class:`SweepConfigError` and the checks of a
section (a mapping of known keys) that name where in the file a problem is (``grid.pool[1].options.k``)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["SweepConfigError", "as_list", "check_keys", "check_mapping", "fail"]


class SweepConfigError(ValueError):
    """A sweep file is invalid. The message names the key (``grid.pool[1].options.k``) and the fix."""


def fail(where: str, problem: str) -> SweepConfigError:
    return SweepConfigError(f"{where}: {problem}" if where else problem)


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def check_mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise fail(where, f"expected a mapping (key: value), got {type(value).__name__} {value!r}")
    for key in value:
        if not isinstance(key, str):
            raise fail(where, f"keys must be strings, got {key!r}")
    return value


def check_keys(keys: Iterable[str], where: str, allowed: Sequence[str], hint: str = "") -> None:
    for key in keys:
        if key not in allowed:
            extra = f" ({hint})" if hint else ""
            raise fail(f"{where}.{key}", f"unknown key{extra}; valid keys are: {', '.join(allowed)}")
