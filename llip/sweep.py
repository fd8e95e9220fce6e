"""Sweeps: one command launches a grid of runs, each a normal run dir with its full config.

    llip-sweep <config> lr=1e-3,2e-3 mixture_tokens=16,32 seed=0,1,2 [key=value ...]
               [--name S] [--zip lr,warmup_steps] [--launcher local|slurm] [--parallel N]
               [--evals EVAL.yaml] [--dry-run] [--hold] [--new-code]
    llip-sweep <sweep>            a sweep kept in the repo (llip/run_configs/sweeps.py)

A `key=v1,v2` override is an axis (a comma outside braces separates values; lists inside a value
use '::', as train_data and eval_datasets do); points are the grid product of the axes, except
that `--zip a,b` makes axes a and b vary together. Every value is typed and checked exactly as a
single run's override, for every point, before anything is written or submitted: one bad point
refuses the whole sweep in one line. A point is the run `<logs>/<sweep>/<config>-<key><value>...`
(e.g. llip_b16-lr1e-3-mixture_tokens16-seed0); the sweep is named `--name`, by default after the
config and the axes, so the same command names the same sweep.

Launchers: `slurm` submits one job per point (each with its nodes and GPUs, requeued and resumed
on preemption like any llip-submit job); `local` trains the points here, `--parallel` at a time.
Every job runs the code frozen at the sweep's first launch (llip.code_snapshot).
With `--evals EVAL.yaml` (an evals.main_mc sweep file: catalogs, datasets, eval_tau, ...), every
kept checkpoint of every point (multiples of keep_every, and the last) is evaluated as it
appears (llip.follow), into one result store; `llip-aggregate <sweep dir>` makes its table.

Re-running the same command is safe: completed points are skipped, running, pending or requeued
ones left alone, failed, cancelled, vanished or not started ones (re)started (they resume from
their checkpoints), diverged ones reported and left (they would diverge again); while the SLURM
controller does not answer nothing is submitted; a point whose run dir holds another config is
refused, naming the field. Axis values may be added to a sweep; its eval file and code stay the
ones of its launch (`--evals` replaces the file, `--new-code` takes the current code, for what
is handed on or (re)started from then on).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import itertools
import os
import re
import shutil
import subprocess
import sys
import time

from llip import code_snapshot
from llip.cli import cli, parse_value
from llip.config import NAME, RunConfig, config_changes
from llip.data.stream import check_shards, expand_sources, with_dataset_size
from llip.errors import ConfigError, one_line
from llip.follow import adopt_eval_file, check_eval_file, submit_follower
from llip.io import write_json
from llip.run_configs import get_config, resolve
from llip.run_configs.sweeps import SWEEPS, Sweep
from llip.run_dir import (
    SWEEP_VERSION,
    cancelled_path,
    code_dir,
    code_dirs,
    followed_path,
    follower_eval_file,
    has_config,
    is_sweep_dir,
    path_of,
    read_config_dict,
    read_sweep_record,
    sweep_record_path,
    train_log,
)
from llip.status import last_error, statuses
from llip.training.launcher import live_job, make_executor, submit_run

_COMMA = re.compile(r",(?![^{]*\})")  # a comma outside braces


# ---------------------------------------------------------------- points
@dataclasses.dataclass(frozen=True)
class Point:
    name: str
    values: dict  # axis -> value text
    cfg: RunConfig  # resolved
    argv: tuple  # the config name and overrides that resolve to cfg (a local run's command)

    @property
    def run_dir(self) -> str:
        return path_of(self.cfg)


def value_label(value) -> str:
    """A typed value as it appears in a point's name: 1e-3 (not 0.001), 2.5e-4, 16, true, the
    last part of a path."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value and not 1e-2 <= abs(value) < 1e5:
            mantissa, exponent = f"{value:e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    text = os.path.basename(value.rstrip("/")) or value if isinstance(value, str) else str(value)
    return re.sub(r"[^A-Za-z0-9._+=@-]", "_", text)  # a path: its last part


def split_values(text: str) -> list[str]:
    return [v.strip() for v in _COMMA.split(text)]


def grid(sweep: Sweep) -> list[dict]:
    """{axis: value text} per point: the product of the axes, zipped groups varying together."""
    axes = {k: [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
            for k, values in sweep.axes.items()}
    for key, values in axes.items():
        if not values or any(v == "" for v in values):
            raise ConfigError(f"sweep axis {key} has an empty value: give {key}=v1,v2,...")
        if len(set(values)) != len(values):
            raise ConfigError(f"sweep axis {key} repeats a value ({','.join(values)})")
    groups, zipped = [], set()
    for group in sweep.zip:
        unknown = [k for k in group if k not in axes]
        if unknown:
            raise ConfigError(f"--zip {','.join(group)}: {unknown[0]} is not an axis of the sweep "
                              f"(axes: {', '.join(axes) or 'none'})")
        lengths = {len(axes[k]) for k in group}
        if len(lengths) > 1:
            raise ConfigError(f"--zip {','.join(group)}: the axes have "
                              f"{' and '.join(str(len(axes[k])) for k in group)} values: zipped "
                              "axes need as many values each")
        zipped |= set(group)
        groups.append([dict(zip(group, vals)) for vals in zip(*(axes[k] for k in group))])
    for key in axes:
        if key not in zipped:
            groups.append([{key: v} for v in axes[key]])
    order = list(axes)
    points = []
    for combo in itertools.product(*groups):
        merged = {k: v for part in combo for k, v in part.items()}
        points.append({k: merged[k] for k in order})
    return points


def expand(sweep: Sweep) -> tuple[str, list[Point]]:
    """-> (the sweep dir, its points), every point resolved and checked as a single run."""
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    base = resolve(sweep.config, sweep.overrides)
    for key in sweep.axes:
        if key in ("name", "logs"):
            raise ConfigError(f"{key} cannot be a sweep axis: the sweep names its runs and puts "
                              "them under logs=/<sweep name>")
    name = sweep.name or "-".join([base.name, *sweep.axes])
    if not NAME.match(name):
        raise ConfigError(f"sweep name {name!r} must be 1-200 letters, digits or ._+=@-: "
                          "give --name")
    sweep_dir = os.path.join(base.logs, name)
    points, names = [], {}
    for values in grid(sweep):
        label = "-".join([base.name, *(f"{k}{v}" for k, v in values.items())])
        try:
            label = "-".join([base.name] + [
                f"{k}{value_label(parse_value(fields[k], v) if k in fields else v)}"
                for k, v in values.items()])
            overrides = [*sweep.overrides, *(f"{k}={v}" for k, v in values.items()),
                         f"logs={sweep_dir}", f"name={label}"]
            cfg = resolve(sweep.config, overrides)
        except ConfigError as exn:
            raise ConfigError(f"sweep point {label}: {exn}") from None
        if label in names:
            raise ConfigError(f"sweep points {names[label]} and {values} are both named {label}:"
                              " give distinct values")
        names[label] = values
        points.append(Point(label, values, cfg, (sweep.config, *overrides)))
    return sweep_dir, points


# ---------------------------------------------------------------- the sweep record
def record(sweep: Sweep, sweep_dir: str, points: list[Point], launcher: str) -> dict:
    """sweep.json: what the sweep is, for re-runs, the status board, evals and the table. Axis
    values added by a later command join the points already recorded."""
    old = read_sweep_record(sweep_dir) if is_sweep_dir(sweep_dir) else {}
    known = {p["name"]: p for p in old.get("points", [])}
    known.update({p.name: {"name": p.name, "values": p.values} for p in points})
    axes = dict(old.get("axes", {}))
    for key, values in sweep.axes.items():
        axes[key] = list(dict.fromkeys([*axes.get(key, []), *map(str, values)]))
    return {"version": SWEEP_VERSION, "name": os.path.basename(sweep_dir), "config": sweep.config,
            "overrides": list(sweep.overrides), "axes": axes,
            "zip": [list(g) for g in sweep.zip], "evals": os.path.abspath(sweep.evals)
            if sweep.evals else old.get("evals", ""), "launcher": launcher,
            "created": old.get("created", time.time()), "points": list(known.values())}


def base_config(sweep_dir: str) -> RunConfig:
    """The sweep's config before its axes (SLURM settings of its follower job)."""
    found = read_sweep_record(sweep_dir)
    return resolve(found["config"], found["overrides"])


# ---------------------------------------------------------------- planning a (re-)run
def check_same_config(point: Point) -> None:
    """A point whose run dir already holds a run of another config is refused."""
    if not has_config(point.run_dir):
        return
    changes = config_changes(read_config_dict(point.run_dir), point.cfg)
    if changes:
        raise ConfigError(f"sweep point {point.name}: its run dir {point.run_dir} holds a run "
                          f"with another config ({', '.join(changes)}): launch the sweep under "
                          "another --name, or remove that run dir")


def plan(points: list[Point]):
    """(points to (re)start, {state: count}) from the status board's view of the points (SLURM
    asked once). Failed, cancelled and not started points are (re)started; a diverged one is
    not (it would diverge again where it did: lower lr in a new sweep); while SLURM cannot be
    asked, nothing is (a live job would get a twin)."""
    rows, _ = statuses([(p.run_dir, {}) for p in points])
    unknown = [p.name for p, row in zip(points, rows) if row.state == "unknown"]
    if unknown:
        raise ConfigError(f"the SLURM controller does not answer, so whether {unknown[0]} (and "
                          f"{len(unknown) - 1} more) still runs cannot be told: run the sweep "
                          "again when it answers (llip-status shows what the run dirs know)")
    counts = {}
    for row in rows:
        counts[row.state] = counts.get(row.state, 0) + 1
    todo = [p for p, row in zip(points, rows) if row.state in RESTART]
    return todo, counts


RESTART = ("not started", "failed", "cancelled")


# ---------------------------------------------------------------- launching
def _clear_cancelled(point: Point) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(cancelled_path(point.run_dir))


def launch_local(points: list[Point], sweep_dir: str, code: str, parallel: int,
                 evals: bool) -> list[tuple[str, str]]:
    """Train the points here, `parallel` at a time, each as `python -m llip.main` from the
    snapshot with its output in <run dir>/train.log; evals of its kept checkpoints after each
    (and once more at the end, for evaluations that failed). A point cancelled meanwhile
    (llip-status --cancel) is not started. -> failures [(point, last error line)]."""
    failures, done = [], [0]
    for point in points:
        _clear_cancelled(point)

    def follow_once():
        followed = subprocess.run([sys.executable, "-m", "llip.follow", sweep_dir, "--once",
                                   "--launcher", "local"], env=code_snapshot.env(code),
                                  capture_output=True, text=True)
        if followed.returncode:
            failures.append(("evals", one_line(followed.stderr or followed.stdout)))

    def one(point: Point):
        if os.path.exists(cancelled_path(point.run_dir)):
            return
        os.makedirs(point.run_dir, exist_ok=True)
        start = time.time()
        with open(train_log(point.run_dir), "a") as log:
            exit_code = subprocess.run([sys.executable, "-m", "llip.main", *point.argv],
                                       env=code_snapshot.env(code), stdout=log,
                                       stderr=subprocess.STDOUT).returncode
        done[0] += 1
        if exit_code:
            failures.append((point.name, last_error(point.run_dir) or f"exit code {exit_code}"))
            print(f"[{done[0]}/{len(points)}] FAILED {point.name}: {failures[-1][1]}",
                  flush=True)
            return
        print(f"[{done[0]}/{len(points)}] {point.name}: completed in {time.time() - start:.0f}s",
              flush=True)
        if evals:
            follow_once()

    with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        list(pool.map(one, points))
    if evals:
        follow_once()
    return failures


def launch_slurm(points: list[Point], sweep_dir: str, code: str, hold: bool,
                 evals: bool, poll: float = 60.0) -> list[str]:
    """One job per point (the same job as llip-submit's, from the snapshot), then, with evals,
    the follower job. A point whose run dir has a live job is left alone. -> the job ids."""
    python = code_snapshot.python(code)
    ids = []
    for point in points:
        live = live_job(point.cfg)
        if live:
            print(f"left alone: {point.name} (live job {live})", flush=True)
            continue
        _clear_cancelled(point)
        executor = make_executor(point.cfg, python=python, hold=hold)
        os.makedirs(executor.folder, exist_ok=True)
        ids.append(submit_run(executor, point.cfg).job_id)
        print(f"submitted job {ids[-1]}: {point.name}", flush=True)
    if evals:
        ids.append(submit_follower(sweep_dir, base_config(sweep_dir), python, hold, poll))
        print(f"submitted job {ids[-1]}: evals following the checkpoints", flush=True)
    return ids


# ---------------------------------------------------------------- the command
def parse_args(argv):
    p = argparse.ArgumentParser(prog="llip-sweep", description=__doc__.splitlines()[0])
    p.add_argument("config", help="a registered config, or a sweep of llip/run_configs/sweeps.py")
    p.add_argument("overrides", nargs="*", help="key=value (fixed) or key=v1,v2 (an axis)")
    p.add_argument("--name", default="", help="the sweep's name (default: config and axes)")
    p.add_argument("--zip", action="append", default=[], metavar="A,B",
                   help="axes that vary together instead of in a grid (repeatable)")
    p.add_argument("--launcher", choices=("local", "slurm"), default=None,
                   help="slurm: one job per point; local: train here (default: slurm where "
                   "sbatch exists)")
    p.add_argument("--parallel", type=int, default=1, help="local: points trained at once")
    p.add_argument("--evals", default="", metavar="EVAL.yaml",
                   help="evaluate every kept checkpoint with this evals.main_mc sweep file "
                   "(kept by the sweep: a re-run need not repeat it)")
    p.add_argument("--dry-run", action="store_true", help="print the points, submit nothing")
    p.add_argument("--hold", action="store_true", help="slurm: submit held (scontrol release)")
    p.add_argument("--new-code", action="store_true",
                   help="run (re)started points with the current code, not the snapshot")
    p.add_argument("--poll", type=float, default=60.0,
                   help="slurm, with --evals: seconds between the eval follower's looks")
    return p.parse_intermixed_args(argv)


def _axes_and_fixed(overrides) -> tuple[dict, list[str]]:
    axes, fixed = {}, []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value (key=v1,v2 for an axis)")
        key, text = item.split("=", 1)
        values = split_values(text)
        if len(values) > 1:
            axes[key] = values
        else:
            fixed.append(item)
    return axes, fixed


def sweep_of(args) -> Sweep:
    """The sweep a command line names: a registered sweep (its axes and overrides, plus the
    command line's), or a config with the command line's axes."""
    zipped = tuple(tuple(k.strip() for k in z.split(",") if k.strip()) for z in args.zip)
    axes, fixed = _axes_and_fixed(args.overrides)
    if args.config in SWEEPS:
        found = SWEEPS[args.config]()
        return dataclasses.replace(found, axes={**found.axes, **axes},
                                   overrides=(*found.overrides, *fixed), zip=found.zip + zipped,
                                   name=args.name or found.name or args.config,
                                   evals=args.evals or found.evals)
    get_config(args.config)  # an unknown name: the closest configs, before anything else
    if not axes:
        raise ConfigError("a sweep needs an axis: give key=v1,v2 (e.g. lr=1e-3,2e-3)")
    return Sweep(args.config, axes, zip=zipped, name=args.name, overrides=tuple(fixed),
                 evals=args.evals)


def _snapshot(sweep_dir: str, new_code: bool) -> tuple[str, dict]:
    """The code the points started now run: the sweep's newest snapshot, or with `new_code` a
    new one (earlier ones stay: queued and running jobs still import them)."""
    snapshots = code_dirs(sweep_dir)
    if snapshots:
        changed = code_snapshot.changed_files(snapshots[-1])
        if changed and not new_code:
            print(f"note: the code changed since this sweep was launched ({len(changed)} "
                  f"file(s), e.g. {changed[0]}); its points run the snapshot "
                  f"{snapshots[-1]} (--new-code: what is (re)started runs the current code)",
                  flush=True)
        if not (changed and new_code):
            return snapshots[-1], code_snapshot.freeze(snapshots[-1])
    code = code_dir(sweep_dir, len(snapshots) + 1)
    return code, code_snapshot.freeze(code)


def _check_data(points: list[Point]) -> list[Point]:
    """Every distinct train_data of the sweep exists (checked once each); -> the points with
    train_num_samples filled where it was 0 (from the shards' manifest), as their runs will
    record it."""
    for spec in dict.fromkeys(p.cfg.train_data for p in points):
        if not spec:
            raise ConfigError("train_data is empty: set "
                              "train_data=/path/shard-{000000..000099}.tar")
        check_shards(expand_sources(spec))
    return [dataclasses.replace(p, cfg=with_dataset_size(p.cfg)) for p in points]


@cli
def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sweep = sweep_of(args)
    sweep_dir, points = expand(sweep)
    launcher = args.launcher or ("slurm" if shutil.which("sbatch") else "local")
    if args.dry_run:
        print(f"sweep {sweep_dir}: {len(points)} point(s), launcher {launcher}")
        for point in points:
            print(f"  {point.name}: {' '.join(f'{k}={v}' for k, v in point.values.items())}")
        return 0
    points = _check_data(points)
    for point in points:
        check_same_config(point)
    if sweep.evals:
        check_eval_file(sweep.evals)
    todo, counts = plan(points)
    os.makedirs(sweep_dir, exist_ok=True)
    write_json(sweep_record_path(sweep_dir), record(sweep, sweep_dir, points, launcher),
               indent=1)
    if sweep.evals:
        adopt_eval_file(sweep_dir, sweep.evals)
    evals = os.path.exists(follower_eval_file(sweep_dir))
    code, snapshot = _snapshot(sweep_dir, args.new_code)
    print(f"sweep {sweep_dir}: {len(points)} point(s): "
          + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
          + f"; {len(todo)} to start ({launcher}); code {snapshot['commit'][:12] or 'not git'}"
          + (" + uncommitted changes" if snapshot["dirty"] else ""), flush=True)
    if counts.get("diverged"):
        print(f"note: {counts['diverged']} diverged point(s) are not restarted: they would "
              "diverge again (lower lr or raise warmup_steps in a new sweep)", flush=True)
    if launcher == "slurm":
        if todo or evals:
            launch_slurm(todo, sweep_dir, code, args.hold, evals, args.poll)
        print(f"watch: llip-status {sweep_dir} --watch", flush=True)
        print(f"cancel: llip-status {sweep_dir} --cancel", flush=True)
        return 0
    failures = launch_local(todo, sweep_dir, code, args.parallel, evals)
    if evals and os.path.exists(followed_path(sweep_dir)):
        subprocess.run([sys.executable, "-m", "evals.aggregate", sweep_dir],
                       env=code_snapshot.env(code))
    for what, why in failures:
        print(f"FAILED {what}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
