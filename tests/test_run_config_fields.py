"""RunConfig's field metadata (poolkit.train.fields) drives validation, the ``poolkit train`` flags, the
docs table and the sweep schema: every key has one description, and these tests keep the four in step."""

from __future__ import annotations

import argparse
import dataclasses
import doctest
from pathlib import Path
from typing import Any

import pytest

from poolkit.experiments import config as sweep_config
from poolkit.train import RunConfig
from poolkit.train import fields as fields_module
from poolkit.train.cli import add_arguments, config_from_args
from poolkit.train.config import NON_RESULT_KEYS
from poolkit.train.fields import KINDS, Key, docs_table, run_key, run_keys

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"

#: A valid config in which every key differs from its default where the rules allow.
NON_DEFAULT: dict[str, Any] = {
    "dataset": "imagefolder",
    "data_dir": "/data/folder",
    "download": False,
    "model": "resnet18",
    "pool": "tmaxavg",
    "pool_options": {"k": 3, "threshold": 0.5},
    "global_pool": "gem",
    "head": "linear",
    "stem": "imagenet",
    "width": 0.25,
    "epochs": 7,
    "batch_size": 32,
    "lr": 0.001,
    "momentum": 0.5,
    "weight_decay": 0.0001,
    "pool_weight_decay": 0.0002,
    "nesterov": True,
    "warmup_epochs": 2,
    "label_smoothing": 0.1,
    "amp": True,
    "amp_dtype": "bfloat16",
    "channels_last": True,
    "compile": True,
    "sync_bn": True,
    "device": "cuda:1",
    "seed": 12,
    "val_fraction": 0.2,
    "shift_eval": True,
    "threads": 3,
    "loggers": ["mlflow", "tensorboard"],
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolkit train")
    add_arguments(parser)
    return parser


def _argv(config: dict[str, Any]) -> list[str]:
    """The command line of a config, written from the metadata alone."""
    argv = ["--out", "run"]
    for name, spec in run_keys(RunConfig):
        value = config[name]
        if spec.kind == "bool":
            argv.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif spec.kind == "options":
            argv += [item for k, v in value.items() for item in (spec.flag, f"{k}={v}")]
        elif spec.kind == "loggers":
            argv += [item for v in value for item in (spec.flag, v)]
        elif value is not None:
            argv += [spec.flag, str(value)]
    return argv


def test_every_field_has_a_key_of_a_known_kind_and_its_own_flag() -> None:
    keys = run_keys(RunConfig)
    assert [name for name, _ in keys] == RunConfig.keys()
    assert all(spec.kind in KINDS and spec.help and spec.doc for _, spec in keys)
    flags = [spec.flag for _, spec in keys]
    assert len(set(flags)) == len(flags)
    assert run_key(RunConfig, "pool_options").flag == "--pool-opt"
    assert run_key(RunConfig, "loggers").flag == "--logger"
    assert run_key(RunConfig, "batch_size").flag == "--batch-size"
    options = {o for action in _parser()._actions for o in action.option_strings}
    assert set(flags) <= options
    assert {"--no-" + spec.flag[2:] for _, spec in keys if spec.kind == "bool"} <= options


def test_the_generated_flags_round_trip_every_key() -> None:
    expected = RunConfig.from_dict(NON_DEFAULT)
    assert all(
        getattr(expected, f.name) != f.default
        for f in dataclasses.fields(RunConfig)
        if f.name not in ("dataset", "download", "head") and f.default is not dataclasses.MISSING
    )
    assert config_from_args(_parser().parse_args(_argv(NON_DEFAULT))) == expected
    defaults = RunConfig.from_dict({"dataset": "synthetic"})
    assert config_from_args(_parser().parse_args(_argv(defaults.to_dict()))) == defaults


def test_unset_flags_leave_every_key_to_the_config_file() -> None:
    args = _parser().parse_args(["--out", "run"])
    assert all(
        getattr(args, name) in (None, []) for name, spec in run_keys(RunConfig) if spec.kind != "options"
    )
    assert args.pool_opt == []


def test_the_docs_table_is_the_generated_one() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert docs_table(RunConfig) in text, (
        "docs/training.md's run-config table differs from RunConfig's field metadata: paste "
        "poolkit.train.fields.docs_table(RunConfig) there"
    )
    for name, spec in run_keys(RunConfig):
        assert f"| `{name}` |" in text and spec.flag in text


def test_help_and_docs_name_every_dataset_and_model() -> None:
    table = docs_table(RunConfig)
    for name in ("dataset", "model"):
        spec = run_key(RunConfig, name)
        assert spec.names is not None
        for value in spec.names():
            assert value in spec.help, (name, value)
        if name == "dataset":
            assert all(f"`{value}`" in spec.doc for value in spec.names())
    assert "list_models()" in table


def test_non_result_keys_and_sweep_schema_come_from_the_metadata() -> None:
    assert {"data_dir", "download", "device", "threads", "loggers"} == NON_RESULT_KEYS
    axes = sweep_config._grid_axis_keys()
    assert "pool_options" not in axes and not NON_RESULT_KEYS & set(axes)
    assert set(axes) | NON_RESULT_KEYS | {"pool_options"} == set(RunConfig.keys())
    assert sweep_config._known_names("model") == run_key(RunConfig, "model").names()  # type: ignore[misc]
    assert sweep_config._known_names("lr") is None


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("threads", 0, r"threads must be a positive integer or null, got 0 \(int\)"),
        ("data_dir", 3, r"data_dir must be a path or null, got 3 \(int\)"),
        ("width", "wide", r"width must be a finite number, got 'wide' \(str\)"),
        ("seed", 2**32, r"seed must be in \[0, 2\*\*32\), got 4294967296"),
        ("pool_options", {"k": object()}, "pool_options must be a mapping of option names to plain values"),
        ("loggers", "wandb", "unknown logger.*'wandb'; choose from: mlflow, tensorboard"),
        ("loggers", [1], "loggers must be a list of logger names"),
        ("pool", "maxx", "unknown pool 'maxx'; valid pools are: "),
    ],
)
def test_one_loop_validates_every_kind(key: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig.from_dict({"dataset": "synthetic", key: value})


def test_values_are_normalised_by_their_kind() -> None:
    cfg = RunConfig.from_dict({"dataset": "synthetic", "data_dir": Path("/x"), "lr": 1, "loggers": "mlflow"})
    assert (cfg.data_dir, cfg.lr, cfg.loggers) == ("/x", 1.0, ["mlflow"])
    assert isinstance(cfg.lr, float)


def test_a_key_of_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown kind 'decimal'; kinds are: str, bool"):
        Key(kind="decimal", help="h", doc="d")
    assert Key(kind="str", help="h", doc="d", choices=("a", "b")).allowed == "one of: a, b"
    with pytest.raises(ValueError, match="needs allowed="):
        Key(kind="int", help="h", doc="d", check=lambda v, c: v > 0)


def test_docstring_examples() -> None:
    result = doctest.testmod(fields_module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
