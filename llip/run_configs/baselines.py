"""CLIP and SigLIP baselines with the same towers and recipe as llip_b16 (fair comparisons)."""
import dataclasses
import math

from llip.config import RunConfig
from llip.run_configs.llip_paper import PAPER
from llip.run_configs.registry import register


@register
def clip_b16() -> RunConfig:
    return dataclasses.replace(PAPER, loss="clip", description="CLIP ViT-B/16 baseline "
                               "(InfoNCE, learnable temperature), Llip's recipe")


@register
def siglip_b16() -> RunConfig:
    return dataclasses.replace(PAPER, loss="siglip", init_logit_scale=math.log(10.0),
                               description="SigLIP ViT-B/16 baseline (sigmoid loss, t=log 10, "
                               "b=-10), Llip's recipe")
