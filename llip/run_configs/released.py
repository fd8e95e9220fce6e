"""The Llip authors' reference configurations, under the names their release uses.

`llip_b16_k32` and `llip_G14_k64` describe the two released checkpoints exactly
(`llip_b16_k32.pt`, `llip_G14_k64.pt`): `python -m llip.training.export llip_b16_k32.pt out.pt`
or an eval sweep finds them from the tensor shapes. The others are the reference's other
variants. Architecture facts from the reference: QuickGELU everywhere; tau 5 except L/14 (tau 1);
H/14 and G/14 LayerNorm q, k and v; G/14's text tower keeps MLP ratio 4.0 while its vision
tower uses 4.9231; the L/14 K=32 model reads 64 text tokens. Recipe fact: no gradient clipping.
The paper-recipe configs (llip_paper.py) add clipping; everything else is the same.
"""
import dataclasses

from llip.config import RunConfig
from llip.run_configs.llip_paper import PAPER, llip_G14, llip_h14, llip_l14
from llip.run_configs.registry import register

REFERENCE = dataclasses.replace(PAPER, grad_clip=0.0)
B32 = dataclasses.replace(REFERENCE, patch_size=32, mixture_tokens=64)

# Tried first when a checkpoint's config is chosen from its shapes.
RELEASED = ("llip_b16_k32", "llip_G14_k64")
# The release's config names (facebookresearch/Llip, llip/run_configs/llip.py, the
# `mc_config_name` of its eval YAMLs) -> ours. Its llip_b32_k64 builds a B/16 (model
# ViT-B-16-quickgelu-siglip-ncls:64); its base llip_b32 is the B/32 K=64; the *_node variants
# are the B/16 K=32 model with another cluster layout.
RELEASE_NAMES = {"llip_b32": "llip_b32_k64", "llip_b32_k64": "llip_b16_k64",
                 "llip_b32_k32": "llip_b32_k32", "llip_b32_k128": "llip_b32_k128",
                 "llip_b16_k32": "llip_b16_k32", "llip_b16_k32_12_node": "llip_b16_k32",
                 "llip_b16_k32_2_node_debug": "llip_b16_k32", "llip_l14_k32": "llip_l14_k32",
                 "llip_l14_k64": "llip_l14_k64", "llip_h14_k64": "llip_h14_k64",
                 "llip_G14_k64": "llip_G14_k64"}


def _reference(base: RunConfig, description: str, **changes) -> RunConfig:
    return dataclasses.replace(base, grad_clip=0.0, description=description, **changes)


@register
def llip_b16_k32() -> RunConfig:
    return _reference(REFERENCE, "Released Llip ViT-B/16, K=32 (llip_b16_k32.pt, 69.6 avg "
                      "zero-shot); reference recipe")


@register
def llip_G14_k64() -> RunConfig:
    return _reference(llip_G14(), "Released Llip ViT-G/14, K=64, qkv LayerNorm, text MLP ratio "
                      "4 (llip_G14_k64.pt, 83.5% ImageNet); reference recipe")


@register
def llip_h14_k64() -> RunConfig:
    return _reference(llip_h14(), "Reference Llip ViT-H/14, K=64, qkv LayerNorm")


@register
def llip_l14_k32() -> RunConfig:
    return _reference(llip_l14(), "Reference Llip ViT-L/14, K=32, tau 1, context length 64")


@register
def llip_l14_k64() -> RunConfig:
    return _reference(llip_l14(), "Reference Llip ViT-L/14, K=64, tau 1, context length 77",
                      mixture_tokens=64, context_length=77)


@register
def llip_b16_k64() -> RunConfig:
    # The reference names this one llip_b32_k64, but it is a B/16 model.
    return _reference(REFERENCE, "Reference Llip ViT-B/16, K=64", mixture_tokens=64)


@register
def llip_b32_k64() -> RunConfig:
    return _reference(B32, "Reference Llip ViT-B/32, K=64 (the reference's base config)")


@register
def llip_b32_k32() -> RunConfig:
    return _reference(B32, "Reference Llip ViT-B/32, K=32", mixture_tokens=32)


@register
def llip_b32_k128() -> RunConfig:
    return _reference(B32, "Reference Llip ViT-B/32, K=128", mixture_tokens=128)
