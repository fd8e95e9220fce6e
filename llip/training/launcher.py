"""A run on SLURM through submitit: its executor (from the config), the requeueable callable,
submission and the run's job record (the command is llip.submit; SLURM plumbing in
llip.training.slurm).

Preemption with sharded checkpoints: submitit calls `checkpoint()` on global rank 0 only, while a
DCP save needs every rank. So `checkpoint()` saves nothing: it returns a fresh callable holding
only the config (never a model or optimizer), submitit requeues the job, and the Trainer resumes
from the newest complete checkpoint, which it writes every `checkpoint_every` steps.
"""
import os
import shlex
import shutil
import signal
import sys

import submitit

from llip.errors import ConfigError
from llip.io import atomic_write, read_text
from llip.run_dir import job_id_path, path_of, submitit_dir
from llip.training import slurm
from llip.training.trainer import Trainer


class SlurmTrainer(submitit.helpers.Checkpointable):
    def __init__(self, cfg):
        self.cfg = cfg

    def __call__(self) -> str:
        return Trainer(self.cfg)()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # submitit runs `scontrol requeue` next, from this process, and the requeue cancels this
        # job step: the step's SIGTERM reaches every process in it, `scontrol` included, and one
        # still running (a loaded node) dies of it: the job ends failed instead of requeued.
        # An ignored signal stays ignored across exec, so `scontrol` survives; this process
        # exits right after the requeue (and SLURM's SIGKILL after KillWait still applies).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        return submitit.helpers.DelayedSubmission(SlurmTrainer(self.cfg))


def submitit_folder(cfg) -> str:
    return submitit_dir(path_of(cfg))


def make_executor(cfg, local: bool = False, python: str = "", hold: bool = False):
    """submitit's executor for a run: SLURM (or its local executor). `python`: the interpreter
    command of the job (a sweep's code snapshot); `hold`: submit held (`scontrol release`)."""
    folder = submitit_folder(cfg)
    if local:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=cfg.slurm_timeout_min, nodes=1,
                                   tasks_per_node=cfg.nodes * cfg.gpus_per_node,
                                   gpus_per_node=cfg.gpus_per_node if cfg.slurm_gpus else 0)
        return executor
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("no SLURM on this machine (sbatch/srun not found): train with "
                          f"`python -m llip.main {cfg.name} ...`, or add --local to run through "
                          "submitit's local executor")
    return slurm.executor(folder, slurm.parameters(cfg), python, hold)


def submit_run(executor, cfg):
    """Submit the run's Trainer; its job id is recorded in its run dir (SLURM)."""
    job = slurm.submit(executor, SlurmTrainer(cfg))
    if not isinstance(executor, submitit.LocalExecutor):
        record_job(cfg, job.job_id)
    return job


def sbatch_script(cfg) -> str:
    """The script `sbatch` would get; needs no SLURM on this machine."""
    from submitit.slurm.slurm import _make_sbatch_string  # what SlurmExecutor itself calls
    folder = submitit_folder(cfg)
    # quoted as submitit quotes its own command: a space or "$(...)" in a path stays a path
    command = f"{shlex.quote(sys.executable)} -u -m submitit.core._submit {shlex.quote(folder)}"
    return _make_sbatch_string(command=command, folder=folder, **slurm.parameters(cfg))


def live_job(cfg):
    """The id of a queued or running job that owns this run dir, if any."""
    path = job_id_path(path_of(cfg))
    if not os.path.exists(path):
        return None
    job_id = read_text(path).strip()
    return job_id if slurm.is_live(job_id) else None


def record_job(cfg, job_id: str) -> None:
    atomic_write(job_id_path(path_of(cfg)), job_id)
