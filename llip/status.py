"""The status board: one table of every run under a logs dir or a sweep dir.

    llip-status <logs dir | sweep dir | run dir> [--watch [SECONDS]] [--json | --csv] [--cancel]

A run's state comes from SLURM (llip.training.slurm: the controller's view, then accounting's)
joined with what its run dir knows, which wins where it is certain:

    completed  the newest complete checkpoint is the last step
    pending    queued (or a sweep point not started yet)
    running    SLURM runs its job, or a live local process holds the run's LOCK
    requeued   queued again after a preemption or a time limit (it will resume)
    diverged   it stopped with "training diverged" (llip.training.divergence)
    failed     it stopped before the end: its last error line is shown
    cancelled  cancelled (scancel, or `llip-status --cancel`)
    unknown    its job's state cannot be asked: the SLURM controller does not answer

Beside it: step of total, loss, samples/s and ETA (metrics.jsonl), the newest complete
checkpoint, the newest eval average (the result store of the sweep or the run: evals.main_mc's
JSON results) and, for a sweep, each axis. Without SLURM, or with its controller down, the board
says so and shows what the run dirs know. `--json` / `--csv` print the same rows for scripts.

`--cancel` cancels every live job of the runs (and of the sweep's evals) and marks the runs
cancelled; a local run gets SIGTERM, which lets a checkpoint being written finish. Complete
checkpoints are never touched: they are renamed into place whole.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import re
import signal
import socket
import sys
import time

from llip.cli import cli
from llip.errors import ConfigError
from llip.io import atomic_write, read_json, read_text
from llip.run_dir import (
    CHECKPOINTS,
    CODE,
    EVALS,
    SUBMITIT,
    WANDB,
    cancelled_path,
    evals_dir,
    followed_path,
    follower_job_path,
    is_run_dir,
    is_sweep_dir,
    job_id_path,
    latest,
    lock_path,
    metrics_path,
    read_config_dict,
    run_dir_of,
    step_of,
    submitit_dir,
    sweep_points,
    train_log,
)
from llip.training import slurm

ACTIVE = ("pending", "running", "requeued")
SLURM_LIVE = {"PENDING": "pending", "REQUEUED": "requeued", "REQUEUE_HOLD": "requeued",
              "REQUEUE_FED": "requeued", "RUNNING": "running", "COMPLETING": "running",
              "CONFIGURING": "running", "RESIZING": "running", "SUSPENDED": "pending",
              "STOPPED": "pending", "SIGNALING": "running", "STAGE_OUT": "running"}
SLURM_ENDED = {"CANCELLED": "cancelled", "FAILED": "failed", "TIMEOUT": "failed",
               "NODE_FAIL": "failed", "OUT_OF_MEMORY": "failed", "BOOT_FAIL": "failed",
               "DEADLINE": "failed", "PREEMPTED": "failed", "COMPLETED": "failed",
               "SPECIAL_EXIT": "failed", "REVOKED": "failed"}  # COMPLETED but not at the end
_EXCEPTION = re.compile(r"^([\w.]+)?(Error|Exception|Interrupt|Diverged): ")
_NOT_RUNS = {CHECKPOINTS, CODE, EVALS, SUBMITIT, WANDB}


@dataclasses.dataclass
class RunStatus:
    run: str
    state: str
    step: int | None = None
    total: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    eta_s: float | None = None
    checkpoint: int | None = None  # step of the newest complete checkpoint
    eval_step: int | None = None
    eval_average: float | None = None  # mean main metric over the datasets at eval_step
    job: str = ""
    note: str = ""  # the last error line of a failed run, a requeue count, ...
    path: str = ""
    axes: dict = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- what a run dir knows
def last_error(run_dir: str) -> str:
    """The last error line in the run's logs (a local sweep's train.log, its SLURM job's
    submitit logs): our one-line `error: ...`, else the last exception line of a traceback."""
    logs = [train_log(run_dir)]
    job = _job_id(run_dir)
    if job:
        logs = sorted(glob.glob(os.path.join(submitit_dir(run_dir), f"{job}_*_log.*"))) + logs
    for path in logs:
        try:
            lines = read_text(path).splitlines()
        except (OSError, UnicodeDecodeError):
            continue
        for line in reversed(lines):
            line = line.strip()
            if line.startswith("error: "):
                return line[len("error: "):]
        for line in reversed(lines):
            if _EXCEPTION.match(line.strip()):
                return line.strip()
    return ""


def _job_id(run_dir: str) -> str:
    try:
        return read_text(job_id_path(run_dir)).strip()
    except OSError:
        return ""


def _rows(run_dir: str) -> list[dict]:
    try:
        text = read_text(metrics_path(run_dir))
    except (OSError, UnicodeDecodeError):
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if isinstance(row, dict) and "loss" in row:
            rows.append(row)
    return rows


def _total(run_dir: str):
    try:
        cfg = read_config_dict(run_dir)
        return int(cfg["epochs"]) * max(1, int(cfg["train_num_samples"]) //
                                        int(cfg["batch_size"])), int(cfg["batch_size"])
    except (ConfigError, OSError, KeyError, TypeError, ValueError):
        return None, None


def _local_holder_alive(run_dir: str) -> bool:
    """A process on this host holds the run's LOCK and still lives."""
    from llip.training.claim import RunLock, stale_reason
    try:
        holder = read_json(lock_path(run_dir))
    except (OSError, ValueError):
        return False
    if not isinstance(holder, dict) or holder.get("host") != socket.gethostname():
        return False
    return stale_reason(holder, RunLock(run_dir).me) is None


def _ended_state(run_dir: str, note: str) -> tuple[str, str]:
    """A run that no process runs any more and that did not complete."""
    if os.path.exists(cancelled_path(run_dir)):
        return "cancelled", note
    error = last_error(run_dir)
    if "training diverged" in error:
        return "diverged", error
    return "failed", error or note or "stopped before the end (no error line in its logs)"


_ASK = object()


def run_status(run_dir: str, jobs=_ASK, axes: dict | None = None) -> RunStatus:
    """One run's row. `jobs`: SLURM's states of the board's jobs, None when the controller does
    not answer; by default the run's own job is asked for."""
    name = os.path.basename(os.path.normpath(run_dir))
    status = RunStatus(name, "pending", path=os.path.abspath(run_dir), axes=axes or {})
    status.total, batch = _total(run_dir)
    rows = _rows(run_dir)
    if rows:
        last = rows[-1]
        status.step, status.loss = last.get("step"), last.get("loss")
        status.samples_per_s = last.get("samples_per_s")
        if status.samples_per_s and status.total and batch:
            status.eta_s = (status.total - status.step) * batch / status.samples_per_s
    newest = latest(run_dir) if os.path.isdir(run_dir) else None
    if newest is not None:
        try:
            status.checkpoint = step_of(newest)
        except ConfigError:
            pass
    status.job = _job_id(run_dir)
    if status.checkpoint is not None and status.checkpoint == status.total:
        status.state, status.eta_s = "completed", None
        return status
    if status.job:
        states = slurm.job_states([status.job]) if jobs is _ASK else jobs
        if states is None:
            status.state, status.note = "unknown", "SLURM controller not reachable"
        elif status.job in states:
            job = states[status.job]
            if job.state in SLURM_LIVE:
                status.state = SLURM_LIVE[job.state]
                if job.restarts and status.state == "pending":
                    status.state = "requeued"
                if job.restarts:
                    status.note = f"requeued {job.restarts}x"
            else:
                status.state, status.note = _ended_state(
                    run_dir, f"SLURM job {job.state.lower()} (exit {job.exit_code})")
                if job.state == "CANCELLED":
                    status.state = "cancelled"
        else:
            status.state, status.note = _ended_state(run_dir, "its SLURM job is gone")
    elif _local_holder_alive(run_dir):
        status.state = "running"
    elif rows or newest is not None or os.path.exists(train_log(run_dir)):
        status.state, status.note = _ended_state(run_dir, "")
    if status.state not in ACTIVE:
        status.eta_s = None
    return status


# ---------------------------------------------------------------- the board
def find_runs(root: str) -> list[tuple[str, dict]]:
    """(run dir, axis values) of every run under `root`: a run dir itself, a sweep's points
    (started or not), or the run dirs and sweeps up to three levels below a logs dir."""
    if is_sweep_dir(root):
        return sweep_points(root)
    if is_run_dir(root):
        return [(root, {})]
    found, frontier = [], [(root, 0)]
    while frontier:
        path, depth = frontier.pop(0)
        try:
            names = sorted(os.listdir(path))
        except OSError:
            continue
        for name in names:
            child = os.path.join(path, name)
            if not os.path.isdir(child) or name in _NOT_RUNS or name.startswith("."):
                continue
            if is_sweep_dir(child):
                found += find_runs(child)
            elif is_run_dir(child):
                found.append((child, {}))
            elif depth < 2:
                frontier.append((child, depth + 1))
    return found


def _eval_averages(stores) -> dict:
    """run dir -> (step, mean main metric over its datasets at its newest evaluated step), from
    evals.main_mc's result JSON files (their documented format)."""
    by_run: dict = {}
    for store in dict.fromkeys(stores):
        for path in glob.glob(os.path.join(store, "results", "*.json")):
            try:
                result = read_json(path)
                entries = result["by_tau"]
                trained = [e for e in entries if e.get("eval_tau") is None] or entries
                key = (run_dir_of(result["checkpoint"]), int(result["step"]))
                by_run.setdefault(key, {})[result["dataset"]] = float(trained[0]["value"])
            except (OSError, ValueError, KeyError, TypeError, IndexError):
                continue  # a torn or foreign file is not a result
    newest = {}
    for (run, step), values in by_run.items():
        if run not in newest or step > newest[run][0]:
            newest[run] = (step, sum(values.values()) / len(values))
    return newest


def statuses(runs: list[tuple[str, dict]]) -> tuple[list[RunStatus], str]:
    """The rows of (run dir, axes) pairs, SLURM asked once for all their jobs; and a note on
    where the states came from."""
    ids = [j for j in (_job_id(run) for run, _ in runs) if j]
    jobs = slurm.job_states(ids) if ids else {}
    note = "" if ids and jobs is not None else \
        "SLURM controller not reachable: states from the run dirs" if ids else \
        "no SLURM jobs: states from the run dirs"
    return [run_status(run, jobs, axes) for run, axes in runs], note


def board(root: str) -> tuple[list[RunStatus], str]:
    """Every run's row under `root`, with its newest eval average."""
    if not os.path.exists(root):
        raise ConfigError(f"{root} does not exist: give a logs dir, a sweep dir or a run dir")
    runs = find_runs(root)
    rows, note = statuses(runs)
    stores = [evals_dir(root)] + [evals_dir(os.path.dirname(run)) for run, _ in runs] + \
        [evals_dir(run) for run, _ in runs]
    evals = _eval_averages(stores)
    for row in rows:
        found = evals.get(os.path.normpath(row.path))
        if found:
            row.eval_step, row.eval_average = found
    return rows, note


def _fmt_eta(seconds) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def table(rows: list[RunStatus]) -> str:
    axes = list(dict.fromkeys(k for r in rows for k in r.axes))
    head = ["run", *axes, "state", "step", "loss", "samples/s", "ETA", "checkpoint", "eval",
            "job", "note"]
    body = []
    for r in rows:
        step = "" if r.step is None else f"{r.step}/{r.total}" if r.total else str(r.step)
        body.append([r.run, *(r.axes.get(a, "") for a in axes), r.state, step,
                     "" if r.loss is None else f"{r.loss:.4f}",
                     "" if r.samples_per_s is None else f"{r.samples_per_s:,.0f}",
                     _fmt_eta(r.eta_s), "" if r.checkpoint is None else str(r.checkpoint),
                     "" if r.eval_average is None else f"{r.eval_average:.4f} @{r.eval_step}",
                     r.job, r.note[:120]])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths)).rstrip()
             for line in [head, *body]]
    counts = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return "\n".join(lines) + "\n" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


# ---------------------------------------------------------------- cancelling
def cancel(root: str, rows: list[RunStatus]) -> int:
    """Cancel every live job of the rows (and of a sweep's evals); mark the runs cancelled."""
    jobs, cancelled = [], 0
    for r in rows:
        if r.state not in ACTIVE:
            continue
        if r.job:
            jobs.append(r.job)
        elif r.state == "running":  # a local run: SIGTERM lets a save in flight finish
            holder = read_json(lock_path(r.path))
            os.kill(int(holder["pid"]), signal.SIGTERM)
        atomic_write(cancelled_path(r.path), f"{time.time()}\n")
        cancelled += 1
    if is_sweep_dir(root):
        follower = follower_job_path(root)
        if os.path.exists(follower):
            jobs.append(read_text(follower).strip())
        if os.path.exists(followed_path(root)):
            for line in read_text(followed_path(root)).splitlines():
                try:
                    jobs += [j for j in json.loads(line).get("jobs", []) if j]
                except ValueError:
                    continue
    slurm.cancel(jobs)
    return cancelled


# ---------------------------------------------------------------- the command
@cli
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="llip-status", description=__doc__.splitlines()[0])
    p.add_argument("root", help="a logs dir, a sweep dir or a run dir")
    p.add_argument("--watch", nargs="?", type=float, const=30.0, default=None,
                   metavar="SECONDS", help="refresh until no run is pending or running")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="one JSON object per run")
    out.add_argument("--csv", action="store_true")
    p.add_argument("--cancel", action="store_true",
                   help="cancel every live job of these runs (complete checkpoints are kept)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    while True:
        rows, note = board(args.root)
        if args.cancel:
            print(f"cancelled {cancel(args.root, rows)} run(s) under {args.root}")
            return 0
        if args.json:
            print(json.dumps([dataclasses.asdict(r) for r in rows], indent=1))
        elif args.csv:
            import pandas as pd
            frame = pd.DataFrame([{**{k: v for k, v in dataclasses.asdict(r).items()
                                       if k != "axes"}, **r.axes} for r in rows])
            print(frame.to_csv(index=False), end="")
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
            print(f"{args.root} at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  + (f" ({note})" if note else ""))
            print(table(rows) if rows else "no runs found")
        if not args.watch or not any(r.state in ACTIVE for r in rows):
            return 0
        time.sleep(args.watch)


if __name__ == "__main__":
    sys.exit(main())
