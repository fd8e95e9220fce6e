"""The run directory: every name on disk that training writes and evals, export and the
orchestrator read. No other module spells these names.

    <logs>/<name>/
      config.yaml                  the resolved config + git commit, written at start
      metrics.jsonl                one JSON row per log step (and per in-training eval)
      LOCK                         JSON of the process that holds the run (llip.training.claim)
      checkpoints/step_XXXXXXXX/   DCP files (model, optimizer, trainer state), config.yaml (the
                                   config the checkpoint was made with) and COMPLETE (JSON)
      wandb/, wandb_id             wandb's offline files and the id a resumed run logs under
      submitit/, submitit/job_id   SLURM logs of submitit, the id of the job that owns the run
      train.log                    the output of a run launched by a local sweep
      CANCELLED                    written when the status board cancelled the run's job
      evals/                       eval results of this run (the demo's, or its follower's)
      follow/, follow.jsonl        the eval follower of a run launched with --evals (as a sweep's)

A sweep (llip.sweep) is a directory of run dirs:

    <logs>/<sweep>/
      sweep.json                   the sweep: config, axes, points, launcher, evals
      code/, code-2/ ...           the code its jobs run, frozen at launch (llip.code_snapshot):
                                   llip/, evals/, code.json (commit), uncommitted.diff
      follow.jsonl(.lock)          checkpoints whose evals were handed on (llip.follow)
      follow/                      the eval follower: evals.yaml (the eval file, copied at
                                   launch), its job's submitit files and job_id, one
                                   evals-<point>-step<N>.yaml/.log per checkpoint handed on
      evals/                       the eval results of its checkpoints (evals.main_mc's store)
      <point>/                     one run dir per point

A checkpoint counts only once COMPLETE exists (it is written last, then the directory is renamed
from step_XXXXXXXX.tmp); `latest` is the newest complete one. A checkpoint directory is
self-describing: loading it needs nothing from the directories above it. COMPLETE records the
sha256 of every other file (verified by llip.checkpoint_files before anything is loaded). A
checkpoint that fails verification at resume is renamed step_XXXXXXXX.corrupt (kept, never
listed).
"""
from __future__ import annotations

import glob
import os
import re
import shutil

import yaml

from llip.config import RunConfig, from_dict, to_dict
from llip.errors import CheckpointError, ConfigError
from llip.io import atomic_write, read_json, read_yaml, write_json

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
MARKER = "COMPLETE"
LOCK = "LOCK"
CHECKPOINTS = "checkpoints"
WANDB = "wandb"
WANDB_ID = "wandb_id"
SUBMITIT = "submitit"
JOB_ID = "job_id"
EVALS = "evals"
TRAIN_LOG = "train.log"
CANCELLED = "CANCELLED"
SWEEP = "sweep.json"
CODE = "code"
FOLLOWED = "follow.jsonl"
FOLLOWER = "follow"
FOLLOWER_EVALS = "evals.yaml"
CODE_RECORD, CODE_DIFF = "code.json", "uncommitted.diff"  # inside a code snapshot
SWEEP_VERSION = 1  # of sweep.json
_STEP_DIR = re.compile(r"^step_(\d{8})$")
PARTIAL, CORRUPT = ".tmp", ".corrupt"  # suffixes of a save in progress and of one set aside


def path_of(cfg: RunConfig) -> str:
    return os.path.join(cfg.logs, cfg.name)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS)


def lock_path(run_dir: str) -> str:
    return os.path.join(run_dir, LOCK)


def wandb_dir(run_dir: str) -> str:
    return os.path.join(run_dir, WANDB)


def wandb_id_path(run_dir: str) -> str:
    return os.path.join(run_dir, WANDB_ID)


def submitit_dir(run_dir: str) -> str:
    return os.path.abspath(os.path.join(run_dir, SUBMITIT))


def job_id_path(run_dir: str) -> str:
    return os.path.join(submitit_dir(run_dir), JOB_ID)


def evals_dir(run_dir: str) -> str:
    """A run's or a sweep's eval results (evals.main_mc's output dir)."""
    return os.path.join(run_dir, EVALS)


def train_log(run_dir: str) -> str:
    return os.path.join(run_dir, TRAIN_LOG)


def cancelled_path(run_dir: str) -> str:
    return os.path.join(run_dir, CANCELLED)


def job_logs(run_dir: str, job_id: str) -> list[str]:
    """The SLURM logs (submitit's <job>_<task>_log.out/.err) of one of the run's jobs."""
    return sorted(glob.glob(os.path.join(submitit_dir(run_dir), f"{job_id}_*_log.*")))


def is_run_dir(path: str) -> bool:
    """A directory that training made, or that a submission or a sweep prepared for a run."""
    return (os.path.isfile(os.path.join(path, CONFIG)) or os.path.isdir(checkpoints_dir(path))
            or os.path.isfile(job_id_path(path)) or os.path.isfile(train_log(path)))


def total_steps(run_dir: str):
    """The run's number of steps from its config.yaml (None if it has none that reads)."""
    try:
        return read_config(run_dir).total_steps
    except (ConfigError, OSError):
        return None


# ---------------------------------------------------------------- sweep dirs, followers
def sweep_record_path(sweep_dir: str) -> str:
    return os.path.join(sweep_dir, SWEEP)


def is_sweep_dir(path: str) -> bool:
    return os.path.isfile(sweep_record_path(path))


def read_sweep_record(sweep_dir: str) -> dict:
    """sweep.json (written by llip.sweep): config, overrides, axes, points, launcher, evals."""
    path = sweep_record_path(sweep_dir)
    try:
        found = read_json(path)
    except (OSError, ValueError) as exn:
        raise ConfigError(f"{path} is not a readable sweep record ({type(exn).__name__})") \
            from None
    if not isinstance(found, dict) or found.get("version") != SWEEP_VERSION:
        raise ConfigError(f"{path} is not a version-{SWEEP_VERSION} sweep record")
    return found


def sweep_points(sweep_dir: str) -> list[tuple[str, dict]]:
    """(run dir, axis values) of every point of a sweep, started or not."""
    return [(os.path.join(sweep_dir, p["name"]), p.get("values", {}))
            for p in read_sweep_record(sweep_dir)["points"]]


def code_dir(sweep_dir: str, n: int = 1) -> str:
    """The sweep's n-th code snapshot: code/, then code-2/, ... (--new-code)."""
    return os.path.join(os.path.abspath(sweep_dir), CODE if n == 1 else f"{CODE}-{n}")


def code_dirs(sweep_dir: str) -> list[str]:
    """The sweep's code snapshots, oldest first."""
    found = []
    while os.path.isdir(code_dir(sweep_dir, len(found) + 1)):
        found.append(code_dir(sweep_dir, len(found) + 1))
    return found


def followed_runs(root: str) -> list[str]:
    """The run dirs whose checkpoints the eval follower of `root` (a sweep or a run) evaluates."""
    return [run for run, _ in sweep_points(root)] if is_sweep_dir(root) else [root]


def follower_dir(root: str) -> str:
    """The eval follower's folder: its eval file, its submitit files and job_id, its logs."""
    return os.path.abspath(os.path.join(root, FOLLOWER))


def follower_job_path(root: str) -> str:
    return os.path.join(follower_dir(root), JOB_ID)


def follower_eval_file(root: str) -> str:
    """The eval sweep file the follower uses: the user's, copied at launch."""
    return os.path.join(follower_dir(root), FOLLOWER_EVALS)


def follower_task_file(root: str, point: str, step: int) -> str:
    """The evals.main_mc file (and, beside it, .log) of one checkpoint handed on."""
    return os.path.join(follower_dir(root), f"evals-{point}-step{step:08d}.yaml")


def followed_path(root: str) -> str:
    return os.path.join(root, FOLLOWED)


def followed_lock_path(root: str) -> str:
    return followed_path(root) + ".lock"


def eval_store(root: str) -> str:
    """Where the evals of a sweep's or run's checkpoints land: the output_dir its eval file
    names (recorded in the follower's eval file at launch), else <root>/evals."""
    try:
        out = (read_yaml(follower_eval_file(root)) or {}).get("output_dir")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError):
        out = None
    return os.path.abspath(out if isinstance(out, str) and out else evals_dir(root))


# ---------------------------------------------------------------- config.yaml
def write_config(directory: str, cfg: RunConfig, **extra) -> str:
    text = yaml.safe_dump({**to_dict(cfg), **extra}, sort_keys=False)
    return atomic_write(os.path.join(directory, CONFIG), text)


def has_config(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, CONFIG))


def read_config(directory: str) -> RunConfig:
    if not has_config(directory):
        raise ConfigError(f"no {CONFIG} in {directory}: is it a run or checkpoint directory "
                          "of llip.main?")
    saved = read_config_dict(directory)
    saved.pop("git_commit", None)
    return from_dict(saved)


def read_config_dict(directory: str) -> dict:
    """config.yaml as a plain dict (yaml.safe_load: never runs code), as written, even by a
    version whose fields differ from this one's."""
    path = os.path.join(directory, CONFIG)
    try:
        saved = read_yaml(path)
    except (yaml.YAMLError, UnicodeDecodeError) as exn:
        raise ConfigError(f"{path} is not valid YAML ({str(exn).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a mapping of config keys")
    return saved


# ---------------------------------------------------------------- checkpoints/
def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS)


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(checkpoints_dir(run_dir), f"step_{step:08d}")


def partial_dir(final: str) -> str:
    """Where a save of `final` is written before it is complete."""
    return final + PARTIAL


def run_dir_of(checkpoint: str) -> str:
    """The run dir a checkpoints/step_* dir belongs to; any other path is its own source."""
    path = os.path.normpath(checkpoint)
    parent = os.path.dirname(path)
    if _STEP_DIR.match(os.path.basename(path)) and os.path.basename(parent) == CHECKPOINTS:
        return os.path.dirname(parent)
    return path


def is_complete(path: str) -> bool:
    return os.path.exists(os.path.join(path, MARKER))


def complete_checkpoints(run_dir: str) -> list[str]:
    root = checkpoints_dir(run_dir)
    if not os.path.isdir(root):
        return []
    return [os.path.join(root, d) for d in sorted(os.listdir(root))
            if _STEP_DIR.match(d) and is_complete(os.path.join(root, d))]


def latest(run_dir: str) -> str | None:
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def read_marker(path: str) -> dict:
    try:
        marker = read_json(os.path.join(path, MARKER))
    except (ValueError, UnicodeDecodeError):
        raise CheckpointError(f"{os.path.join(path, MARKER)} is not valid JSON: the checkpoint "
                              "is corrupt") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("step"), int):
        raise CheckpointError(f"{os.path.join(path, MARKER)} has no step: the checkpoint is "
                              "corrupt")
    return marker


def write_marker(path: str, state: dict) -> None:
    write_json(os.path.join(path, MARKER), state)


def step_of(path: str) -> int:
    return int(read_marker(path)["step"])


def step_in_name(path: str) -> int:
    """A checkpoint's step from its directory name (no file is read: it may be pruned now)."""
    return int(_STEP_DIR.match(os.path.basename(path)).group(1))


def clean_partial(run_dir: str) -> None:
    """Remove leftovers of saves that crashed (never a complete checkpoint)."""
    root = checkpoints_dir(run_dir)
    if os.path.isdir(root):
        for d in os.listdir(root):
            if d.endswith(PARTIAL):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def prune(run_dir: str, keep_last: int, keep_every: int = 0) -> None:
    """Remove all but the newest `keep_last` complete checkpoints, except those at multiples of
    `keep_every` steps (kept for a learning curve)."""
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        step = step_in_name(old)
        if not (keep_every and step % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)


def mark_corrupt(path: str) -> str:
    """Move a checkpoint that failed verification out of the listing (kept for inspection)."""
    aside = path + CORRUPT
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(path, aside)
    return aside


def resolve_checkpoint(path: str) -> str:
    """A run dir means its latest complete checkpoint; a checkpoint dir must be complete."""
    if is_complete(path):
        return path
    found = latest(path)
    if found is None:
        raise CheckpointError(f"no complete checkpoint at {path}: give a run dir or a "
                              "checkpoints/step_* dir")
    return found
