"""FSDP2 bf16 training steps of the paper configs on one GPU (nccl, world size 1).

    torchrun --nproc_per_node 1 benchmarks/gpu_step.py [--configs clip_b16,llip_b16]
        [--batch 128 | --batch max] [--compile off,on] [--ckpt off,on] [--steps 10]
        [--json results.jsonl]

Prints, per (config, torch.compile, activation checkpointing, batch), samples/s, model TFLOP/s
and MFU (the trainer's FLOP counter and peak table, llip.training.throughput) and peak memory.
`--batch max` doubles the per-GPU batch from 32 while a step fits (no out-of-memory) and reports
the largest. Synthetic inputs: this measures the model step, not the data loader. Needs a CUDA
GPU.
"""
import argparse
import contextlib
import dataclasses
import gc
import itertools
import json
import sys
import time

import torch

from llip.models import build_model
from llip.run_configs import resolve
from llip.training import dist
from llip.training.optim import build_optimizer
from llip.training.parallel import parallelize
from llip.training.throughput import peak_tflops, step_flops
from llip.training.trainer import train_step

MAX_BATCH_TRIED = 2048


def measure(name: str, batch: int, steps: int, world, compile_: bool, ckpt: bool) -> dict:
    cfg = dataclasses.replace(resolve(name, ["train_data=x", "train_num_samples=1"]),
                              batch_size=batch * world.size, precision="bf16",
                              torch_compile=compile_, grad_checkpointing=ckpt)
    torch.manual_seed(0)
    model = parallelize(build_model(cfg), cfg, world)
    optimizer = build_optimizer(model, cfg)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=world.device)
    tokens = torch.randint(1, 49000, (batch, cfg.context_length), device=world.device)
    tokens[:, 20] = 49407
    torch.cuda.reset_peak_memory_stats()
    warmup = 3 if compile_ else 2
    for i in range(steps + warmup):
        if i == warmup:
            torch.cuda.synchronize()
            start = time.perf_counter()
        loss = train_step(model, optimizer, cfg, images, tokens, cfg.lr,
                          contextlib.nullcontext(), world)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tflops = step_flops(cfg, batch, world.size) * steps / elapsed / 1e12
    peak = peak_tflops(cfg, world.device)
    return {"config": name, "batch": batch, "compile": compile_, "ckpt": ckpt,
            "samples_per_s": steps * batch / elapsed, "step_ms": 1e3 * elapsed / steps,
            "tflops": tflops, "mfu": tflops / peak if peak else None,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "loss": loss.item()}


def largest_batch(name, steps, world, compile_, ckpt) -> dict:
    """Double the batch from 32 until a step runs out of memory; the last that fit."""
    best, batch = None, 32
    while batch <= MAX_BATCH_TRIED:
        try:
            best = measure(name, batch, steps, world, compile_, ckpt)
        except torch.OutOfMemoryError:
            break
        finally:
            gc.collect()
            torch.cuda.empty_cache()
        batch *= 2
    if best is None:
        raise RuntimeError(f"{name}: batch 32 does not fit")
    return best


def _flags(text: str) -> list[bool]:
    return [{"on": True, "off": False}[x] for x in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="clip_b16,llip_b16")
    parser.add_argument("--batch", default="128", help="per-GPU batch, or 'max'")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", default="off", help="off, on or off,on")
    parser.add_argument("--ckpt", default="off", help="activation checkpointing: off, on, off,on")
    parser.add_argument("--json", default="", help="append one JSON row per measurement")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; this benchmark measures GPU training steps")
    world = dist.setup()
    rows = []
    for name, compile_, ckpt in itertools.product(args.configs.split(","),
                                                  _flags(args.compile), _flags(args.ckpt)):
        if args.batch == "max":
            rows.append(largest_batch(name, args.steps, world, compile_, ckpt))
        else:
            rows.append(measure(name, int(args.batch), args.steps, world, compile_, ckpt))
    if world.is_main:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, FSDP2 bf16 params, "
              f"fp32 reductions, world size {world.size}")
        print("| config | batch/GPU | compile | act. ckpt | samples/s | step ms | TFLOP/s | MFU "
              "| peak memory (GiB) | loss |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
            print(f"| {r['config']} | {r['batch']} | {'on' if r['compile'] else 'off'} | "
                  f"{'on' if r['ckpt'] else 'off'} | {r['samples_per_s']:.0f} | "
                  f"{r['step_ms']:.0f} | {r['tflops']:.0f} | {mfu} | {r['peak_mem_gib']:.1f} | "
                  f"{r['loss']:.3f} |")
        if args.json:
            with open(args.json, "a") as f:
                for r in rows:
                    f.write(json.dumps({**r, "gpu": torch.cuda.get_device_name(),
                                        "time": time.time()}) + "\n")
    dist.teardown()


if __name__ == "__main__":
    main()
