"""Sweep configs: validation, --set and ${data_dir}, grid expansion, run ids, presets, planning."""

from __future__ import annotations

import doctest
import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

import poolkit
from poolkit.experiments import (
    SweepConfig,
    SweepConfigError,
    expand_sweep,
    list_presets,
    load_preset,
    load_sweep,
    plan_runs,
    results_table,
)
from poolkit.experiments.config import parse_set
from poolkit.train.config import RunConfig

STUDY_METHODS = [
    "max",
    "tmaxavg",
    "soft_tmaxavg",
    "channel_adaptive",
    "learnable_t",
    "gated",
    "attention",
    "stochastic_mix",
]


def small(**extra):
    doc = {
        "name": "t",
        "grid": {"dataset": ["synthetic"], "model": ["vgg11"], "pool": ["max", "avg"], "seed": [0, 1]},
        "train": {"epochs": 1, "width": 0.125},
    }
    doc.update(extra)
    return doc


def write(tmp_path: Path, doc: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("doc", "where", "allowed"),
    [
        ({**small(), "grdi": {}}, "grdi", "valid keys are: name, description, grid"),
        (small(train={"epoch": 3}), "train.epoch", "valid keys are: dataset, data_dir"),
        (small(grid={"dataset": ["synthetic"], "colour": ["red"]}), "grid.colour", "valid keys are"),
        (small(local={"workers": 0}), "local.workers", "integer >= 1"),
        (small(slurm={"partition": 3}), "slurm.partition", "expected str"),
        (small(slurm={"gpus": 1}), "slurm.gpus", "gpus_per_node"),
        (small(slurm={"cluster": "pbs"}), "slurm.cluster", "slurm, local, debug"),
        (
            small(overrides=[{"match": {"dataset": "synthetc"}, "set": {"epochs": 2}}]),
            "overrides[0].match.dataset",
            "valid names are: cifar10",
        ),
        (
            small(overrides=[{"match": {"model": "vgg11"}, "set": {"pool": "avg"}}]),
            "overrides[0].set.pool",
            "grid axis",
        ),
        (small(overrides=[{"match": {"model": "vgg11"}}]), "overrides[0]", "needs 'set'"),
        (
            small(grid={"dataset": ["synthetic"], "data_dir": ["/a", "/b"]}),
            "grid.data_dir",
            "cannot be a grid axis",
        ),
        (small(grid={"dataset": ["synthetic"], "seed": [0, 0]}), "grid.seed", "listed twice"),
        (small(grid={"dataset": ["synthetic"], "seed": []}), "grid.seed", "empty axis"),
        (small(train={"seed": 3}), "train.seed", "also a grid axis"),
    ],
)
def test_invalid_config_names_the_key_and_what_is_allowed(doc, where, allowed):
    with pytest.raises(SweepConfigError) as info:
        SweepConfig.from_dict(doc)
    assert str(info.value).startswith(where), str(info.value)
    assert allowed in str(info.value)


def test_bad_pool_name_lists_every_valid_pool():
    with pytest.raises(SweepConfigError, match=r"grid.pool\[1\]: unknown pool 'maxx'") as info:
        SweepConfig.from_dict(small(grid={"dataset": ["synthetic"], "pool": ["max", "maxx"]}))
    for name in poolkit.list_pools():
        assert name in str(info.value)


def test_bad_pool_option_names_the_method_options():
    doc = small(grid={"dataset": ["synthetic"], "pool": [{"name": "tmaxavg", "options": {"kk": [1, 2]}}]})
    with pytest.raises(
        SweepConfigError,
        match=r"grid.pool\[0\].options.kk: unknown option for pool 'tmaxavg'; "
        r"its options are: k, threshold",
    ):
        SweepConfig.from_dict(doc)


def test_run_level_rules_are_checked_on_every_expanded_run():
    # Types, ranges and option values are RunConfig's rules; the message names the run and the key.
    with pytest.raises(SweepConfigError, match=r"run \{seed=0, dataset=synthetic.*epochs must be an integer"):
        expand_sweep(SweepConfig.from_dict(small(train={"epochs": "four"})))
    with pytest.raises(SweepConfigError, match=r"width must be > 0"):
        expand_sweep(SweepConfig.from_dict(small(train={"width": -1.0})))
    bad_k = small(grid={"dataset": ["synthetic"], "pool": [{"name": "tmaxavg", "options": {"k": 9}}]})
    with pytest.raises(SweepConfigError, match=r"pool=tmaxavg.*invalid pool_options"):
        expand_sweep(SweepConfig.from_dict(bad_k))
    # An override only touching resnet runs is still checked: stem must be cifar or imagenet.
    doc = small(
        grid={"dataset": ["synthetic"], "model": ["vgg11", "resnet18"]},
        overrides=[{"match": {"model": "resnet18"}, "set": {"stem": "huge"}}],
    )
    with pytest.raises(SweepConfigError, match=r"model=resnet18.*stem must be one of: cifar, imagenet"):
        expand_sweep(SweepConfig.from_dict(doc))


def test_duplicate_runs_are_rejected():
    entries = [{"name": "tmaxavg", "options": {"k": [1, 2]}}, {"name": "tmaxavg", "options": {"k": [2, 3]}}]
    with pytest.raises(SweepConfigError, match="give the same run"):
        expand_sweep(SweepConfig.from_dict(small(grid={"dataset": ["synthetic"], "pool": entries})))
    with pytest.raises(SweepConfigError, match=r"grid.pool: 'max' is listed twice"):
        SweepConfig.from_dict(small(grid={"dataset": ["synthetic"], "pool": ["max", {"name": "max"}]}))


def test_a_sweep_needs_a_name():
    with pytest.raises(SweepConfigError, match="name: a sweep needs a name"):
        SweepConfig.from_dict({"grid": {"dataset": "synthetic"}})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(
        SweepConfigError, match=r"does not exist.*--preset NAME; presets: ablation, paper, quick"
    ):
        load_sweep(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n", encoding="utf-8")
    with pytest.raises(SweepConfigError, match="not valid YAML"):
        load_sweep(bad)


def test_yaml12_floats_and_name_from_file_stem(tmp_path):
    path = tmp_path / "my-sweep.yaml"
    path.write_text("grid: {dataset: synthetic}\ntrain: {weight_decay: 5e-4, lr: 1e-2}\n", encoding="utf-8")
    sweep = load_sweep(path)
    assert sweep.name == "my-sweep"
    assert sweep.train == {"weight_decay": 5e-4, "lr": 1e-2}
    assert expand_sweep(sweep)[0].config["weight_decay"] == 5e-4


# ---------------------------------------------------------------------------------------------- expansion
def test_expansion_counts_order_and_precedence():
    doc = {
        "name": "t",
        "grid": {
            "dataset": ["synthetic", "mnist5k"],
            "model": ["vgg11", "resnet18"],
            "pool": ["max", {"name": "tmaxavg", "options": {"k": [1, 2, 3], "threshold": [0.1, 0.5]}}],
            "seed": [0, 1],
        },
        "train": {"epochs": 3, "width": 0.125},
        "overrides": [
            {"match": {"model": "resnet18"}, "set": {"stem": "imagenet"}},
            {"match": {"dataset": "mnist5k", "model": ["vgg11"]}, "set": {"epochs": 5}},
            {"match": {"dataset": "mnist5k"}, "set": {"epochs": 7}},  # later wins
        ],
    }
    sweep = SweepConfig.from_dict(doc)
    runs = expand_sweep(sweep)
    assert len(runs) == sweep.size == 2 * 2 * (1 + 3 * 2) * 2
    # seed is the outermost axis: every configuration's seed 0 comes first
    assert [r.config["seed"] for r in runs] == [0] * 28 + [1] * 28
    for r in runs:
        c = r.config
        assert c["stem"] == ("imagenet" if c["model"] == "resnet18" else "cifar")
        assert c["epochs"] == (7 if c["dataset"] == "mnist5k" else 3)
        assert c["width"] == 0.125
        assert r.name == f"{c['dataset']}_{c['model']}_{c['pool']}_s{c['seed']}_{r.run_id}"
        assert re.fullmatch(r"[0-9a-f]{10}", r.run_id)
    # epochs differs by dataset only (an override): not a variant that splits table rows
    assert {r.variant for r in runs} == {""}
    methods = {r.method for r in runs}
    assert "tmaxavg(k=2, threshold=0.5)" in methods and "max" in methods and len(methods) == 7
    options = [r.config["pool_options"] for r in runs if r.config["pool"] == "tmaxavg"]
    assert {"k": 3, "threshold": 0.1} in options


def test_run_ids_are_stable_distinct_and_match_runconfig(tmp_path):
    runs = expand_sweep(SweepConfig.from_dict(small()))
    assert len({r.run_id for r in runs}) == len(runs) == 4
    for r in runs:
        assert RunConfig.from_dict(r.config).run_id() == r.run_id
    again = expand_sweep(SweepConfig.from_dict(small()))
    assert [r.run_id for r in again] == [r.run_id for r in runs]
    # data_dir and threads do not change results, so they do not change the id
    moved = expand_sweep(load_sweep(small(), sets=["threads=1"], data_dir=tmp_path))
    assert [r.run_id for r in moved] == [r.run_id for r in runs]
    assert moved[0].config["data_dir"] == str(tmp_path) and moved[0].config["threads"] == 1
    changed = expand_sweep(load_sweep(small(), sets=["epochs=2"]))
    assert not {r.run_id for r in changed} & {r.run_id for r in runs}


def test_overrides_match_defaults_too():
    doc = small(overrides=[{"match": {"stem": "cifar", "head": ["linear", "mlp"]}, "set": {"lr": 0.01}}])
    assert {r.config["lr"] for r in expand_sweep(SweepConfig.from_dict(doc))} == {0.01}


def test_variant_labels_name_other_varying_keys():
    doc = small(grid={"dataset": ["synthetic"], "pool": ["max"], "width": [0.125, 0.25]}, train={"epochs": 1})
    runs = expand_sweep(SweepConfig.from_dict(doc))
    assert sorted(r.variant for r in runs) == ["width=0.125", "width=0.25"]
    assert "[width=0.25]" in str(runs[-1])


def test_sweep_round_trips_through_yaml():
    sweep = load_preset("ablation", data_dir="/data")
    again = SweepConfig.from_dict(yaml.safe_load(sweep.to_yaml()))
    assert again == sweep
    # a list-valued option given as one value stays one value
    nested = SweepConfig.from_dict(
        small(grid={"dataset": "synthetic", "pool": [{"name": "lp", "options": {"norm_type": [[2.0]]}}]})
    )
    assert nested.grid["pool"][0].options == {"norm_type": [[2.0]]}
    assert SweepConfig.from_dict(yaml.safe_load(nested.to_yaml())) == nested
    assert [r.run_id for r in expand_sweep(again)] == [r.run_id for r in expand_sweep(sweep)]


# ---------------------------------------------------------------------------------------------- --set, data
def test_parse_set_reads_yaml_values():
    assert parse_set(["epochs=2", "lr=1e-3", "grid.seed=[0, 1]", "device=cpu", "data_dir="]) == [
        ("epochs", 2),
        ("lr", 1e-3),
        ("grid.seed", [0, 1]),
        ("device", "cpu"),
        ("data_dir", None),
    ]
    with pytest.raises(SweepConfigError, match="expected KEY=VALUE"):
        parse_set(["epochs"])


def test_set_edits_grid_sections_and_forces_run_keys():
    doc = small(overrides=[{"match": {"pool": "avg"}, "set": {"epochs": 4}}])
    sweep = load_sweep(
        doc, sets=["seed=5", "grid.pool=[avg]", "slurm.partition=gpu", "epochs=2", "name=other"]
    )
    assert sweep.grid["seed"] == [5] and sweep.name == "other"
    assert [e.name for e in sweep.grid["pool"]] == ["avg"]
    assert sweep.slurm.partition == "gpu"
    # a bare run key beats the file's overrides
    assert {r.config["epochs"] for r in expand_sweep(sweep)} == {2}
    with pytest.raises(SweepConfigError, match="unknown key; use a run key"):
        load_sweep(doc, sets=["colour=red"])
    with pytest.raises(SweepConfigError, match="SECTION one of grid, train, local, slurm"):
        load_sweep(doc, sets=["gird.seed=[0]"])


def test_paper_needs_data_dir_and_says_what_to_pass(tmp_path):
    with pytest.raises(SweepConfigError) as info:
        load_preset("paper")
    message = str(info.value)
    assert "poolkit reproduce --preset paper --data-dir" in message
    assert "${data_dir}/cifar-100-python" in message and "dataset=cifar100" in message
    assert "${data_dir}/tiny-imagenet-200" in message and "dataset=tinyimagenet" in message
    runs = expand_sweep(load_preset("paper", data_dir=tmp_path))
    dirs = {r.config["dataset"]: r.config["data_dir"] for r in runs}
    assert dirs == {
        "cifar100": str(tmp_path / "cifar-100-python"),
        "tinyimagenet": str(tmp_path / "tiny-imagenet-200"),
    }
    # a dry run may go without: the placeholder stays visible
    unresolved = expand_sweep(load_preset("paper", allow_missing_data_dir=True))
    assert unresolved[0].config["data_dir"].startswith("${data_dir}/")


def test_data_dir_without_placeholder_is_the_default_data_dir(tmp_path):
    doc = {
        "name": "d",
        "grid": {"dataset": ["synthetic", "mnist5k"]},
        "overrides": [{"match": {"dataset": "mnist5k"}, "set": {"data_dir": "/own"}}],
    }
    runs = expand_sweep(load_sweep(doc, data_dir=tmp_path))
    assert {r.config["dataset"]: r.config["data_dir"] for r in runs} == {
        "synthetic": str(tmp_path),
        "mnist5k": "/own",
    }


# ---------------------------------------------------------------------------------------------- presets
def test_presets_are_shipped_and_valid():
    assert list_presets() == ["ablation", "paper", "quick"]
    for name in list_presets():
        sweep = load_preset(name, allow_missing_data_dir=True)
        assert sweep.name == name and sweep.description


def test_quick_preset():
    runs = expand_sweep(load_preset("quick"))
    assert sorted(r.config["pool"] for r in runs) == sorted([*STUDY_METHODS, "avg"])
    assert {(r.config["dataset"], r.config["seed"]) for r in runs} == {("mnist5k", 0)}
    assert all(r.config["data_dir"] is None for r in runs)
    assert load_preset("quick").local.workers == 2


def test_paper_preset_is_the_study_protocol(tmp_path):
    runs = expand_sweep(load_preset("paper", data_dir=tmp_path))
    assert len(runs) == 96
    configs = {(r.config["dataset"], r.config["model"], r.config["pool"]) for r in runs}
    assert len(configs) == 32
    assert {c[2] for c in configs} == set(STUDY_METHODS)
    for r in runs:
        c = r.config
        assert (c["epochs"], c["batch_size"], c["lr"], c["momentum"], c["weight_decay"]) == (
            200,
            128,
            0.1,
            0.9,
            5e-4,
        )
        assert c["amp"] is True and c["seed"] in (0, 1, 2) and c["width"] == 1.0
        assert c["pool_options"] == poolkit.pool_options(c["pool"])  # each method at its defaults
        assert c["stem"] == ("imagenet" if c["model"] == "resnet18" else "cifar")


def test_ablation_preset_grid(tmp_path):
    runs = expand_sweep(load_preset("ablation", data_dir=tmp_path))
    assert len(runs) == 36 * 3
    cells = {(r.config["pool_options"]["k"], r.config["pool_options"]["threshold"]) for r in runs}
    assert cells == {(k, t / 10) for k in (1, 2, 3, 4) for t in range(1, 10)}
    assert {(r.config["dataset"], r.config["model"], r.config["pool"]) for r in runs} == {
        ("cifar100", "vgg16", "tmaxavg")
    }
    assert len(expand_sweep(load_preset("ablation", data_dir=tmp_path, sets=["grid.seed=[0]"]))) == 36


# ---------------------------------------------------------------------------------------------- planning
def test_plan_reads_each_run_directory(tmp_path):
    runs = expand_sweep(SweepConfig.from_dict(small()))
    finished, failed, unfinished, _fresh = runs
    (tmp_path / finished.name).mkdir()
    (tmp_path / finished.name / "result.json").write_text(
        json.dumps({"status": "finished", "run_id": finished.run_id, "test_top1": 50.0})
    )
    (tmp_path / failed.name).mkdir()
    (tmp_path / failed.name / "error.json").write_text(
        json.dumps({"error": "boom\nmore", "type": "ValueError"})
    )
    (tmp_path / unfinished.name).mkdir()
    (tmp_path / unfinished.name / "checkpoint.pt").write_bytes(b"x")
    (tmp_path / unfinished.name / "metrics.csv").write_text("epoch,test_top1\n1,10\n2,20\n")
    plan = plan_runs(runs, tmp_path)
    assert [p.status for p in plan] == ["finished", "failed", "resume", "new"]
    assert plan[1].error == "ValueError: boom"
    assert plan[2].epochs_done == 2
    table = results_table(runs, tmp_path)
    assert "50.00 [1/2]" in table and "model vgg11" in table and "-" in table.splitlines()[-1]


def test_result_of_another_run_does_not_count_as_finished(tmp_path):
    run = expand_sweep(SweepConfig.from_dict(small()))[0]
    (tmp_path / run.name).mkdir()
    (tmp_path / run.name / "result.json").write_text(
        json.dumps({"status": "finished", "run_id": "0123456789"})
    )
    assert plan_runs([run], tmp_path)[0].status == "new"


@pytest.mark.parametrize(
    "name",
    [
        "poolkit.experiments",
        "poolkit.experiments.config",
        "poolkit.experiments.grid",
        "poolkit.experiments.sweep",
        "poolkit.experiments.launchers",
        "poolkit.experiments.launchers.slurm",
    ],
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
