"""FSDP2 bf16 training steps of the paper configs on one GPU (nccl, world size 1).

    torchrun --nproc_per_node 1 benchmarks/gpu_step.py [--batch 128] [--steps 10]

Prints samples/s and peak memory per config (synthetic inputs: this measures the model step,
not the data loader). Needs a CUDA GPU.
"""
import argparse
import contextlib
import dataclasses
import sys
import time

import torch

from llip.models import build_model
from llip.run_configs import resolve
from llip.training import dist
from llip.training.optim import build_optimizer
from llip.training.parallel import parallelize
from llip.training.trainer import train_step


def measure(name: str, batch: int, steps: int, world) -> dict:
    cfg = dataclasses.replace(resolve(name, ["train_data=x", "train_num_samples=1"]),
                              batch_size=batch, precision="bf16")
    torch.manual_seed(0)
    model = parallelize(build_model(cfg), cfg, world)
    optimizer = build_optimizer(model, cfg)
    images = torch.randn(batch, 3, cfg.image_size, cfg.image_size, device=world.device)
    tokens = torch.randint(1, 49000, (batch, cfg.context_length), device=world.device)
    tokens[:, 20] = 49407
    torch.cuda.reset_peak_memory_stats()
    for i in range(steps + 2):  # 2 warm-up steps
        if i == 2:
            torch.cuda.synchronize()
            start = time.time()
        loss = train_step(model, optimizer, cfg, images, tokens, cfg.lr, contextlib.nullcontext(),
                          dist.gather_fn(world))
    torch.cuda.synchronize()
    elapsed = time.time() - start
    return {"config": name, "batch": batch, "samples_per_s": steps * batch / elapsed,
            "peak_mem_gib": torch.cuda.max_memory_allocated() / 2 ** 30, "loss": loss.item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="clip_b16,llip_b16")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("error: no CUDA GPU here; this benchmark measures GPU training steps")
    world = dist.setup()
    rows = [measure(name, args.batch, args.steps, world) for name in args.configs.split(",")]
    if world.is_main:
        print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, FSDP2 bf16, "
              f"world size {world.size}")
        print("| config | batch/GPU | samples/s | peak memory (GiB) | loss |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['config']} | {r['batch']} | {r['samples_per_s']:.0f} | "
                  f"{r['peak_mem_gib']:.1f} | {r['loss']:.3f} |")
    dist.teardown()


if __name__ == "__main__":
    main()
