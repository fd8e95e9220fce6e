"""Llip at paper scale (Lavoie et al., 2024): 12.8B samples seen (32 x 400M), global batch 32,768.

Run:  python submitit_openclip.py llip_b16 train_data='/data/laion/{000000..041407}.tar' logs=/ckpt
Expect (paper): B/16 K=32 averages 69.6 zero-shot over the benchmark suite; G/14 K=64 reaches
83.5% ImageNet top-1. The user sets train_data and logs; everything else is the recipe.

The recipe is the authors' release, including where it differs from this toolkit's defaults:
no gradient clipping (grad_clip=0), weight decay on the mixture tokens and position embeddings
(decay_tokens), PyTorch's default init for the vision blocks and normal(0, fan_in^-1/2) for the
head's query, target and output projections (init="reference"), sigmoid scale log(1/0.07) and
bias -10 (= -ln(B - 1) at B = 32k, to 0.4).
"""
import dataclasses

from llip.config import RunConfig
from llip.run_configs.registry import register

# ViT-B/16 towers, QuickGELU, context 77, AdamW (0.9, 0.95), wd 0.2, 2,000 warmup steps.
PAPER = RunConfig(
    loss="llip", image_size=224, patch_size=16,
    vision_width=768, vision_layers=12, vision_heads=12,
    text_width=512, text_layers=12, text_heads=8, embed_dim=512,
    mixture_tokens=32, cross_attn_heads=8, cross_attn_tau=5.0,
    train_num_samples=400_000_000, epochs=32, batch_size=32768,
    lr=5e-4, wd=0.2, beta1=0.9, beta2=0.95, warmup_steps=2000,
    grad_clip=0.0, decay_tokens=True, init="reference", init_logit_bias="-10",
    nodes=16, gpus_per_node=8, workers=8,  # 256 per GPU x 128 GPUs
)


@register
def llip_b16() -> RunConfig:
    return dataclasses.replace(PAPER, description="Llip ViT-B/16, K=32 mixture tokens, tau 5; "
                               "paper recipe on 128 GPUs")


@register
def llip_l14() -> RunConfig:
    return dataclasses.replace(
        PAPER, description="Llip ViT-L/14, K=32, tau 1, context 64 (as the reference); "
        "paper recipe on 128 GPUs",
        patch_size=14, context_length=64, vision_width=1024, vision_layers=24, vision_heads=16,
        text_width=768, text_heads=12, embed_dim=768, cross_attn_tau=1.0, lr=4e-4)


@register
def llip_h14() -> RunConfig:
    return dataclasses.replace(
        PAPER, description="Llip ViT-H/14, K=64 (as the reference), tau 5, qkv LayerNorm; "
        "128 per GPU x 256 GPUs",
        patch_size=14, vision_width=1280, vision_layers=32, vision_heads=16,
        text_width=1024, text_layers=24, text_heads=16, embed_dim=1024,
        mixture_tokens=64, cross_attn_qkv_norm=True, lr=4e-4, nodes=32,
        grad_checkpointing=True)


@register
def llip_G14() -> RunConfig:
    return dataclasses.replace(
        PAPER, description="Llip ViT-G/14 (bigG sizes), K=64, tau 5, qkv LayerNorm; 256 GPUs",
        patch_size=14, vision_width=1664, vision_layers=48, vision_heads=16, mlp_ratio=4.9231,
        text_width=1280, text_layers=32, text_heads=20, text_mlp_ratio=4.0, embed_dim=1280,
        mixture_tokens=64, cross_attn_qkv_norm=True, lr=4e-4, nodes=32,
        grad_checkpointing=True)
