"""Sharded checkpoints with torch.distributed.checkpoint (DCP).

Layout: <run_dir>/checkpoints/step_00001000/ holds DCP files plus COMPLETE (JSON). A checkpoint
is written to step_XXXXXXXX.tmp and renamed only after every rank finished and COMPLETE exists,
so a crash mid-save never leaves a half checkpoint that looks valid, and the previous one stays.
`latest` is the newest directory with COMPLETE. DCP reshards on load: a checkpoint saved at N
ranks loads at any world size, or in a plain process without a process group.
"""
import json
import os
import re
import shutil
import time
import warnings

import torch
import torch.distributed.checkpoint as dcp
import yaml
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llip.config import ConfigError, from_dict
from llip.models import build_model
from llip.training import dist

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
# DCP without a process group is our intended single-process mode, not a mistake.
warnings.filterwarnings("ignore", message="torch.distributed is disabled")


def checkpoint_root(run_dir: str) -> str:
    return os.path.join(run_dir, "checkpoints")


def complete_checkpoints(run_dir: str) -> list[str]:
    root = checkpoint_root(run_dir)
    if not os.path.isdir(root):
        return []
    found = [d for d in os.listdir(root)
             if _STEP_DIR.match(d) and os.path.exists(os.path.join(root, d, MARKER))]
    return [os.path.join(root, d) for d in sorted(found)]


def latest(run_dir: str):
    done = complete_checkpoints(run_dir)
    return done[-1] if done else None


def step_of(path: str) -> int:
    return json.load(open(os.path.join(path, MARKER)))["step"]


def save(run_dir: str, step: int, model, optimizer, trainer_state: dict, keep_last: int,
         is_main: bool) -> str:
    final = os.path.join(checkpoint_root(run_dir), f"step_{step:08d}")
    tmp = final + ".tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd,
              "trainer": {k: torch.as_tensor(v) for k, v in trainer_state.items()}},
             checkpoint_id=tmp)
    dist.barrier()
    if is_main:
        with open(os.path.join(tmp, MARKER), "w") as f:
            json.dump({"step": step, "time": time.time(), **trainer_state}, f)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(final):  # re-saving the same step (e.g. resumed at the very end)
            shutil.rmtree(final)
        os.rename(tmp, final)
        for old in complete_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()
    return final


def load(path: str, model, optimizer=None) -> dict:
    """Load into (possibly sharded) model and optimizer in place; return the trainer state."""
    if optimizer is None:
        model_sd = get_state_dict(model, [])[0]
        state = {"model": model_sd}
    else:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state = {"model": model_sd, "optim": optim_sd}
    marker = json.load(open(os.path.join(path, MARKER)))
    state["trainer"] = {k: torch.as_tensor(v) for k, v in marker.items() if k != "time"}
    dcp.load(state, checkpoint_id=path)
    if optimizer is None:
        set_state_dict(model, [], model_state_dict=state["model"], optim_state_dict={})
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])
    return {k: v.item() for k, v in state["trainer"].items()}


def clean_partial(run_dir: str) -> None:
    """Remove leftovers of saves that crashed (never a complete checkpoint)."""
    root = checkpoint_root(run_dir)
    if os.path.isdir(root):
        for d in os.listdir(root):
            if d.endswith(".tmp"):
                shutil.rmtree(os.path.join(root, d), ignore_errors=True)


# ---------------------------------------------------------------- inference loading
def run_config(run_dir: str):
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(path):
        raise ConfigError(f"no config.yaml in {run_dir}: is it a run directory of llip.main?")
    saved = yaml.safe_load(open(path))
    saved.pop("git_commit", None)
    return from_dict(saved)


def resolve_checkpoint(path: str) -> str:
    """A run dir means its latest complete checkpoint; a checkpoint dir must be complete."""
    if os.path.exists(os.path.join(path, MARKER)):
        return path
    found = latest(path)
    if found is None:
        raise ConfigError(f"no complete checkpoint at {path}: give a run dir or a "
                          "checkpoints/step_* dir")
    return found


def load_model(path: str, device="cpu"):
    """A run dir, a DCP checkpoint dir or an exported .pt -> (model in eval mode, config, step)."""
    if os.path.isfile(path):
        blob = torch.load(path, map_location="cpu", weights_only=True)
        cfg = from_dict(blob["config"])
        model = build_model(cfg)
        model.load_state_dict(blob["state_dict"])
        return model.to(device).eval(), cfg, int(blob["step"])
    if not os.path.exists(path):
        raise ConfigError(f"checkpoint {path} does not exist: give a run dir, a "
                          "checkpoints/step_* dir or an exported .pt file")
    ckpt = resolve_checkpoint(path)
    cfg = run_config(os.path.dirname(os.path.dirname(ckpt)))
    model = build_model(cfg)
    state = load(ckpt, model)
    return model.to(device).eval(), cfg, int(state["step"])
