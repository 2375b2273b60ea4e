"""Training: one run from a :class:`RunConfig` to a run directory, resumable, optionally data-parallel.

* :class:`RunConfig` (``config.py``): the validated run config; ``run_id()`` names a run.
* :func:`train_run` (``engine.py``): trains one run into its run directory (the files are
  :class:`poolkit.rundir.RunDir`'s), with its lock, resume and run events; :func:`load_run` reads the
  trained model back. ``trainer.py``: the model, optimizer and loaders of a run and one epoch of
  training (:class:`WarmupCosine`, ``parameter_groups``); ``environment.py``: what env.json records.
* ``checkpoint.py``: atomic writes and RNG capture; ``distributed.py``: torchrun/DDP and
  SyncBatchNorm; ``lock.py``: the run lock (:class:`RunLock`: one process trains a run at a time);
  ``cli.py``: ``poolkit train`` (``--nproc N``: DDP through torchrun's launcher).

See ``docs/training.md`` for the protocol and the guarantees (resume, determinism).
"""

from poolkit.train.config import NON_RESULT_KEYS, RunConfig, load_config_file, yaml_scalar
from poolkit.train.engine import METRIC_COLUMNS, VAL_COLUMNS, load_run, train_run
from poolkit.train.lock import RunBusyError, RunLock, RunLockLost
from poolkit.train.trainer import WarmupCosine, describe_pools

__all__ = [
    "METRIC_COLUMNS",
    "NON_RESULT_KEYS",
    "VAL_COLUMNS",
    "RunBusyError",
    "RunConfig",
    "RunLock",
    "RunLockLost",
    "WarmupCosine",
    "describe_pools",
    "load_config_file",
    "load_run",
    "train_run",
    "yaml_scalar",
]
