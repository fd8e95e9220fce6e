"""Everything that changes how the model runs, applied in one place: activation checkpointing,
per-block compile, and FSDP2 sharding (per transformer block, then the root)."""
import contextlib

import torch
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method

from llip.models import transformer_blocks


def use_bf16(cfg, device: torch.device) -> bool:
    return cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda")


def autocast_for(cfg, world):
    """bf16 autocast for an unsharded model; FSDP2's MixedPrecisionPolicy does it otherwise."""
    if use_bf16(cfg, world.device) and not world.distributed:
        return torch.autocast(world.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parallelize(model: torch.nn.Module, cfg, world) -> torch.nn.Module:
    """FSDP2 whenever there is a process group (torchrun / SLURM, even with one rank)."""
    model.to(world.device)
    if cfg.grad_checkpointing:  # open_clip's Transformer checkpoints each block when set
        model.visual.transformer.grad_checkpointing = True
        model.text.transformer.grad_checkpointing = True
    if cfg.torch_compile:
        for block in transformer_blocks(model):
            block.compile()
    if world.distributed:
        mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if use_bf16(cfg, world.device) else MixedPrecisionPolicy())
        for block in transformer_blocks(model):
            fully_shard(block, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        # The losses call model.logits after forward: FSDP must treat it as a forward.
        register_fsdp_forward_method(model, "logits")
    return model
