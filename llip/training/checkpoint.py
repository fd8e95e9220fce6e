"""Sharded training checkpoints with torch.distributed.checkpoint (DCP): save and resume.

Every rank writes its shards into step_XXXXXXXX.tmp; once DCP reports the save finished, the main
rank adds the config and the COMPLETE marker and renames the directory, so a crash mid-save never
leaves a half checkpoint that looks valid, and the previous one stays. DCP reshards on load: a
checkpoint saved at N ranks loads at any world size. The directory layout belongs to llip.run_dir.

Asynchronous saves (`checkpoint_async`, the default): training stops only while the state is
copied to CPU memory (DCP's staging); a background thread writes the files. DCP's save ends with
the coordinator (rank 0) collecting every rank's write results and writing the metadata, so when
rank 0's save has finished, all ranks' files are on disk: only then are the marker and the rename
done, by rank 0 alone, without stopping the other ranks. A new save first waits for the previous
one; the end of training waits for the last; a SIGTERM (where nothing else handles it) ends the
run through the same wait, so a save in flight still completes.
"""
import logging
import os
import shutil
import signal
import threading
import time

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from llip import run_dir as rd
from llip.training import dist

log = logging.getLogger("llip.train")
WAIT_AFTER_FAILURE_S = 600  # a run that failed still lets a save in flight finish, this long


def _start(run_dir: str, step: int, is_main: bool) -> tuple[str, str]:
    final = rd.checkpoint_dir(run_dir, step)
    tmp = final + ".tmp"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
    dist.barrier()
    return tmp, final


def _state(model, optimizer, trainer_state: dict) -> dict:
    model_sd, optim_sd = get_state_dict(model, optimizer)
    return {"model": model_sd, "optim": optim_sd,
            "trainer": {k: torch.as_tensor(v) for k, v in trainer_state.items()}}


def _complete(run_dir: str, cfg, tmp: str, final: str, trainer_state: dict) -> None:
    """Main rank, after every rank's files are written: mark, rename, prune."""
    rd.write_config(tmp, cfg)
    rd.write_marker(tmp, {**trainer_state, "time": time.time()})
    if os.path.exists(final):  # re-saving the same step (e.g. resumed at the very end)
        shutil.rmtree(final)
    os.rename(tmp, final)
    rd.prune(run_dir, cfg.keep_last, cfg.keep_every)
    print(f"checkpoint {final}", flush=True)


def save(run_dir: str, cfg, step: int, model, optimizer, trainer_state: dict,
         is_main: bool) -> str:
    """A blocking save (all ranks)."""
    tmp, final = _start(run_dir, step, is_main)
    dcp.save(_state(model, optimizer, trainer_state), checkpoint_id=tmp)
    dist.barrier()
    if is_main:
        _complete(run_dir, cfg, tmp, final, {"step": step, **trainer_state})
    dist.barrier()
    return final


class Checkpointer:
    """The trainer's saves, asynchronous or not per config; use as a context manager around the
    training loop, and call `poll()` every step (it never blocks)."""

    def __init__(self, run_dir: str, cfg, is_main: bool):
        self.run_dir, self.cfg, self.is_main = run_dir, cfg, is_main
        # The writer thread's collectives get their own (gloo) group: they must not interleave
        # with the training's collectives on the default group, and need a CPU backend.
        self.group = dist.new_cpu_group() if cfg.checkpoint_async else None
        self.pending = None  # (future, tmp, final, trainer_state) of the save in flight
        self._old_sigterm = None

    def save(self, step: int, model, optimizer, trainer_state: dict) -> None:
        self.wait()
        if not self.cfg.checkpoint_async:
            save(self.run_dir, self.cfg, step, model, optimizer, trainer_state, self.is_main)
            return
        tmp, final = _start(self.run_dir, step, self.is_main)
        future = dcp.async_save(_state(model, optimizer, trainer_state), checkpoint_id=tmp,
                                process_group=self.group)
        self.pending = (future, tmp, final, {"step": step, **trainer_state})

    def poll(self) -> None:
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self, timeout=None) -> None:
        """Wait for the save in flight; on the main rank, mark it complete."""
        if self.pending is None:
            return
        future, tmp, final, trainer_state = self.pending
        self.pending = None
        future.result(timeout=timeout)  # a failed write raises here: never marked complete
        if self.is_main:
            _complete(self.run_dir, self.cfg, tmp, final, trainer_state)

    def __enter__(self) -> "Checkpointer":
        if (self.cfg.checkpoint_async and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL):
            self._old_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._old_sigterm is not None:  # a second SIGTERM kills at once
            signal.signal(signal.SIGTERM, self._old_sigterm)
        if exc_type is None:
            self.wait()
            return
        try:
            self.wait(timeout=WAIT_AFTER_FAILURE_S)
        except Exception as save_exn:  # noqa: BLE001 - the run's own error is the one to raise
            log.warning("checkpoint in flight not completed (%s: %s)", type(save_exn).__name__,
                        save_exn)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


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
