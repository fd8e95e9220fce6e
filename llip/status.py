"""The status board: one table of every run under a logs dir or a sweep dir.

    llip-status <logs dir | sweep dir | run dir> [--watch [SECONDS]] [--json | --csv] [--cancel]

A run's state comes from SLURM (llip.training.slurm: the controller's view, then accounting's)
joined with what its run dir knows, which wins where it is certain:

    completed    the newest complete checkpoint is the last step
    not started  a sweep point with no job or process yet (nothing in its run dir)
    pending      its SLURM job is queued (or held)
    running      SLURM runs its job, or a live process holds the run's LOCK (one on another
                 host is judged by its SLURM job)
    requeued     queued again after a preemption or a time limit (it will resume)
    diverged     it stopped with "training diverged" (llip.training.divergence)
    failed       it stopped before the end: its last error line is shown
    cancelled    cancelled (scancel, or `llip-status --cancel`)
    unknown      its job's state cannot be asked: the SLURM controller does not answer

Beside it: step of total, loss, samples/s and ETA (metrics.jsonl), the newest complete
checkpoint, the newest eval average (the result store of the sweep or the run) and, for a
sweep, each axis; under the table, the state of the eval follower. Without SLURM, or with its
controller down, the board says so and shows what the run dirs know. `--json` / `--csv` print
the same rows for scripts.

`--cancel` cancels every live job of the runs and of the evals following them, and marks the
runs (and a sweep's points not started yet) cancelled; a local run gets SIGTERM, which lets a
checkpoint being written finish. Complete checkpoints are never touched: they are renamed into
place whole.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import signal
import socket
import sys
import time

from llip.cli import cli
from llip.errors import ConfigError, one_line
from llip.evaluation.results import read_result, result_files
from llip.io import atomic_write, read_json, read_text
from llip.run_dir import (
    CHECKPOINTS,
    CODE,
    EVALS,
    SUBMITIT,
    WANDB,
    cancelled_path,
    eval_store,
    followed_path,
    follower_job_path,
    is_run_dir,
    is_sweep_dir,
    job_id_path,
    job_logs,
    latest,
    lock_path,
    metrics_path,
    read_config_dict,
    run_dir_of,
    step_in_name,
    sweep_points,
    total_steps,
    train_log,
)
from llip.training import slurm
from llip.training.claim import RunLock, stale_reason

ACTIVE = ("pending", "running", "requeued")  # a job or process of the run is live
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
    """The last error line in the run's logs (its SLURM job's submitit logs, a local sweep's
    train.log): our one-line `error: ...`, else the last line of a traceback."""
    job = _job_id(run_dir)
    for path in (job_logs(run_dir, job) if job else []) + [train_log(run_dir)]:
        try:
            text = read_text(path)
        except (OSError, UnicodeDecodeError):
            continue
        lines = [line.strip() for line in text.splitlines()]
        ours = [line for line in lines if line.startswith("error: ")]
        raised = [line for line in lines if _EXCEPTION.match(line)]
        if ours or raised:  # (a traceback's last line: our own class names dropped)
            return one_line(ours[-1] if ours else f"Traceback\n{raised[-1]}")
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


def _holder(run_dir: str):
    """Who holds the run's LOCK: "alive", "gone", or None when nobody does. A holder on
    another host is judged by its SLURM job (llip.training.claim); one that cannot be judged
    counts as alive."""
    try:
        holder = read_json(lock_path(run_dir))
    except (OSError, ValueError):
        return None
    if not isinstance(holder, dict):
        return None
    return "alive" if stale_reason(holder, RunLock(run_dir).me) is None else "gone"


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
    status = RunStatus(name, "not started", path=os.path.abspath(run_dir), axes=axes or {})
    status.total = total_steps(run_dir)
    rows = _rows(run_dir)
    if rows:
        last = rows[-1]
        status.step, status.loss = last.get("step"), last.get("loss")
        status.samples_per_s = last.get("samples_per_s")
        batch = read_config_dict(run_dir).get("batch_size") if status.total else None
        if status.samples_per_s and status.total and batch:
            status.eta_s = (status.total - status.step) * batch / status.samples_per_s
    newest = latest(run_dir) if os.path.isdir(run_dir) else None
    status.checkpoint = step_in_name(newest) if newest else None
    status.job = _job_id(run_dir)
    if status.checkpoint is not None and status.checkpoint == status.total:
        status.state, status.eta_s = "completed", None
        return status
    holder = _holder(run_dir)
    if status.job:
        states = slurm.job_states([status.job]) if jobs is _ASK else jobs
        if states is None:
            status.state, status.note = "unknown", "SLURM controller not reachable"
        elif status.job in states:
            job = states[status.job]
            if job.state in slurm.LIVE:
                status.state = slurm.LIVE[job.state]
                if job.restarts and status.state == "pending":
                    status.state = "requeued"
                if job.restarts:
                    status.note = f"requeued {job.restarts}x"
            elif job.state == "CANCELLED":
                status.state = "cancelled"
            else:  # it ended before the last step: FAILED, TIMEOUT, NODE_FAIL, ...
                status.state, status.note = _ended_state(
                    run_dir, f"SLURM job {job.state.lower()} (exit {job.exit_code})")
        elif holder == "alive":  # the controller forgot the job; its process still runs
            status.state = "running"
        else:
            status.state, status.note = _ended_state(run_dir, "its SLURM job is gone")
    elif holder == "alive":
        status.state = "running"
    elif os.path.exists(cancelled_path(run_dir)):
        status.state = "cancelled"
    elif rows or newest is not None or holder or os.path.exists(train_log(run_dir)):
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
    the result stores (llip.evaluation.results: the trained tau's entry where there are
    several)."""
    by_run: dict = {}
    for store in dict.fromkeys(stores):
        for result in filter(None, map(read_result, result_files(store))):
            entries = result["by_tau"]
            trained = [e for e in entries if e["eval_tau"] is None] or entries
            key = (os.path.abspath(run_dir_of(result["checkpoint"])), result["step"])
            by_run.setdefault(key, {})[result["dataset"]] = float(trained[0]["value"])
    newest = {}
    for (run, step), values in by_run.items():
        if run not in newest or step > newest[run][0]:
            newest[run] = (step, sum(values.values()) / len(values))
    return newest


def _stores(root: str, runs) -> list[str]:
    """The result stores the runs' evals land in: each sweep's, each run's own."""
    sweeps = [root] if is_sweep_dir(root) else []
    sweeps += [os.path.dirname(run) for run, _ in runs if is_sweep_dir(os.path.dirname(run))]
    return [eval_store(d) for d in dict.fromkeys([*sweeps, *(run for run, _ in runs)])]


def follower_note(root: str) -> str:
    """The state of a sweep's (or run's) eval follower job, for under the table."""
    try:
        job = read_text(follower_job_path(root)).strip()
    except OSError:
        return ""
    handed = len(read_text(followed_path(root)).splitlines()) \
        if os.path.exists(followed_path(root)) else 0
    states = slurm.job_states([job])
    state = "unknown (controller not reachable)" if states is None else \
        states[job].state.lower() if job in states else "ended"
    return f"evals: follower job {job} {state}, {handed} checkpoint(s) handed on"


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
    evals = _eval_averages(_stores(root, runs))
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
    """Cancel every live job of the rows (and of the evals following them) and mark the runs
    cancelled, not-started sweep points included (a local sweep then skips them). A local run
    gets SIGTERM, which lets a checkpoint being written finish."""
    jobs, cancelled = [], 0
    for r in rows:
        if r.state not in (*ACTIVE, "not started"):
            continue
        if r.job:
            jobs.append(r.job)
        elif r.state == "running":
            _terminate(r.path)
        os.makedirs(r.path, exist_ok=True)
        atomic_write(cancelled_path(r.path), f"{time.time()}\n")
        cancelled += 1
    for followed_root in dict.fromkeys([root, *(os.path.dirname(r.path) for r in rows),
                                        *(r.path for r in rows)]):
        if os.path.exists(follower_job_path(followed_root)):
            jobs.append(read_text(follower_job_path(followed_root)).strip())
        if os.path.exists(followed_path(followed_root)):
            for line in read_text(followed_path(followed_root)).splitlines():
                try:
                    jobs += [j for j in json.loads(line).get("jobs", []) if j]
                except ValueError:
                    continue
    slurm.cancel(jobs)
    return cancelled


def _terminate(run_dir: str) -> None:
    """SIGTERM to the local process that holds the run (if it is on this host and still it)."""
    try:
        holder = read_json(lock_path(run_dir))
        if holder.get("host") == socket.gethostname():
            os.kill(int(holder["pid"]), signal.SIGTERM)
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass  # gone meanwhile, or not ours to signal: the CANCELLED mark still stands


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
                   help="cancel every live job of these runs and their evals (complete "
                   "checkpoints are kept)")
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
            followers = [follower_note(d) for d in dict.fromkeys(
                [args.root, *(os.path.dirname(r.path) for r in rows), *(r.path for r in rows)])]
            print("\n".join(f for f in followers if f), end="\n" if any(followers) else "")
        if not args.watch or not any(r.state in ACTIVE for r in rows):
            return 0
        time.sleep(args.watch)


if __name__ == "__main__":
    sys.exit(main())
