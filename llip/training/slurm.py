"""SLURM from outside a job: submitting (submitit executors built from sbatch settings), the
states it reports for job ids, whether a job still lives, and cancelling. The one definition of
a live job, for the run lock (llip.training.claim), the launcher (a second submission into a run
dir with a live job is refused), sweeps and the status board (llip.status)."""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
import sys

import submitit

from llip.errors import ConfigError

# SLURM's states of a job that is queued, running or coming back, as the status board names them
LIVE = {"PENDING": "pending", "SUSPENDED": "pending", "STOPPED": "pending",
        "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued", "REQUEUE_FED": "requeued",
        "RUNNING": "running", "COMPLETING": "running", "CONFIGURING": "running",
        "RESIZING": "running", "SIGNALING": "running", "STAGE_OUT": "running"}
LIVE_STATES = frozenset(LIVE)
TIMEOUT_S = 30


# ---------------------------------------------------------------- submitting
def parameters(cfg) -> dict:
    """The sbatch settings a config asks for, in submitit's SlurmExecutor vocabulary."""
    optional = {"partition": cfg.slurm_partition, "account": cfg.slurm_account,
                "qos": cfg.slurm_qos, "constraint": cfg.slurm_constraint,
                "comment": cfg.slurm_comment,
                "mem": f"{cfg.slurm_mem_gb}GB" if cfg.slurm_mem_gb else "",
                "gpus_per_node": cfg.gpus_per_node if cfg.slurm_gpus else 0}
    return dict(
        job_name=cfg.name, nodes=cfg.nodes, ntasks_per_node=cfg.gpus_per_node,
        cpus_per_task=cfg.slurm_cpus_per_task, time=cfg.slurm_timeout_min,
        signal_delay_s=cfg.slurm_signal_delay_s,
        **{k: v for k, v in optional.items() if v})


def executor(folder: str, params: dict, python: str = "", hold: bool = False):
    """submitit's SlurmExecutor with these sbatch settings; `python`: the job's interpreter
    command (a sweep's code snapshot); `hold`: submit held (`scontrol release` starts it)."""
    found = submitit.SlurmExecutor(folder=folder, python=python or sys.executable)
    found.update_parameters(**params,
                            **({"additional_parameters": {"hold": True}} if hold else {}))
    return found


def submit(executor, fn):
    """Submit a callable; a scheduler that refuses or cannot be reached is one line."""
    try:
        return executor.submit(fn)
    except submitit.core.utils.FailedJobError as exn:
        lines = [line for line in str(exn).splitlines() if line.strip()]
        raise ConfigError(f"sbatch failed: {lines[-1] if lines else exn} (is SLURM reachable? "
                          "check SLURM_CONF and that slurmctld runs)") from None


# ---------------------------------------------------------------- asking


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


# ---------------------------------------------------------------- states for the status board
_FIELD = re.compile(r"(?:^|\s)(JobId|ArrayJobId|ArrayTaskId|JobState|Restarts|ExitCode|Reason)="
                    r"(\S*)")


@dataclasses.dataclass(frozen=True)
class JobState:
    state: str  # SLURM's: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, TIMEOUT, ...
    restarts: int = 0  # times the job was requeued (preemption, time limit)
    exit_code: str = ""
    reason: str = ""


def parse_scontrol(text: str) -> dict[str, JobState]:
    """`scontrol show job -o` (one line per job) -> {job id: JobState}; an array's tasks are
    "<array id>_<task>"."""
    out = {}
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        job = fields["JobId"]
        if fields.get("ArrayTaskId") and fields.get("ArrayJobId"):
            job = f"{fields['ArrayJobId']}_{fields['ArrayTaskId']}"
        restarts = fields.get("Restarts", "0")
        out[job] = JobState(fields["JobState"], int(restarts) if restarts.isdigit() else 0,
                            fields.get("ExitCode", ""), fields.get("Reason", ""))
    return out


def parse_sacct(text: str) -> dict[str, JobState]:
    """`sacct -n -P -X -o JobID,State,ExitCode` -> {job id: JobState} ("CANCELLED by 0" is
    CANCELLED)."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 3 and parts[0]:
            out[parts[0]] = JobState(parts[1].split()[0] if parts[1] else "", 0, parts[2])
    return out


def _run(argv: list[str]):
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    return out if out.returncode == 0 else None


def job_states(job_ids) -> dict[str, JobState] | None:
    """SLURM's view of `job_ids`: the controller's (scontrol: queued, running and recently
    ended jobs, with restart counts), then accounting's (sacct, where it runs) for jobs the
    controller has forgotten. None when the controller cannot be reached; jobs neither knows
    are missing from the result."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    shown = _run(["scontrol", "show", "job", "-o"])
    if shown is None:
        return None
    found = parse_scontrol(shown.stdout)
    missing = [i for i in ids if i not in found]
    if missing:
        accounted = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing),
                          "-o", "JobID,State,ExitCode"])
        if accounted is not None:
            found.update({k: v for k, v in parse_sacct(accounted.stdout).items()
                          if k not in found})
    return {i: found[i] for i in ids if i in found}


def cancel(job_ids) -> None:
    """scancel these jobs (SIGTERM, then SIGKILL after SLURM's KillWait): a checkpoint being
    written is lost, the complete ones are untouched (they are renamed into place whole)."""
    ids = sorted(set(job_ids))
    if ids:
        _run(["scancel", *ids])
