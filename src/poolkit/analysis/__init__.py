"""Analyses of trained runs that read a run directory and write their results beside it.

* :mod:`poolkit.analysis.shift`: the translation-invariance probe (shift consistency, accuracy under
  shift), written to ``shift.json``; ``poolkit shift RUN_DIR`` on the command line.
"""

from poolkit.analysis.shift import probe_model, probe_run

__all__ = ["probe_model", "probe_run"]
