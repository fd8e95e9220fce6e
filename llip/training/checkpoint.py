"""Sharded training checkpoints with torch.distributed.checkpoint (DCP): save and resume.

Every rank writes its shards into step_XXXXXXXX.tmp; after a barrier the main rank adds the
config and the COMPLETE marker and renames the directory, so a crash mid-save never leaves a
half checkpoint that looks valid, and the previous one stays. DCP reshards on load: a checkpoint
saved at N ranks loads at any world size. The directory layout belongs to llip.run_dir.
"""
import os
import shutil
import time

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llip import run_dir as rd
from llip.training import dist


def save(run_dir: str, cfg, step: int, model, optimizer, trainer_state: dict,
         is_main: bool) -> str:
    final = rd.checkpoint_dir(run_dir, step)
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
        rd.write_config(tmp, cfg)
        rd.write_marker(tmp, {"step": step, "time": time.time(), **trainer_state})
        if os.path.exists(final):  # re-saving the same step (e.g. resumed at the very end)
            shutil.rmtree(final)
        os.rename(tmp, final)
        rd.prune(run_dir, cfg.keep_last, cfg.keep_every)
    dist.barrier()
    return final


def load(path: str, model, optimizer) -> dict:
    """Load into (possibly sharded) model and optimizer in place; return the trainer state."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd,
             "trainer": {k: torch.as_tensor(v) for k, v in rd.read_marker(path).items()
                         if k != "time"}}
    dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    return {k: v.item() for k, v in state["trainer"].items()}
