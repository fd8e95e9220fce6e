"""AdamW with decoupled weight decay on matrices only, and a warmup + cosine schedule."""
import math

import torch

# Learnable tokens and position embeddings are not decayed unless decay_tokens (the reference
# decays them); 1-D params (gains, biases, logit scale and bias) never are.
NO_DECAY_NAMES = ("prefix_tokens", "prefix_pos", "patch_pos", "positional_embedding")


def param_groups(model: torch.nn.Module, weight_decay: float,
                 decay_tokens: bool = False) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim < 2 or (not decay_tokens and any(n in name for n in NO_DECAY_NAMES))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, cfg) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.wd, cfg.decay_tokens), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def lr_at(step: int, cfg) -> float:
    """Linear warmup to cfg.lr over warmup_steps, then cosine to 0 at total_steps (or constant).
    A pure function of the step: resuming needs no scheduler state."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "const":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * min(1.0, progress)))
