"""CLIP and SigLIP baselines with the same towers and recipe as llip_b16 (fair comparisons).
SigLIP starts from Llip's scale and bias (log(1/0.07), -10) as in the Llip authors' release,
not SigLIP's own log 10: both sigmoid models then differ only in the head."""
import dataclasses

from llip.config import RunConfig
from llip.run_configs.llip_paper import PAPER
from llip.run_configs.registry import register


@register
def clip_b16() -> RunConfig:
    return dataclasses.replace(PAPER, loss="clip", description="CLIP ViT-B/16 baseline "
                               "(InfoNCE, learnable temperature), Llip's recipe")


@register
def siglip_b16() -> RunConfig:
    return dataclasses.replace(PAPER, loss="siglip",
                               description="SigLIP ViT-B/16 baseline (sigmoid loss, "
                               "t=log(1/0.07), b=-10), Llip's recipe")
