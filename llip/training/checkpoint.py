"""Sharded training checkpoints with torch.distributed.checkpoint (DCP): save and resume.

Every rank writes its shards into step_XXXXXXXX.tmp; after a barrier the main rank adds the
config, every rank hashes the files it wrote, and the main rank writes the COMPLETE marker with
all digests and renames the directory, so a crash mid-save never leaves a half checkpoint that
looks valid, and the previous one stays. Resume verifies the newest checkpoint's digests (each
rank its share, the verdict shared by all) before reading it, and falls back to the previous
one, with a warning, if it does not verify. DCP reshards on load: a checkpoint saved at N ranks
loads at any world size. The directory layout belongs to llip.run_dir; reading without running
code and the digests to llip.checkpoint_files.
"""
import logging
import os
import shutil
import time

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.api as dcp_api
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llip import checkpoint_files as cf
from llip import run_dir as rd
from llip.cli import ConfigError
from llip.training import dist

log = logging.getLogger("llip.train")
_NOT_STATE = ("time", "files")  # marker entries that are not trainer state


def save(run_dir: str, cfg, step: int, model, optimizer, trainer_state: dict,
         is_main: bool) -> str:
    final = rd.checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    metadata = dcp.save({"model": model_sd, "optim": optim_sd,
                         "trainer": {k: torch.as_tensor(v) for k, v in trainer_state.items()}},
                        checkpoint_id=tmp)
    dist.barrier()
    if is_main:
        rd.write_config(tmp, cfg)
    files = _saved_files(tmp, metadata)
    rank, size = dist.rank_and_size()
    shares = dist.all_gather_object(cf.digests(tmp, [f for f in files if cf.owner(f, size)
                                                     == rank]))
    if is_main:
        recorded = {name: d for share in shares for name, d in share.items()}
        rd.write_marker(tmp, {**trainer_state, "step": step, "time": time.time(),
                              "files": recorded})
        if os.path.exists(final):  # re-saving the same step (e.g. resumed at the very end)
            shutil.rmtree(final)
        os.rename(tmp, final)
        rd.prune(run_dir, cfg.keep_last)
    dist.barrier()
    return final


def _saved_files(directory: str, metadata) -> list[str]:
    """Every file of the checkpoint, from DCP's own record of what it wrote (the same on every
    rank, and no directory listing that a network file system may show stale)."""
    storage = getattr(metadata, "storage_data", None)
    if isinstance(storage, dict):
        data = {str(info.relative_path) for info in storage.values()}
    else:
        data = {n for n in os.listdir(directory) if n.endswith(".distcp")}
    return sorted(data | {cf.METADATA, rd.CONFIG})


def load(path: str, model, optimizer) -> dict:
    """Load into (possibly sharded) model and optimizer in place; return the trainer state.
    The caller has verified `path` (resume)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd,
             "trainer": {k: torch.as_tensor(v) for k, v in rd.read_marker(path).items()
                         if k not in _NOT_STATE}}
    try:
        cf.load_dcp(state, path)
    except (Exception, dcp_api.CheckpointException) as exn:  # DCP wraps reader failures
        raise ConfigError(f"checkpoint {path} cannot be loaded: {cf.cause(exn)}") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    return {k: v.item() for k, v in state["trainer"].items()}


def resume(run_dir: str, model, optimizer, world) -> int:
    """Load the newest checkpoint that verifies on every rank and return its step (0: none).
    One that does not verify is moved aside (step_X.corrupt) with a warning and the previous
    one is tried; if none verifies the run stops rather than silently start over."""
    if world.is_main:
        rd.clean_partial(run_dir)
    dist.barrier()
    candidates = dist.all_gather_object(rd.complete_checkpoints(run_dir))[0]  # rank 0's view
    first_problem = None
    for path in reversed(candidates):
        problem, corrupt = _verify_on_all_ranks(path, world)
        if problem is None:
            state = load(path, model, optimizer)
            if world.is_main:
                print(f"resumed from {path} at step {state['step']}", flush=True)
            return int(state["step"])
        first_problem = first_problem or problem
        if world.is_main:
            moved = f"; moved to {rd.mark_corrupt(path)}" if corrupt else ""
            log.warning("%s%s; falling back to the previous checkpoint", problem, moved)
        dist.barrier()
    if candidates:
        raise ConfigError(f"no checkpoint of {run_dir} can be resumed; newest: {first_problem}")
    return 0


def _verify_on_all_ranks(path: str, world):
    """(one line saying why `path` cannot be resumed, or None; whether it is corrupt, not just
    unverifiable), the same on every rank: each hashes its share of the files."""
    try:
        recorded = rd.read_marker(path).get("files")
    except ConfigError as exn:
        return str(exn), True
    if not recorded:
        trusted = cf.trusted_without_digests()
        return (None if trusted else cf.missing_digests_message(path)), False
    mine = {n: d for n, d in recorded.items() if cf.owner(n, world.size) == world.rank}
    found = [p for share in dist.all_gather_object(cf.problems(path, mine)) for p in share]
    if not found:
        return None, False
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    return f"checkpoint {path} is corrupt: {found[0]}{more}", True
