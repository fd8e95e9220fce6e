"""Contrastive losses, exact under data parallelism.

Each rank holds B_local pairs. Text (and for CLIP also image) embeddings are gathered from every
rank *with gradient*, and each rank computes only its own rows against all B_global columns
("local loss"). The loss of rank r is normalised so that the mean over ranks equals the
single-process loss on the global batch, and the gradient all-reduce (mean) of DDP/FSDP then gives
exactly the single-process gradient. `gather` concatenates a tensor over ranks along dim 0 with
gradient and `rank` says which rows are this rank's; without a gather (one process) the local
batch is the global batch. Nothing here talks to torch.distributed: the caller hands both in.

Only text-side tensors are gathered for Llip: image keys/values never leave their rank.
"""
from typing import Callable, Optional

import torch
import torch.nn.functional as F

Gather = Optional[Callable[[torch.Tensor], torch.Tensor]]


def _gather_all(x: torch.Tensor, rank: int, gather: Gather) -> tuple[torch.Tensor, int]:
    """All ranks' rows and the offset of this rank's rows among them."""
    if gather is None:
        return x, 0
    return gather(x), rank * x.shape[0]


def clip_loss(image_features, text_features, logit_scale, rank: int = 0, gather: Gather = None):
    """InfoNCE in both directions, temperature exp(logit_scale)."""
    all_images, offset = _gather_all(image_features, rank, gather)
    all_texts, _ = _gather_all(text_features, rank, gather)
    scale = logit_scale.exp()
    labels = torch.arange(image_features.shape[0], device=image_features.device) + offset
    image_to_text = scale * image_features @ all_texts.T
    text_to_image = scale * text_features @ all_images.T
    # Reductions in fp32 whatever the compute dtype (bf16 under FSDP2 mixed precision).
    return (F.cross_entropy(image_to_text.float(), labels)
            + F.cross_entropy(text_to_image.float(), labels)) / 2


def sigmoid_loss(logits: torch.Tensor, offset: int) -> torch.Tensor:
    """-sum_ij log sigmoid(z_ij s_ij) / B_local, z = +1 on the (offset) diagonal, -1 elsewhere."""
    n = logits.shape[0]
    logits = logits.float()  # reductions in fp32 whatever the compute dtype
    z = -torch.ones_like(logits)
    z[torch.arange(n), torch.arange(n) + offset] = 1.0
    return -F.logsigmoid(z * logits).sum() / n


def siglip_loss(image_features, text_features, logit_scale, logit_bias, rank: int = 0,
                gather: Gather = None):
    all_texts, offset = _gather_all(text_features, rank, gather)
    return sigmoid_loss(logit_scale.exp() * image_features @ all_texts.T + logit_bias, offset)


def llip_loss(image_emb, text_emb, logits_fn, rank: int = 0, gather: Gather = None):
    """Sigmoid loss over caption-contextualised scores; logits_fn is the model's `logits`."""
    all_texts, offset = _gather_all(text_emb, rank, gather)
    return sigmoid_loss(logits_fn(image_emb, all_texts), offset)


def contrastive_loss(kind: str, model, image_emb, text_emb, rank: int = 0,
                     gather: Gather = None):
    """The loss a config names, reading the model's learnable scale (and bias)."""
    if kind == "clip":
        return clip_loss(image_emb, text_emb, model.logit_scale, rank, gather)
    if kind == "siglip":
        return siglip_loss(image_emb, text_emb, model.logit_scale, model.logit_bias, rank, gather)
    if kind == "llip":
        return llip_loss(image_emb, text_emb, model.logits, rank, gather)
    raise ValueError(f"unknown loss {kind!r}")
