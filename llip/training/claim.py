"""A run dir belongs to one run and one config: before a run writes anything, its main rank
locks the run dir and checks that a relaunch keeps the config; every rank gets the verdict, so
a refusal ends all ranks with the same line instead of leaving the others at a barrier.

* RunLock: the main rank of a training run holds <run dir>/LOCK (created with O_EXCL; JSON with
  host, pid, process start time and SLURM job id). A second launch into the same dir stops with
  one line naming the holder. A lock is taken over when its holder is gone: a dead pid on this
  host (or a live pid that is another process: its start time differs), the same SLURM job
  (a requeued job resumes on another node, or after its process was killed), or a SLURM job
  that squeue no longer lists (llip.training.slurm). A holder on another host without SLURM
  cannot be checked: the message says which file to remove if it is gone.
* check_relaunch: a relaunch into a run dir that has a checkpoint must use the config saved
  there, except for the fields llip.config.SAFE_TO_CHANGE names; anything else is refused with
  a one-line diff. A run dir without a checkpoint takes the new config.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time

from llip.config import SAFE_TO_CHANGE, RunConfig, config_changes
from llip.errors import ConfigError, storage_error
from llip.run_dir import has_config, latest, lock_path, read_config_dict
from llip.training import dist, slurm

log = logging.getLogger("llip.train")


def claim_run_dir(run_dir: str, cfg, world):
    """The held RunLock on the main rank (None elsewhere); raises on every rank if refused."""
    lock, error = None, None
    if world.is_main:
        try:
            lock = RunLock(run_dir).acquire()
            check_relaunch(run_dir, cfg)
        except Exception as exn:  # noqa: BLE001 - shared with the other ranks, then re-raised
            error = exn
            if lock is not None:
                lock.release()
    verdict = dist.all_gather_object(
        None if error is None else (storage_error(error) or str(error)))[0]
    if error is not None:
        raise error
    if verdict is not None:
        raise ConfigError(f"rank 0 refused the run dir: {verdict}")
    return lock


# ---------------------------------------------------------------- config on relaunch
def check_relaunch(run_dir: str, cfg: RunConfig) -> None:
    if latest(run_dir) is None or not has_config(run_dir):
        return
    changes = config_changes(read_config_dict(run_dir), cfg)
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


def holder_text(holder: dict) -> str:
    """Who holds a lock, for the refusal: pid, host, SLURM job, since when."""
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
    if job and slurm.is_live(job) is False:
        return f"SLURM job {job} is no longer queued or running"
    return None


class RunLock:
    def __init__(self, run_dir: str):
        self.run_dir, self.path = run_dir, lock_path(run_dir)
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
                            f"run dir {self.run_dir} is in use by {holder_text(holder)}: wait "
                            "for it to finish, stop it, or pick another name= (if it is gone, "
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
        # a hidden file beside the lock: held with flock while one acquirer judges the holder
        with open(os.path.join(os.path.dirname(self.path),
                               f".{os.path.basename(self.path)}.guard"), "a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
