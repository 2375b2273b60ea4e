"""What the SLURM scheduler says about a sweep's jobs (``sacct``, through submitit)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["QUEUED_STATES", "scheduler_states"]

#: Job states in which a run counts as queued (it will start, or is starting).
QUEUED_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RUNNING", "SUSPENDED"}
)


def scheduler_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """SLURM's state of each job id (one ``sacct`` call for all), or None when ``sacct`` is not here."""
    import shutil

    ids = [str(j) for j in job_ids if j]
    if not ids or shutil.which("sacct") is None:
        return None
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher

        watcher = SlurmInfoWatcher(delay_s=600)
        for job_id in ids:
            watcher.register_job(job_id)
        watcher.update()
        return {job_id: watcher.get_state(job_id, mode="cache") for job_id in ids}
    except Exception:  # a broken sacct must not break the status table
        return None


_QUEUED_STATES = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING", "RUNNING", "SUSPENDED"}
