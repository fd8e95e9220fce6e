"""Throughput accounting: model FLOPs per step (counted once), TFLOP/s, MFU, samples/s per rank,
the fraction of time spent waiting for data, and peak memory.

FLOPs are counted by torch.utils.flop_counter on the meta device (no memory, no compute) at the
real per-rank shapes: the towers on the local batch, the loss on B_local x B_global pairs (the
gather is stood in for by a copy). They are model FLOPs, forward + backward, without recomputation
(the MFU convention): activation checkpointing and Llip's per-block recompute are not counted.
All times are host times and no device sync is added to the training step; a window ends at a
log step, whose host read of the metrics waits for the device, so its rates are exact.
"""
import contextlib
import dataclasses
import resource
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from llip.losses import contrastive_loss
from llip.models import build_model
from llip.training import dist
from llip.training.parallel import use_bf16

# Dense bf16 peak TFLOP/s by device name (first match wins); `peak_tflops=` overrides.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


def peak_tflops(cfg, device: torch.device):
    """The device's peak for MFU, or None where unknown (CPU, fp32, an unlisted GPU)."""
    if cfg.peak_tflops > 0:
        return cfg.peak_tflops
    if device.type != "cuda" or not use_bf16(cfg, device):
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def step_flops(cfg, local_batch: int, world_size: int) -> int:
    """Model FLOPs of one training step on one rank (forward + backward)."""
    cfg = dataclasses.replace(cfg, grad_checkpointing=False, torch_compile=False)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(cfg)
        images = torch.empty(local_batch, 3, cfg.image_size, cfg.image_size)
        tokens = torch.zeros(local_batch, cfg.context_length, dtype=torch.long)
    if hasattr(model, "head"):
        model.head.recompute_blocks = False

    def gather(x):  # every rank's rows: same shapes, same FLOPs as the real all-gather
        return x.repeat(world_size, *[1] * (x.ndim - 1))

    with FlopCounterMode(display=False) as counter:
        image_emb, text_emb = model(images, tokens)
        loss = contrastive_loss(cfg.loss, model, image_emb, text_emb, 0,
                                gather if world_size > 1 else None)
        loss.backward()
    return counter.get_total_flops()


def peak_memory_gib(device: torch.device) -> float:
    """Peak allocated device memory on GPU; peak resident memory of the process on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


class Meter:
    """Times one metrics window: wall time, time blocked on the data loader, steps."""

    def __init__(self, cfg, world, flops_per_step: int):
        self.cfg, self.world, self.flops = cfg, world, flops_per_step
        self.peak = peak_tflops(cfg, world.device)
        self.start, self.wait_s = time.perf_counter(), 0.0

    def next_batch(self, batches):
        start = time.perf_counter()
        batch = next(batches)
        self.wait_s += time.perf_counter() - start
        return batch

    @contextlib.contextmanager
    def paused(self):
        """Time spent on something else than training (in-training evals) leaves the window."""
        start = time.perf_counter()
        yield
        self.start += time.perf_counter() - start

    def window(self, steps: int) -> tuple[dict, float]:
        """(metrics of the window, its seconds), then a new window. A collective: data wait
        and peak memory are the worst over ranks."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        worst = dist.all_reduce_max(torch.tensor(
            [self.wait_s / elapsed, peak_memory_gib(self.world.device)], dtype=torch.float64,
            device=self.world.device)).tolist()
        samples_per_s = steps * self.cfg.batch_size / elapsed
        tflops = self.flops * steps / elapsed / 1e12
        metrics = {"samples_per_s_per_rank": samples_per_s / self.world.size,
                   "tflops_per_rank": tflops,
                   "mfu": tflops / self.peak if self.peak else None,
                   "data_wait": worst[0], "peak_mem_gib": worst[1]}
        self.start, self.wait_s = time.perf_counter(), 0.0
        return metrics, elapsed


def progress_text(metrics: dict) -> str:
    """The throughput part of the progress line ("" for rows without it)."""
    if "tflops_per_rank" not in metrics:
        return ""
    mfu = f" | MFU {100 * metrics['mfu']:.1f}%" if metrics.get("mfu") is not None else ""
    return (f" ({metrics['samples_per_s_per_rank']:,.0f}/rank) | "
            f"{metrics['tflops_per_rank']:.3g} TFLOP/s/rank{mfu} | data wait "
            f"{100 * metrics['data_wait']:.0f}% | peak mem {metrics['peak_mem_gib']:.1f} GiB")
