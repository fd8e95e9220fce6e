"""Zero-shot evals of many checkpoints on many datasets:

    python -m evals.main_mc --fname config_evals/<x>.yaml

One task per (checkpoint, dataset[, eval tau]), run locally or as a SLURM job array; each writes
one JSON result; existing results are skipped, so a sweep can simply be re-run after failures.
Results are aggregated into tables (CSV, Markdown) and a plot of each metric against step.
"""
import argparse
import dataclasses
import glob
import os
import sys
import time

import yaml

from evals.aggregate import aggregate
from evals.catalog import DEFAULT_CATALOG, expand, load_catalogs
from evals.runner import result_path, run_task
from llip import run_dir as rd
from llip.cli import ConfigError, cli, closest


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    checkpoints: list  # paths, run dirs, globs, or {"path": run_dir, "all": true}
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


def load_sweep(path: str) -> SweepConfig:
    if not os.path.exists(path):
        raise ConfigError(f"eval config {path} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except yaml.YAMLError as exn:
        raise ConfigError(f"eval config {path} is not valid YAML: {str(exn).splitlines()[0]}") \
            from None
    fields = {f.name: f for f in dataclasses.fields(SweepConfig)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{path}: unknown key '{key}'; closest: {closest(key, fields)}")
    for key in ("checkpoints", "output_dir"):
        if key not in raw:
            raise ConfigError(f"{path}: missing key '{key}'")
    raw = _expand_values(raw)
    if not isinstance(raw["checkpoints"], list) or not raw["checkpoints"]:
        raise ConfigError(f"{path}: 'checkpoints' must be a non-empty list")
    for key, kind in (("batch_size", int), ("workers", int)):
        if key in raw and not isinstance(raw[key], kind):
            raise ConfigError(f"{path}: '{key}' must be an integer, got {raw[key]!r}")
    if raw.get("launcher", "local") not in ("local", "slurm"):
        raise ConfigError(f"{path}: launcher must be local or slurm, got {raw['launcher']!r}")
    unknown = set(raw.get("slurm") or {}) - SLURM_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown slurm key(s) {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(SLURM_KEYS))}")
    if not isinstance(raw.get("eval_tau", []), list):
        raw["eval_tau"] = [raw["eval_tau"]]
    return SweepConfig(**raw)


def expand_checkpoints(specs) -> list[str]:
    """Each spec -> checkpoint paths: a .pt file, a checkpoint dir, a run dir (its latest, or
    every complete checkpoint with {path: run_dir, all: true}), or a glob of those."""
    found = []
    for spec in specs:
        every = isinstance(spec, dict) and spec.get("all", False)
        pattern = spec["path"] if isinstance(spec, dict) else spec
        matches = sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else [])
        if not matches:
            raise ConfigError(f"checkpoint {pattern} matches nothing: fix the path or glob")
        for path in matches:
            if os.path.isfile(path):
                found.append(path)
            elif every:
                all_ckpts = rd.complete_checkpoints(path)
                if not all_ckpts:
                    raise ConfigError(f"no complete checkpoint in run dir {path}")
                found.extend(all_ckpts)
            else:
                found.append(rd.resolve_checkpoint(path))
    return list(dict.fromkeys(found))


def checkpoint_tag(path: str) -> str:
    if os.path.isfile(path):
        return os.path.splitext(os.path.basename(path))[0]
    return f"{rd.read_config(path).name}__step{rd.step_of(path):08d}"


def build_tasks(sweep: SweepConfig, allow_pipe: bool = False) -> list[dict]:
    catalog = load_catalogs(sweep.catalogs, allow_pipe)
    names = list(catalog) if sweep.datasets == "all" else list(sweep.datasets)
    for name in names:
        if name not in catalog:
            raise ConfigError(f"unknown dataset '{name}'; closest: {closest(name, catalog)}")
    return [{"checkpoint": ckpt, "dataset": catalog[name], "eval_tau": tau,
             "batch_size": sweep.batch_size, "workers": sweep.workers,
             "output": result_path(sweep.output_dir, checkpoint_tag(ckpt), name, tau)}
            for ckpt in expand_checkpoints(sweep.checkpoints) for name in names
            for tau in sweep.eval_tau]


def _describe(task) -> str:
    tau = f" tau={task['eval_tau']:g}" if task["eval_tau"] is not None else ""
    return f"{os.path.basename(task['output'])[:-5]}{tau}"


def run_local(tasks) -> int:
    failures = 0
    for i, task in enumerate(tasks, 1):
        start = time.time()
        try:
            r = run_task(task)
            print(f"[{i}/{len(tasks)}] {_describe(task)}: {r['metric']} {r['value']:.4f} "
                  f"(n={r['n']}, {time.time() - start:.1f}s)", flush=True)
        except ConfigError as exn:
            failures += 1
            print(f"[{i}/{len(tasks)}] {_describe(task)}: FAILED: {exn}", flush=True)
    return failures


def run_slurm(tasks, sweep: SweepConfig) -> int:
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
    failures = sum(1 for t in tasks if not os.path.exists(t["output"]))
    for task in tasks:
        if not os.path.exists(task["output"]):
            print(f"FAILED: {_describe(task)} (see {executor.folder})")
    return failures


@cli
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fname", required=True, help="YAML eval config")
    parser.add_argument("--allow-pipe", action="store_true",
                        help="let catalog paths be pipe: shell commands (trusted catalogs only)")
    args = parser.parse_args(argv)
    sweep = load_sweep(args.fname)
    tasks = build_tasks(sweep, args.allow_pipe)
    todo = [t for t in tasks if not os.path.exists(t["output"])]
    print(f"{len(tasks)} eval tasks, {len(tasks) - len(todo)} already done, "
          f"{len(todo)} to run ({sweep.launcher})", flush=True)
    os.makedirs(sweep.output_dir, exist_ok=True)
    failures = run_slurm(todo, sweep) if todo and sweep.launcher == "slurm" else \
        run_local(todo)
    print()
    aggregate(sweep.output_dir)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
