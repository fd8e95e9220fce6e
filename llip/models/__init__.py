"""Model families. Every model has encode_image, encode_text, forward -> (image_emb, text_emb),
`logit_scale` and `logits(image_emb, text_emb)` -> (B_img, B_txt): the one all-pairs scoring
function used by the losses and by the evals."""
from llip.models.dual_encoder import DualEncoder
from llip.models.llip import LlipModel


def build_model(cfg):
    return LlipModel(cfg) if cfg.loss == "llip" else DualEncoder(cfg)


def transformer_blocks(model):
    """The residual blocks of both towers: the units of sharding and activation checkpointing."""
    return [*model.visual.transformer.resblocks, *model.text.transformer.resblocks]


__all__ = ["DualEncoder", "LlipModel", "build_model", "transformer_blocks"]
