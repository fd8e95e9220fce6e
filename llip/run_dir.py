"""The run directory: the on-disk contract that training writes and evals and export read.

    <logs>/<name>/
      config.yaml                  the resolved config + git commit, written at start
      metrics.jsonl                one JSON row per log step
      checkpoints/step_XXXXXXXX/   DCP files (model, optimizer, trainer state), config.yaml (the
                                   config the checkpoint was made with) and COMPLETE (JSON)
      wandb/, submitit/

A checkpoint counts only once COMPLETE exists (it is written last, then the directory is renamed
from step_XXXXXXXX.tmp); `latest` is the newest complete one. A checkpoint directory is
self-describing: loading it needs nothing from the directories above it. COMPLETE records the
sha256 of every other file; loading verifies them first (llip.checkpoint_files). A checkpoint
that fails verification at resume is renamed step_XXXXXXXX.corrupt (kept, never listed).

Export: one file {"state_dict", "config", "step"} of plain tensors and Python values, loadable
with torch.load(weights_only=True); as .safetensors, config (JSON) and step are in the metadata.
load_model also reads the Llip authors' released checkpoints and open_clip eval subjects
(llip.models.pretrained, llip.models.open_clip_format).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings

import torch
import torch.distributed.checkpoint.api as dcp_api
import yaml

from llip import checkpoint_files
from llip.cli import ConfigError
from llip.config import RunConfig, from_dict, to_dict
from llip.io import atomic_path, atomic_write, read_json, write_json
from llip.models import build_model
from llip.models.open_clip_format import is_subject, load_subject
from llip.models.pretrained import is_export, load_foreign, load_into, read_weights
from llip.models.tuning import apply_tuning, merge_lora

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
# DCP without a process group is our intended single-process mode, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def path_of(cfg: RunConfig) -> str:
    return os.path.join(cfg.logs, cfg.name)


def metrics_path(run_dir: str) -> str:
    return os.path.join(run_dir, METRICS)


# ---------------------------------------------------------------- config.yaml
def write_config(directory: str, cfg: RunConfig, **extra) -> str:
    text = yaml.safe_dump({**to_dict(cfg), **extra}, sort_keys=False)
    return atomic_write(os.path.join(directory, CONFIG), text)


def read_config(directory: str) -> RunConfig:
    path = os.path.join(directory, CONFIG)
    if not os.path.exists(path):
        raise ConfigError(f"no {CONFIG} in {directory}: is it a run or checkpoint directory "
                          "of llip.main?")
    saved = read_config_dict(directory)
    saved.pop("git_commit", None)
    return from_dict(saved)


def read_config_dict(directory: str) -> dict:
    """config.yaml as a plain dict (yaml.safe_load: never runs code)."""
    path = os.path.join(directory, CONFIG)
    try:
        with open(path, encoding="utf-8") as f:
            saved = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as exn:
        raise ConfigError(f"{path} is not valid YAML ({str(exn).splitlines()[0]})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{path} is not a mapping of config keys")
    return saved


# ---------------------------------------------------------------- checkpoints/
def checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def checkpoint_dir(run_dir: str, step: int) -> str:
    return os.path.join(checkpoints_dir(run_dir), f"step_{step:08d}")


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
        raise ConfigError(f"{os.path.join(path, MARKER)} is not valid JSON: the checkpoint is "
                          "corrupt") from None
    if not isinstance(marker, dict) or not isinstance(marker.get("step"), int):
        raise ConfigError(f"{os.path.join(path, MARKER)} has no step: the checkpoint is corrupt")
    return marker


def write_marker(path: str, state: dict) -> None:
    write_json(os.path.join(path, MARKER), state)


def step_of(path: str) -> int:
    return int(read_marker(path)["step"])


def clean_partial(run_dir: str) -> None:
    """Remove leftovers of saves that crashed (never a complete checkpoint)."""
    root = checkpoints_dir(run_dir)
    if os.path.isdir(root):
        for d in os.listdir(root):
            if d.endswith(".tmp"):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


def prune(run_dir: str, keep_last: int, keep_every: int = 0) -> None:
    """Remove all but the newest `keep_last` complete checkpoints, except those at multiples of
    `keep_every` steps (kept for a learning curve)."""
    for old in complete_checkpoints(run_dir)[:-keep_last]:
        step = int(_STEP_DIR.match(os.path.basename(old)).group(1))
        if not (keep_every and step % keep_every == 0):
            shutil.rmtree(old, ignore_errors=True)


def verification_problem(path: str):
    """None if every file of a complete checkpoint matches its digest, else one line saying what
    is wrong (or that there are no digests and the user did not opt in to trust it)."""
    try:
        recorded = read_marker(path).get("files")
    except ConfigError as exn:
        return str(exn)
    if not recorded:
        return None if checkpoint_files.trusted_without_digests() else \
            checkpoint_files.missing_digests_message(path)
    found = checkpoint_files.problems(path, recorded)
    return f"checkpoint {path} is corrupt: {found[0]}" + \
        (f" (and {len(found) - 1} more)" if len(found) > 1 else "") if found else None


def mark_corrupt(path: str) -> str:
    """Move a checkpoint that failed verification out of the listing (kept for inspection)."""
    aside = path + ".corrupt"
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(path, aside)
    return aside


def resolve_checkpoint(path: str) -> str:
    """A run dir means its latest complete checkpoint; a checkpoint dir must be complete."""
    if is_complete(path):
        return path
    found = latest(path)
    if found is None:
        raise ConfigError(f"no complete checkpoint at {path}: give a run dir or a "
                          "checkpoints/step_* dir")
    return found


# ---------------------------------------------------------------- inference loading and export
def save_export(path: str, model: torch.nn.Module, cfg: RunConfig, step: int) -> str:
    with atomic_path(path) as tmp:
        if path.endswith(".safetensors"):
            from safetensors.torch import save_file
            save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, tmp,
                      metadata={"llip_config": json.dumps(to_dict(cfg)), "llip_step": str(step)})
        else:
            torch.save({"state_dict": model.state_dict(), "config": to_dict(cfg), "step": step},
                       tmp)
    return path


def load_model(path: str, device="cpu", config: str = ""):
    """A run dir, a DCP checkpoint dir, an exported .pt / .safetensors, a released Llip
    checkpoint (its config named by `config` or chosen from its shapes) or an open_clip eval
    subject "openclip:NAME@PRETRAINED" -> (model in eval mode, config, step)."""
    if is_subject(path):
        return load_subject(path, device)
    if os.path.isfile(path):
        blob = read_weights(path)
        if not is_export(blob):
            return load_foreign(path, blob, device, config)
        cfg = from_dict(blob["config"])
        model = build_model(cfg)
        load_into(model, blob["state_dict"], [], path)
        return model.to(device).eval(), cfg, int(blob["step"])
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint {path} does not exist: give a run dir, a "
                          "checkpoints/step_* dir or an exported .pt file")
    ckpt = resolve_checkpoint(path)
    problem = verification_problem(ckpt)
    if problem:
        raise ConfigError(f"{problem}: use another checkpoint")
    cfg = read_config(ckpt)
    model = build_model(cfg)
    apply_tuning(model, cfg)  # a tuned run's checkpoint holds its LoRA adapters
    state = {"model": model.state_dict()}  # DCP loads in place into these tensors
    try:
        checkpoint_files.load_dcp(state, ckpt)
    except (Exception, dcp_api.CheckpointException) as exn:  # DCP wraps reader failures
        raise ConfigError(f"checkpoint {ckpt} cannot be loaded: {checkpoint_files.cause(exn)}"
                          ) from None
    merge_lora(model)
    return model.to(device).eval(), cfg, step_of(ckpt)
