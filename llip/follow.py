"""Evals that follow the checkpoints of a sweep (or of one run): every kept checkpoint of every
point (a multiple of keep_every, and the last step) is evaluated once it is complete, never
twice, into one result store (evals.main_mc's: <sweep or run dir>/evals unless the eval file
names another output_dir; a later manual eval sweep on the same store reuses the results).

    python -m llip.follow <sweep dir | run dir> [--once] [--launcher local|slurm] [--poll S]
    python -m llip.follow --check EVAL.yaml       # can this eval sweep file follow a sweep?

Why a watcher and not SLURM job dependencies: a dependency starts a job when another one ends,
but kept checkpoints appear in the middle of a training job (and a requeued job ends and starts
again). The follower is one light job per sweep (1 CPU, a poll every `poll` seconds, requeued
like training on preemption or time limit): as each kept checkpoint becomes complete it submits
that checkpoint's eval array, and it ends once no training job of the sweep is live, every kept
checkpoint has been handed on and those evals have finished; then it aggregates the sweep's
table. llip-sweep --evals starts it with the SLURM launcher (and llip-submit --evals for one
run); a local sweep runs it once after each point (`--once`: hand on what is there, evaluate it
here, return). A sweep names its eval file in sweep.json, a single run in follow/evals.json.

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
    follower_spec_path,
    has_config,
    is_sweep_dir,
    read_config_dict,
    read_sweep_record,
    step_of,
    sweep_points,
)
from llip.status import ACTIVE, statuses
from llip.training import slurm
from llip.training.launcher import submit

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


def followed_runs(root: str) -> list[str]:
    """The run dirs whose checkpoints the follower of `root` evaluates."""
    if is_sweep_dir(root):
        return [run for run, _ in sweep_points(root)]
    return [root]


def eval_file(root: str) -> str:
    """The eval sweep file of a sweep (sweep.json) or of a single run (follow/evals.json); ""
    when none is named."""
    if is_sweep_dir(root):
        return read_sweep_record(root).get("evals", "")
    path = follower_spec_path(root)
    return json.loads(read_text(path)).get("evals", "") if os.path.exists(path) else ""


def store(root: str, evals: str = "") -> str:
    """Where the eval results go: the eval file's output_dir, or <sweep or run dir>/evals."""
    evals = evals or eval_file(root)
    if evals:
        out = _read_eval_file(evals).get("output_dir")
        if isinstance(out, str) and out and "${" not in out:
            return os.path.abspath(out)
    return os.path.abspath(evals_dir(root))


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
def _locked(root: str):
    """One follower at a time decides what is handed on (the local launcher's parallel runs
    each call it)."""
    with open(followed_path(root) + ".lock", "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def followed(root: str) -> list[dict]:
    path = followed_path(root)
    rows = []
    for line in (read_text(path).splitlines() if os.path.exists(path) else []):
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a torn last line: that checkpoint is handed on again
    return rows


def hand_on(root: str, evals: str, checkpoint: str, launcher: str) -> dict:
    """Run evals.main_mc on one checkpoint: submit its array (slurm) or evaluate it here."""
    raw = _read_eval_file(evals)
    slurm_settings = dict(raw.get("slurm") or {})
    if launcher == "slurm":
        slurm_settings["max_wait_min"] = 0
    step = step_of(checkpoint)
    point = os.path.basename(os.path.dirname(os.path.dirname(checkpoint)))
    spec = {**raw, "checkpoints": [checkpoint], "output_dir": store(root, evals),
            "launcher": launcher, "slurm": slurm_settings}
    os.makedirs(follower_dir(root), exist_ok=True)
    fname = os.path.join(follower_dir(root), f"evals-{point}-step{step:08d}.yaml")
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


def follow_once(root: str, launcher: str) -> int:
    """Hand on every kept checkpoint not handed on yet; -> how many."""
    evals = eval_file(root)
    if not evals:
        return 0
    with _locked(root):
        seen = {row["checkpoint"] for row in followed(root)}
        new = [c for run in followed_runs(root) for c in kept(run) if c not in seen]
        for checkpoint in new:
            row = hand_on(root, evals, checkpoint, launcher)
            with open(followed_path(root), "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"evals of {checkpoint}: " + (f"array {', '.join(row['jobs'])}" if
                                                row["jobs"] else "done here"), flush=True)
    return len(new)


def _training_live(root: str) -> bool:
    rows, _ = statuses([(run, {}) for run in followed_runs(root)])
    return any(row.state in (*ACTIVE, "unknown") for row in rows)  # unknown: cannot tell yet


def follow(root: str, poll: float = 60.0) -> None:
    """The follower job: hand on checkpoints until training is over, wait for those evals,
    aggregate the sweep's table."""
    while True:
        live = _training_live(root)  # asked first: a run that ends now still gets looked at
        follow_once(root, "slurm")
        if not live:
            break
        time.sleep(poll)
    arrays = [j for row in followed(root) for j in row.get("jobs", [])]
    while any(slurm.is_live(j) for j in arrays):
        time.sleep(poll)
    subprocess.run([sys.executable, "-m", "evals.aggregate",
                    root if is_sweep_dir(root) else store(root)])


class Follower(submitit.helpers.Checkpointable):
    """The follower as a submitit job that requeues itself like training (its state is on
    disk: follow.jsonl and the result store)."""

    def __init__(self, root: str, poll: float):
        self.root, self.poll = root, poll

    def __call__(self) -> None:
        follow(self.root, self.poll)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(Follower(self.root, self.poll))


def submit_follower(root: str, cfg, python: str, hold: bool = False, poll: float = 60.0,
                    evals: str = "") -> str:
    """Submit the follower of a sweep or run dir (1 CPU; partition, account and time of `cfg`)
    unless one is live; -> its job id. `evals`: a single run's eval file (a sweep's is in its
    sweep.json)."""
    if evals:
        os.makedirs(follower_dir(root), exist_ok=True)
        atomic_write(follower_spec_path(root), json.dumps({"evals": os.path.abspath(evals)}))
    path = follower_job_path(root)
    if os.path.exists(path) and slurm.is_live(read_text(path).strip()):
        return read_text(path).strip()
    executor = submitit.SlurmExecutor(folder=follower_dir(root), python=python)
    optional = {"partition": cfg.slurm_partition, "account": cfg.slurm_account,
                "qos": cfg.slurm_qos, "comment": cfg.slurm_comment}
    executor.update_parameters(
        job_name=f"{os.path.basename(root)}-evals", nodes=1, ntasks_per_node=1,
        cpus_per_task=1, time=cfg.slurm_timeout_min, signal_delay_s=cfg.slurm_signal_delay_s,
        **{k: v for k, v in optional.items() if v},
        **({"additional_parameters": {"hold": True}} if hold else {}))
    os.makedirs(follower_dir(root), exist_ok=True)
    job = submit(executor, Follower(os.path.abspath(root), poll))
    atomic_write(path, job.job_id)
    return job.job_id


def check_eval_file(evals: str) -> None:
    """The eval sweep file parses and names known datasets (checked by the evals application
    itself, as a command: llip imports no evals)."""
    checked = subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", evals,
                              "--check"], capture_output=True, text=True)
    if checked.returncode:
        raise ConfigError(f"--evals: {one_line(checked.stderr or checked.stdout)}")


@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m llip.follow", description=__doc__.splitlines()[0])
    p.add_argument("root", nargs="?", help="a sweep dir or a run dir")
    p.add_argument("--once", action="store_true", help="hand on what is there, then return")
    p.add_argument("--launcher", choices=("local", "slurm"), default="slurm")
    p.add_argument("--poll", type=float, default=60.0)
    p.add_argument("--check", metavar="EVAL.yaml", help="check an eval file, run nothing")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if args.check:
        check_eval_file(args.check)
        print(f"{args.check}: can follow a sweep's checkpoints")
        return 0
    if not args.root:
        p.error("give a sweep dir or a run dir (or --check EVAL.yaml)")
    if args.once:
        follow_once(args.root, args.launcher)
    else:
        follow(args.root, args.poll)
    return 0


if __name__ == "__main__":
    sys.exit(main())
