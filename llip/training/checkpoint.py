"""Sharded training checkpoints with torch.distributed.checkpoint (DCP): save and resume.

Every rank writes its shards into step_XXXXXXXX.tmp; once DCP reports the save finished, the main
rank adds the config and the COMPLETE marker and renames the directory, so a crash mid-save never
leaves a half checkpoint that looks valid, and the previous one stays. DCP reshards on load: a
checkpoint saved at N ranks loads at any world size.

Asynchronous saves (`checkpoint_async`, the default): training stops only while the state is
copied to CPU memory (DCP's staging); a background thread on every rank writes the files, then
hashes the files that rank wrote. DCP's save ends with the coordinator (rank 0) collecting every
rank's write results and writing the metadata, so when a rank's save has finished, all ranks'
files are on disk; the digests are then gathered (on the checkpoint's own gloo group) and rank 0
writes the marker and renames, without stopping any rank's training. A new save first waits for
the previous one; the end of training waits for the last; a stop signal (llip.training.stop)
ends the run through the same wait, so a save in flight still completes.
Every checkpoint's COMPLETE marker records the sha256 and size of each of its files (each rank
hashes its own, so hashing time does not grow with the world size). Resume verifies the newest
checkpoint's digests (each rank its share, the verdict shared by all) before reading it, and
falls back to the previous one, with a warning, if it does not verify. The directory layout
belongs to llip.run_dir; digests, their verification and reading without running code to
llip.checkpoint_files.
"""
import logging
import os
import shutil
import threading
import time

import torch
import torch.distributed.checkpoint as dcp
import torch.distributed.checkpoint.api as dcp_api
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llip.checkpoint_files import (
    METADATA,
    digests,
    load_dcp,
    load_failure,
    owner,
    verify,
)
from llip.config import config_changes
from llip.errors import CheckpointError, UserError, named_write
from llip.run_dir import (
    CONFIG,
    checkpoint_dir,
    clean_partial,
    complete_checkpoints,
    has_config,
    mark_corrupt,
    partial_dir,
    prune,
    read_config_dict,
    read_marker,
    write_config,
    write_marker,
)
from llip.training import dist

log = logging.getLogger("llip.train")
WAIT_AFTER_FAILURE_S = 600  # a run that failed still lets a save in flight finish, this long
_NOT_STATE = ("time", "files")  # marker entries that are not trainer state


def _start(run_dir: str, step: int, is_main: bool) -> tuple[str, str]:
    final = checkpoint_dir(run_dir, step)
    tmp = partial_dir(final)
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    return tmp, final


def _state(model, optimizer, trainer_state: dict) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd,
            "trainer": {k: torch.as_tensor(v) for k, v in trainer_state.items()}}


def _finish(run_dir: str, cfg, tmp: str, final: str, trainer_state: dict, metadata,
            group=None) -> None:
    """All ranks, once every rank's files are written: each hashes the files it wrote (so a
    checkpoint of N ranks is hashed N ways in parallel, not by the main rank alone); the main
    rank gathers the digests, marks the checkpoint complete, renames it and prunes."""
    rank, size = dist.rank_and_size()
    shares = dist.all_gather_object(_hash_share(tmp, cfg, metadata, rank, size), group=group)
    failed = [s for s in shares if isinstance(s, BaseException)]
    if failed:
        raise failed[0]
    if rank == 0:
        _commit(run_dir, cfg, tmp, final, trainer_state, shares)


def _hash_share(tmp: str, cfg, metadata, rank: int, size: int):
    """One rank's part of a commit: {name: digest} of the files it wrote (rank 0 first writes the
    config), or the error, returned: every rank must still take part in the gather."""
    try:
        if rank == 0:
            write_config(tmp, cfg)
        return digests(tmp, [n for n in _saved_files(metadata) if owner(n, size) == rank])
    except (OSError, UserError) as exn:
        return exn


def _commit(run_dir: str, cfg, tmp: str, final: str, trainer_state: dict, shares) -> None:
    """The main rank, with every rank's digests: the COMPLETE marker, the rename, the pruning."""
    recorded = {name: d for s in shares for name, d in s.items()}
    write_marker(tmp, {**trainer_state, "time": time.time(), "files": recorded})
    if os.path.exists(final):  # re-saving the same step (e.g. resumed at the very end)
        shutil.rmtree(final)
    os.rename(tmp, final)
    prune(run_dir, cfg.keep_last, cfg.keep_every)
    print(f"checkpoint {final}", flush=True)


def save(run_dir: str, cfg, step: int, model, optimizer, trainer_state: dict,
         is_main: bool) -> str:
    """A blocking save (all ranks)."""
    tmp, final = _start(run_dir, step, is_main)
    with named_write(final, f"checkpoint {final}"):
        metadata = dcp.save(_state(model, optimizer, trainer_state), checkpoint_id=tmp)
        _finish(run_dir, cfg, tmp, final, {"step": step, **trainer_state}, metadata)
    dist.barrier()
    return final


class Checkpointer:
    """The trainer's saves, asynchronous or not per config; use as a context manager around the
    training loop, and call `poll()` every step (it never blocks)."""

    def __init__(self, run_dir: str, cfg, is_main: bool):
        self.run_dir, self.cfg, self.is_main = run_dir, cfg, is_main
        # The writer's and finisher's collectives get their own (gloo) group: they must not
        # interleave with the training's collectives on the default group, and need a CPU
        # backend.
        self.group = dist.new_cpu_group() if cfg.checkpoint_async else None
        self.pending = None  # (_Finisher thread, final path) of the save in flight

    def save(self, step: int, model, optimizer, trainer_state: dict) -> None:
        self.wait()
        if not self.cfg.checkpoint_async:
            save(self.run_dir, self.cfg, step, model, optimizer, trainer_state, self.is_main)
            return
        tmp, final = _start(self.run_dir, step, self.is_main)
        future = dcp.async_save(_state(model, optimizer, trainer_state), checkpoint_id=tmp,
                                process_group=self.group)
        state = {"step": step, **trainer_state}

        def finish():  # in the background, on every rank: written, then hashed and marked
            _finish(self.run_dir, self.cfg, tmp, final, state, future.result(), self.group)
        self.pending = (_Finisher(finish), final)

    def poll(self) -> None:
        if self.pending is not None and self.pending[0].finished.is_set():
            self.wait()

    def wait(self, timeout=None) -> None:
        """Wait for the save in flight to be written and marked complete; raise its error."""
        if self.pending is None:
            return
        thread, final = self.pending
        # (An Event, not Thread.join: a join interrupted by a signal can leave the thread
        # reported dead while it still runs, and the exit would not wait for it.)
        if not thread.finished.wait(timeout=timeout):
            raise TimeoutError(f"checkpoint {final} still being written after {timeout}s")
        self.pending = None  # a failed save is not retried
        if thread.error is not None:
            with named_write(final, f"checkpoint {final}"):
                raise thread.error

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.wait()
            return
        try:
            self.wait(timeout=WAIT_AFTER_FAILURE_S)
        except Exception as save_exn:  # noqa: BLE001 - the run's own error is the one to raise
            log.warning("checkpoint in flight not completed (%s: %s)", type(save_exn).__name__,
                        save_exn)


class _Finisher(threading.Thread):
    """Runs `work` once, keeping its exception for `Checkpointer.wait` to raise. A daemon: a
    process that is exiting waits for it through the Checkpointer (bounded), not forever."""

    def __init__(self, work):
        super().__init__(name="llip-checkpoint", daemon=True)
        self.work, self.error, self.finished = work, None, threading.Event()
        self.start()

    def run(self) -> None:
        try:
            self.work()
        except BaseException as exn:  # noqa: BLE001 - handed to the training thread
            self.error = exn
        finally:
            self.finished.set()


def _saved_files(metadata) -> list[str]:
    """Every file of the checkpoint, from DCP's own record of what it wrote: the metadata that
    dcp.save returns on every rank (what it wrote to .metadata), not a directory listing that
    a network file system may show stale. Not re-read from disk: .metadata holds a chunk per
    tensor per rank (95 MB for llip_G14 at 256 ranks), and every rank would read all of it."""
    data = {info.relative_path for info in metadata.storage_data.values()}  # a chunk each
    return sorted({str(name) for name in data} | {METADATA, CONFIG})


def _check_same_run(path: str, cfg) -> None:
    if not has_config(path):  # nothing to compare: its files decide
        return
    changes = config_changes(read_config_dict(path), cfg)
    if changes:
        raise CheckpointError(
            f"checkpoint {path} was written by another run ({', '.join(changes[:4])}): move it "
            "out of this run dir, or resume it with its own config")


def load(path: str, model, optimizer) -> dict:
    """Load into (possibly sharded) model and optimizer in place; return the trainer state.
    The caller has verified `path` (resume)."""
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd,
             "trainer": {k: torch.as_tensor(v) for k, v in read_marker(path).items()
                         if k not in _NOT_STATE}}
    try:
        load_dcp(state, path)
    except (Exception, dcp_api.CheckpointException) as exn:  # DCP wraps reader failures
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {load_failure(exn)}") \
            from None
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    return {k: v.item() for k, v in state["trainer"].items()}


def resume(run_dir: str, cfg, model, optimizer, world) -> int:
    """Load the newest checkpoint that verifies on every rank and return its step (0: none).
    One that does not verify is moved aside (step_X.corrupt) with a warning and the previous
    one is tried; if none verifies the run stops rather than silently start over. One written
    by another run (its own config.yaml differs in a field that changes the maths: another
    seed, lr, model...) is refused in one line, never loaded as this run's."""
    if world.is_main:
        clean_partial(run_dir)
    dist.barrier()
    candidates = dist.all_gather_object(complete_checkpoints(run_dir))[0]  # rank 0's view
    first_problem = None
    for path in reversed(candidates):
        _check_same_run(path, cfg)
        # each rank hashes its share of the files; all get the same verdict
        problem, corrupt = verify(path, world.rank, world.size, dist.all_gather_object)
        if problem is None:
            state = load(path, model, optimizer)
            if world.is_main:
                print(f"resumed from {path} at step {state['step']}", flush=True)
            return int(state["step"])
        first_problem = first_problem or problem
        if world.is_main:
            moved = f"; moved to {mark_corrupt(path)}" if corrupt else ""
            log.warning("%s%s; falling back to the previous checkpoint", problem, moved)
        dist.barrier()
    if candidates:
        raise CheckpointError(f"no checkpoint of {run_dir} can be resumed; newest: "
                              f"{first_problem}")
    return 0
