"""Tiny variants: the same code paths as the paper configs, small enough for a laptop CPU.

*_tiny: smoke-test size for any shards (tests, quick checks of a new dataset).
*_demo: trained by `make demo` on scikit-learn's handwritten digits (built by
        `python -m llip.data.synthetic.digits data/digits`). Expect: >= 90% zero-shot top-1 on the
        held-out digits after a few CPU minutes (chance is 10%).
"""
import dataclasses
import math

from llip.config import RunConfig
from llip.run_configs.registry import register

TINY = RunConfig(
    loss="llip", image_size=32, patch_size=8,
    vision_width=64, vision_layers=2, vision_heads=4,
    text_width=64, text_layers=2, text_heads=4, context_length=16, embed_dim=64,
    mixture_tokens=4, cross_attn_heads=4, cross_attn_tau=5.0, quick_gelu=False,
    train_num_samples=256, epochs=1, batch_size=16, lr=1e-3, wd=0.1, beta2=0.98,
    warmup_steps=2, workers=1, shuffle_buffer=64, nodes=1, gpus_per_node=1,
    checkpoint_every=8, keep_last=2, log_every=4, slurm_cpus_per_task=1, slurm_mem_gb=2,
    slurm_timeout_min=30, slurm_gpus=False, precision="fp32",
)


@register
def llip_tiny() -> RunConfig:
    return dataclasses.replace(TINY, description="Llip, tiny towers (K=4), CPU smoke test")


@register
def clip_tiny() -> RunConfig:
    return dataclasses.replace(TINY, loss="clip", description="CLIP, tiny towers, CPU smoke test")


@register
def siglip_tiny() -> RunConfig:
    return dataclasses.replace(TINY, loss="siglip", init_logit_scale=math.log(10.0),
                               description="SigLIP, tiny towers, CPU smoke test")


DEMO = dataclasses.replace(
    TINY, image_size=16, patch_size=4,
    vision_width=96, vision_layers=3, vision_heads=4,
    text_width=96, text_layers=2, text_heads=4, embed_dim=96,
    mixture_tokens=8, cross_attn_heads=4,
    train_data="data/digits/train-{000000..000005}.tar", train_num_samples=1437,
    epochs=40, batch_size=128, lr=2e-3, warmup_steps=40, workers=2, shuffle_buffer=500,
    checkpoint_every=100, keep_last=5, log_every=25, logs="./logs",
)


@register
def llip_demo() -> RunConfig:
    return dataclasses.replace(DEMO, description="Llip on sklearn digits (make demo), K=8")


@register
def clip_demo() -> RunConfig:
    return dataclasses.replace(DEMO, loss="clip", description="CLIP on sklearn digits")


@register
def siglip_demo() -> RunConfig:
    return dataclasses.replace(DEMO, loss="siglip", init_logit_scale=math.log(10.0),
                               description="SigLIP on sklearn digits")
