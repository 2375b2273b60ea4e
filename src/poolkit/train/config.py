"""The run config: one validated, hashable description of a training run.

:class:`RunConfig` is the contract between :mod:`poolkit.train` and :mod:`poolkit.experiments`: a
sweep expands into RunConfigs, :func:`poolkit.train.train_run` runs one, and ``config.yaml`` in the run
directory is :meth:`RunConfig.to_dict`. Every key is checked when the config is built, so a bad sweep
fails before anything is launched.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

__all__ = ["NON_RESULT_KEYS", "RunConfig", "load_config_file", "yaml_scalar"]

#: Keys that do not change what a run computes; they are left out of :meth:`RunConfig.run_id`, so the
#: same run is found again on another machine, another path or another number of threads.
NON_RESULT_KEYS: frozenset[str] = frozenset({"data_dir", "download", "device", "threads", "loggers"})

#: Keys added after the first release, each with the value that reproduces what runs computed before the
#: key existed (a function of the config). A key is left out of :meth:`RunConfig.run_id` while it has that
#: value, and a stored ``config.yaml`` without the key gets that value (:meth:`RunConfig.from_stored`), so
#: an old run directory keeps its run id and is recognised exactly when it computed what the config asks.
#: ``pool_weight_decay`` was added with default 0.0 while older runs decayed pooling parameters like every
#: other weight: its "old" value is the run's ``weight_decay``, not its default.
_LEGACY_VALUES: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "sync_bn": lambda cfg: False,
    "pool_weight_decay": lambda cfg: cfg.get("weight_decay", 5e-4),
}

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader plus YAML 1.2 floats without a dot (``1e-3``; YAML 1.1 reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def yaml_scalar(text: str) -> Any:
    """Parse one command-line value as a YAML scalar: ``2`` -> 2, ``0.3`` -> 0.3, ``1e-3`` -> 0.001,
    ``true`` -> True, ``null`` -> None, anything else stays a string.

    Example:
        >>> yaml_scalar("1e-3"), yaml_scalar("4"), yaml_scalar("true"), yaml_scalar("max")
        (0.001, 4, True, 'max')
    """
    value = yaml.load(text, Loader=_Loader)
    return text if isinstance(value, (dict, list)) else value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML run config (a mapping of :class:`RunConfig` keys) with the ``1e-3``-aware loader."""
    path = Path(path)
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        raise ValueError(f"cannot read config file {str(path)!r}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(
            f"config file {str(path)!r} must hold a mapping of run-config keys, got {type(data).__name__}"
        )
    return data


def _type_name(value: Any) -> str:
    return type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one training run (see ``docs/training.md`` for the semantics).

    Build it with :meth:`from_dict` (rejects unknown keys) or directly; either way every value is
    validated and a ``ValueError`` names the key and what it accepts. Numbers are normalised
    (``width: 1`` becomes ``1.0``) so equal configs have equal :meth:`run_id`.

    Example:
        >>> cfg = RunConfig.from_dict({"dataset": "synthetic", "model": "vgg11", "pool": "avg", "epochs": 2})
        >>> cfg.lr, cfg.to_dict()["pool"], len(cfg.run_id())
        (0.1, 'avg', 10)
    """

    dataset: str
    data_dir: str | None = None
    download: bool = False
    model: str = "vgg16"
    pool: str = "max"
    pool_options: dict[str, Any] = field(default_factory=dict)
    global_pool: str = "avg"
    head: str = "linear"
    stem: str = "cifar"
    width: float = 1.0
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    pool_weight_decay: float = 0.0
    nesterov: bool = False
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    amp: bool = False
    amp_dtype: str = "float16"
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.0
    shift_eval: bool = False
    threads: int | None = None
    loggers: list[str] = field(default_factory=list)

    _BOOL_KEYS: ClassVar[tuple[str, ...]] = (
        "download", "nesterov", "amp", "channels_last", "compile", "sync_bn", "shift_eval",
    )  # fmt: skip
    _FLOAT_KEYS: ClassVar[tuple[str, ...]] = (
        "width", "lr", "momentum", "weight_decay", "pool_weight_decay", "label_smoothing", "val_fraction",
    )  # fmt: skip
    _INT_KEYS: ClassVar[tuple[str, ...]] = ("epochs", "batch_size", "warmup_epochs", "seed")
    _STR_KEYS: ClassVar[tuple[str, ...]] = (
        "dataset", "model", "pool", "global_pool", "head", "stem", "amp_dtype", "device",
    )  # fmt: skip

    # ------------------------------------------------------------------ construction
    @classmethod
    def keys(cls) -> list[str]:
        """Every config key, in the order of ``config.yaml``."""
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Validate a mapping of config keys (missing keys get their defaults).

        Raises:
            ValueError: an unknown key (listing the valid keys), a missing ``dataset``, or any invalid value.
        """
        if isinstance(data, RunConfig):
            return data
        if not isinstance(data, Mapping):
            raise ValueError(f"a run config must be a mapping of keys to values, got {_type_name(data)}")
        valid = cls.keys()
        unknown = [k for k in data if k not in valid]
        if unknown:
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(str(key), valid, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise ValueError(
                f"unknown run-config key(s) {', '.join(hints)}; valid keys are: {', '.join(valid)}"
            )
        if "dataset" not in data:
            raise ValueError(
                f"the run config needs a dataset; valid datasets are: {', '.join(_list_datasets())}"
            )
        return cls(**dict(data))

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> RunConfig:
        """The config of an existing run directory's ``config.yaml``, written by any poolkit version.

        A key added after the run was made gets the value that reproduces what the run computed (not the
        key's default): a run without ``pool_weight_decay`` decayed its pooling parameters with
        ``weight_decay``. Its :meth:`run_id` is then the one the run was made with.

        Example:
            >>> old = {"dataset": "synthetic", "weight_decay": 1e-4}
            >>> RunConfig.from_stored(old).pool_weight_decay, RunConfig.from_dict(old).pool_weight_decay
            (0.0001, 0.0)
        """
        if not isinstance(data, Mapping):
            return cls.from_dict(data)
        filled = dict(data)
        for key, legacy in _LEGACY_VALUES.items():
            if key not in filled:
                filled[key] = legacy(data)
        return cls.from_dict(filled)

    def __post_init__(self) -> None:
        for key in self._STR_KEYS:
            self._expect(key, isinstance(getattr(self, key), str), "a string")
        for key in self._BOOL_KEYS:
            self._expect(key, isinstance(getattr(self, key), bool), "true or false")
        for key in self._INT_KEYS:
            self._expect(key, _is_int(getattr(self, key)), "an integer")
        for key in self._FLOAT_KEYS:
            value = getattr(self, key)
            if isinstance(value, str) and _parses_as_float(value):
                raise ValueError(
                    f"RunConfig: {key} must be a number, got the string {value!r}; in YAML 1.1 a float needs "
                    f"a dot (write {float(value)!r}) or read the file with poolkit.train.load_config_file"
                )
            self._expect(key, _is_number(value), "a finite number")
            object.__setattr__(self, key, float(value))
        if self.data_dir is not None:
            self._expect("data_dir", isinstance(self.data_dir, (str, os.PathLike)), "a path or null")
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        if self.threads is not None:
            self._expect("threads", _is_int(self.threads) and self.threads >= 1, "a positive integer or null")
        self._check_loggers()
        self._expect(
            "pool_options", isinstance(self.pool_options, Mapping), "a mapping of option names to values"
        )
        object.__setattr__(self, "pool_options", dict(self.pool_options))
        try:
            json.dumps(self.pool_options, allow_nan=False)
            ok = all(isinstance(k, str) for k in self.pool_options)
        except (TypeError, ValueError):
            ok = False
        self._expect(
            "pool_options", ok, "a mapping of option names to plain values (numbers, strings, booleans)"
        )
        self._check_ranges()
        self._check_names()

    def _check_loggers(self) -> None:
        from poolkit.tracking.sinks import LOGGERS  # names only: imports neither TensorBoard nor MLflow

        loggers = self.loggers
        if isinstance(loggers, str):
            loggers = [loggers]
        valid = ", ".join(sorted(LOGGERS))
        self._expect(
            "loggers",
            isinstance(loggers, (list, tuple)) and all(isinstance(n, str) for n in loggers),
            f"a list of logger names ({valid})",
        )
        unknown = [n for n in loggers if n not in LOGGERS]
        if unknown:
            raise ValueError(
                f"RunConfig: unknown logger(s) {', '.join(map(repr, unknown))}; choose from: {valid}"
            )
        object.__setattr__(self, "loggers", list(dict.fromkeys(loggers)))

    def _expect(self, key: str, ok: bool, expected: str) -> None:
        if not ok:
            value = getattr(self, key)
            raise ValueError(f"RunConfig: {key} must be {expected}, got {value!r} ({_type_name(value)})")

    def _check_ranges(self) -> None:
        checks = [
            ("width", self.width > 0, "> 0 (1.0 = the standard network)"),
            ("epochs", self.epochs >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0, "> 0"),
            ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("pool_weight_decay", self.pool_weight_decay >= 0, ">= 0 (0 = pooling parameters not decayed)"),
            ("warmup_epochs", 0 <= self.warmup_epochs < self.epochs, f"in [0, epochs) = [0, {self.epochs})"),
            ("label_smoothing", 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("val_fraction", 0 <= self.val_fraction <= 0.5, "in [0, 0.5]"),
            ("seed", 0 <= self.seed < 2**32, "in [0, 2**32)"),
            ("nesterov", not (self.nesterov and self.momentum == 0), "false when momentum is 0"),
            ("head", self.head in ("linear", "mlp"), "one of: linear, mlp"),
            ("stem", self.stem in ("cifar", "imagenet"), "one of: cifar, imagenet"),
            ("amp_dtype", self.amp_dtype in ("float16", "bfloat16"), "one of: float16, bfloat16"),
            ("device", bool(_DEVICE.match(self.device)), "one of: auto, cpu, cuda, cuda:N"),
        ]  # fmt: skip
        for key, ok, allowed in checks:
            if not ok:
                raise ValueError(f"RunConfig: {key} must be {allowed}, got {getattr(self, key)!r}")

    def _check_names(self) -> None:
        import poolkit
        from poolkit.models import list_models, pool_geometry
        from poolkit.models.common import scale_width

        datasets = _list_datasets()
        if self.dataset not in datasets:
            raise ValueError(
                f"RunConfig: unknown dataset {self.dataset!r}; valid datasets are: {', '.join(datasets)}"
            )
        from poolkit.data import dataset_info

        info = dataset_info(self.dataset)
        if info.needs_data_dir and self.data_dir is None:
            raise ValueError(
                f"RunConfig: dataset {self.dataset!r} reads files, so data_dir must be set: {info.hint}"
            )
        if self.download and not info.downloadable:
            downloadable = ", ".join(d for d in datasets if dataset_info(d).downloadable)
            raise ValueError(f"RunConfig: download applies to {downloadable}, not {self.dataset!r}")
        if self.model not in list_models():
            raise ValueError(
                f"RunConfig: unknown model {self.model!r}; valid models are: {', '.join(list_models())}"
            )
        is_vgg = self.model.startswith("vgg")
        if self.head == "mlp" and not is_vgg:
            raise ValueError(
                f"RunConfig: head 'mlp' applies to VGG models only, not {self.model!r}; use 'linear'"
            )
        if self.stem == "imagenet" and is_vgg:
            raise ValueError(f"RunConfig: stem 'imagenet' applies to ResNet models only, not {self.model!r}")
        pools = poolkit.list_pools()
        if self.pool not in pools:
            raise ValueError(f"RunConfig: unknown pool {self.pool!r}; valid pools are: {', '.join(pools)}")
        global_pools = [p for p in pools if poolkit.get_pool_spec(p).supports_global]
        if self.global_pool not in global_pools:
            raise ValueError(
                f"RunConfig: global_pool {self.global_pool!r} is not a global pool; valid global pools are: "
                f"{', '.join(global_pools)}"
            )
        valid_options = poolkit.registry.pool_options(self.pool)
        unknown = sorted(set(self.pool_options) - set(valid_options))
        if unknown:
            listed = ", ".join(f"{k} (default {v!r})" for k, v in valid_options.items()) or "none"
            raise ValueError(
                f"RunConfig: unknown pool_options {unknown} for pool {self.pool!r}; its options are: {listed}"
            )
        # Values are checked by building one pool with the window the model will really use.
        kernel, stride, padding = pool_geometry(self.model, self.stem) or (2, 2, 0)
        import torch

        with torch.random.fork_rng(devices=[]):
            try:
                poolkit.create_pool(
                    self.pool,
                    kernel,
                    stride,
                    padding,
                    channels=scale_width(64, self.width),
                    **self.pool_options,
                )
            except (ValueError, TypeError) as exc:
                raise ValueError(f"RunConfig: invalid pool_options for pool {self.pool!r}: {exc}") from exc
        # Resolved: every option with its value, so runs that spell out a default share one run id.
        object.__setattr__(self, "pool_options", {**valid_options, **self.pool_options})

    # ------------------------------------------------------------------ views
    def to_dict(self) -> dict[str, Any]:
        """Every key with its resolved value, in a fixed order (what ``config.yaml`` holds)."""
        return {key: (dict(value) if isinstance(value, dict) else value) for key, value in self._items()}

    def _items(self) -> list[tuple[str, Any]]:
        return [(key, getattr(self, key)) for key in self.keys()]

    def run_id(self) -> str:
        """First 10 hex digits of the SHA-256 of the canonical JSON of :meth:`to_dict`, without
        :data:`NON_RESULT_KEYS` (paths, device and threads do not change the result).

        Keys added later count only when they make the run compute something that older poolkit could
        not: ``sync_bn`` when true, ``pool_weight_decay`` when it differs from ``weight_decay`` (older runs
        decayed pooling parameters like every other weight). So an old run keeps its id, and a new run
        with the default ``pool_weight_decay: 0`` never takes the id of an old run that decayed them.
        """
        values = self.to_dict()
        omitted = {k for k, legacy in _LEGACY_VALUES.items() if values[k] == legacy(values)}
        payload = {k: v for k, v in values.items() if k not in NON_RESULT_KEYS | omitted}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:10]

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some keys changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _list_datasets() -> list[str]:
    from poolkit.data import list_datasets

    return list(list_datasets())
