"""poolkit.train.config and poolkit.train.cli: validation, run ids, YAML scalars, flags over a config file."""

from __future__ import annotations

import argparse
import doctest
import importlib
from pathlib import Path

import pytest

import poolkit
from poolkit.train import RunConfig, load_config_file, yaml_scalar
from poolkit.train.cli import add_arguments, config_from_args

BASE = {"dataset": "synthetic", "model": "vgg11", "width": 0.125, "epochs": 2}


def test_defaults_follow_the_study_protocol() -> None:
    cfg = RunConfig.from_dict({"dataset": "synthetic"})
    d = cfg.to_dict()
    assert list(d) == RunConfig.keys()
    assert (d["model"], d["pool"], d["epochs"], d["batch_size"], d["lr"]) == ("vgg16", "max", 200, 128, 0.1)
    assert (d["momentum"], d["weight_decay"], d["global_pool"], d["device"]) == (0.9, 5e-4, "avg", "auto")


def test_round_trip_and_normalised_numbers() -> None:
    cfg = RunConfig.from_dict({**BASE, "width": 1, "pool": "tmaxavg", "pool_options": {"k": 2}})
    assert cfg.width == 1.0 and isinstance(cfg.width, float)
    again = RunConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.run_id() == cfg.run_id()
    assert (
        cfg.run_id()
        == RunConfig.from_dict({**BASE, "width": 1.0, "pool": "tmaxavg", "pool_options": {"k": 2}}).run_id()
    )


def test_run_id_ignores_paths_device_and_threads_but_not_results_keys() -> None:
    cfg = RunConfig.from_dict(BASE)
    same = cfg.replace(device="cpu", threads=1)
    assert same.run_id() == cfg.run_id()
    assert len(cfg.run_id()) == 10 and int(cfg.run_id(), 16) >= 0
    for change in ({"seed": 1}, {"compile": True}, {"pool": "avg"}, {"lr": 0.05}, {"shift_eval": True}):
        assert cfg.replace(**change).run_id() != cfg.run_id(), change


def test_unknown_key_lists_valid_keys_and_suggests() -> None:
    with pytest.raises(ValueError, match=r"'lrr' \(did you mean 'lr'\?\).*valid keys are: dataset, data_dir"):
        RunConfig.from_dict({**BASE, "lrr": 0.1})


def test_missing_dataset_lists_datasets() -> None:
    with pytest.raises(ValueError, match=r"needs a dataset; valid datasets are: .*mnist5k.*synthetic"):
        RunConfig.from_dict({"model": "vgg11"})


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"dataset": "cifar1000"}, "unknown dataset 'cifar1000'; valid datasets are: cifar10, cifar100"),
        ({"model": "vgg17"}, "unknown model 'vgg17'; valid models are: resnet18, resnet34, vgg11"),
        ({"pool": "maxx"}, "unknown pool 'maxx'; valid pools are: .*stochastic_mix"),
        ({"global_pool": "strided_conv"}, "valid global pools are: .*gem"),
        ({"pool": "tmaxavg", "pool_options": {"kk": 2}}, r"unknown pool_options \['kk'\].*k \(default 4\)"),
        ({"pool": "tmaxavg", "pool_options": {"k": 9}}, "invalid pool_options for pool 'tmaxavg'.*k=9"),
        ({"pool_options": [1]}, "pool_options must be a mapping"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": 0}, r"lr must be > 0"),
        ({"lr": "1e-3"}, "lr must be a number, got the string '1e-3'.*0.001"),
        ({"lr": float("nan")}, "lr must be a finite number"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"momentum": 0.0, "nesterov": True}, "nesterov must be false when momentum is 0"),
        ({"warmup_epochs": 2}, r"warmup_epochs must be in \[0, epochs\) = \[0, 2\)"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"val_fraction": 0.6}, r"val_fraction must be in \[0, 0.5\]"),
        ({"width": -1}, "width must be > 0"),
        ({"head": "mlp", "model": "resnet18"}, "head 'mlp' applies to VGG models only"),
        ({"stem": "imagenet"}, "stem 'imagenet' applies to ResNet models only"),
        ({"stem": "big", "model": "resnet18"}, "stem must be one of: cifar, imagenet"),
        ({"amp_dtype": "float8"}, "amp_dtype must be one of: float16, bfloat16"),
        ({"device": "gpu"}, "device must be one of: auto, cpu, cuda, cuda:N"),
        ({"threads": 0}, "threads must be a positive integer or null"),
        ({"seed": -1}, "seed must be in"),
        ({"amp": "yes"}, "amp must be true or false"),
        ({"dataset": "cifar10"}, "data_dir must be set"),
        ({"download": True}, "download applies to cifar10, cifar100"),
    ],
)
def test_invalid_values_name_the_key_and_the_allowed_values(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig.from_dict({**BASE, **change})


def test_every_registered_pool_and_its_default_options_are_accepted() -> None:
    for pool in poolkit.list_pools():
        options = poolkit.registry.pool_options(pool)
        cfg = RunConfig.from_dict({**BASE, "pool": pool, "pool_options": options})
        assert cfg.pool_options == options


def test_pool_options_are_checked_against_the_models_real_window() -> None:
    # k=9 does not fit VGG's 2x2 window but fits the ResNet ImageNet stem's 3x3 one.
    cfg = {**BASE, "model": "resnet18", "stem": "imagenet", "pool": "tmaxavg", "pool_options": {"k": 9}}
    assert RunConfig.from_dict(cfg).pool_options == {"k": 9, "threshold": 0.3}  # defaults filled in


def test_yaml_scalars_read_floats_without_a_dot() -> None:
    assert yaml_scalar("1e-3") == 0.001 and yaml_scalar("-2E2") == -200.0
    assert (yaml_scalar("3"), yaml_scalar("0.5"), yaml_scalar("false"), yaml_scalar("null")) == (
        3,
        0.5,
        False,
        None,
    )
    assert yaml_scalar("max") == "max" and yaml_scalar("[1, 2]") == "[1, 2]"


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read config file"):
        load_config_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_config_file(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config_file(broken)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="poolkit train")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(
        "dataset: synthetic\nmodel: vgg11\nwidth: 0.125\nlr: 1e-2\namp: true\n"
        "pool: tmaxavg\npool_options: {k: 3, threshold: 0.5}\n"
    )
    args = _parse(
        ["--config", str(path), "--out", str(tmp_path / "run"), "--lr", "0.05", "--no-amp",
         "--pool-opt", "k=2", "--pool-opt", "threshold=1e-1", "--seed", "4", "--channels-last"]
    )  # fmt: skip
    cfg = config_from_args(args)
    assert (cfg.lr, cfg.amp, cfg.seed, cfg.channels_last, cfg.width) == (0.05, False, 4, True, 0.125)
    assert cfg.pool_options == {"k": 2, "threshold": 0.1}
    assert config_from_args(_parse(["--config", str(path), "--out", "x"])).lr == 0.01


def test_cli_help_documents_every_run_config_key() -> None:
    parser = argparse.ArgumentParser(prog="poolkit train")
    add_arguments(parser)
    text = parser.format_help()
    for key in RunConfig.keys():  # noqa: SIM118  (a classmethod, not a dict)
        repeatable = {"pool_options": "--pool-opt", "loggers": "--logger"}  # one value per use
        flag = repeatable.get(key, "--" + key.replace("_", "-"))
        assert flag in text, flag
    for flag in ("--config", "--out", "--resume", "--no-progress", "--no-amp"):
        assert flag in text
    for action in parser._actions:
        assert action.help, action.dest


def test_cli_rejects_malformed_pool_opt() -> None:
    with pytest.raises(ValueError, match="KEY=VALUE"):
        config_from_args(_parse(["--dataset", "synthetic", "--out", "x", "--pool-opt", "k2"]))


@pytest.mark.parametrize(
    "name",
    ["poolkit.train.config", "poolkit.train.engine", "poolkit.train.trainer"],
)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, name


def test_pool_options_are_resolved_so_spelled_out_defaults_share_a_run_id():
    plain = RunConfig.from_dict({**BASE, "pool": "tmaxavg"})
    spelled = RunConfig.from_dict({**BASE, "pool": "tmaxavg", "pool_options": {"k": 4, "threshold": 0.3}})
    other = RunConfig.from_dict({**BASE, "pool": "tmaxavg", "pool_options": {"k": 2}})
    assert plain.pool_options == {"k": 4, "threshold": 0.3}
    assert plain.run_id() == spelled.run_id() != other.run_id()
