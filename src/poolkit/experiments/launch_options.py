"""The launcher sections of a sweep file: ``local:`` (:class:`LocalOptions`) and ``slurm:``
(:class:`SlurmOptions`), their validation, and SLURM time limits (``--time 12:00:00``)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from poolkit.experiments.schema import SweepConfigError, check_keys, check_mapping, fail

__all__ = ["LocalOptions", "SlurmOptions", "parse_local", "parse_slurm", "parse_time_limit"]


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


def _accepted(hint: Any) -> tuple[type, ...]:
    """The YAML types a field of this annotation accepts: None dropped, a float takes an int too, a tuple
    is written as a YAML list."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    base = typing.get_origin(hint) or hint
    return {float: (int, float), tuple: (list,)}.get(base, (base,))


#: What each ``slurm:`` key accepts, read off SlurmOptions' annotations (one place for the types).
_SLURM_TYPES: dict[str, tuple[type, ...]] = {
    name: _accepted(hint) for name, hint in typing.get_type_hints(SlurmOptions).items()
}
_SLURM_CLUSTERS = ("slurm", "local", "debug")


def parse_local(raw: Any) -> LocalOptions:
    local = check_mapping(raw, "local")
    check_keys(local, "local", ["workers"])
    workers = local.get("workers", 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise fail("local.workers", f"expected an integer >= 1, got {workers!r}")
    return LocalOptions(workers=workers)


def parse_slurm(raw: Any) -> SlurmOptions:
    slurm = dict(check_mapping(raw, "slurm"))
    check_keys(slurm, "slurm", list(_SLURM_TYPES))
    for key, value in slurm.items():
        types = _SLURM_TYPES[key]
        if value is None and SlurmOptions.__dataclass_fields__[key].default is None:
            continue
        if isinstance(value, bool) or not isinstance(value, types):
            expected = " or ".join(t.__name__ for t in types)
            raise fail(f"slurm.{key}", f"expected {expected}, got {value!r}")
        if types[0] in (int, float) and value <= 0:
            raise fail(f"slurm.{key}", f"expected a positive number, got {value!r}")
    if "setup" in slurm:
        if not all(isinstance(s, str) for s in slurm["setup"]):
            raise fail("slurm.setup", "expected a list of shell commands (strings)")
        slurm["setup"] = tuple(slurm["setup"])
    if "additional_parameters" in slurm:
        slurm["additional_parameters"] = dict(slurm["additional_parameters"])
    if slurm.get("cluster", "slurm") not in _SLURM_CLUSTERS:
        raise fail("slurm.cluster", f"expected one of {', '.join(_SLURM_CLUSTERS)}, got {slurm['cluster']!r}")
    return SlurmOptions(**slurm)


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
