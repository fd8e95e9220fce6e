"""A run dir belongs to one run and one config.

* RunLock: the main rank of a training run holds <run dir>/LOCK (created with O_EXCL; JSON with
  host, pid, process start time and SLURM job id). A second launch into the same dir stops with
  one line naming the holder. A lock is taken over when its holder is gone: a dead pid on this
  host (or a live pid that is another process: its start time differs), the same SLURM job
  (a requeued job resumes on another node, or after its process was killed), or a SLURM job
  that squeue no longer lists. A holder on another host without SLURM cannot be checked: the
  message says which file to remove if it is gone.
* check_relaunch: a relaunch into a run dir that has a checkpoint must use the config saved
  there, except for SAFE_TO_CHANGE fields (how long, how often to log and save, how many
  workers and nodes, speed switches that do not change the maths, where it is logged). Anything
  else is refused with a one-line diff. A run dir without a checkpoint takes the new config.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import time

from llip import run_dir as rd
from llip.cli import ConfigError
from llip.config import RunConfig, to_dict

log = logging.getLogger("llip.train")
LOCK = "LOCK"
SAFE_TO_CHANGE = frozenset({
    "name", "description", "logs",  # where the run lives (a moved run dir still resumes)
    "epochs",  # train longer (the cosine schedule is stretched from the resumed step on)
    "log_every", "checkpoint_every", "keep_last", "wandb_project", "wandb_mode",
    "workers", "nodes", "gpus_per_node",  # DCP reshards; the batch order then differs
    "torch_compile", "grad_checkpointing", "llip_chunk",  # speed/memory, same maths
    "max_corrupt_fraction",
    "slurm_partition", "slurm_account", "slurm_qos", "slurm_constraint", "slurm_timeout_min",
    "slurm_mem_gb", "slurm_cpus_per_task", "slurm_gpus", "slurm_comment",
    "slurm_signal_delay_s",
})
LIVE_SLURM_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED",
                     "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "STOPPED"}


# ---------------------------------------------------------------- config on relaunch
def config_changes(saved: dict, cfg: RunConfig) -> list[str]:
    """'key: saved -> new' for every field outside SAFE_TO_CHANGE that differs."""
    new = to_dict(cfg)
    defaults = to_dict(RunConfig())
    return [f"{key} {saved.get(key, defaults[key])!r} -> {value!r}"
            for key, value in new.items()
            if key not in SAFE_TO_CHANGE and saved.get(key, defaults[key]) != value]


def check_relaunch(run_dir: str, cfg: RunConfig) -> None:
    if rd.latest(run_dir) is None or not os.path.exists(os.path.join(run_dir, rd.CONFIG)):
        return
    changes = config_changes(rd.read_config_dict(run_dir), cfg)
    if changes:
        raise ConfigError(
            f"{run_dir} holds a run with another config ({', '.join(changes)}); resuming would "
            "mix two experiments: relaunch with the saved values, or pick another name= (only "
            f"{', '.join(sorted(k for k in SAFE_TO_CHANGE if not k.startswith('slurm_')))} "
            "and slurm_* may change on resume)")


# ---------------------------------------------------------------- the lock
def _start_time(pid: int):
    """The process's start time in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _slurm_job_live(job_id: str):
    """True / False from squeue, None when there is no squeue to ask."""
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:  # a job id SLURM forgot is gone; a controller that fails is unknown
        return False if "invalid job id" in out.stderr.lower() else None
    return bool(set(out.stdout.split()) & LIVE_SLURM_STATES)


def describe(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("time", 0)))
    return f"pid {holder.get('pid')} on host {holder.get('host')}{job} (since {since})"


def stale_reason(holder: dict, me: dict):
    """Why the holder's lock may be taken over, or None while the holder may still run."""
    pid = holder.get("pid")
    if holder.get("host") == me["host"] and isinstance(pid, int):
        if _pid_alive(pid) and holder.get("started") in (None, _start_time(pid)):
            return None  # even within the same SLURM job: two launches on one node
        return f"pid {pid} is no longer running on this host"
    job = holder.get("slurm_job_id")
    if job and job == me["slurm_job_id"]:
        return f"this is the same SLURM job {job}, requeued"
    if job and _slurm_job_live(job) is False:
        return f"SLURM job {job} is no longer queued or running"
    return None


class RunLock:
    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, os.path.join(run_dir, LOCK)
        self.me = {"host": socket.gethostname(), "pid": os.getpid(),
                   "started": _start_time(os.getpid()),
                   "slurm_job_id": os.environ.get("SLURM_JOB_ID", ""), "time": time.time()}
        self.held = False

    def acquire(self) -> "RunLock":
        os.makedirs(self.run_dir, exist_ok=True)
        with self._guard():  # one acquirer at a time on this host while judging staleness
            for _ in range(2):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                except FileExistsError:
                    holder = self._holder()
                    reason = "its lock file is unreadable" if holder is None else \
                        stale_reason(holder, self.me)
                    if reason is None:
                        raise ConfigError(
                            f"run dir {self.run_dir} is in use by {describe(holder)}: wait for "
                            "it to finish, stop it, or pick another name= (if it is gone, "
                            f"remove {self.path})") from None
                    log.warning("taking over the lock of run dir %s: %s", self.run_dir, reason)
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(self.path)
                    continue
                with os.fdopen(fd, "w") as f:
                    f.write(json.dumps(self.me) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                self.held = True
                return self
        raise ConfigError(f"could not lock run dir {self.run_dir}: another launch took it first")

    def release(self) -> None:
        if self.held and self._holder() == self.me:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
        self.held = False

    def _holder(self):
        try:
            with open(self.path, encoding="utf-8") as f:
                holder = json.loads(f.read())
            return holder if isinstance(holder, dict) else None
        except (OSError, ValueError):
            return None

    @contextlib.contextmanager
    def _guard(self):
        with open(os.path.join(self.run_dir, f".{LOCK}.guard"), "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
