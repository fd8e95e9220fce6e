"""What trains: locked towers (LiT), partly unlocked towers, and LoRA adapters, applied to a
built model in one call (before sharding; the trainer and checkpoint loading both call it, so a
checkpoint's tensors always match the model's).

A locked tower's parameters get requires_grad=False, so they get no gradient and the optimizer
(llip.training.optim.param_groups) keeps no state for them. The towers are `visual.*` (plus
`image_proj` for CLIP/SigLIP) and `text.*` (plus `text_proj`); Llip's head, the logit scale and
bias always train. Llip's K mixture tokens and their positions (`visual.prefix_tokens`,
`visual.prefix_pos`) sit in the vision tower but belong to its head: a locked vision tower keeps
them trainable unless `lock_mixture_tokens` (started from a CLIP class token they are K
near-identical copies, which a frozen ViT would never tell apart). Inside a locked tower these
can stay trainable:
- unlock_last_n: the last n residual blocks, the final LayerNorm and the projection;
- unlock_norms: every LayerNorm;  unlock_biases: every bias (BitFit);
- lora_rank: low-rank adapters on the attention projections of its still-frozen blocks:
  W_in + B_in A_in (one rank-r update of the fused q/k/v projection) and W_out + B_out A_out,
  with B = 0 at the start (adding adapters does not change the model) and A kaiming-uniform.
"""
import dataclasses
import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from llip.errors import ConfigError

TOWERS = {"image": ("visual.", "image_proj"), "text": ("text.", "text_proj")}
POST = {"image": ("visual.ln_post.", "image_proj"), "text": ("text.ln_final.", "text_proj")}
MIXTURE_TOKENS = ("visual.prefix_tokens", "visual.prefix_pos")  # of a Llip model
_BLOCK = re.compile(r"^(visual|text)\.transformer\.resblocks\.(\d+)\.")
LORA_NAMES = ("lora_in_a", "lora_in_b", "lora_out_a", "lora_out_b")


class LoraMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention whose projections are W + B A. The base weights keep their names,
    so checkpoints, open_clip names and FSDP2 sharding (per block) are unchanged."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        self_attention = key is query and value is query
        if self.batch_first:
            query = query.transpose(0, 1)
            key, value = (query, query) if self_attention else (key.transpose(0, 1),
                                                                  value.transpose(0, 1))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads,
            self.in_proj_weight + self.lora_in_b @ self.lora_in_a, self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self.out_proj.weight + self.lora_out_b @ self.lora_out_a, self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal)
        return (out.transpose(0, 1) if self.batch_first else out), weights


def add_lora(attn: nn.MultiheadAttention, rank: int) -> None:
    width = attn.embed_dim
    device = attn.in_proj_weight.device
    for side, rows in (("in", 3 * width), ("out", width)):
        a = nn.Parameter(torch.empty(rank, width, device=device))
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        setattr(attn, f"lora_{side}_a", a)
        setattr(attn, f"lora_{side}_b", nn.Parameter(torch.zeros(rows, rank, device=device)))
    attn.__class__ = LoraMultiheadAttention


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its base weights (W += B A) and remove it: the plain model that
    exports and evals use. Returns how many attention layers were merged."""
    merged = 0
    for module in model.modules():
        if isinstance(module, LoraMultiheadAttention):
            module.in_proj_weight += module.lora_in_b @ module.lora_in_a
            module.out_proj.weight += module.lora_out_b @ module.lora_out_a
            for name in LORA_NAMES:
                delattr(module, name)
            module.__class__ = nn.MultiheadAttention
            merged += 1
    return merged


@dataclasses.dataclass
class TuningReport:
    trainable: int
    total: int
    notes: list

    def line(self) -> str:
        how = "; ".join(self.notes) if self.notes else "everything trains"
        return (f"trainable parameters: {self.trainable / 1e6:.2f}M of {self.total / 1e6:.2f}M "
                f"({100 * self.trainable / max(1, self.total):.1f}%): {how}")


def tower_of(name: str):
    for tower, (prefix, proj) in TOWERS.items():
        if name.startswith(prefix) or name == proj:
            return tower
    return None


def _layers(model, tower: str) -> int:
    module = model.visual if tower == "image" else model.text
    return len(module.transformer.resblocks)


def _in_last_blocks(name: str, tower: str, n: int, layers: int) -> bool:
    if n == 0:
        return False
    match = _BLOCK.match(name)
    if match:
        return int(match.group(2)) >= layers - n
    return name.startswith(POST[tower])


def apply_tuning(model: nn.Module, cfg) -> TuningReport:
    """Lock, unlock and add adapters as cfg says; report trainable / total parameters."""
    locked = [t for t, on in (("image", cfg.lock_image), ("text", cfg.lock_text)) if on]
    notes = []
    layers = {t: _layers(model, t) for t in locked}
    for tower in locked:
        if cfg.unlock_last_n > layers[tower]:
            raise ConfigError(f"unlock_last_n={cfg.unlock_last_n} but the {tower} tower has "
                              f"{layers[tower]} blocks")
    if cfg.lora_rank:
        adapted = 0
        for block_name, module in model.named_modules():
            match = _BLOCK.match(block_name + ".")
            tower = {"visual": "image", "text": "text"}[match.group(1)] if match else None
            if (tower in locked and block_name.endswith(".attn")
                    and isinstance(module, nn.MultiheadAttention)
                    and not _in_last_blocks(block_name + ".", tower, cfg.unlock_last_n,
                                            layers[tower])):
                add_lora(module, cfg.lora_rank)
                adapted += 1
        notes.append(f"LoRA rank {cfg.lora_rank} on {adapted} attention layers")
    norms = {f"{m}.{p}" if m else p for m, mod in model.named_modules()
             if isinstance(mod, nn.LayerNorm) for p, _ in mod.named_parameters(recurse=False)}
    mixture = cfg.loss == "llip" and "image" in locked and not cfg.lock_mixture_tokens
    for name, param in model.named_parameters():
        tower = tower_of(name)
        if tower not in locked:
            continue
        param.requires_grad_(name.rsplit(".", 1)[-1] in LORA_NAMES
                             or (mixture and name in MIXTURE_TOKENS)
                             or (cfg.unlock_norms and name in norms)
                             or (cfg.unlock_biases and name.endswith("bias"))
                             or _in_last_blocks(name, tower, cfg.unlock_last_n, layers[tower]))
    unlocked = [what for what, on in ((f"last {cfg.unlock_last_n} blocks", cfg.unlock_last_n),
                                      ("LayerNorms", cfg.unlock_norms),
                                      ("biases", cfg.unlock_biases)) if on]
    for i, tower in enumerate(locked):
        kept = (["Llip's mixture tokens and their positions"] if tower == "image" and mixture
                else []) + unlocked
        notes.insert(i, f"{tower} tower locked" + (f" except {', '.join(kept)}" if kept else "")
                     + (" (mixture tokens included)" if tower == "image" and
                        cfg.lock_mixture_tokens else ""))
    params = list(model.parameters())
    return TuningReport(sum(p.numel() for p in params if p.requires_grad),
                        sum(p.numel() for p in params), notes)
