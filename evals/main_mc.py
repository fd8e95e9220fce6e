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
import dataclasses
import numbers
import os
import sys
import time

import yaml

from evals import checkpoints, results
from evals.aggregate import aggregate
from evals.runner import run_task, task_name
from llip.cli import cli
from llip.errors import ConfigError, closest, one_line
from llip.evaluation.catalog import (
    DEFAULT_CATALOG,
    expand,
    expand_names,
    load_catalogs,
    load_groups,
)
from llip.evaluation.evaluators import EVALUATORS


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    checkpoints: list  # paths, run dirs, globs, {"path": run_dir, "all": true}, or
    #                    {"openclip": NAME, "pretrained": PATH_OR_TAG}
    output_dir: str
    datasets: object = "all"  # "all" or a list of names
    catalogs: list = dataclasses.field(default_factory=lambda: [DEFAULT_CATALOG])
    batch_size: int = 256
    workers: int = 4
    eval_tau: list = dataclasses.field(default_factory=lambda: [None])  # Llip only
    launcher: str = "local"  # local | slurm
    slurm: dict = dataclasses.field(default_factory=dict)


SLURM_KEYS = {"partition", "account", "qos", "constraint", "timeout_min", "cpus_per_task",
              "gpus_per_node", "mem_gb", "array_parallelism", "max_wait_min"}


def _expand_values(value):
    if isinstance(value, str):
        return expand(value)
    if isinstance(value, list):
        return [_expand_values(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand_values(v) for k, v in value.items()}
    return value


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_types(raw: dict, path: str) -> dict:
    """Every field's type and range; returns the fields normalised (eval_tau always a list)."""
    def fail(key, what):
        raise ConfigError(f"{path}: '{key}' must be {what}, got {raw[key]!r}")

    if not isinstance(raw["checkpoints"], list) or not raw["checkpoints"]:
        fail("checkpoints", "a non-empty list")
    raw["checkpoints"] = [checkpoints.validate_entry(e, path) for e in raw["checkpoints"]]
    if not isinstance(raw["output_dir"], str) or not raw["output_dir"]:
        fail("output_dir", "a path")
    if "datasets" in raw and raw["datasets"] != "all" and not (
            isinstance(raw["datasets"], list) and raw["datasets"]
            and all(isinstance(d, str) for d in raw["datasets"])):
        fail("datasets", "'all' or a non-empty list of dataset names")
    if "catalogs" in raw and not (isinstance(raw["catalogs"], list) and raw["catalogs"]
                                  and all(isinstance(c, str) for c in raw["catalogs"])):
        fail("catalogs", "a non-empty list of catalog paths")
    if "batch_size" in raw and not (_is_int(raw["batch_size"]) and raw["batch_size"] > 0):
        fail("batch_size", "an integer > 0")
    if "workers" in raw and not (_is_int(raw["workers"]) and raw["workers"] >= 0):
        fail("workers", "an integer >= 0")
    if "eval_tau" in raw:
        taus = raw["eval_tau"] if isinstance(raw["eval_tau"], list) else [raw["eval_tau"]]
        if not taus or not all(_is_number(t) and t > 0 for t in taus):
            fail("eval_tau", "a number > 0 or a non-empty list of them (Llip's eval-time "
                             "softmax temperature)")
        raw["eval_tau"] = list(dict.fromkeys(float(t) for t in taus))
    if raw.get("launcher", "local") not in ("local", "slurm"):
        fail("launcher", "local or slurm")
    if not isinstance(raw.get("slurm", {}), dict):
        fail("slurm", "a mapping of SLURM settings")
    unknown = set(raw.get("slurm") or {}) - SLURM_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown slurm key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(SLURM_KEYS))}")
    return raw


def load_sweep(path: str) -> SweepConfig:
    if not os.path.exists(path):
        raise ConfigError(f"eval config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exn:
        raise ConfigError(f"eval config {path} is not valid YAML: {str(exn).splitlines()[0]}") \
            from None
    if not isinstance(raw, dict):
        raise ConfigError(f"eval config {path} must be a mapping of keys (checkpoints, "
                          "output_dir, ...)")
    fields = {f.name: f for f in dataclasses.fields(SweepConfig)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key '{key}'; closest: {closest(key, fields)}")
    for key in ("checkpoints", "output_dir"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'")
    return SweepConfig(**_check_types(_expand_values(raw), path))


def build_tasks(sweep: SweepConfig, allow_pipe: bool = False):
    """-> (tasks, failures): one task per (readable checkpoint, dataset); one failure line per
    checkpoint that cannot be read (its tasks cannot run; the others still do)."""
    catalog = load_catalogs(sweep.catalogs, allow_pipe)
    groups = load_groups(sweep.catalogs)
    names = list(catalog) if sweep.datasets == "all" else \
        expand_names(sweep.datasets, catalog, groups)
    for name in names:
        if name not in catalog:
            raise ConfigError(f"unknown dataset '{name}'; closest: "
                              f"{closest(name, [*catalog, *groups])}")
    tasks, failures = [], []
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
    return not results.missing_taus(results.read_result(task["output"]), task["taus"])


def _scores(result) -> str:
    metric = result["metric"]
    return ", ".join((f"tau={e['eval_tau']:g} " if e["eval_tau"] is not None else "")
                     + f"{metric} {e['value']:.4f}" for e in result["by_tau"])


def run_local(tasks) -> list:
    """-> failures [(task, reason)]; every exception of a task is its own failure."""
    failures = []
    for i, task in enumerate(tasks, 1):
        start = time.time()
        try:
            r = run_task(task)
            print(f"[{i}/{len(tasks)}] {task_name(task)}: {_scores(r)} "
                  f"(n={r['n']}, {time.time() - start:.1f}s)", flush=True)
        except Exception as exn:  # noqa: BLE001 - a failing task never stops the sweep
            failures.append((task_name(task), one_line(exn)))
            print(f"[{i}/{len(tasks)}] FAILED {failures[-1][0]}: {failures[-1][1]}", flush=True)
    return failures


def run_slurm(tasks, sweep: SweepConfig) -> list:
    import submitit
    s = sweep.slurm
    executor = submitit.AutoExecutor(folder=os.path.join(sweep.output_dir, "submitit"))
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
    args = parser.parse_args(argv)
    sweep = load_sweep(args.fname)
    tasks, failures = build_tasks(sweep, args.allow_pipe)
    for what, reason in failures:
        print(f"FAILED {what}: {reason}", flush=True)
    todo = [t for t in tasks if not is_done(t)]
    print(f"{len(tasks)} eval tasks, {len(tasks) - len(todo)} already done, "
          f"{len(todo)} to run ({sweep.launcher})", flush=True)
    os.makedirs(sweep.output_dir, exist_ok=True)
    failures += run_slurm(todo, sweep) if todo and sweep.launcher == "slurm" else \
        run_local(todo)
    print()
    if any(results.read_result(t["output"]) for t in tasks):
        aggregate(sweep.output_dir, groups=load_groups(sweep.catalogs))
    if failures:
        print(f"\n{len(failures)} failed:")
        for what, reason in failures:
            print(f"FAILED {what}: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
