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
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from poolkit.models.specs import HEADS, STEMS, list_models
from poolkit.train.fields import key_metadata, run_field, run_keys, validate

__all__ = ["NON_RESULT_KEYS", "RunConfig", "load_config_file", "yaml_scalar"]

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


def _list_datasets() -> list[str]:
    from poolkit.data import list_datasets

    return list(list_datasets())


def _list_pools() -> list[str]:
    from poolkit import list_pools

    return list_pools()


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

    dataset: str = run_field(
        kind="str",
        names=_list_datasets,
        help="dataset name: cifar10, cifar100, tinyimagenet, imagefolder, mnist5k, synthetic",
        doc="`cifar10`, `cifar100`, `tinyimagenet`, `imagefolder`, `mnist5k`, `synthetic`",
    )
    data_dir: str | None = run_field(
        None,
        kind="path",
        nullable=True,
        result=False,
        help="folder with the dataset files (cifar10/cifar100/tinyimagenet/imagefolder)",
        doc="required by cifar10, cifar100, tinyimagenet, imagefolder",
    )
    download: bool = run_field(
        False,
        kind="bool",
        result=False,
        help="download cifar10/cifar100 into --data-dir when missing (needs a network)",
        doc="cifar10/cifar100: fetch the archive when missing",
    )
    model: str = run_field(
        "vgg16",
        kind="str",
        names=list_models,
        help=f"{', '.join(list_models()[:-1])} or {list_models()[-1]} (default vgg16)",
        doc="a name from `list_models()`",
    )
    pool: str = run_field(
        "max",
        kind="str",
        names=_list_pools,
        help="downsampling pool method, a name from `poolkit.list_pools()` (default max)",
        doc="a name from `poolkit.list_pools()`",
    )
    pool_options: dict[str, Any] = field(
        default_factory=dict,
        metadata=key_metadata(
            kind="options",
            grid=False,
            flag="--pool-opt",
            help="an option of the pool method, e.g. --pool-opt k=2 --pool-opt threshold=0.3 "
            "(repeatable; values are YAML scalars; see `poolkit.registry.pool_options(name)`)",
            doc="the method's own options, checked against `poolkit.registry.pool_options(pool)` and by "
            "building one pool with the model's real window",
            doc_flag="`--pool-opt KEY=VALUE`, repeatable, YAML scalars",
        ),
    )
    global_pool: str = run_field(
        "avg", kind="str", help="the head's global pool method (default avg)", doc="the head's global pool"
    )
    head: str = run_field(
        "linear",
        kind="str",
        choices=HEADS,
        help="linear (global pool + Linear, default) or mlp (VGG's 4096-4096 classifier)",
        doc="`linear` or `mlp` (VGG only)",
    )
    stem: str = run_field(
        "cifar",
        kind="str",
        choices=STEMS,
        help="ResNet stem: cifar (no pool, default) or imagenet (7x7 conv + the pool)",
        doc="`cifar` or `imagenet` (ResNet only)",
    )
    width: float = run_field(
        1.0,
        kind="float",
        check=lambda v, c: v > 0,
        allowed="> 0 (1.0 = the standard network)",
        help="multiplies every channel count (default 1.0)",
        doc="> 0, channel multiplier",
    )
    epochs: int = run_field(
        200, kind="int", check=lambda v, c: v >= 1, allowed=">= 1", help="number of epochs (default 200)",
        doc=">= 1",
    )  # fmt: skip
    batch_size: int = run_field(
        128,
        kind="int",
        check=lambda v, c: v >= 1,
        allowed=">= 1",
        help="global batch size, split across torchrun processes (default 128)",
        doc=">= 1, the global batch",
    )
    lr: float = run_field(
        0.1,
        kind="float",
        check=lambda v, c: v > 0,
        allowed="> 0",
        help="peak learning rate of the cosine schedule (default 0.1)",
        doc="> 0, peak learning rate",
    )
    momentum: float = run_field(
        0.9, kind="float", check=lambda v, c: 0 <= v < 1, allowed="in [0, 1)", doc="in [0, 1)",
        help="SGD momentum (default 0.9)",
    )  # fmt: skip
    weight_decay: float = run_field(
        5e-4,
        kind="float",
        check=lambda v, c: v >= 0,
        allowed=">= 0",
        help="SGD weight decay (default 5e-4)",
        doc=">= 0, of every parameter that is not a pooling parameter",
    )
    pool_weight_decay: float = run_field(
        0.0,
        kind="float",
        check=lambda v, c: v >= 0,
        allowed=">= 0 (0 = pooling parameters not decayed)",
        help="weight decay of the pooling layers' parameters (GeM p, T, mixing weights; default 0: not "
        "decayed)",
        doc=">= 0, of the pooling layers' parameters; 0 = not decayed (see the protocol)",
    )
    nesterov: bool = run_field(
        False,
        kind="bool",
        check=lambda v, c: not (v and c.momentum == 0),
        allowed="false when momentum is 0",
        help="Nesterov momentum",
        doc="needs momentum > 0",
    )
    warmup_epochs: int = run_field(
        0,
        kind="int",
        check=lambda v, c: 0 <= v < c.epochs,
        allowed="in [0, epochs) = [0, {epochs})",
        help="epochs of linear warm-up before the cosine decay (default 0)",
        doc="in [0, epochs): linear warm-up before the cosine",
    )
    label_smoothing: float = run_field(
        0.0,
        kind="float",
        check=lambda v, c: 0 <= v < 1,
        allowed="in [0, 1)",
        help="cross-entropy label smoothing in [0, 1) (default 0)",
        doc="in [0, 1)",
    )
    amp: bool = run_field(
        False,
        kind="bool",
        help="mixed precision: CUDA float16/bfloat16 autocast, CPU bfloat16 autocast",
        doc="mixed precision",
    )
    amp_dtype: str = run_field(
        "float16",
        kind="str",
        choices=("float16", "bfloat16"),
        help="float16 (with GradScaler) or bfloat16, for --amp on CUDA (default float16)",
        doc="`float16` or `bfloat16`; CUDA only, CPU AMP is always bfloat16",
    )
    channels_last: bool = run_field(
        False,
        kind="bool",
        help="channels_last memory format for the model and inputs",
        doc="channels_last model and batches",
    )
    compile: bool = run_field(
        False, kind="bool", help="torch.compile the model", doc="`torch.compile` the model"
    )
    sync_bn: bool = run_field(
        False,
        kind="bool",
        help="BatchNorm statistics over the global batch in multi-process runs (SyncBatchNorm; a single "
        "process ignores it); part of the run id when on",
        doc="BatchNorm statistics over the global batch in multi-process runs: `torch.nn.SyncBatchNorm` on "
        "GPUs, poolkit's `CpuSyncBatchNorm` on CPU (Gloo); a single process ignores it",
    )
    device: str = run_field(
        "auto",
        kind="str",
        result=False,
        check=lambda v, c: bool(_DEVICE.match(v)),
        allowed="one of: auto, cpu, cuda, cuda:N",
        help="auto (default), cpu, cuda or cuda:N",
        doc="`auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`",
    )
    seed: int = run_field(
        0,
        kind="int",
        check=lambda v, c: 0 <= v < 2**32,
        allowed="in [0, 2**32)",
        help="seed of initialisation, data order, augmentation and stochastic pools (default 0)",
        doc="in [0, 2^32): initialisation, data order, augmentation, stochastic pools, validation split",
    )
    val_fraction: float = run_field(
        0.0,
        kind="float",
        check=lambda v, c: 0 <= v <= 0.5,
        allowed="in [0, 0.5]",
        help="fraction of train held out as a validation split, [0, 0.5]",
        doc="in [0, 0.5]: stratified validation split held out of train",
    )
    shift_eval: bool = run_field(
        False,
        kind="bool",
        help="run the translation-invariance probe at the end (writes shift.json)",
        doc="run the translation-invariance probe after training",
    )
    threads: int | None = run_field(
        None,
        kind="count",
        nullable=True,
        result=False,
        help="torch CPU threads for this run (default: leave as is)",
        doc="`torch.set_num_threads` during the run, restored afterwards; null leaves it",
    )
    loggers: list[str] = field(
        default_factory=list,
        metadata=key_metadata(
            kind="loggers",
            result=False,
            flag="--logger",
            help="also log the run to TensorBoard (RUN_DIR/tensorboard/) or MLflow (MLFLOW_TRACKING_URI, "
            'else sqlite:///<runs dir>/mlflow.db); repeatable; needs pip install "poolkit[tracking]"',
            doc="also log the run to `tensorboard` and/or `mlflow`",
            doc_flag='`--logger NAME`, repeatable; needs `pip install "poolkit[tracking]"`; see Tracking',
        ),
    )

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
        validate(self)  # every key's kind, then its choices, range and name (the Key in its field's metadata)
        self._check_rules()

    def _check_rules(self) -> None:
        """The rules between keys and registries: a dataset's data_dir, a model's heads and stems, the
        global pool, the pool's options (checked by building one pool with the model's real window)."""
        import poolkit
        from poolkit.data import dataset_info
        from poolkit.models import families_with, get_model_spec
        from poolkit.models.common import scale_width

        datasets = _list_datasets()
        info = dataset_info(self.dataset)
        if info.needs_data_dir and self.data_dir is None:
            raise ValueError(
                f"RunConfig: dataset {self.dataset!r} reads files, so data_dir must be set: {info.hint}"
            )
        if self.download and not info.downloadable:
            downloadable = ", ".join(d for d in datasets if dataset_info(d).downloadable)
            raise ValueError(f"RunConfig: download applies to {downloadable}, not {self.dataset!r}")
        spec = get_model_spec(self.model)
        if self.head not in spec.heads:
            raise ValueError(
                f"RunConfig: head {self.head!r} applies to {' and '.join(families_with(head=self.head))} "
                f"models only, not {self.model!r}; use {spec.heads[0]!r}"
            )
        if self.stem not in spec.stems:
            raise ValueError(
                f"RunConfig: stem {self.stem!r} applies to {' and '.join(families_with(stem=self.stem))} "
                f"models only, not {self.model!r}"
            )
        pools = poolkit.list_pools()
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
        kernel, stride, padding = spec.sites(self.stem).geometry or (2, 2, 0)
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


#: Keys that do not change what a run computes (``Key.result`` false); they are left out of
#: :meth:`RunConfig.run_id`, so the same run is found again on another machine, another path or another
#: number of threads.
NON_RESULT_KEYS: frozenset[str] = frozenset(name for name, spec in run_keys(RunConfig) if not spec.result)
