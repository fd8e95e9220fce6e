"""The Trainer: one code path for a lone process, torchrun and SLURM (submitit wraps it).

Resume is exact by construction: the data stream and the RNG are re-seeded from
(seed, rank, step) every time a checkpoint is written, the learning rate is a function of the
step, and model + optimizer come back from DCP. So a run resumed from the checkpoint at step s
sees the same batches and takes the same updates as a run that never stopped.
"""
import math
import os
import signal

import torch

from llip import code_snapshot
from llip.data import tokenizer_for, transform_for
from llip.data.stream import (
    build_train_stream,
    check_shards,
    check_shared_memory,
    expand_sources,
    local_batch_size,
    stream_seed,
    with_dataset_size,
)
from llip.errors import ConfigError, UserError
from llip.loading import check_init_from
from llip.losses import contrastive_loss
from llip.run_dir import path_of, write_config
from llip.training import checkpoint, dist, divergence
from llip.training.accumulate import accumulate_gradients
from llip.training.claim import claim_run_dir
from llip.training.evaluate import TrainingEvals, eval_entries
from llip.training.metrics import MetricsLogger, Window
from llip.training.model_setup import build_for_training
from llip.training.optim import build_optimizer, lr_at
from llip.training.parallel import autocast_for, parallelize
from llip.training.stop import StopRequest
from llip.training.throughput import Meter, step_flops

MAX_LOGIT_SCALE = math.log(100)


def _scalar(param) -> float:
    """The value of a 1-element parameter, sharded (DTensor) or not."""
    param = param.detach()
    return float(param.full_tensor() if hasattr(param, "full_tensor") else param)


def _logit_bias(model) -> dict:
    """{"logit_bias": b} for the sigmoid-loss models (SigLIP, Llip), {} for CLIP."""
    bias = getattr(model, "logit_bias", None)
    return {} if bias is None else {"logit_bias": _scalar(bias)}


def _check_inputs(cfg) -> None:
    """What a run cannot start without, checked before any file is written: training data named,
    init_from present, eval_datasets known with their data present."""
    cfg.require_training_inputs()
    check_init_from(cfg)
    eval_entries(cfg)


def checked_for_training(cfg):
    """The checks of one process that submits a job, local shards included; size the data if
    needed. (In the job, the Trainer checks shards on one rank.)"""
    _check_inputs(cfg)
    check_shards(expand_sources(cfg.train_data))
    return with_dataset_size(cfg)


def check_shards_once(cfg, world) -> None:
    """The main rank checks the local shards and every rank learns the verdict: at 41k shards x
    128 ranks, a check per rank is a metadata storm on a parallel file system."""
    error = None
    if world.is_main:
        try:
            check_shards(expand_sources(cfg.train_data))
        except UserError as exn:
            error = exn
    failed = dist.all_reduce_sum(torch.tensor([float(error is not None)], device=world.device))
    if error is not None:
        raise error
    if failed.item():
        raise ConfigError("shards are missing (the main rank's error names them): fix "
                          "train_data or build the shards first")


class Trainer:
    def __init__(self, cfg):
        _check_inputs(cfg)
        self.cfg = with_dataset_size(cfg)

    def __call__(self) -> str:
        world = dist.setup()
        try:
            return self.train(world)
        finally:
            dist.teardown()

    # ------------------------------------------------------------------ setup
    def train(self, world) -> str:
        cfg, run_dir = self.cfg, path_of(self.cfg)
        local_batch = local_batch_size(cfg, world.size)  # before anything is written
        check_shared_memory(cfg, local_batch)
        check_shards_once(cfg, world)
        flops = step_flops(cfg, local_batch, world.size) if world.is_main else 0
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = parallelize(build_for_training(cfg, run_dir, world.is_main), cfg, world)
        optimizer = build_optimizer(model, cfg)
        lock = claim_run_dir(run_dir, cfg, world)  # one run, one config per run dir
        try:
            start = checkpoint.resume(run_dir, cfg, model, optimizer, world)  # verified
            if start > cfg.total_steps:
                raise ConfigError(f"{run_dir} is at step {start}, past this config's "
                                  f"{cfg.total_steps} steps: raise epochs to train on")
            if world.is_main:
                self._write_run_files(run_dir, start, world.size)
            logger = MetricsLogger(run_dir, cfg, start, enabled=world.is_main)
            try:
                with checkpoint.Checkpointer(run_dir, cfg, world.is_main) as saver, \
                        StopRequest(world.size) as stop:
                    self._loop(model, optimizer, world, start, logger, saver, stop,
                               Meter(cfg, world, flops))
            finally:
                logger.close()
        finally:
            if lock is not None:
                lock.release()
        return run_dir

    def _write_run_files(self, run_dir: str, start: int, world_size: int) -> None:
        os.makedirs(run_dir, exist_ok=True)
        write_config(run_dir, self.cfg, git_commit=code_snapshot.commit())
        state = "new run" if not start else "already complete: nothing to do" \
            if start == self.cfg.total_steps else f"resuming at step {start}"
        print(f"run dir {run_dir} ({state}), "
              f"{self.cfg.total_steps} steps of {self.cfg.batch_size} samples on {world_size} "
              "process(es)", flush=True)

    def _stream(self, world, step: int):
        """(Re)start the data stream and the RNG at `step`: the anchor of exact resume."""
        torch.manual_seed(stream_seed(self.cfg.seed, world.rank, step, 2))
        cfg = self.cfg
        loader = build_train_stream(cfg, world.rank, world.size, step, transform_for(cfg, True),
                                    tokenizer_for(cfg))
        return iter(loader)

    # ------------------------------------------------------------------ loop
    def _loop(self, model, optimizer, world, start, logger, saver, stop, meter) -> None:
        cfg = self.cfg
        autocast = autocast_for(cfg, world)
        batches = self._stream(world, start)
        # Sums kept on the device and read only at log steps: no step waits for the host.
        window = Window(world.device, mean=("loss",),
                        total=("skipped_shards", "skipped_samples", "data_checksum"))
        evaluator = TrainingEvals(cfg, world)
        last_saved = start
        for step in range(start, cfg.total_steps):
            try:
                images, tokens, counts = meter.next_batch(batches)
            except RuntimeError:  # the signal reached the data workers too, and they left
                if not stop.signum:
                    raise
                _stop(stop.signum, step, saver)
            images, tokens = images.to(world.device, non_blocking=True), tokens.to(world.device)
            lr = lr_at(step, cfg)
            loss = train_step(model, optimizer, cfg, images, tokens, lr, autocast, world)
            counts = counts.to(world.device, torch.float64)  # exact: every count is < 2^32
            window.add(loss=loss, skipped_shards=counts[0], skipped_samples=counts[1],
                       data_checksum=counts[2])
            saver.poll()  # marks a finished background save complete; never blocks
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.total_steps:
                steps = window.steps
                metrics = window.reduce()
                rates, elapsed = meter.window(steps)
                logger.log(done, {**metrics, **rates, "lr": lr,
                                  "logit_scale": _scalar(model.logit_scale),
                                  **_logit_bias(model),
                                  "samples_seen": done * cfg.batch_size},
                           steps * cfg.batch_size / elapsed,
                           (cfg.total_steps - done) * elapsed / steps)
                divergence.check_logged_loss(metrics["loss"], done, cfg, last_saved)
            if evaluator.due(done):  # before the checkpoint: a resume from it redoes no eval
                with meter.paused():  # eval time is not training throughput
                    logger.log_eval(done, *evaluator(model))
            save = done % cfg.checkpoint_every == 0 or done == cfg.total_steps
            if save:
                divergence.check_before_save(window, model, done, cfg, last_saved)
                saver.wait()  # the save in flight first: a stop signalled meanwhile starts none
            signum = stop.requested(now=save)
            if signum and done < cfg.total_steps:
                _stop(signum, done, saver)
            if save:
                if done < cfg.total_steps:  # restart first: workers warm up while we save
                    batches = self._stream(world, done)
                saver.save(done, model, optimizer,
                           {"step": done, "samples_seen": done * cfg.batch_size})
                last_saved = done


def _stop(signum: int, done: int, saver) -> None:
    """A stop signal: the checkpoint in flight completes, then the exit status a default
    action would give, so that launchers and schedulers see the signal."""
    print(f"{signal.Signals(signum).name} received: stopping after step {done}, once the "
          "checkpoint in flight is complete", flush=True)
    saver.wait()
    raise SystemExit(128 + signum)


def train_step(model, optimizer, cfg, images, tokens, lr, autocast, world) -> torch.Tensor:
    """One optimisation step on this rank's batch; returns this rank's loss (detached, on the
    device: reading it is left to the caller, so a step never forces a sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    if cfg.accum_steps > 1:  # the same gradient, towers in micro-batches
        loss = accumulate_gradients(model, cfg, images, tokens, autocast, world.rank,
                                    dist.gather_fn(world))
    else:
        with autocast:
            image_emb, text_emb = model(images, tokens)
            loss = contrastive_loss(cfg.loss, model, image_emb, text_emb, world.rank,
                                    dist.gather_fn(world))
        loss.backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
    return loss.detach()
