"""Evals that follow the checkpoints of a sweep (or of one run): every kept checkpoint of every
point (a multiple of keep_every, and the last step) is evaluated once it is complete, into one
result store (evals.main_mc's: <sweep or run dir>/evals unless the eval file names another
output_dir; a later manual eval sweep on the same store reuses the results).

    python -m llip.follow <sweep dir | run dir> [--once] [--launcher local|slurm] [--poll S]
    python -m llip.follow --check EVAL.yaml       # can this eval sweep file follow a sweep?

Why a watcher and not SLURM job dependencies: a dependency starts a job when another one ends,
but kept checkpoints appear in the middle of a training job (and a requeued job ends and starts
again). The follower is one light job per sweep (1 CPU, a look every `poll` seconds, requeued
like training on preemption or time limit): as each kept checkpoint becomes complete it submits
that checkpoint's eval array, and it ends once no training job of the sweep is live, every kept
checkpoint has been handed on and those evals have finished (or the eval file's max_wait_min
has passed); then it aggregates the table. llip-sweep --evals starts it with the SLURM launcher
(llip-submit --evals for one run); a local sweep runs it once after each point and at its end
(`--once`: hand on what is there, evaluate it here, return).

The evals run through the evals application's own command (python -m evals.main_mc --fname
<file>): llip imports nothing from evals. The user's eval file is copied at launch
(<root>/follow/evals.yaml, catalogs made absolute, output_dir fixed): later edits of it do not
change a running sweep. Each checkpoint gets a file of its own: the copy with `checkpoints` set
to that checkpoint and `max_wait_min: 0`, so that main_mc submits the array and returns.
follow.jsonl records every checkpoint handed on, under a file lock, so none is handed on twice
(a local evaluation that failed is tried again by the next look; a follower stopped in the
instant between submitting an array and recording it hands that checkpoint on again, and
main_mc then skips every result already complete or writes the same files again, atomically).
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
from llip.evaluation.catalog import expand
from llip.io import atomic_write, read_text, read_yaml
from llip.run_dir import (
    complete_checkpoints,
    eval_store,
    evals_dir,
    followed_lock_path,
    followed_path,
    followed_runs,
    follower_dir,
    follower_eval_file,
    follower_job_path,
    follower_task_file,
    is_run_dir,
    is_sweep_dir,
    read_config_dict,
    step_in_name,
    total_steps,
)
from llip.status import ACTIVE, statuses
from llip.training import slurm

_ARRAY = re.compile(r"submitted array (\d+)")
DEFAULT_MAX_WAIT_MIN = 120


def _read_eval_file(path: str) -> dict:
    try:
        raw = read_yaml(path) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exn:
        raise ConfigError(f"eval file {path} cannot be read ({one_line(exn)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"eval file {path} must be a mapping of keys (catalogs, datasets, ...)")
    return raw


def check_eval_file(evals: str) -> None:
    """The eval sweep file parses and names known datasets (checked by the evals application
    itself, as a command: llip imports no evals)."""
    checked = subprocess.run([sys.executable, "-m", "evals.main_mc", "--fname", evals,
                              "--check"], capture_output=True, text=True)
    if checked.returncode:
        raise ConfigError(f"--evals: {one_line(checked.stderr or checked.stdout)}")


def adopt_eval_file(root: str, evals: str) -> str:
    """Copy the user's eval file (checked first with check_eval_file) to
    <root>/follow/evals.yaml: catalogs absolute, output_dir fixed (the eval file's, or
    <root>/evals), its checkpoints dropped (the sweep's are evaluated). -> the copy."""
    raw = _read_eval_file(evals)
    spec = {k: v for k, v in raw.items() if k != "checkpoints"}
    if isinstance(raw.get("catalogs"), list):  # (relative to here, where main_mc found them)
        spec["catalogs"] = [os.path.abspath(expand(c)) for c in raw["catalogs"]]
    out = raw.get("output_dir")
    spec["output_dir"] = os.path.abspath(expand(out)) if isinstance(out, str) and out \
        else os.path.abspath(evals_dir(root))
    os.makedirs(follower_dir(root), exist_ok=True)
    atomic_write(follower_eval_file(root), yaml.safe_dump(spec, sort_keys=False))
    return follower_eval_file(root)


def kept(run_dir: str) -> list[str]:
    """The run's complete checkpoints that are kept: multiples of keep_every, and the last.
    Steps come from the directory names: training prunes the others while we look."""
    total = total_steps(run_dir)
    if total is None:
        return []
    every = int(read_config_dict(run_dir).get("keep_every", 0) or 0)
    return [os.path.abspath(path) for path in complete_checkpoints(run_dir)
            if step_in_name(path) == total or (every and step_in_name(path) % every == 0)]


@contextlib.contextmanager
def _locked(root: str):
    """One follower at a time decides what is handed on (a local sweep's parallel runs each
    call it)."""
    with open(followed_lock_path(root), "a") as f:
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


def hand_on(root: str, checkpoint: str, launcher: str) -> dict:
    """Run evals.main_mc on one checkpoint: submit its array (slurm) or evaluate it here."""
    raw = _read_eval_file(follower_eval_file(root))
    settings = dict(raw.get("slurm") or {})
    if launcher == "slurm":
        settings["max_wait_min"] = 0
    step = step_in_name(checkpoint)
    point = os.path.basename(os.path.dirname(os.path.dirname(checkpoint)))
    fname = follower_task_file(root, point, step)
    atomic_write(fname, yaml.safe_dump({**raw, "checkpoints": [checkpoint],
                                        "launcher": launcher, "slurm": settings},
                                       sort_keys=False))
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
    """Hand on every kept checkpoint not handed on yet (or whose local evaluation failed);
    -> how many."""
    if not os.path.exists(follower_eval_file(root)):
        return 0
    with _locked(root):
        seen = {row["checkpoint"] for row in followed(root) if row.get("exit", 0) == 0}
        new = [c for run in followed_runs(root) for c in kept(run) if c not in seen]
        for checkpoint in new:
            row = hand_on(root, checkpoint, launcher)
            with open(followed_path(root), "a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"evals of {checkpoint}: " + (f"array {', '.join(row['jobs'])}" if
                                                row["jobs"] else "done here"), flush=True)
    return len(new)


def _training_live(root: str) -> int:
    """How many runs still train (or may: unknown while the controller does not answer)."""
    rows, _ = statuses([(run, {}) for run in followed_runs(root)])
    return sum(row.state in (*ACTIVE, "unknown") for row in rows)


def aggregate(root: str) -> None:
    """The table of the evals (a sweep's, with its axes) as a command of the evals app."""
    subprocess.run([sys.executable, "-m", "evals.aggregate",
                    root if is_sweep_dir(root) else eval_store(root)])


def follow(root: str, poll: float = 60.0, launcher: str = "slurm") -> None:
    """The follower: hand on checkpoints until training is over, wait (bounded) for those
    evals, aggregate the table."""
    said = None
    while True:
        live = _training_live(root)  # asked first: a run that ends now still gets looked at
        follow_once(root, launcher)
        if not live:
            break
        if live != said:
            print(f"{live} run(s) training; looking again every {poll:g}s", flush=True)
            said = live
        time.sleep(poll)
    settings = _read_eval_file(follower_eval_file(root)).get("slurm") or {}
    deadline = time.time() + 60 * settings.get("max_wait_min", DEFAULT_MAX_WAIT_MIN)
    arrays = [j for row in followed(root) for j in row.get("jobs", [])]
    print(f"training is over; waiting for {len(arrays)} eval job(s)", flush=True)
    while any(slurm.is_live(j) for j in arrays) and time.time() < deadline:
        time.sleep(poll)
    print("aggregating the table", flush=True)
    aggregate(root)


class Follower(submitit.helpers.Checkpointable):
    """The follower as a submitit job that requeues itself like training (its state is on
    disk: follow.jsonl and the result store)."""

    def __init__(self, root: str, poll: float):
        self.root, self.poll = root, poll

    def __call__(self) -> None:
        follow(self.root, self.poll)

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(Follower(self.root, self.poll))


def submit_follower(root: str, cfg, python: str, hold: bool = False,
                    poll: float = 60.0) -> str:
    """Submit the follower of a sweep or run dir unless one is live (1 CPU, no GPU; partition,
    account, qos, time of `cfg`); -> its job id."""
    path = follower_job_path(root)
    if os.path.exists(path):
        # a follower that is only COMPLETING (cancelled, finishing its last hand-on) is
        # replaced, not counted on: it is about to leave. Two at once hand nothing on twice.
        states = slurm.squeue_states(read_text(path).strip())
        if states and states & (slurm.LIVE_STATES - {"COMPLETING"}):
            return read_text(path).strip()
    params = {**slurm.parameters(cfg), "job_name": f"{os.path.basename(root)}-evals",
              "nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1}
    for key in ("gpus_per_node", "mem"):
        params.pop(key, None)
    os.makedirs(follower_dir(root), exist_ok=True)
    job = slurm.submit(slurm.executor(follower_dir(root), params, python, hold),
                       Follower(os.path.abspath(root), poll))
    atomic_write(path, job.job_id)
    return job.job_id


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
    if not (is_sweep_dir(args.root) or is_run_dir(args.root)):
        raise ConfigError(f"{args.root} is neither a sweep dir (sweep.json) nor a run dir")
    if not os.path.exists(follower_eval_file(args.root)):
        raise ConfigError(f"{args.root} has no eval file to follow with: launch it with "
                          "--evals EVAL.yaml")
    if args.once:
        follow_once(args.root, args.launcher)
    else:
        follow(args.root, args.poll, args.launcher)
    return 0


if __name__ == "__main__":
    sys.exit(main())
