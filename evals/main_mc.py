"""The eval sweep: zero-shot evals of many checkpoints on many datasets.

    python -m evals.main_mc --fname config_evals/<x>.yaml

(The name is the documented command's, kept from the Llip release: "mc" for many checkpoints.)
One task per (checkpoint, dataset), run locally or as a SLURM job array; each encodes the images
once, scores every eval tau from those embeddings and writes one JSON result. Existing complete
results are skipped, so a sweep can simply be re-run after failures. A task that fails (missing
image, foreign checkpoint, bad template, ...) is one line; the others go on, the failures are
listed at the end and the exit code is 1. Bad sweep input stops everything before any work
(exit 2). Results are aggregated into tables (CSV, Markdown) and a plot of each metric vs step.
"""
import argparse
import contextlib
import os
import signal
import sys
import threading
import time

from evals import checkpoints
from evals.aggregate import aggregate
from evals.runner import identity_of, run_task, task_name
from evals.sweep_file import SweepConfig, load_sweep
from llip import code_snapshot
from llip.cli import cli
from llip.errors import ConfigError, closest, one_line
from llip.evaluation import results
from llip.evaluation.catalog import expand_names, load_catalogs, load_groups
from llip.evaluation.evaluators import EVALUATORS


def datasets_of(sweep: SweepConfig, allow_pipe: bool = False):
    """-> (the merged catalog, the names of the sweep's datasets), every name checked; a name
    whose catalog entry is broken is kept: its tasks fail, the others run."""
    catalog = load_catalogs(sweep.catalogs, allow_pipe)
    groups = load_groups(sweep.catalogs)
    names = catalog.names() if sweep.datasets == "all" else \
        expand_names(sweep.datasets, catalog, groups)
    for name in names:
        if name not in catalog:
            raise ConfigError(f"unknown dataset '{name}'; closest: "
                              f"{closest(name, [*catalog, *groups])}")
    return catalog, names


def build_tasks(sweep: SweepConfig, allow_pipe: bool = False):
    """-> (tasks, failures): one task per (readable checkpoint, dataset); one failure line per
    checkpoint that cannot be read and per dataset whose catalog entry is broken (their tasks
    cannot run; the others still do)."""
    catalog, names = datasets_of(sweep, allow_pipe)
    failures = [(name, str(catalog.broken[name])) for name in names if name in catalog.broken]
    names = [name for name in names if name not in catalog.broken]
    tasks = []
    for ckpt in checkpoints.expand(sweep.checkpoints):
        if isinstance(ckpt, checkpoints.Unreadable):
            failures.append((ckpt.path, ckpt.reason))
            continue
        tasks.extend({"checkpoint": ckpt, "dataset": catalog[name],
                      # eval tau is Llip's and only scores through the logits (not probes)
                      "taus": sweep.eval_tau if ckpt.loss == "llip" and
                      EVALUATORS[catalog[name]["task"]].uses_tau else [None],
                      "batch_size": sweep.batch_size, "workers": sweep.workers,
                      "output": results.result_path(sweep.output_dir, ckpt.label, name, ckpt.id)}
                     for name in names)
    return tasks, failures


def is_done(task) -> bool:
    existing = results.reusable(results.read_result(task["output"]), identity_of(task))
    return not results.missing_taus(existing, task["taus"])


def _scores(result) -> str:
    metric = result["metric"]
    return ", ".join((f"tau={e['eval_tau']:g} " if e["eval_tau"] is not None else "")
                     + f"{metric} {e['value']:.4f}" for e in result["by_tau"])


def run_local(tasks, timeout_min: float = 0) -> list:
    """-> failures [(task, reason)]; every exception of a task is its own failure, a task past
    `timeout_min` too."""
    failures = []
    for i, task in enumerate(tasks, 1):
        start = time.time()
        try:
            with _deadline(timeout_min * 60):
                r = run_task(task)
            print(f"[{i}/{len(tasks)}] {task_name(task)}: {_scores(r)} "
                  f"(n={r['n']}, {time.time() - start:.1f}s)", flush=True)
        except Exception as exn:  # noqa: BLE001 - a failing task never stops the sweep
            failures.append((task_name(task), TIMED_OUT.format(timeout_min)
                             if isinstance(exn, TaskTimedOut) else one_line(exn)))
            print(f"[{i}/{len(tasks)}] FAILED {failures[-1][0]}: {failures[-1][1]}", flush=True)
    return failures


class TaskTimedOut(Exception):
    pass


TIMED_OUT = ("timed out after {:g} min (task_timeout_min): a read that never returns? check the "
             "dataset's path")


@contextlib.contextmanager
def _deadline(seconds: float):
    """Interrupt the task after `seconds`: SIGALRM raises in the main thread, where a task waits
    (on a read, on its data workers). The alarm is the only way to end a read that never
    returns without killing the sweep; the task's own cleanup still runs."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TaskTimedOut()  # (readers on the way out may add their URL to its args)
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_slurm(tasks, sweep: SweepConfig) -> list:
    import submitit
    s = sweep.slurm
    # the tasks import what this process imports (a sweep's code snapshot), whatever
    # environment the cluster exports to jobs
    executor = submitit.AutoExecutor(folder=os.path.join(sweep.output_dir, "submitit"),
                                     slurm_python=code_snapshot.python())
    params = {"timeout_min": s.get("timeout_min", 60), "cpus_per_task": s.get("cpus_per_task",
              max(1, sweep.workers)), "slurm_array_parallelism": s.get("array_parallelism", 64),
              "gpus_per_node": s.get("gpus_per_node", 0), "name": "llip-eval"}
    for key in ("partition", "account", "qos", "constraint"):
        if s.get(key):
            params[f"slurm_{key}"] = s[key]
    if s.get("mem_gb"):
        params["mem_gb"] = s["mem_gb"]
    executor.update_parameters(**params)
    jobs = executor.map_array(run_task, tasks)
    print(f"submitted array {jobs[0].job_id.split('_')[0]} with {len(jobs)} tasks; logs in "
          f"{executor.folder}", flush=True)
    if s.get("max_wait_min", 120) == 0:  # e.g. the eval follower of a sweep (llip.follow)
        print("not waiting (max_wait_min: 0): run this command again, or llip-aggregate, to "
              "collect the results", flush=True)
        return []
    deadline = time.time() + 60 * s.get("max_wait_min", 120)
    while not all(job.done() for job in jobs):  # bounded: a dead task must not hang the sweep
        if time.time() > deadline:
            print("stopped waiting; re-run this command later to aggregate what finished")
            break
        time.sleep(2)
    return [(task_name(t), _slurm_reason(job, executor.folder))
            for t, job in zip(tasks, jobs) if not is_done(t)]


def _slurm_reason(job, folder) -> str:
    if job.done():
        try:
            exn = job.exception()  # the task's traceback, as text: its last line is the error
        except Exception:  # noqa: BLE001 - an unreadable job state is reported as such
            exn = None
        if exn is not None and str(exn).strip():  # the task's traceback, as text
            return one_line(str(exn))
    return f"no complete result (see {folder})"


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fname", required=True, help="YAML eval config")
    parser.add_argument("--allow-pipe", action="store_true",
                        help="let catalog paths be pipe: shell commands (trusted catalogs only)")
    parser.add_argument("--check", action="store_true",
                        help="check the file (types, catalogs, datasets) and run nothing; "
                        "checkpoints and output_dir may be left to whoever runs it")
    parser.add_argument("--no-aggregate", action="store_true",
                        help="leave the tables to a later llip-aggregate")
    args = parser.parse_args(argv)
    if args.check:
        sweep = load_sweep(args.fname, required=(), announce=print)
        catalog, names = datasets_of(sweep, args.allow_pipe)
        print(f"{args.fname}: {len(names)} dataset(s) ({', '.join(names[:5])}"
              f"{' ...' if len(names) > 5 else ''}), launcher {sweep.launcher}")
        broken = [name for name in names if name in catalog.broken]
        for name in broken:
            print(f"FAILED {name}: {catalog.broken[name]}")
        return 1 if broken else 0
    sweep = load_sweep(args.fname, announce=print)
    tasks, failures = build_tasks(sweep, args.allow_pipe)
    for what, reason in failures:
        print(f"FAILED {what}: {reason}", flush=True)
    todo = [t for t in tasks if not is_done(t)]
    print(f"{len(tasks)} eval tasks, {len(tasks) - len(todo)} already done, "
          f"{len(todo)} to run ({sweep.launcher})", flush=True)
    os.makedirs(sweep.output_dir, exist_ok=True)
    failures += run_slurm(todo, sweep) if todo and sweep.launcher == "slurm" else \
        run_local(todo, sweep.task_timeout_min)
    print()
    results.record_catalogs(sweep.output_dir, sweep.catalogs)
    if not args.no_aggregate and any(results.read_result(t["output"]) for t in tasks):
        aggregate(sweep.output_dir, groups=load_groups(sweep.catalogs),
                  catalog=load_catalogs(sweep.catalogs, args.allow_pipe))
    if failures:
        print(f"\n{len(failures)} failed:")
        for what, reason in failures:
            print(f"FAILED {what}: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
