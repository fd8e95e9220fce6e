"""SLURM seen from outside a job: the states squeue reports for a job id, and whether the job
still lives. The one definition of a live job, for the run lock (llip.training.claim), the
launcher (a second submission into a run dir with a live job is refused) and the status board."""
from __future__ import annotations

import shutil
import subprocess

# squeue states of a job that is queued, running or coming back (a requeued or held job)
LIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING",
                         "SUSPENDED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "STOPPED"})
TIMEOUT_S = 30


def squeue_states(job_id: str) -> set[str] | None:
    """The states squeue lists for `job_id` (several for an array): empty once SLURM no longer
    lists the job (or never knew the id); None when SLURM cannot be asked (no squeue here, or a
    controller that does not answer)."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # a job id SLURM forgot is gone; a controller that fails is unknown
        return set() if "invalid job id" in out.stderr.lower() else None
    return set(out.stdout.split())


def is_live(job_id: str) -> bool | None:
    """True while SLURM lists the job as queued or running, False once it does not, None when
    SLURM cannot be asked."""
    states = squeue_states(job_id)
    return None if states is None else bool(states & LIVE_STATES)
