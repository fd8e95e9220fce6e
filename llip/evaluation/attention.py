"""Llip attention diagnostics: how each prompt spreads its attention over the K mixture tokens.

entropy  normalised entropy of the weights over the K tokens, H(a_ij.) / ln K, averaged over
         images, prompts and heads: 1 = uniform (no selection; the zero-query control), 0 = one
         token per prompt.
spread   how much the weights depend on the prompt: for each image and head, the total-variation
         distance between a prompt's weights and the image's mean weights over all prompts,
         averaged; 0 = every prompt attends the same way (no contextualisation: collapsed),
         up to 1 - 1/K when each prompt picks its own token.
"""
import math

import torch

from llip.evaluation.zeroshot import encode_texts

UNIFORM_ENTROPY = 0.95  # above: attention is (close to) uniform
COLLAPSED_SPREAD = 0.05  # below: attention does not depend on the prompt


def attention_weights(model, images, text_emb, tau=None) -> torch.Tensor:
    """(Bi, Bt, H, K) softmax weights; `text_emb` from model.encode_text."""
    return model.head.attention(model.encode_image(images), text_emb, tau)


def summarise(weights: torch.Tensor) -> dict:
    """weights (Bi, Bt, H, K) -> {"entropy", "spread", "verdict"}."""
    k = weights.shape[-1]
    w = weights.double()
    entropy = -(w * w.clamp_min(1e-30).log()).sum(-1) / math.log(k)
    spread = 0.5 * (w - w.mean(1, keepdim=True)).abs().sum(-1)
    out = {"entropy": entropy.mean().item(), "spread": spread.mean().item(), "tokens": k}
    out["verdict"] = ("uniform" if out["entropy"] > UNIFORM_ENTROPY else
                      "collapsed" if out["spread"] < COLLAPSED_SPREAD else "selective")
    return out


@torch.no_grad()
def attention_stats(model, tokenizer, image_batches, prompts, device="cpu", tau=None) -> dict:
    """Diagnostics of a Llip model over images x prompts (e.g. a set's class prompts)."""
    text_emb = encode_texts(model, tokenizer, prompts, device=device)
    weights = [attention_weights(model, images.to(device), text_emb, tau).float().cpu()
               for images in image_batches]
    if not weights:
        raise ValueError("no images were given")
    return {**summarise(torch.cat(weights)), "images": sum(len(w) for w in weights),
            "prompts": len(prompts)}
