"""The Llip release adapter: the authors' released checkpoints (`llip_b16_k32.pt`,
`llip_G14_k64.pt`) <-> our LlipModel names.

Their layout: open_clip-style names with the text tower at top level; `visual.class_embedding`
(K, W) holds the mixture tokens and `visual.positional_embedding` (K + G, W) their positions
followed by the patches'; `k_proj`/`v_proj` (K, W, D) map a token by x @ W[k]; `q_proj`,
`text_projection` and `pred.out_proj` are stored as x @ W matrices, the transpose of an
nn.Linear weight (they are square in B/16, so a missing transpose would pass every shape
check); 0-D logit scale/bias. The file wraps them as {"state_dict", "epoch", "optimizer", ..},
keys maybe prefixed `_orig_mod.` / `module.` (formats.unwrap removes those).

Every key of the release's model (facebookresearch/Llip, llip/open_clip/model.py: classes
VisualTransformer, CLIP, CMP, xAttnPred) and where it lands here:
    visual.conv1.weight, visual.ln_pre.*, visual.transformer.resblocks.*, visual.ln_post.*
                                        same names (CMP sets visual.proj to None: not stored)
    visual.class_embedding (K, W)       visual.prefix_tokens
    visual.positional_embedding         visual.prefix_pos (first K rows) + visual.patch_pos
    token_embedding.weight, positional_embedding, transformer.resblocks.*, ln_final.*
                                        text.<same>
    text_projection (W_t, D), x @ W     head.target_proj.weight (transposed)
    q_proj (W_t, D), x @ W              head.query_proj.weight (transposed)
    k_proj, v_proj (K, W, D)            head.key_proj, head.value_proj
    K_norm.*, Q_norm.*, V_norm.*        head.k_norm.*, head.q_norm.*, head.v_norm.* (capitalised
                                        there; LayerNorm(D) when the model uses qkv norms, as
                                        H/14 and G/14 do; nn.Identity, nothing stored, otherwise)
    pred.out_proj (D, D), x @ W         head.out_proj.weight (transposed)
    logit_scale, logit_bias (0-D)       head.logit_scale, head.logit_bias (1,)
    out_proj                            older files' name of pred.out_proj (the release's eval,
                                        evals/metaclip_evals/eval.py, renames it on load)
"""
from __future__ import annotations

import torch

from llip.models.formats import openclip

HEAD = {  # released name -> (our name, stored as x @ W: transpose)
    "k_proj": ("head.key_proj", False), "v_proj": ("head.value_proj", False),
    "q_proj": ("head.query_proj.weight", True),
    "text_projection": ("head.target_proj.weight", True),
    "pred.out_proj": ("head.out_proj.weight", True),
    "out_proj": ("head.out_proj.weight", True),  # older files, before the `pred.` module
    **{f"{w.upper()}_norm.{p}": (f"head.{w}_norm.{p}", False)
       for w in "qkv" for p in ("weight", "bias")},
}
# ours -> released, one name each (the first of HEAD's aliases)
_HEAD_OUT = {}
for _released, (_ours, _transpose) in HEAD.items():
    _HEAD_OUT.setdefault(_ours, (_released, _transpose))


def matches(sd: dict) -> bool:
    return "visual.class_embedding" in sd and "k_proj" in sd


def mixture_tokens(sd: dict) -> int:
    """K, from the (K, W) class embedding (1-D when K = 1)."""
    t = sd["visual.class_embedding"]
    return t.reshape(-1, t.shape[-1]).shape[0]


def to_ours(sd: dict) -> tuple[dict, list[str]]:
    """Released-Llip tensors -> (our LlipModel names -> tensors, names with no home)."""
    k = mixture_tokens(sd)
    out, leftovers = {}, []
    for name, t in sd.items():
        if name in openclip.NOT_WEIGHTS:
            continue
        if name == "visual.class_embedding":
            out["visual.prefix_tokens"] = t.reshape(k, -1)
        elif name == "visual.positional_embedding":
            out["visual.prefix_pos"], out["visual.patch_pos"] = t[:k], t[k:]
        elif name.startswith(openclip.VISION_SAME):
            out[name] = t
        elif name.split(".")[0] in openclip.TEXT_TOP:
            out["text." + name] = t
        elif name in HEAD:
            ours, transpose = HEAD[name]
            out[ours] = t.T if transpose else t
        elif name in openclip.SCALARS:
            out["head." + name] = t.reshape(1)
        else:
            leftovers.append(name)
    return out, leftovers


def from_ours(sd: dict) -> dict:
    """Our LlipModel state dict -> the released layout (contiguous copies, 0-D scalars)."""
    out = {}
    for name, t in sd.items():
        if name == "visual.prefix_tokens":
            out["visual.class_embedding"] = t
        elif name == "visual.prefix_pos":
            out["visual.positional_embedding"] = torch.cat([t, sd["visual.patch_pos"]])
        elif name == "visual.patch_pos":
            continue
        elif name.startswith("text."):
            out[name[len("text."):]] = t
        elif name in _HEAD_OUT:
            released, transpose = _HEAD_OUT[name]
            out[released] = t.T if transpose else t
        elif name in ("head.logit_scale", "head.logit_bias"):
            out[name[len("head."):]] = t.reshape(())
        else:
            out[name] = t
    return {k: v.detach().clone().contiguous() for k, v in out.items()}
