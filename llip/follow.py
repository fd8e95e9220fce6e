"""Evals that follow the checkpoints of a sweep: every kept checkpoint of every point (a multiple
of keep_every, and the last step) is evaluated once it is complete, never twice, into one
result store (evals.main_mc's, <sweep>/evals unless the eval file names another output_dir: a
later manual eval sweep on the same store reuses the results).

    python -m llip.follow <sweep dir> [--once] [--launcher local|slurm] [--poll SECONDS]
    python -m llip.follow --check EVAL.yaml       # can this eval sweep file follow a sweep?

Why a watcher and not SLURM job dependencies: a dependency starts a job when another one ends,
but kept checkpoints appear in the middle of a training job (and a requeued job ends and starts
again). The follower is one light job per sweep (1 CPU, a poll every `poll` seconds, requeued
like training on preemption or time limit): as each kept checkpoint becomes complete it submits
that checkpoint's eval array, and it ends once no training job of the sweep is live, every kept
checkpoint has been handed on and those evals have finished; then it aggregates the sweep's
table. llip-sweep --evals starts it with the SLURM launcher; the local launcher runs it once
after each point (`--once`: hand on what is there, evaluate it here, return).

The evals run through the evals application's own command (python -m evals.main_mc --fname
<file>): llip imports nothing from evals. Each file the follower writes (in <sweep>/follow/) is
the sweep's eval file with `checkpoints` set to the one checkpoint, `output_dir` to the store and
`max_wait_min: 0`, so that main_mc submits the array and returns. follow.jsonl records every
checkpoint handed on (with its array's job id), under a file lock: never twice.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
import time

import submitit
import yaml

from llip.cli import cli
from llip.errors import ConfigError, one_line
from llip.io import atomic_write, read_text
from llip.run_dir import (
    complete_checkpoints,
    evals_dir,
    followed_path,
    follower_dir,
    follower_job_path,
    has_config,
    read_config_dict,
    step_of,
)
from llip.training import slurm

_ARRAY = re.compile(r"submitted array (\d+)")


def _read_eval_file(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exn:
        raise ConfigError(f"eval file {path} cannot be read ({one_line(exn)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"eval file {path} must be a mapping of keys (catalogs, datasets, ...)")
    return raw


def store(sweep_dir: str, record: dict) -> str:
    """Where the sweep's eval results go: the eval file's output_dir, or <sweep>/evals."""
    if record.get("evals"):
        out = _read_eval_file(record["evals"]).get("output_dir")
        if isinstance(out, str) and out and "${" not in out:
            return os.path.abspath(out)
    return os.path.abspath(evals_dir(sweep_dir))


def kept(run_dir: str) -> list[str]:
    """The run's complete checkpoints that are kept: multiples of keep_every, and the last."""
    if not has_config(run_dir):
        return []
    cfg = read_config_dict(run_dir)
    every = int(cfg.get("keep_every", 0) or 0)
    total = int(cfg["epochs"]) * max(1, int(cfg["train_num_samples"]) // int(cfg["batch_size"]))
    found = []
    for path in complete_checkpoints(run_dir):
        step = step_of(path)
        if step == total or (every and step % every == 0):
            found.append(os.path.abspath(path))
    return found


@contextlib.contextmanager
def _locked(sweep_dir: str):
    """One follower at a time decides what is handed on (the local launcher's parallel runs
    each call it)."""
    with open(followed_path(sweep_dir) + ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def followed(sweep_dir: str) -> list[dict]:
    path = followed_path(sweep_dir)
    rows = []
    for line in (read_text(path).splitlines() if os.path.exists(path) else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line: that checkpoint is handed on again
    return rows


def hand_on(sweep_dir: str, record: dict, checkpoint: str, launcher: str) -> dict:
    """Run evals.main_mc on one checkpoint: submit its array (slurm) or evaluate it here."""
    raw = _read_eval_file(record["evals"])
    slurm_settings = dict(raw.get("slurm") or {})
    if launcher == "slurm":
        slurm_settings["max_wait_min"] = 0
    step = step_of(checkpoint)
    point = os.path.basename(os.path.dirname(os.path.dirname(checkpoint)))
    spec = {**raw, "checkpoints": [checkpoint], "output_dir": store(sweep_dir, record),
            "launcher": launcher, "slurm": slurm_settings}
    os.makedirs(follower_dir(sweep_dir), exist_ok=True)
    fname = os.path.join(follower_dir(sweep_dir), f"evals-{point}-step{step:08d}.yaml")
    atomic_write(fname, yaml.safe_dump(spec, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", fname,
                           "--no-aggregate"], capture_output=True, text=True)
    with open(fname[:-len(".yaml")] + ".log", "a") as log:
        log.write(done.stdout + done.stderr)
    if done.returncode not in (0, 1):  # 1: some tasks failed (listed in the log), others ran
        raise ConfigError(f"evals of {checkpoint} could not start: "
                          f"{one_line(done.stderr or done.stdout)}")
    return {"checkpoint": checkpoint, "step": step, "time": time.time(), "launcher": launcher,
            "jobs": _ARRAY.findall(done.stdout), "exit": done.returncode}


def follow_once(sweep_dir: str, launcher: str) -> int:
    """Hand on every kept checkpoint not handed on yet; -> how many."""
    from llip.sweep import point_dirs, read_record
    record = read_record(sweep_dir)
    if not record.get("evals"):
        return 0
    with _locked(sweep_dir):
        seen = {row["checkpoint"] for row in followed(sweep_dir)}
        new = [c for run in point_dirs(sweep_dir) for c in kept(run) if c not in seen]
        for checkpoint in new:
            row = hand_on(sweep_dir, record, checkpoint, launcher)
            with open(followed_path(sweep_dir), "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"evals of {checkpoint}: " + (f"array {', '.join(row['jobs'])}" if
                                                row["jobs"] else "done here"), flush=True)
    return len(new)


def _training_live(sweep_dir: str) -> bool:
    from llip.status import ACTIVE, statuses
    from llip.sweep import point_dirs
    rows, _ = statuses([(run, {}) for run in point_dirs(sweep_dir)])
    return any(row.state in (*ACTIVE, "unknown") for row in rows)  # unknown: cannot tell yet


def follow(sweep_dir: str, poll: float = 60.0) -> None:
    """The follower job: hand on checkpoints until training is over, wait for those evals,
    aggregate the sweep's table."""
    while True:
        live = _training_live(sweep_dir)  # asked first: a run that ends now still gets looked at
        follow_once(sweep_dir, "slurm")
        if not live:
            break
        time.sleep(poll)
    arrays = [j for row in followed(sweep_dir) for j in row.get("jobs", [])]
    while any(slurm.is_live(j) for j in arrays):
        time.sleep(poll)
    subprocess.run([sys.executable, "-m", "evals.aggregate", sweep_dir])


class Follower(submitit.helpers.Checkpointable):
    """The follower as a submitit job that requeues itself like training (its state is on
    disk: follow.jsonl and the result store)."""

    def __init__(self, sweep_dir: str, poll: float):
        self.sweep_dir, self.poll = sweep_dir, poll

    def __call__(self) -> None:
        follow(self.sweep_dir, self.poll)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(Follower(self.sweep_dir, self.poll))


def submit_follower(sweep_dir: str, python: str, hold: bool = False, poll: float = 60.0) -> str:
    """Submit the follower (1 CPU, the partition/account/time of the sweep's base config)
    unless one is live; -> its job id."""
    from llip.sweep import base_config
    from llip.training.launcher import submit
    path = follower_job_path(sweep_dir)
    if os.path.exists(path) and slurm.is_live(read_text(path).strip()):
        return read_text(path).strip()
    cfg = base_config(sweep_dir)
    executor = submitit.SlurmExecutor(folder=follower_dir(sweep_dir), python=python)
    optional = {"partition": cfg.slurm_partition, "account": cfg.slurm_account,
                "qos": cfg.slurm_qos, "comment": cfg.slurm_comment}
    executor.update_parameters(
        job_name=f"{os.path.basename(sweep_dir)}-evals", nodes=1, ntasks_per_node=1,
        cpus_per_task=1, time=cfg.slurm_timeout_min, signal_delay_s=cfg.slurm_signal_delay_s,
        **{k: v for k, v in optional.items() if v},
        **({"additional_parameters": {"hold": True}} if hold else {}))
    os.makedirs(follower_dir(sweep_dir), exist_ok=True)
    job = submit(executor, Follower(os.path.abspath(sweep_dir), poll))
    atomic_write(path, job.job_id)
    return job.job_id


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llip.follow", description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir", nargs="?")
    p.add_argument("--once", action="store_true", help="hand on what is there, then return")
    p.add_argument("--launcher", choices=("local", "slurm"), default="slurm")
    p.add_argument("--poll", type=float, default=60.0)
    p.add_argument("--check", metavar="EVAL.yaml", help="check an eval file, run nothing")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        done = subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", args.check,
                               "--check"], capture_output=True, text=True)
        print(done.stdout, end="")
        print(done.stderr, end="", file=sys.stderr)
        return done.returncode
    if not args.sweep_dir:
        p.error("give a sweep dir (or --check EVAL.yaml)")
    if args.once:
        follow_once(args.sweep_dir, args.launcher)
    else:
        follow(args.sweep_dir, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
