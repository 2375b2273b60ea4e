"""pool_weight_decay: pooling parameters get their own weight decay (default 0), and the run id says so.

Runs use the generated ``synthetic`` dataset and a VGG11 at width 1/8 (seconds on two CPU cores).
``learnable_t`` with ``k=1`` is the probe: its output is the window maximum whatever T is, so T gets a
zero loss gradient and any change of T comes from weight decay alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from poolkit.experiments.config import load_sweep
from poolkit.experiments.grid import expand_sweep
from poolkit.layers import Pool2d
from poolkit.models import create_model
from poolkit.train import RunConfig, WarmupCosine, train_run
from poolkit.train.checkpoint import load_checkpoint
from poolkit.train.cli import add_arguments, config_from_args
from poolkit.train.trainer import parameter_groups

BASE: dict[str, Any] = {"dataset": "synthetic", "model": "vgg11", "width": 0.125, "epochs": 2}
PROBE: dict[str, Any] = {
    **BASE,
    "pool": "learnable_t",
    "pool_options": {"k": 1},
    "epochs": 1,
    "batch_size": 64,
    "lr": 0.05,
    "weight_decay": 5e-4,
    "threads": 1,
}
T0 = float(torch.tensor(0.3))  # learnable_t's initial T (its default threshold), as a float32


def _learned_t(result: dict[str, Any]) -> list[float]:
    return [v for layer in result["learned"].values() for v in layer["values"].get("threshold", [])]


def _decayed_t(cfg: RunConfig, steps: int) -> float:
    """T after ``steps`` SGD steps whose loss gradient is 0: the run's optimizer settings on one scalar."""
    t = torch.nn.Parameter(torch.tensor(T0))
    opt = torch.optim.SGD(
        [t], lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.pool_weight_decay, nesterov=cfg.nesterov
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(cfg.epochs * steps))
    for _ in range(steps * cfg.epochs):
        t.grad = torch.zeros_like(t)
        opt.step()
        sched.step()
    return float(t.detach())


@pytest.fixture(scope="module")
def probe_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[float, tuple[Path, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("pwd")
    runs = {}
    for pwd in (0.0, 0.05):
        run = root / f"pwd{pwd}"
        runs[pwd] = (run, train_run({**PROBE, "pool_weight_decay": pwd}, run, progress=False))
    return runs


def test_default_leaves_a_pool_parameter_without_gradient_unchanged(probe_runs: dict) -> None:
    _, result = probe_runs[0.0]
    values = _learned_t(result)
    assert len(values) == 5 and all(v == T0 for v in values)


def test_pool_weight_decay_decays_it_exactly_as_sgd_does(probe_runs: dict) -> None:
    _, result = probe_runs[0.05]
    cfg = RunConfig.from_dict({**PROBE, "pool_weight_decay": 0.05})
    steps = 512 // cfg.batch_size  # synthetic: 512 training images
    expected = _decayed_t(cfg, steps)
    assert expected < T0 * 0.999  # the probe is strong enough to see
    for value in _learned_t(result):
        assert value == pytest.approx(expected, rel=1e-5)


def test_the_optimizer_gives_ordinary_weights_weight_decay_and_pool_parameters_their_own(
    probe_runs: dict,
) -> None:
    run, _ = probe_runs[0.05]
    groups = load_checkpoint(run / "checkpoint.pt")["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.05]
    model = create_model("vgg11", 10, pool="learnable_t", width=0.125, k=1)
    n_pool = sum(1 for m in model.modules() if isinstance(m, Pool2d) for _ in m.parameters())
    assert [len(g["params"]) for g in groups] == [len(list(model.parameters())) - n_pool, n_pool]


def test_parameter_groups_split_every_parameter_once() -> None:
    model = create_model("resnet18", 10, pool="gem", width=0.125, stem="imagenet", global_pool="gem")
    groups = parameter_groups(model, 5e-4, 0.0)
    pool_params = {id(p) for m in model.modules() if isinstance(m, Pool2d) for p in m.parameters()}
    assert len(pool_params) == 2  # the stem's GeM p and the head's global GeM p
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert {id(p) for p in groups[1]["params"]} == pool_params
    assert [id(p) for g in groups for p in g["params"]] == [
        id(p) for p in model.parameters() if id(p) not in pool_params
    ] + [id(p) for p in model.parameters() if id(p) in pool_params]
    # Equal decays, or no pooling parameters: the single group of runs made before the option.
    assert len(parameter_groups(model, 5e-4, 5e-4)) == 1
    assert len(parameter_groups(create_model("vgg11", 10, pool="max", width=0.125), 5e-4, 0.0)) == 1


# ---------------------------------------------------------------------- config, run id, CLI, sweep
def test_config_round_trip_and_validation(tmp_path: Path) -> None:
    cfg = RunConfig.from_dict({**BASE, "pool_weight_decay": 1e-4})
    assert cfg.to_dict()["pool_weight_decay"] == 1e-4
    assert RunConfig.from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg
    assert RunConfig.from_dict(BASE).pool_weight_decay == 0.0
    with pytest.raises(ValueError, match=r"pool_weight_decay must be >= 0"):
        RunConfig.from_dict({**BASE, "pool_weight_decay": -1e-4})
    with pytest.raises(ValueError, match=r"pool_weight_decay must be a finite number"):
        RunConfig.from_dict({**BASE, "pool_weight_decay": "none"})


#: The run id of ``BASE`` computed by poolkit before pool_weight_decay existed (every parameter decayed).
OLD_BASE_ID = "30e54c871f"


def test_run_id_separates_the_new_default_from_runs_made_under_the_old_rule() -> None:
    new = RunConfig.from_dict(BASE)
    old_rule = RunConfig.from_dict({**BASE, "pool_weight_decay": 5e-4})
    assert new.run_id() != old_rule.run_id()
    # An old run directory's config.yaml has no pool_weight_decay: it decayed pooling parameters.
    stored = RunConfig.from_stored(BASE)
    assert stored.pool_weight_decay == 5e-4 and stored.run_id() == old_rule.run_id() == OLD_BASE_ID
    # Without weight decay at all the two rules compute the same run: one id, the old one.
    no_wd = {**BASE, "weight_decay": 0.0}
    assert RunConfig.from_dict(no_wd).run_id() == RunConfig.from_stored(no_wd).run_id()
    assert new.replace(pool_weight_decay=1e-3).run_id() not in (new.run_id(), old_rule.run_id())


def test_an_old_finished_run_is_not_taken_for_a_new_default_run(tmp_path: Path) -> None:
    # A run made under the old rule, with the config.yaml that older poolkit wrote (no pool_weight_decay).
    run = tmp_path / "old"
    old_rule = {**PROBE, "pool_weight_decay": PROBE["weight_decay"]}
    result = train_run(old_rule, run, progress=False)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["pool_weight_decay"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(ValueError, match=r"holds a different run .*pool_weight_decay: 0.0005 -> 0.0"):
        train_run(PROBE, run, progress=False)
    assert train_run(old_rule, run, progress=False) == result


def test_cli_flag_and_sweep_train_key(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser(prog="poolkit train")
    add_arguments(parser)
    args = parser.parse_args(["--dataset", "synthetic", "--out", "x", "--pool-weight-decay", "1e-3"])
    assert config_from_args(args).pool_weight_decay == 1e-3
    assert "--pool-weight-decay" in parser.format_help()
    path = tmp_path / "sweep.yaml"
    path.write_text(
        "name: t\ngrid: {dataset: synthetic, pool: [gem], pool_weight_decay: [0.0, 5e-4]}\n"
        "train: {model: vgg11, width: 0.125, epochs: 1}\n",
        encoding="utf-8",
    )
    specs = expand_sweep(load_sweep(path))
    assert [s.config["pool_weight_decay"] for s in specs] == [0.0, 5e-4]
    assert specs[0].run_id != specs[1].run_id
