"""The experiment harness: sweeps of training runs, their launchers, presets and ``poolkit reproduce``.

* :mod:`~poolkit.experiments.config`: the sweep YAML schema and its validation
  (:func:`load_sweep`, :func:`load_preset`, :func:`list_presets`).
* :mod:`~poolkit.experiments.grid`: grid expansion into runs (:func:`expand_sweep`) and their names.
* :mod:`~poolkit.experiments.runner`: what is left to do (:func:`plan_runs`) and running one run
  (``execute_run``, with the shift probe after training); the launchers use only this module.
* :mod:`~poolkit.experiments.sweep`: :func:`run_sweep`, its summary, and where every run stands
  (:func:`sweep_status`); :mod:`~poolkit.experiments.scheduler`: what SLURM says about the jobs.
* :mod:`~poolkit.experiments.launchers`: ``local`` (worker processes) and ``slurm`` (submitit).
* :mod:`~poolkit.experiments.cli`: ``poolkit sweep`` and ``poolkit reproduce``.

Example:
    >>> from poolkit.experiments import expand_sweep, load_preset
    >>> [run.method for run in expand_sweep(load_preset("quick"))][:3]
    ['max', 'avg', 'tmaxavg']

See ``docs/experiments.md`` for the schema, the launchers and the presets.
"""

from poolkit.experiments.config import (
    LocalOptions,
    Override,
    PoolEntry,
    SlurmOptions,
    SweepConfig,
    SweepConfigError,
    list_presets,
    load_preset,
    load_sweep,
    preset_path,
)
from poolkit.experiments.grid import RunSpec, expand_sweep
from poolkit.experiments.runner import PlannedRun, RunOutcome, plan_runs
from poolkit.experiments.sweep import RunStatus, SweepResult, results_table, run_sweep, sweep_status

__all__ = [
    "LocalOptions",
    "Override",
    "PlannedRun",
    "PoolEntry",
    "RunOutcome",
    "RunSpec",
    "RunStatus",
    "SlurmOptions",
    "SweepConfig",
    "SweepConfigError",
    "SweepResult",
    "expand_sweep",
    "list_presets",
    "load_preset",
    "load_sweep",
    "plan_runs",
    "preset_path",
    "results_table",
    "run_sweep",
    "sweep_status",
]
